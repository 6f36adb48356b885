"""The one window iterator: tiling, synthetic scenes and inference all use it.

A ``Window`` is a rectangle of pixels in raster coordinates (column ``x_off``, row
``y_off``; 0,0 is the top-left corner of the top-left pixel). Its nominal size may reach
past the raster's right or bottom edge (EDGE=pad); ``clip`` gives the part to read.
"""

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from osgeo import gdal

from .errors import GullySegError

EDGE_PAD = 0  # keep the grid regular; windows past the edge are padded with nodata
EDGE_SKIP = 1  # drop windows that are not entirely inside the raster
EDGE_SHIFT = 2  # move the last row/column inward so every window is full of raster pixels
EDGE_NAMES = {EDGE_PAD: "pad", EDGE_SKIP: "skip", EDGE_SHIFT: "shift"}


@dataclass(frozen=True)
class Window:
    row: int  # grid row index (0-based)
    col: int  # grid column index (0-based)
    x_off: int
    y_off: int
    width: int
    height: int

    @property
    def x_end(self) -> int:
        return self.x_off + self.width

    @property
    def y_end(self) -> int:
        return self.y_off + self.height

    def clip(self, raster_width, raster_height, x0=0, y0=0) -> Optional[tuple]:
        """The part of this window inside ``[x0, raster_width) x [y0, raster_height)``.

        Returns ``(x_off, y_off, width, height)`` in raster pixels, or None when empty.
        """
        return intersection(self.rect, (x0, y0, raster_width - x0, raster_height - y0))

    def inner_slices(self, raster_width, raster_height, x0=0, y0=0) -> Optional[tuple]:
        """Numpy slices ``(rows, cols)`` of the clipped part inside a window-sized array."""
        part = self.clip(raster_width, raster_height, x0, y0)
        if part is None:
            return None
        xa, ya, w, h = part
        return (slice(ya - self.y_off, ya - self.y_off + h), slice(xa - self.x_off, xa - self.x_off + w))

    @property
    def rect(self) -> tuple:
        """(x_off, y_off, width, height): the plain rectangle."""
        return self.x_off, self.y_off, self.width, self.height

    def geotransform(self, gt) -> tuple:
        """Geotransform of this window, given the raster's (north-up or not)."""
        return geotransform_at(gt, self.x_off, self.y_off)

    def bounds(self, gt) -> tuple:
        """(xmin, ymin, xmax, ymax) in map units, for a north-up geotransform."""
        return bounds_of(gt, self.x_off, self.y_off, self.width, self.height)


def window_of(x_off, y_off, width, height) -> Window:
    """A ``Window`` for a plain rectangle (grid row and column 0)."""
    return Window(0, 0, int(x_off), int(y_off), int(width), int(height))


# --- geometry of rectangles of pixels ---------------------------------------------------------
# A rectangle is (x_off, y_off, width, height) in pixels of a raster with geotransform ``gt``.

def geotransform_at(gt, x_off, y_off) -> tuple:
    """Geotransform of the rectangle whose top-left pixel is (x_off, y_off) (north-up or not)."""
    return (
        gt[0] + x_off * gt[1] + y_off * gt[2],
        gt[1],
        gt[2],
        gt[3] + x_off * gt[4] + y_off * gt[5],
        gt[4],
        gt[5],
    )


def bounds_of(gt, x_off, y_off, width, height) -> tuple:
    """(xmin, ymin, xmax, ymax) in map units of a rectangle, for a north-up geotransform."""
    xa = gt[0] + x_off * gt[1]
    xb = gt[0] + (x_off + width) * gt[1]
    ya = gt[3] + y_off * gt[5]
    yb = gt[3] + (y_off + height) * gt[5]
    return min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)


def from_bounds(gt, bounds, width=None, height=None, eps=1e-6) -> Optional[tuple]:
    """The pixel rectangle covering map ``bounds`` (xmin, ymin, xmax, ymax), north-up ``gt``.

    Snapped outward to whole pixels (a pixel the bounds touch by less than ``eps`` of a pixel is
    left out), clipped to ``[0, width) x [0, height)`` when given. Returns (x_off, y_off, w, h),
    or None when nothing is left.
    """
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    c0 = math.floor((xmin - gt[0]) / gt[1] + eps)
    c1 = math.ceil((xmax - gt[0]) / gt[1] - eps)
    r0 = math.floor((ymax - gt[3]) / gt[5] + eps)
    r1 = math.ceil((ymin - gt[3]) / gt[5] - eps)
    if width is not None:
        c0, c1 = max(0, c0), min(int(width), c1)
    if height is not None:
        r0, r1 = max(0, r0), min(int(height), r1)
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1 - c0, r1 - r0


def to_pixel(gt) -> Callable[[float, float], tuple]:
    """(x, y) map coordinates -> (col, row) for geotransform ``gt``: the inverse geotransform,
    computed as GDAL's rasterizer does."""
    inv = gdal.InvGeoTransform(tuple(gt))

    def _apply(x, y):
        return inv[0] + x * inv[1] + y * inv[2], inv[3] + x * inv[4] + y * inv[5]

    return _apply


def intersection(a, b) -> Optional[tuple]:
    """The common part of two rectangles (x_off, y_off, w, h), or None when they do not overlap."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def _offsets(start, length, size, stride, edge):
    """Window start offsets along one axis covering ``[start, start + length)``."""
    end = start + length
    if edge == EDGE_PAD:
        count = 1 if length <= size else 1 + math.ceil((length - size) / stride)
        return [start + i * stride for i in range(count)]
    if size > length:
        return []
    offsets = list(range(start, end - size + 1, stride))
    if edge == EDGE_SHIFT and offsets[-1] + size < end:
        offsets.append(end - size)
    return offsets


def grid_shape(width, height, size, stride=None, edge=EDGE_PAD, region=None) -> tuple:
    """(rows, cols) of the grid ``iter_windows`` yields for the same arguments."""
    xs, ys = _axes(width, height, size, stride, edge, region)
    return len(ys), len(xs)


def _axes(width, height, size, stride, edge, region):
    sx, sy = (size, size) if isinstance(size, int) else size
    if stride is None or stride == 0:
        tx, ty = sx, sy
    else:
        tx, ty = (stride, stride) if isinstance(stride, int) else stride
    if min(sx, sy) <= 0:
        raise GullySegError(f"TILE_SIZE must be positive (got {size}).")
    if min(tx, ty) <= 0:
        raise GullySegError(f"STRIDE must be positive (got {stride}).")
    if tx > sx or ty > sy:
        raise GullySegError(
            f"STRIDE {stride} is larger than TILE_SIZE {size}: pixels between tiles would be lost."
        )
    if edge not in EDGE_NAMES:
        raise GullySegError(f"EDGE must be one of {sorted(EDGE_NAMES)} (got {edge}).")
    x0, y0, w, h = region if region is not None else (0, 0, width, height)
    if w <= 0 or h <= 0:
        raise GullySegError(f"The region to cover is empty ({w}x{h} pixels).")
    if edge != EDGE_PAD and (sx > w or sy > h):
        raise GullySegError(
            f"TILE_SIZE {sx}x{sy} is larger than the raster ({w}x{h} pixels); "
            "use a smaller tile size or EDGE=pad."
        )
    return _offsets(x0, w, sx, tx, edge), _offsets(y0, h, sy, ty, edge)


def iter_windows(width, height, size, stride=None, edge=EDGE_PAD, region=None) -> Iterator[Window]:
    """Yield ``Window`` objects in row-major (grid) order.

    width, height: raster size in pixels.
    size: window size (int or (w, h)). stride: step (int or (sx, sy)); None/0 means = size.
    edge: EDGE_PAD, EDGE_SKIP or EDGE_SHIFT (see module constants).
    region: optional (x_off, y_off, w, h) sub-rectangle to cover instead of the raster.
    """
    xs, ys = _axes(width, height, size, stride, edge, region)
    sx, sy = (size, size) if isinstance(size, int) else size
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            yield Window(r, c, x, y, sx, sy)


def iter_blocks(width, height, block_width, block_height, region=None) -> Iterator[tuple]:
    """Yield (x_off, y_off, w, h) strips/blocks that exactly cover the raster (no padding).

    For streaming a raster block by block, aligned to its internal block size. ``region``
    (x_off, y_off, w, h): cover that rectangle instead, in blocks of the same size from its corner.
    """
    x0, y0, w, h = region if region is not None else (0, 0, width, height)
    for y in range(y0, y0 + h, block_height):
        for x in range(x0, x0 + w, block_width):
            yield x, y, min(block_width, x0 + w - x), min(block_height, y0 + h - y)


def iter_strips(width, height, rows, region=None) -> Iterator[tuple]:
    """Yield (x_off, y_off, w, n) full-width strips of ``rows`` rows covering the raster (or
    ``region``); the last strip may be shorter. For reading a raster top to bottom."""
    x0, y0, w, h = region if region is not None else (0, 0, width, height)
    yield from iter_blocks(width, height, max(1, w), max(1, int(rows)), (x0, y0, w, h))
