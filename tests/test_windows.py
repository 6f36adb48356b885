"""The shared window iterator (tiling, scenes and inference all use it)."""

import itertools

import numpy as np
import pytest

from gullyseg.processing.engine import windows
from gullyseg.processing.engine.errors import GullySegError
from gullyseg.processing.engine.windows import (
    EDGE_SHIFT,
    EDGE_SKIP,
    Window,
    grid_shape,
    iter_blocks,
    iter_windows,
)

SIZES = [(256, 256), (1000, 700), (255, 257), (512, 512), (31000, 300)]
FULL_SIZES = [s for s in SIZES if min(s) >= 256]


def _coverage(width, height, windows):
    cover = np.zeros((height, width), dtype=np.int32)
    for w in windows:
        part = w.clip(width, height)
        if part:
            x, y, ww, hh = part
            cover[y:y + hh, x:x + ww] += 1
    return cover


@pytest.mark.parametrize("width,height", SIZES)
def test_pad_covers_every_pixel_once_and_is_regular(width, height):
    wins = list(iter_windows(width, height, 256))
    assert len(wins) == -(-width // 256) * -(-height // 256)  # ceil * ceil, as a 256 grid has
    assert (_coverage(width, height, wins) == 1).all()
    assert all(w.x_off % 256 == 0 and w.y_off % 256 == 0 and w.width == w.height == 256 for w in wins)
    assert all(w.x_off < width and w.y_off < height for w in wins)


@pytest.mark.parametrize("width,height", FULL_SIZES)
def test_skip_keeps_only_full_windows(width, height):
    wins = list(iter_windows(width, height, 256, edge=EDGE_SKIP))
    assert len(wins) == (width // 256) * (height // 256)
    assert all(w.x_end <= width and w.y_end <= height for w in wins)


@pytest.mark.parametrize("width,height", FULL_SIZES)
def test_shift_covers_everything_with_full_windows(width, height):
    wins = list(iter_windows(width, height, 256, edge=EDGE_SHIFT))
    assert all(0 <= w.x_off and w.x_end <= width and 0 <= w.y_off and w.y_end <= height for w in wins)
    assert (_coverage(width, height, wins) >= 1).all()
    assert max(w.x_end for w in wins) == width and max(w.y_end for w in wins) == height


def test_row_major_order_and_grid_indices():
    wins = list(iter_windows(1000, 700, 256, stride=200, edge=EDGE_SHIFT))
    rows, cols = grid_shape(1000, 700, 256, stride=200, edge=EDGE_SHIFT)
    assert len(wins) == rows * cols
    assert [(w.row, w.col) for w in wins] == list(itertools.product(range(rows), range(cols)))
    assert [(w.y_off, w.x_off) for w in wins] == sorted((w.y_off, w.x_off) for w in wins)


def test_overlapping_stride_and_region():
    wins = list(iter_windows(10000, 10000, 256, stride=192, edge=EDGE_SHIFT, region=(1000, 2000, 900, 600)))
    assert min(w.x_off for w in wins) == 1000 and min(w.y_off for w in wins) == 2000
    assert max(w.x_end for w in wins) == 1900 and max(w.y_end for w in wins) == 2600
    xs = sorted({w.x_off for w in wins})
    assert all(b - a <= 192 for a, b in zip(xs, xs[1:]))


def test_window_geometry_helpers():
    gt = (420000.0, 0.75, 0.0, 7010000.0, 0.0, -0.75)
    w = Window(1, 2, 512, 256, 256, 256)
    assert w.geotransform(gt) == (420384.0, 0.75, 0.0, 7009808.0, 0.0, -0.75)
    assert w.bounds(gt) == (420384.0, 7009616.0, 420576.0, 7009808.0)
    edge = Window(0, 0, 900, 600, 256, 256)
    assert edge.clip(1000, 700) == (900, 600, 100, 100)
    rows, cols = edge.inner_slices(1000, 700)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 100, 0, 100)
    assert Window(0, 0, 1000, 0, 256, 256).clip(1000, 700) is None


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(size=256, stride=300), "STRIDE"),
        (dict(size=0), "TILE_SIZE"),
        (dict(size=256, stride=-5), "STRIDE"),
        (dict(size=2048, edge=EDGE_SKIP), "larger than the raster"),
        (dict(size=256, edge=7), "EDGE"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, needle):
    with pytest.raises(GullySegError, match=needle):
        list(iter_windows(1000, 700, **kwargs))


def test_pad_accepts_tile_larger_than_raster():
    wins = list(iter_windows(100, 80, 256))
    assert [(w.x_off, w.y_off, w.width) for w in wins] == [(0, 0, 256)]


def test_blocks_cover_exactly():
    blocks = list(iter_blocks(1000, 700, 256, 128))
    cover = np.zeros((700, 1000), dtype=np.int32)
    for x, y, w, h in blocks:
        cover[y:y + h, x:x + w] += 1
    assert (cover == 1).all()


def test_from_bounds_inverts_bounds_and_snaps_outward():
    gt = (420000.0, 0.75, 0.0, 7010000.0, 0.0, -0.75)
    for win in windows.iter_windows(1000, 700, 256, stride=200):
        assert windows.from_bounds(gt, win.bounds(gt)) == win.rect
        part = win.clip(1000, 700)
        assert windows.from_bounds(gt, win.bounds(gt), 1000, 700) == part
    # a quarter pixel inside on each side: the pixels the bounds touch
    xmin, ymin, xmax, ymax = windows.bounds_of(gt, 10, 20, 5, 6)
    q = 0.75 / 4
    assert windows.from_bounds(gt, (xmin + q, ymin + q, xmax - q, ymax - q)) == (10, 20, 5, 6)
    assert windows.from_bounds(gt, (xmin - q, ymin - q, xmax + q, ymax + q)) == (9, 19, 7, 8)
    assert windows.from_bounds(gt, (xmin - 100, ymin, xmin - 50, ymax), 1000, 700) is None
    assert windows.geotransform_at(gt, 10, 20) == windows.window_of(10, 20, 5, 6).geotransform(gt)


def test_intersection_matches_boolean_arrays():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = (tuple(int(v) for v in rng.integers(0, 12, 2)) + tuple(int(v) for v in rng.integers(1, 8, 2))
                for _ in range(2))
        ma, mb = np.zeros((24, 24), bool), np.zeros((24, 24), bool)
        ma[a[1]:a[1] + a[3], a[0]:a[0] + a[2]] = True
        mb[b[1]:b[1] + b[3], b[0]:b[0] + b[2]] = True
        both = ma & mb
        got = windows.intersection(a, b)
        if not both.any():
            assert got is None
        else:
            rows, cols = np.nonzero(both)
            assert got == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)


def test_strips_cover_the_raster_and_a_region_once():
    for region in (None, (3, 5, 17, 40)):
        seen = np.zeros((50, 30), int)
        for x, y, w, n in windows.iter_strips(30, 50, 7, region):
            seen[y:y + n, x:x + w] += 1
        expected = np.zeros((50, 30), int)
        x0, y0, w, h = region or (0, 0, 30, 50)
        expected[y0:y0 + h, x0:x0 + w] = 1
        np.testing.assert_array_equal(seen, expected)
