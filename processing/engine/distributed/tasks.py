"""The worker side of segment_many: one task (a scene, a block, or the assembly of a scene's blocks)."""

import contextlib
import os
import shutil
import threading
import time
import uuid

from osgeo import gdal, ogr, osr

from .. import gdalio
from ..errors import Cancelled, GullySegError
from ..feedback import Feedback
from .plan import BLOCK_DIR, MASK, POLYGONS, PROBABILITY, SIDECAR
from .records import FORMAT_VERSION, _describe, write_json_atomic

_MODELS = {}
_MODELS_LOCK = threading.Lock()


def _cached_model(path, threads):
    """The worker process's ModelInfo for ``path`` (loaded once, shared by the worker's threads)."""
    from ..onnx_model import load_model

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


def run_task(spec) -> dict:
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
    from .. import inference

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
    from .. import inference

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
    from .. import inference, polygonize

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
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

