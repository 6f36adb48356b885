"""Compliance example for gullyseg:augment: 2 variants of each of 16 tiles of a synthetic scene."""

import json

import dataset_builder


def parameters(tmp_path, scene_factory):
    scene = scene_factory("augment_example", width=256, height=256, seed=4)
    dataset_builder.build_dataset(tmp_path / "dataset", scene, tile_size=64)
    return {"DATASET": str(tmp_path / "dataset"), "COPIES": 2, "SEED": 1}


def check(results, tmp_path):
    assert results["AUGMENTED_COUNT"] == 32  # not split yet: every tile
    manifest = json.loads((tmp_path / "dataset" / "augment.json").read_text())
    assert len(manifest["variants"]) == 32
    for vid, entry in manifest["variants"].items():
        assert vid.startswith(entry["source_tile"] + "__a")
        assert (tmp_path / "dataset" / entry["mask"]).exists()
