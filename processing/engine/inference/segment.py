"""segment_raster: a model over a GDAL raster, to probability/mask GeoTIFFs and polygons."""

import contextlib
import math
import os
import threading
import time
import uuid

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
    _check_block,
    _check_output,
    _intersect,
    _overlap_and_context,
    _region_from_extent,
    output_options,
)
from .pipeline import _blend_panels
from .readers import _check_input_range, _GdalReader, _PolygonMask, _report_observed, _validity, parse_mask_wkts
from .runner import _CancelWatcher, _Runner
from .weights import _model_tta
from .writer import _OutputSink


def resolve_bands(model, band_count, bands=None):
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


def segment_raster(input_path, model, output_probability=None, output_mask=None, output_polygons=None, bands=None,
                   extent=None, mask_wkts=None, overlap=None, batch_size=8, threshold=None, tta=0, min_area=None,
                   simplify=0, overwrite=False, feedback=None, threads=None, compression="DEFLATE", block=None,
                   context_margin=None):
    """Run ``model`` (a ModelInfo or an .onnx path) over ``input_path``; returns a result dict.

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
    Result: pixels_processed (valid output pixels), gully_area_m2, gully_pixels, provider, windows,
    windows_skipped, resampled, polygons (count or None), outputs {probability, mask, polygons},
    block ((x, y, w, h) written, in input pixels; None for a whole run).
    """
    from .. import polygonize as polygonize_mod

    feedback = feedback or Feedback()
    t0 = time.monotonic()
    if not isinstance(model, ModelInfo):
        model = load_model(model, threads=threads)
    ds, info = gdalio.open_checked(input_path, "INPUT", projected=True)
    band_list, band_source = resolve_bands(model, info.bands, bands)
    dtypes = {ds.GetRasterBand(b).DataType for b in band_list}
    if len(dtypes) > 1:
        raise GullySegError(f"BANDS: bands {band_list} of '{input_path}' have different data types.")
    dtype = np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(dtypes.pop()))
    scale = model.input_scale(dtype)
    observed = _check_input_range(ds, band_list, dtype, scale, model, feedback)

    prob_path = _check_output(output_probability, "OUTPUT_PROBABILITY")
    mask_path = _check_output(output_mask, "OUTPUT_MASK")
    poly_path = os.path.abspath(str(output_polygons)) if output_polygons else None
    if not (prob_path or mask_path or poly_path):
        raise GullySegError("No output chosen: give OUTPUT_PROBABILITY, OUTPUT_MASK and/or OUTPUT_POLYGONS.")
    paths = [p for p in (prob_path, mask_path, poly_path) if p]
    if len(set(paths)) != len(paths):
        raise GullySegError("OUTPUT_PROBABILITY, OUTPUT_MASK and OUTPUT_POLYGONS must be different files.")
    if os.path.abspath(str(input_path)) in paths:
        raise GullySegError("An output would overwrite INPUT; choose other output names.")
    if poly_path and os.path.splitext(poly_path)[1].lower() != ".gpkg":
        raise GullySegError(f"OUTPUT_POLYGONS: '{poly_path}' must be a GeoPackage (.gpkg).")
    for path, what in ((prob_path, "OUTPUT_PROBABILITY"), (mask_path, "OUTPUT_MASK"), (poly_path, "OUTPUT_POLYGONS")):
        if path and os.path.exists(path) and not overwrite:
            raise GullySegError(f"{what}: '{path}' already exists; choose another name or allow overwriting.")

    if threshold is None or (isinstance(threshold, (int, float)) and threshold < 0):
        threshold = model.threshold
        thr_source = "the model's metadata (seg_thresh)" if model.threshold_from_metadata else "default"
    else:
        thr_source = "THRESHOLD"
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise GullySegError(f"THRESHOLD must be within 0..1 (got {threshold}).")
    options = output_options(compression)
    if tta not in TTA_NAMES:
        raise GullySegError(f"TTA must be 0 (none), 1 (flips) or 2 (flips and rotations), got {tta}.")
    _model_tta(model, tta)
    overlap, context = _overlap_and_context(model, overlap, context_margin, feedback)
    if int(batch_size) < 1:
        raise GullySegError(f"BATCH_SIZE must be at least 1 (got {batch_size}).")
    if (min_area is not None and min_area < 0) or simplify < 0:
        raise GullySegError("MIN_AREA and SIMPLIFY must not be negative.")

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
    pixel_area = px * py
    if min_area is None:  # specks of 1-3 pixels are noise, not gullies
        min_area = MIN_AREA_PIXELS * pixel_area
    if block is not None:
        block = _check_block(block, info, out, input_path)
        if poly_path:
            raise GullySegError("block: OUTPUT_POLYGONS cannot be made for a block (polygons cross block edges); "
                                "polygonize the mosaicked mask instead (gdal_polygonize or a whole run).")
        if resample:
            raise GullySegError(
                f"block: the model runs at {model.resolution_cm:g} cm/px, not the raster's {px * 100:g} cm/px "
                "(resampled through a warped VRT), which blocks do not support; resample INPUT to the model's "
                "resolution first (gdalwarp -tr) and run blocks of that.")

    feedback.info(model.summary())
    feedback.info(
        f"INPUT {info.path}: {info.width}x{info.height} px, {info.bands} band(s) {dtype.name}, {px:g} m pixels, "
        f"{info.crs_label}; bands {band_list} ({band_source}); values / {scale:g}"
        + ("" if not np.any(model.mean) and np.all(model.std == 1) else
           f", then (x - {list(np.round(model.mean, 4))}) / {list(np.round(model.std, 4))}")
    )
    feedback.info(
        f"Window {model.window[0]}x{model.window[1]}, overlap {overlap} px, batch {batch_size}, TTA "
        f"{TTA_NAMES[tta]}, threshold {threshold:g} ({thr_source}); output region {out[2]}x{out[3]} px at "
        f"({out[0]}, {out[1]}); execution provider: {model.provider}, {model.lanes} batch(es) at once"
        f" on {model.threads // model.lanes if model.threads else 'the default'} thread(s) each; outputs "
        f"{str(compression).upper()}-compressed"
    )
    if tuple(model.core) != tuple(model.window):
        feedback.info(
            f"The model's output is the centred {model.core[0]}x{model.core[1]} core of its {model.window[0]}x"
            f"{model.window[1]} window: windows are laid out by their core and read with {model.offset[0]} px of "
            "context around it; beyond the scene edge that context is padded with zeros (as Deepness pads), so the "
            f"pixels within {max(model.offset)} px of the edge are computed partly from zeros.")
    ds = None

    runner = _Runner(model, batch_size, tta)
    stop = threading.Event()
    result = {
        "provider": model.provider,
        "threshold": threshold,
        "overlap": overlap,
        "bands": band_list,
        "resampled": bool(resample),
        "outputs": {"probability": prob_path, "mask": mask_path, "polygons": poly_path},
        "block": block,
        "context_margin": context,
    }
    with contextlib.ExitStack() as stack:
        tmp_prob = stack.enter_context(gdalio.atomic_output(prob_path, overwrite, "OUTPUT_PROBABILITY")) \
            if prob_path else None
        tmp_mask = stack.enter_context(gdalio.atomic_output(mask_path, overwrite, "OUTPUT_MASK")) \
            if mask_path else None
        tmp_poly = stack.enter_context(gdalio.atomic_output(poly_path, overwrite, "OUTPUT_POLYGONS")) \
            if poly_path else None
        scratch = []  # temporary files of this run, removed at the end
        stack.callback(lambda: [gdalio.remove_with_side_files(p) for p in scratch])
        vsimem = []
        stack.callback(lambda: [gdal.Unlink(p) for p in vsimem])
        folder = os.path.dirname(paths[0])
        if poly_path and not tmp_prob:
            tmp_prob = os.path.join(folder, f".gullyseg-prob-{uuid.uuid4().hex[:8]}.tif")
            scratch.append(tmp_prob)
        if poly_path and not tmp_mask:
            tmp_mask = os.path.join(folder, f".gullyseg-mask-{uuid.uuid4().hex[:8]}.tif")
            scratch.append(tmp_mask)
        watcher = stack.enter_context(_CancelWatcher(feedback, runner, stop))
        del watcher
        infer_span = (0.0, 90.0 if resample else (92.0 if poly_path else 100.0))

        if not resample:
            grid = _grid(info.width, info.height, out, model, overlap, context)
            feedback.info(f"{grid.count} windows in {len(grid.rows)} rows (last row/column snapped to the edge)")
            panels = grid.panels(block=block) if block else None
            if block:
                feedback.info(f"Block {block[2]}x{block[3]} px at ({block[0]}, {block[1]}): "
                              f"{sum(p.count for p in panels)} window(s) touch it")
            sink = _OutputSink(tmp_prob, tmp_mask, block or out, panels[0].region if block else grid.region, gt,
                               info.crs_wkt, threshold, pixel_area, feedback, options)
            try:
                def make_reader(panel, scratch):
                    return _GdalReader(str(input_path), band_list, gt, info.crs_wkt, panel, out, wkts,
                                       (info.width, info.height), scratch, observed)

                ran, skipped = _blend_panels(model, grid, make_reader, scale, runner, sink, feedback, stop,
                                             infer_span, panels)
                sink.finish()
            except BaseException:
                sink.abort()
                raise
        else:
            ran, skipped, grid = _resampled(input_path, info, model, band_list, scale, runner, out, wkts,
                                            (overlap, context), resample, tmp_prob, tmp_mask, threshold, feedback,
                                            stop, folder, scratch, vsimem, infer_span, options, observed)
            sink = grid.sink
        result.update(windows=ran, windows_skipped=skipped, pixels_processed=sink.valid_pixels,
                      gully_pixels=sink.gully_pixels, gully_area_m2=sink.gully_pixels * pixel_area)
        sink = None
        _report_observed(observed, model, result, feedback)
        if poly_path:
            feedback.check_cancelled()
            result["polygons"] = polygonize_mod.polygonize_bounded(
                tmp_mask, tmp_prob, tmp_poly, min_area=min_area, simplify=simplify,
                layer_name=os.path.splitext(os.path.basename(poly_path))[0], feedback=feedback.scaled(92, 100))
        else:
            result["polygons"] = None
        feedback.check_cancelled()
    feedback.progress(100)
    result["seconds"] = time.monotonic() - t0
    feedback.info(
        f"Done in {result['seconds']:.1f} s: {result['windows']} windows run, {result['windows_skipped']} skipped "
        f"(no data); {result['pixels_processed']} pixels, gully area {result['gully_area_m2']:.1f} m2 "
        f"({model.provider})"
    )
    return result


def _resampled(input_path, info, model, band_list, scale, runner, out, wkts, overlap, res_m, tmp_prob, tmp_mask,
               threshold, feedback, stop, folder, scratch, vsimem, span, options, observed=None):
    """Run on a warped VRT at the model's resolution, then warp the probability back (see module doc)."""
    overlap, context = overlap
    gt = info.geotransform
    ox, oy, ow, oh = out
    xmin, ymax = gt[0] + ox * gt[1], gt[3] + oy * gt[5]
    xmax, ymin = xmin + ow * gt[1], ymax + oh * gt[5]
    mw = max(1, math.ceil((xmax - xmin) / res_m - 1e-9))
    mh = max(1, math.ceil((ymax - ymin) / res_m - 1e-9))
    bounds = (xmin, ymax - mh * res_m, xmin + mw * res_m, ymax)
    coarser = res_m > abs(gt[1])
    alg = "average" if coarser else "bilinear"
    feedback.info(
        f"The model expects {model.resolution_cm:g} cm/px, the raster has {abs(gt[1]) * 100:g} cm/px (more than "
        f"{RESOLUTION_TOLERANCE:.0%} apart): running on a warped VRT at {res_m:g} m ({mw}x{mh} px, '{alg}' "
        "resampling); the probability is warped back to the input grid (bilinear)."
    )
    vrt = f"/vsimem/gullyseg_{uuid.uuid4().hex}.vrt"
    vsimem.append(vrt)
    warped = gdal.Warp(vrt, str(input_path), options=gdal.WarpOptions(
        format="VRT", outputBounds=bounds, width=mw, height=mh, resampleAlg=alg, dstAlpha=True, multithread=False))
    if warped is None:
        raise GullySegError(f"INPUT: cannot build a warped VRT of '{input_path}' at {res_m:g} m.")
    wgt = warped.GetGeoTransform()
    warped = None
    mgrid = _grid(mw, mh, (0, 0, mw, mh), model, overlap, context)
    feedback.info(f"{mgrid.count} windows in {len(mgrid.rows)} rows on the model grid")
    model_prob = os.path.join(folder, f".gullyseg-modelgrid-{uuid.uuid4().hex[:8]}.tif")
    scratch.append(model_prob)
    sink = _OutputSink(model_prob, None, (0, 0, mw, mh), mgrid.region, wgt, info.crs_wkt, threshold, res_m * res_m,
                       feedback, output_options("ZSTD"))  # scratch: only GDAL reads it back
    try:
        def make_reader(panel, scratch):
            return _GdalReader(vrt, band_list, wgt, info.crs_wkt, panel, (0, 0, mw, mh), wkts, (mw, mh), scratch,
                               observed)

        ran, skipped = _blend_panels(model, mgrid, make_reader, scale, runner, sink, feedback, stop, span)
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    sink = None
    # back onto the input grid
    back = f"/vsimem/gullyseg_{uuid.uuid4().hex}_back.vrt"
    vsimem.append(back)
    bds = gdal.Warp(back, model_prob, options=gdal.WarpOptions(
        format="VRT", outputBounds=(xmin, ymin, xmax, ymax), width=ow, height=oh, resampleAlg="bilinear",
        srcNodata=NODATA, dstNodata=NODATA, outputType=gdal.GDT_Float32, multithread=False))
    bds = None
    final = _OutputSink(tmp_prob, tmp_mask, out, out, gt, info.crs_wkt, threshold, abs(gt[1] * gt[5]), feedback,
                        options)
    try:
        src = gdal.Open(str(input_path))
        bds = gdal.Open(back)
        polys = _PolygonMask(wkts, info.crs_wkt) if wkts else None
        step = 256
        for y in range(0, oh, step):
            feedback.check_cancelled()
            n = min(step, oh - y)
            prob = bds.GetRasterBand(1).ReadAsArray(0, y, ow, n).astype(np.float32)
            raw = gdalio.read_window(src, ox, oy + y, ow, n, band_list)
            valid = _validity(src, band_list, raw, ox, oy + y, ow, n) & (prob != NODATA)
            if polys is not None:
                valid &= polys.mask(gt, ox, oy + y, ow, n)
            final(oy + y, prob / PROB_SCALE, valid)
            src.FlushCache()
            bds.FlushCache()
            feedback.progress(span[1] + (5.0 if span[1] < 95 else 0) * (y + n) / oh)
        final.finish()
    except BaseException:
        final.abort()
        raise
    finally:
        src = bds = None
    mgrid.sink = final
    return ran, skipped, mgrid
