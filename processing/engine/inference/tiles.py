"""In-memory prediction (arrays, tiles) and the dock's tile scores, with the same windows and weights."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import gdalio
from ..errors import GullySegError
from ..feedback import Feedback
from ..onnx_model import ModelInfo, load_model
from .grid import _grid
from .options import _overlap_and_context
from .pipeline import _blend
from .readers import _ArrayReader, _validity
from .runner import _CancelWatcher, _Runner
from .segment import resolve_bands


def predict_array(model, raw, valid=None, overlap=None, batch_size=8, tta=0, scale=None, feedback=None,
                  context_margin=None) -> np.ndarray:
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
    fb = feedback or Feedback()
    overlap, context = _overlap_and_context(model, overlap, context_margin, _Quiet(fb))
    grid = _grid(w, h, (0, 0, w, h), model, overlap, context)
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


def predict_tiles(model, arrays, valid=None, batch_size=8, tta=0, overlap=None, scale=None, feedback=None) -> list:
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
    direct = [i for i, t in enumerate(tiles) if t.ndim == 3 and (t.shape[2], t.shape[1]) == tuple(model.window)
              and tuple(model.core) == tuple(model.window)]  # a core model's tiles are blended (edge context)
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


def score_tiles(model, paths, bands=None, threshold=None, batch_size=8, feedback=None) -> list:
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
