"""The 8-bit stretch of data rasters: scene-wide percentiles and the one conversion to bytes.

JPEG tiles (tiling), the Labelme JPEGs and the dock's tile view all use it, so they show the same
pixels for the same data.
"""

import math

import numpy as np

from . import gdalio, windows
from .errors import GullySegError
from .feedback import Feedback

STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_FULL_READ_PIXELS = 16_000_000  # scenes up to this size are read entirely for the stretch


def percentile_limits(values, percentiles=STRETCH_PERCENTILES) -> tuple:
    """(low, high) percentiles of a sample of valid pixel values; high > low (a flat sample gives
    low..low + 1). The one rule for a stretch's limits: the scene's, and the dock's tiles'."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), percentiles))
    return lo, (hi if hi > lo else lo + 1.0)


def compute_stretch(ds, bands, validity, percentiles=STRETCH_PERCENTILES, max_samples=2_000_000,
                    feedback=None, full_read_pixels=None) -> dict:
    """Per-band (low, high) for the whole scene, from a block-aligned sample of valid pixels.

    Small scenes (<= 16 Mpx) are read entirely; larger ones are sampled: about sqrt(number of
    blocks) of the scene's own blocks (as many as GDAL's approximate histograms read), on an even
    lattice of block rows and columns over the whole scene. 8-bit data are not stretched.
    Returns the dict recorded in the dataset card.
    """
    feedback = feedback or Feedback()
    dtype = np.dtype(gdalio.raster_info(ds).dtype)
    if dtype == np.uint8:
        return {"method": "none", "reason": "8-bit data are written as they are", "bands": bands}
    width, height = ds.RasterXSize, ds.RasterYSize
    bw, bh = ds.GetRasterBand(1).GetBlockSize()
    small = width * height <= (STRETCH_FULL_READ_PIXELS if full_read_pixels is None else full_read_pixels)
    if small:
        bw, bh = width, min(height, max(bh, 256))
    blocks = list(windows.iter_blocks(width, height, bw, bh))
    if small:
        picked = blocks
    else:  # about sqrt(n) blocks on an even lattice over the whole scene (rows and columns)
        nbx, nby = math.ceil(width / bw), math.ceil(height / bh)
        target = max(1, math.ceil(math.sqrt(nbx * nby)))
        kx = min(nbx, max(1, round(math.sqrt(target * nbx / nby))))
        ky = min(nby, max(1, math.ceil(target / kx)))
        cols = sorted({round(i * (nbx - 1) / max(1, kx - 1)) for i in range(kx)})
        rows = sorted({round(j * (nby - 1) / max(1, ky - 1)) for j in range(ky)})
        picked = [blocks[r * nbx + c] for r in rows for c in cols]
    total = sum(w * h for _, _, w, h in picked)
    step = max(1, math.ceil(total / max_samples))
    samples = [[] for _ in bands]
    for n, (x, y, w, h) in enumerate(picked):
        feedback.check_cancelled()
        arr = gdalio.read_window(ds, x, y, w, h)
        valid = validity.valid(arr, x, y, w, h)
        for k, b in enumerate(bands):
            values = arr[b - 1].ravel()[::step]
            keep = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
            if valid is not None:
                keep &= valid.ravel()[::step]
            samples[k].append(values[keep])
        feedback.progress(100.0 * (n + 1) / len(picked))
    ds.FlushCache()
    lows, highs = [], []
    for k, b in enumerate(bands):
        values = np.concatenate(samples[k]) if samples[k] else np.array([])
        if values.size == 0:
            raise GullySegError(
                f"INPUT: band {b} has no valid pixels in the sample used for the JPEG stretch; "
                "is the whole scene nodata?"
            )
        lo, hi = percentile_limits(values, percentiles)
        lows.append(lo)
        highs.append(hi)
    return {
        "method": "percent_clip",
        "percentiles": list(percentiles),
        "bands": bands,
        "low": lows,
        "high": highs,
        "sampled_pixels": int(sum(sum(len(s) for s in band) for band in samples) / max(1, len(bands))),
    }


def stretch_to_byte(data, lows, highs, valid=None) -> np.ndarray:
    """(bands, h, w) array -> uint8: band k maps lows[k]..highs[k] linearly onto 0..255 (rounded,
    clipped); non-finite and invalid pixels become 0. The one 8-bit conversion: JPEG tiles and the
    dock's tile view use it, so both show the same pixels."""
    out = np.empty(data.shape, dtype=np.uint8)
    for k, band in enumerate(data):
        lo, hi = float(lows[k]), float(highs[k])
        scaled = (band.astype(np.float32) - lo) * (255.0 / (hi - lo) if hi > lo else 1.0) + 0.5
        np.clip(scaled, 0, 255, out=scaled)
        if band.dtype.kind == "f":
            scaled[~np.isfinite(band)] = 0
        out[k] = scaled.astype(np.uint8)
    if valid is not None:
        out[:, ~valid] = 0
    return out
