"""Synthetic gully scenes (engine.synthetic and gullyseg:syntheticscene).

References are independent of the generator: GDAL's own command-line tools (gdal_rasterize,
gdalinfo), OGR's reading of the GeoPackage, and plain numpy statistics of the written files.
"""

import hashlib
import json
import os
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from gullyseg.processing.engine import synthetic
from gullyseg.processing.engine.errors import Cancelled, GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback


def _read(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray()


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _siblings(scene):
    scene = Path(scene)
    return scene.with_name(scene.stem + "_mask.tif"), scene.with_name(scene.stem + "_gullies.gpkg")


def _gdal_rasterize(gdal_tool, gpkg, like, out):
    """Rasterise the polygons onto the grid of ``like`` with the gdal_rasterize program."""
    ds = gdal.Open(str(like))
    gt = ds.GetGeoTransform()
    w, h = ds.RasterXSize, ds.RasterYSize
    xmin, ymax = gt[0], gt[3]
    xmax, ymin = xmin + w * gt[1], ymax + h * gt[5]
    subprocess.run(
        [gdal_tool("gdal_rasterize"), "-q", "-burn", "1", "-init", "0", "-ot", "Byte", "-l", "gullies",
         "-te", repr(xmin), repr(ymin), repr(xmax), repr(ymax), "-ts", str(w), str(h), str(gpkg), str(out)],
        check=True,
    )
    return _read(out)


# --- georeferencing and format ------------------------------------------------------

def test_georeferencing_and_format(scene_factory, gdal_tool):
    scene = scene_factory("geo", width=600, height=520, seed=3)
    info = json.loads(subprocess.run([gdal_tool("gdalinfo"), "-json", str(scene)], check=True,
                                     capture_output=True, text=True).stdout)
    srs = osr.SpatialReference()
    srs.ImportFromWkt(info["coordinateSystem"]["wkt"])
    assert srs.GetAuthorityName(None) == "EPSG" and srs.GetAuthorityCode(None) == "32606"
    assert info["size"] == [600, 520]
    x0, px, rx, y0, ry, py = info["geoTransform"]
    assert (px, py, rx, ry) == (0.75, -0.75, 0.0, 0.0)  # north-up, 0.75 m
    assert 166000 <= x0 <= 834000 and 0 <= y0 <= 9330000  # a plausible UTM 6N position
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "DEFLATE"
    for band in info["bands"]:
        assert band["block"] == [256, 256] and band["type"] == "Byte" and band["noDataValue"] == 0
    assert [b["colorInterpretation"] for b in info["bands"]] == ["Red", "Green", "Blue"]
    mask_path, gpkg = _siblings(scene)
    mask = gdal.Open(str(mask_path))
    assert mask.GetGeoTransform() == tuple(info["geoTransform"])
    assert mask.GetRasterBand(1).GetNoDataValue() == 255
    assert mask.GetRasterBand(1).DataType == gdal.GDT_Byte
    vds = ogr.Open(str(gpkg))
    layer = vds.GetLayerByName("gullies")
    assert layer is not None and layer.GetFeatureCount() >= 1
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32606"
    assert ogr.GT_Flatten(layer.GetGeomType()) in (ogr.wkbPolygon, ogr.wkbMultiPolygon)
    assert {f.GetField("label") for f in layer} == {"gully"}


def test_options_origin_and_crs(tmp_path):
    out = tmp_path / "s.tif"
    res = synthetic.make_scene(str(out), width=64, height=48, seed=2, origin=(500000.0, 5000000.0), epsg=32633)
    ds = gdal.Open(str(out))
    assert ds.GetGeoTransform() == (500000.0, 0.75, 0.0, 5000000.0, 0.0, -0.75)
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    assert srs.GetAuthorityCode(None) == "32633"
    assert res.mask_path is None and res.gullies_path is None and res.width == 64 and res.height == 48


# --- ground truth: polygons vs mask --------------------------------------------------

@pytest.mark.parametrize("nodata_edge", [False, True])
def test_polygons_rasterise_to_the_mask(scene_factory, gdal_tool, tmp_path, nodata_edge):
    scene = scene_factory("truth", width=700, height=560, seed=4, nodata_edge=nodata_edge)
    mask_path, gpkg = _siblings(scene)
    mask = _read(mask_path)
    burnt = _gdal_rasterize(gdal_tool, gpkg, scene, tmp_path / "burnt.tif")
    inside = mask != 255
    assert inside.any() and (mask[inside] == 1).any()
    assert np.array_equal(burnt[inside], mask[inside])
    assert not burnt[~inside].any()  # the polygons are clipped to the footprint
    assert set(np.unique(mask)) <= {0, 1, 255}


# --- determinism ------------------------------------------------------------------------

def _make(folder, seed, bands="rgb", **kw):
    folder.mkdir(parents=True, exist_ok=True)
    return synthetic.make_scene(str(folder / "s.tif"), width=300, height=280, seed=seed, bands=bands,
                                mask_path=str(folder / "m.tif"), gullies_path=str(folder / "g.gpkg"), **kw)


def _features(gpkg):
    ds = ogr.Open(str(gpkg))
    layer = ds.GetLayer(0)
    return [(f.GetField("label"), f.GetGeometryRef().ExportToWkt()) for f in layer]


@pytest.mark.parametrize("bands", ["rgb", "bgrn"])
def test_same_seed_same_bytes(tmp_path, bands):
    a = _make(tmp_path / "a", 9, bands, nodata_edge=True)
    b = _make(tmp_path / "b", 9, bands, nodata_edge=True)
    for name in ("s.tif", "m.tif", "g.gpkg"):
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name), name
    assert _features(a.gullies_path) == _features(b.gullies_path)
    c = _make(tmp_path / "c", 10, bands, nodata_edge=True)
    assert _sha(c.path) != _sha(a.path) and _sha(c.mask_path) != _sha(a.mask_path)
    assert _features(c.gullies_path) != _features(a.gullies_path)


def test_windows_join_seamlessly(tmp_path):
    """The output does not depend on the window size: every field is a function of absolute coordinates."""
    a = _make(tmp_path / "a", 6, window_size=256)
    b = _make(tmp_path / "b", 6, window_size=512)
    assert a.windows_written > b.windows_written > 0
    assert np.array_equal(_read(a.path), _read(b.path))
    assert np.array_equal(_read(a.mask_path), _read(b.mask_path))


# --- footprint and value ranges -------------------------------------------------------

@pytest.mark.parametrize("bands", ["rgb", "bgrn"])
def test_nodata_footprint(scene_factory, bands):
    scene = scene_factory("edge", width=768, height=640, seed=2, bands=bands, nodata_edge=True)
    image = _read(scene)
    mask = _read(_siblings(scene)[0])
    empty = (image == 0).all(axis=0)
    assert np.array_equal(empty, mask == 255)  # image nodata exactly where the mask says outside
    assert not (image[:, ~empty] == 0).any()  # no valid pixel is 0 in any band
    # the four corner 256x256 tiles are partly empty, the centre one is full
    for y, x in ((0, 0), (0, 512), (384, 0), (384, 512)):
        frac = empty[y:y + 256, x:x + 256].mean()
        assert 0.0 < frac < 1.0, (y, x, frac)
    assert not empty[256:384, 256:512].any()
    ds = gdal.Open(str(scene))
    assert all(ds.GetRasterBand(i + 1).GetNoDataValue() == 0 for i in range(ds.RasterCount))


def test_band_variants(scene_factory):
    rgb = gdal.Open(str(scene_factory("var", bands="rgb", seed=7)))
    assert rgb.RasterCount == 3 and rgb.GetRasterBand(1).DataType == gdal.GDT_Byte
    bgrn_path = scene_factory("var", bands="bgrn", seed=7)
    bgrn = gdal.Open(str(bgrn_path))
    assert bgrn.RasterCount == 4 and bgrn.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert [bgrn.GetRasterBand(i + 1).GetDescription() for i in range(4)] == ["blue", "green", "red", "nir"]
    data = bgrn.ReadAsArray()
    assert data.max() <= 1023 and data.min() >= 1  # about 10-bit, no nodata without an edge
    assert data.max() > 255  # really more than 8 bits
    # vegetation: NIR well above red where the NDVI is high, and NDVI varies (not a flat scene)
    red, nir = data[2].astype(float), data[3].astype(float)
    ndvi = (nir - red) / (nir + red)
    assert np.percentile(ndvi, 95) > 0.3 and np.percentile(ndvi, 5) < 0.15
    # the two variants show the same landscape: red channels correlate strongly
    r8 = rgb.GetRasterBand(1).ReadAsArray().astype(float)
    assert np.corrcoef(r8.ravel(), red.ravel())[0, 1] > 0.9


# --- content ------------------------------------------------------------------------------

def test_gully_share_is_realistic(tmp_path):
    shares = []
    for seed in (1, 2, 3, 4):
        res = _make(tmp_path / str(seed), seed)
        mask = _read(res.mask_path)
        share = (mask == 1).sum() / (mask != 255).sum()
        assert share == pytest.approx(res.gully_fraction)
        shares.append(share)
    big = synthetic.make_scene(str(tmp_path / "big.tif"), width=1536, height=1536, seed=1,
                               mask_path=str(tmp_path / "big_mask.tif"))
    shares.append(big.gully_fraction)
    assert all(0.02 <= s <= 0.45 for s in shares), shares
    assert big.gully_count >= 3 and big.dam_count >= 1


def _best_threshold_iou(values, truth):
    """Best IoU of 'value >= t' or 'value <= t' with the truth over 99 thresholds."""
    best = 0.0
    for t in np.percentile(values, np.arange(1, 100)):
        for pred in (values >= t, values <= t):
            inter = np.count_nonzero(pred & truth)
            union = np.count_nonzero(pred | truth)
            best = max(best, inter / union if union else 0.0)
    return best


@pytest.mark.parametrize("bands", ["rgb", "bgrn"])
def test_colour_alone_does_not_separate_gullies(scene_factory, bands):
    scene = scene_factory("colour", width=1024, height=1024, seed=3, bands=bands)
    image = _read(scene).astype(np.float32)
    mask = _read(_siblings(scene)[0])
    valid = mask != 255
    truth = mask[valid] == 1
    assert 0.02 < truth.mean() < 0.5
    candidates = [image[i][valid] for i in range(image.shape[0])] + [image.mean(axis=0)[valid]]
    scores = [_best_threshold_iou(v, truth) for v in candidates]
    assert max(scores) < 0.5, scores


# --- streaming, progress, cancel, errors ---------------------------------------------------

def test_memory_does_not_grow_with_scene_height(tmp_path):
    peaks = []
    for height in (512, 2048):
        tracemalloc.start()
        res = synthetic.make_scene(str(tmp_path / f"h{height}.tif"), width=512, height=height, seed=1,
                                   mask_path=str(tmp_path / f"h{height}_m.tif"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert res.windows_written == height // 512
    # a 512x2048 RGB scene is 3 MB of pixels (12 MB as float32 per band): the peak stays that of one window
    assert peaks[1] < peaks[0] * 1.25 + 2_000_000, peaks


def test_progress_and_cancel_leave_nothing(tmp_path):
    fb = RecordingFeedback()
    _make(tmp_path / "ok", 1, feedback=fb)
    assert fb.percents and fb.percents[-1] == 100 and fb.percents == sorted(fb.percents)
    assert any("gully share" in m for m in fb.infos)
    folder = tmp_path / "cancel"
    with pytest.raises(Cancelled):
        synthetic.make_scene(str(folder / "s.tif"), width=1024, height=1024, seed=1,
                             mask_path=str(folder / "m.tif"), gullies_path=str(folder / "g.gpkg"),
                             feedback=RecordingFeedback(cancel_after=12))
    assert not folder.exists() or not list(folder.iterdir())


def test_bad_input_is_refused_before_writing(tmp_path):
    out = tmp_path / "s.tif"
    with pytest.raises(GullySegError, match="WIDTH"):
        synthetic.make_scene(str(out), width=0)
    with pytest.raises(GullySegError, match="BANDS"):
        synthetic.make_scene(str(out), bands="cmyk")
    with pytest.raises(GullySegError, match="geographic"):
        synthetic.make_scene(str(out), epsg=4326)
    assert not out.exists()
    out.write_bytes(b"user data")
    with pytest.raises(GullySegError, match="already exists"):
        synthetic.make_scene(str(out), width=64, height=64)
    mask = tmp_path / "m.tif"
    mask.write_bytes(b"user mask")
    with pytest.raises(GullySegError, match="OUTPUT_MASK"):
        synthetic.make_scene(str(tmp_path / "new.tif"), width=64, height=64, mask_path=str(mask))
    assert not (tmp_path / "new.tif").exists() and mask.read_bytes() == b"user mask"
    synthetic.make_scene(str(out), width=64, height=64, overwrite=True)
    assert gdal.Open(str(out)).RasterXSize == 64


# --- Labelme files ------------------------------------------------------------------------

def _burn_labelme(doc):
    """Rasterise a Labelme document's polygons in pixel coordinates with GDAL (pixel-centre rule)."""
    w, h = doc["imageWidth"], doc["imageHeight"]
    ds = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((0, 1, 0, 0, 0, 1))  # pixel-corner coordinates, y down
    mem = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = mem.CreateLayer("shapes")
    for shape in doc["shapes"]:
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in shape["points"] + shape["points"][:1]:
            ring.AddPoint_2D(x, y)
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetGeometry(poly)
        layer.CreateFeature(feat)
    gdal.RasterizeLayer(ds, [1], layer, burn_values=[1])
    return ds.ReadAsArray()


def _check_labelme_against_mask(files, mask, offsets):
    inter = union = 0
    for path in files:
        doc = json.loads(Path(path).read_text())
        assert doc["version"] and doc["flags"] == {} and doc["imageData"] is None
        assert (doc["imageWidth"], doc["imageHeight"]) == (256, 256)
        for shape in doc["shapes"]:
            assert shape["label"] == "gully" and shape["shape_type"] == "polygon"
            assert shape["group_id"] is None and shape["flags"] == {} and len(shape["points"]) >= 3
            assert all(0 <= x <= 256 and 0 <= y <= 256 for x, y in shape["points"])
        x, y = offsets[Path(path).stem]
        truth = mask[y:y + 256, x:x + 256]
        burnt = _burn_labelme(doc)[:truth.shape[0], :truth.shape[1]]
        valid = truth != 255
        assert (burnt[valid] == truth[valid]).mean() > 0.985, path  # close to the mask, hand-drawn
        inter += np.count_nonzero((burnt == 1) & (truth == 1))
        union += np.count_nonzero((burnt == 1) | (truth == 1))
    assert inter / union > 0.95


def test_labelme_for_computed_grid(scene_factory, tmp_path):
    scene = scene_factory("lm", width=768, height=600, seed=2, nodata_edge=True)
    mask_path, gpkg = _siblings(scene)
    res = synthetic.write_labelme_for_tiles(str(scene), str(gpkg), out_dir=str(tmp_path / "labelme"))
    names = sorted(Path(p).stem for p in res.written)
    assert names and names[0] == "lm_r0000_c0000" and res.shapes > 0
    offsets = {f"lm_r{r:04d}_c{c:04d}": (c * 256, r * 256) for r in range(3) for c in range(3)}
    assert set(names) <= set(offsets)
    docs = [json.loads(Path(p).read_text()) for p in res.written]
    assert all(d["imagePath"] == f"../images/{Path(p).stem}.jpg" for d, p in zip(docs, res.written))
    _check_labelme_against_mask(res.written, _read(mask_path), offsets)
    # an annotator's existing file is never replaced
    first = Path(res.written[0])
    first.write_text("edited")
    again = synthetic.write_labelme_for_tiles(str(scene), str(gpkg), out_dir=str(tmp_path / "labelme"))
    assert first.read_text() == "edited" and again.skipped_existing == len(res.written)


def test_labelme_for_a_tile_index(scene_factory, tmp_path):
    tiling = pytest.importorskip("gullyseg.processing.engine.tiling")
    from gullyseg.processing.engine import dataset

    scene = scene_factory("idx", width=600, height=512, seed=5)
    mask_path, gpkg = _siblings(scene)
    out = tiling.grid_tiles(str(scene), str(tmp_path / "ds"), fmt=tiling.FORMAT_JPEG)
    res = synthetic.write_labelme_for_tiles(str(scene), str(gpkg), tile_index=out.index_path)
    records, _ = dataset.read_index(out.index_path)
    assert Path(res.out_dir) == tmp_path / "ds" / "labelme"
    assert len(res.written) == len(records)
    offsets = {r["tile_id"]: (r["x_off"], r["y_off"]) for r in records}
    for path in res.written:
        doc = json.loads(Path(path).read_text())
        assert (Path(path).parent / doc["imagePath"]).resolve().is_file()  # the tile's JPEG
    _check_labelme_against_mask(res.written, _read(mask_path), offsets)


# --- the Processing algorithm -----------------------------------------------------------------

def test_algorithm_via_processing(run_alg, tmp_path):
    res = run_alg("syntheticscene", {
        "WIDTH": 320, "HEIGHT": 300, "SEED": 8, "BANDS": 1, "NODATA_EDGE": True,
        "OUTPUT": str(tmp_path / "s.tif"), "OUTPUT_GULLIES": str(tmp_path / "g.gpkg"),
        "OUTPUT_MASK": str(tmp_path / "m.tif")})
    ds = gdal.Open(res["OUTPUT"])
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (320, 300, 4)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
    mask = _read(res["OUTPUT_MASK"])
    assert 0 < res["GULLY_FRACTION"] < 1
    assert res["GULLY_FRACTION"] == pytest.approx((mask == 1).sum() / (mask != 255).sum())
    vds = ogr.Open(res["OUTPUT_GULLIES"])
    assert vds.GetLayerByName("gullies").GetFeatureCount() == res["GULLY_COUNT"]


def test_algorithm_same_as_engine(run_alg, tmp_path):
    res = run_alg("syntheticscene", {
        "WIDTH": 300, "HEIGHT": 280, "SEED": 3, "BANDS": 0, "NODATA_EDGE": False,
        "OUTPUT": str(tmp_path / "s.tif"), "OUTPUT_GULLIES": str(tmp_path / "g.gpkg"),
        "OUTPUT_MASK": str(tmp_path / "m.tif")})
    direct = _make(tmp_path / "direct", 3)
    assert _sha(res["OUTPUT"]) == _sha(direct.path)
    assert _sha(res["OUTPUT_MASK"]) == _sha(direct.mask_path)


def test_algorithm_via_qgis_process(qgis_process, tmp_path, gdal_tool):
    out = qgis_process("gullyseg:syntheticscene", {
        "WIDTH": 400, "HEIGHT": 300, "SEED": 2, "BANDS": 0, "NODATA_EDGE": True,
        "OUTPUT": str(tmp_path / "s.tif"), "OUTPUT_GULLIES": str(tmp_path / "g.gpkg"),
        "OUTPUT_MASK": str(tmp_path / "m.tif")})
    results = out["results"]
    assert os.path.samefile(results["OUTPUT"], tmp_path / "s.tif")
    mask = _read(tmp_path / "m.tif")
    burnt = _gdal_rasterize(gdal_tool, tmp_path / "g.gpkg", tmp_path / "s.tif", tmp_path / "b.tif")
    inside = mask != 255
    assert np.array_equal(burnt[inside], mask[inside])
    assert float(results["GULLY_FRACTION"]) > 0


def test_algorithm_temporary_outputs_and_other_vector_format(run_alg, tmp_path):
    res = run_alg("syntheticscene", {
        "WIDTH": 128, "HEIGHT": 96, "SEED": 4, "OUTPUT": "TEMPORARY_OUTPUT",
        "OUTPUT_GULLIES": str(tmp_path / "gullies.geojson"), "OUTPUT_MASK": "TEMPORARY_OUTPUT"})
    assert gdal.Open(res["OUTPUT"]).RasterXSize == 128
    assert gdal.Open(res["OUTPUT_MASK"]).RasterYSize == 96
    vds = ogr.Open(res["OUTPUT_GULLIES"])
    assert vds.GetDriver().GetName() == "GeoJSON"
    layer = vds.GetLayer(0)
    assert layer.GetFeatureCount() == res["GULLY_COUNT"] >= 1
    assert {f.GetField("label") for f in layer} == {"gully"}
