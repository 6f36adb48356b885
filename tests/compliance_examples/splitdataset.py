"""Compliance example for gullyseg:splitdataset: a 16-tile dataset from a synthetic scene, split 6:2:2."""

import dataset_builder


def parameters(tmp_path, scene_factory):
    scene = scene_factory("split_example", width=256, height=256, seed=4)
    dataset_builder.build_dataset(tmp_path / "dataset", scene, tile_size=64)
    return {"DATASET": str(tmp_path / "dataset"), "RATIOS": "6:2:2", "SEED": 42}


def check(results, tmp_path):
    assert [results["TRAIN_TILES"], results["VAL_TILES"], results["TEST_TILES"]] in ([10, 3, 3], [9, 4, 3], [9, 3, 4])
    lines = (tmp_path / "dataset" / "train.txt").read_text().split()
    assert len(lines) == results["TRAIN_COUNT"]
    assert all((tmp_path / "dataset" / "train" / "masks" / f"{sid}.tif").exists() for sid in lines)
