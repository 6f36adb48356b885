"""gullyseg:evaluate through processing.run and qgis_process (the engine is tested in test_metrics.py)."""

import json

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException

from gullyseg.processing.engine import metrics


def _mask_of(scene):
    return str(scene).replace(".tif", "_mask.tif")


@pytest.fixture
def pair(scene_factory, tmp_path):
    """(prediction, reference): the scene's ground truth and a copy with a band of errors."""
    reference = _mask_of(scene_factory("evalalg", width=512, height=512, seed=11, nodata_edge=True))
    prediction = str(tmp_path / "prediction.tif")
    src = gdal.Open(reference)
    ref = src.ReadAsArray()
    pred = ref.copy()
    band = pred[100:140, :]
    band[band != 255] = 1  # a strip of false alarms (and hits)
    pred[300:, 300:][pred[300:, 300:] == 1] = 0  # missed gullies in one corner
    out = gdal.GetDriverByName("GTiff").CreateCopy(prediction, src)
    out.GetRasterBand(1).WriteArray(pred)
    out = src = None
    return prediction, reference, pred, ref


def test_rasters_through_processing(run_alg, pair, tmp_path):
    prediction, reference, pred, ref = pair
    res = run_alg("evaluate", {"PREDICTION": prediction, "REFERENCE": reference,
                               "OUTPUT_REPORT": str(tmp_path / "rep" / "eval.html")})
    valid = ref != 255
    tp = np.sum(valid & (ref == 1) & (pred == 1))
    tn = np.sum(valid & (ref == 0) & (pred == 0))
    fp = np.sum(valid & (ref == 0) & (pred == 1))
    fn = np.sum(valid & (ref == 1) & (pred == 0))
    assert res["OA"] == pytest.approx((tp + tn) / valid.sum())
    assert res["IOU_GULLY"] == pytest.approx(tp / (tp + fp + fn))
    assert res["MIOU"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fn + fp)) / 2)
    assert res["PRECISION"] == pytest.approx(tp / (tp + fp))
    assert res["RECALL"] == pytest.approx(tp / (tp + fn))
    assert res["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert res["PIXELS_EVALUATED"] == valid.sum()
    assert res["IGNORED_PIXELS"] == np.sum(ref == 255) > 0  # nodata edge of the scene
    assert res["TILE_COUNT"] == 4
    report = json.load(open(tmp_path / "rep" / "eval.json", encoding="utf-8"))
    assert report["MIOU"] == pytest.approx(res["MIOU"])
    assert res["OUTPUT_REPORT"].endswith("eval.html")
    html = open(res["OUTPUT_REPORT"], encoding="utf-8").read()
    assert "mean of the per-class IoU" in html


def test_folders_through_processing(run_alg, tmp_path, pair):
    prediction, reference, pred, ref = pair
    pdir, rdir = tmp_path / "p", tmp_path / "r"
    pdir.mkdir()
    rdir.mkdir()
    # cut both into four 256x256 tiles with gdal_translate -srcwin (an independent tiler)
    for r in range(2):
        for c in range(2):
            win = [c * 256, r * 256, 256, 256]
            gdal.Translate(str(pdir / f"t_r{r}_c{c}.tif"), prediction, srcWin=win)
            gdal.Translate(str(rdir / f"t_r{r}_c{c}.tif"), reference, srcWin=win)
    res = run_alg("evaluate", {"PREDICTION_FOLDER": str(pdir), "REFERENCE_FOLDER": str(rdir)})
    whole = metrics.evaluate_rasters(prediction, reference)
    assert res["TILE_COUNT"] == 4
    assert res["MIOU"] == pytest.approx(whole.scores["miou"])
    assert res["OA"] == pytest.approx(whole.scores["oa"])


def test_bad_parameter_combinations(run_alg, pair, tmp_path):
    prediction, reference, _, _ = pair
    with pytest.raises(QgsProcessingException, match="nothing to evaluate"):
        run_alg("evaluate", {})
    with pytest.raises(QgsProcessingException, match="REFERENCE: no raster"):
        run_alg("evaluate", {"PREDICTION": prediction})
    with pytest.raises(QgsProcessingException, match="not both"):
        run_alg("evaluate", {"PREDICTION": prediction, "REFERENCE": reference,
                             "PREDICTION_FOLDER": str(tmp_path), "REFERENCE_FOLDER": str(tmp_path)})


def test_grid_mismatch_through_processing(run_alg, pair, tmp_path):
    prediction, reference, _, _ = pair
    smaller = str(tmp_path / "smaller.tif")
    gdal.Translate(smaller, prediction, srcWin=[0, 0, 500, 512])
    with pytest.raises(QgsProcessingException, match=r"(?s)smaller\.tif.*_mask\.tif.*differ in size"):
        run_alg("evaluate", {"PREDICTION": smaller, "REFERENCE": reference})


def test_command_line(qgis_process, pair, tmp_path):
    prediction, reference, _, _ = pair
    out = qgis_process("gullyseg:evaluate", {"PREDICTION": prediction, "REFERENCE": reference,
                                            "OUTPUT_REPORT": str(tmp_path / "cli.html")})
    results = out["results"]
    engine = metrics.evaluate_rasters(prediction, reference).scores
    assert results["MIOU"] == pytest.approx(engine["miou"])
    assert results["OA"] == pytest.approx(engine["oa"])
    assert (tmp_path / "cli.csv").exists()
