"""Tile pictures for the screening view: GDAL -> an (h, w, 3) uint8 RGB array, and a prefetcher.

Decoding is plain numpy/GDAL (safe in a worker thread); turning the array into a QImage
happens in the GUI thread (``to_qimage``).

Band choice: the tile's JPEG when the dataset has one (gridtiles stretched it once for the
whole scene, so tiles are comparable); else the GeoTIFF: bands 1,2,3 for 3-band data, 3,2,1
(red, green, blue) for 4-band blue-green-red-NIR data, band 1 as grey for 1-2 bands. Data
that is not 8-bit is stretched with one set of percentiles for the whole dataset
(``estimate_stretch``), never per tile, so brightness means the same on every tile.
"""

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from osgeo import gdal

from ..processing.engine import gdalio
from ..processing.engine.stretch import percentile_limits, stretch_to_byte
from ..processing.engine.tiling import default_jpeg_bands


def image_path(root, tile, prefer_jpeg=True):
    """Absolute path of the picture to show for ``tile`` (JPEG first), or None."""
    candidates = [tile.image_jpg, tile.image_tif] if prefer_jpeg else [tile.image_tif, tile.image_jpg]
    for rel in candidates:
        if rel:
            path = os.path.join(root, *str(rel).split("/"))
            if os.path.exists(path):
                return path
    # the index may predate the image fields: try images/<tile_id>.jpg/.tif
    for ext in ((".jpg", ".tif") if prefer_jpeg else (".tif", ".jpg")):
        path = os.path.join(root, "images", tile.tile_id + ext)
        if os.path.exists(path):
            return path
    return None


def _read(path, bands=None):
    ds = gdal.Open(path)
    bands = [b for b in (bands or default_jpeg_bands(ds)) if b <= ds.RasterCount] or [1]
    data = gdalio.read_window(ds, 0, 0, ds.RasterXSize, ds.RasterYSize, bands)
    return data, gdalio.valid_mask(ds, 0, 0, ds.RasterXSize, ds.RasterYSize)


def estimate_stretch(paths, bands=None, low=2.0, high=98.0):
    """Per-band (lo, hi) percentiles over several tiles' valid pixels; None for 8-bit data."""
    samples = []
    for path in paths:
        ds = gdal.Open(path)
        if ds.GetRasterBand(1).DataType == gdal.GDT_Byte:
            return None
        data, valid = _read(path, bands)
        if valid.any():
            samples.append(data[:, valid][:, ::7])
    if not samples:
        return None
    values = np.concatenate(samples, axis=1)
    return [percentile_limits(v, (low, high)) for v in values]


def _to_uint8(data, valid, stretch):
    if data.dtype == np.uint8 and stretch is None:
        out = data.copy()
        out[:, ~valid] = 0
        return out
    lows, highs = [], []
    for i, band in enumerate(data):
        if stretch is not None and i < len(stretch):
            lo, hi = stretch[i]
        else:  # no dataset stretch known: this tile's own percentiles
            v = band[valid] if valid.any() else band.ravel()
            lo, hi = percentile_limits(v) if v.size else (0.0, 1.0)
        lows.append(lo)
        highs.append(hi)
    return stretch_to_byte(data, lows, highs, valid)


PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_rgb(path, stretch=None, bands=None):
    """(h, w, 3) uint8 C-contiguous array of the picture at ``path``.

    ``bands`` and ``stretch`` apply to data rasters (GeoTIFF); a JPEG/PNG quick-look is
    already an 8-bit RGB picture and is shown as it is.
    """
    if str(path).lower().endswith(PICTURE_SUFFIXES):
        bands, stretch = None, None
    data, valid = _read(path, bands)
    rgb = _to_uint8(data, valid, stretch)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    elif rgb.shape[0] == 2:
        rgb = np.concatenate([rgb, rgb[:1]], axis=0)
    return np.ascontiguousarray(np.transpose(rgb[:3], (1, 2, 0)))


def to_qimage(rgb):
    """QImage (a copy, owning its pixels) from an (h, w, 3) uint8 array. GUI thread only."""
    from qgis.PyQt.QtGui import QImage

    h, w, _ = rgb.shape
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return image.copy()


class TilePrefetcher:
    """Decodes tile pictures ahead in a small thread pool and keeps the recent ones.

    ``get(key, path)`` returns the array (waiting if it is being decoded); ``prefetch`` queues
    the next ones. Only numpy/GDAL run in the workers.
    """

    def __init__(self, stretch=None, bands=None, keep=24, workers=2):
        self.stretch = stretch
        self.bands = bands
        self._keep = keep
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gullyseg-tiles")
        self._futures = OrderedDict()
        self._lock = threading.Lock()

    def _submit(self, key, path):
        with self._lock:
            future = self._futures.get(key)
            if future is None:
                future = self._pool.submit(load_rgb, path, self.stretch, self.bands)
                self._futures[key] = future
            self._futures.move_to_end(key)
            while len(self._futures) > self._keep:
                _, old = self._futures.popitem(last=False)
                old.cancel()
        return future

    def prefetch(self, items):
        """items: iterable of (key, path)."""
        for key, path in items:
            if path:
                self._submit(key, path)

    def get(self, key, path):
        return self._submit(key, path).result()

    def is_ready(self, key):
        future = self._futures.get(key)
        return future is not None and future.done()

    def clear(self):
        with self._lock:
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()

    def shutdown(self):
        self.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
