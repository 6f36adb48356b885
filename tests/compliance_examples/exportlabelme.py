"""Compliance example for gullyseg:exportlabelme: a 2x2-tile dataset prefilled with its gully polygons."""

import json
import os

from gullyseg.processing.engine import tiling


def parameters(tmp_path, scene_factory):
    scene = scene_factory("compliance", width=512, height=512)
    index = tiling.grid_tiles(str(scene), str(tmp_path / "dataset")).index_path
    gullies = str(scene).replace(".tif", "_gullies.gpkg")
    return {"TILES": index, "ONLY_KEPT": True, "PREFILL": gullies, "LABEL": "gully"}


def check(results, tmp_path):
    assert results["JSON_COUNT"] == 4 and results["SKIPPED_COUNT"] == 0
    folder = results["OUTPUT_DIR"]
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    assert len(names) == 4
    doc = json.load(open(os.path.join(folder, names[0])))
    assert os.path.exists(os.path.join(folder, doc["imagePath"]))
    assert results["SHAPE_COUNT"] == sum(len(json.load(open(os.path.join(folder, n)))["shapes"]) for n in names) > 0
