"""Tile masks from Labelme files and polygons (engine): georeferencing, exact cases, problems, STRICT.

Burn rule: GDAL's pixel-centre rule (ALL_TOUCHED=false) unless a test says otherwise.
"""

import csv
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from osgeo import gdal, ogr

from gullyseg.processing.engine import dataset, labelme, rasterize, tiling
from gullyseg.processing.engine.errors import Cancelled, GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback


def make_dataset(scene, folder, **kwargs):
    """A dataset folder cut from a synthetic scene by the grid-division engine (2x2 tiles of 256)."""
    result = tiling.grid_tiles(str(scene), str(folder), **kwargs)
    return result.index_path


def gully_wkts(scene):
    path = str(scene).replace(".tif", "_gullies.gpkg")
    ds = ogr.Open(path)
    return [f.GetGeometryRef().ExportToWkt() for f in ds.GetLayer(0)]


def read(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(), ds.GetGeoTransform(), ds.GetProjection(), ds


@pytest.fixture
def scene(scene_factory):
    return scene_factory("labels", width=512, height=512, seed=3)


@pytest.fixture
def index(scene, tmp_path):
    return make_dataset(scene, tmp_path / "ds")


def tile_ids(index_path):
    return [r["tile_id"] for r in dataset.read_index(index_path)[0]]


def write_json(folder, tid, shapes, width=256, height=256):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{tid}.json")
    labelme.write_labelme(path, labelme.labelme_document(shapes, f"{tid}.jpg", width, height))
    return path


# --- masks match their tiles ---------------------------------------------------------------

def test_mask_has_tile_grid_and_rectangle_is_exact(index):
    root = os.path.dirname(index)
    tid = tile_ids(index)[3]
    write_json(os.path.join(root, "labelme"), tid,
               [labelme.labelme_shape("gully", [(17, 3), (120, 64)], "rectangle")])
    result = rasterize.rasterize_labels(index)
    assert result["mask_count"] == 1 and result["problem_count"] == 0
    mask, gt, wkt, ds = read(result["masks"][tid])
    tile, tgt, twkt, tds = read(os.path.join(root, "images", f"{tid}.tif"))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (tds.RasterXSize, tds.RasterYSize, 1)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert gt == tgt and wkt == twkt
    assert ds.GetRasterBand(1).GetNoDataValue() == 255
    expected = np.zeros((256, 256), dtype=np.uint8)
    expected[3:64, 17:120] = 1
    assert np.array_equal(mask, expected)
    rec = next(r for r in dataset.read_index(index)[0] if r["tile_id"] == tid)
    assert rec["gully_frac"] == pytest.approx(expected.mean(), abs=1e-6)
    assert rec["mask"] == f"masks/{tid}.tif" and rec["labelme"] == f"labelme/{tid}.json"
    card = dataset.read_card(root)["labels"]
    assert card["ignore_value"] == 255 and card["classes"]["gully"] == 1
    assert card["all_touched"] is False and "pixel centre" in card["burn_rule"]


def test_vector_matches_gdal_rasterize(scene, index, tmp_path, gdal_tool):
    """Polygons on each tile's grid == gdal_rasterize -te ... -ts 256 256 (both rules)."""
    wkts = gully_wkts(scene)
    gpkg = str(scene).replace(".tif", "_gullies.gpkg")
    records, _ = dataset.read_index(index)
    for all_touched in (False, True):
        out = tmp_path / f"masks_{all_touched}"
        result = rasterize.rasterize_labels(index, vector=[(w, "gully") for w in wkts], output_dir=str(out),
                                            all_touched=all_touched)
        assert result["mask_count"] == len(records)
        for rec in records:
            xmin, ymin, xmax, ymax = rec["bounds"]
            ref = tmp_path / f"ref_{rec['tile_id']}_{all_touched}.tif"
            cmd = [gdal_tool("gdal_rasterize"), "-q", "-burn", "1", "-ot", "Byte", "-init", "0",
                   "-te", repr(xmin), repr(ymin), repr(xmax), repr(ymax), "-ts", "256", "256"]
            cmd += ["-at"] if all_touched else []
            subprocess.run(cmd + [gpkg, str(ref)], check=True)
            ours = read(out / f"{rec['tile_id']}.tif")[0]
            assert np.array_equal(ours, read(ref)[0]), rec["tile_id"]


def test_vector_gives_every_kept_tile_a_mask(scene, index):
    ids = tile_ids(index)
    far_away = "POLYGON((0 0,1 0,1 1,0 1,0 0))"
    result = rasterize.rasterize_labels(index, vector=[(far_away, "gully")])
    assert sorted(result["masks"]) == ids  # nothing screened: every tile, all negative samples
    for path in result["masks"].values():
        assert read(path)[0].max() == 0
    dataset.update_index(index, {ids[1]: {"status": "keep"}, ids[2]: {"status": "reject"}})
    result = rasterize.rasterize_labels(index, vector=[(far_away, "gully")], overwrite=True)
    assert sorted(result["masks"]) == [ids[1]]


def test_round_trip_export_then_rasterize_equals_direct(scene, index, tmp_path):
    wkts = gully_wkts(scene)
    exported = rasterize.export_labelme(index, prefill=wkts)
    assert exported["json_count"] == 4 and exported["shape_count"] > 0
    via_labelme = rasterize.rasterize_labels(index, output_dir=str(tmp_path / "a"))
    empty = tmp_path / "no_labelme_files"
    empty.mkdir()  # the direct route must not see the exported Labelme files
    direct = rasterize.rasterize_labels(index, labelme_dir=str(empty), vector=[(w, "gully") for w in wkts],
                                        output_dir=str(tmp_path / "b"))
    total = 0
    for tid, path in direct["masks"].items():
        a, b = read(via_labelme["masks"][tid])[0], read(path)[0]
        assert np.array_equal(a, b), tid
        total += int(b.sum())
    assert total > 1000


def test_holes_and_islands_round_trip(index, tmp_path):
    """A polygon with a hole and an island in the hole survives Labelme (which has no holes): the
    export writes hole-free pieces, all labelled gully."""
    rec = dataset.read_index(index)[0][0]
    x0, y0 = rec["bounds"][0], rec["bounds"][3]

    def ring(a, b, c, d):  # pixel box -> map ring
        pts = [(x0 + a * 0.75, y0 - b * 0.75), (x0 + c * 0.75, y0 - b * 0.75), (x0 + c * 0.75, y0 - d * 0.75),
               (x0 + a * 0.75, y0 - d * 0.75), (x0 + a * 0.75, y0 - b * 0.75)]
        return "(" + ",".join(f"{x!r} {y!r}" for x, y in pts) + ")"

    donut = f"POLYGON({ring(10.3, 10.3, 100.7, 100.7)},{ring(30.2, 30.2, 80.4, 80.4)})"
    island = f"POLYGON({ring(45.1, 45.1, 60.6, 60.6)})"
    multi = f"MULTIPOLYGON(({ring(120.2, 5.2, 130.2, 15.2)}),({ring(140.2, 5.2, 150.2, 15.2)}))"
    wkts = [island, donut, multi]  # the island comes first in the layer: order must not matter
    rasterize.export_labelme(index, prefill=wkts)
    doc = json.load(open(os.path.join(os.path.dirname(index), "labelme", f"{rec['tile_id']}.json")))
    assert {s["label"] for s in doc["shapes"]} == {"gully"} and len(doc["shapes"]) >= 5  # 2+ pieces, island, 2
    a = rasterize.rasterize_labels(index, output_dir=str(tmp_path / "a"))["masks"][rec["tile_id"]]
    expected = np.zeros((256, 256), dtype=np.uint8)
    expected[10:101, 10:101] = 1
    expected[30:80, 30:80] = 0
    expected[45:61, 45:61] = 1
    expected[5:15, 120:130] = 1
    expected[5:15, 140:150] = 1
    assert np.array_equal(read(a)[0], expected)


def test_nodata_pixels_become_ignore(scene_factory, tmp_path):
    scene = scene_factory("edge", width=512, height=512, seed=5, nodata_edge=True)
    index = make_dataset(scene, tmp_path / "ds")
    records = dataset.read_index(index)[0]
    rec = max(records, key=lambda r: r["nodata_frac"])
    assert rec["nodata_frac"] > 0
    root = os.path.dirname(index)
    write_json(os.path.join(root, "labelme"), rec["tile_id"],
               [labelme.labelme_shape("gully", [(0, 0), (256, 256)], "rectangle")])
    path = rasterize.rasterize_labels(index)["masks"][rec["tile_id"]]
    mask = read(path)[0]
    tile = gdal.Open(os.path.join(root, rec["image_tif"]))
    from gullyseg.processing.engine import gdalio
    valid = gdalio.valid_mask(tile, 0, 0, 256, 256)
    assert np.array_equal(mask == 255, ~valid) and np.all(mask[valid] == 1)


# --- problems and STRICT -------------------------------------------------------------------

def _bad_dataset(index):
    """One good file, and one of each problem the issue names."""
    root = os.path.dirname(index)
    lm = os.path.join(root, "labelme")
    ids = tile_ids(index)
    good = write_json(lm, ids[0], [labelme.labelme_shape("gully", [(0, 0), (10, 10)], "rectangle")])
    write_json(lm, ids[1], [labelme.labelme_shape("gully", [(0, 0), (10, 10)], "rectangle")], 300, 256)
    write_json(lm, ids[2], [labelme.labelme_shape("gully", [(1, 1), (5, 5)])])  # polygon with 2 points
    write_json(lm, ids[3], [labelme.labelme_shape("road", [(1, 1), (5, 5), (1, 5)])])  # unknown label
    write_json(lm, "no_such_tile", [labelme.labelme_shape("gully", [(1, 1), (5, 5), (1, 5)])])
    with open(os.path.join(lm, "broken.json"), "w") as handle:
        handle.write('{"shapes": [')
    return root, good


def test_strict_stops_before_writing(index, tmp_path):
    root, _ = _bad_dataset(index)
    before = open(index, "rb").read()
    report = tmp_path / "report.csv"
    with pytest.raises(GullySegError) as err:
        rasterize.rasterize_labels(index, report_path=str(report))
    message = str(err.value)
    assert "nothing was written" in message and "'road'" in message and str(report) in message
    assert not os.path.exists(os.path.join(root, "masks")) or not os.listdir(os.path.join(root, "masks"))
    assert open(index, "rb").read() == before
    rows = list(csv.DictReader(open(report)))
    by_file = {os.path.basename(r["file"]): r for r in rows}
    assert "differs from tile" in by_file[tile_ids(index)[1] + ".json"]["problem"]
    assert "at least 3" in by_file[tile_ids(index)[2] + ".json"]["problem"]
    assert by_file[tile_ids(index)[2] + ".json"]["shape_index"] == "0"
    assert "'road'" in by_file[tile_ids(index)[3] + ".json"]["problem"]
    assert "no tile" in by_file["no_such_tile.json"]["problem"]
    assert "invalid JSON" in by_file["broken.json"]["problem"]
    assert all(r["severity"] == "error" for r in rows)


def test_non_strict_skips_bad_files(index, tmp_path):
    root, good = _bad_dataset(index)
    feedback = RecordingFeedback()
    result = rasterize.rasterize_labels(index, strict=False, report_path=str(tmp_path / "r.json"), feedback=feedback)
    assert sorted(result["masks"]) == [tile_ids(index)[0]]
    assert result["skipped_files"] == 5 and result["error_count"] == 5
    assert len(json.load(open(tmp_path / "r.json"))) == result["problem_count"] == 5
    assert any("'road'" in w and tile_ids(index)[3] in w for w in feedback.warnings)  # labels and files listed
    assert sorted(os.listdir(os.path.join(root, "masks"))) == [tile_ids(index)[0] + ".tif"]


def test_unknown_labels_skip_and_outside_points(index):
    root = os.path.dirname(index)
    tid = tile_ids(index)[0]
    write_json(os.path.join(root, "labelme"), tid, [
        labelme.labelme_shape("road", [(1, 1), (50, 1), (50, 50)]),
        labelme.labelme_shape("gully", [(200, 200), (300, 200), (300, 300), (200, 300)]),  # beyond 256: clipped
    ])
    with pytest.raises(GullySegError, match="road"):
        rasterize.rasterize_labels(index)
    result = rasterize.rasterize_labels(index, unknown_labels="skip")
    assert result["error_count"] == 0 and result["problem_count"] == 2
    mask = read(result["masks"][tid])[0]
    expected = np.zeros((256, 256), dtype=np.uint8)
    expected[200:, 200:] = 1
    assert np.array_equal(mask, expected)


def test_match_by_image_path_and_overwrite(index):
    root = os.path.dirname(index)
    tid = tile_ids(index)[2]
    lm = os.path.join(root, "labelme")
    os.makedirs(lm)
    doc = labelme.labelme_document([labelme.labelme_shape("gully", [(0, 0), (8, 8)], "rectangle")],
                                   f"../images/{tid}.jpg", 256, 256)
    labelme.write_labelme(os.path.join(lm, "annotator_copy.json"), doc)
    result = rasterize.rasterize_labels(index)
    assert list(result["masks"]) == [tid]
    with pytest.raises(GullySegError, match="OVERWRITE"):
        rasterize.rasterize_labels(index)
    assert rasterize.rasterize_labels(index, overwrite=True)["mask_count"] == 1


def test_cancel_leaves_no_partial_mask(scene, index):
    rasterize.export_labelme(index, prefill=gully_wkts(scene))
    root = os.path.dirname(index)
    with pytest.raises(Cancelled):
        rasterize.rasterize_labels(index, feedback=RecordingFeedback(cancel_after=6))
    masks = os.path.join(root, "masks")
    leftovers = [n for n in os.listdir(masks) if "partial" in n] if os.path.isdir(masks) else []
    assert leftovers == []


def test_no_labels_at_all_is_an_error(index):
    with pytest.raises(GullySegError, match="LABELME_DIR"):
        rasterize.rasterize_labels(index)


# --- export --------------------------------------------------------------------------------

def test_export_writes_labelme_files_and_never_overwrites(scene, index):
    root = os.path.dirname(index)
    ids = tile_ids(index)
    dataset.update_index(index, {ids[0]: {"status": "keep"}, ids[3]: {"status": "keep"}})
    first = rasterize.export_labelme(index, prefill=gully_wkts(scene))
    assert first["json_count"] == 2 and first["skipped_count"] == 0
    lm = os.path.join(root, "labelme")
    for tid in (ids[0], ids[3]):
        doc = json.load(open(os.path.join(lm, f"{tid}.json")))
        assert doc["imageData"] is None and (doc["imageWidth"], doc["imageHeight"]) == (256, 256)
        assert doc["version"] and doc["shapes"]
        image = os.path.join(lm, doc["imagePath"])
        assert open(image, "rb").read() == open(os.path.join(root, "images", f"{tid}.jpg"), "rb").read()
    assert open(os.path.join(lm, "labels.txt")).read().split() == ["__ignore__", "_background_", "gully"]
    card = dataset.read_card(root)["labelme"]
    assert card["files"] == 2 and card["label"] == "gully" and card["folder"] == "labelme"
    # an annotator's work is never overwritten
    edited = os.path.join(lm, f"{ids[0]}.json")
    with open(edited, "w") as handle:
        handle.write('{"edited": true}')
    second = rasterize.export_labelme(index, prefill=gully_wkts(scene))
    assert second["json_count"] == 0 and second["skipped_count"] == 2
    assert open(edited).read() == '{"edited": true}'
    # ONLY_KEPT=false: all tiles
    third = rasterize.export_labelme(index, only_kept=False)
    assert third["json_count"] == 2 and third["skipped_count"] == 2


def test_export_writes_jpeg_when_the_tile_has_none(scene, tmp_path):
    index = make_dataset(scene, tmp_path / "ds", fmt=tiling.FORMAT_GTIFF)
    result = rasterize.export_labelme(index)
    assert result["jpeg_count"] == 4
    tid = tile_ids(index)[0]
    doc = json.load(open(os.path.join(result["output_dir"], f"{tid}.json")))
    jpg = gdal.Open(os.path.join(result["output_dir"], doc["imagePath"]))
    assert jpg.GetDriver().ShortName == "JPEG" and (jpg.RasterXSize, jpg.RasterYSize) == (256, 256)


def test_export_rejects_reserved_label(index):
    with pytest.raises(GullySegError, match="LABEL"):
        rasterize.export_labelme(index, label="__ignore__")


def test_copy_of_dataset_is_independent(index, tmp_path):
    """Masks go to OUTPUT_DIR when given; the dataset's masks/ stays empty."""
    root = os.path.dirname(index)
    write_json(os.path.join(root, "labelme"), tile_ids(index)[0],
               [labelme.labelme_shape("gully", [(0, 0), (10, 10)], "rectangle")])
    out = tmp_path / "elsewhere"
    rasterize.rasterize_labels(index, output_dir=str(out))
    assert os.listdir(out) == [tile_ids(index)[0] + ".tif"]
    assert not os.path.isdir(os.path.join(root, "masks"))
    shutil.rmtree(out)


def test_realistic_labelme_files_match_ground_truth(scene, index, tmp_path):
    """Hand-drawn-like Labelme files (the synthetic generator's, simplified 0.6 px) against the scene's
    ground-truth mask cut with gdal_translate -srcwin: the same gullies, up to the outline simplification."""
    from gullyseg.processing.engine import synthetic

    written = synthetic.write_labelme_for_tiles(str(scene), str(scene).replace(".tif", "_gullies.gpkg"),
                                                tile_index=index).written
    result = rasterize.rasterize_labels(index)
    assert result["mask_count"] == len(written) == 4 and result["problem_count"] == 0
    truth_path = str(scene).replace(".tif", "_mask.tif")
    for rec in dataset.read_index(index)[0]:
        cut = str(tmp_path / f"truth_{rec['tile_id']}.tif")
        gdal.Translate(cut, truth_path, srcWin=[rec["x_off"], rec["y_off"], 256, 256])
        truth, ours = read(cut)[0], read(result["masks"][rec["tile_id"]])[0]
        inter = np.count_nonzero((truth == 1) & (ours == 1))
        union = np.count_nonzero((truth == 1) | (ours == 1))
        assert union == 0 or inter / union > 0.9, (rec["tile_id"], inter / union)
        assert rec["gully_frac"] == pytest.approx(float((ours == 1).mean()), abs=1e-6)
