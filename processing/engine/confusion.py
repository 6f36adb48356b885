"""The confusion matrix and its scores: accumulation over windows, per-tile and total results.

The conventions are in ``metrics.py``'s docstring (reference in rows, ignore value and prediction
nodata left out, IoU / mIoU / precision / recall / F1 / OA, NaN for undefined scores).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import GullySegError

DEFAULT_CLASSES = ("background", "gully")
CONVENTION = (
    "Confusion matrix: reference in rows, prediction in columns. mIoU is the mean of the "
    "per-class IoU over all classes (background and gully, as in the published numbers); the gully "
    "IoU is given separately because the two are easily confused. IoU = TP / (TP + FP + FN). "
    "A class absent from both reference and prediction has an undefined IoU (NaN) and is left out of "
    "the mean. Precision, recall and F1 are those of the gully class. Pixels equal to the ignore "
    "value in the reference are excluded from every count; prediction pixels equal to it (the "
    "model's nodata) where the reference is valid are excluded too and counted as 'prediction "
    "nodata'."
)


# --- scores from a confusion matrix ------------------------------------------------------

def _ratio(num, den):
    return float(num) / float(den) if den else float("nan")


def scores(matrix, gully_index=1) -> dict:
    """Scores of a K x K confusion matrix (rows reference, columns prediction).

    Returns a dict: oa, miou, iou (list per class), iou_gully, precision, recall, f1,
    pixels (evaluated). Undefined values are NaN (see the module docstring).
    """
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    if m.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {m.shape}")
    total = m.sum()
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    iou = [_ratio(tp[i], tp[i] + fp[i] + fn[i]) for i in range(k)]
    defined = [v for v in iou if not math.isnan(v)]
    g = gully_index
    return {
        "pixels": int(total),
        "oa": _ratio(tp.sum(), total),
        "miou": float(np.mean(defined)) if defined else float("nan"),
        "iou": iou,
        "iou_gully": iou[g],
        "precision": _ratio(tp[g], tp[g] + fp[g]),
        "recall": _ratio(tp[g], tp[g] + fn[g]),
        "f1": _ratio(2 * tp[g], 2 * tp[g] + fp[g] + fn[g]),
    }


# --- accumulation -------------------------------------------------------------------------

@dataclass
class TileScore:
    name: str
    matrix: np.ndarray
    ignored: int = 0  # reference pixels equal to the ignore value (or nodata)
    prediction_nodata: int = 0  # valid reference pixels the prediction left as nodata
    x_off: int = 0
    y_off: int = 0
    width: int = 0
    height: int = 0
    reference_path: str = ""
    prediction_path: str = ""

    def scores(self, gully_index) -> dict:
        return scores(self.matrix, gully_index)


@dataclass
class Evaluation:
    """The result of an evaluation: the total matrix, counts, per-tile matrices and warnings."""

    classes: list
    gully_index: int
    ignore_value: int
    matrix: np.ndarray
    ignored: int = 0
    prediction_nodata: int = 0
    tiles: list = field(default_factory=list)
    mode: str = "rasters"
    prediction: str = ""
    reference: str = ""
    tile_size: int = 0
    warnings: list = field(default_factory=list)

    @property
    def scores(self) -> dict:
        return scores(self.matrix, self.gully_index)

    def tile_rows(self) -> list:
        """Per-tile dicts, worst first (lowest mIoU; tiles with nothing to evaluate last)."""
        rows = []
        for tile in self.tiles:
            s = tile.scores(self.gully_index)
            ref_gully = int(tile.matrix[self.gully_index, :].sum())
            pred_gully = int(tile.matrix[:, self.gully_index].sum())
            rows.append({
                "tile": tile.name,
                "miou": s["miou"],
                "iou_gully": s["iou_gully"],
                "oa": s["oa"],
                "precision": s["precision"],
                "recall": s["recall"],
                "f1": s["f1"],
                "pixels": s["pixels"],
                "reference_gully_pixels": ref_gully,
                "predicted_gully_pixels": pred_gully,
                "ignored": tile.ignored,
                "prediction_nodata": tile.prediction_nodata,
                "x_off": tile.x_off,
                "y_off": tile.y_off,
                "width": tile.width,
                "height": tile.height,
                "reference_path": tile.reference_path,
                "prediction_path": tile.prediction_path,
            })

        def key(row):
            nothing = row["pixels"] == 0 or math.isnan(row["miou"])
            return (1 if nothing else 0, 0.0 if nothing else row["miou"], row["tile"])

        rows.sort(key=key)
        return rows

    def to_dict(self) -> dict:
        s = self.scores
        return {
            "convention": CONVENTION,
            "mode": self.mode,
            "prediction": self.prediction,
            "reference": self.reference,
            "classes": list(self.classes),
            "gully_class": self.classes[self.gully_index],
            "ignore_value": self.ignore_value,
            "tile_size": self.tile_size or None,
            "pixels_evaluated": s["pixels"],
            "ignored_pixels": int(self.ignored),
            "prediction_nodata_pixels": int(self.prediction_nodata),
            "OA": _json_number(s["oa"]),
            "MIOU": _json_number(s["miou"]),
            "IOU_GULLY": _json_number(s["iou_gully"]),
            "PRECISION": _json_number(s["precision"]),
            "RECALL": _json_number(s["recall"]),
            "F1": _json_number(s["f1"]),
            "iou_per_class": {c: _json_number(v) for c, v in zip(self.classes, s["iou"])},
            "confusion_matrix": {
                "rows": "reference",
                "columns": "prediction",
                "classes": list(self.classes),
                "counts": self.matrix.astype(np.int64).tolist(),
            },
            "tiles": [{k: _json_number(v) for k, v in row.items()} for row in self.tile_rows()],
            "warnings": list(self.warnings),
        }


def _json_number(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def parse_class_names(classes) -> list:
    """'background,gully' or a list -> list of names (at least two, unique)."""
    if classes is None or classes == "":
        names = list(DEFAULT_CLASSES)
    elif isinstance(classes, str):
        names = [c.strip() for c in classes.replace(";", ",").split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in classes]
    if len(names) < 2:
        raise GullySegError(
            f"CLASSES: need at least two class names (value 0 first, e.g. 'background,gully'), got {classes!r}."
        )
    if len(set(names)) != len(names):
        raise GullySegError(f"CLASSES: class names must be unique, got {names}.")
    return names



parse_classes = parse_class_names  # the earlier name (labelme.parse_class_map parses class *values*)

def gully_index_of(classes) -> int:
    """Index of the class named 'gully' (any case), else 1."""
    lowered = [c.lower() for c in classes]
    return lowered.index("gully") if "gully" in lowered else 1


class _Accumulator:
    """Adds windows of (reference, prediction) to a total matrix and to per-cell matrices."""

    def __init__(self, n_classes, ignore_value, cell_rows, cell_cols, cell_size):
        self.k = n_classes
        self.ignore = ignore_value
        self.matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
        self.cells = np.zeros((cell_rows, cell_cols, n_classes, n_classes), dtype=np.int64)
        self.cell_ignored = np.zeros((cell_rows, cell_cols), dtype=np.int64)
        self.cell_nodata = np.zeros((cell_rows, cell_cols), dtype=np.int64)
        self.cell_size = cell_size  # (w, h)

    def add(self, ref, pred, x_off, y_off, ref_nodata, pred_nodata, names):
        """ref, pred: 2-D integer-like arrays of one window at (x_off, y_off); ref_nodata, pred_nodata:
        boolean arrays of their nodata pixels (``_LabelBand.read``) or None."""
        k = self.k
        ref = _as_labels(ref, names[0])
        pred = _as_labels(pred, names[1])
        ref_ign = ref == self.ignore
        if ref_nodata is not None:
            ref_ign |= ref_nodata
        pred_ign = pred == self.ignore
        if pred_nodata is not None:
            pred_ign |= pred_nodata
        _check_range(ref, ref_ign, k, self.ignore, names[0], x_off, y_off)
        _check_range(pred, pred_ign, k, self.ignore, names[1], x_off, y_off)
        valid = ~ref_ign & ~pred_ign
        nodata = ~ref_ign & pred_ign

        h, w = ref.shape
        cw, ch = self.cell_size
        r0, r1 = y_off // ch, (y_off + h - 1) // ch
        c0, c1 = x_off // cw, (x_off + w - 1) // cw
        n_local_cols = c1 - c0 + 1
        n_local = (r1 - r0 + 1) * n_local_cols
        local_r = (np.arange(y_off, y_off + h) // ch - r0)[:, None]
        local_c = (np.arange(x_off, x_off + w) // cw - c0)[None, :]
        cell = (local_r * n_local_cols + local_c)
        cell = np.broadcast_to(cell, (h, w))

        code = (cell[valid].astype(np.int64) * k + ref[valid]) * k + pred[valid]
        counts = np.bincount(code, minlength=n_local * k * k).reshape(r1 - r0 + 1, n_local_cols, k, k)
        self.cells[r0:r1 + 1, c0:c1 + 1] += counts
        self.matrix += counts.sum(axis=(0, 1))
        ign = np.bincount(cell[ref_ign], minlength=n_local).reshape(r1 - r0 + 1, n_local_cols)
        self.cell_ignored[r0:r1 + 1, c0:c1 + 1] += ign
        nod = np.bincount(cell[nodata], minlength=n_local).reshape(r1 - r0 + 1, n_local_cols)
        self.cell_nodata[r0:r1 + 1, c0:c1 + 1] += nod


def _as_labels(array, name):
    """Integer labels (int64) from any numeric array; fractional values are an error."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64, copy=False)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            array = np.where(finite, array, -1)
        rounded = np.rint(array)
        if np.any(rounded != array):
            bad = array[rounded != array][0]
            raise GullySegError(
                f"{name}: holds the non-integer value {bad}; evaluation needs class masks "
                "(0 background, 1 gully ...), not probabilities. Use the segmentation's mask output."
            )
        return rounded.astype(np.int64)
    raise GullySegError(f"{name}: data type {array.dtype} cannot hold class labels.")


def _check_range(labels, ignored, k, ignore_value, name, x_off, y_off):
    bad = (labels < 0) | (labels >= k)
    bad &= ~ignored
    if bad.any():
        rows, cols = np.nonzero(bad)
        values = sorted({int(v) for v in np.unique(labels[bad])[:10]})
        raise GullySegError(
            f"{name}: holds the value(s) {values} (first at pixel x={x_off + int(cols[0])}, "
            f"y={y_off + int(rows[0])}), but CLASSES has {k} classes (values 0..{k - 1}) and "
            f"IGNORE_VALUE is {ignore_value}. Is this a probability raster instead of a class mask, "
            "or are CLASSES incomplete?"
        )
