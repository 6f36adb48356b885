"""Files from shared folders are untrusted: regular files only, bounded sizes, paths confined.

An annotation folder or a dataset is often shared between people (a network drive, a synced
folder). A file in it may be a FIFO (opening it blocks for ever), a link to a device
(``/dev/zero`` never ends), or far larger than any real annotation; a path stored in an index
may climb out of the dataset (``../../outside/secret.txt``). These helpers turn each of those
into a GullySegError naming the file, before anything is read or written. docs/guarantees.md
lists the limits.
"""

import os
import stat

from .errors import GullySegError

# A Labelme file holds polygons and, at most, its image as base64 (imageData) and some mask
# shapes; 64 MiB is far above any real one (a 4096x4096 JPEG in imageData is ~8 MB).
MAX_JSON_BYTES = 64 * 1024 * 1024
# Plain-text lists (labels.txt, split manifests).
MAX_TEXT_BYTES = 16 * 1024 * 1024


def require_regular(path, what) -> os.stat_result:
    """``path`` (links followed) must be a regular file: not a FIFO, device, socket or folder."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GullySegError(f"{what}: cannot read '{path}': {exc.strerror or exc}.") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a folder" if stat.S_ISDIR(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise GullySegError(f"{what}: '{path}' is {kind}, not a regular file; it is not read.")
    return st


def read_bytes(path, what, limit=MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or a GullySegError."""
    st = require_regular(path, what)
    if st.st_size > limit:
        raise GullySegError(f"{what}: '{path}' is {st.st_size:,} bytes; the limit is {limit:,} bytes.")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # the file may grow after the stat
    except OSError as exc:
        raise GullySegError(f"{what}: cannot read '{path}': {exc.strerror or exc}.") from None
    if len(data) > limit:
        raise GullySegError(f"{what}: '{path}' is larger than the limit of {limit:,} bytes.")
    return data


def is_inside(root, path, real=False) -> bool:
    """True when ``path`` is ``root`` or below it: lexically, or (``real``) after resolving links."""
    norm = os.path.realpath if real else os.path.abspath
    root, path = norm(str(root)), norm(str(path))
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives (Windows)
        return False


def confined(root, relative, what="DATASET") -> str:
    """``root`` joined with a stored relative path ('a/b.tif'), which must stay inside ``root``."""
    rel = str(relative).replace("\\", "/")
    path = os.path.normpath(os.path.join(os.path.abspath(str(root)), *rel.split("/")))
    if os.path.isabs(rel) or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or not is_inside(root, path):
        raise GullySegError(
            f"{what}: the stored path '{relative}' points outside the dataset folder '{root}'; GullySeg "
            "reads and writes only inside it. Fix the index/card (or rebuild it)."
        )
    return path
