"""Writing: finished rows -> uint8 probability and mask GeoTIFFs in whole blocks (writer thread)."""

import contextlib
import queue
import threading

import numpy as np
from osgeo import gdal

from .. import gdalio
from .options import NODATA, PROB_SCALE


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
