"""The split's materialised folders: ``<split>/images|masks/<sample id>.*`` as hard links (copies
where links are refused) to the dataset's files, swapped in atomically, and removed by the next run
(only the files the previous run listed in split.json)."""

import errno
import os
import shutil
import uuid

from . import safefiles
from .dataset import SPLIT_MANIFEST, SPLITS
from .dataset import listing as _listing
from .dataset import side_files as _side_files
from .errors import GullySegError


def link_or_copy(src, dst) -> bool:
    """Hard link ``src`` to ``dst``; copy when the file system refuses. Returns True for a link."""
    try:
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP,
                             errno.EACCES, errno.ENOSYS):
            raise
    shutil.copy2(src, dst)
    return False


def _plan_files(paths, samples):
    """[(source absolute, destination relative)] of a materialisation, side files included."""
    plan = []
    for sid in sorted(samples):
        s = samples[sid]
        for key in ("image_tif", "image_jpg", "mask"):
            src_rel = s.get(key)
            if not src_rel:
                continue
            sub = "masks" if key == "mask" else "images"
            ext = os.path.splitext(src_rel)[1]
            dst_rel = f"{s['split']}/{sub}/{sid}{ext}"
            s.setdefault("materialized", {})[key] = dst_rel
            src = paths.abs(src_rel)
            if not safefiles.is_inside(paths.root, src, real=True):  # a planted link: never link or copy it
                raise GullySegError(f"DATASET: '{src_rel}' of sample '{sid}' resolves outside the dataset folder "
                                    f"'{paths.root}' (a link?); it is not linked into the split.")
            plan.append((src, dst_rel))
            if not s.get("variant") and key != "mask":
                for side, kind, suffix in _side_files(src):
                    plan.append((side, dst_rel + suffix if kind == "full" else os.path.splitext(dst_rel)[0] + suffix))
    return plan


def _owned(previous):
    return set((previous or {}).get("materialized_files") or [])


def check_outputs_free(paths, planned_rel, previous, overwrite, lists=True) -> None:
    """Raise before writing when a file this step does not own is in the way (unless overwrite)."""
    owned = _owned(previous)
    blocked = []
    if lists:
        for name in [f"{s}.txt" for s in SPLITS] + [SPLIT_MANIFEST]:
            if os.path.exists(os.path.join(paths.root, name)) and previous is None:
                blocked.append(name)
    for rel in planned_rel:
        if rel not in owned and os.path.lexists(paths.abs(rel)):
            blocked.append(rel)
    if blocked and not overwrite:
        raise GullySegError(
            f"DATASET: {len(blocked)} files in '{paths.root}' that the split step did not write are in the way: "
            f"{_listing(sorted(blocked))}. Move them away or allow overwriting (OVERWRITE)."
        )


def materialize(paths, plan, previous, feedback) -> tuple:
    """Build the new <split>/images|masks files in a temporary folder, then swap them in.

    Returns (relative files, links, copies). A cancel or error leaves the previous state.
    """
    tmp_root = os.path.join(paths.root, f".split-partial-{uuid.uuid4().hex[:8]}")
    links = copies = 0
    try:
        for i, (src, rel) in enumerate(plan):
            if i % 64 == 0:
                feedback.check_cancelled()
                feedback.progress(100.0 * i / max(1, len(plan)))
            dst = os.path.join(tmp_root, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if link_or_copy(src, dst):
                links += 1
            else:
                copies += 1
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    remove_owned(paths, previous)
    for _, rel in plan:
        dst = paths.abs(rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(os.path.join(tmp_root, *rel.split("/")), dst)
    shutil.rmtree(tmp_root, ignore_errors=True)
    return sorted(rel for _, rel in plan), links, copies


def remove_owned(paths, previous) -> None:
    """Remove the files a previous run materialised (and the folders they leave empty)."""
    folders = set()
    for rel in _owned(previous):
        path = paths.abs(rel)
        if os.path.lexists(path):
            os.remove(path)
        folders.add(os.path.dirname(path))
        folders.add(os.path.dirname(os.path.dirname(path)))
    for folder in sorted(folders, key=len, reverse=True):
        if folder.startswith(paths.root + os.sep) and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
