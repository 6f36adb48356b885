"""The one window iterator: tiling, synthetic scenes and inference all use it.

A ``Window`` is a rectangle of pixels in raster coordinates (column ``x_off``, row
``y_off``; 0,0 is the top-left corner of the top-left pixel). Its nominal size may reach
past the raster's right or bottom edge (EDGE=pad); ``clip`` gives the part to read.
"""

import math
from dataclasses import dataclass

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
    def x_end(self):
        return self.x_off + self.width

    @property
    def y_end(self):
        return self.y_off + self.height

    def clip(self, raster_width, raster_height, x0=0, y0=0):
        """The part of this window inside ``[x0, raster_width) x [y0, raster_height)``.

        Returns ``(x_off, y_off, width, height)`` in raster pixels, or None when empty.
        """
        xa, ya = max(self.x_off, x0), max(self.y_off, y0)
        xb, yb = min(self.x_end, raster_width), min(self.y_end, raster_height)
        if xb <= xa or yb <= ya:
            return None
        return xa, ya, xb - xa, yb - ya

    def inner_slices(self, raster_width, raster_height, x0=0, y0=0):
        """Numpy slices ``(rows, cols)`` of the clipped part inside a window-sized array."""
        part = self.clip(raster_width, raster_height, x0, y0)
        if part is None:
            return None
        xa, ya, w, h = part
        return (slice(ya - self.y_off, ya - self.y_off + h), slice(xa - self.x_off, xa - self.x_off + w))

    def geotransform(self, gt):
        """Geotransform of this window, given the raster's (north-up or not)."""
        return (
            gt[0] + self.x_off * gt[1] + self.y_off * gt[2],
            gt[1],
            gt[2],
            gt[3] + self.x_off * gt[4] + self.y_off * gt[5],
            gt[4],
            gt[5],
        )

    def bounds(self, gt):
        """(xmin, ymin, xmax, ymax) in map units, for a north-up geotransform."""
        xa = gt[0] + self.x_off * gt[1]
        xb = gt[0] + self.x_end * gt[1]
        ya = gt[3] + self.y_off * gt[5]
        yb = gt[3] + self.y_end * gt[5]
        return min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)


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


def grid_shape(width, height, size, stride=None, edge=EDGE_PAD, region=None):
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


def iter_windows(width, height, size, stride=None, edge=EDGE_PAD, region=None):
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


def iter_blocks(width, height, block_width, block_height):
    """Yield (x_off, y_off, w, h) strips/blocks that exactly cover the raster (no padding).

    For streaming a raster block by block, aligned to its internal block size.
    """
    for y in range(0, height, block_height):
        for x in range(0, width, block_width):
            yield x, y, min(block_width, width - x), min(block_height, height - y)
