"""gullyseg:augment: recorded, undoable, type- and nodata-safe variants that follow their source's split.

The undo test inverts every recorded transform with its own index formulas (not the engine's
functions) and must give back the original tile's pixels (geometric part) and mask exactly.
"""

import hashlib
import json
import math
import shutil

import dataset_builder as builder
import numpy as np
import pytest
from osgeo import gdal

from gullyseg.processing.engine import augment, dataset, split, tiling
from gullyseg.processing.engine.errors import Cancelled, GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback

ALL = list(augment.TRANSFORMS)


@pytest.fixture(scope="module")
def rgb_base(scene_factory, tmp_path_factory):
    scene = scene_factory("augrgb", width=256, height=256, seed=5)
    root = tmp_path_factory.mktemp("aug_rgb") / "ds"
    builder.build_dataset(root, scene, tile_size=64)  # 16 tiles, .tif + .jpg
    return root


@pytest.fixture(scope="module")
def bgrn_base(scene_factory, tmp_path_factory):
    """4-band uint16 (~10-bit) scene with a nodata footprint edge: corner tiles are partly nodata."""
    scene = scene_factory("augbgrn", width=256, height=256, seed=6, bands="bgrn", nodata_edge=True)
    root = tmp_path_factory.mktemp("aug_bgrn") / "ds"
    builder.build_dataset(root, scene, tile_size=64, fmt=tiling.FORMAT_GTIFF)
    return root


def copy_of(base, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(base, root)
    return root


def read(path):
    ds = gdal.Open(str(path))
    arr = ds.ReadAsArray()
    if arr.ndim == 2:
        arr = arr[None]
    nodata = [ds.GetRasterBand(b + 1).GetNoDataValue() for b in range(ds.RasterCount)]
    return arr, nodata


# --- the test's own inverse transforms: index formulas, A[y, x] = B[f(y, x)] ---------------
def undo(op, b):
    h_b, w_b = b.shape[-2:]
    if op in ("rot90", "rot270", "transpose", "antitranspose"):
        h, w = w_b, h_b  # the original's height and width
    else:
        h, w = h_b, w_b
    y, x = np.indices((h, w))
    src = {
        "hflip": (y, w - 1 - x),
        "vflip": (h - 1 - y, x),
        "rot90": (w - 1 - x, y),        # counter-clockwise: B[i, j] = A[j, W-1-i]
        "rot180": (h - 1 - y, w - 1 - x),
        "rot270": (x, h - 1 - y),       # clockwise: B[i, j] = A[H-1-j, i]
        "transpose": (x, y),
        "antitranspose": (w - 1 - x, h - 1 - y),
    }[op]
    return b[..., src[0], src[1]]


def expected_radiometry(orig, steps, lo, hi, nodata, ext):
    """Independent re-computation of the recorded radiometric steps on the (un-rotated) original."""
    x = orig.astype(np.float64)
    keep = np.zeros(orig.shape, dtype=bool)
    for b in range(orig.shape[0]):
        if nodata[b] is not None:
            keep[b] = orig[b] == nodata[b]
    for step in steps:
        if step["op"] == "brightness":
            x = x * step["factor"]
        elif step["op"] == "contrast":
            for b in range(orig.shape[0]):
                m = x[b][~keep[b]].mean()
                assert step["mean"][ext][b] == pytest.approx(m, abs=1e-4)
                x[b] = step["mean"][ext][b] + step["factor"] * (x[b] - step["mean"][ext][b])
        elif step["op"] == "gamma":
            x = lo + (hi - lo) * np.clip((x - lo) / (hi - lo), 0, 1) ** step["gamma"]
    x = np.rint(np.clip(x, lo, hi))
    x[keep] = orig[keep]
    return x, keep


def check_variants(root, exact_radiometry_ext=("tif",)):
    manifest = json.loads((root / "augment.json").read_text())
    ranges = manifest["settings"]["radiometric_range"]
    assert manifest["variants"]
    for vid, entry in manifest["variants"].items():
        tid = entry["source_tile"]
        assert vid.startswith(tid + "__a")
        geo = [s["op"] for s in entry["transforms"] if s["op"] in augment.GEOMETRIC]
        radio = [s for s in entry["transforms"] if s["op"] in augment.RADIOMETRIC]
        assert len(geo) <= 1
        vmask, _ = read(root / entry["mask"])
        omask, _ = read(root / "masks" / f"{tid}.tif")
        for op in reversed(geo):
            vmask = undo(op, vmask)
        np.testing.assert_array_equal(vmask, omask)  # masks: exact, never interpolated or rescaled
        for ext in ("tif", "jpg"):
            if not entry.get(f"image_{ext}"):
                continue
            vimg, vnodata = read(root / entry[f"image_{ext}"])
            oimg, onodata = read(root / "images" / f"{tid}.{ext}")
            assert vimg.dtype == oimg.dtype and vnodata == onodata
            for op in reversed(geo):
                vimg = undo(op, vimg)
            if not radio:
                if ext == "tif":
                    np.testing.assert_array_equal(vimg, oimg)  # geometric part: exact
                else:  # JPEG is re-encoded: lossy, but the transform is the same
                    assert np.abs(vimg.astype(int) - oimg.astype(int)).mean() < 3
            elif ext in exact_radiometry_ext:
                lo, hi = ranges[ext]
                want, keep = expected_radiometry(oimg, radio, lo, hi, onodata, ext)
                diff = np.abs(vimg.astype(np.float64) - want)
                if ext == "tif":
                    assert diff.max() <= 1  # rounding at .5 only
                    np.testing.assert_array_equal(vimg[keep], oimg[keep])  # nodata stays nodata
                else:  # re-encoded JPEG
                    assert diff.mean() < 3
    return manifest


def test_undo_recorded_transforms_gives_originals(rgb_base, tmp_path):
    root = copy_of(rgb_base, tmp_path)
    augment.augment_dataset(str(root), transforms=augment.GEOMETRIC, copies=7)
    manifest = check_variants(root)
    ops = {e["transforms"][0]["op"] for e in manifest["variants"].values()}
    assert ops == set(augment.GEOMETRIC)
    # 7 copies with 7 geometric transforms: every tile gets each exactly once
    per_tile = {}
    for e in manifest["variants"].values():
        per_tile.setdefault(e["source_tile"], []).append(e["transforms"][0]["op"])
    assert all(sorted(v) == sorted(augment.GEOMETRIC) for v in per_tile.values())


def test_undo_with_radiometric_steps(rgb_base, tmp_path):
    root = copy_of(rgb_base, tmp_path)
    augment.augment_dataset(str(root), transforms=ALL, copies=3, seed=2)
    manifest = check_variants(root, exact_radiometry_ext=("tif", "jpg"))
    for e in manifest["variants"].values():
        assert [s["op"] for s in e["transforms"]][1:] == ["brightness", "contrast", "gamma"]
        f = e["transforms"][1]["factor"]
        assert 0.8 <= f <= 1.2 and 0.8 <= e["transforms"][3]["gamma"] <= 1.25


def test_uint16_four_band_dtype_range_and_nodata(bgrn_base, tmp_path):
    root = copy_of(bgrn_base, tmp_path)
    # the test's own estimate of the 10-bit range from the source tiles
    top = 0
    for tif in (root / "images").glob("*.tif"):
        arr, nodata = read(tif)
        top = max(top, int(arr[arr != nodata[0]].max()))
    bits = max(8, math.ceil(math.log2(top + 1)))
    assert bits == 10, top  # ~10-bit data in uint16
    augment.augment_dataset(str(root), transforms=["rot90", "brightness"], copies=2, brightness=(1.6, 1.7))
    manifest = check_variants(root)
    assert manifest["settings"]["radiometric_range"]["tif"] == [0.0, 1023.0]
    partly_empty = 0
    for entry in manifest["variants"].values():
        arr, nodata = read(root / entry["image_tif"])
        assert arr.dtype == np.uint16 and arr.shape[0] == 4 and nodata == [0.0] * 4
        assert arr.max() <= 1023  # clipped to the bit depth, not wrapped
        orig, _ = read(root / "images" / f"{entry['source_tile']}.tif")
        back = undo(entry["transforms"][0]["op"], arr)
        np.testing.assert_array_equal(back == 0, orig == 0)  # nodata exactly where it was
        partly_empty += bool((orig == 0).any())
    assert partly_empty > 0
    # a darkening that would turn dim valid pixels into the nodata value 0: they stay valid (1)
    augment.augment_dataset(str(root), transforms=["hflip", "brightness"], copies=1, brightness=(0.001, 0.001))
    manifest = json.loads((root / "augment.json").read_text())
    for entry in manifest["variants"].values():
        arr, _ = read(root / entry["image_tif"])
        orig, _ = read(root / "images" / f"{entry['source_tile']}.tif")
        back = undo("hflip", arr)
        assert (back[orig != 0] == 1).all() and (back[orig == 0] == 0).all()


def test_variants_are_not_georeferenced_and_follow_formats(rgb_base, bgrn_base, tmp_path):
    root = copy_of(rgb_base, tmp_path / "a")
    augment.augment_dataset(str(root), copies=2)
    files = sorted((root / "augmented").rglob("*"))
    names = [p.name for p in files if p.is_file()]
    assert names and all(n.endswith((".tif", ".jpg")) for n in names)  # no .jgw/.wld/.aux.xml
    assert sum(n.endswith(".jpg") for n in names) == 16 * 2
    for path in (p for p in files if p.is_file()):
        ds = gdal.Open(str(path))
        assert ds.GetGeoTransform(can_return_null=True) is None
        assert ds.GetProjection() == "" and ds.GetGCPCount() == 0
    # GeoTIFF-only dataset: GeoTIFF-only variants
    root2 = copy_of(bgrn_base, tmp_path / "b")
    augment.augment_dataset(str(root2), copies=1)
    assert not list((root2 / "augmented" / "images").glob("*.jpg"))


def test_deterministic_per_seed_tile_and_copy(rgb_base, tmp_path):
    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((root / "augmented").rglob("*")) if p.is_file()}

    root = copy_of(rgb_base, tmp_path / "a")
    augment.augment_dataset(str(root), transforms=ALL, copies=2, seed=9)
    first, manifest = digest(root), (root / "augment.json").read_bytes()
    augment.augment_dataset(str(root), transforms=ALL, copies=2, seed=9)
    assert digest(root) == first and (root / "augment.json").read_bytes() == manifest
    card = json.loads((root / "dataset.json").read_text())["augmentation"]
    assert card["seed"] == 9 and card["copies"] == 2 and card["variants"] == 32 and card["georeferenced"] is False
    # a variant depends on (seed, tile, copy) only: augmenting the train split alone gives the same files
    other = copy_of(rgb_base, tmp_path / "b")
    split.split_dataset(str(other), materialize=False)
    augment.augment_dataset(str(other), transforms=ALL, copies=2, seed=9)
    theirs = digest(other)
    assert theirs and all(first[k] == v for k, v in theirs.items())
    augment.augment_dataset(str(root), transforms=ALL, copies=2, seed=10)
    assert digest(root) != first


def test_variants_join_their_split_lists_and_folders(rgb_base, tmp_path):
    root = copy_of(rgb_base, tmp_path)
    split.split_dataset(str(root), materialize=True, seed=1)
    before = {n: (root / f"{n}.txt").read_text().split() for n in split.SPLITS}
    result = augment.augment_dataset(str(root))  # default: train only, 4 copies
    assert result["count"] == 4 * len(before["train"])
    after = {n: (root / f"{n}.txt").read_text().split() for n in split.SPLITS}
    assert after["val"] == before["val"] and after["test"] == before["test"]
    assert sorted(after["train"]) == sorted(before["train"] + [f"{t}__a{c:02d}" for t in before["train"]
                                                               for c in range(1, 5)])
    manifest = json.loads((root / "augment.json").read_text())
    smanifest = json.loads((root / "split.json").read_text())
    for vid, entry in manifest["variants"].items():
        assert entry["split"] == "train"
        s = smanifest["samples"][vid]
        assert s["variant"] and s["split"] == "train" and s["source_tile"] == entry["source_tile"]
        linked = root / "train" / "images" / f"{vid}.tif"
        assert linked.stat().st_ino == (root / entry["image_tif"]).stat().st_ino
        assert (root / "train" / "masks" / f"{vid}.tif").exists()
    # a new split: the variants follow their sources, and augment.json's split fields follow
    split.split_dataset(str(root), materialize=True, seed=2)
    manifest = json.loads((root / "augment.json").read_text())
    index = {r["tile_id"]: r["split"] for r in dataset.read_index(str(root / "index.gpkg"))[0]}
    lists = {n: set((root / f"{n}.txt").read_text().split()) for n in split.SPLITS}
    for vid, entry in manifest["variants"].items():
        assert entry["split"] == index[entry["source_tile"]] and vid in lists[entry["split"]]
    # COPIES=0 removes every variant, from the lists too
    augment.augment_dataset(str(root), copies=0)
    assert not (root / "augmented").exists()
    assert all("__a" not in line for n in split.SPLITS for line in (root / f"{n}.txt").read_text().split())


def test_refusals(rgb_base, tmp_path):
    root = copy_of(rgb_base, tmp_path)
    with pytest.raises(GullySegError, match="TRANSFORMS"):
        augment.augment_dataset(str(root), transforms=["hflip", "shear"])
    with pytest.raises(GullySegError, match="BRIGHTNESS"):
        augment.augment_dataset(str(root), brightness=(1.2, 0.8))
    foreign = root / "augmented" / "images" / "augrgb_r0000_c0000__a01.tif"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("user file")
    with pytest.raises(GullySegError, match="did not write"):
        augment.augment_dataset(str(root))
    assert foreign.read_text() == "user file"
    foreign.unlink()
    (root / "masks" / "augrgb_r0001_c0002.tif").unlink()
    with pytest.raises(GullySegError, match="augrgb_r0001_c0002"):
        augment.augment_dataset(str(root))
    assert not (root / "augment.json").exists()


def test_cancel_leaves_previous_state(rgb_base, tmp_path):
    root = copy_of(rgb_base, tmp_path)
    augment.augment_dataset(str(root), copies=1)
    manifest = (root / "augment.json").read_bytes()
    files = sorted(p.name for p in (root / "augmented").rglob("*"))
    with pytest.raises(Cancelled):
        augment.augment_dataset(str(root), copies=3, feedback=RecordingFeedback(cancel_after=4))
    assert (root / "augment.json").read_bytes() == manifest
    assert sorted(p.name for p in (root / "augmented").rglob("*")) == files  # no partial folder left


def test_augment_algorithm_processing_run(rgb_base, tmp_path, run_alg):
    root = copy_of(rgb_base, tmp_path)
    results = run_alg("augment", {"DATASET": str(root), "TRANSFORMS": [0, 1, 7, 9], "COPIES": 2,
                                  "BRIGHTNESS": "0.9,1.1", "GAMMA": "0.9,1.1", "SEED": 3})
    assert results["AUGMENTED_COUNT"] == 32 and results["MANIFEST"].endswith("augment.json")
    manifest = json.loads((root / "augment.json").read_text())
    assert manifest["settings"]["transforms"] == ["hflip", "vflip", "brightness", "gamma"]
    assert manifest["settings"]["brightness"] == [0.9, 1.1]
    assert manifest["settings"]["contrast"] == [0.8, 1.2]  # left empty: the default range
    check_variants(root)


def test_split_then_augment_in_a_model(rgb_base, tmp_path, provider):
    """A graphical model chains splitdataset -> augment through the dataset folder output."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
    )

    from gullyseg import compat

    root = copy_of(rgb_base, tmp_path)
    model = QgsProcessingModelAlgorithm("split_augment", "tests")
    model.addModelParameter(QgsProcessingParameterFile("dataset", "Dataset", behavior=compat.FILE_FOLDER),
                            QgsProcessingModelParameter("dataset"))
    first = QgsProcessingModelChildAlgorithm("gullyseg:splitdataset")
    first.setChildId("split")
    first.addParameterSources("DATASET", [QgsProcessingModelChildParameterSource.fromModelParameter("dataset")])
    first.addParameterSources("RATIOS", [QgsProcessingModelChildParameterSource.fromStaticValue("2:1:1")])
    model.addChildAlgorithm(first)
    second = QgsProcessingModelChildAlgorithm("gullyseg:augment")
    second.setChildId("augment")
    from_split = QgsProcessingModelChildParameterSource.fromChildOutput("split", "OUTPUT_DIR")
    second.addParameterSources("DATASET", [from_split])
    second.addParameterSources("COPIES", [QgsProcessingModelChildParameterSource.fromStaticValue(2)])
    model.addChildAlgorithm(second)
    from qgis import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    processing.run(model, {"dataset": str(root)}, feedback=QgsProcessingFeedback(), context=context)
    train = (root / "train.txt").read_text().split()
    originals = [s for s in train if "__a" not in s]
    assert len(originals) == 8 and len(train) == 8 * 3  # 2:1:1 of 16 tiles, 2 variants each
    assert all((root / "train" / "images" / f"{s}.tif").exists() for s in train)
