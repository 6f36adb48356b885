"""gullyseg:setmodelmetadata writes Deepness/GullySeg keys into a copy of a small model."""

import json

import onnx_models


def parameters(tmp_path, scene):
    model = onnx_models.make_fcn_model(tmp_path / "fcn.onnx", in_channels=3)
    return {
        "MODEL": model,
        "CLASS_NAMES": "gully",
        "RESOLUTION": 75,
        "THRESHOLD": 0.4,
        "INPUT_MAX": 255,
        "OUTPUT_MODEL": str(tmp_path / "fcn_meta.onnx"),
    }


def check(results, tmp_path):
    meta = onnx_models.read_metadata(results["OUTPUT_MODEL"])  # read back with the onnx package
    assert json.loads(meta["resolution"]) == 75
    assert json.loads(meta["seg_thresh"]) == 0.4
    assert json.loads(meta["class_names"]) == {"0": "gully"}
    assert json.loads(meta["gullyseg"]) == {"input_max": 255}
    assert json.loads(meta["model_type"]) == "Segmentor"
    assert not onnx_models.read_metadata(tmp_path / "fcn.onnx")  # the source model is untouched
