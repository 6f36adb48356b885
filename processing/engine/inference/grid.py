"""The grid of windows over a region, column panels and blocks of it (bit-identical sums)."""

from .. import windows
from ..errors import GullySegError

# wider regions are blended in column panels of this many output columns (a multiple of the 256 px
# output blocks): peak memory then depends on this, not on the scene width
PANEL_WIDTH = 8192


def _grid(raster_w, raster_h, out, model, overlap, context=0):
    """The grid of ``model``'s windows over ``out`` (laid out by the output's core)."""
    return _Grid(raster_w, raster_h, out, tuple(model.core), overlap,
                 (model.offset[0], model.offset[1], model.window[0], model.window[1]), context)


class _Grid:
    """Windows over ``out`` = (x, y, w, h) of a raster, widened to one window where it is smaller.

    ``window`` is the size of the model's output (the core of its input window when the output is
    smaller); ``pad`` = (x, y, input width, input height) places the input window around a core
    (None: the same); ``context``: the model's context margin (zero weight near inner edges).
    """

    def __init__(self, raster_w, raster_h, out, window, overlap, pad=None, context=0):
        ww, wh = window
        if context and 2 * context >= min(ww, wh):
            raise GullySegError(f"CONTEXT_MARGIN {context} leaves no core of the {ww}x{wh} window (2 x margin must "
                                "be smaller than the window); use a smaller margin or a larger window.")
        self.raster_size = (raster_w, raster_h)
        self.pad = None if pad is None or (pad[0], pad[1]) == (0, 0) and tuple(pad[2:]) == tuple(window) else pad
        self.context = int(context)
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
        self.read_region = self.read_box(gx, gy, gx + gw, gy + gh)
        self.grid = self

    def read_box(self, x0, y0, x1, y1):
        """(x, y, w, h) to read for windows over [x0, x1) x [y0, y1): within the region, or with the
        input windows' context around cores, within the raster."""
        if self.pad is None:
            gx, gy, gw, gh = self.region
            x0, y0, x1, y1 = max(x0, gx), max(y0, gy), min(x1, gx + gw), min(y1, gy + gh)
        else:
            px, py, iw, ih = self.pad
            ww, wh = self.window
            x0, y0 = max(0, x0 - px), max(0, y0 - py)
            x1, y1 = min(self.raster_size[0], x1 + iw - ww - px), min(self.raster_size[1], y1 + ih - wh - py)
        return x0, y0, x1 - x0, y1 - y0

    def input_window(self, win):
        """The model's input window around ``win`` (the window itself unless the output is a core)."""
        if self.pad is None:
            return win
        px, py, iw, ih = self.pad
        return windows.Window(win.row, win.col, win.x_off - px, win.y_off - py, iw, ih)

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
        self.pad, self.context = grid.pad, grid.context
        used = [row for row in self.rows if row]
        x0, y0 = min(row[0].x_off for row in used), used[0][0].y_off
        x1, y1 = max(row[-1].x_end for row in used), used[-1][0].y_end
        # windows of a padded grid (a region smaller than a window) reach past the raster: read within it
        self.read_region = grid.read_box(x0, y0, x1, y1)

    def input_window(self, win):
        return self.grid.input_window(win)

    def counts(self, win):
        """Whether this panel counts ``win`` in windows run/skipped (each window once over the panels)."""
        return self.first or win.x_off >= self.region[0]

    def edges(self, win):
        return self.grid.edges(win)
