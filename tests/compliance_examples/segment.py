"""gullyseg:segment on a small synthetic scene with a small fully convolutional model."""

from pathlib import Path

import onnx_models
from osgeo import gdal


def parameters(tmp_path, scene):
    model = onnx_models.make_fcn_model(tmp_path / "fcn.onnx", in_channels=3, metadata={"class_names": {"0": "gully"}})
    return {
        "INPUT": str(scene("segment_compliance", width=512, height=384, seed=3)),
        "MODEL": model,
        "BATCH_SIZE": 4,
        "OUTPUT_PROBABILITY": str(tmp_path / "prob.tif"),
        "OUTPUT_MASK": str(tmp_path / "mask.tif"),
        "OUTPUT_POLYGONS": str(tmp_path / "gullies.gpkg"),
    }


def check(results, tmp_path):
    prob = gdal.Open(results["OUTPUT_PROBABILITY"])
    assert (prob.RasterXSize, prob.RasterYSize) == (512, 384)
    assert prob.GetRasterBand(1).GetNoDataValue() == 255
    assert results["PIXELS_PROCESSED"] > 0
    assert results["PROVIDER"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert Path(results["OUTPUT_POLYGONS"]).exists()
