"""Compliance example for gullyseg:evaluate: a synthetic scene's ground truth against a shifted copy."""

import numpy as np
from osgeo import gdal


def parameters(tmp_path, scene_factory):
    scene = scene_factory("evaluate_example", width=512, height=512, seed=3)
    reference = str(scene).replace(".tif", "_mask.tif")
    prediction = str(tmp_path / "prediction.tif")
    src = gdal.Open(reference)
    out = gdal.GetDriverByName("GTiff").CreateCopy(prediction, src)
    out.GetRasterBand(1).WriteArray(np.roll(src.ReadAsArray(), 2, axis=0))
    out = src = None
    return {
        "PREDICTION": prediction,
        "REFERENCE": reference,
        "OUTPUT_REPORT": str(tmp_path / "report.html"),
    }


def check(results, tmp_path):
    assert 0.0 < results["MIOU"] < 1.0 and 0.0 < results["OA"] < 1.0
    assert results["IOU_GULLY"] < results["MIOU"]  # background IoU is higher than the gully's
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.json").exists()
    assert (tmp_path / "report.csv").exists()
