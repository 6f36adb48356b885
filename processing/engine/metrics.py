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

import math
import os
from typing import Optional

import numpy as np

from . import dataset, gdalio, report
from .confusion import (  # noqa: F401 (importable from here as before)
    CONVENTION,
    DEFAULT_CLASSES,
    Evaluation,
    TileScore,
    _Accumulator,
    gully_index_of,
    parse_class_names,
    parse_classes,
    scores,
)
from .errors import GullySegError
from .feedback import Feedback
from .report import fmt as _fmt
from .report import report_paths
from .windows import EDGE_PAD, iter_windows

DEFAULT_IGNORE = dataset.MASK_IGNORE
MASK_EXTENSIONS = (".tif", ".tiff", ".png", ".img", ".vrt", ".bmp", ".gif")


def card_section(classes=DEFAULT_CLASSES, ignore_value=DEFAULT_IGNORE) -> dict:
    """The dataset card's 'evaluation' section: how gullyseg:evaluate scores this dataset."""
    return {
        "algorithm": "gullyseg:evaluate",
        "classes": list(classes),
        "ignore_value": ignore_value,
        "metrics": ["OA", "mIoU", "IoU_gully", "precision", "recall", "F1"],
        "convention": CONVENTION,
    }


# --- grids --------------------------------------------------------------------------------

def _same_crs(wkt_a, wkt_b):
    from osgeo import osr

    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(wkt_a)
    b.ImportFromWkt(wkt_b)
    return bool(a.IsSame(b))


def check_same_grid(pred_info, ref_info, pred_what="PREDICTION", ref_what="REFERENCE", strict=True) -> Optional[str]:
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
                     feedback=None, read_size=2048) -> Evaluation:
    """Compare two class rasters on the same grid. Returns an ``Evaluation``.

    Per-tile scores are kept for the regular grid of ``tile_size`` x ``tile_size`` cells.
    """
    feedback = feedback or Feedback()
    names = parse_class_names(classes)
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

def mask_files(folder, what) -> dict:
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


def evaluate_folders(prediction_dir, reference_dir, classes=None, ignore_value=DEFAULT_IGNORE,
                     feedback=None) -> Evaluation:
    """Compare masks of two folders matched by file stem; one score row per tile.

    Every reference mask needs a prediction (else an error listing the missing ones);
    predictions without a reference are ignored (reported in the log).
    """
    feedback = feedback or Feedback()
    names = parse_class_names(classes)
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


# --- reports (report.py) ------------------------------------------------------------------

CSV_FIELDS = ("tile", "miou", "iou_gully", "oa", "precision", "recall", "f1", "pixels",
              "reference_gully_pixels", "predicted_gully_pixels", "ignored", "prediction_nodata",
              "x_off", "y_off", "width", "height", "reference_path", "prediction_path")


def write_report(result, report_path, overwrite=True, max_html_tiles=500) -> tuple:
    """Write the HTML report and its JSON and CSV twins beside it. Returns the three paths.

    The CSV has one row per tile, worst first; the JSON has everything.
    """
    html_path, json_path, csv_path = report_paths(report_path)
    rows = result.tile_rows()
    report.write_json(json_path, result.to_dict(), overwrite=overwrite)
    report.write_csv(csv_path, CSV_FIELDS, rows, overwrite=overwrite)
    report.write_text(html_path, render_html(result, rows, os.path.basename(json_path), os.path.basename(csv_path),
                                             max_html_tiles), overwrite=overwrite)
    return html_path, json_path, csv_path


def render_html(result, rows, json_name, csv_name, max_tiles=500) -> str:
    return report.evaluation_html(result, rows, json_name, csv_name, CONVENTION, max_tiles)
