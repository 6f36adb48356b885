"""Compliance example for gullyseg:trainmodel: one epoch on a 16-tile dataset of 64 px tiles, split 6:2:2."""

import dataset_builder
import pytest

from gullyseg.processing.engine import split


def parameters(tmp_path, scene_factory):
    pytest.importorskip("torch", reason="PyTorch is not installed (optional: pip install -r requirements-train.txt)")
    pytest.importorskip("segmentation_models_pytorch", reason="segmentation-models-pytorch is not installed")
    scene = scene_factory("train_example", width=256, height=256, seed=4)
    dataset_builder.build_dataset(tmp_path / "dataset", scene, tile_size=64)
    split.split_dataset(str(tmp_path / "dataset"), ratios="6:2:2", seed=42)
    return {"DATASET": str(tmp_path / "dataset"), "EPOCHS": 1, "BATCH_SIZE": 4, "LEARNING_RATE": "0.001",
            "THREADS": 1, "DEVICE": "cpu", "OUTPUT_MODEL": str(tmp_path / "model.onnx")}


def check(results, tmp_path):
    assert results["BEST_EPOCH"] == 1
    assert 0.0 <= results["TEST_MIOU"] <= 1.0
    assert (tmp_path / "model.onnx").exists()
