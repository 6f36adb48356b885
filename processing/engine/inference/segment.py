"""segment_raster: a model over a GDAL raster, to probability/mask GeoTIFFs and polygons."""

import contextlib
import math
import os
import threading
import time
import uuid
from collections import namedtuple
from dataclasses import asdict, dataclass, field

import numpy as np
from osgeo import gdal, gdal_array

from .. import gdalio
from ..errors import GullySegError
from ..feedback import Feedback
from ..onnx_model import ModelInfo, load_model, parse_bands
from .grid import _grid
from .options import (
    MIN_AREA_PIXELS,
    NODATA,
    PROB_SCALE,
    RESOLUTION_TOLERANCE,
    TTA_NAMES,
    SegmentOptions,
    _check_block,
    _intersect,
    _region_from_extent,
    output_options,
)
from .pipeline import _blend_panels
from .readers import _check_input_range, _GdalReader, _PolygonMask, _report_observed, _validity, parse_mask_wkts
from .runner import _CancelWatcher, _Runner
from .weights import _model_tta
from .writer import _OutputSink


def resolve_bands(model, band_count, bands=None) -> tuple:
    """Bands feeding the model: BANDS, else the model's metadata, else 1..C; checked."""
    chosen = parse_bands(bands) if bands is not None else None
    source = "BANDS"
    if chosen is None and model.bands:
        chosen, source = list(model.bands), "the model's metadata (gullyseg.bands)"
    if chosen is None:
        if band_count < model.channels:
            raise GullySegError(
                f"INPUT: the raster has {band_count} band(s) but the model '{os.path.basename(model.path)}' needs "
                f"{model.channels} input channels."
            )
        chosen, source = list(range(1, model.channels + 1)), "default 1..C"
    if len(chosen) != model.channels:
        raise GullySegError(
            f"BANDS: {len(chosen)} band(s) {chosen} from {source}, but the model '{os.path.basename(model.path)}' "
            f"has {model.channels} input channels."
        )
    bad = [b for b in chosen if b > band_count]
    if bad:
        raise GullySegError(f"BANDS: band(s) {bad} from {source} do not exist; the raster has {band_count} band(s).")
    return chosen, source


@dataclass
class SegmentResult:
    """What ``segment_raster`` did. Dict-style access (``result["windows"]``) works as before."""

    provider: str
    threshold: float
    overlap: int
    context_margin: int
    bands: list
    resampled: bool
    outputs: dict  # {probability, mask, polygons}: the paths written (None where not asked for)
    block: tuple = None  # (x, y, w, h) written, in input pixels; None for a whole run
    windows: int = 0  # windows run (a window across a block's or panel's edge counted once)
    windows_skipped: int = 0  # windows without a valid pixel
    pixels_processed: int = 0  # valid output pixels
    gully_pixels: int = 0
    gully_area_m2: float = 0.0
    input_maximum: float = None  # the largest valid input value, for integer data that can exceed input_max
    polygons: int = None  # polygons written (None without OUTPUT_POLYGONS)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, key):
        if key in self.__dataclass_fields__ and key != "extra":
            return getattr(self, key)
        return self.extra[key]

    def __contains__(self, key):
        return (key in self.__dataclass_fields__ and key != "extra") or key in self.extra

    def get(self, key, default=None) -> object:
        return self[key] if key in self else default

    def keys(self) -> list:
        return [k for k in self.__dataclass_fields__ if k != "extra"] + list(self.extra)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


_Counts = namedtuple("_Counts", "windows windows_skipped valid_pixels gully_pixels")


@dataclass
class _Input:
    """The input raster as a run sees it: grid, bands, scaling, output region, resolution."""

    path: str
    info: object
    bands: list
    band_source: str
    dtype: object
    scale: float
    out: tuple  # (x, y, w, h): the output region in input pixels
    wkts: list  # MASK_LAYER polygons (WKT) or None
    resample: float  # the model's pixel size (m) when the model runs on a warped copy, else None
    pixel_area: float
    observed: object  # readers._Observed or None


def _open_input(input_path, model, bands, extent, mask_wkts, feedback):
    ds, info = gdalio.open_checked(input_path, "INPUT", projected=True)
    band_list, band_source = resolve_bands(model, info.bands, bands)
    dtypes = {ds.GetRasterBand(b).DataType for b in band_list}
    if len(dtypes) > 1:
        raise GullySegError(f"BANDS: bands {band_list} of '{input_path}' have different data types.")
    dtype = np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(dtypes.pop()))
    scale = model.input_scale(dtype)
    observed = _check_input_range(ds, band_list, dtype, scale, model, feedback)
    ds = None
    out = (0, 0, info.width, info.height)
    if extent is not None:
        out = _region_from_extent(info, extent)
        if out is None:
            raise GullySegError(f"EXTENT {tuple(extent)} does not overlap INPUT '{input_path}'.")
    wkts = None
    if mask_wkts is not None:
        wkts, bbox = parse_mask_wkts(mask_wkts)
        box = _region_from_extent(info, bbox) if bbox[2] > bbox[0] and bbox[3] > bbox[1] else None
        out = _intersect(out, box) if box else None
        if out is None:
            raise GullySegError(f"MASK_LAYER: no polygon overlaps INPUT '{input_path}'" +
                                (" within EXTENT." if extent is not None else "."))
    gt = info.geotransform
    px, py = abs(gt[1]), abs(gt[5])
    resample = None
    if model.resolution_cm:
        res_m = model.resolution_cm / 100.0
        if max(abs(px - res_m), abs(py - res_m)) / res_m > RESOLUTION_TOLERANCE:
            resample = res_m
    return _Input(str(input_path), info, band_list, band_source, dtype, scale, out, wkts, resample, px * py,
                  observed)


def _check_block_options(block, src, opts, model):
    block = _check_block(block, src.info, src.out, src.path)
    if opts.poly_path:
        raise GullySegError("block: OUTPUT_POLYGONS cannot be made for a block (polygons cross block edges); "
                            "polygonize the mosaicked mask instead (gdal_polygonize or a whole run).")
    if src.resample:
        raise GullySegError(
            f"block: the model runs at {model.resolution_cm:g} cm/px, not the raster's "
            f"{abs(src.info.geotransform[1]) * 100:g} cm/px (resampled through a warped VRT), which blocks do not "
            "support; resample INPUT to the model's resolution first (gdalwarp -tr) and run blocks of that.")
    return block


def _log_run(model, src, opts, feedback):
    info, out = src.info, src.out
    feedback.info(model.summary())
    feedback.info(
        f"INPUT {info.path}: {info.width}x{info.height} px, {info.bands} band(s) {src.dtype.name}, "
        f"{abs(info.geotransform[1]):g} m pixels, {info.crs_label}; bands {src.bands} ({src.band_source}); values / "
        f"{src.scale:g}" + ("" if not np.any(model.mean) and np.all(model.std == 1) else
                            f", then (x - {list(np.round(model.mean, 4))}) / {list(np.round(model.std, 4))}")
    )
    feedback.info(
        f"Window {model.window[0]}x{model.window[1]}, overlap {opts.overlap} px, batch {opts.batch_size}, TTA "
        f"{TTA_NAMES[opts.tta]}, threshold {opts.threshold:g} ({opts.threshold_source}); output region "
        f"{out[2]}x{out[3]} px at ({out[0]}, {out[1]}); execution provider: {model.provider}, {model.lanes} "
        f"batch(es) at once on {model.threads // model.lanes if model.threads else 'the default'} thread(s) each; "
        f"outputs {opts.compression}-compressed"
    )
    if tuple(model.core) != tuple(model.window):
        feedback.info(
            f"The model's output is the centred {model.core[0]}x{model.core[1]} core of its {model.window[0]}x"
            f"{model.window[1]} window: windows are laid out by their core and read with {model.offset[0]} px of "
            "context around it; beyond the scene edge that context is padded with zeros (as Deepness pads), so the "
            f"pixels within {max(model.offset)} px of the edge are computed partly from zeros.")


def segment_raster(input_path, model, output_probability=None, output_mask=None, output_polygons=None, bands=None,
                   extent=None, mask_wkts=None, overlap=None, batch_size=8, threshold=None, tta=0, min_area=None,
                   simplify=0, overwrite=False, feedback=None, threads=None, compression="DEFLATE", block=None,
                   context_margin=None) -> "SegmentResult":
    """Run ``model`` (a ModelInfo or an .onnx path) over ``input_path``; returns a ``SegmentResult``.

    extent: (xmin, ymin, xmax, ymax) in the raster's CRS; mask_wkts: polygons (WKT) in the
    raster's CRS; overlap: pixels (None = the model's default: metadata tiles_overlap or a quarter
    of the window); threshold: None = the model's seg_thresh, else 0.5; tta: 0, 1 or 2; min_area: m2
    (None = ``MIN_AREA_PIXELS`` pixels, 0 = every polygon); context_margin: pixels (None = the
    model's gullyseg.context_margin, else 0);
    compression: of the two GeoTIFFs, a key of ``COMPRESSIONS`` (DEFLATE, ZSTD, LZW, NONE).
    block: (x, y, w, h) in pixels of the input raster: only that part of the outputs (clipped to the
    output region) is produced; the windows are those of the whole run that touch it, and its
    pixels are bit-identical to the same pixels of a whole run (``distributed`` runs blocks on
    several workers and mosaics them). Not with OUTPUT_POLYGONS or a resampled model.
    The result (``SegmentResult``; ``result["key"]`` works too): pixels_processed, gully_area_m2,
    gully_pixels, provider, windows, windows_skipped, resampled, polygons (count or None),
    outputs {probability, mask, polygons}, block, context_margin, input_maximum, seconds.
    """
    feedback = feedback or Feedback()
    t0 = time.monotonic()
    if not isinstance(model, ModelInfo):
        model = load_model(model, threads=threads)
    opts = SegmentOptions.build(model, input_path, output_probability, output_mask, output_polygons, overwrite,
                                threshold, tta, overlap, context_margin, batch_size, min_area, simplify, compression,
                                feedback)
    _model_tta(model, opts.tta)
    src = _open_input(input_path, model, bands, extent, mask_wkts, feedback)
    if opts.min_area is None:  # specks of 1-3 pixels are noise, not gullies
        opts.min_area = MIN_AREA_PIXELS * src.pixel_area
    if block is not None:
        block = _check_block_options(block, src, opts, model)
    _log_run(model, src, opts, feedback)
    result = SegmentResult(
        provider=model.provider, threshold=opts.threshold, overlap=opts.overlap, context_margin=opts.context,
        bands=src.bands, resampled=bool(src.resample), block=block,
        outputs={"probability": opts.prob_path, "mask": opts.mask_path, "polygons": opts.poly_path})
    _run(model, src, opts, block, result, feedback)
    feedback.progress(100)
    result.seconds = time.monotonic() - t0
    feedback.info(
        f"Done in {result.seconds:.1f} s: {result.windows} windows run, {result.windows_skipped} skipped "
        f"(no data); {result.pixels_processed} pixels, gully area {result.gully_area_m2:.1f} m2 ({model.provider})"
    )
    return result


def _run(model, src, opts, block, result, feedback):
    """The outputs, written atomically (temporary names renamed at the end; nothing left on error)."""
    from .. import polygonize as polygonize_mod

    runner = _Runner(model, opts.batch_size, opts.tta)
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        tmp = {}
        for key, path, what in (("prob", opts.prob_path, "OUTPUT_PROBABILITY"), ("mask", opts.mask_path, "OUTPUT_MASK"),
                                ("poly", opts.poly_path, "OUTPUT_POLYGONS")):
            tmp[key] = stack.enter_context(gdalio.atomic_output(path, opts.overwrite, what)) if path else None
        scratch = []  # temporary files of this run, removed at the end
        stack.callback(lambda: [gdalio.remove_with_side_files(p) for p in scratch])
        vsimem = []
        stack.callback(lambda: [gdal.Unlink(p) for p in vsimem])
        folder = os.path.dirname(opts.paths[0])
        for key in ("prob", "mask"):  # polygons need both rasters: scratch ones where not asked for
            if opts.poly_path and not tmp[key]:
                tmp[key] = os.path.join(folder, f".gullyseg-{key}-{uuid.uuid4().hex[:8]}.tif")
                scratch.append(tmp[key])
        stack.enter_context(_CancelWatcher(feedback, runner, stop))
        span = (0.0, 90.0 if src.resample else (92.0 if opts.poly_path else 100.0))
        if src.resample:
            counts = _resampled(src, model, runner, opts, tmp["prob"], tmp["mask"], feedback, stop, folder, scratch,
                                vsimem, span)
        else:
            counts = _direct(src, model, runner, opts, block, tmp["prob"], tmp["mask"], feedback, stop, span)
        result.windows, result.windows_skipped = counts.windows, counts.windows_skipped
        result.pixels_processed, result.gully_pixels = counts.valid_pixels, counts.gully_pixels
        result.gully_area_m2 = counts.gully_pixels * src.pixel_area
        result.input_maximum = _report_observed(src.observed, model, feedback)
        if opts.poly_path:
            feedback.check_cancelled()
            result.polygons = polygonize_mod.polygonize_bounded(
                tmp["mask"], tmp["prob"], tmp["poly"], min_area=opts.min_area, simplify=opts.simplify,
                layer_name=os.path.splitext(os.path.basename(opts.poly_path))[0], feedback=feedback.scaled(92, 100))
        feedback.check_cancelled()


def _sink_run(sink, blend):
    """``blend()`` into ``sink``; the sink is finished (or aborted on error). Returns ``_Counts``."""
    try:
        ran, skipped = blend()
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    return _Counts(ran, skipped, sink.valid_pixels, sink.gully_pixels)


def _direct(src, model, runner, opts, block, tmp_prob, tmp_mask, feedback, stop, span):
    """The model on the input grid: windows (of a block, or all) blended into the outputs."""
    info, gt = src.info, src.info.geotransform
    grid = _grid(info.width, info.height, src.out, model, opts.overlap, opts.context)
    feedback.info(f"{grid.count} windows in {len(grid.rows)} rows (last row/column snapped to the edge)")
    panels = grid.panels(block=block) if block else None
    if block:
        feedback.info(f"Block {block[2]}x{block[3]} px at ({block[0]}, {block[1]}): "
                      f"{sum(p.count for p in panels)} window(s) touch it")
    sink = _OutputSink(tmp_prob, tmp_mask, block or src.out, panels[0].region if block else grid.region, gt,
                       info.crs_wkt, opts.threshold, src.pixel_area, feedback, opts.creation_options)

    def make_reader(panel, scratch):
        return _GdalReader(src.path, src.bands, gt, info.crs_wkt, panel, src.out, src.wkts,
                           (info.width, info.height), scratch, src.observed)

    return _sink_run(sink, lambda: _blend_panels(model, grid, make_reader, src.scale, runner, sink, feedback, stop,
                                                 span, panels))


def _resampled(src, model, runner, opts, tmp_prob, tmp_mask, feedback, stop, folder, scratch, vsimem, span):
    """Run on a warped VRT at the model's resolution, then warp the probability back (see the package doc).

    Returns ``_Counts`` of the final outputs (windows on the model grid, pixels on the input grid).
    """
    info, gt, res_m = src.info, src.info.geotransform, src.resample
    ox, oy, ow, oh = src.out
    xmin, ymax = gt[0] + ox * gt[1], gt[3] + oy * gt[5]
    xmax, ymin = xmin + ow * gt[1], ymax + oh * gt[5]
    mw = max(1, math.ceil((xmax - xmin) / res_m - 1e-9))
    mh = max(1, math.ceil((ymax - ymin) / res_m - 1e-9))
    alg = "average" if res_m > abs(gt[1]) else "bilinear"
    feedback.info(
        f"The model expects {model.resolution_cm:g} cm/px, the raster has {abs(gt[1]) * 100:g} cm/px (more than "
        f"{RESOLUTION_TOLERANCE:.0%} apart): running on a warped VRT at {res_m:g} m ({mw}x{mh} px, '{alg}' "
        "resampling); the probability is warped back to the input grid (bilinear)."
    )
    vrt = f"/vsimem/gullyseg_{uuid.uuid4().hex}.vrt"
    vsimem.append(vrt)
    warped = gdal.Warp(vrt, src.path, options=gdal.WarpOptions(
        format="VRT", outputBounds=(xmin, ymax - mh * res_m, xmin + mw * res_m, ymax), width=mw, height=mh,
        resampleAlg=alg, dstAlpha=True, multithread=False))
    if warped is None:
        raise GullySegError(f"INPUT: cannot build a warped VRT of '{src.path}' at {res_m:g} m.")
    wgt = warped.GetGeoTransform()
    warped = None
    mgrid = _grid(mw, mh, (0, 0, mw, mh), model, opts.overlap, opts.context)
    feedback.info(f"{mgrid.count} windows in {len(mgrid.rows)} rows on the model grid")
    model_prob = os.path.join(folder, f".gullyseg-modelgrid-{uuid.uuid4().hex[:8]}.tif")
    scratch.append(model_prob)
    sink = _OutputSink(model_prob, None, (0, 0, mw, mh), mgrid.region, wgt, info.crs_wkt, opts.threshold,
                       res_m * res_m, feedback, output_options("ZSTD"))  # scratch: only GDAL reads it back

    def make_reader(panel, scratch):
        return _GdalReader(vrt, src.bands, wgt, info.crs_wkt, panel, (0, 0, mw, mh), src.wkts, (mw, mh), scratch,
                           src.observed)

    on_model_grid = _sink_run(sink, lambda: _blend_panels(model, mgrid, make_reader, src.scale, runner, sink,
                                                          feedback, stop, span))
    back = f"/vsimem/gullyseg_{uuid.uuid4().hex}_back.vrt"
    vsimem.append(back)
    gdal.Warp(back, model_prob, options=gdal.WarpOptions(
        format="VRT", outputBounds=(xmin, ymin, xmax, ymax), width=ow, height=oh, resampleAlg="bilinear",
        srcNodata=NODATA, dstNodata=NODATA, outputType=gdal.GDT_Float32, multithread=False))
    final = _OutputSink(tmp_prob, tmp_mask, src.out, src.out, gt, info.crs_wkt, opts.threshold, src.pixel_area,
                        feedback, opts.creation_options)
    counts = _sink_run(final, lambda: _warp_back(src, back, final, feedback, span))
    return counts._replace(windows=on_model_grid.windows, windows_skipped=on_model_grid.windows_skipped)


def _warp_back(src, back, final, feedback, span):
    """The warped-back probability onto the input grid, with the input's validity, into ``final``."""
    ox, oy, ow, oh = src.out
    gt = src.info.geotransform
    polys = _PolygonMask(src.wkts, src.info.crs_wkt) if src.wkts else None
    ds, bds = gdal.Open(src.path), gdal.Open(back)
    try:
        for y in range(0, oh, 256):
            feedback.check_cancelled()
            n = min(256, oh - y)
            prob = bds.GetRasterBand(1).ReadAsArray(0, y, ow, n).astype(np.float32)
            raw = gdalio.read_window(ds, ox, oy + y, ow, n, src.bands)
            valid = _validity(ds, src.bands, raw, ox, oy + y, ow, n) & (prob != NODATA)
            if polys is not None:
                valid &= polys.mask(gt, ox, oy + y, ow, n)
            final(oy + y, prob / PROB_SCALE, valid)
            ds.FlushCache()
            bds.FlushCache()
            feedback.progress(span[1] + (5.0 if span[1] < 95 else 0) * (y + n) / oh)
    finally:
        ds = bds = None
    return 0, 0
