"""Segmentation metrics: a streaming confusion matrix over windows, scores, and reports.

Two ways to compare a prediction with a reference:

* two rasters on the same grid (``evaluate_rasters``): read in windows from
  ``windows.iter_windows``, so a 31,000 x 31,000 scene is never held in memory. Per-tile
  scores are kept for a regular grid of ``tile_size`` cells, so the report shows where the
  model fails.
* two folders of masks matched by file stem (``evaluate_folders``), e.g. the masks of a test
  split and the model's masks of the same tiles: one score row per tile.

Conventions (stated in every report):

* The confusion matrix has the reference in rows and the prediction in columns.
* ``ignore_value`` (default 255) is excluded from every count. A reference pixel equal to it
  (outside the footprint, ``__ignore__`` labels) is ignored. A *prediction* pixel equal to it is
  the model's nodata (outside the image footprint): where the reference is valid such pixels are
  also left out of the matrix, counted separately as ``prediction_nodata`` and warned about, so a
  model is never rewarded or punished for pixels it was not asked to classify, and the user sees
  how many there were.
* A declared band nodata value outside the class range is treated like ``ignore_value``, and so are
  the other nodata pixels of ``gdalio.Validity`` (NaN in float rasters, mask bands); a nodata value
  inside the class range is a class.
* IoU of class k = TP / (TP + FP + FN). mIoU is the mean of the per-class IoUs over all classes
  (background and gully for the binary case, as in the published numbers); the gully IoU is
  reported separately. A class absent from both the reference and the prediction has an
  undefined IoU (0/0): it is reported as NaN (``null`` in JSON) and left out of the mean.
  Precision, recall and F1 are those of the gully class; each is NaN when its denominator is 0.
  OA = correctly classified pixels / evaluated pixels.
"""

import csv
import html
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import dataset, gdalio
from .errors import GullySegError
from .feedback import Feedback
from .windows import EDGE_PAD, iter_windows

DEFAULT_CLASSES = ("background", "gully")
DEFAULT_IGNORE = dataset.MASK_IGNORE
MASK_EXTENSIONS = (".tif", ".tiff", ".png", ".img", ".vrt", ".bmp", ".gif")
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


def card_section(classes=DEFAULT_CLASSES, ignore_value=DEFAULT_IGNORE):
    """The dataset card's 'evaluation' section: how gullyseg:evaluate scores this dataset."""
    return {
        "algorithm": "gullyseg:evaluate",
        "classes": list(classes),
        "ignore_value": ignore_value,
        "metrics": ["OA", "mIoU", "IoU_gully", "precision", "recall", "F1"],
        "convention": CONVENTION,
    }


# --- scores from a confusion matrix ------------------------------------------------------

def _ratio(num, den):
    return float(num) / float(den) if den else float("nan")


def scores(matrix, gully_index=1):
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

    def scores(self, gully_index):
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
    def scores(self):
        return scores(self.matrix, self.gully_index)

    def tile_rows(self):
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

    def to_dict(self):
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


def parse_classes(classes):
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


def gully_index_of(classes):
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


# --- grids --------------------------------------------------------------------------------

def _same_crs(wkt_a, wkt_b):
    from osgeo import osr

    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(wkt_a)
    b.ImportFromWkt(wkt_b)
    return bool(a.IsSame(b))


def check_same_grid(pred_info, ref_info, pred_what="PREDICTION", ref_what="REFERENCE", strict=True):
    """Raise a GullySegError naming both files unless size, geotransform and CRS agree.

    With ``strict`` false, a missing geotransform or CRS on one side is tolerated (returns a
    warning string); with ``strict`` true it is an error when the other side has one.
    Returns None or a warning.
    """
    both = f"{pred_what} '{pred_info.path}' and {ref_what} '{ref_info.path}'"
    if (pred_info.width, pred_info.height) != (ref_info.width, ref_info.height):
        raise GullySegError(
            f"{both} differ in size: {pred_info.width}x{pred_info.height} against "
            f"{ref_info.width}x{ref_info.height} pixels. They must be on the same grid "
            "(warp one onto the other first, e.g. gdalwarp -te ... -tr ...)."
        )
    gp = _real_gt(pred_info.geotransform)
    gr = _real_gt(ref_info.geotransform)
    warning = None
    if gp and gr:
        tol = 1e-6 * max(abs(gr[1]), abs(gr[5]), 1e-12)
        pixel = max(abs(gr[1]), abs(gr[5]))
        if any(abs(a - b) > (tol if i in (1, 2, 4, 5) else 1e-3 * pixel) for i, (a, b) in enumerate(zip(gp, gr))):
            raise GullySegError(
                f"{both} are not on the same grid: geotransforms {tuple(gp)} and {tuple(gr)} differ "
                "(origin or pixel size). Warp the prediction onto the reference grid first."
            )
    elif gp or gr:
        msg = (
            f"{both}: only one of them is georeferenced; they are compared pixel by pixel "
            "(same size), without checking their position."
        )
        if strict:
            raise GullySegError(msg.replace("they are compared", "cannot check that they are on the same grid;")
                                + " Georeference both or neither.")
        warning = msg
    if pred_info.crs_wkt and ref_info.crs_wkt:
        if not _same_crs(pred_info.crs_wkt, ref_info.crs_wkt):
            raise GullySegError(
                f"{both} are in different CRS: {pred_info.crs_label} against {ref_info.crs_label}. "
                "Reproject the prediction onto the reference grid first."
            )
    elif (pred_info.crs_wkt or ref_info.crs_wkt) and gp and gr:
        msg = (f"{both}: only one of them has a CRS ({pred_info.crs_label} / {ref_info.crs_label}); "
               "compared on the geotransform alone.")
        if strict:
            raise GullySegError(msg.replace("compared on the geotransform alone.", "assign the same CRS to both."))
        warning = msg
    return warning


def _real_gt(gt):
    if not gt or tuple(gt) == (0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        return None
    return tuple(gt)


def _extra_ignore(info, n_classes):
    """The band nodata value if it is set and outside the class range (then ignored too)."""
    value = info.nodata[0] if info.nodata else None
    if value is None or math.isnan(value):
        return None
    if 0 <= value < n_classes:
        return None
    return value if float(value).is_integer() else None


class _LabelBand:
    """Band 1 of a class raster, read with its nodata pixels.

    Nodata is ``gdalio.Validity``'s rule (NaN in float rasters, mask bands, the nodata value),
    except that a nodata value inside the class range is a class, not nodata (``_extra_ignore``).
    """

    def __init__(self, ds, info, n_classes):
        self.band = ds.GetRasterBand(1)
        self.validity = gdalio.Validity(ds, [1], nodata_values=_extra_ignore(info, n_classes) is not None)

    def read(self, x_off, y_off, width, height):
        """(values, nodata) of a window; nodata is None when every pixel has data."""
        values = self.band.ReadAsArray(x_off, y_off, width, height)
        valid = self.validity.valid(values[None], x_off, y_off, width, height)
        return values, (None if valid is None else ~valid)


def _open(path, what):
    ds = gdalio.open_raster(path, what)
    return ds, gdalio.raster_info(ds, str(path))


# --- evaluation of two rasters ------------------------------------------------------------

def evaluate_rasters(prediction, reference, classes=None, ignore_value=DEFAULT_IGNORE, tile_size=256,
                     feedback=None, read_size=2048):
    """Compare two class rasters on the same grid. Returns an ``Evaluation``.

    Per-tile scores are kept for the regular grid of ``tile_size`` x ``tile_size`` cells.
    """
    feedback = feedback or Feedback()
    names = parse_classes(classes)
    k = len(names)
    ignore_value = _check_ignore(ignore_value, k)
    tile_size = int(tile_size or 256)
    if tile_size <= 0:
        raise GullySegError(f"TILE_SIZE must be positive (got {tile_size}).")
    pred_ds, pred_info = _open(prediction, "PREDICTION")
    ref_ds, ref_info = _open(reference, "REFERENCE")
    check_same_grid(pred_info, ref_info, strict=True)
    for info, what in ((pred_info, "PREDICTION"), (ref_info, "REFERENCE")):
        if info.bands > 1:
            feedback.warn(f"{what}: '{info.path}' has {info.bands} bands; only band 1 is evaluated.")
    width, height = ref_info.width, ref_info.height
    cell_rows = -(-height // tile_size)
    cell_cols = -(-width // tile_size)
    acc = _Accumulator(k, ignore_value, cell_rows, cell_cols, (tile_size, tile_size))
    # Read windows are whole multiples of the tile size (about read_size x read_size / 2 pixels).
    win_w = min(tile_size * max(1, read_size // tile_size), cell_cols * tile_size)
    win_h = min(tile_size * max(1, read_size // 2 // tile_size), cell_rows * tile_size)
    windows = list(iter_windows(width, height, (win_w, win_h), edge=EDGE_PAD))
    ref_band, pred_band = _LabelBand(ref_ds, ref_info, k), _LabelBand(pred_ds, pred_info, k)
    labels = (f"REFERENCE '{ref_info.path}'", f"PREDICTION '{pred_info.path}'")
    for i, win in enumerate(windows):
        feedback.check_cancelled()
        xa, ya, w, h = win.clip(width, height)
        ref, ref_nodata = ref_band.read(xa, ya, w, h)
        pred, pred_nodata = pred_band.read(xa, ya, w, h)
        acc.add(ref, pred, xa, ya, ref_nodata, pred_nodata, labels)
        feedback.progress(100.0 * (i + 1) / len(windows))
    tiles = []
    for r in range(cell_rows):
        for c in range(cell_cols):
            x0, y0 = c * tile_size, r * tile_size
            tiles.append(TileScore(
                name=f"r{r:04d}_c{c:04d}", matrix=acc.cells[r, c].copy(),
                ignored=int(acc.cell_ignored[r, c]), prediction_nodata=int(acc.cell_nodata[r, c]),
                x_off=x0, y_off=y0, width=min(tile_size, width - x0), height=min(tile_size, height - y0),
            ))
    result = Evaluation(
        classes=names, gully_index=gully_index_of(names), ignore_value=ignore_value, matrix=acc.matrix,
        ignored=int(acc.cell_ignored.sum()), prediction_nodata=int(acc.cell_nodata.sum()), tiles=tiles,
        mode="rasters", prediction=str(pred_info.path), reference=str(ref_info.path), tile_size=tile_size,
    )
    _finish(result, feedback)
    return result


def _check_ignore(ignore_value, k):
    try:
        value = int(ignore_value)
    except (TypeError, ValueError):
        raise GullySegError(f"IGNORE_VALUE must be an integer (got {ignore_value!r}).") from None
    if 0 <= value < k:
        raise GullySegError(
            f"IGNORE_VALUE {value} is one of the class values 0..{k - 1}; choose a value outside them (default 255)."
        )
    return value


def _finish(result, feedback):
    total_ref = result.matrix.sum() + result.prediction_nodata
    if result.prediction_nodata:
        share = 100.0 * result.prediction_nodata / max(1, total_ref)
        msg = (f"{result.prediction_nodata} reference pixels ({share:.2f} %) have no prediction (prediction = "
               f"{result.ignore_value}, nodata); they are left out of the scores.")
        result.warnings.append(msg)
        feedback.warn(msg)
    if result.matrix.sum() == 0:
        msg = "No pixel could be evaluated (everything is ignore/nodata): every score is undefined (NaN)."
        result.warnings.append(msg)
        feedback.warn(msg)
    s = result.scores
    feedback.info(
        f"Evaluated {s['pixels']} pixels: OA {_fmt(s['oa'])}, mIoU {_fmt(s['miou'])} (mean over "
        f"{', '.join(result.classes)}), gully IoU {_fmt(s['iou_gully'])}, precision {_fmt(s['precision'])}, "
        f"recall {_fmt(s['recall'])}, F1 {_fmt(s['f1'])}."
    )


# --- evaluation of two folders of masks ---------------------------------------------------

def mask_files(folder, what):
    """{stem: path} of the mask rasters in ``folder`` (not recursive)."""
    if not folder or not os.path.isdir(str(folder)):
        raise GullySegError(f"{what}: '{folder}' is not a folder.")
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in MASK_EXTENSIONS or name.startswith("."):
            continue
        if stem in found:
            raise GullySegError(
                f"{what}: '{folder}' has two masks with the stem '{stem}' "
                f"({os.path.basename(found[stem])} and {name}); keep one."
            )
        found[stem] = os.path.join(str(folder), name)
    return found


def evaluate_folders(prediction_dir, reference_dir, classes=None, ignore_value=DEFAULT_IGNORE, feedback=None):
    """Compare masks of two folders matched by file stem; one score row per tile.

    Every reference mask needs a prediction (else an error listing the missing ones);
    predictions without a reference are ignored (reported in the log).
    """
    feedback = feedback or Feedback()
    names = parse_classes(classes)
    k = len(names)
    ignore_value = _check_ignore(ignore_value, k)
    refs = mask_files(reference_dir, "REFERENCE_FOLDER")
    preds = mask_files(prediction_dir, "PREDICTION_FOLDER")
    if not refs:
        raise GullySegError(
            f"REFERENCE_FOLDER: '{reference_dir}' holds no mask rasters ({', '.join(MASK_EXTENSIONS)})."
        )
    missing = sorted(set(refs) - set(preds))
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise GullySegError(
            f"PREDICTION_FOLDER: '{prediction_dir}' has no prediction for {len(missing)} of the "
            f"{len(refs)} reference masks in '{reference_dir}' (matched by file stem): {shown}."
        )
    extra = sorted(set(preds) - set(refs))
    if extra:
        feedback.info(f"{len(extra)} predictions have no reference mask and are not evaluated (e.g. {extra[0]}).")
    # Check every pair before reading any pixel: a bad pair is reported at once.
    opened = []
    georef_warnings = 0
    for stem in sorted(refs):
        pred_ds, pred_info = _open(preds[stem], "PREDICTION_FOLDER")
        ref_ds, ref_info = _open(refs[stem], "REFERENCE_FOLDER")
        warning = check_same_grid(pred_info, ref_info, "PREDICTION_FOLDER", "REFERENCE_FOLDER", strict=False)
        if warning:
            georef_warnings += 1
            if georef_warnings == 1:
                feedback.warn(warning)
        opened.append((stem, pred_info, ref_info))
        pred_ds = ref_ds = None
    if georef_warnings > 1:
        feedback.warn(f"{georef_warnings} pairs in all are compared without georeferencing on one side.")
    total = np.zeros((k, k), dtype=np.int64)
    tiles = []
    ignored = nodata = 0
    for i, (stem, pred_info, ref_info) in enumerate(opened):
        feedback.check_cancelled()
        pred_ds = gdalio.open_raster(pred_info.path, "PREDICTION_FOLDER")
        ref_ds = gdalio.open_raster(ref_info.path, "REFERENCE_FOLDER")
        w, h = ref_info.width, ref_info.height
        acc = _Accumulator(k, ignore_value, 1, 1, (max(w, 1), max(h, 1)))
        ref_band, pred_band = _LabelBand(ref_ds, ref_info, k), _LabelBand(pred_ds, pred_info, k)
        labels = (f"REFERENCE_FOLDER '{ref_info.path}'", f"PREDICTION_FOLDER '{pred_info.path}'")
        for win in iter_windows(w, h, (min(w, 4096), min(h, 1024)), edge=EDGE_PAD):
            feedback.check_cancelled()
            xa, ya, ww, hh = win.clip(w, h)
            ref, ref_nodata = ref_band.read(xa, ya, ww, hh)
            pred, pred_nodata = pred_band.read(xa, ya, ww, hh)
            acc.add(ref, pred, xa, ya, ref_nodata, pred_nodata, labels)
        total += acc.matrix
        ignored += int(acc.cell_ignored.sum())
        nodata += int(acc.cell_nodata.sum())
        tiles.append(TileScore(
            name=stem, matrix=acc.matrix.copy(), ignored=int(acc.cell_ignored.sum()),
            prediction_nodata=int(acc.cell_nodata.sum()), width=w, height=h,
            reference_path=ref_info.path, prediction_path=pred_info.path,
        ))
        feedback.progress(100.0 * (i + 1) / len(opened))
    result = Evaluation(
        classes=names, gully_index=gully_index_of(names), ignore_value=ignore_value, matrix=total,
        ignored=ignored, prediction_nodata=nodata, tiles=tiles, mode="folders",
        prediction=os.path.abspath(str(prediction_dir)), reference=os.path.abspath(str(reference_dir)),
    )
    _finish(result, feedback)
    return result


# --- reports ------------------------------------------------------------------------------

def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def report_paths(report_path):
    """(html, json, csv) paths: the JSON and CSV are written beside the HTML report."""
    path = os.path.abspath(str(report_path))
    stem, ext = os.path.splitext(path)
    html_path = stem + ".html" if ext.lower() in ("", ".json", ".csv") else path
    return html_path, stem + ".json", stem + ".csv"


CSV_FIELDS = ("tile", "miou", "iou_gully", "oa", "precision", "recall", "f1", "pixels",
              "reference_gully_pixels", "predicted_gully_pixels", "ignored", "prediction_nodata",
              "x_off", "y_off", "width", "height", "reference_path", "prediction_path")


def write_report(result, report_path, overwrite=True, max_html_tiles=500):
    """Write the HTML report and its JSON and CSV twins beside it. Returns the three paths.

    The CSV has one row per tile, worst first; the JSON has everything.
    """
    html_path, json_path, csv_path = report_paths(report_path)
    data = result.to_dict()
    rows = result.tile_rows()
    with gdalio.atomic_output(json_path, overwrite=overwrite, what="OUTPUT_REPORT") as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
    with gdalio.atomic_output(csv_path, overwrite=overwrite, what="OUTPUT_REPORT") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    with gdalio.atomic_output(html_path, overwrite=overwrite, what="OUTPUT_REPORT") as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(render_html(result, rows, os.path.basename(json_path), os.path.basename(csv_path),
                                     max_html_tiles))
    return html_path, json_path, csv_path


def render_html(result, rows, json_name, csv_name, max_tiles=500):
    s = result.scores
    e = html.escape
    names = result.classes
    m = result.matrix
    total = max(1, int(m.sum()))
    out = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'><title>GullySeg evaluation</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:70em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.2em}"
        "td,th{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}"
        "th{background:#eee}td.l,th.l{text-align:left}.note{color:#444;font-size:0.92em}"
        ".big{font-size:1.3em;font-weight:bold}</style></head><body>",
        "<h1>GullySeg evaluation</h1>",
        f"<p>Prediction: <code>{e(result.prediction)}</code><br>Reference: <code>{e(result.reference)}</code><br>"
        f"Mode: {e(result.mode)}"
        + (f" (per-tile scores on a {result.tile_size} x {result.tile_size} pixel grid)" if result.tile_size else "")
        + "</p>",
        "<table><tr><th class='l'>Metric</th><th>Value</th></tr>",
        f"<tr><td class='l'>mIoU (mean over {e(', '.join(names))})</td><td class='big'>{_fmt(s['miou'])}</td></tr>",
        f"<tr><td class='l'>IoU of {e(names[result.gully_index])} alone</td><td>{_fmt(s['iou_gully'])}</td></tr>",
        f"<tr><td class='l'>Overall accuracy (OA)</td><td class='big'>{_fmt(s['oa'])}</td></tr>",
        f"<tr><td class='l'>Precision ({e(names[result.gully_index])})</td><td>{_fmt(s['precision'])}</td></tr>",
        f"<tr><td class='l'>Recall ({e(names[result.gully_index])})</td><td>{_fmt(s['recall'])}</td></tr>",
        f"<tr><td class='l'>F1 ({e(names[result.gully_index])})</td><td>{_fmt(s['f1'])}</td></tr>",
        f"<tr><td class='l'>Pixels evaluated</td><td>{s['pixels']:,}</td></tr>",
        f"<tr><td class='l'>Ignored reference pixels (value {result.ignore_value})</td>"
        f"<td>{result.ignored:,}</td></tr>",
        f"<tr><td class='l'>Reference pixels without prediction (nodata)</td>"
        f"<td>{result.prediction_nodata:,}</td></tr>",
        "</table>",
        f"<p class='note'><b>Convention.</b> {e(CONVENTION)}</p>",
        "<h2>Confusion matrix</h2><p class='note'>Rows: reference; columns: prediction; "
        "pixel counts and share of all evaluated pixels.</p>",
        "<table><tr><th class='l'>reference \\ prediction</th>"
        + "".join(f"<th>{e(n)}</th>" for n in names) + "<th>total</th></tr>",
    ]
    for i, name in enumerate(names):
        cells = "".join(f"<td>{int(m[i, j]):,}<br><span class='note'>{100.0 * m[i, j] / total:.2f} %</span></td>"
                        for j in range(len(names)))
        out.append(f"<tr><th class='l'>{e(name)}</th>{cells}<td>{int(m[i].sum()):,}</td></tr>")
    out.append("<tr><th class='l'>total</th>" + "".join(f"<td>{int(m[:, j].sum()):,}</td>" for j in range(len(names)))
               + f"<td>{int(m.sum()):,}</td></tr></table>")
    out.append("<h2>Per-class IoU</h2><table><tr><th class='l'>class</th><th>IoU</th><th>TP</th><th>FP</th>"
               "<th>FN</th></tr>")
    for i, name in enumerate(names):
        tp = int(m[i, i])
        fp = int(m[:, i].sum()) - tp
        fn = int(m[i, :].sum()) - tp
        out.append(f"<tr><td class='l'>{e(name)}</td><td>{_fmt(s['iou'][i])}</td><td>{tp:,}</td><td>{fp:,}</td>"
                   f"<td>{fn:,}</td></tr>")
    out.append("</table>")
    for w in result.warnings:
        out.append(f"<p class='note'><b>Warning:</b> {e(w)}</p>")
    shown = rows[:max_tiles]
    out.append(f"<h2>Per-tile scores, worst first</h2><p class='note'>{len(rows)} tiles"
               + (f"; the {len(shown)} worst are shown" if len(shown) < len(rows) else "")
               + f". All tiles: <a href='{e(csv_name)}'>{e(csv_name)}</a> (CSV), "
               f"<a href='{e(json_name)}'>{e(json_name)}</a> (JSON). n/a: undefined (class absent from "
               "reference and prediction, or nothing evaluated).</p>")
    out.append("<table><tr><th class='l'>tile</th><th>mIoU</th><th>gully IoU</th><th>OA</th><th>precision</th>"
               "<th>recall</th><th>pixels</th><th>gully px (ref)</th><th>gully px (pred)</th>"
               + ("<th>x_off</th><th>y_off</th>" if result.mode == "rasters" else "") + "</tr>")
    for row in shown:
        out.append(
            f"<tr><td class='l'>{e(row['tile'])}</td><td>{_fmt(row['miou'])}</td><td>{_fmt(row['iou_gully'])}</td>"
            f"<td>{_fmt(row['oa'])}</td><td>{_fmt(row['precision'])}</td><td>{_fmt(row['recall'])}</td>"
            f"<td>{row['pixels']:,}</td><td>{row['reference_gully_pixels']:,}</td>"
            f"<td>{row['predicted_gully_pixels']:,}</td>"
            + (f"<td>{row['x_off']}</td><td>{row['y_off']}</td>" if result.mode == "rasters" else "") + "</tr>"
        )
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"
