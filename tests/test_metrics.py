"""engine.metrics against hand-computed confusion matrices (ignore pixels, empty classes, grids)."""

import csv
import json
import math

import numpy as np
import pytest
import rasters
from osgeo import gdal

from gullyseg.processing.engine import metrics
from gullyseg.processing.engine.errors import Cancelled, GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback

GT = (500000.0, 0.75, 0.0, 7000000.0, 0.0, -0.75)


def write_mask(path, array, gt=GT, epsg=32606, nodata=None, driver="GTiff"):
    array = np.asarray(array)
    h, w = array.shape
    gtype = gdal.GDT_Byte if array.dtype == np.uint8 else gdal.GDT_Float32
    if driver == "GTiff":
        rasters.write_raster(path, array, gt=gt, epsg=epsg, nodata=nodata, gdal_type=gtype)
    else:  # PNG through a MEM dataset (no georeferencing)
        mem = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
        mem.GetRasterBand(1).WriteArray(array)
        gdal.GetDriverByName(driver).CreateCopy(str(path), mem)
        mem = None
    return str(path)


# --- scores of a confusion matrix ---------------------------------------------------------

def test_scores_of_a_hand_made_matrix():
    # rows reference, columns prediction: 50 TN, 10 FP, 5 FN, 35 TP
    s = metrics.scores([[50, 10], [5, 35]])
    assert s["pixels"] == 100
    assert s["oa"] == pytest.approx(85 / 100)
    assert s["iou"][0] == pytest.approx(50 / 65)  # 50 / (50 + 5 + 10)
    assert s["iou_gully"] == pytest.approx(35 / 50)  # 35 / (35 + 10 + 5)
    assert s["miou"] == pytest.approx((50 / 65 + 35 / 50) / 2)
    assert s["precision"] == pytest.approx(35 / 45)
    assert s["recall"] == pytest.approx(35 / 40)
    assert s["f1"] == pytest.approx(2 * (35 / 45) * (35 / 40) / (35 / 45 + 35 / 40))


def test_scores_empty_gully_class_is_undefined_and_left_out_of_the_mean():
    # no gully in the reference nor in the prediction: gully IoU 0/0
    s = metrics.scores([[80, 0], [0, 0]])
    assert math.isnan(s["iou_gully"]) and math.isnan(s["precision"]) and math.isnan(s["recall"])
    assert math.isnan(s["f1"])
    assert s["miou"] == 1.0 and s["oa"] == 1.0


def test_scores_gully_only_predicted_is_zero_not_undefined():
    # the reference has no gully, the model predicts 20 gully pixels: gully IoU is 0 (defined)
    s = metrics.scores([[60, 20], [0, 0]])
    assert s["iou_gully"] == 0.0
    assert s["precision"] == 0.0
    assert math.isnan(s["recall"])  # 0 / (0 + 0)
    assert s["f1"] == 0.0
    assert s["miou"] == pytest.approx((60 / 80 + 0.0) / 2)


def test_scores_three_classes_gully_index():
    m = [[10, 2, 0], [1, 5, 0], [0, 0, 0]]  # third class absent from reference and prediction
    s = metrics.scores(m, gully_index=1)
    assert s["iou"][0] == pytest.approx(10 / 13)
    assert s["iou"][1] == pytest.approx(5 / 8)
    assert math.isnan(s["iou"][2])
    assert s["miou"] == pytest.approx((10 / 13 + 5 / 8) / 2)
    m[1][2] = 1  # predicted once: now defined, IoU 0, and part of the mean
    s = metrics.scores(m, gully_index=1)
    assert s["iou"][2] == 0.0 and s["miou"] == pytest.approx((10 / 13 + 5 / 9 + 0.0) / 3)


def test_nothing_evaluated_gives_nan_everywhere():
    s = metrics.scores([[0, 0], [0, 0]])
    assert all(math.isnan(s[k]) for k in ("oa", "miou", "iou_gully", "precision", "recall", "f1"))


# --- two rasters --------------------------------------------------------------------------

REF = np.array([
    [0, 0, 1, 1, 255, 255],
    [0, 0, 1, 1, 0, 0],
    [0, 1, 1, 0, 0, 0],
    [255, 1, 1, 0, 0, 1],
], dtype=np.uint8)
PRED = np.array([
    [0, 1, 1, 1, 1, 0],
    [0, 0, 1, 0, 0, 0],
    [0, 0, 1, 1, 0, 255],
    [0, 1, 1, 0, 255, 1],
], dtype=np.uint8)
# Counted by hand, pixel by pixel (row, col):
# reference 255 at (0,4), (0,5), (3,0): 3 ignored, whatever the prediction says.
# prediction 255 where the reference is valid: (2,5) ref 0 and (3,4) ref 0: 2 "prediction nodata".
# remaining 19 pixels:
#   ref 0 / pred 0 (TN): (0,0) (1,0) (1,1) (1,4) (1,5) (2,0) (2,4) (3,3)          = 8
#   ref 0 / pred 1 (FP): (0,1) (2,3)                                              = 2
#   ref 1 / pred 0 (FN): (1,3) (2,1)                                              = 2
#   ref 1 / pred 1 (TP): (0,2) (0,3) (1,2) (2,2) (3,1) (3,2) (3,5)                = 7
HAND_MATRIX = [[8, 2], [2, 7]]


def test_rasters_with_ignore_and_prediction_nodata(tmp_path):
    pred = write_mask(tmp_path / "pred.tif", PRED)
    ref = write_mask(tmp_path / "ref.tif", REF)
    fb = RecordingFeedback()
    res = metrics.evaluate_rasters(pred, ref, feedback=fb)
    assert res.matrix.tolist() == HAND_MATRIX
    assert res.ignored == 3
    assert res.prediction_nodata == 2
    assert any("no prediction" in w for w in fb.warnings)
    s = res.scores
    assert s["oa"] == pytest.approx(15 / 19)
    assert s["iou"][0] == pytest.approx(8 / 12)
    assert s["iou_gully"] == pytest.approx(7 / 11)
    assert s["miou"] == pytest.approx((8 / 12 + 7 / 11) / 2)
    assert s["precision"] == pytest.approx(7 / 9)
    assert s["recall"] == pytest.approx(7 / 9)
    assert s["f1"] == pytest.approx(7 / 9)


def test_custom_ignore_value_and_nodata_value(tmp_path):
    ref = REF.copy()
    ref[ref == 255] = 9
    pred = PRED.copy()
    pred[pred == 255] = 9
    res = metrics.evaluate_rasters(write_mask(tmp_path / "p.tif", pred), write_mask(tmp_path / "r.tif", ref),
                                   ignore_value=9)
    assert res.matrix.tolist() == HAND_MATRIX
    # a declared band nodata outside the class range is ignored like IGNORE_VALUE
    res = metrics.evaluate_rasters(write_mask(tmp_path / "p2.tif", pred, nodata=9),
                                   write_mask(tmp_path / "r2.tif", ref, nodata=9))
    assert res.matrix.tolist() == HAND_MATRIX and res.ignored == 3 and res.prediction_nodata == 2


def test_reference_without_gully_and_prediction_without_gully(tmp_path):
    ref = np.zeros((5, 5), np.uint8)
    ref[0, :] = 255
    res = metrics.evaluate_rasters(write_mask(tmp_path / "p.tif", np.zeros((5, 5), np.uint8)),
                                   write_mask(tmp_path / "r.tif", ref))
    assert res.matrix.tolist() == [[20, 0], [0, 0]]
    data = res.to_dict()
    assert data["IOU_GULLY"] is None and data["PRECISION"] is None and data["RECALL"] is None
    assert data["MIOU"] == 1.0 and data["OA"] == 1.0
    assert data["iou_per_class"] == {"background": 1.0, "gully": None}


def test_everything_ignored_warns_and_is_nan(tmp_path):
    fb = RecordingFeedback()
    res = metrics.evaluate_rasters(write_mask(tmp_path / "p.tif", np.zeros((3, 3), np.uint8)),
                                   write_mask(tmp_path / "r.tif", np.full((3, 3), 255, np.uint8)), feedback=fb)
    assert res.matrix.sum() == 0 and res.ignored == 9
    assert math.isnan(res.scores["miou"])
    assert any("No pixel" in w for w in fb.warnings)


def test_per_tile_scores_on_a_grid_worst_first(tmp_path):
    # 300 x 520 pixels, tiles of 256: 2 rows x 3 columns of cells (the last ones partial)
    ref = np.zeros((300, 520), np.uint8)
    ref[10:60, 10:60] = 1  # gully in cell r0 c0
    ref[270:290, 300:400] = 1  # gully in cell r1 c1
    pred = ref.copy()
    pred[10:60, 10:35] = 0  # half the gully of r0 c0 missed
    pred[0:5, 515:520] = 1  # a false alarm in r0 c2
    res = metrics.evaluate_rasters(write_mask(tmp_path / "p.tif", pred), write_mask(tmp_path / "r.tif", ref),
                                   tile_size=256, read_size=256)
    assert len(res.tiles) == 6
    cells = {t.name: t for t in res.tiles}
    assert cells["r0000_c0000"].matrix.tolist() == [[256 * 256 - 2500, 0], [1250, 1250]]
    assert cells["r0000_c0002"].matrix.tolist() == [[256 * 8 - 25, 25], [0, 0]]
    assert cells["r0001_c0002"].width == 8 and cells["r0001_c0002"].height == 44
    assert sum(t.matrix for t in res.tiles).tolist() == res.matrix.tolist()
    rows = res.tile_rows()
    assert rows[0]["tile"] == "r0000_c0002"  # gully IoU 0 there: mIoU about 0.5, the worst
    assert rows[1]["tile"] == "r0000_c0000"
    assert [r["miou"] for r in rows] == sorted(r["miou"] for r in rows)


def test_windowed_reading_equals_a_whole_array_count(tmp_path):
    """Streaming over many small windows gives the same matrix as counting whole arrays."""
    rng = np.random.default_rng(3)
    ref = rng.choice([0, 1, 255], size=(700, 650), p=[0.6, 0.3, 0.1]).astype(np.uint8)
    pred = rng.choice([0, 1, 255], size=(700, 650), p=[0.55, 0.4, 0.05]).astype(np.uint8)
    p, r = write_mask(tmp_path / "p.tif", pred), write_mask(tmp_path / "r.tif", ref)
    res = metrics.evaluate_rasters(p, r, tile_size=100, read_size=128)
    valid = (ref != 255) & (pred != 255)
    expected = [[int(np.sum(valid & (ref == a) & (pred == b))) for b in (0, 1)] for a in (0, 1)]
    assert res.matrix.tolist() == expected
    assert res.ignored == int(np.sum(ref == 255))
    assert res.prediction_nodata == int(np.sum((ref != 255) & (pred == 255)))
    assert len(res.tiles) == 7 * 7


def test_scene_mask_against_itself_and_a_shifted_copy(scene_factory, tmp_path):
    """On a synthetic scene's ground truth: itself is perfect; a shifted copy matches a numpy count."""
    scene = scene_factory("evalscene", width=512, height=512, seed=5, nodata_edge=True)
    mask = str(scene).replace(".tif", "_mask.tif")
    res = metrics.evaluate_rasters(mask, mask)
    assert res.scores["miou"] == 1.0 and res.scores["oa"] == 1.0 and res.matrix[1, 1] > 0
    ref = gdal.Open(mask).ReadAsArray()
    shifted = np.roll(ref, 3, axis=1)
    src = gdal.Open(mask)
    pred_path = str(tmp_path / "shifted.tif")
    out = gdal.GetDriverByName("GTiff").CreateCopy(pred_path, src)
    out.GetRasterBand(1).WriteArray(shifted)
    out = src = None
    res = metrics.evaluate_rasters(pred_path, mask)
    valid = (ref != 255) & (shifted != 255)
    tp = np.sum(valid & (ref == 1) & (shifted == 1))
    fp = np.sum(valid & (ref == 0) & (shifted == 1))
    fn = np.sum(valid & (ref == 1) & (shifted == 0))
    assert res.scores["iou_gully"] == pytest.approx(tp / (tp + fp + fn))


# --- errors -------------------------------------------------------------------------------

def test_different_size_is_an_error_naming_both(tmp_path):
    p = write_mask(tmp_path / "pred.tif", np.zeros((4, 5), np.uint8))
    r = write_mask(tmp_path / "ref.tif", np.zeros((4, 6), np.uint8))
    with pytest.raises(GullySegError, match=r"(?s)pred\.tif.*ref\.tif.*differ in size"):
        metrics.evaluate_rasters(p, r)


def test_different_grid_is_an_error(tmp_path):
    p = write_mask(tmp_path / "pred.tif", REF, gt=(500000.75, 0.75, 0, 7000000.0, 0, -0.75))
    r = write_mask(tmp_path / "ref.tif", REF)
    with pytest.raises(GullySegError, match=r"(?s)pred\.tif.*ref\.tif.*not on the same grid"):
        metrics.evaluate_rasters(p, r)
    p = write_mask(tmp_path / "pred_res.tif", REF, gt=(500000.0, 1.5, 0, 7000000.0, 0, -1.5))
    with pytest.raises(GullySegError, match="not on the same grid"):
        metrics.evaluate_rasters(p, r)


def test_different_crs_is_an_error(tmp_path):
    p = write_mask(tmp_path / "pred.tif", REF, epsg=32607)
    r = write_mask(tmp_path / "ref.tif", REF)
    with pytest.raises(GullySegError, match=r"(?s)pred\.tif.*ref\.tif.*different CRS.*32607.*32606"):
        metrics.evaluate_rasters(p, r)


def test_one_side_not_georeferenced_is_an_error_for_rasters(tmp_path):
    p = write_mask(tmp_path / "pred.png", REF, driver="PNG")
    r = write_mask(tmp_path / "ref.tif", REF)
    with pytest.raises(GullySegError, match="only one of them is georeferenced"):
        metrics.evaluate_rasters(p, r)


def test_probabilities_instead_of_classes_are_refused(tmp_path):
    prob = np.full(REF.shape, 200, np.uint8)
    with pytest.raises(GullySegError, match=r"(?s)PREDICTION.*\[200\].*probability raster"):
        metrics.evaluate_rasters(write_mask(tmp_path / "p.tif", prob), write_mask(tmp_path / "r.tif", REF))
    frac = np.full(REF.shape, 0.7, np.float32)
    with pytest.raises(GullySegError, match="non-integer"):
        metrics.evaluate_rasters(write_mask(tmp_path / "pf.tif", frac), write_mask(tmp_path / "r.tif", REF))


def test_bad_classes_and_ignore_value(tmp_path):
    p = write_mask(tmp_path / "p.tif", REF)
    with pytest.raises(GullySegError, match="CLASSES"):
        metrics.evaluate_rasters(p, p, classes="gully")
    with pytest.raises(GullySegError, match="IGNORE_VALUE 1"):
        metrics.evaluate_rasters(p, p, ignore_value=1)
    with pytest.raises(GullySegError, match="does not exist"):
        metrics.evaluate_rasters(str(tmp_path / "nope.tif"), p)


def test_cancel_stops_and_writes_nothing(tmp_path):
    ref = np.zeros((600, 600), np.uint8)
    p, r = write_mask(tmp_path / "p.tif", ref), write_mask(tmp_path / "r.tif", ref)
    with pytest.raises(Cancelled):
        metrics.evaluate_rasters(p, r, tile_size=64, read_size=128, feedback=RecordingFeedback(cancel_after=2))


def test_three_classes(tmp_path):
    ref = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    pred = np.array([[0, 2, 2], [2, 1, 0]], np.uint8)
    res = metrics.evaluate_rasters(write_mask(tmp_path / "p.tif", pred), write_mask(tmp_path / "r.tif", ref),
                                   classes="background, gully, dam land")
    assert res.matrix.tolist() == [[2, 0, 0], [0, 0, 1], [0, 1, 2]]
    assert res.classes == ["background", "gully", "dam land"] and res.gully_index == 1
    assert res.scores["iou"][2] == pytest.approx(2 / 4)


# --- folders ------------------------------------------------------------------------------

def _folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    write_mask(ref_dir / "t_a.tif", REF)
    write_mask(pred_dir / "t_a.tif", PRED)
    good = np.zeros((4, 4), np.uint8)
    good[1:3, 1:3] = 1
    write_mask(ref_dir / "t_b.tif", good)
    write_mask(pred_dir / "t_b.tif", good)
    empty = np.zeros((4, 4), np.uint8)
    write_mask(ref_dir / "t_c.tif", empty)
    wrong = empty.copy()
    wrong[0, :] = 1
    write_mask(pred_dir / "t_c.png", wrong, driver="PNG")  # predictions saved as PNG, no georeferencing
    write_mask(pred_dir / "t_extra.tif", good)  # a prediction with no reference: not evaluated
    return pred_dir, ref_dir


def test_folders_matched_by_stem(tmp_path):
    pred_dir, ref_dir = _folders(tmp_path)
    fb = RecordingFeedback()
    res = metrics.evaluate_folders(pred_dir, ref_dir, feedback=fb)
    # t_a: HAND_MATRIX; t_b: 12 TN + 4 TP; t_c: 12 TN + 4 FP
    assert res.matrix.tolist() == [[8 + 12 + 12, 2 + 4], [2, 7 + 4]]
    assert [t.name for t in res.tiles] == ["t_a", "t_b", "t_c"]
    rows = res.tile_rows()
    assert [r["tile"] for r in rows] == ["t_c", "t_a", "t_b"]  # worst first
    assert rows[0]["iou_gully"] == 0.0 and rows[-1]["miou"] == 1.0
    assert any("georeferenced" in w for w in fb.warnings)
    assert any("no reference" in i for i in fb.infos)


def test_folders_missing_prediction_is_an_error(tmp_path):
    pred_dir, ref_dir = _folders(tmp_path)
    (pred_dir / "t_b.tif").unlink()
    with pytest.raises(GullySegError, match=r"PREDICTION_FOLDER.*1 of the 3.*t_b"):
        metrics.evaluate_folders(pred_dir, ref_dir)


def test_folders_size_mismatch_names_the_tile(tmp_path):
    pred_dir, ref_dir = _folders(tmp_path)
    write_mask(pred_dir / "t_b.tif", np.zeros((5, 4), np.uint8))
    with pytest.raises(GullySegError, match=r"(?s)t_b\.tif.*t_b\.tif.*differ in size"):
        metrics.evaluate_folders(pred_dir, ref_dir)


# --- reports ------------------------------------------------------------------------------

def test_report_html_json_csv(tmp_path):
    pred_dir, ref_dir = _folders(tmp_path)
    res = metrics.evaluate_folders(pred_dir, ref_dir)
    html_path, json_path, csv_path = metrics.write_report(res, tmp_path / "out" / "report.html")
    text = open(html_path, encoding="utf-8").read()
    assert "Confusion matrix" in text and "Per-class IoU" in text and "worst first" in text
    assert "mean of the per-class IoU over all classes" in text and "gully IoU is given separately" in text
    assert text.index("t_c") < text.index("t_a") < text.index("t_b")
    data = json.load(open(json_path, encoding="utf-8"))
    assert data["confusion_matrix"]["counts"] == res.matrix.tolist()
    assert data["MIOU"] == pytest.approx(res.scores["miou"])
    assert data["tiles"][0]["tile"] == "t_c"
    t_b = [t for t in data["tiles"] if t["tile"] == "t_b"][0]
    assert t_b["miou"] == 1.0
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["tile"] for r in rows] == ["t_c", "t_a", "t_b"]
    assert float(rows[1]["iou_gully"]) == pytest.approx(7 / 11)


def test_report_paths():
    assert metrics.report_paths("/x/r.html") == ("/x/r.html", "/x/r.json", "/x/r.csv")
    assert metrics.report_paths("/x/r") == ("/x/r.html", "/x/r.json", "/x/r.csv")
    assert metrics.report_paths("/x/r.json")[0] == "/x/r.html"
