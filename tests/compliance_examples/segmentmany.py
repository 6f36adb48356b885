"""gullyseg:segmentmany on two small synthetic scenes, a local Dask cluster of one worker process."""

import csv
from pathlib import Path

import onnx_models
from osgeo import gdal


def parameters(tmp_path, scene):
    model = onnx_models.make_fcn_model(tmp_path / "fcn.onnx", in_channels=3)
    return {
        "INPUTS": [str(scene("many_a", width=300, height=256, seed=4)), str(scene("many_b", width=256, height=200,
                                                                                   seed=5))],
        "MODEL": model,
        "WORKERS": 1,
        "OUTPUT_POLYGONS": True,
        "OUTPUT_DIR": str(tmp_path / "many"),
    }


def check(results, tmp_path):
    out = Path(results["OUTPUT_DIR"])
    assert results["SCENES_DONE"] == 2 and results["SCENES_FAILED"] == 0
    mask = gdal.Open(str(out / "many_a" / "mask.tif"))
    assert (mask.RasterXSize, mask.RasterYSize) == (300, 256)
    assert (out / "mosaic.vrt").exists() and (out / "polygons.gpkg").exists()
    with open(results["SUMMARY"], newline="") as f:
        assert [r["scene"] for r in csv.DictReader(f)] == ["many_a", "many_b"]
