"""gullyseg:splitdataset: leak-free groups, ratios, seeds, stratification, lists/folders/manifest, card.

Datasets are built from a synthetic scene by the grid step, with masks cut from the scene's
ground truth by GDAL's translate (tests/dataset_builder.py). Expectations are computed here
from the files (list files, index rows/cols, masks), not taken from the engine's own numbers.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import dataset_builder as builder
import numpy as np
import pytest
from osgeo import gdal

from gullyseg.processing.engine import augment, dataset, split
from gullyseg.processing.engine.errors import GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def base_dataset(scene_factory, tmp_path_factory):
    """64 tiles of 64x64 pixels (8 x 8 grid), GeoTIFF + JPEG, with masks; copy before changing it."""
    scene = scene_factory("splitscene", width=512, height=512, seed=7)
    root = tmp_path_factory.mktemp("split_base") / "ds"
    builder.build_dataset(root, scene, tile_size=64)
    return root


@pytest.fixture
def ds(base_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(base_dataset, root)
    return root


def read_lists(root):
    out = {}
    for name in SPLITS:
        text = (Path(root) / f"{name}.txt").read_text(encoding="utf-8")
        out[name] = [line for line in text.split("\n") if line]
    return out


def source_of(sample_id):
    return sample_id.split("__a")[0]


def index_rows(root):
    records, _ = dataset.read_index(str(Path(root) / "index.gpkg"))
    return {r["tile_id"]: r for r in records}


def assert_no_leak(root, block=None):
    """Every source tile (and block) appears in exactly one list, with all its samples."""
    lists = read_lists(root)
    where = {}
    rows = index_rows(root)
    for name, ids in lists.items():
        for sid in ids:
            tid = source_of(sid)
            key = tid if block is None else (rows[tid]["row"] // block, rows[tid]["col"] // block)
            where.setdefault(key, set()).add(name)
    leaks = {k: v for k, v in where.items() if len(v) > 1}
    assert not leaks, f"groups in two splits: {leaks}"
    return lists


def test_no_tile_in_two_splits_by_tile(ds):
    split.split_dataset(str(ds), materialize=False)
    lists = assert_no_leak(ds)
    assert sorted(sum(lists.values(), [])) == sorted(index_rows(ds))  # every tile exactly once


def test_no_block_in_two_splits(ds):
    split.split_dataset(str(ds), strategy=split.STRATEGY_BLOCK, block_size=2, materialize=False)
    assert_no_leak(ds, block=2)
    # the index agrees with the lists
    rows = index_rows(ds)
    for name, ids in read_lists(ds).items():
        assert all(rows[i]["split"] == name for i in ids)


def test_published_order_augment_then_split_does_not_leak(ds):
    fb = RecordingFeedback()
    augment.augment_dataset(str(ds), copies=4, feedback=fb)  # no split yet: all tiles, with a warning
    assert any("not split yet" in w for w in fb.warnings)
    split.split_dataset(str(ds), materialize=True)
    lists = assert_no_leak(ds)
    assert sum(len(v) for v in lists.values()) == 64 * 5  # x5 in total, as published
    # the materialised folders agree with the lists, variants included
    for name, ids in lists.items():
        files = {p.stem for p in (ds / name / "masks").glob("*.tif")}
        assert files == set(ids)
    # blocks too, after augmenting everything
    split.split_dataset(str(ds), strategy=split.STRATEGY_BLOCK, block_size=3, seed=9, materialize=True)
    assert_no_leak(ds, block=3)


@pytest.mark.parametrize("ratios", ["6:2:2", "0.7,0.15,0.15", "1:0:0", "1 1 1", "0:1:3"])
def test_split_sizes_within_one_group_of_ratios(ds, ratios):
    split.split_dataset(str(ds), ratios=ratios, materialize=False)
    values = np.array([float(v) for v in ratios.replace(":", " ").replace(",", " ").split()])
    wanted = values / values.sum() * 64
    lists = read_lists(ds)
    for k, name in enumerate(SPLITS):
        assert abs(len(lists[name]) - wanted[k]) <= 1, (name, len(lists[name]), wanted[k])
        if values[k] == 0:
            assert lists[name] == []


def test_block_split_sizes_within_one_block(ds):
    split.split_dataset(str(ds), strategy=split.STRATEGY_BLOCK, block_size=2, materialize=False, stratify=False)
    lists = read_lists(ds)
    for k, name in enumerate(SPLITS):
        assert abs(len(lists[name]) - (0.6, 0.2, 0.2)[k] * 64) <= 4  # a block is 2 x 2 tiles


def test_same_seed_same_split_other_seed_different(ds, tmp_path):
    split.split_dataset(str(ds), seed=3, materialize=False)
    first = read_lists(ds)
    card1 = (ds / "dataset.json").read_bytes()
    manifest1 = (ds / "split.json").read_bytes()
    split.split_dataset(str(ds), seed=3, materialize=False)
    assert read_lists(ds) == first
    assert (ds / "dataset.json").read_bytes() == card1  # deterministic card
    assert (ds / "split.json").read_bytes() == manifest1
    split.split_dataset(str(ds), seed=4, materialize=False)
    assert read_lists(ds) != first


def _share(root, ids):
    gully = labelled = 0
    for tid in ids:
        m = gdal.Open(str(Path(root) / "masks" / f"{tid}.tif")).ReadAsArray()
        gully += int((m == 1).sum())
        labelled += int((m != 255).sum())
    return gully / labelled


def test_stratification_balances_gully_share(ds):
    """Over several seeds, the spread of the gully pixel share across splits is clearly smaller."""
    spreads = {True: [], False: []}
    for stratify in (True, False):
        for seed in range(8):
            split.split_dataset(str(ds), seed=seed, stratify=stratify, materialize=False)
            lists = read_lists(ds)
            shares = [_share(ds, lists[name]) for name in SPLITS]
            spreads[stratify].append(max(shares) - min(shares))
    assert np.mean(spreads[True]) < 0.5 * np.mean(spreads[False]), spreads


def test_allocation_stratifies_many_groups():
    """Engine allocation on 300 groups with a skewed gully share: per-bin proportional, spread small."""
    rng = np.random.default_rng(1)
    shares = {f"g{i:03d}": (0.0 if rng.random() < 0.3 else float(rng.beta(0.7, 4))) for i in range(300)}
    weights = dict.fromkeys(shares, 1)
    spread = {}
    for stratify in (True, False):
        values = []
        for seed in range(10):
            assigned, _ = split.allocate(list(shares), weights, shares, (0.6, 0.2, 0.2), seed, stratify)
            means = [np.mean([shares[g] for g in assigned if assigned[g] == s]) for s in SPLITS]
            values.append(max(means) - min(means))
        spread[stratify] = np.mean(values)
    assert spread[True] < 0.5 * spread[False]


def test_hard_links_used(ds):
    result = split.split_dataset(str(ds), materialize=True)
    assert result["links"] > 0 and result["copies"] == 0
    for name, ids in read_lists(ds).items():
        for sid in ids:
            for ext, sub in (("tif", "images"), ("jpg", "images"), ("tif", "masks")):
                dst = ds / name / sub / f"{sid}.{ext}"
                src = ds / sub / f"{sid}.{ext}"
                assert os.stat(dst).st_ino == os.stat(src).st_ino
        # originals keep their georeferencing side files (JPEG world file)
        if ids:
            assert (ds / name / "images" / f"{ids[0]}.jgw").exists()


def test_copies_when_links_refused(ds, monkeypatch):
    def refuse(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(split.os, "link", refuse)
    result = split.split_dataset(str(ds), materialize=True)
    assert result["links"] == 0 and result["copies"] > 0
    sid = read_lists(ds)["train"][0]
    dst, src = ds / "train" / "masks" / f"{sid}.tif", ds / "masks" / f"{sid}.tif"
    assert os.stat(dst).st_ino != os.stat(src).st_ino and dst.read_bytes() == src.read_bytes()


def test_rerun_replaces_materialisation_cleanly(ds):
    split.split_dataset(str(ds), seed=1, materialize=True)
    foreign = ds / "train" / "images" / "my_notes.txt"
    foreign.write_text("mine")
    split.split_dataset(str(ds), seed=2, materialize=True)
    lists = read_lists(ds)
    for name in SPLITS:
        stems = {p.name.split(".")[0] for p in (ds / name / "masks").iterdir()}
        assert stems == set(lists[name])
        image_stems = {p.name.split(".")[0] for p in (ds / name / "images").iterdir() if p.name != "my_notes.txt"}
        assert image_stems == set(lists[name])
    assert foreign.read_text() == "mine"  # not ours: untouched
    # MATERIALIZE off removes our folders' files, and only them
    split.split_dataset(str(ds), seed=2, materialize=False)
    assert not (ds / "val").exists() and not (ds / "test").exists()
    assert sorted(p.name for p in (ds / "train").rglob("*") if p.is_file()) == ["my_notes.txt"]


def test_foreign_file_in_the_way_is_refused(ds):
    split.split_dataset(str(ds), seed=1, materialize=False)
    lists = read_lists(ds)
    target = ds / "val" / "masks" / f"{lists['val'][0]}.tif"
    target.parent.mkdir(parents=True)
    target.write_text("user file")
    with pytest.raises(GullySegError, match="did not write"):
        split.split_dataset(str(ds), seed=1, materialize=True)
    assert target.read_text() == "user file"
    split.split_dataset(str(ds), seed=1, materialize=True, overwrite=True)
    assert target.read_bytes() == (ds / "masks" / target.name).read_bytes()


def test_missing_masks_are_refused(base_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(base_dataset, root)
    rows = index_rows(root)
    ids = sorted(rows)
    kept = set(ids[:40])
    dataset.update_index(str(root / "index.gpkg"),
                         {t: {"status": "keep" if t in kept else "reject", "mask": ""} for t in ids})
    missing = ids[5:30]  # 25 kept tiles without a mask
    for tid in missing + ids[50:]:  # masks of rejected tiles do not matter
        (root / "masks" / f"{tid}.tif").unlink()
    with pytest.raises(GullySegError) as err:
        split.split_dataset(str(root))
    message = str(err.value)
    assert "25 of 40 kept tiles have no mask" in message
    assert missing[0] in message and missing[19] in message and missing[20] not in message
    assert "and 5 more" in message
    assert not (root / "train.txt").exists() and not (root / "split.json").exists()
    assert all((r["split"] or "") == "" for r in index_rows(root).values())
    # masks found by the masks/<tile_id>.tif convention when the index has no mask field value
    for tid in missing:
        shutil.copy(base_dataset / "masks" / f"{tid}.tif", root / "masks" / f"{tid}.tif")
    result = split.split_dataset(str(root), materialize=False)
    assert sum(result["tiles"].values()) == 40
    assert set(sum(read_lists(root).values(), [])) == kept  # only kept tiles are split
    assert all((index_rows(root)[t]["split"] or "") == "" for t in ids if t not in kept)


@pytest.mark.parametrize("ratios", ["6:2", "a:b:c", "-1:1:1", "0:0:0", "1:2:3:4"])
def test_bad_ratios(ds, ratios):
    with pytest.raises(GullySegError, match="RATIOS"):
        split.split_dataset(str(ds), ratios=ratios)
    assert not (ds / "train.txt").exists()


def test_manifest_and_card(ds):
    result = split.split_dataset(str(ds), ratios="0.7,0.15,0.15", seed=11, strategy=1, block_size=2)
    manifest = json.loads((ds / "split.json").read_text())
    lists = read_lists(ds)
    assert set(manifest["samples"]) == set(sum(lists.values(), []))
    for sid, s in manifest["samples"].items():
        assert sid in lists[s["split"]] and s["source_tile"] == sid and not s["variant"]
        assert (ds / s["mask"]).exists() and (ds / s["image_tif"]).exists() and (ds / s["image_jpg"]).exists()
        assert (ds / s["materialized"]["mask"]).exists()
    card = json.loads((ds / "dataset.json").read_text())
    assert card["evaluation"]["convention"].startswith("Confusion matrix")
    assert "background and gully" in card["evaluation"]["convention"] and card["evaluation"]["ignore_value"] == 255
    sec = card["split"]
    assert sec["seed"] == 11 and sec["strategy"] == 1 and sec["block_size"] == 2 and sec["stratify"] is True
    assert sec["ratios"] == [0.7, 0.15, 0.15] and sec["manifest"] == "split.json"
    for name in SPLITS:
        # per-split counts and gully share recomputed from the masks
        assert card["counts"]["per_split"][name]["samples"] == len(lists[name])
        assert sec["summary"][name]["gully_share"] == pytest.approx(_share(ds, lists[name]), abs=1e-6)
    assert card["counts"]["tiles"] == 64 and card["counts"]["unscreened"] == 64
    assert "tiling" in card and "source" in card  # the grid step's sections are kept
    md = (ds / "dataset.md").read_text()
    assert "## split" in md and "spatial block" in md
    assert result["summary_text"].startswith(f"train: {len(lists['train'])} tiles")


def test_splitdataset_algorithm_processing_run(ds, run_alg):
    results = run_alg("splitdataset", {"DATASET": str(ds), "RATIOS": "6:2:2", "SEED": 5, "MATERIALIZE": False})
    lists = read_lists(ds)
    assert [results["TRAIN_COUNT"], results["VAL_COUNT"], results["TEST_COUNT"]] == [len(lists[n]) for n in SPLITS]
    assert results["TRAIN_TILES"] + results["VAL_TILES"] + results["TEST_TILES"] == 64
    assert "gully pixel share" in results["SUMMARY"] and results["MANIFEST"].endswith("split.json")


def test_splitdataset_algorithm_refuses_missing_masks(ds, run_alg):
    from qgis.core import QgsProcessingException

    (ds / "masks" / "splitscene_r0000_c0003.tif").unlink()
    with pytest.raises(QgsProcessingException, match="splitscene_r0000_c0003"):
        run_alg("splitdataset", {"DATASET": str(ds)})


def test_splitdataset_qgis_process(ds, qgis_process):
    out = qgis_process("gullyseg:splitdataset", {"DATASET": str(ds), "RATIOS": "1:1:2", "SEED": 8,
                                                 "STRATEGY": 1, "BLOCK_SIZE": 2})
    results = out["results"]
    lists = assert_no_leak(ds, block=2)
    assert int(results["TEST_COUNT"]) == len(lists["test"]) and abs(len(lists["test"]) - 32) <= 4
    assert (ds / "test" / "images").is_dir()
