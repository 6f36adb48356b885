"""Readers (run in the reader thread): pixel validity, block-aligned strips, in-memory arrays."""

import math
import os
import threading

import numpy as np
from osgeo import gdal, gdal_array, ogr, osr

from .. import gdalio
from ..errors import GullySegError
from .options import INPUT_MAX_FACTOR


def _validity(ds, bands, raw, x, y, w, h):
    """True where every used band has data: the one rule of ``gdalio.Validity`` (nodata values,
    NaN and infinities in float bands, mask/alpha bands, a per-dataset mask read once)."""
    return gdalio.validity(ds, bands, raw, x, y, w, h)


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


def parse_mask_wkts(mask_wkts) -> tuple:
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

    def __init__(self, path, bands, gt, crs_wkt, grid, out, mask_wkts, raster_size, scratch=None, observe=None):
        self.path, self.bands, self.gt, self.crs_wkt = path, bands, gt, crs_wkt
        self.scratch = scratch  # a _Scratch: the strip buffer is reused from panel to panel
        self.observe = observe  # an _Observed: the largest valid value read (or None)
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
        self.validity = gdalio.Validity(self.ds, self.bands)
        if self.mask_wkts:
            self.polys = _PolygonMask(self.mask_wkts, self.crs_wkt)
        # one strip buffer, reused: rows [b0, b1) of the read region are raw[:, :b1 - b0]
        self._alloc((self.grid.pad[3] if self.grid.pad else self.grid.window[1]) + self.chunk, self.scratch)

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
        self.validity = None
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
        valid = self.validity.mask(raw, self.c0, start, w, n)
        ox, oy, ow, oh = self.out
        valid[:, :max(0, ox - self.c0)] = False
        valid[:, max(0, ox + ow - self.c0):] = False
        if start < oy:
            valid[:max(0, oy - start)] = False
        if end > oy + oh:
            valid[max(0, oy + oh - start):] = False
        if self.polys is not None and valid.any():
            valid &= self.polys.mask(self.gt, self.c0, start, w, n)
        if self.observe is not None:
            self.observe.add(raw, valid)
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


class _Observed:
    """The largest valid pixel value the readers saw (integer data that can exceed input_max)."""

    def __init__(self, scale):
        self.scale = scale
        self.maximum = None
        self.lock = threading.Lock()

    def add(self, raw, valid):
        if not valid.any():
            return
        m = raw.max(where=valid[None], initial=np.iinfo(raw.dtype).min)
        with self.lock:
            self.maximum = m if self.maximum is None else max(self.maximum, m)


def _check_input_range(ds, bands, dtype, scale, model, feedback):
    """Integer data that can exceed the divisor (16-bit data, input_max): refused when a sampled maximum
    (GDAL's approximate min/max, nodata excluded) is more than ``INPUT_MAX_FACTOR`` x input_max, else
    watched while reading (``_Observed``; a warning at the end names the observed maximum)."""
    if not np.issubdtype(dtype, np.integer) or np.iinfo(dtype).max <= scale:
        return None
    sampled = None
    for b in bands:
        try:
            lo_hi = ds.GetRasterBand(b).ComputeRasterMinMax(True)
        except RuntimeError:
            continue
        if lo_hi is not None:
            sampled = lo_hi[1] if sampled is None else max(sampled, lo_hi[1])
    source = "its metadata (gullyseg.input_max)" if model.input_max is not None else "the 8-bit default"
    if sampled is not None and sampled > INPUT_MAX_FACTOR * scale:
        raise GullySegError(
            f"INPUT: pixel values reach about {sampled:g} (sampled), more than {INPUT_MAX_FACTOR:g} x the model's "
            f"input_max {scale:g} (from {source}): the model would see values it was never trained on. Record the "
            "data's real maximum (e.g. 1023 for 10-bit, 4095 for 12-bit) with gullyseg:setmodelmetadata INPUT_MAX "
            "if the model was trained on such data, or use a model made for it.")
    if sampled is not None and sampled > scale:
        feedback.warn(f"INPUT: pixel values reach about {sampled:g} (sampled), above the model's input_max "
                      f"{scale:g} (from {source}); such pixels are fed above 1.0.")
    return _Observed(scale)


def _report_observed(observed, model, feedback):
    """The largest valid input value seen (None when not watched); a warning when it exceeded the model's
    input_max (those pixels reached the model above 1.0)."""
    maximum = None if observed is None or observed.maximum is None else float(observed.maximum)
    if maximum is not None and observed.maximum > observed.scale:
        feedback.warn(
            f"INPUT: the largest valid pixel value is {observed.maximum:g}, above the model's input_max "
            f"{observed.scale:g} ({observed.maximum / observed.scale:.2f}x): those pixels reached the model above "
            f"1.0. If the data's range is larger than the model's, record the right input_max with "
            f"gullyseg:setmodelmetadata (model '{os.path.basename(model.path)}').")
    return maximum
