"""Radiometric augmentation: the value range of a dataset's images and brightness, contrast and
gamma steps applied to valid pixels (``gdalio.Validity``), keeping the dtype and nodata."""

import math

import numpy as np
from osgeo import gdal

from . import gdalio


def _dtype_limits(dtype):
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return None


def radiometric_range(paths, tiles, ext, feedback) -> list:
    """[lo, hi] of the format ``ext`` (see the module docstring)."""
    first = gdalio.open_raster(paths.abs(tiles[0].images[ext]), "DATASET")
    dtype = gdalio.raster_info(first).dtype
    nbits = first.GetRasterBand(1).GetMetadataItem("NBITS", "IMAGE_STRUCTURE")
    first = None
    limits = _dtype_limits(dtype)
    if limits and dtype.itemsize == 1:
        return list(limits)
    if limits and nbits:
        return [0.0 if limits[0] == 0 else limits[0], float(min(2 ** int(nbits) - 1, limits[1]))]
    low, high = math.inf, -math.inf
    for i, tile in enumerate(tiles):
        if ext not in tile.images:
            continue
        if i % 32 == 0:
            feedback.check_cancelled()
        ds = gdalio.open_raster(paths.abs(tile.images[ext]), "DATASET")
        for b in range(1, ds.RasterCount + 1):
            band = ds.GetRasterBand(b)
            if band.GetColorInterpretation() == gdal.GCI_AlphaBand:
                continue
            try:
                mn, mx = band.ComputeRasterMinMax(False)
            except RuntimeError:  # no valid pixel
                continue
            low, high = min(low, mn), max(high, mx)
        ds = None
    if not math.isfinite(low):
        return list(limits) if limits else [0.0, 1.0]
    if not limits:
        return [float(low), float(high)]
    bits = max(8, int(math.ceil(math.log2(high + 1)))) if high > 0 else 8
    return [0.0 if low >= 0 else limits[0], float(min(2 ** bits - 1, limits[1]))]


def apply_radiometric(array, steps, lo, hi, nodata, valid, alpha) -> tuple:
    """Radiometric steps on (bands, rows, cols); returns (new array, contrast means used per step).

    nodata: per band (None where unset); valid: bool (rows, cols) from ``gdalio.Validity``; alpha: per band
    flags (alpha bands are never changed).
    """
    out = array.astype(np.float64)
    bands = array.shape[0]
    keep = np.zeros(array.shape, dtype=bool)  # pixels that must keep their source value
    for b in range(bands):
        if alpha[b]:
            keep[b] = True
            continue
        keep[b] = ~valid  # gdalio.Validity: nodata values, NaN, mask bands
    means = []
    for step in steps:
        op = step["op"]
        if op == "brightness":
            out *= step["factor"]
        elif op == "contrast":
            m = []
            for b in range(bands):
                sel = out[b][~keep[b]]
                m.append(round(float(sel.mean()), 6) if sel.size else 0.0)
                out[b] = m[b] + step["factor"] * (out[b] - m[b])
            means.append(m)
        elif op == "gamma":
            span = hi - lo
            out = lo + span * np.clip((out - lo) / span, 0.0, 1.0) ** step["gamma"]
    np.clip(out, lo, hi, out=out)
    if np.issubdtype(array.dtype, np.integer):
        np.rint(out, out=out)
    result = out.astype(array.dtype)
    result[keep] = array[keep]
    for b in range(bands):
        nd = nodata[b]
        if nd is None or alpha[b]:
            continue
        hit = ~keep[b] & (result[b] == nd)
        if hit.any():
            if np.issubdtype(array.dtype, np.integer):
                result[b][hit] = nd + 1 if nd < hi else nd - 1
            else:
                result[b][hit] = np.nextafter(array.dtype.type(nd), array.dtype.type(hi if nd < hi else lo))
    return result, means
