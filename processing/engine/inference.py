"""Sliding-window ONNX inference over whole scenes: blended, streaming, cancellable.

``segment_raster`` runs a model (``onnx_model.load_model``) over a GDAL raster:

* windows come from ``windows.iter_windows`` with EDGE_SHIFT (the last row and column end on the
  edge of the region), stride = window - overlap;
* each window's gully probability is weighted by a squared Hann window (tapered only on the sides
  that have a neighbour; floored at 1e-6 so every pixel keeps weight) and the sum is divided by the
  summed weights: no seams, and a fully convolutional model gives what one whole-image run gives
  away from window edges;
* streaming: a reader thread reads block-aligned strips of rows into one reused buffer ahead of
  the model (GDAL's block cache of the input is released after each strip) and normalises
  windows straight into whole batches (at most ``lanes + 2`` batch arrays, reused); on the CPU
  two model threads run two batches at once on half the threads each (``onnx_model.plan_threads``);
  the calling thread blends the results in window order (outputs do not depend on the lanes),
  an accumulator holds only the rows that windows still touch, and a writer thread writes
  finished rows in whole output blocks: peak memory never depends on the scene height;
* regions wider than ``PANEL_WIDTH`` columns are processed in column panels, one after the other
  by the same threads with the same buffers (boundaries on output block columns); each panel
  runs every window that touches it, in the same order with the same weights, so results are
  bit-identical to one full-width pass, and peak memory stops growing with the width too (the
  few windows across a boundary run twice);
* nodata (band nodata values, NaN, mask bands, outside EXTENT / MASK_LAYER) is 255 in both
  outputs and 0 in the model's input; windows without a valid pixel are skipped;
* cancel: ``feedback`` is checked between batches and a watcher thread sets onnxruntime's
  ``RunOptions.terminate`` so a long ``session.run`` stops within about a second; partial outputs
  are removed (``gdalio.atomic_output``);
* when the model states a resolution and the raster's pixel size differs by more than 10 %, the
  model runs on a GDAL warped VRT at the model's resolution ('average' when coarsening,
  'bilinear' when refining); the probability is written on that grid to a temporary GeoTIFF and
  warped back (bilinear) onto the input grid, then the input's nodata/extent/mask are applied
  exactly on the input grid and the threshold is applied to the warped-back probability.

Outputs: probability uint8 ``round(p * 254)`` (255 nodata), mask uint8 0/1 (255 nodata), both
tiled GeoTIFFs (DEFLATE unless ``compression`` says otherwise) on the input's CRS and pixel grid (the EXTENT/MASK_LAYER
bounding box snapped outward to that grid); optional gully polygons (``polygonize``).
"""

import contextlib
import math
import os
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from osgeo import gdal, gdal_array, ogr, osr

from . import gdalio, windows
from .errors import Cancelled, GullySegError
from .feedback import Feedback
from .onnx_model import ModelInfo, load_model, parse_bands

PROB_SCALE = 254
NODATA = 255
TTA_NONE, TTA_FLIPS, TTA_DIHEDRAL = 0, 1, 2
TTA_NAMES = {TTA_NONE: "none", TTA_FLIPS: "flips (4 passes)", TTA_DIHEDRAL: "flips and rotations (8 passes)"}
RESOLUTION_TOLERANCE = 0.10
WEIGHT_FLOOR = 1e-6
# wider regions are blended in column panels of this many output columns (a multiple of the 256 px
# output blocks): peak memory then depends on this, not on the scene width
PANEL_WIDTH = 8192
_PANEL_END = object()  # the reader's marker after the last window of a column panel
# output compression (tiled 256 x 256 GeoTIFFs). DEFLATE level 1 (the default): any GIS software reads
# it, ~9x less CPU than level 6 for ~4 % larger files. ZSTD level 1: about the same size, 2-4x less
# CPU again to write, faster to read, but only GDAL-based software (QGIS, GDAL 2.3+) reads it, not
# ArcGIS. Scratch rasters that only GDAL reads back use ZSTD.
COMPRESSIONS = {
    "DEFLATE": ["COMPRESS=DEFLATE", "ZLEVEL=1"],
    "ZSTD": ["COMPRESS=ZSTD", "ZSTD_LEVEL=1"],
    "LZW": ["COMPRESS=LZW"],
    "NONE": ["COMPRESS=NONE"],
}


def output_options(compression="DEFLATE"):
    """GDAL creation options of the output GeoTIFFs for a COMPRESSION name."""
    key = str(compression or "DEFLATE").upper()
    if key not in COMPRESSIONS:
        raise GullySegError(f"COMPRESSION must be one of {', '.join(COMPRESSIONS)} (got {compression!r}).")
    return [o for o in gdalio.GTIFF_TILED if not o.startswith("COMPRESS=")] + COMPRESSIONS[key]



# --- weights and test-time augmentation ---------------------------------------------------------

def hann(n, floor=WEIGHT_FLOOR):
    """Squared Hann taper of n samples (sin^4 at pixel centres), strictly positive (floored).

    Squaring makes the few pixels next to a window's edge (where zero padding makes a window's
    prediction differ from a whole-image run) weigh ~1e-6 instead of ~1e-3, while the weights stay
    smooth, so the blend has no seams and matches a whole-image run to ~1e-5.
    """
    i = np.arange(n, dtype=np.float64)
    return np.maximum(np.sin(np.pi * (i + 0.5) / n) ** 4, floor)


def _taper(n, low_open, high_open):
    """1-D weights: Hann, but flat (1) on a side with no neighbouring window."""
    w = hann(n)
    half = n // 2
    if not low_open:
        w[:half] = 1.0
    if not high_open:
        w[n - half:] = 1.0
    if not low_open and not high_open:
        w[:] = 1.0
    return w


def window_weight(width, height, left=True, top=True, right=True, bottom=True):
    """2-D blending weight of a window; a side is tapered when another window overlaps it."""
    return np.outer(_taper(height, top, bottom), _taper(width, left, right)).astype(np.float32)


def tta_transforms(mode, square=True):
    """[(forward, inverse)] acting on the last two axes. 0: identity; 1: 4 flips; 2: 8 dihedral."""
    ident = (lambda a: a, lambda a: a)
    if mode == TTA_NONE:
        return [ident]
    if mode == TTA_FLIPS:
        return [
            ident,
            (lambda a: a[..., :, ::-1], lambda a: a[..., :, ::-1]),
            (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
            (lambda a: a[..., ::-1, ::-1], lambda a: a[..., ::-1, ::-1]),
        ]
    if mode == TTA_DIHEDRAL:
        if not square:
            raise GullySegError("TTA: rotations need square windows; this model has a fixed non-square input.")
        out = []
        for flip in (False, True):
            for k in range(4):
                def fwd(a, k=k, flip=flip):
                    a = a[..., :, ::-1] if flip else a
                    return np.rot90(a, k, axes=(-2, -1))

                def inv(a, k=k, flip=flip):
                    a = np.rot90(a, -k, axes=(-2, -1))
                    return a[..., :, ::-1] if flip else a

                out.append((fwd, inv))
        return out
    raise GullySegError(f"TTA must be 0 (none), 1 (flips) or 2 (flips and rotations), got {mode}.")


# --- running the model --------------------------------------------------------------------------

class _Runner:
    """Runs batches through the session (fixed batch sizes padded), TTA merged by mean."""

    def __init__(self, model, batch_size, tta):
        import onnxruntime

        self.model = model
        self.batch_size = max(1, int(batch_size))
        if model.fixed_batch:
            self.batch_size = model.fixed_batch
        self.transforms = tta_transforms(tta, model.window[0] == model.window[1] or not model.fixed_size)
        self.lanes = model.lanes
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 3

    def _run(self, x):
        try:
            return self.model.session.run([self.model.output_name], {self.model.input_name: x}, self.run_options)[0]
        except Exception as exc:
            if self.run_options.terminate:
                raise Cancelled() from None
            if isinstance(exc, GullySegError):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GullySegError(
                f"MODEL: '{self.model.path}' failed on a batch of shape {list(x.shape)}: {text}") from None

    def predict(self, x):
        """(n, C, H, W) float32 -> (n, H, W) float32 gully probability."""
        n = x.shape[0]
        fixed = self.model.fixed_batch
        total = None
        for fwd, inv in self.transforms:
            xt = np.ascontiguousarray(fwd(x))
            parts = []
            step = fixed or n
            for i in range(0, n, step):
                chunk = xt[i:i + step]
                if fixed and chunk.shape[0] < fixed:
                    pad = np.zeros((fixed - chunk.shape[0],) + chunk.shape[1:], dtype=np.float32)
                    chunk = np.concatenate([chunk, pad])
                out = self._run(chunk)
                parts.append(self.model.gully_probability(out)[:min(step, n - i)])
            p = parts[0] if len(parts) == 1 else np.concatenate(parts)
            p = np.ascontiguousarray(inv(p))
            total = p if total is None else total + p
        if len(self.transforms) > 1:
            total = total / np.float32(len(self.transforms))
        return total.astype(np.float32, copy=False)


class _CancelWatcher:
    """Polls feedback.is_cancelled() and sets RunOptions.terminate (onnxruntime stops mid-run)."""

    def __init__(self, feedback, runner, stop_event, interval=0.05):
        self.feedback, self.runner, self.stop_event, self.interval = feedback, runner, stop_event, interval
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="gullyseg-cancel-watch", daemon=True)

    def _watch(self):
        while not self.finished.wait(self.interval):
            try:
                cancelled = self.feedback.is_cancelled()
            except Exception:  # noqa: BLE001 - a dead feedback object must not kill the run
                cancelled = False
            if cancelled:
                self.runner.run_options.terminate = True
                self.stop_event.set()
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.finished.set()
        self.thread.join(timeout=2)


# --- the grid of windows ------------------------------------------------------------------------

class _Grid:
    """Windows over ``out`` = (x, y, w, h) of a raster, widened to one window where it is smaller."""

    def __init__(self, raster_w, raster_h, out, window, overlap):
        ww, wh = window
        ox, oy, ow, oh = out
        stride = (ww - overlap, wh - overlap)
        if min(stride) <= 0:
            raise GullySegError(f"OVERLAP {overlap} must be smaller than the window ({ww}x{wh} pixels).")

        def widen(o, n, size, total):
            if n >= size:
                return o, n
            n2 = min(size, total)
            o2 = min(max(o - (n2 - n) // 2, 0), total - n2)
            return o2, n2

        gx, gw = widen(ox, ow, ww, raster_w)
        gy, gh = widen(oy, oh, wh, raster_h)
        self.region = (gx, gy, gw, gh)
        self.out = out
        self.window = window
        self.edge = windows.EDGE_SHIFT if (gw >= ww and gh >= wh) else windows.EDGE_PAD
        rows = {}
        for win in windows.iter_windows(raster_w, raster_h, (ww, wh), stride, self.edge, self.region):
            rows.setdefault(win.row, []).append(win)
        self.rows = [rows[r] for r in sorted(rows)]
        self.row_y = [row[0].y_off for row in self.rows]
        self.count = sum(len(r) for r in self.rows)
        self.read_region = self.region
        self.grid = self

    def counts(self, win):
        return True

    def edges(self, win):
        gx, gy, gw, gh = self.grid.region
        return (win.x_off > gx, win.y_off > gy, win.x_end < gx + gw, win.y_end < gy + gh)

    def panels(self, width=None, block=None):
        """Column panels of the region (or of ``block`` within it): [self] when it fits in ``width`` columns.

        Panel boundaries fall on multiples of ``width`` (a multiple of 256) from the output's left
        column, so every output block is written by one panel. Each panel keeps every window that
        touches its columns, in the same order, with the same weights: a pixel gets the same sums
        in the same order as from one full-width pass (windows across a boundary run in both).
        ``block`` (x, y, w, h), inside the region, restricts the panels to its rows and columns the
        same way (the windows that touch it, the same sums in the same order): only that part of
        the outputs is produced.
        """
        width = int(width or PANEL_WIDTH)
        gx, gy, gw, gh = self.region
        if block is None:
            if gw <= width or self.edge != windows.EDGE_SHIFT:
                return [self]
            x0, x1, rows = gx, gx + gw, None
            c = self.out[0] + width
        else:
            bx, by, bw, bh = block
            x0, x1, rows = bx, bx + bw, (by, by + bh)
            c = bx + width
        cuts = [x0]
        while c < x1:
            if c > cuts[-1]:
                cuts.append(c)
            c += width
        cuts.append(x1)
        return [_Panel(self, a, b, rows, first=(i == 0)) for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


class _Panel:
    """The windows of a ``_Grid`` that touch columns [c0, c1) (and rows ``rows`` = (r0, r1) when
    given); the accumulator spans only those columns (and rows). Rows of windows that do not touch
    the rows stay in ``rows`` as empty lists, so a window's ``row`` still indexes them."""

    def __init__(self, grid, c0, c1, rows=None, first=False):
        gx, gy, gw, gh = grid.region
        r0, r1 = rows if rows is not None else (gy, gy + gh)
        self.grid = grid
        self.out = grid.out
        self.window = grid.window
        self.edge = grid.edge
        self.first = first  # windows starting left of c0 are counted in the first panel only
        self.region = (c0, r0, c1 - c0, r1 - r0)
        self.rows = [[w for w in row if w.x_off < c1 and w.x_end > c0] if row[0].y_off < r1 and row[0].y_end > r0
                     else [] for row in grid.rows]
        self.row_y = grid.row_y
        self.count = sum(len(r) for r in self.rows)
        used = [row for row in self.rows if row]
        x0, y0 = min(row[0].x_off for row in used), used[0][0].y_off
        x1, y1 = max(row[-1].x_end for row in used), used[-1][0].y_end
        # windows of a padded grid (a region smaller than a window) reach past the raster: read within it
        x0, y0, x1, y1 = max(x0, gx), max(y0, gy), min(x1, gx + gw), min(y1, gy + gh)
        self.read_region = (x0, y0, x1 - x0, y1 - y0)

    def counts(self, win):
        """Whether this panel counts ``win`` in windows run/skipped (each window once over the panels)."""
        return self.first or win.x_off >= self.region[0]

    def edges(self, win):
        return self.grid.edges(win)


# --- readers (run in the reader thread) -----------------------------------------------------------

def _validity(ds, bands, raw, x, y, w, h):
    """True where every used band has data: nodata values, NaN, mask/alpha bands."""
    valid = np.ones((h, w), dtype=bool)
    dataset_mask_read = False
    for i, b in enumerate(bands):
        band = ds.GetRasterBand(b)
        data = raw[i]
        nodata = band.GetNoDataValue()
        floating = np.issubdtype(data.dtype, np.floating)
        if nodata is not None and not math.isnan(nodata) and (floating or (
                np.iinfo(data.dtype).min <= nodata <= np.iinfo(data.dtype).max and float(nodata).is_integer())):
            # a scalar of the data's type (10x faster than a Python float for integers); a nodata value
            # no integer pixel can take marks nothing
            valid &= data != data.dtype.type(nodata)
        if floating:
            valid &= np.isfinite(data)  # NaN (a NaN nodata value too) and infinities
        flags = band.GetMaskFlags()
        if flags & gdal.GMF_ALL_VALID or flags == gdal.GMF_NODATA:
            continue
        if flags & gdal.GMF_PER_DATASET:
            if dataset_mask_read:
                continue
            dataset_mask_read = True
        valid &= band.GetMaskBand().ReadAsArray(x, y, w, h) > 0
    return valid


class _PolygonMask:
    """Rasterises polygons (WKT, in the raster CRS) on any window of a grid (pixel-centre rule)."""

    def __init__(self, wkts, crs_wkt):
        self.srs = osr.SpatialReference()
        if crs_wkt:
            self.srs.ImportFromWkt(crs_wkt)
        self.ds = ogr.GetDriverByName("Memory").CreateDataSource("mask")
        self.layer = self.ds.CreateLayer("mask", srs=self.srs, geom_type=ogr.wkbUnknown)
        for wkt in wkts:
            feat = ogr.Feature(self.layer.GetLayerDefn())
            feat.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
            self.layer.CreateFeature(feat)

    def mask(self, gt, x, y, w, h):
        mem = gdal.GetDriverByName("MEM").Create("", int(w), int(h), 1, gdal.GDT_Byte)
        mem.SetGeoTransform((gt[0] + x * gt[1], gt[1], 0.0, gt[3] + y * gt[5], 0.0, gt[5]))
        gdal.RasterizeLayer(mem, [1], self.layer, burn_values=[1])
        return mem.GetRasterBand(1).ReadAsArray() > 0


def parse_mask_wkts(mask_wkts):
    """Check WKT polygons; returns (wkts, (xmin, ymin, xmax, ymax)) or a clear error."""
    geoms = []
    for i, wkt in enumerate(mask_wkts):
        geom = ogr.CreateGeometryFromWkt(wkt) if isinstance(wkt, str) else None
        if geom is None:
            raise GullySegError(f"MASK_LAYER: feature {i} is not a valid WKT geometry.")
        if geom.IsEmpty():
            continue
        flat = ogr.GT_Flatten(geom.GetGeometryType())
        if flat not in (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbGeometryCollection, ogr.wkbCurvePolygon,
                        ogr.wkbMultiSurface):
            raise GullySegError(f"MASK_LAYER: feature {i} is a {geom.GetGeometryName()}, not a polygon.")
        geoms.append(geom)
    if not geoms:
        raise GullySegError("MASK_LAYER: the layer has no polygon (nothing to segment).")
    env = [g.GetEnvelope() for g in geoms]  # (minx, maxx, miny, maxy)
    bbox = (min(e[0] for e in env), min(e[2] for e in env), max(e[1] for e in env), max(e[3] for e in env))
    return [g.ExportToWkt() for g in geoms], bbox


class _GdalReader:
    """Reads block-aligned strips of rows (only the new ones), serves windows from them."""

    def __init__(self, path, bands, gt, crs_wkt, grid, out, mask_wkts, raster_size, scratch=None):
        self.path, self.bands, self.gt, self.crs_wkt = path, bands, gt, crs_wkt
        self.scratch = scratch  # a _Scratch: the strip buffer is reused from panel to panel
        self.grid = grid
        self.out = out
        self.mask_wkts = mask_wkts
        self.raster_w, self.raster_h = raster_size
        gx, gy, gw, gh = grid.read_region
        self.c0, self.c1 = gx, gx + gw
        self.r0, self.r1 = gy, gy + gh
        self.b0 = self.b1 = self.r0
        self.raw = None
        self.valid = None
        self.ds = None
        self.polys = None

    def open(self):
        self.ds = gdal.Open(self.path)
        band = self.ds.GetRasterBand(self.bands[0])
        bh = max(1, band.GetBlockSize()[1])
        self.chunk = bh * max(1, math.ceil(256 / bh))
        self.dtype = np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(band.DataType))
        if self.mask_wkts:
            self.polys = _PolygonMask(self.mask_wkts, self.crs_wkt)
        # one strip buffer, reused: rows [b0, b1) of the read region are raw[:, :b1 - b0]
        self._alloc(self.grid.window[1] + self.chunk, self.scratch)

    def _alloc(self, rows, scratch=None):
        w = self.c1 - self.c0
        shapes = ((len(self.bands), rows, w), (rows, w))
        if scratch is not None:
            raw, valid = scratch.get("strip", shapes[0], self.dtype), scratch.get("strip_valid", shapes[1], bool)
        else:
            raw, valid = np.empty(shapes[0], dtype=self.dtype), np.empty(shapes[1], dtype=bool)
        if self.raw is not None:
            n = self.b1 - self.b0
            raw[:, :n] = self.raw[:, :n]
            valid[:n] = self.valid[:n]
        self.raw, self.valid = raw, valid

    def close(self):
        self.ds = None
        self.polys = None
        self.raw = self.valid = None

    def need(self, y0, y1):
        """Have rows [y0, y1) (within the read region) in the strip buffer; rows above y0 are dropped.

        Windows handed out before are views of the buffer: the caller uses them before the next call.
        """
        y0, y1 = max(y0, self.r0), min(y1, self.r1)
        if y0 > self.b0:
            cut = min(y0, self.b1) - self.b0
            keep = self.b1 - self.b0 - cut
            if keep:
                self.raw[:, :keep] = self.raw[:, cut:cut + keep]  # numpy handles the overlap
                self.valid[:keep] = self.valid[cut:cut + keep]
            self.b0 += cut
            if self.b0 < y0:  # a gap (never with overlapping windows)
                self.b0 = self.b1 = y0
        if y1 <= self.b1:
            return
        end = min(self.r1, max(y1, ((y1 + self.chunk - 1) // self.chunk) * self.chunk))
        start = self.b1
        n = end - start
        w = self.c1 - self.c0
        k = start - self.b0
        if k + n > self.raw.shape[1]:
            self._alloc(k + n)
        raw = self.raw[:, k:k + n]
        self.ds.ReadAsArray(self.c0, start, w, n, band_list=self.bands, buf_obj=raw)
        valid = _validity(self.ds, self.bands, raw, self.c0, start, w, n)
        ox, oy, ow, oh = self.out
        valid[:, :max(0, ox - self.c0)] = False
        valid[:, max(0, ox + ow - self.c0):] = False
        if start < oy:
            valid[:max(0, oy - start)] = False
        if end > oy + oh:
            valid[max(0, oy + oh - start):] = False
        if self.polys is not None and valid.any():
            valid &= self.polys.mask(self.gt, self.c0, start, w, n)
        self.ds.FlushCache()  # the strip is in our buffer now: free GDAL's cached blocks
        self.valid[k:k + n] = valid
        self.b1 = end

    def window(self, win):
        ww, wh = win.width, win.height
        xa, xb = max(win.x_off, self.c0), min(win.x_end, self.c1)
        ya, yb = max(win.y_off, self.b0), min(win.y_end, self.b1)
        if (xa, ya, xb, yb) == (win.x_off, win.y_off, win.x_end, win.y_end):
            return (self.raw[:, ya - self.b0:yb - self.b0, xa - self.c0:xb - self.c0],
                    self.valid[ya - self.b0:yb - self.b0, xa - self.c0:xb - self.c0])
        raw = np.zeros((len(self.bands), wh, ww), dtype=self.raw.dtype)
        valid = np.zeros((wh, ww), dtype=bool)
        if xb > xa and yb > ya:
            sl = (slice(ya - win.y_off, yb - win.y_off), slice(xa - win.x_off, xb - win.x_off))
            raw[:, sl[0], sl[1]] = self.raw[:, ya - self.b0:yb - self.b0, xa - self.c0:xb - self.c0]
            valid[sl] = self.valid[ya - self.b0:yb - self.b0, xa - self.c0:xb - self.c0]
        return raw, valid


class _ArrayReader:
    """The same interface over an in-memory (C, H, W) array (predict_tiles, tests)."""

    def __init__(self, raw, valid, grid):
        self.raw_all = raw
        self.valid_all = valid
        self.grid = grid

    def open(self):
        pass

    def close(self):
        pass

    def need(self, y0, y1):
        pass

    def window(self, win):
        c, h, w = self.raw_all.shape
        raw = np.zeros((c, win.height, win.width), dtype=self.raw_all.dtype)
        valid = np.zeros((win.height, win.width), dtype=bool)
        part = win.clip(w, h)
        if part is not None:
            xa, ya, pw, ph = part
            raw[:, ya - win.y_off:ya - win.y_off + ph, xa - win.x_off:xa - win.x_off + pw] = \
                self.raw_all[:, ya:ya + ph, xa:xa + pw]
            valid[ya - win.y_off:ya - win.y_off + ph, xa - win.x_off:xa - win.x_off + pw] = \
                self.valid_all[ya:ya + ph, xa:xa + pw]
        return raw, valid


# --- the blending pipeline ----------------------------------------------------------------------

def _inverse_weight_sums(grid):
    """1 / (summed blending weights) over the grid region, as a row factor and a column factor.

    A window's weight is outer(row taper, column taper), the taper of a row of windows depends only
    on its top and bottom sides and that of a column only on its left and right, and every row has
    the same columns: the sum over the windows covering a pixel is (sum of row tapers at its row) x
    (sum of column tapers at its column). Two 1-D sums replace a 2-D accumulator.
    """
    gx, gy, gw, gh = grid.region
    ww, wh = grid.window

    def axis(n0, n, spans):
        total = np.zeros(n, dtype=np.float64)
        for off, taper in spans:
            a, b = max(off, n0), min(off + taper.size, n0 + n)
            if b > a:
                total[a - n0:b - n0] += taper[a - off:b - off]
        return (1.0 / total).astype(np.float32)

    rows = []
    for row in grid.rows:
        if not row:  # a row of windows outside a block's rows
            continue
        _, top, _, bottom = grid.edges(row[0])
        rows.append((row[0].y_off, _taper(wh, top, bottom)))
    cols = []
    for win in next(row for row in grid.rows if row):  # every row has the same columns
        left, _, right, _ = grid.edges(win)
        cols.append((win.x_off, _taper(ww, left, right)))
    return axis(gy, gh, rows), axis(gx, gw, cols)


class _Scratch:
    """Arrays reused for every panel of a run: the same threads fill the same buffers, so the heap
    does not grow with the number of panels (the scene's width)."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self.buffers.get(name)
        if buf is None or buf.size < nbytes:
            buf = self.buffers[name] = np.empty(nbytes, dtype=np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)


class _Accumulator:
    """Hann-weighted sums over the region of a ``_Grid`` or ``_Panel``; finished rows go to ``sink``.

    Used by the calling thread only. ``add`` blends a window's probability, ``skip`` counts a
    window without valid pixels, ``flush`` hands every row that no pending window touches any more
    to ``sink(y, prob, valid)`` (absolute raster rows, region columns, in order).
    """

    def __init__(self, grid, sink, scratch):
        self.grid, self.sink = grid, sink
        self.gx, self.gy, self.gw, self.gh = grid.region
        self.ww, self.wh = grid.window
        stride_y = (grid.row_y[1] - grid.row_y[0]) if len(grid.row_y) > 1 else 0
        cap = self.wh + stride_y  # grows when a batch spans more rows
        self.acc_p = scratch.get("acc_p", (cap, self.gw), np.float32)
        self.acc_v = scratch.get("acc_v", (cap, self.gw), bool)
        self.acc_p[...] = 0
        self.acc_v[...] = False
        self.inv_wy, self.inv_wx = _inverse_weight_sums(grid)
        self.top, self.used, self.flushed_rows = self.gy, 0, 0
        self.remaining = [len(row) for row in grid.rows]
        self.weights = {}
        self.ran = self.skipped = 0  # windows that start in the region's columns (one panel counts each)

    def add(self, win, p, valid):
        gx, gy, gw, gh = self.gx, self.gy, self.gw, self.gh
        key = self.grid.edges(win)
        wt = self.weights.get(key)
        if wt is None:
            wt = self.weights[key] = window_weight(self.ww, self.wh, *key)
        xa, xb = max(win.x_off, gx), min(win.x_end, gx + gw)
        ya, yb = max(win.y_off, gy), min(win.y_end, gy + gh)
        r0, r1 = ya - self.top, yb - self.top
        if r1 > self.acc_p.shape[0]:
            extra = r1 - self.acc_p.shape[0] + self.wh
            self.acc_p = np.concatenate([self.acc_p, np.zeros((extra, gw), np.float32)])
            self.acc_v = np.concatenate([self.acc_v, np.zeros((extra, gw), bool)])
        sy = slice(ya - win.y_off, yb - win.y_off)
        sx = slice(xa - win.x_off, xb - win.x_off)
        cols = slice(xa - gx, xb - gx)
        part = p[sy, sx]
        np.multiply(part, wt[sy, sx], out=part)  # p is this window's own array
        self.acc_p[r0:r1, cols] += part
        self.acc_v[r0:r1, cols] |= valid[sy, sx]
        self.used = max(self.used, r1)
        self.remaining[win.row] -= 1
        self.ran += self.grid.counts(win)

    def skip(self, win):
        self.remaining[win.row] -= 1
        self.skipped += self.grid.counts(win)

    def flush(self):
        grid = self.grid
        r = self.flushed_rows
        while r < len(grid.rows) and self.remaining[r] == 0:
            r += 1
        if r == self.flushed_rows:
            return
        self.flushed_rows = r
        final = grid.row_y[r] if r < len(grid.rows) else self.gy + self.gh
        n = final - self.top
        if n <= 0:
            return
        # divided by the summed weights of the windows over each pixel (a valid pixel has had all of
        # them: a window over a valid pixel is never skipped)
        valid = self.acc_v[:n].copy()
        y0 = self.top - self.gy
        prob = np.multiply(self.acc_p[:n], self.inv_wy[y0:y0 + n, None])
        prob *= self.inv_wx
        self.sink(self.top, prob, valid)
        used = self.used
        keep = max(0, used - n)
        if keep:
            self.acc_p[:keep] = self.acc_p[n:used]
            self.acc_v[:keep] = self.acc_v[n:used]
        self.acc_p[keep:used] = 0
        self.acc_v[keep:used] = False
        self.used = keep
        self.top = final


def _blend(model, panels, make_reader, scale, runner, sink, feedback, stop, progress=(0.0, 100.0), on_panel=None):
    """Reader thread -> model threads (``runner.lanes`` batches at once) -> ``_Accumulator`` -> ``sink``.

    ``panels``: a ``_Grid`` or its column ``_Panel``s, done one after the other by the same threads
    (the reader goes on with the next panel while the last batches of one are blended).
    ``make_reader(panel, scratch)`` returns a reader for a panel; ``on_panel(panel)`` is called
    before the rows of each panel reach ``sink``. The reader thread reads, normalises straight
    into batch arrays and numbers every item (a batch, a skipped window, the end of a panel); the
    model threads run batches in any order; this (the calling) thread blends the results strictly
    in that order, so the sums, and the outputs, do not depend on the number of lanes. Returns
    (windows run, windows skipped), a window across a panel boundary counted once.
    """
    lanes, batch_size = runner.lanes, runner.batch_size
    halt = threading.Event()  # ends this call's threads; ``stop`` (cancel) ends the whole run
    jobs = queue.Queue()  # (seq, wins, x, valids); x None: a skipped window (wins) or _PANEL_END
    slots = threading.Semaphore(lanes + 2)  # batches between the reader and the blending: bounded memory
    spare = []  # batch arrays back from the blending, reused (no fresh pages to fault in per batch)
    results = {}  # seq -> (wins, probs, valids, x), from the model threads (probs None: as in ``jobs``)
    failures = []  # the first exception of any thread
    ready = threading.Condition()
    scratch = _Scratch()

    def deliver(seq, value):
        with ready:
            results[seq] = value
            ready.notify()

    def fail(exc):
        with ready:
            failures.append(exc)
            ready.notify()

    def take_slot():
        while not (stop.is_set() or halt.is_set()):
            if slots.acquire(timeout=0.1):
                return True
        return False

    def produce():
        seq = 0
        try:
            for panel in panels:
                reader = make_reader(panel, scratch)
                reader.open()
                try:
                    buf, wins, valids = None, [], []
                    for r, row in enumerate(panel.rows):
                        if not row:  # a row of windows outside the panel's rows (a block)
                            continue
                        reader.need(panel.row_y[r], panel.row_y[r] + panel.window[1])
                        for win in row:
                            if stop.is_set() or halt.is_set():
                                return
                            raw, valid = reader.window(win)
                            if not valid.any():
                                jobs.put((seq, win, None, None))
                                seq += 1
                                continue
                            if buf is None:
                                if not take_slot():
                                    return
                                with ready:
                                    buf = spare.pop() if spare else None
                                if buf is None or buf.shape[1:] != raw.shape:
                                    buf = np.empty((batch_size,) + raw.shape, dtype=np.float32)
                            model.normalise(raw, scale, valid, out=buf[len(wins)])
                            wins.append(win)
                            valids.append(valid.copy())
                            if len(wins) == batch_size:
                                jobs.put((seq, wins, buf, valids))
                                seq += 1
                                buf, wins, valids = None, [], []
                    if wins:
                        jobs.put((seq, wins, buf, valids))
                        seq += 1
                finally:
                    reader.close()
                jobs.put((seq, _PANEL_END, None, None))
                seq += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            fail(exc)
        finally:
            for _ in range(lanes):
                jobs.put(None)

    def run_model():
        while True:
            try:
                item = jobs.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set() or halt.is_set():
                    return
                continue
            if item is None or halt.is_set():
                return
            seq, wins, x, valids = item
            if x is None:
                deliver(seq, (wins, None, None, None))
                continue
            try:
                probs = runner.predict(x[:len(wins)])
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                fail(exc)
                return
            deliver(seq, (wins, probs, valids, x))

    start, end = progress
    total = max(1, sum(1 for p in panels for row in p.rows for w in row if p.counts(w)))
    counted = [0, 0]  # windows run / skipped in finished panels
    index = 0
    if on_panel:
        on_panel(panels[0])
    acc = _Accumulator(panels[0], sink, scratch)

    def report():
        done = counted[0] + counted[1] + acc.ran + acc.skipped
        feedback.progress(start + (end - start) * done / total)

    threads = [threading.Thread(target=produce, name="gullyseg-reader", daemon=True)]
    threads += [threading.Thread(target=run_model, name=f"gullyseg-model-{i}", daemon=True) for i in range(lanes)]
    for thread in threads:
        thread.start()
    last_report = 0.0
    next_seq = 0
    ok = False
    try:
        while True:
            feedback.check_cancelled()
            with ready:
                if next_seq not in results and not failures:
                    ready.wait(timeout=0.1)
                if failures:
                    raise failures[0]
                item = results.pop(next_seq, None)
            if item is None:
                if stop.is_set():
                    feedback.check_cancelled()
                    raise Cancelled() from None
                continue
            next_seq += 1
            wins, probs, valids, x = item
            if wins is _PANEL_END:  # every window of this panel is in: its last rows go out
                acc.flush()
                counted[0] += acc.ran
                counted[1] += acc.skipped
                index += 1
                if index == len(panels):
                    break
                if on_panel:
                    on_panel(panels[index])
                acc = _Accumulator(panels[index], sink, scratch)
                continue
            if probs is None:  # a window without valid pixels
                acc.skip(wins)
            else:
                for win, p, valid in zip(wins, probs, valids):
                    acc.add(win, p, valid)
                with ready:
                    spare.append(x)
                slots.release()
            acc.flush()
            now = time.monotonic()
            if now - last_report > 0.2:
                last_report = now
                report()
        feedback.progress(end)
        ok = True
    finally:
        halt.set()
        if not ok:  # stop a long run still going in a model thread
            runner.run_options.terminate = True
        for thread in threads:
            thread.join(timeout=10)
    return counted[0], counted[1]


def _blend_panels(model, grid, make_reader, scale, runner, sink, feedback, stop, progress=(0.0, 100.0), panels=None):
    """``_blend`` over the column panels of ``grid`` (one panel unless the region is wide).

    ``make_reader(panel, scratch)`` returns a reader for a panel; ``sink`` is an ``_OutputSink``;
    ``panels``: the panels to run (those of a block), else ``grid.panels()``.
    Returns (windows run, windows skipped).
    """
    panels = panels or grid.panels()

    def on_panel(panel):
        gx, _, gw, _ = panel.region
        sink.panel(gx, gx + gw)

    return _blend(model, panels, make_reader, scale, runner, sink, feedback, stop, progress,
                  on_panel if len(panels) > 1 else None)


# --- writing -------------------------------------------------------------------------------------

class _BlockWriter:
    """Writes rows of several single-band rasters in whole block rows (no partial-block rewrites)."""

    def __init__(self, bands, width, block_rows, x_off=0):
        self.bands = bands  # list of gdal bands (None to skip)
        self.width = width
        self.block_rows = block_rows
        self.x_off = x_off  # first column written (a panel of the output)
        self.start = 0  # first row not yet written
        self.pending = []  # list of tuples of arrays, one per band

    def add(self, arrays):
        self.pending.append(arrays)
        rows = sum(a[0].shape[0] for a in self.pending)
        end = self.start + rows
        aligned = (end // self.block_rows) * self.block_rows
        if aligned > self.start:
            self._write(aligned - self.start)

    def _write(self, n):
        stacked = [np.concatenate([p[i] for p in self.pending]) for i in range(len(self.bands))]
        for band, arr in zip(self.bands, stacked):
            if band is not None:
                band.WriteArray(arr[:n], self.x_off, self.start)
                band.FlushCache()  # whole blocks: compress and write them now, keep GDAL's cache small
        rest = [arr[n:] for arr in stacked]
        self.pending = [tuple(rest)] if rest and rest[0].shape[0] else []
        self.start += n

    def close(self):
        if self.pending:
            rows = sum(a[0].shape[0] for a in self.pending)
            self._write(rows)


class _OutputSink:
    """Turns finished probability rows into the uint8 probability and mask rasters (writer thread)."""

    def __init__(self, prob_path, mask_path, out, grid_region, gt, crs_wkt, threshold, pixel_area, feedback,
                 options):
        self.out = out
        self.grid_region = grid_region
        self.threshold = float(threshold)
        self.pixel_area = pixel_area
        ox, oy, ow, oh = out
        out_gt = (gt[0] + ox * gt[1], gt[1], 0.0, gt[3] + oy * gt[5], 0.0, gt[5])
        self.datasets = []
        bands = []
        for path, desc in ((prob_path, "gully probability x 254 (255 = nodata)"),
                           (mask_path, "gully mask (1 gully, 0 background, 255 nodata)")):
            if path is None:
                bands.append(None)
                continue
            ds = gdalio.create_raster(path, ow, oh, 1, gdal.GDT_Byte, out_gt, crs_wkt, NODATA,
                                      options)
            band = ds.GetRasterBand(1)
            band.SetDescription(desc)
            if path is prob_path:
                ds.SetMetadataItem("GULLYSEG_PROBABILITY_SCALE", str(PROB_SCALE))
            ds.SetMetadataItem("GULLYSEG_THRESHOLD", f"{self.threshold:g}")
            self.datasets.append(ds)
            bands.append(band)
        self.bands = bands
        self.cols = (grid_region[0], grid_region[0] + grid_region[2])  # columns of the rows received
        self.writer = _BlockWriter(bands, ow, 256)
        self.valid_pixels = 0
        self.gully_pixels = 0
        self.q = queue.Queue(maxsize=1)
        self.error = None
        self.thread = threading.Thread(target=self._loop, name="gullyseg-writer", daemon=True)
        self.thread.start()

    def __call__(self, y, prob, valid):
        """Rows from the blending (grid-region columns), or already on the output grid (final pass)."""
        if self.error is not None:
            raise self.error
        self.q.put((y, prob, valid))

    def panel(self, c0, c1):
        """The next rows (from the top again) cover raster columns [c0, c1) (a ``_Panel``)."""
        if self.error is not None:
            raise self.error
        self.q.put(("panel", c0, c1))

    def _loop(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                if item[0] == "panel":
                    self._panel(*item[1:])
                else:
                    self._write(*item)
            except BaseException as exc:  # noqa: BLE001
                self.error = exc

    def _panel(self, c0, c1):
        self.writer.close()
        ox, oy, ow, oh = self.out
        a, b = max(c0, ox), min(c1, ox + ow)
        self.cols = (c0, c1)
        self.writer = _BlockWriter(self.bands, max(0, b - a), 256, max(0, a - ox))

    def _write(self, y, prob, valid):
        ox, oy, ow, oh = self.out
        c0, c1 = self.cols
        n = prob.shape[0]
        a, b = max(y, oy), min(y + n, oy + oh)
        xa, xb = max(c0, ox), min(c1, ox + ow)
        if b <= a or xb <= xa:
            return
        rows = slice(a - y, b - y)
        cols = slice(xa - c0, xb - c0)
        p = prob[rows, cols]
        v = valid[rows, cols]
        mask = (p >= np.float32(self.threshold)).view(np.uint8)  # a new array: 0/1
        # p is a weighted mean of probabilities, so within 0..1: round(p * 254) as p * 254 + 0.5 truncated
        # (in place: the rows are this sink's own array)
        np.multiply(p, np.float32(PROB_SCALE), out=p)
        np.add(p, np.float32(0.5), out=p)
        pu8 = p.astype(np.uint8)
        nvalid = int(np.count_nonzero(v))
        if nvalid < v.size:
            invalid = ~v
            pu8[invalid] = NODATA
            mask[invalid] = NODATA
            self.gully_pixels += int(np.count_nonzero(mask == 1))
        else:
            self.gully_pixels += int(np.count_nonzero(mask))
        self.valid_pixels += nvalid
        self.writer.add((pu8, mask))

    def finish(self):
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.writer.close()
        for ds in self.datasets:
            ds.FlushCache()
        self.datasets = []

    def abort(self):
        with contextlib.suppress(Exception):
            self.q.put(None, timeout=5)
        self.thread.join(timeout=30)
        self.datasets = []


# --- the public API -------------------------------------------------------------------------------

def _region_from_extent(info, extent):
    gt = info.geotransform
    xmin, ymin, xmax, ymax = [float(v) for v in extent]
    if not (xmax > xmin and ymax > ymin):
        raise GullySegError(f"EXTENT: {extent} is empty (xmin, ymin, xmax, ymax).")
    eps = 1e-6
    c0 = math.floor((xmin - gt[0]) / gt[1] + eps)
    c1 = math.ceil((xmax - gt[0]) / gt[1] - eps)
    r0 = math.floor((ymax - gt[3]) / gt[5] + eps)
    r1 = math.ceil((ymin - gt[3]) / gt[5] - eps)
    c0, c1 = max(0, c0), min(info.width, c1)
    r0, r1 = max(0, r0), min(info.height, r1)
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1 - c0, r1 - r0


def _intersect(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def _check_block(block, info, out, input_path):
    """A block (x, y, w, h) of input pixels, checked and clipped to the output region ``out``."""
    try:
        values = [float(v) for v in block]
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != 4 or not all(math.isfinite(v) and v.is_integer() for v in values):
        raise GullySegError(f"block: {block!r} must be four whole pixel numbers (x, y, width, height).")
    x, y, w, h = (int(v) for v in values)
    if w <= 0 or h <= 0:
        raise GullySegError(f"block: {block!r} is empty (width and height must be positive).")
    clipped = _intersect((x, y, w, h), out)
    if clipped is None:
        raise GullySegError(f"block: ({x}, {y}, {w}, {h}) does not overlap the output region {tuple(out)} "
                            f"(x, y, width, height in pixels of INPUT '{input_path}').")
    return clipped


def _check_output(path, what):
    if path is None:
        return None
    path = os.path.abspath(str(path))
    if os.path.splitext(path)[1].lower() not in (".tif", ".tiff"):
        raise GullySegError(f"{what}: '{path}' must be a GeoTIFF (.tif).")
    return path


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
                   extent=None, mask_wkts=None, overlap=None, batch_size=8, threshold=None, tta=0, min_area=0,
                   simplify=0, overwrite=False, feedback=None, threads=None, compression="DEFLATE", block=None):
    """Run ``model`` (a ModelInfo or an .onnx path) over ``input_path``; returns a result dict.

    extent: (xmin, ymin, xmax, ymax) in the raster's CRS; mask_wkts: polygons (WKT) in the
    raster's CRS; overlap: pixels (None = the model's default: metadata tiles_overlap or a quarter
    of the window); threshold: None = the model's seg_thresh, else 0.5; tta: 0, 1 or 2;
    compression: of the two GeoTIFFs, a key of ``COMPRESSIONS`` (DEFLATE, ZSTD, LZW, NONE).
    block: (x, y, w, h) in pixels of the input raster: only that part of the outputs (clipped to the
    output region) is produced; the windows are those of the whole run that touch it, and its
    pixels are bit-identical to the same pixels of a whole run (``distributed`` runs blocks on
    several workers and mosaics them). Not with OUTPUT_POLYGONS or a resampled model.
    Result: pixels_processed (valid output pixels), gully_area_m2, gully_pixels, provider, windows,
    windows_skipped, resampled, polygons (count or None), outputs {probability, mask, polygons},
    block ((x, y, w, h) written, in input pixels; None for a whole run).
    """
    from . import polygonize as polygonize_mod

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
    tta_transforms(tta, model.window[0] == model.window[1] or not model.fixed_size)
    if overlap is None or overlap < 0:
        overlap = model.overlap
    overlap = int(overlap)
    if overlap >= min(model.window):
        raise GullySegError(f"OVERLAP {overlap} must be smaller than the window ({model.window[0]} pixels).")
    if int(batch_size) < 1:
        raise GullySegError(f"BATCH_SIZE must be at least 1 (got {batch_size}).")
    if min_area < 0 or simplify < 0:
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
            grid = _Grid(info.width, info.height, out, model.window, overlap)
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
                                       (info.width, info.height), scratch)

                ran, skipped = _blend_panels(model, grid, make_reader, scale, runner, sink, feedback, stop,
                                             infer_span, panels)
                sink.finish()
            except BaseException:
                sink.abort()
                raise
        else:
            ran, skipped, grid = _resampled(input_path, info, model, band_list, scale, runner, out, wkts, overlap,
                                            resample, tmp_prob, tmp_mask, threshold, feedback, stop, folder,
                                            scratch, vsimem, infer_span, options)
            sink = grid.sink
        result.update(windows=ran, windows_skipped=skipped, pixels_processed=sink.valid_pixels,
                      gully_pixels=sink.gully_pixels, gully_area_m2=sink.gully_pixels * pixel_area)
        sink = None
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
               threshold, feedback, stop, folder, scratch, vsimem, span, options):
    """Run on a warped VRT at the model's resolution, then warp the probability back (see module doc)."""
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
    mgrid = _Grid(mw, mh, (0, 0, mw, mh), model.window, overlap)
    feedback.info(f"{mgrid.count} windows in {len(mgrid.rows)} rows on the model grid")
    model_prob = os.path.join(folder, f".gullyseg-modelgrid-{uuid.uuid4().hex[:8]}.tif")
    scratch.append(model_prob)
    sink = _OutputSink(model_prob, None, (0, 0, mw, mh), mgrid.region, wgt, info.crs_wkt, threshold, res_m * res_m,
                       feedback, output_options("ZSTD"))  # scratch: only GDAL reads it back
    try:
        def make_reader(panel, scratch):
            return _GdalReader(vrt, band_list, wgt, info.crs_wkt, panel, (0, 0, mw, mh), wkts, (mw, mh), scratch)

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


def predict_array(model, raw, valid=None, overlap=None, batch_size=8, tta=0, scale=None, feedback=None):
    """Blended probability (H, W) float32 of one in-memory (C, H, W) array of raw pixel values.

    The same windows, weights and preprocessing as ``segment_raster``; NaN where ``valid`` is False.
    """
    if not isinstance(model, ModelInfo):
        model = load_model(model)
    raw = np.asarray(raw)
    if raw.ndim == 2:
        raw = raw[None]
    if raw.shape[0] != model.channels:
        raise GullySegError(f"predict: arrays have {raw.shape[0]} channel(s), the model needs {model.channels}.")
    c, h, w = raw.shape
    valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, dtype=bool)
    scale = model.input_scale(raw.dtype) if scale is None else scale
    overlap = model.overlap if overlap is None or overlap < 0 else int(overlap)
    grid = _Grid(w, h, (0, 0, w, h), model.window, overlap)
    result = np.full((h, w), np.nan, dtype=np.float32)

    def sink(y, prob, ok):  # the grid region is the whole array here
        n = prob.shape[0]
        result[y:y + n] = np.where(ok, prob, np.nan)

    runner = _Runner(model, batch_size, tta)
    stop = threading.Event()
    fb = feedback or Feedback()
    with _CancelWatcher(fb, runner, stop):
        _blend(model, [grid], lambda panel, scratch: _ArrayReader(raw, valid, grid), scale, runner, sink, fb, stop)
    return result


def predict_tiles(model, arrays, valid=None, batch_size=8, tta=0, overlap=None, scale=None, feedback=None):
    """Gully probability of small in-memory tiles (the dock's screening scores).

    arrays: (N, C, H, W) array or a list of (C, H, W) raw pixel arrays (any dtype the model can
    scale). valid: optional matching (H, W) masks. Tiles of the model's window size are batched
    straight through the model; others go through ``predict_array`` (blended windows). Returns a
    list of (H, W) float32 probabilities, NaN where invalid.
    """
    if not isinstance(model, ModelInfo):
        model = load_model(model)
    fb = feedback or Feedback()
    tiles = [np.asarray(a) for a in arrays]
    masks = [None] * len(tiles) if valid is None else list(valid)
    out = [None] * len(tiles)
    direct = [i for i, t in enumerate(tiles) if t.ndim == 3 and (t.shape[2], t.shape[1]) == tuple(model.window)]
    runner = _Runner(model, batch_size, tta)
    stop = threading.Event()

    def prepare(idx):
        xs, oks = [], []
        for i in idx:
            t = tiles[i]
            if t.shape[0] != model.channels:
                raise GullySegError(f"predict: tile {i} has {t.shape[0]} channel(s), the model needs "
                                    f"{model.channels}.")
            ok = np.ones(t.shape[1:], bool) if masks[i] is None else np.asarray(masks[i], bool)
            xs.append(model.normalise(t, model.input_scale(t.dtype) if scale is None else scale, ok))
            oks.append(ok)
        return np.stack(xs), oks

    batches = [direct[i:i + runner.batch_size] for i in range(0, len(direct), runner.batch_size)]
    with _CancelWatcher(fb, runner, stop), ThreadPoolExecutor(runner.lanes, "gullyseg-model") as pool:
        pending = []  # up to ``lanes`` batches run at once (the session's threads are split between them)
        for n, idx in enumerate(batches):
            fb.check_cancelled()
            x, oks = prepare(idx)
            pending.append((idx, oks, pool.submit(runner.predict, x)))
            while pending and (len(pending) >= runner.lanes or n + 1 == len(batches)):
                idx_done, oks_done, future = pending.pop(0)
                for i, p, ok in zip(idx_done, future.result(), oks_done):
                    out[i] = np.where(ok, p, np.nan).astype(np.float32)
                fb.progress(100.0 * sum(o is not None for o in out) / max(1, len(tiles)))
    for i, t in enumerate(tiles):
        if out[i] is None:
            fb.check_cancelled()
            out[i] = predict_array(model, t, masks[i], overlap, batch_size, tta, scale, fb)
    return out


def score_tiles(model, paths, bands=None, threshold=None, batch_size=8, feedback=None):
    """Predicted gully share of tile files (GeoTIFF/JPEG): [{path, gully_share, mean_prob, valid_fraction}].

    Reads each tile with GDAL (bands: BANDS, model metadata, else 1..C), scores with predict_tiles.
    """
    if not isinstance(model, ModelInfo):
        model = load_model(model)
    fb = feedback or Feedback()
    thr = model.threshold if threshold is None or threshold < 0 else float(threshold)
    results = []
    chunk = max(1, int(batch_size)) * 4
    for start in range(0, len(paths), chunk):
        fb.check_cancelled()
        arrays, masks, names = [], [], []
        for path in paths[start:start + chunk]:
            ds = gdalio.open_raster(path, "TILES")
            band_list, _ = resolve_bands(model, ds.RasterCount, bands)
            raw = gdalio.read_window(ds, 0, 0, ds.RasterXSize, ds.RasterYSize, band_list)
            arrays.append(raw)
            masks.append(_validity(ds, band_list, raw, 0, 0, ds.RasterXSize, ds.RasterYSize))
            names.append(str(path))
            ds = None
        probs = predict_tiles(model, arrays, masks, batch_size=batch_size, feedback=_Quiet(fb))
        for name, p, ok in zip(names, probs, masks):
            n = int(ok.sum())
            results.append({
                "path": name,
                "gully_share": float((p[ok] >= thr).sum() / n) if n else 0.0,
                "mean_prob": float(p[ok].mean()) if n else 0.0,
                "valid_fraction": n / ok.size,
            })
        fb.progress(100.0 * min(len(paths), start + chunk) / max(1, len(paths)))
    return results


class _Quiet(Feedback):
    def __init__(self, parent):
        self.parent = parent

    def is_cancelled(self):
        return self.parent.is_cancelled()
