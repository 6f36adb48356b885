"""gullyseg:comparemodels: its numbers are gullyseg:evaluate's on gullyseg:segment's predictions.

No PyTorch needed: the models are small ONNX graphs from tests/onnx_models.py.
"""

import csv
import json

import dataset_builder
import onnx_models
import pytest

from gullyseg.processing.engine import split
from gullyseg.processing.engine.errors import GullySegError
from gullyseg.processing.engine.training import compare

KEYS = {"oa": "OA", "miou": "MIOU", "iou_gully": "IOU_GULLY", "precision": "PRECISION", "recall": "RECALL",
        "f1": "F1"}
META = {"gullyseg": json.dumps({"activation": "none"})}


def _models(tmp_path):
    """Two per-pixel models: 'dark is gully' and 'bright is gully' (different scores, a clear ranking)."""
    dark = onnx_models.make_pointwise_model(str(tmp_path / "dark.onnx"), weights=(-6.0, -6.0, 0.0), bias=4.0,
                                            metadata=META)
    bright = onnx_models.make_pointwise_model(str(tmp_path / "bright.onnx"), weights=(6.0, 6.0, 0.0), bias=-4.0,
                                              metadata=META)
    return [str(dark), str(bright)]


def _table(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_scene_numbers_equal_segment_then_evaluate(tmp_path, run_alg, scene_factory):
    scene = scene_factory("compare_scene", width=384, height=384, seed=5)
    reference = str(scene).replace(".tif", "_mask.tif")
    models = _models(tmp_path)
    res = run_alg("comparemodels", {"MODELS": ";".join(models), "SCENE": str(scene), "REFERENCE": reference,
                                    "OUTPUT_TABLE": str(tmp_path / "table.csv"),
                                    "OUTPUT_REPORT": str(tmp_path / "table.html")})
    rows = _table(tmp_path / "table.csv")
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["miou"]) >= float(rows[1]["miou"])
    assert res["BEST_MODEL"] == rows[0]["path"] and res["BEST_MIOU"] == pytest.approx(float(rows[0]["miou"]))
    assert (tmp_path / "table.html").exists()
    for row in rows:
        assert float(row["megapixels_per_s"]) > 0
        mask = tmp_path / f"{row['model']}_mask.tif"
        run_alg("segment", {"INPUT": str(scene), "MODEL": row["path"], "OUTPUT_MASK": str(mask),
                            "OUTPUT_PROBABILITY": str(tmp_path / f"{row['model']}_prob.tif")})
        ev = run_alg("evaluate", {"PREDICTION": str(mask), "REFERENCE": reference})
        for key, out in KEYS.items():
            assert float(row[key]) == pytest.approx(ev[out], abs=1e-6), (row["model"], key)


def test_dataset_test_split_numbers_equal_segment_then_evaluate(tmp_path, run_alg, scene_factory):
    scene = scene_factory("compare_tiles", width=256, height=256, seed=6)
    root = tmp_path / "dataset"
    dataset_builder.build_dataset(root, scene, tile_size=64)
    split.split_dataset(str(root), ratios="6:2:2", seed=2)
    models = _models(tmp_path)
    run_alg("comparemodels", {"MODELS": models, "DATASET": str(root), "OUTPUT_TABLE": str(tmp_path / "t.csv")})
    rows = _table(tmp_path / "t.csv")
    test_ids = (root / "test.txt").read_text().split()
    for row in rows:
        pred = tmp_path / f"pred_{row['model']}"
        pred.mkdir()
        for sid in test_ids:
            run_alg("segment", {"INPUT": str(root / "test" / "images" / f"{sid}.tif"), "MODEL": row["path"],
                                "OUTPUT_MASK": str(pred / f"{sid}.tif"),
                                "OUTPUT_PROBABILITY": str(tmp_path / f"{row['model']}_{sid}_prob.tif")})
        ev = run_alg("evaluate", {"PREDICTION_FOLDER": str(pred), "REFERENCE_FOLDER": str(root / "test" / "masks")})
        for key, out in KEYS.items():
            assert float(row[key]) == pytest.approx(ev[out], abs=1e-6), (row["model"], key)


def test_bad_inputs_write_nothing(tmp_path, scene_factory):
    scene = scene_factory("compare_scene", width=384, height=384, seed=5)
    reference = str(scene).replace(".tif", "_mask.tif")
    models = _models(tmp_path)
    table = tmp_path / "t.csv"
    with pytest.raises(GullySegError, match="does not exist"):
        compare.compare_models([models[0], str(tmp_path / "missing.onnx")], scene=str(scene), reference=reference,
                               output_table=str(table))
    with pytest.raises(GullySegError, match="SCENE and REFERENCE go together"):
        compare.compare_models(models, scene=str(scene), output_table=str(table))
    with pytest.raises(GullySegError, match="either DATASET"):
        compare.compare_models(models, dataset_root=str(tmp_path), scene=str(scene), reference=reference,
                               output_table=str(table))
    with pytest.raises(GullySegError, match="no split"):
        root = tmp_path / "nosplit"
        dataset_builder.build_dataset(root, scene_factory("compare_tiles", width=256, height=256, seed=6),
                                      tile_size=64)
        compare.compare_models(models, dataset_root=str(root), output_table=str(table))
    assert not table.exists()


def test_command_line_models_list(qgis_process, tmp_path, scene_factory):
    """qgis_process with MODELS as one ';'-separated string, as the issue asks."""
    scene = scene_factory("compare_scene", width=384, height=384, seed=5)
    models = _models(tmp_path)
    out = qgis_process("gullyseg:comparemodels", {
        "MODELS": ";".join(models), "SCENE": str(scene), "REFERENCE": str(scene).replace(".tif", "_mask.tif"),
        "OUTPUT_TABLE": str(tmp_path / "cli.csv")})
    rows = _table(tmp_path / "cli.csv")
    assert len(rows) == 2 and out["results"]["BEST_MODEL"] == rows[0]["path"]
