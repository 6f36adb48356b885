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

import contextlib
import csv
import fnmatch
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid

from osgeo import gdal, ogr, osr

from . import gdalio
from .errors import Cancelled, GullySegError
from .feedback import Feedback

SIDECAR = "gullyseg.json"
BLOCK_DIR = ".blocks"
PROBABILITY = "probability.tif"
MASK = "mask.tif"
POLYGONS = "polygons.gpkg"
SUMMARY_FIELDS = ["scene", "input", "status", "error", "width", "height", "blocks", "pixels_processed",
                  "gully_pixels", "gully_area_m2", "polygons", "seconds", "worker", "provider"]
FORMAT_VERSION = 1
DEFAULT_BLOCK_SIZE = 16384
INSTALL_HINT = ("segmentmany needs Dask: install it into the Python that runs GullySeg, e.g. "
                "'python3 -m pip install \"dask[distributed]\"' (the version pinned in requirements-dev.txt).")


def require_dask():
    """Import dask.distributed or raise a GullySegError saying what to install."""
    try:
        import distributed
        from dask import config  # noqa: F401
    except ImportError as exc:
        raise GullySegError(f"{INSTALL_HINT} ({exc})") from None
    return distributed


# --- inputs and planning -------------------------------------------------------------------------

def find_inputs(inputs=None, folder=None, pattern="*.tif"):
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


def scene_names(paths):
    """A unique folder name per input: the file's stem, ``_2``, ``_3`` ... for repeated stems."""
    names, seen = [], {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0] or "scene"
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        n = seen.get(stem.lower(), 0) + 1
        seen[stem.lower()] = n
        names.append(stem if n == 1 else f"{stem}_{n}")
    return names


def plan_blocks(width, height, block_size):
    """(x, y, w, h) blocks of ``block_size`` (a multiple of 256) covering ``width`` x ``height``."""
    return [(x, y, min(block_size, width - x), min(block_size, height - y))
            for y in range(0, height, block_size) for x in range(0, width, block_size)]


def file_sha256(path, chunk=8 << 20):
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


def write_json_atomic(path, data):
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_complete(sidecar, signature, size):
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


# --- the worker side -----------------------------------------------------------------------------

_MODELS = {}
_MODELS_LOCK = threading.Lock()


def _cached_model(path, threads):
    """The worker process's ModelInfo for ``path`` (loaded once, shared by the worker's threads)."""
    from .onnx_model import load_model

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, int(threads or 0))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(path, threads=threads or None)
            _MODELS.clear()  # one model per worker process
            _MODELS[key] = model
    return model


class _TaskFeedback(Feedback):
    """Cancelled when the job's Dask Event is set (checked at most every ``interval`` seconds)."""

    def __init__(self, event_name, interval=1.0):
        self._interval = interval
        self._next = 0.0
        self._cancelled = False
        self._event = None
        if event_name:
            try:  # here, in the task's thread, where the worker's client is found; polled from other threads
                from distributed import Event

                self._event = Event(event_name)
            except Exception:  # noqa: BLE001 - not on a Dask worker: never cancelled
                self._event = None

    def is_cancelled(self):
        if self._cancelled or self._event is None:
            return self._cancelled
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            try:
                self._cancelled = bool(self._event.is_set())
            except Exception:  # noqa: BLE001 - scheduler unreachable: the task is lost anyway
                pass
        return self._cancelled


def _worker_id():
    try:
        from distributed import get_worker

        return get_worker().address
    except Exception:  # noqa: BLE001 - outside a Dask worker
        return f"local:{os.getpid()}"


def _worker_threads(spec):
    if spec.get("threads"):
        return int(spec["threads"])
    try:
        from distributed import get_worker

        w = get_worker()
        nthreads = getattr(getattr(w, "state", None), "nthreads", None) or getattr(w, "nthreads", 1)
        host = w.address.split("://")[-1].rsplit(":", 1)[0]
        per_host = int((spec.get("host_workers") or {}).get(host, 1))
    except Exception:  # noqa: BLE001
        nthreads, per_host = 1, 1
    return max(1, (os.cpu_count() or 1) // max(1, int(nthreads) * per_host))


def _segment_kwargs(spec):
    p = spec["params"]
    kw = dict(bands=p["bands"], overlap=p["overlap"], batch_size=p["batch_size"], threshold=p["threshold"],
              tta=p["tta"], compression=p["compression"])
    if p.get("context_margin") is not None:
        kw["context_margin"] = p["context_margin"]
    if p.get("mask"):
        kw["mask_wkts"] = _mask_in_crs(p["mask"], spec["crs_wkt"])
    return kw


def _mask_in_crs(mask, crs_wkt):
    """MASK_LAYER polygons (wkts, their CRS as WKT) as WKTs in the scene's CRS."""
    wkts, src_wkt = mask
    if not src_wkt:
        return list(wkts)
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromWkt(src_wkt)
    dst.ImportFromWkt(crs_wkt)
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if src.IsSame(dst):
        return list(wkts)
    ct = osr.CoordinateTransformation(src, dst)
    out = []
    for wkt in wkts:
        g = ogr.CreateGeometryFromWkt(wkt)
        g.Transform(ct)
        out.append(g.ExportToWkt())
    return out


def run_task(spec):
    """One task on a worker: a whole scene, a block, or the assembly of a scene's blocks.

    Returns a result dict (status done/failed). GullySegError (the scene's own fault) becomes
    status 'failed' with the message; other exceptions propagate so that Dask retries the task.
    """
    t0, c0 = time.monotonic(), time.process_time()
    res = {"scene": spec["scene"], "kind": spec["kind"], "worker": _worker_id(), "block": spec.get("block")}
    fb = _TaskFeedback(spec.get("event"))
    try:
        if spec["kind"] == "scene":
            res.update(_run_scene(spec, fb))
        elif spec["kind"] == "block":
            res.update(_run_block(spec, fb))
        else:
            res.update(_assemble(spec, fb))
        res["status"] = "done"
    except Cancelled:
        res.update(status="cancelled", error="cancelled")
    except GullySegError as exc:
        res.update(status="failed", error=str(exc))
    res["seconds"] = time.monotonic() - t0
    res["cpu_seconds"] = time.process_time() - c0  # the worker process's, all threads (its other tasks too)
    return res


def _remove_outputs(folder, names):
    for name in names:
        gdalio.remove_with_side_files(os.path.join(folder, name))


def _run_scene(spec, fb):
    from . import inference

    folder = spec["folder"]
    os.makedirs(folder, exist_ok=True)
    sidecar = os.path.join(folder, SIDECAR)
    with contextlib.suppress(FileNotFoundError):
        os.remove(sidecar)  # never a stale sidecar beside new outputs
    model = _cached_model(spec["model"], _worker_threads(spec))
    p = spec["params"]
    poly = os.path.join(folder, POLYGONS) if p["polygons"] else None
    r = inference.segment_raster(
        spec["input"], model, output_probability=os.path.join(folder, PROBABILITY),
        output_mask=os.path.join(folder, MASK), output_polygons=poly, min_area=p["min_area"],
        simplify=p["simplify"], overwrite=True, feedback=fb, **_segment_kwargs(spec))
    out = {"pixels_processed": int(r["pixels_processed"]), "gully_pixels": int(r["gully_pixels"]),
           "gully_area_m2": float(r["gully_area_m2"]), "polygons": r["polygons"], "provider": r["provider"]}
    names = [PROBABILITY, MASK] + ([POLYGONS] if poly else [])
    ds = gdal.Open(os.path.join(folder, MASK))
    size = (ds.RasterXSize, ds.RasterYSize)
    ds = None
    _write_sidecar(sidecar, spec, names, out, size)
    return out


def _write_sidecar(path, spec, names, result, size):
    folder = os.path.dirname(path)
    data = {"version": FORMAT_VERSION, "signature": spec["signature"], "size": list(size),
            "outputs": {n: _describe(os.path.join(folder, n)) for n in names},
            "result": dict(result, worker=_worker_id())}
    write_json_atomic(path, data)


def _block_stem(block):
    x, y, w, h = block
    return f"block_{x}_{y}"


def _run_block(spec, fb):
    from . import inference

    bdir = os.path.join(spec["folder"], BLOCK_DIR)
    os.makedirs(bdir, exist_ok=True)
    stem = _block_stem(spec["block"])
    sidecar = os.path.join(bdir, stem + ".json")
    with contextlib.suppress(FileNotFoundError):
        os.remove(sidecar)
    model = _cached_model(spec["model"], _worker_threads(spec))
    kw = _segment_kwargs(spec)
    kw["compression"] = spec["params"]["block_compression"]
    r = inference.segment_raster(
        spec["input"], model, output_probability=os.path.join(bdir, stem + ".probability.tif"),
        output_mask=os.path.join(bdir, stem + ".mask.tif"), overwrite=True, feedback=fb,
        block=tuple(spec["block"]), **kw)
    out = {"pixels_processed": int(r["pixels_processed"]), "gully_pixels": int(r["gully_pixels"]),
           "gully_area_m2": float(r["gully_area_m2"]), "provider": r["provider"]}
    _write_sidecar(sidecar, spec, [stem + ".probability.tif", stem + ".mask.tif"], out, spec["block"][2:])
    return out


def _assemble(spec, fb):
    """Copy the block files into the scene's GeoTIFFs, trace polygons, write the sidecar."""
    from . import inference, polygonize

    folder = spec["folder"]
    bdir = os.path.join(folder, BLOCK_DIR)
    sidecar = os.path.join(folder, SIDECAR)
    with contextlib.suppress(FileNotFoundError):
        os.remove(sidecar)
    blocks = spec["block_results"]
    bad = [b for b in blocks if b.get("status") not in ("done", "skipped")]
    if bad:
        raise GullySegError(bad[0].get("error") or "a block of the scene failed")
    p = spec["params"]
    options = inference.output_options(p["compression"])
    options = [o for o in gdalio.GTIFF_TILED if not o.startswith("COMPRESS")] + options
    for name, kind in ((PROBABILITY, "probability"), (MASK, "mask")):
        fb.check_cancelled()
        files = [os.path.join(bdir, f"{_block_stem(b['block'])}.{kind}.tif") for b in blocks]
        vrt = f"/vsimem/gullyseg_assemble_{uuid.uuid4().hex}.vrt"
        try:
            gdal.BuildVRT(vrt, files)
            first = gdal.Open(files[0])
            with gdalio.atomic_output(os.path.join(folder, name), True, "OUTPUT") as tmp:
                out = gdal.Translate(tmp, vrt, options=gdal.TranslateOptions(format="GTiff", creationOptions=options))
                band, src_band = out.GetRasterBand(1), first.GetRasterBand(1)
                band.SetDescription(src_band.GetDescription())
                out.SetMetadata(first.GetMetadata())
                if (out.RasterXSize, out.RasterYSize) != (spec["width"], spec["height"]):
                    raise GullySegError(f"assembling '{name}' of scene {spec['scene']} gave the wrong size")
                out = None
            first = None
        finally:
            gdal.Unlink(vrt)
    result = {k: sum(b[k] for b in blocks) for k in ("pixels_processed", "gully_pixels")}
    result["gully_area_m2"] = float(sum(b["gully_area_m2"] for b in blocks))
    result["provider"] = next((b.get("provider") for b in blocks if b.get("provider")), None)
    result["polygons"] = None
    names = [PROBABILITY, MASK]
    if p["polygons"]:
        poly = os.path.join(folder, POLYGONS)
        min_area = p["min_area"]
        if min_area is None:  # segment's default: the area of MIN_AREA_PIXELS pixels
            gt = gdal.Open(os.path.join(folder, MASK)).GetGeoTransform()
            min_area = inference.MIN_AREA_PIXELS * abs(gt[1] * gt[5])
        with gdalio.atomic_output(poly, True, "OUTPUT_POLYGONS") as tmp:
            result["polygons"] = polygonize.polygonize_bounded(
                os.path.join(folder, MASK), os.path.join(folder, PROBABILITY), tmp, min_area=min_area,
                simplify=p["simplify"], layer_name="polygons", feedback=fb)
        names.append(POLYGONS)
    _write_sidecar(sidecar, spec, names, result, (spec["width"], spec["height"]))
    shutil.rmtree(bdir, ignore_errors=True)
    return result


def _bootstrap(package, root, spec):
    """Run ``run_task(spec)`` on a worker, importing GullySeg's engine from ``root`` when needed.

    Pickled by value (its ``__module__`` is set to a name no worker has), so a worker needs no
    GullySeg on its path: the plugin's folder (same path, or $GULLYSEG_PLUGIN_DIR) is enough.
    """
    import importlib
    import importlib.util
    import os
    import sys

    name = package + ".processing.engine.distributed"
    module = sys.modules.get(name)
    if module is None:
        try:
            module = importlib.import_module(name)
        except ImportError:
            folder = os.environ.get("GULLYSEG_PLUGIN_DIR") or root
            init = os.path.join(folder, "__init__.py")
            if not os.path.isfile(init):
                raise ImportError(f"GullySeg is not importable on this worker and '{init}' does not exist: "
                                  "set GULLYSEG_PLUGIN_DIR to the plugin's folder") from None
            if package not in sys.modules:
                pspec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[folder])
                pkg = importlib.util.module_from_spec(pspec)
                sys.modules[package] = pkg
                pspec.loader.exec_module(pkg)
            module = importlib.import_module(name)
    return module.run_task(spec)


# cloudpickle pickles functions of modules a worker cannot import by value: this one must travel that way
_bootstrap.__module__ = "gullyseg_dask_bootstrap"
_PACKAGE = __name__.split(".")[0]
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- the client side -----------------------------------------------------------------------------

def _python_executable():
    """A Python interpreter for spawned worker processes (QGIS's sys.executable may be QGIS itself)."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return None
    for cand in (os.path.join(sys.prefix, "bin", "python3"), os.path.join(sys.exec_prefix, "python.exe"),
                 shutil.which("python3")):
        if cand and os.path.isfile(cand):
            return cand
    return None


@contextlib.contextmanager
def _client(scheduler, workers, threads_per_worker, feedback):
    """A dask.distributed Client: on ``scheduler`` (tcp://...) or on a new LocalCluster."""
    require_dask()
    import multiprocessing.spawn as mp_spawn

    from distributed import Client, LocalCluster

    cluster = None
    old_exe = None
    try:
        if scheduler:
            if "://" not in scheduler:
                scheduler = "tcp://" + scheduler
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise GullySegError(f"SCHEDULER: cannot reach the Dask scheduler at '{scheduler}': {exc}") from None
        else:
            exe = _python_executable()
            if exe:
                old_exe = mp_spawn.get_executable()
                mp_spawn.set_executable(exe)
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=int(threads_per_worker),
                                   processes=True, dashboard_address=":0", silence_logs=logging.ERROR,
                                   host="127.0.0.1")
            client = Client(cluster)
        info = client.scheduler_info()
        link = None
        if "dashboard" in (info.get("services") or {}):
            try:  # the dashboard's pages need bokeh (on the scheduler's machine)
                import bokeh  # noqa: F401

                link = client.dashboard_link
            except ImportError:
                pass
        nw = len(info.get("workers", {}))
        feedback.info(f"Dask scheduler {client.scheduler.address}: {nw} worker(s), "
                      f"{sum(w.get('nthreads', 0) for w in info.get('workers', {}).values())} thread(s)"
                      + (f"; dashboard {link}" if link else "; no dashboard (install bokeh for one)"))
        try:
            yield client, cluster
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=20)
        if old_exe is not None:
            mp_spawn.set_executable(old_exe)


def _scene_signature(model_sig, params, input_path):
    keep = {k: params[k] for k in ("bands", "overlap", "threshold", "tta", "compression", "polygons", "min_area",
                                   "simplify", "context_margin")}
    if params.get("mask"):
        keep["mask_sha256"] = hashlib.sha256(json.dumps(params["mask"]).encode()).hexdigest()
    return {"model": model_sig, "params": keep, "input": _input_signature(input_path)}


def _crs_tag(crs_wkt):
    srs = osr.SpatialReference()
    try:
        srs.ImportFromWkt(crs_wkt)
        srs.AutoIdentifyEPSG()
    except RuntimeError:
        pass
    auth, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    if auth and code:
        return f"{auth}_{code}"
    return "crs_" + hashlib.sha1(crs_wkt.encode()).hexdigest()[:8]


def segment_many(inputs, model, output_dir, bands=None, overlap=None, batch_size=8, threshold=None, tta=0,
                 mask=None, compression="DEFLATE", polygons=False, min_area=None, simplify=0.0, scheduler=None,
                 workers=2, threads_per_worker=1, block_size=DEFAULT_BLOCK_SIZE, retries=2, model_threads=0,
                 block_compression="ZSTD", context_margin=None, feedback=None):
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
    from .onnx_model import load_model

    feedback = feedback or Feedback()
    t_start = time.monotonic()
    paths = [os.path.abspath(str(p)) for p in inputs]
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
    require_dask()
    model_path = os.path.abspath(str(model))
    probe = load_model(model_path, threads=1)  # checks the model before anything is written
    from . import inference

    if overlap is not None and overlap >= 0 and overlap >= min(probe.window):
        raise GullySegError(f"OVERLAP {overlap} must be smaller than the window ({probe.window[0]} pixels).")
    params = {"bands": bands or None, "overlap": None if overlap is None or overlap < 0 else int(overlap),
              "batch_size": int(batch_size),
              "threshold": None if threshold is None or threshold < 0 else float(threshold),
              "tta": int(tta), "compression": str(compression).upper(), "polygons": bool(polygons),
              "min_area": None if min_area is None or min_area < 0 else float(min_area),
              "simplify": float(simplify),
              "context_margin": None if context_margin is None or context_margin < 0 else int(context_margin),
              "mask": [list(mask[0]), mask[1]] if mask else None, "block_compression": block_compression}
    model_sig = _model_signature(model_path)
    names = scene_names(paths)
    os.makedirs(output_dir, exist_ok=True)

    # plan: check each scene here (unreadable, not projected, wrong bands fail now), skip complete ones
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


def _has_block_option():
    import inspect

    from . import inference

    return "block" in inspect.signature(inference.segment_raster).parameters


def _run_jobs(todo, params, scheduler, workers, threads_per_worker, retries, model_threads, feedback, stats,
              total_px, n_blocks, t_start):
    from distributed import Event, wait

    with _client(scheduler, workers, threads_per_worker, feedback) as (client, cluster):
        info = client.scheduler_info().get("workers", {})
        host_workers = {}
        for addr in info:
            host = addr.split("://")[-1].rsplit(":", 1)[0]
            host_workers[host] = host_workers.get(host, 0) + 1
        event_name = f"gullyseg-cancel-{uuid.uuid4().hex}"
        event = Event(event_name, client=client)
        event.clear()
        pending = {}  # future -> (row, kind)
        for row, spec, blocks in todo:
            spec.update(event=event_name, threads=int(model_threads or 0), host_workers=host_workers)
            if not blocks:
                f = client.submit(_bootstrap, _PACKAGE, _ROOT, dict(spec, kind="scene"), retries=retries,
                                  key=f"scene-{spec['scene']}-{uuid.uuid4().hex[:6]}", pure=False)
                pending[f] = (row, "scene", spec["width"] * spec["height"])
                continue
            row["blocks"] = len(blocks)
            block_items = []
            for block in blocks:
                bspec = dict(spec, kind="block", block=list(block))
                stem = _block_stem(block)
                done = read_complete(os.path.join(spec["folder"], BLOCK_DIR, stem + ".json"), spec["signature"],
                                     block[2:])
                if done is not None:
                    block_items.append(dict(done["result"], status="skipped", block=list(block)))
                    stats["blocks_done"] += 1
                    continue
                f = client.submit(_bootstrap, _PACKAGE, _ROOT, bspec, retries=retries,
                                  key=f"block-{spec['scene']}-{stem}-{uuid.uuid4().hex[:6]}", pure=False)
                pending[f] = (row, "block", block[2] * block[3])
                block_items.append(f)
            aspec = dict(spec, kind="assemble", block_results=block_items)
            f = client.submit(_bootstrap, _PACKAGE, _ROOT, aspec, retries=retries,
                              key=f"assemble-{spec['scene']}-{uuid.uuid4().hex[:6]}", pure=False)
            pending[f] = (row, "assemble", 0)
        n_scenes = len(todo)
        all_futures = list(pending)
        try:
            while pending:
                if feedback.is_cancelled():
                    raise Cancelled()
                try:
                    done, _ = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for f in done:
                    row, kind, px = pending.pop(f)
                    try:
                        res = f.result()
                    except Exception as exc:  # noqa: BLE001 - retries exhausted, worker lost too often
                        res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "worker": None,
                               "seconds": 0.0}
                    _record(row, kind, res, px, stats)
                    if kind == "block" and res.get("status") == "done":
                        stats["blocks_done"] += 1
                    if kind in ("scene", "assemble"):
                        stats["scenes_done"] += 1
                    elapsed = max(1e-6, time.monotonic() - t_start)
                    share = ", ".join(f"{w} {100.0 * n / max(1, stats['pixels']):.0f} %"
                                      for w, n in sorted(stats["by_worker"].items()))
                    feedback.info(
                        f"{row['scene']} {kind}{'' if kind != 'block' else ' ' + str(res.get('block'))}: "
                        f"{res.get('status')}{' - ' + res['error'] if res.get('error') else ''}; scenes "
                        f"{stats['scenes_done']}/{n_scenes}, blocks {stats['blocks_done']}/{n_blocks}, "
                        f"{stats['pixels'] / 1e6 / elapsed:.2f} Mpx/s; per worker: {share}")
                    feedback.progress(100.0 * stats["pixels"] / max(1, total_px))
        except BaseException:
            with contextlib.suppress(Exception):
                event.set()
            with contextlib.suppress(Exception):
                client.cancel(all_futures, force=True)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close(timeout=20)
            else:
                time.sleep(2.0)  # remote tasks see the event within about a second
            for row, spec, _ in todo:
                if row["status"] not in ("done", "failed"):
                    _remove_outputs(spec["folder"], [SIDECAR, PROBABILITY, MASK, POLYGONS])
                    shutil.rmtree(os.path.join(spec["folder"], BLOCK_DIR), ignore_errors=True)
                    _cleanup_partials(os.path.dirname(spec["folder"]), [spec["folder"]])
            raise


def _record(row, kind, res, px, stats):
    worker = res.get("worker")
    if res.get("status") == "done" and kind in ("scene", "block"):
        stats["pixels"] += px
        stats["by_worker"][worker] = stats["by_worker"].get(worker, 0) + px
    if kind == "block":
        row["seconds"] = (row["seconds"] or 0.0) + res.get("seconds", 0.0)
        row["cpu_seconds"] = row.get("cpu_seconds", 0.0) + res.get("cpu_seconds", 0.0)
        workers = set(filter(None, (row["worker"] or "").split(";"))) | {worker}
        row["worker"] = ";".join(sorted(w for w in workers if w))
        if res.get("status") != "done" and row["status"] != "failed":
            row.update(status="failed", error=res.get("error") or res.get("status"))
        return
    if res.get("status") == "done":
        row.update(status="done", error="", pixels_processed=res["pixels_processed"],
                   gully_pixels=res["gully_pixels"], gully_area_m2=res["gully_area_m2"],
                   polygons=res.get("polygons"), provider=res.get("provider"))
    elif row["status"] != "failed":
        row.update(status="failed", error=res.get("error") or res.get("status"))
    row["seconds"] = (row["seconds"] or 0.0) + res.get("seconds", 0.0)
    row["cpu_seconds"] = row.get("cpu_seconds", 0.0) + res.get("cpu_seconds", 0.0)  # summary.json only
    if kind == "assemble":
        row["assembly_seconds"] = res.get("seconds", 0.0)  # summary.json only (benchmarks/bench_segmentmany.py)
    if kind == "scene":
        row["worker"] = worker
    elif worker and worker not in (row["worker"] or "").split(";"):
        row["worker"] = ";".join(filter(None, [row["worker"], worker]))


def _cleanup_partials(output_dir, folders):
    """Remove temporary files left by lost workers (``.name.partial-xxxx``, ``.gullyseg-*``)."""
    for folder in folders:
        for pattern in (".*.partial-*", ".gullyseg-*"):
            for p in glob.glob(os.path.join(glob.escape(folder), pattern)) + glob.glob(
                    os.path.join(glob.escape(folder), BLOCK_DIR, pattern)):
                with contextlib.suppress(OSError):
                    os.remove(p)


def _write_mosaics(output_dir, rows, polygons, feedback):
    """mosaic VRT(s) over the masks and the merged polygons GeoPackage, one per CRS (see module doc)."""
    by_crs = {}
    for row in rows:
        if row["status"] in ("done", "skipped"):
            by_crs.setdefault(row["_crs"], []).append(row)
    outputs = {"mosaics": [], "polygons": None}
    for old in glob.glob(os.path.join(glob.escape(output_dir), "mosaic*.vrt")):
        os.remove(old)
    single = len(by_crs) == 1
    for crs_wkt, group in by_crs.items():
        name = "mosaic.vrt" if single else f"mosaic_{_crs_tag(crs_wkt)}.vrt"
        path = os.path.join(output_dir, name)
        masks = [os.path.join(output_dir, r["scene"], MASK) for r in group]
        with gdalio.atomic_output(path, True, "mosaic") as tmp:
            gdal.BuildVRT(tmp, masks, options=gdal.BuildVRTOptions(srcNodata=255, VRTNodata=255)).FlushCache()
            _relative_vrt(tmp, output_dir)
        outputs["mosaics"].append(path)
    if len(by_crs) > 1:
        feedback.info(f"Scenes in {len(by_crs)} CRSs: one mask mosaic per CRS "
                      f"({', '.join(map(os.path.basename, outputs['mosaics']))})")
    if polygons and by_crs:
        path = os.path.join(output_dir, POLYGONS)
        with gdalio.atomic_output(path, True, "OUTPUT_POLYGONS") as tmp:
            _merge_polygons(tmp, output_dir, by_crs, single)
        outputs["polygons"] = path
    return outputs


def _relative_vrt(vrt_path, output_dir):
    """Make the VRT's source paths relative, so the output folder can be moved."""
    with open(vrt_path, encoding="utf-8") as f:
        text = f.read()
    prefix = output_dir.rstrip(os.sep) + os.sep
    text = text.replace('relativeToVRT="0">' + prefix, 'relativeToVRT="1">')
    with open(vrt_path, "w", encoding="utf-8") as f:
        f.write(text)


def _merge_polygons(path, output_dir, by_crs, single):
    drv = ogr.GetDriverByName("GPKG")
    out = drv.CreateDataSource(path)
    for crs_wkt, group in by_crs.items():
        srs = osr.SpatialReference()
        srs.ImportFromWkt(crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        layer = out.CreateLayer("gullies" if single else f"gullies_{_crs_tag(crs_wkt)}", srs=srs,
                                geom_type=ogr.wkbPolygon, options=["FID=fid"])
        layer.CreateField(ogr.FieldDefn("scene", ogr.OFTString))
        fields = None
        layer.StartTransaction()
        for row in group:
            src = ogr.Open(os.path.join(output_dir, row["scene"], POLYGONS))
            if src is None:
                continue
            src_layer = src.GetLayer(0)
            sdefn = src_layer.GetLayerDefn()
            if fields is None:  # names and types (a FieldDefn dies with its source)
                fields = [(sdefn.GetFieldDefn(i).GetName(), sdefn.GetFieldDefn(i).GetType())
                          for i in range(sdefn.GetFieldCount())]
                layer.CommitTransaction()
                for name, kind in fields:
                    layer.CreateField(ogr.FieldDefn(name, kind))
                layer.StartTransaction()
            defn = layer.GetLayerDefn()
            for feat in src_layer:
                o = ogr.Feature(defn)
                o.SetGeometry(feat.GetGeometryRef())
                o.SetField("scene", row["scene"])
                for name, _ in fields:
                    if feat.IsFieldSetAndNotNull(name):
                        o.SetField(name, feat.GetField(name))
                layer.CreateFeature(o)
            src = None
        layer.CommitTransaction()
    out = None


def _write_summary(output_dir, summary):
    rows = summary["scenes"]
    write_json_atomic(os.path.join(output_dir, "summary.json"), summary)
    path = os.path.join(output_dir, "summary.csv")
    tmp = os.path.join(output_dir, f".summary.csv.partial-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else (round(row[k], 3) if isinstance(row[k], float) else row[k]))
                        for k in SUMMARY_FIELDS})
    os.replace(tmp, path)


def scenes_per_hour(pixels_per_second, scene_px=31000 * 31000):
    """Scenes of ``scene_px`` pixels per hour at a measured rate (docs/scale.md)."""
    return 3600.0 * pixels_per_second / float(scene_px) if pixels_per_second else math.nan
