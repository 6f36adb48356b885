"""One validity rule (gdalio.Validity): nodata values, NaN in float rasters, mask bands.

The same float raster with NaNs (and no nodata value declared) goes through gridtiles (MAX_NODATA),
rasterizelabels (IGNORE_NODATA), segment and evaluate; each must call exactly the non-finite pixels
nodata.
The reference is the array the raster was written from.
"""

import json
import os

import numpy as np
import pytest
import rasters
from osgeo import gdal, ogr, osr

from gullyseg.processing.engine import dataset, gdalio, inference

SIZE = 512
TILE = 256


def _float_scene():
    """Class values 0/1 as float32, NaN in a block and scattered pixels, +inf in a few."""
    rng = np.random.default_rng(7)
    data = ((np.arange(SIZE)[None, :] // 64) % 2).astype(np.float32).repeat(SIZE, axis=0)
    data[:100, :300] = np.nan
    ys, xs = rng.integers(0, SIZE, 2000), rng.integers(0, SIZE, 2000)
    data[ys, xs] = np.nan
    data[rng.integers(0, SIZE, 50), rng.integers(0, SIZE, 50)] = np.inf
    return data


@pytest.fixture
def scene(tmp_path):
    data = _float_scene()
    return rasters.write_raster(tmp_path / "float_scene.tif", data), data


def _tile_slices(rec):
    return slice(rec["y_off"], rec["y_off"] + TILE), slice(rec["x_off"], rec["x_off"] + TILE)


def test_gridtiles_max_nodata_counts_nan_as_nodata(scene, tmp_path, run_alg):
    path, data = scene
    nodata = ~np.isfinite(data)
    res = run_alg("gridtiles", {"INPUT": path, "TILE_SIZE": TILE, "MAX_NODATA": 1.0, "FORMAT": 0,
                                "OUTPUT_DIR": str(tmp_path / "all")})
    records, _ = dataset.read_index(res["OUTPUT_INDEX"])
    assert len(records) == 4
    for rec in records:
        expected = nodata[_tile_slices(rec)].mean()
        assert rec["nodata_frac"] == pytest.approx(expected, abs=1e-6), rec["tile_id"]
    # MAX_NODATA drops exactly the tiles over it
    limit = 0.2
    over = {(r["row"], r["col"]) for r in records if nodata[_tile_slices(r)].mean() > limit}
    assert over == {(0, 0)}
    res = run_alg("gridtiles", {"INPUT": path, "TILE_SIZE": TILE, "MAX_NODATA": limit, "FORMAT": 0,
                                "OUTPUT_DIR": str(tmp_path / "some")})
    kept, _ = dataset.read_index(res["OUTPUT_INDEX"])
    assert {(r["row"], r["col"]) for r in kept} == {(r["row"], r["col"]) for r in records} - over
    assert res["SKIPPED_COUNT"] == len(over)


def _polygon_layer(path, bounds):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32606)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("gullies", srs=srs, geom_type=ogr.wkbPolygon)
    xmin, ymin, xmax, ymax = bounds
    feat = ogr.Feature(layer.GetLayerDefn())
    feat.SetGeometry(ogr.CreateGeometryFromWkt(
        f"POLYGON(({xmin} {ymin},{xmax} {ymin},{xmax} {ymax},{xmin} {ymax},{xmin} {ymin}))"))
    layer.CreateFeature(feat)
    ds = None
    return str(path)


def test_rasterizelabels_ignore_nodata_marks_nan_pixels(scene, tmp_path, run_alg):
    path, data = scene
    nodata = ~np.isfinite(data)
    index = run_alg("gridtiles", {"INPUT": path, "TILE_SIZE": TILE, "MAX_NODATA": 1.0, "FORMAT": 0,
                                  "OUTPUT_DIR": str(tmp_path / "ds")})["OUTPUT_INDEX"]
    gt = rasters.GT
    # a gully polygon over the scene's columns 128..383 (pixel edges: no pixel-centre ambiguity)
    vector = _polygon_layer(tmp_path / "g.gpkg", (gt[0] + 128 * gt[1], gt[3] + SIZE * gt[5],
                                                   gt[0] + 384 * gt[1], gt[3]))
    res = run_alg("rasterizelabels", {"TILES": index, "VECTOR": vector, "IGNORE_NODATA": True,
                                      "OUTPUT_DIR": str(tmp_path / "masks")})
    records, _ = dataset.read_index(index)
    assert res["MASK_COUNT"] == len(records) == 4
    gully = np.zeros((SIZE, SIZE), dtype=bool)
    gully[:, 128:384] = True
    for rec in records:
        mask = gdal.Open(os.path.join(res["OUTPUT_DIR"], f"{rec['tile_id']}.tif")).ReadAsArray()
        sl = _tile_slices(rec)
        expected = np.where(nodata[sl], 255, gully[sl].astype(np.uint8))
        np.testing.assert_array_equal(mask, expected, err_msg=rec["tile_id"])


def test_evaluate_counts_nan_as_ignored_and_prediction_nodata(scene, tmp_path, run_alg):
    path, data = scene
    ref_nodata = ~np.isfinite(data)
    pred = data.copy()
    pred[400:450, :] = np.nan  # the prediction's own nodata
    pred_nodata = ~np.isfinite(pred)
    prediction = rasters.write_raster(tmp_path / "prediction.tif", pred)
    res = run_alg("evaluate", {"PREDICTION": prediction, "REFERENCE": path,
                               "OUTPUT_REPORT": str(tmp_path / "rep" / "eval.html")})
    assert res["IGNORED_PIXELS"] == int(ref_nodata.sum())
    assert res["PIXELS_EVALUATED"] == int((~ref_nodata & ~pred_nodata).sum())
    assert res["OA"] == pytest.approx(1.0)
    report = json.load(open(tmp_path / "rep" / "eval.json", encoding="utf-8"))
    assert report["prediction_nodata_pixels"] == int((~ref_nodata & pred_nodata).sum())


def _cases(tmp_path):
    """(name, path, expected validity) over the rule's branches."""
    rng = np.random.default_rng(3)
    out = []
    u16 = rng.integers(0, 20, (2, 64, 64)).astype(np.uint16)
    out.append(("int nodata", rasters.write_raster(tmp_path / "a.tif", u16, nodata=5), (u16 != 5).all(axis=0)))
    out.append(("int nodata not representable",
                rasters.write_raster(tmp_path / "b.tif", u16, nodata=-1), np.ones((64, 64), bool)))
    f32 = rng.random((64, 64)).astype(np.float32)
    f32[rng.random((64, 64)) < 0.1] = np.nan
    out.append(("float, no nodata", rasters.write_raster(tmp_path / "c.tif", f32), np.isfinite(f32)))
    out.append(("float, NaN nodata", rasters.write_raster(tmp_path / "d.tif", f32, nodata=float("nan")),
                np.isfinite(f32)))
    f32b = f32.copy()
    f32b[:4] = -9999
    out.append(("float, -9999 nodata", rasters.write_raster(tmp_path / "e.tif", f32b, nodata=-9999),
                np.isfinite(f32b) & (f32b != -9999)))
    ds = rasters.write_raster(tmp_path / "f.tif", u16, close=False)
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    m = (rng.random((64, 64)) > 0.2).astype(np.uint8) * 255
    ds.GetRasterBand(1).GetMaskBand().WriteArray(m)
    ds = None
    out.append(("per-dataset mask", str(tmp_path / "f.tif"), m > 0))
    return out


def test_validity_rule_against_the_arrays_and_inference(tmp_path):
    for name, path, expected in _cases(tmp_path):
        ds = gdal.Open(path)
        bands = list(range(1, ds.RasterCount + 1))
        raw = gdalio.read_window(ds, 0, 0, 64, 64, bands)
        np.testing.assert_array_equal(gdalio.valid_mask(ds, 0, 0, 64, 64), expected, err_msg=name)
        np.testing.assert_array_equal(gdalio.validity(ds, bands, raw, 0, 0, 64, 64), expected, err_msg=name)
        # inference's reader decides the same (segment's nodata is this rule too)
        np.testing.assert_array_equal(inference._validity(ds, bands, raw, 0, 0, 64, 64), expected, err_msg=name)
        # a window of it
        part = gdalio.Validity(ds).mask(gdalio.read_window(ds, 8, 16, 32, 24), 8, 16, 32, 24)
        np.testing.assert_array_equal(part, expected[16:40, 8:40], err_msg=name)


def test_segment_writes_nodata_exactly_where_the_float_raster_has_no_data(scene, tmp_path, run_alg):
    """segment's reader (inference) applies the same rule: non-finite pixels are nodata (255) in both
    outputs, every other pixel gets the model's value (a 1x1 model: no context, exact reference)."""
    import onnx_models as om

    path, data = scene
    nodata = ~np.isfinite(data)
    model = om.make_pointwise_model(tmp_path / "pointwise.onnx", weights=(4.0,), bias=-2.0, size=TILE,
                                    metadata={"gullyseg": {"input_max": 1.0}})
    res = run_alg("segment", {"INPUT": path, "MODEL": str(model), "OVERLAP": 64, "THRESHOLD": 0.5,
                              "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"),
                              "OUTPUT_MASK": str(tmp_path / "m.tif")})
    prob = gdal.Open(res["OUTPUT_PROBABILITY"]).ReadAsArray()
    mask = gdal.Open(res["OUTPUT_MASK"]).ReadAsArray()
    np.testing.assert_array_equal(prob == 255, nodata)
    np.testing.assert_array_equal(mask == 255, nodata)
    expected = om.reference_pointwise(np.nan_to_num(data)[None], weights=(4.0,), bias=-2.0)
    assert np.abs(prob[~nodata].astype(int) - np.rint(expected[~nodata] * 254)).max() <= 1
    assert res["PIXELS_PROCESSED"] == int((~nodata).sum())
