"""Compliance example for gullyseg:augment: 2 variants of each of 16 tiles of a synthetic scene."""

import importlib.util
import json
from pathlib import Path


def _builder():
    path = Path(__file__).resolve().parents[1] / "dataset_builder.py"
    spec = importlib.util.spec_from_file_location("dataset_builder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parameters(tmp_path, scene_factory):
    scene = scene_factory("augment_example", width=256, height=256, seed=4)
    _builder().build_dataset(tmp_path / "dataset", scene, tile_size=64)
    return {"DATASET": str(tmp_path / "dataset"), "COPIES": 2, "SEED": 1}


def check(results, tmp_path):
    assert results["AUGMENTED_COUNT"] == 32  # not split yet: every tile
    manifest = json.loads((tmp_path / "dataset" / "augment.json").read_text())
    assert len(manifest["variants"]) == 32
    for vid, entry in manifest["variants"].items():
        assert vid.startswith(entry["source_tile"] + "__a")
        assert (tmp_path / "dataset" / entry["mask"]).exists()
