"""Blending weights (Hann tapers, the context margin) and test-time augmentation transforms."""

import os

import numpy as np

from ..errors import GullySegError
from .options import TTA_DIHEDRAL, TTA_FLIPS, TTA_NONE

WEIGHT_FLOOR = 1e-6


def hann(n, floor=WEIGHT_FLOOR) -> np.ndarray:
    """Squared Hann taper of n samples (sin^4 at pixel centres), strictly positive (floored).

    Squaring makes the few pixels next to a window's edge (where zero padding makes a window's
    prediction differ from a whole-image run) weigh ~1e-6 instead of ~1e-3, while the weights stay
    smooth, so the blend has no seams and matches a whole-image run to ~1e-5.
    """
    i = np.arange(n, dtype=np.float64)
    return np.maximum(np.sin(np.pi * (i + 0.5) / n) ** 4, floor)


def _taper(n, low_open, high_open, margin=0):
    """1-D weights: Hann, but flat (1) on a side with no neighbouring window.

    ``margin`` (the model's context margin): weight 0 within ``margin`` pixels of a side with a
    neighbour, the Hann taper over the rest, so pixels whose receptive field reaches past the
    window's edge never count (a neighbour's core covers them: overlap >= 2 x margin).
    """
    if margin:
        w = np.zeros(n, dtype=np.float64)
        w[margin:n - margin] = hann(n - 2 * margin)
    else:
        w = hann(n)
    half = n // 2
    if not low_open:
        w[:half] = 1.0
    if not high_open:
        w[n - half:] = 1.0
    if not low_open and not high_open:
        w[:] = 1.0
    return w


def window_weight(width, height, left=True, top=True, right=True, bottom=True, margin=0) -> np.ndarray:
    """2-D blending weight of a window; a side is tapered when another window overlaps it."""
    return np.outer(_taper(height, top, bottom, margin), _taper(width, left, right, margin)).astype(np.float32)


def tta_transforms(mode, square=True) -> list:
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


def _model_tta(model, tta):
    """The TTA transforms for ``model``, refused where they cannot map its output back."""
    if tta and any((w - c) % 2 for w, c in zip(model.window, model.core)):
        raise GullySegError(
            f"TTA: the output of '{os.path.basename(model.path)}' ({model.core[0]}x{model.core[1]}) is not centred in "
            f"its {model.window[0]}x{model.window[1]} window (an odd margin), so flipped runs cannot be mapped back; "
            "use TTA 0.")
    return tta_transforms(tta, model.window[0] == model.window[1] or not model.fixed_size)


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
        rows.append((row[0].y_off, _taper(wh, top, bottom, grid.context)))
    cols = []
    for win in next(row for row in grid.rows if row):  # every row has the same columns
        left, _, right, _ = grid.edges(win)
        cols.append((win.x_off, _taper(ww, left, right, grid.context)))
    return axis(gy, gh, rows), axis(gx, gw, cols)
