"""Segment many scenes on a Dask cluster: the same pixels as one ``segment_raster`` run per scene.

``segment_many`` plans one task per scene (and, for a scene wider or taller than ``block_size``,
one task per block of it plus an assembly task), submits them to a local cluster of worker
processes (``workers`` x ``threads_per_worker``) or to an existing scheduler (``tcp://host:port``)
and writes, under ``output_dir``:

* ``<scene>/probability.tif``, ``<scene>/mask.tif`` (and ``<scene>/polygons.gpkg`` when asked),
  the outputs of ``inference.segment_raster`` with the same options, plus ``<scene>/gullyseg.json``
  (written last: the parameters, each output's size and SHA-256, the scene's numbers);
* ``mosaic.vrt``: a VRT over every scene's mask when all scenes share one CRS; with several CRSs one
  ``mosaic_<AUTH>_<code>.vrt`` per CRS (a VRT cannot mix CRSs, and warping the masks would resample
  them: the per-CRS VRTs keep every pixel as written);
* ``polygons.gpkg`` (when polygons are asked): every scene's polygons with a ``scene`` attribute, in
  layer ``gullies`` (one CRS) or one layer ``gullies_<AUTH>_<code>`` per CRS;
* ``summary.csv`` and ``summary.json``: one row per scene (scene, input, status, error, width, height,
  blocks, pixels processed, gully pixels, gully area m2, polygons, seconds, worker, provider).

Workers: each task imports this module on the worker (the task carries the plugin's folder and
package name, so a worker on the same file system needs no set-up; elsewhere set
``GULLYSEG_PLUGIN_DIR`` or put the plugin on the workers' ``PYTHONPATH``), loads the model once per
worker process (cached), runs the engine and writes its outputs under temporary names renamed into
place (``gdalio.atomic_output``); the sidecar JSON is written last, so an output without a valid
sidecar is never taken as done.

Blocks: the output region is cut into ``block_size`` squares (multiples of 256 px from the scene's
corner); each block task runs ``segment_raster(..., block=...)`` (the windows of the whole-scene grid
that touch the block, same order and weights: bit-identical pixels) into ``<scene>/.blocks/``; the
assembly task copies the blocks into the scene's GeoTIFFs (one VRT over the block files, converted
once), traces polygons on the assembled mask and removes the block files. Scenes the model must
resample, or segmented inside a MASK_LAYER, run whole.

Resume: a scene whose sidecar matches the parameters and whose outputs have the recorded size and
checksum and open with the scene's size is skipped (status ``skipped``); complete blocks of an
unfinished scene are reused the same way. Faults: a worker lost mid-task has its tasks re-run by
Dask (``distributed.scheduler.allowed-failures``), a task raising an unexpected error is retried
``retries`` times; a scene failing for a reason of its own (GullySegError: unreadable file, wrong
band count ...) is reported with its error and the others go on. Cancel: the tasks see a Dask
``Event`` within about a second and stop, the futures are cancelled, a local cluster is closed and
the partial outputs of unfinished scenes are removed.

Dask is imported lazily: without it the rest of GullySeg works and ``segment_many`` says what to
install.
"""


import os
import time

from ..errors import GullySegError
from ..feedback import Feedback
from .cluster import _cleanup_partials, _run_jobs
from .cluster import _client as _client  # benchmarks/bench_segmentmany.py starts a cluster with it
from .outputs import _write_mosaics, _write_summary, scenes_per_hour
from .plan import (
    BLOCK_DIR,
    DEFAULT_BLOCK_SIZE,
    INSTALL_HINT,
    MASK,
    POLYGONS,
    PROBABILITY,
    SIDECAR,
    SUMMARY_FIELDS,
    _check_arguments,
    _parameters,
    _plan_scenes,
    find_inputs,
    plan_blocks,
    require_dask,
    scene_names,
)
from .records import FORMAT_VERSION, _model_signature, file_sha256, read_complete, write_json_atomic
from .tasks import run_task

__all__ = [
    "BLOCK_DIR", "DEFAULT_BLOCK_SIZE", "FORMAT_VERSION", "INSTALL_HINT", "MASK", "POLYGONS", "PROBABILITY",
    "SIDECAR", "SUMMARY_FIELDS", "find_inputs", "file_sha256", "plan_blocks", "read_complete", "require_dask",
    "run_task", "scene_names", "scenes_per_hour", "segment_many", "write_json_atomic",
]


def segment_many(inputs, model, output_dir, bands=None, overlap=None, batch_size=8, threshold=None, tta=0,
                 mask=None, compression="DEFLATE", polygons=False, min_area=None, simplify=0.0, scheduler=None,
                 workers=2, threads_per_worker=1, block_size=DEFAULT_BLOCK_SIZE, retries=2, model_threads=0,
                 block_compression="ZSTD", context_margin=None, feedback=None) -> dict:
    """Segment every raster of ``inputs`` (paths) with ``model`` (an .onnx path) on Dask; returns the summary.

    Options as ``inference.segment_raster`` (bands, overlap, batch_size, threshold, tta, compression,
    min_area (None: segment's default, 4 pixels), simplify, context_margin); mask: (wkts, crs_wkt)
    polygons to segment inside (any CRS: reprojected per scene); polygons: write polygons.
    scheduler: None/'' = a LocalCluster of ``workers`` processes with
    ``threads_per_worker`` threads each, else a scheduler address. block_size: scenes wider or taller
    are processed in blocks (a multiple of 256, >= 256). retries: re-runs of a task that raised an
    unexpected error. model_threads: onnxruntime threads per task (0 = the worker's cores shared by
    its tasks). Returns {"scenes": [rows], "outputs": {...}, "seconds", "pixels", "workers"}.
    """
    from ..onnx_model import load_model

    feedback = feedback or Feedback()
    t_start = time.monotonic()
    paths = [os.path.abspath(str(p)) for p in inputs]
    output_dir = _check_arguments(paths, output_dir, block_size, workers, threads_per_worker, compression)
    block_size = int(block_size)
    require_dask()
    model_path = os.path.abspath(str(model))
    probe = load_model(model_path, threads=1)  # checks the model before anything is written
    if overlap is not None and overlap >= 0 and overlap >= min(probe.window):
        raise GullySegError(f"OVERLAP {overlap} must be smaller than the window ({probe.window[0]} pixels).")
    params = _parameters(bands, overlap, batch_size, threshold, tta, compression, polygons, min_area, simplify,
                         context_margin, mask, block_compression)
    model_sig = _model_signature(model_path)
    names = scene_names(paths)
    os.makedirs(output_dir, exist_ok=True)

    rows, todo = _plan_scenes(paths, names, probe, params, model_path, model_sig, output_dir, block_size, feedback)
    feedback.info(f"{len(paths)} scene(s): {len(todo)} to segment, "
                  f"{sum(r['status'] == 'skipped' for r in rows)} complete from an earlier run (checked), "
                  f"{sum(r['status'] == 'failed' for r in rows)} failed their checks")

    total_px = sum(s["width"] * s["height"] for _, s, _ in todo)
    stats = {"pixels": 0, "by_worker": {}, "scenes_done": 0, "blocks_done": 0}
    n_blocks = sum(len(b) for _, _, b in todo if b)
    if todo:
        _run_jobs(todo, params, scheduler, workers, threads_per_worker, retries, model_threads, feedback, stats,
                  total_px, n_blocks, t_start)
    feedback.check_cancelled()
    _cleanup_partials(output_dir, [s["folder"] for _, s, _ in todo])
    outputs = _write_mosaics(output_dir, rows, params["polygons"], feedback)
    seconds = time.monotonic() - t_start
    for row in rows:
        row.pop("_crs", None)
    summary = {"scenes": rows, "outputs": outputs, "seconds": seconds, "pixels": stats["pixels"],
               "workers": stats["by_worker"], "model": model_path, "scheduler": scheduler or "local",
               "block_size": block_size}
    _write_summary(output_dir, summary)
    summary["outputs"].update(summary_csv=os.path.join(output_dir, "summary.csv"),
                              summary_json=os.path.join(output_dir, "summary.json"))
    failed = [r for r in rows if r["status"] == "failed"]
    feedback.info(f"Done in {seconds:.1f} s: {sum(r['status'] == 'done' for r in rows)} scene(s) segmented, "
                  f"{sum(r['status'] == 'skipped' for r in rows)} skipped (complete), {len(failed)} failed"
                  + "".join(f"\n  {r['scene']}: {r['error']}" for r in failed))
    feedback.progress(100)
    return summary


