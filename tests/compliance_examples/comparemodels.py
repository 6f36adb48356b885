"""Compliance example for gullyseg:comparemodels: two per-pixel ONNX models on a scene and its ground truth."""

import json

import onnx_models


def parameters(tmp_path, scene_factory):
    scene = scene_factory("compare_example", width=256, height=256, seed=5)
    meta = {"gullyseg": json.dumps({"activation": "none"})}
    a = onnx_models.make_pointwise_model(str(tmp_path / "a.onnx"), weights=(-6.0, -6.0, 0.0), bias=4.0, metadata=meta)
    b = onnx_models.make_pointwise_model(str(tmp_path / "b.onnx"), weights=(6.0, 6.0, 0.0), bias=-4.0, metadata=meta)
    return {"MODELS": [str(a), str(b)], "SCENE": str(scene), "REFERENCE": str(scene).replace(".tif", "_mask.tif"),
            "OUTPUT_TABLE": str(tmp_path / "table.csv")}


def check(results, tmp_path):
    rows = (tmp_path / "table.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("rank,model,architecture")
    assert results["BEST_MODEL"].endswith(".onnx")
