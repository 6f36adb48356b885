"""Compliance example for gullyseg:gridtiles: a small synthetic scene cut into 256x256 tiles."""

import os


def parameters(tmp_path, scene_factory):
    scene = scene_factory("compliance", width=512, height=400)
    return {"INPUT": str(scene), "TILE_SIZE": 256, "FORMAT": 2, "OUTPUT_DIR": str(tmp_path / "dataset")}


def check(results, tmp_path):
    assert results["TILE_COUNT"] == 4 and results["SKIPPED_COUNT"] == 0  # 2 x 2, bottom row padded
    assert os.path.exists(results["OUTPUT_INDEX"])
    images = os.listdir(os.path.join(results["OUTPUT_DIR"], "images"))
    assert len([f for f in images if f.endswith(".tif")]) == 4
    assert len([f for f in images if f.endswith(".jpg")]) == 4
