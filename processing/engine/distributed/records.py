"""Completeness records: output checksums, the sidecar JSON and the check that a scene is complete."""

import hashlib
import json
import os
from typing import Optional

from osgeo import gdal

from .. import dataset

FORMAT_VERSION = 1


def file_sha256(path, chunk=8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                break
            h.update(data)
    return h.hexdigest()


def _describe(path):
    return {"size": os.path.getsize(path), "sha256": file_sha256(path)}


def write_json_atomic(path, data, what="OUTPUT") -> None:
    """``data`` as JSON (indent 1, sorted keys) written under a temporary name renamed into place."""
    dataset.write_json(path, data, overwrite=True, what=what)


def read_complete(sidecar, signature, size) -> Optional[dict]:
    """The sidecar's content when it matches ``signature`` and every output it lists is intact, else None.

    Intact: the file exists with the recorded size and SHA-256, and rasters open with ``size`` (w, h).
    """
    try:
        with open(sidecar, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if data.get("version") != FORMAT_VERSION or data.get("signature") != signature:
        return None
    if size is None:  # outputs on a MASK_LAYER's bounding box: the size recorded when they were written
        size = data.get("size") or ()
    folder = os.path.dirname(sidecar)
    outputs = data.get("outputs") or {}
    if not outputs:
        return None
    for name, desc in outputs.items():
        path = os.path.join(folder, name)
        try:
            if os.path.getsize(path) != desc["size"] or file_sha256(path) != desc["sha256"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
        if name.endswith(".tif"):
            try:
                ds = gdal.Open(path)
                ok = ds is not None and (ds.RasterXSize, ds.RasterYSize) == tuple(size)
            except RuntimeError:
                ok = False
            ds = None
            if not ok:
                return None
    return data


def _model_signature(model_path):
    st = os.stat(model_path)
    return {"path": os.path.abspath(model_path), "size": st.st_size, "sha256": file_sha256(model_path)}


def _input_signature(path):
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


