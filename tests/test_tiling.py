"""Engine tests for grid division (processing/engine/tiling.py), checked against GDAL itself.

The reference for every GeoTIFF tile is `gdal_translate -srcwin x_off y_off w h` of the scene
(the command-line tool for one scene, the same GDAL code through gdal.Translate for the others).
"""

import math
import os
import subprocess

import numpy as np
import pytest
import rasters
from osgeo import gdal, ogr, osr

from gullyseg.processing.engine import dataset, gdalio, tiling, windows
from gullyseg.processing.engine.errors import Cancelled, GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback

gdal.UseExceptions()


# --- helpers -------------------------------------------------------------------------------

def _translate(scene, rec, tool=None, tmp_path=None):
    """gdal_translate -srcwin of the tile's window: (array, dataset) of the reference."""
    win = [rec["x_off"], rec["y_off"], rec["width"], rec["height"]]
    if tool:
        out = str(tmp_path / f"ref_{rec['tile_id']}.tif")
        subprocess.run([tool, "-q", "-srcwin", *map(str, win), str(scene), out], check=True,
                       capture_output=True)
        ref = gdal.Open(out)
    else:
        ref = gdal.Translate(f"/vsimem/ref_{rec['tile_id']}.tif", str(scene), srcWin=win)
    return ref


def _assert_same_as_reference(tile_path, ref):
    tile = gdal.Open(str(tile_path))
    assert (tile.RasterXSize, tile.RasterYSize, tile.RasterCount) == (ref.RasterXSize, ref.RasterYSize, ref.RasterCount)
    for b in range(1, ref.RasterCount + 1):
        tb, rb = tile.GetRasterBand(b), ref.GetRasterBand(b)
        assert tb.DataType == rb.DataType
        assert tb.GetNoDataValue() == rb.GetNoDataValue()
    assert tile.GetGeoTransform() == pytest.approx(ref.GetGeoTransform(), abs=1e-9)
    assert tile.GetSpatialRef().IsSame(ref.GetSpatialRef())
    np.testing.assert_array_equal(tile.ReadAsArray(), ref.ReadAsArray())


def _check_all_tiles(scene, result, tool=None, tmp_path=None):
    records, wkt = dataset.read_index(result.index_path)
    assert len(records) == result.tile_count > 0
    for rec in records:
        ref = _translate(scene, rec, tool, tmp_path)
        _assert_same_as_reference(os.path.join(result.output_dir, rec["image_tif"]), ref)
        ref = None
    return records


def _geo_scene(path, epsg=32606, gt=rasters.GT, size=(300, 280), bands=1, dtype=gdal.GDT_Byte, nodata=None,
               mask=False):
    rng = np.random.default_rng(7)
    data = np.stack([rng.integers(1, 200, (size[1], size[0])).astype(np.float64) for _ in range(bands)])
    ds = rasters.write_raster(path, data, gt=gt, epsg=epsg, nodata=nodata, gdal_type=dtype, close=False)
    if mask:
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        m = np.full((size[1], size[0]), 255, np.uint8)
        m[:, : size[0] // 3] = 0
        ds.GetRasterBand(1).GetMaskBand().WriteArray(m)
    ds = None
    return path


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- exactness against GDAL ------------------------------------------------------------------

def test_uint16_bgrn_with_nodata_equals_gdal_translate(scene_factory, tmp_path, gdal_tool):
    scene = scene_factory("bgrn", bands="bgrn", nodata_edge=True, width=600, height=520)
    result = tiling.grid_tiles(scene, tmp_path / "ds", fmt=tiling.FORMAT_GTIFF)
    assert (result.grid_rows, result.grid_cols) == (3, 3)
    records = _check_all_tiles(scene, result, tool=gdal_tool("gdal_translate"), tmp_path=tmp_path)
    # padded edge tiles: the part beyond the scene holds the nodata value, as gdal_translate writes it
    last = [r for r in records if r["x_off"] == 512]
    assert last and all(r["width"] == 256 for r in last)
    tile = gdal.Open(os.path.join(result.output_dir, last[0]["image_tif"]))
    assert tile.GetRasterBand(1).DataType == gdal.GDT_UInt16 and tile.RasterCount == 4
    assert (tile.ReadAsArray()[:, :, 600 - 512:] == tile.GetRasterBand(1).GetNoDataValue()).all()


def test_epsg32606_rgb_scene_equals_gdal_translate(scene_factory, tmp_path):
    scene = scene_factory("rgb", bands="rgb", width=512, height=512)
    result = tiling.grid_tiles(scene, tmp_path / "ds", fmt=tiling.FORMAT_GTIFF)
    records = _check_all_tiles(scene, result)
    assert len(records) == 4
    tile = gdal.Open(os.path.join(result.output_dir, records[0]["image_tif"]))
    assert tile.GetSpatialRef().GetAuthorityCode(None) == "32606"


@pytest.mark.parametrize("name", ["landsat_rgb_utm18n.tif", "hillshade_webmercator.tif"])
def test_real_rasters_equal_gdal_translate(shared_data, tmp_path, name):
    """Third-party rasters: UTM 18N uint8 RGB with nodata 0; Web Mercator tiled hillshade, nodata 255.

    Web Mercator is projected with metre units, so it is accepted (with a warning that its metres
    are not ground metres); every tile must still be exact, including the all-nodata check.
    """
    scene = shared_data / "real" / name
    fb = RecordingFeedback()
    result = tiling.grid_tiles(scene, tmp_path / "ds", fmt=tiling.FORMAT_GTIFF, feedback=fb)
    _check_all_tiles(scene, result)
    ref = gdal.Open(str(scene))
    rows = math.ceil(ref.RasterYSize / 256)
    cols = math.ceil(ref.RasterXSize / 256)
    assert result.tile_count + result.skipped_count == rows * cols
    if "webmercator" in name:
        assert any("Web Mercator" in w for w in fb.warnings)


def test_float32_scene_and_stride_overlap(tmp_path):
    scene = _geo_scene(tmp_path / "f.tif", size=(300, 260), bands=2, dtype=gdal.GDT_Float32, nodata=-9999.0)
    result = tiling.grid_tiles(scene, tmp_path / "ds", tile_size=128, stride=96, fmt=tiling.FORMAT_BOTH)
    # pad: 1 + ceil((300-128)/96) = 3 columns, 1 + ceil((260-128)/96) = 3 rows
    assert (result.grid_rows, result.grid_cols) == (3, 3)
    records = _check_all_tiles(scene, result)
    assert [r["x_off"] for r in records[:3]] == [0, 96, 192]
    jpg = gdal.Open(os.path.join(result.output_dir, records[0]["image_jpg"]))
    assert jpg.RasterCount == 1 and jpg.GetRasterBand(1).DataType == gdal.GDT_Byte


def test_edge_skip_and_shift(tmp_path):
    scene = _geo_scene(tmp_path / "s.tif", size=(300, 280))
    skip = tiling.grid_tiles(scene, tmp_path / "skip", tile_size=128, edge=windows.EDGE_SKIP, fmt=0)
    assert (skip.grid_rows, skip.grid_cols) == (2, 2) and skip.tile_count == 4
    shift = tiling.grid_tiles(scene, tmp_path / "shift", tile_size=128, edge=windows.EDGE_SHIFT, fmt=0)
    records = _check_all_tiles(scene, shift)
    assert sorted({r["x_off"] for r in records}) == [0, 128, 300 - 128]
    assert sorted({r["y_off"] for r in records}) == [0, 128, 280 - 128]
    assert all(r["nodata_frac"] == 0 for r in records)


def test_pad_without_nodata_value_pads_zero_and_masks_padding(tmp_path):
    """No nodata value: padding is 0 (as gdal_translate pads) and an internal mask marks it invalid."""
    scene = _geo_scene(tmp_path / "s.tif", size=(300, 280), bands=3)
    result = tiling.grid_tiles(scene, tmp_path / "ds", fmt=0)
    records = _check_all_tiles(scene, result)
    corner = next(r for r in records if r["row"] == 1 and r["col"] == 1)
    tile = gdal.Open(os.path.join(result.output_dir, corner["image_tif"]))
    assert tile.GetRasterBand(1).GetNoDataValue() is None
    assert tile.GetRasterBand(1).GetMaskFlags() == gdal.GMF_PER_DATASET
    mask = tile.GetRasterBand(1).GetMaskBand().ReadAsArray()
    assert mask[: 280 - 256, : 300 - 256].min() == 255 and mask[280 - 256:, :].max() == 0
    assert corner["nodata_frac"] == pytest.approx(1 - (44 * 24) / 65536.0, abs=1e-6)
    inner = gdal.Open(os.path.join(result.output_dir, records[0]["image_tif"]))
    assert inner.GetRasterBand(1).GetMaskFlags() == gdal.GMF_ALL_VALID


def test_tile_larger_than_scene(tmp_path):
    scene = _geo_scene(tmp_path / "s.tif", size=(200, 150))
    for edge in (windows.EDGE_SKIP, windows.EDGE_SHIFT):
        with pytest.raises(GullySegError, match="TILE_SIZE 256 is larger than the scene"):
            tiling.grid_tiles(scene, tmp_path / "ds", edge=edge)
        assert not (tmp_path / "ds").exists()
    # EDGE=pad: one padded tile (documented choice)
    result = tiling.grid_tiles(scene, tmp_path / "pad", fmt=0)
    assert result.tile_count == 1
    _check_all_tiles(scene, result)


# --- nodata, MAX_NODATA ------------------------------------------------------------------------

def _independent_nodata_frac(scene, rec):
    """Nodata share from gdal_translate's tile: band nodata / mask band, padding counted."""
    ref = gdal.Translate("/vsimem/nd.tif", str(scene), srcWin=[rec["x_off"], rec["y_off"], rec["width"], rec["height"]])
    src = gdal.Open(str(scene))
    valid = np.ones((rec["height"], rec["width"]), bool)
    for b in range(1, ref.RasterCount + 1):
        valid &= ref.GetRasterBand(b).GetMaskBand().ReadAsArray() > 0
    # padding: pixels whose centre lies outside the scene
    inside = np.zeros_like(valid)
    w = min(rec["width"], src.RasterXSize - rec["x_off"])
    h = min(rec["height"], src.RasterYSize - rec["y_off"])
    inside[:h, :w] = True
    ref = None
    gdal.Unlink("/vsimem/nd.tif")
    return 1.0 - np.count_nonzero(valid & inside) / valid.size


def test_nodata_fraction_and_max_nodata(scene_factory, tmp_path):
    scene = scene_factory("bgrn", bands="bgrn", nodata_edge=True, width=600, height=520)
    full = tiling.grid_tiles(scene, tmp_path / "all", max_nodata=1.0, fmt=0)
    records, _ = dataset.read_index(full.index_path)
    assert full.tile_count == 9 and full.skipped_count == 0
    fracs = {}
    for rec in records:
        fracs[rec["tile_id"]] = _independent_nodata_frac(scene, rec)
        assert rec["nodata_frac"] == pytest.approx(fracs[rec["tile_id"]], abs=1e-6)
    limit = 0.3
    some = tiling.grid_tiles(scene, tmp_path / "some", max_nodata=limit, fmt=0)
    expected = {t for t, f in fracs.items() if f <= limit}
    got = {r["tile_id"] for r in dataset.read_index(some.index_path)[0]}
    assert got == expected and some.skipped_count == 9 - len(expected) and 0 < len(expected) < 9
    assert sorted(os.listdir(tmp_path / "some" / "images")) == sorted(t + ".tif" for t in expected)


def test_mask_band_counts_as_nodata(tmp_path):
    scene = _geo_scene(tmp_path / "m.tif", size=(256, 256), bands=3, mask=True)
    result = tiling.grid_tiles(scene, tmp_path / "ds", tile_size=128, fmt=0, max_nodata=1.0)
    records, _ = dataset.read_index(result.index_path)
    for rec in records:
        assert rec["nodata_frac"] == pytest.approx(_independent_nodata_frac(scene, rec), abs=1e-6)
    assert records[0]["nodata_frac"] == pytest.approx((256 // 3) / 128.0)
    _check_all_tiles(scene, result)


# --- JPEG tiles ----------------------------------------------------------------------------

def test_jpeg_tiles_georeferenced_and_stretched_once(scene_factory, tmp_path):
    scene = scene_factory("bgrn", bands="bgrn", nodata_edge=True, width=600, height=520)
    result = tiling.grid_tiles(scene, tmp_path / "ds", fmt=tiling.FORMAT_BOTH)
    records, _ = dataset.read_index(result.index_path)
    assert result.stretch["bands"] == [3, 2, 1]  # BGRN -> red, green, blue
    # independent scene-wide 2-98 % percentiles of the valid pixels of each band
    src = gdal.Open(str(scene))
    data = src.ReadAsArray()
    valid = (data != 0).all(axis=0)
    for k, b in enumerate((3, 2, 1)):
        lo, hi = np.percentile(data[b - 1][valid], (2, 98))
        assert result.stretch["low"][k] == pytest.approx(lo, abs=1)
        assert result.stretch["high"][k] == pytest.approx(hi, abs=1)
    for rec in records:
        tif = gdal.Open(os.path.join(result.output_dir, rec["image_tif"]))
        jpg_path = os.path.join(result.output_dir, rec["image_jpg"])
        assert os.path.exists(jpg_path[:-4] + ".jgw") and os.path.exists(jpg_path + ".aux.xml")
        jpg = gdal.Open(jpg_path)
        assert jpg.GetDriver().ShortName == "JPEG" and jpg.RasterCount == 3
        assert jpg.GetGeoTransform() == pytest.approx(tif.GetGeoTransform(), abs=1e-9)
        assert jpg.GetSpatialRef().IsSame(tif.GetSpatialRef())
        # the pixels follow the scene-wide stretch (JPEG is lossy: compare means)
        arr = tif.ReadAsArray().astype(float)
        ok = (arr != 0).all(axis=0)
        for k, b in enumerate((3, 2, 1)):
            lo, hi = result.stretch["low"][k], result.stretch["high"][k]
            expected = np.clip((arr[b - 1] - lo) * 255.0 / (hi - lo), 0, 255)
            got = jpg.GetRasterBand(k + 1).ReadAsArray().astype(float)
            assert abs(got[ok].mean() - expected[ok].mean()) < 3.0
    # the world file alone (no aux.xml) also places the JPEG: GDAL reads .jgw
    jgw = open(os.path.join(result.output_dir, records[0]["image_jpg"])[:-4] + ".jgw").read().split()
    gt = gdal.Open(os.path.join(result.output_dir, records[0]["image_tif"])).GetGeoTransform()
    assert float(jgw[4]) == pytest.approx(gt[0] + gt[1] / 2) and float(jgw[5]) == pytest.approx(gt[3] + gt[5] / 2)


@pytest.mark.parametrize("tiled", [False, True])
def test_stretch_sampling_of_large_scenes(tmp_path, monkeypatch, tiled):
    """Above STRETCH_FULL_READ_PIXELS a lattice of blocks is read; the percentiles stay close.

    The scene is a left-to-right ramp, so a sample from one side only would be far off.
    """
    path = str(tmp_path / "ramp.tif")
    opts = ["TILED=YES", "BLOCKXSIZE=128", "BLOCKYSIZE=128"] if tiled else []
    ds = gdal.GetDriverByName("GTiff").Create(path, 1024, 1024, 1, gdal.GDT_UInt16, opts)
    ds.SetGeoTransform((420000.0, 0.75, 0.0, 7010000.0, 0.0, -0.75))
    ds.GetRasterBand(1).WriteArray(np.tile(np.arange(1, 1025, dtype=np.uint16) * 10, (1024, 1)))
    ds.GetRasterBand(1).SetNoDataValue(0)
    data = ds.ReadAsArray()
    validity = tiling._Validity(ds, gdalio.raster_info(ds))
    monkeypatch.setattr(tiling, "STRETCH_FULL_READ_PIXELS", 1000)
    reads = []
    original = gdalio.read_window
    monkeypatch.setattr(gdalio, "read_window",
                        lambda d, x, y, w, h, b=None: reads.append(w * h) or original(d, x, y, w, h, b))
    sampled = tiling.compute_stretch(ds, [1], validity)
    assert sum(reads) < data.size / 4  # a sample of the scene's blocks, not the scene
    lo, hi = np.percentile(data, (2, 98))
    tolerance = 0.05 * (data.max() - data.min())  # one-sided samples would be off by most of the range
    assert abs(sampled["low"][0] - lo) < tolerance and abs(sampled["high"][0] - hi) < tolerance


def test_jpeg_bands_parameter(tmp_path):
    scene = _geo_scene(tmp_path / "s.tif", size=(256, 256), bands=4)
    with pytest.raises(GullySegError, match="JPEG_BANDS"):
        tiling.grid_tiles(scene, tmp_path / "bad", jpeg_bands="1,5,2", fmt=tiling.FORMAT_JPEG)
    with pytest.raises(GullySegError, match="JPEG_BANDS"):
        tiling.grid_tiles(scene, tmp_path / "bad", jpeg_bands="1,2", fmt=tiling.FORMAT_JPEG)
    assert not (tmp_path / "bad").exists()
    result = tiling.grid_tiles(scene, tmp_path / "ds", jpeg_bands="4,1,2", fmt=tiling.FORMAT_JPEG)
    jpg = gdal.Open(os.path.join(result.output_dir, "images", "s_r0000_c0000.jpg"))
    src = gdal.Open(str(scene))
    for k, b in enumerate((4, 1, 2)):  # 8-bit: no stretch, JPEG-close to the source band
        diff = jpg.GetRasterBand(k + 1).ReadAsArray().astype(float) - src.GetRasterBand(b).ReadAsArray()
        assert abs(diff.mean()) < 2
    assert not os.listdir(tmp_path / "ds" / "images") == [] and not list((tmp_path / "ds" / "images").glob("*.tif"))


# --- AOI --------------------------------------------------------------------------------------

def test_aoi_keeps_intersecting_tiles(tmp_path):
    scene = _geo_scene(tmp_path / "s.tif", size=(512, 512))
    # a triangle over the upper-left part (scene CRS)
    x0, y0 = 420000.0, 7010000.0
    aoi = f"POLYGON(({x0 + 10} {y0 - 10},{x0 + 250} {y0 - 10},{x0 + 10} {y0 - 250},{x0 + 10} {y0 - 10}))"
    result = tiling.grid_tiles(scene, tmp_path / "ds", tile_size=128, aoi=[aoi], fmt=0)
    got = {(r["row"], r["col"]) for r in dataset.read_index(result.index_path)[0]}
    # independent: OGR intersection area of each tile footprint with the triangle
    expected = set()
    tri = ogr.CreateGeometryFromWkt(aoi)
    for r in range(4):
        for c in range(4):
            xa, ya = x0 + c * 96, y0 - r * 96
            box = ogr.CreateGeometryFromWkt(
                f"POLYGON(({xa} {ya},{xa + 96} {ya},{xa + 96} {ya - 96},{xa} {ya - 96},{xa} {ya}))")
            if tri.Intersection(box).GetArea() > 0:
                expected.add((r, c))
    assert got == expected and result.skipped_aoi == 16 - len(expected)
    outside = "POLYGON((0 0,1 0,1 1,0 0))"
    with pytest.raises(GullySegError, match="AOI"):
        tiling.grid_tiles(scene, tmp_path / "none", aoi=outside)
    assert not (tmp_path / "none").exists()


# --- errors before any file is written -----------------------------------------------------------

@pytest.mark.parametrize("case,match", [
    ("geographic", "geographic CRS"),
    ("rotated", "rotated geotransform"),
    ("no_geotransform", "no geotransform"),
    ("no_crs", "no CRS"),
    ("unreadable", "not a raster|cannot open"),
    ("missing", "does not exist"),
])
def test_bad_scenes_fail_before_writing(tmp_path, case, match):
    path = tmp_path / "scene.tif"
    if case == "geographic":
        _geo_scene(path, epsg=4326, gt=(100.0, 0.0001, 0, 40.0, 0, -0.0001))
    elif case == "rotated":
        _geo_scene(path, gt=(420000.0, 0.75, 0.1, 7010000.0, 0.1, -0.75))
    elif case == "no_geotransform":
        _geo_scene(path, gt=None)
    elif case == "no_crs":
        _geo_scene(path, epsg=None)
    elif case == "unreadable":
        path.write_text("this is not a GeoTIFF")
    out = tmp_path / "ds"
    with pytest.raises(GullySegError, match=match):
        tiling.grid_tiles(path, out)
    assert not out.exists()


def test_bad_parameters_fail_before_writing(tmp_path):
    scene = _geo_scene(tmp_path / "s.tif")
    out = tmp_path / "ds"
    for kwargs, match in [
        (dict(stride=300), "STRIDE 300 is larger than TILE_SIZE 256"),
        (dict(tile_size=0), "TILE_SIZE"),
        (dict(max_nodata=1.5), "MAX_NODATA"),
        (dict(edge=7), "EDGE"),
        (dict(fmt=5), "FORMAT"),
        (dict(output_index=str(tmp_path / "x.shp")), "GeoPackage"),
    ]:
        with pytest.raises(GullySegError, match=match):
            tiling.grid_tiles(scene, out, **kwargs)
        assert not out.exists()


def test_non_empty_folder_and_overwrite(tmp_path):
    scene = _geo_scene(tmp_path / "s.tif", size=(300, 280))
    out = tmp_path / "ds"
    tiling.grid_tiles(scene, out, tile_size=128, fmt=2)
    (out / "labelme").mkdir()
    (out / "labelme" / "s_r0000_c0000.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "index.html").write_text("mine: shares the index's stem")
    (out / "images" / "readme.txt").write_text("mine too")
    before = _files(out)
    with pytest.raises(GullySegError, match="not empty.*OVERWRITE"):
        tiling.grid_tiles(scene, out, fmt=0)
    assert _files(out) == before
    # overwrite: the old tiles, index and card are replaced; the user's files are kept
    fb = RecordingFeedback()
    result = tiling.grid_tiles(scene, out, tile_size=256, fmt=0, overwrite=True, feedback=fb)
    after = _files(out)
    assert "notes.txt" in after and "images/readme.txt" in after and "labelme/s_r0000_c0000.json" in after
    assert "index.html" in after
    assert not [f for f in after if f.endswith((".jpg", ".jgw"))]
    tifs = sorted(f for f in after if f.endswith(".tif"))
    assert tifs == sorted(r["image_tif"] for r in dataset.read_index(result.index_path)[0])
    assert len(tifs) == 4
    assert any("labelme/" in w for w in fb.warnings)
    assert dataset.read_card(out)["tiling"]["tile_size"] == 256


def test_existing_index_elsewhere_is_not_overwritten(tmp_path):
    scene = _geo_scene(tmp_path / "s.tif")
    index = tmp_path / "my_index.gpkg"
    index.write_bytes(b"x")
    with pytest.raises(GullySegError, match="OUTPUT_INDEX"):
        tiling.grid_tiles(scene, tmp_path / "ds", output_index=str(index))
    assert not (tmp_path / "ds").exists() and index.read_bytes() == b"x"


# --- index, card, ids --------------------------------------------------------------------------

def test_index_card_and_ids(tmp_path):
    scene = _geo_scene(tmp_path / "my scene.v2.tif", size=(300, 280), bands=3, nodata=0)
    result = tiling.grid_tiles(scene, tmp_path / "ds", tile_size=128, stride=128, fmt=2)
    records, wkt = dataset.read_index(result.index_path)
    assert result.index_path == str(tmp_path / "ds" / "index.gpkg")
    ids = [r["tile_id"] for r in records]
    assert ids[0] == "my_scene_v2_r0000_c0000" and ids == sorted(ids)
    assert ids == [dataset.tile_id("my_scene_v2", r["row"], r["col"]) for r in records]
    assert set(dataset.INDEX_FIELDS) <= set(records[0])
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    assert srs.GetAuthorityCode(None) == "32606"
    for rec in records:
        assert rec["status"] == "unscreened" and rec["split"] == ""
        tif = gdal.Open(os.path.join(result.output_dir, rec["image_tif"]))
        gt = tif.GetGeoTransform()
        expected = (gt[0], gt[3] + gt[5] * tif.RasterYSize, gt[0] + gt[1] * tif.RasterXSize, gt[3])
        assert rec["bounds"] == pytest.approx(expected)
        assert rec["image_jpg"] == f"images/{rec['tile_id']}.jpg"
    card = dataset.read_card(tmp_path / "ds")
    assert card["source"]["scene"] == str(scene) and card["source"]["pixel_size"] == [0.75, 0.75]
    assert card["source"]["crs"].startswith("EPSG:32606")
    t = card["tiling"]
    assert (t["tile_size"], t["stride"], t["edge"], t["formats"]) == (128, 128, "pad", ["tif", "jpg"])
    assert t["tile_count"] == len(records) and card["counts"]["tiles"] == len(records)
    assert t["stretch"]["method"] == "none"  # 8-bit


# --- streaming, progress, cancel ------------------------------------------------------------------

def test_reads_strips_not_the_scene(tmp_path, monkeypatch):
    scene = _geo_scene(tmp_path / "s.tif", size=(600, 700), bands=2, dtype=gdal.GDT_UInt16, nodata=0)
    reads = []
    original = gdalio.read_window

    def spy(ds, x, y, w, h, bands=None):
        reads.append((x, y, w, h))
        return original(ds, x, y, w, h, bands)

    monkeypatch.setattr(gdalio, "read_window", spy)
    fb = RecordingFeedback()
    result = tiling.grid_tiles(scene, tmp_path / "ds", fmt=0, feedback=fb)
    assert result.tile_count == 9
    assert max(h for _, _, _, h in reads) <= 256  # one strip of tile rows at a time
    assert len(reads) == 3
    assert fb.percents == sorted(fb.percents) and fb.percents[-1] == 100


def test_cancel_leaves_no_tile_and_no_index(tmp_path, monkeypatch):
    scene = _geo_scene(tmp_path / "s.tif", size=(600, 600), bands=2, dtype=gdal.GDT_UInt16, nodata=0)
    out = tmp_path / "ds"
    written = []
    original = tiling._write_gtiff

    def spy(path, *args):
        original(path, *args)
        written.append(path)

    monkeypatch.setattr(tiling, "_write_gtiff", spy)
    fb = RecordingFeedback(cancel_after=3)  # cancelled after three rows of tiles
    with pytest.raises(Cancelled):
        tiling.grid_tiles(scene, out, tile_size=100, fmt=0, feedback=fb)
    assert len(written) >= 6  # tiles had been written (the writer threads may have dropped queued ones) ...
    assert not out.exists() or _files(out) == []  # ... and were removed, no partial file, no index
    # the same run, not cancelled, then works in the same folder
    assert tiling.grid_tiles(scene, out, tile_size=100, fmt=0).tile_count == 36
