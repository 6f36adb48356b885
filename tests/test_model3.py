"""The graphical model resources/models/gullyseg_dataset.model3 (gridtiles -> rasterizelabels ->
splitdataset -> augment): offered by the provider, and it builds a dataset from a small scene."""

import json
from pathlib import Path

import numpy as np
from osgeo import gdal

from gullyseg.metadata import resource_path
from gullyseg.processing.provider import model_files

MODEL_FILE = resource_path("models", "gullyseg_dataset.model3")
ALG_ID = "gullyseg:builddataset"


def test_model_file_is_shipped_and_offered(provider):
    assert MODEL_FILE in model_files()
    alg = provider.algorithm("builddataset")
    assert alg is not None, "the provider does not offer the dataset model"
    assert alg.id() == ALG_ID and alg.group() == "Workflow"
    children = {c.algorithmId() for c in alg.childAlgorithms().values()}
    assert children == {"gullyseg:gridtiles", "gullyseg:rasterizelabels", "gullyseg:splitdataset",
                        "gullyseg:augment"}
    ok, problems = alg.create().validate()  # a fresh instance, as the Toolbox runs it
    assert ok, problems
    assert "grid division" in alg.shortHelpString()


def test_model_builds_a_dataset(run_alg, scene_factory, tmp_path):
    scene = scene_factory("model3scene", width=768, height=512, seed=21)
    gullies = str(scene).replace(".tif", "_gullies.gpkg")
    truth = str(scene).replace(".tif", "_mask.tif")
    out = tmp_path / "dataset"
    res = run_alg(ALG_ID, {"scene": str(scene), "label_polygons": gullies, "ratios": "2:1:1", "seed": 5,
                           "copies": 2, "grid:DATASET": str(out)})
    assert Path(res["grid:DATASET"]) == out
    assert (out / "index.gpkg").exists()  # the index stays in the dataset folder
    # gridtiles: 3 x 2 tiles; rasterizelabels: a mask for every tile (nothing screened)
    masks = sorted((out / "masks").glob("*.tif"))
    assert len(masks) == 6
    ref = gdal.Open(truth)
    for mask_path in masks:
        mask = gdal.Open(str(mask_path))
        gt = mask.GetGeoTransform()
        rgt = ref.GetGeoTransform()
        x_off = round((gt[0] - rgt[0]) / rgt[1])
        y_off = round((gt[3] - rgt[3]) / rgt[5])
        # the scene's own truth mask is the GDAL pixel-centre rasterisation of the same polygons
        expected = ref.ReadAsArray(x_off, y_off, 256, 256)
        got = mask.ReadAsArray()
        labelled = expected != 255
        assert np.array_equal(got[labelled], expected[labelled]), mask_path.name
    # splitdataset: list files with every tile once; augment: 2 variants per train tile
    splits = {name: (out / f"{name}.txt").read_text().split() for name in ("train", "val", "test")}
    originals = [s for names in splits.values() for s in names if "__a" not in s]
    assert sorted(originals) == sorted(p.stem for p in masks)
    train_tiles = [s for s in splits["train"] if "__a" not in s]
    variants = [s for s in splits["train"] if "__a" in s]
    assert len(variants) == 2 * len(train_tiles) > 0
    assert all(v.split("__a")[0] in train_tiles for v in variants)
    assert not any("__a" in s for s in splits["val"] + splits["test"])
    manifest = json.loads((out / "augment.json").read_text())
    assert manifest


def test_model_from_the_command_line(qgis_process, scene_factory, tmp_path):
    """As a user batches it: qgis_process.bin run gullyseg:builddataset -- ... grid:DATASET=<folder>."""
    scene = scene_factory("model3cli", width=512, height=512, seed=22)
    out = tmp_path / "cli_dataset"
    res = qgis_process(ALG_ID, {"scene": str(scene), "label_polygons": str(scene).replace(".tif", "_gullies.gpkg"),
                                "copies": 1, "grid:DATASET": str(out)})
    assert Path(res["results"]["grid:DATASET"]) == out
    assert Path(res["results"]["grid:INDEX"]) == out / "index.gpkg"
    assert len(list((out / "masks").glob("*.tif"))) == 4
    lists = [(out / f"{name}.txt").read_text().split() for name in ("train", "val", "test")]
    assert sum(len([s for s in names if "__a" not in s]) for names in lists) == 4
