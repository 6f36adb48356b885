"""segment_many's plan: constants, the Dask check, inputs, scene names, blocks, scene signatures."""

import fnmatch
import hashlib
import json
import os
import types

from .. import gdalio
from ..errors import GullySegError
from .records import _input_signature, read_complete

SIDECAR = "gullyseg.json"
BLOCK_DIR = ".blocks"
PROBABILITY = "probability.tif"
MASK = "mask.tif"
POLYGONS = "polygons.gpkg"
SUMMARY_FIELDS = ["scene", "input", "status", "error", "width", "height", "blocks", "pixels_processed",
                  "gully_pixels", "gully_area_m2", "polygons", "seconds", "worker", "provider"]
DEFAULT_BLOCK_SIZE = 16384
INSTALL_HINT = ("segmentmany needs Dask: install it into the Python that runs GullySeg, e.g. "
                "'python3 -m pip install \"dask[distributed]\"' (the version pinned in requirements-dev.txt).")


def require_dask() -> types.ModuleType:
    """Import dask.distributed or raise a GullySegError saying what to install."""
    try:
        import distributed
        from dask import config  # noqa: F401
    except ImportError as exc:
        raise GullySegError(f"{INSTALL_HINT} ({exc})") from None
    return distributed



# --- inputs and planning -------------------------------------------------------------------------

def find_inputs(inputs=None, folder=None, pattern="*.tif") -> list:
    """The input rasters: ``inputs`` (paths) and/or the files of ``folder`` matching ``pattern``."""
    paths = [os.path.abspath(str(p)) for p in (inputs or []) if str(p).strip()]
    if folder:
        folder = os.path.abspath(str(folder))
        if not os.path.isdir(folder):
            raise GullySegError(f"INPUT_FOLDER: '{folder}' is not a folder.")
        pats = [p.strip() for p in str(pattern or "*.tif").split(";") if p.strip()]
        for name in sorted(os.listdir(folder)):
            full = os.path.join(folder, name)
            if os.path.isfile(full) and any(fnmatch.fnmatch(name.lower(), p.lower()) for p in pats):
                paths.append(full)
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise GullySegError("INPUTS: no input raster (give layers, or a folder and a pattern that matches files).")
    return paths


def scene_names(paths) -> list:
    """A unique folder name per input: the file's stem, ``_2``, ``_3`` ... for repeated stems."""
    names, seen = [], {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0] or "scene"
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        n = seen.get(stem.lower(), 0) + 1
        seen[stem.lower()] = n
        names.append(stem if n == 1 else f"{stem}_{n}")
    return names


def plan_blocks(width, height, block_size) -> list:
    """(x, y, w, h) blocks of ``block_size`` (a multiple of 256) covering ``width`` x ``height``."""
    return [(x, y, min(block_size, width - x), min(block_size, height - y))
            for y in range(0, height, block_size) for x in range(0, width, block_size)]


def _scene_signature(model_sig, params, input_path):
    keep = {k: params[k] for k in ("bands", "overlap", "threshold", "tta", "compression", "polygons", "min_area",
                                   "simplify", "context_margin")}
    if params.get("mask"):
        keep["mask_sha256"] = hashlib.sha256(json.dumps(params["mask"]).encode()).hexdigest()
    return {"model": model_sig, "params": keep, "input": _input_signature(input_path)}


def _has_block_option():
    import inspect

    from .. import inference

    return "block" in inspect.signature(inference.segment_raster).parameters



def _check_arguments(paths, output_dir, block_size, workers, threads_per_worker, compression) -> str:
    """segment_many's arguments checked before anything is written; returns the absolute output folder."""
    if not paths:
        raise GullySegError("INPUTS: no input raster given.")
    block_size = int(block_size)
    if block_size < 256 or block_size % 256:
        raise GullySegError(f"BLOCK_SIZE must be a multiple of 256 px, at least 256 (got {block_size}).")
    if int(workers) < 1 or int(threads_per_worker) < 1:
        raise GullySegError("WORKERS and THREADS_PER_WORKER must be at least 1.")
    if not output_dir:
        raise GullySegError("OUTPUT_DIR: no output folder given.")
    output_dir = os.path.abspath(str(output_dir))
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise GullySegError(f"OUTPUT_DIR: '{output_dir}' exists and is not a folder.")
    if str(compression).upper() not in ("DEFLATE", "ZSTD", "LZW", "NONE"):
        raise GullySegError(f"COMPRESSION: unknown '{compression}' (DEFLATE, ZSTD, LZW or NONE).")
    return output_dir


def _parameters(bands, overlap, batch_size, threshold, tta, compression, polygons, min_area, simplify,
                context_margin, mask, block_compression) -> dict:
    """The per-scene parameters (-1 / negative = the model's or segment's default, as None)."""
    return {"bands": bands or None, "overlap": None if overlap is None or overlap < 0 else int(overlap),
            "batch_size": int(batch_size),
            "threshold": None if threshold is None or threshold < 0 else float(threshold),
            "tta": int(tta), "compression": str(compression).upper(), "polygons": bool(polygons),
            "min_area": None if min_area is None or min_area < 0 else float(min_area),
            "simplify": float(simplify),
            "context_margin": None if context_margin is None or context_margin < 0 else int(context_margin),
            "mask": [list(mask[0]), mask[1]] if mask else None, "block_compression": block_compression}


def _plan_scenes(paths, names, probe, params, model_path, model_sig, output_dir, block_size, feedback) -> tuple:
    """(rows, todo): a summary row per scene, and (row, task spec, blocks or None) per scene to segment.

    Each scene is checked here (unreadable, not projected, wrong bands fail now); complete ones are skipped.
    """
    from .. import inference

    rows, todo = [], []
    for name, path in zip(names, paths):
        row = {k: None for k in SUMMARY_FIELDS}
        row.update(scene=name, input=path, status="pending", error="", blocks=0)
        rows.append(row)
        try:
            info = gdalio.open_checked(path, "INPUT", projected=True)[1]
            inference.resolve_bands(probe, info.bands, params["bands"])
        except GullySegError as exc:
            row.update(status="failed", error=str(exc), worker="client")
            feedback.warn(f"{name}: {exc}")
            continue
        row.update(width=info.width, height=info.height)
        folder = os.path.join(output_dir, name)
        sig = _scene_signature(model_sig, params, path)
        done = read_complete(os.path.join(folder, SIDECAR), sig, None if params["mask"] else (info.width, info.height))
        if done is not None:
            r = done.get("result", {})
            row.update(status="skipped", pixels_processed=r.get("pixels_processed"),
                       gully_pixels=r.get("gully_pixels"), gully_area_m2=r.get("gully_area_m2"),
                       polygons=r.get("polygons"), provider=r.get("provider"), worker=r.get("worker"), seconds=0.0)
            row["_crs"] = info.crs_wkt
            continue
        px = abs(info.geotransform[1])
        resample = bool(probe.resolution_cm) and abs(px - probe.resolution_cm / 100.0) / (
            probe.resolution_cm / 100.0) > inference.RESOLUTION_TOLERANCE
        blocked = (max(info.width, info.height) > block_size and not resample and not params["mask"]
                   and _has_block_option())
        spec = {"scene": name, "input": path, "folder": folder, "model": model_path, "params": params,
                "signature": sig, "width": info.width, "height": info.height, "crs_wkt": info.crs_wkt}
        row["_crs"] = info.crs_wkt
        todo.append((row, spec, plan_blocks(info.width, info.height, block_size) if blocked else None))
    return rows, todo
