"""Sliding-window inference engine: blending, nodata, EXTENT, MASK_LAYER, grids, TTA, resampling, cancel.

References are independent of the engine: one whole-image onnxruntime run of the same model,
numpy re-implementations of the test models (tests/onnx_models.py), GDAL's own tools
(gdal_rasterize, gdalwarp, gdal_translate) and GDAL's mask bands.
"""

import os
import subprocess
import threading
import time

import numpy as np
import onnx_models as om
import onnxruntime
import pytest
import rasters
from osgeo import gdal, ogr, osr

from gullyseg.processing.engine import inference, onnx_model
from gullyseg.processing.engine.errors import Cancelled, GullySegError
from gullyseg.processing.engine.feedback import Feedback, RecordingFeedback

STEP = 1.0 / 254  # one probability step of the uint8 output


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "fcn": om.make_fcn_model(d / "fcn.onnx", layers=3, hidden=8, seed=4),
        "pointwise": om.make_pointwise_model(d / "pw.onnx", weights=(4.0, -3.0, 1.5), bias=-0.8),
    }


def _read(path, band=1):
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(band).ReadAsArray()


def _scene_array(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(), ds.GetRasterBand(1).GetMaskBand().ReadAsArray() > 0


def _whole_image(model_path, x):
    """One onnxruntime run of the model on the whole (C, H, W) normalised image."""
    sess = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x[None].astype(np.float32)})[0][0, 0]


# --- blending ------------------------------------------------------------------------------------

def test_blended_equals_whole_image_run(scene_factory, models, tmp_path):
    scene = scene_factory("blend", width=900, height=700, seed=2)  # 5 x 4 windows of 256
    raw, _ = _scene_array(scene)
    model = onnx_model.load_model(models["fcn"])
    reference = _whole_image(models["fcn"], raw.astype(np.float32) / 255)
    blended = inference.predict_array(model, raw, overlap=64)
    margin = 8  # "away from the image border"
    inner = (slice(margin, -margin), slice(margin, -margin))
    diff = np.abs(blended - reference)
    assert diff[inner].max() < STEP / 10, diff[inner].max()
    # also at the image border: border windows are not tapered towards the edge
    assert diff.max() < STEP / 10
    # the GeoTIFF output is that probability, rounded to 1/254
    res = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"))
    assert res["windows"] == 20
    prob = _read(tmp_path / "p.tif").astype(int)
    expected = np.rint(reference * 254).astype(int)
    assert np.abs(prob - expected).max() <= 1
    assert (prob != expected).mean() < 0.001  # only values within 1e-4 of a rounding boundary may differ


def test_no_seam_at_window_borders(scene_factory, models):
    scene = scene_factory("blend", width=900, height=700, seed=2)
    raw, _ = _scene_array(scene)
    model = onnx_model.load_model(models["fcn"])
    reference = _whole_image(models["fcn"], raw.astype(np.float32) / 255)
    grid = inference._Grid(900, 700, (0, 0, 900, 700), (256, 256), 64)
    borders = sorted(({w.x_off for row in grid.rows for w in row} | {w.x_end for row in grid.rows for w in row})
                     - {0, 900})
    assert len(borders) == 8
    blended = inference.predict_array(model, raw, overlap=64)
    err = blended - reference
    # the error across every window border (the columns either side) is as small as anywhere else
    for x in borders:
        assert np.abs(err[:, x - 2:x + 2]).max() < STEP / 10
        jump = np.abs(np.diff(blended[:, x - 2:x + 2], axis=1)).max()
        ref_jump = np.abs(np.diff(reference[:, x - 2:x + 2], axis=1)).max()
        assert jump <= ref_jump + STEP / 10
    # the test can fail: abutting windows (overlap 0, nothing to blend) do leave seams
    naive = inference.predict_array(model, raw, overlap=0)
    assert np.abs(naive - reference)[:, 254:258].max() > STEP


# --- outputs, grids, nodata, extent, mask ---------------------------------------------------------

def test_outputs_have_the_input_grid(scene_factory, models, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    res = inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "p.tif"),
                                   output_mask=str(tmp_path / "m.tif"))
    src = gdal.Open(str(scene))
    for name in ("p.tif", "m.tif"):
        ds = gdal.Open(str(tmp_path / name))
        assert (ds.RasterXSize, ds.RasterYSize) == (src.RasterXSize, src.RasterYSize)
        assert ds.GetGeoTransform() == src.GetGeoTransform()
        a, b = osr.SpatialReference(ds.GetProjection()), osr.SpatialReference(src.GetProjection())
        assert a.IsSame(b)
        band = ds.GetRasterBand(1)
        assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
        assert band.GetBlockSize() == [256, 256]
        assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    assert res["provider"] in onnxruntime.get_available_providers()


def test_pointwise_exact_and_threshold(scene_factory, models, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    raw, _ = _scene_array(scene)
    res = inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "p.tif"),
                                   output_mask=str(tmp_path / "m.tif"), threshold=0.3)
    p_ref = om.reference_pointwise(raw / 255.0, (4.0, -3.0, 1.5), -0.8)
    prob, mask = _read(tmp_path / "p.tif"), _read(tmp_path / "m.tif")
    assert np.abs(prob.astype(int) - np.rint(p_ref * 254)).max() <= 1
    near = np.abs(p_ref - 0.3) < 1e-5
    np.testing.assert_array_equal(mask[~near], (p_ref >= 0.3)[~near].astype(np.uint8))
    pixel_area = 0.75 * 0.75
    assert res["gully_area_m2"] == pytest.approx((mask == 1).sum() * pixel_area)
    assert res["pixels_processed"] == prob.size


def test_nodata_is_honoured_exactly(scene_factory, models, tmp_path):
    scene = scene_factory("nodata", width=700, height=600, seed=7, nodata_edge=True)
    _, valid = _scene_array(scene)  # GDAL's own mask band of the input
    assert 0 < valid.mean() < 1
    res = inference.segment_raster(str(scene), models["fcn"], output_probability=str(tmp_path / "p.tif"),
                                   output_mask=str(tmp_path / "m.tif"))
    prob, mask = _read(tmp_path / "p.tif"), _read(tmp_path / "m.tif")
    np.testing.assert_array_equal(prob == 255, ~valid)
    np.testing.assert_array_equal(mask == 255, ~valid)
    assert set(np.unique(mask[valid])) <= {0, 1}
    assert res["pixels_processed"] == valid.sum()


def test_mask_band_and_all_nodata_windows(tmp_path, models):
    """A per-dataset mask band (not a nodata value) is honoured; windows with no data are skipped."""
    path = tmp_path / "masked.tif"
    rng = np.random.default_rng(0)
    ds = rasters.write_raster(path, rng.integers(1, 255, (3, 300, 800), dtype=np.uint8), options=["TILED=YES"],
                              close=False)
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    m = np.zeros((300, 800), np.uint8)
    m[40:260, 20:330] = 255  # data only on the left; the right 470 columns are empty
    ds.GetRasterBand(1).GetMaskBand().WriteArray(m)
    ds = None
    res = inference.segment_raster(str(path), models["pointwise"], output_probability=str(tmp_path / "p.tif"))
    prob = _read(tmp_path / "p.tif")
    np.testing.assert_array_equal(prob != 255, m > 0)
    assert res["windows_skipped"] >= 2  # windows over the empty right part never reach the model


def test_extent_snapped_to_the_pixel_grid(scene_factory, models, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    src = gdal.Open(str(scene))
    gt = src.GetGeoTransform()
    # extent edges inside pixels: cols 100.3 .. 380.6 -> 100..381, rows 50.2 .. 300.9 -> 50..301
    extent = (gt[0] + 100.3 * gt[1], gt[3] + 300.9 * gt[5], gt[0] + 380.6 * gt[1], gt[3] + 50.2 * gt[5])
    inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "p.tif"),
                             extent=extent)
    ds = gdal.Open(str(tmp_path / "p.tif"))
    assert (ds.RasterXSize, ds.RasterYSize) == (281, 251)
    assert ds.GetGeoTransform() == pytest.approx((gt[0] + 100 * gt[1], gt[1], 0, gt[3] + 50 * gt[5], 0, gt[5]))
    # pixels equal the whole-layer run on the same pixels (gdal_translate -srcwin of the input as reference)
    sub = gdal.Translate("/vsimem/sub.tif", str(scene), srcWin=[100, 50, 281, 251])
    raw = sub.ReadAsArray()
    sub = None
    gdal.Unlink("/vsimem/sub.tif")
    p_ref = om.reference_pointwise(raw / 255.0, (4.0, -3.0, 1.5), -0.8)
    assert np.abs(ds.ReadAsArray().astype(int) - np.rint(p_ref * 254)).max() <= 1
    with pytest.raises(GullySegError, match="EXTENT"):
        inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "q.tif"),
                                 extent=(0, 0, 10, 10))
    assert not (tmp_path / "q.tif").exists()


def test_mask_layer_matches_gdal_rasterize(scene_factory, models, tmp_path, gdal_tool):
    scene = scene_factory("nodata", width=700, height=600, seed=7, nodata_edge=True)
    src = gdal.Open(str(scene))
    gt = src.GetGeoTransform()
    x0, y0 = gt[0], gt[3]
    wkts = [
        f"POLYGON(({x0 + 20.3} {y0 - 30.1},{x0 + 260.7} {y0 - 45.5},{x0 + 200.2} {y0 - 310.9},"
        f"{x0 + 35.5} {y0 - 250.4},{x0 + 20.3} {y0 - 30.1}))",
        f"POLYGON(({x0 + 300} {y0 - 200},{x0 + 470} {y0 - 200},{x0 + 470} {y0 - 420},{x0 + 300} {y0 - 420},"
        f"{x0 + 300} {y0 - 200}),({x0 + 350} {y0 - 250},{x0 + 400} {y0 - 250},{x0 + 400} {y0 - 300},"
        f"{x0 + 350} {y0 - 300},{x0 + 350} {y0 - 250}))",
    ]
    inference.segment_raster(str(scene), models["fcn"], output_probability=str(tmp_path / "p.tif"),
                             output_mask=str(tmp_path / "m.tif"), mask_wkts=wkts)
    out = gdal.Open(str(tmp_path / "p.tif"))
    ogt = out.GetGeoTransform()
    w, h = out.RasterXSize, out.RasterYSize
    # the output covers the polygons' bounding box on the input grid
    assert ogt[1] == gt[1] and ((ogt[0] - gt[0]) / gt[1]).is_integer() and ((ogt[3] - gt[3]) / gt[5]).is_integer()
    # reference: gdal_rasterize of the same polygons on the output grid (pixel-centre rule)
    gpkg = tmp_path / "mask.gpkg"
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    lyr = vds.CreateLayer("mask", srs=osr.SpatialReference(src.GetProjection()), geom_type=ogr.wkbPolygon)
    for wkt in wkts:
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        lyr.CreateFeature(f)
    vds = None
    ref = tmp_path / "ref.tif"
    subprocess.run([gdal_tool("gdal_rasterize"), "-q", "-burn", "1", "-ot", "Byte", "-te", str(ogt[0]),
                    str(ogt[3] + h * ogt[5]), str(ogt[0] + w * ogt[1]), str(ogt[3]), "-ts", str(w), str(h),
                    str(gpkg), str(ref)], check=True)
    inside = _read(ref) == 1
    col0, row0 = int(round((ogt[0] - gt[0]) / gt[1])), int(round((ogt[3] - gt[3]) / gt[5]))
    valid = src.GetRasterBand(1).GetMaskBand().ReadAsArray(col0, row0, w, h) > 0
    np.testing.assert_array_equal(out.ReadAsArray() != 255, inside & valid)
    np.testing.assert_array_equal(_read(tmp_path / "m.tif") != 255, inside & valid)


# --- preprocessing, bands, 16-bit, K classes -------------------------------------------------------

def test_bands_and_16bit_scaling(scene_factory, tmp_path):
    scene = scene_factory("bgrn", width=400, height=300, seed=9, bands="bgrn")
    raw, _ = _scene_array(scene)
    weights = (2.0, -1.0, 0.5)
    plain = om.make_pointwise_model(tmp_path / "pw.onnx", weights=weights, bias=-0.3)
    with pytest.raises(GullySegError, match="input_max"):
        inference.segment_raster(str(scene), plain, output_probability=str(tmp_path / "x.tif"), bands="3,2,1")
    meta = {"gullyseg": {"input_max": 1023, "bands": [3, 2, 1]},
            "standardization_mean": [0.1, 0.2, 0.3], "standardization_std": [0.5, 0.5, 0.25]}
    model = om.make_pointwise_model(tmp_path / "pw16.onnx", weights=weights, bias=-0.3, metadata=meta)
    res = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"))
    assert res["bands"] == [3, 2, 1]
    x = (raw[[2, 1, 0]] / 1023.0 - np.array([0.1, 0.2, 0.3])[:, None, None]) / np.array([0.5, 0.5, 0.25])[:, None, None]
    p_ref = om.reference_pointwise(x, weights, -0.3)
    valid = raw[0] != 0
    prob = _read(tmp_path / "p.tif").astype(int)
    assert np.abs(prob[valid] - np.rint(p_ref[valid] * 254)).max() <= 1
    # BANDS overrides the metadata; wrong counts and missing bands are clear errors
    inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "q.tif"), bands="4,3,2")
    with pytest.raises(GullySegError, match="BANDS.*2 band"):
        inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "r.tif"), bands="1,2")
    with pytest.raises(GullySegError, match="BANDS.*do not exist"):
        inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "r.tif"), bands="5,2,1")


def test_softmax_k_classes(scene_factory, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    raw, _ = _scene_array(scene)
    weights = (1.0, 2.0, -2.5)
    model = om.make_pointwise_model(tmp_path / "k3.onnx", weights=weights, bias=0.2, classes=3, activation="none",
                                    metadata={"gullyseg": {"activation": "softmax", "gully_class": 2},
                                              "class_names": {0: "background", 1: "dam land", 2: "gully"}})
    inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"))
    p_ref = om.reference_pointwise(raw / 255.0, weights, 0.2, "softmax", classes=3, gully_class=2)
    assert np.abs(_read(tmp_path / "p.tif").astype(int) - np.rint(p_ref * 254)).max() <= 1


def test_logits_without_activation_are_refused(scene_factory, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    model = om.make_pointwise_model(tmp_path / "logits.onnx", weights=(8.0, -6.0, 3.0), bias=-2.0, activation="none")
    with pytest.raises(GullySegError, match="logits"):
        inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"))
    assert not list(tmp_path.glob("*.tif")) and not list(tmp_path.glob(".*"))


# --- bad models: errors before any pixel is read ----------------------------------------------------

@pytest.mark.parametrize("maker", [om.make_not_onnx, om.make_vector_input_model, om.make_classifier_model,
                                   om.make_downsampling_model, om.make_int_input_model, "channels"])
def test_bad_model_fails_before_reading_pixels(scene_factory, tmp_path, monkeypatch, maker):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    read = []
    monkeypatch.setattr(gdal.Dataset, "ReadAsArray", lambda *a, **k: read.append(1))
    monkeypatch.setattr(gdal.Band, "ReadAsArray", lambda *a, **k: read.append(1))
    if maker == "channels":
        path = om.make_fcn_model(tmp_path / "bad.onnx", in_channels=4)  # the scene has 3 bands
    else:
        path = maker(tmp_path / "bad.onnx")
    with pytest.raises(GullySegError, match="MODEL|INPUT"):
        inference.segment_raster(str(scene), path, output_probability=str(tmp_path / "p.tif"),
                                 output_mask=str(tmp_path / "m.tif"))
    assert not read, "pixels were read before the model was refused"
    assert not list(tmp_path.glob("*.tif")) and not list(tmp_path.glob(".*"))


def test_existing_outputs_are_not_overwritten(scene_factory, models, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    (tmp_path / "m.tif").write_bytes(b"mine")
    with pytest.raises(GullySegError, match="already exists"):
        inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "p.tif"),
                                 output_mask=str(tmp_path / "m.tif"))
    assert (tmp_path / "m.tif").read_bytes() == b"mine" and not (tmp_path / "p.tif").exists()
    inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "p.tif"),
                             output_mask=str(tmp_path / "m.tif"), overwrite=True)
    assert gdal.Open(str(tmp_path / "m.tif")).RasterXSize == 600


# --- TTA ------------------------------------------------------------------------------------------

def test_tta_is_the_mean_of_transformed_runs(scene_factory, models):
    scene = scene_factory("blend", width=900, height=700, seed=2)
    raw, _ = _scene_array(scene)
    raw = raw[:, :300, :400]
    x = raw.astype(np.float32) / 255
    model = onnx_model.load_model(models["fcn"])
    runs = []
    for flip_y in (False, True):
        for flip_x in (False, True):
            xt = x[:, ::-1] if flip_y else x
            xt = xt[:, :, ::-1] if flip_x else xt
            p = _whole_image(models["fcn"], np.ascontiguousarray(xt))
            p = p[::-1] if flip_y else p
            runs.append(p[:, ::-1] if flip_x else p)
    flips = inference.predict_array(model, raw, tta=1)
    assert np.abs(flips - np.mean(runs, axis=0)).max() < STEP / 10
    assert np.abs(flips - runs[0]).max() > STEP  # the model is not flip-invariant: TTA changed something
    rot = []
    for k in range(4):
        for flip in (False, True):
            xt = x[:, :, ::-1] if flip else x
            p = _whole_image(models["fcn"], np.ascontiguousarray(np.rot90(xt, k, axes=(1, 2))))
            p = np.rot90(p, -k)
            rot.append(p[:, ::-1] if flip else p)
    dihedral = inference.predict_array(model, raw, tta=2)
    assert np.abs(dihedral - np.mean(rot, axis=0)).max() < STEP / 10


# --- resolution -------------------------------------------------------------------------------------

def test_resampled_to_the_model_resolution(scene_factory, tmp_path, gdal_tool):
    """A model at 150 cm/px on a 75 cm scene: same result as gdalwarp -r average, the model, gdalwarp back."""
    scene = scene_factory("grid", width=600, height=520, seed=5)
    weights, bias = (4.0, -3.0, 1.5), -0.8
    model = om.make_pointwise_model(tmp_path / "pw150.onnx", weights=weights, bias=bias, metadata={"resolution": 150})
    fb = RecordingFeedback()
    res = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"),
                                   output_mask=str(tmp_path / "m.tif"), feedback=fb)
    assert res["resampled"] and any("warped VRT" in m for m in fb.infos)
    out = gdal.Open(str(tmp_path / "p.tif"))
    src = gdal.Open(str(scene))
    assert out.GetGeoTransform() == src.GetGeoTransform() and out.RasterXSize == 600
    # independent pipeline with GDAL's command-line tools
    coarse = tmp_path / "coarse.tif"
    subprocess.run([gdal_tool("gdalwarp"), "-q", "-tr", "1.5", "1.5", "-r", "average", str(scene), str(coarse)],
                   check=True)
    cds = gdal.Open(str(coarse))
    craw = cds.ReadAsArray()
    cvalid = cds.GetRasterBand(1).GetMaskBand().ReadAsArray() > 0
    p = om.reference_pointwise(craw / 255.0, weights, bias)
    cprob = np.where(cvalid, np.rint(p * 254), 255).astype(np.uint8)
    drv = gdal.GetDriverByName("GTiff")
    pds = drv.Create(str(tmp_path / "cprob.tif"), cds.RasterXSize, cds.RasterYSize, 1, gdal.GDT_Byte)
    pds.SetGeoTransform(cds.GetGeoTransform())
    pds.SetProjection(cds.GetProjection())
    pds.GetRasterBand(1).SetNoDataValue(255)
    pds.GetRasterBand(1).WriteArray(cprob)
    pds = cds = None
    gt = src.GetGeoTransform()
    back = tmp_path / "back.tif"
    subprocess.run([gdal_tool("gdalwarp"), "-q", "-r", "bilinear", "-ot", "Float32", "-te", str(gt[0]),
                    str(gt[3] + 520 * gt[5]), str(gt[0] + 600 * gt[1]), str(gt[3]), "-ts", "600", "520",
                    str(tmp_path / "cprob.tif"), str(back)], check=True)
    expected = np.rint(_read(back)).astype(int)
    got = out.ReadAsArray().astype(int)
    ok = (got != 255) & (expected != 255)
    assert ok.mean() > 0.97
    assert np.abs(got[ok] - expected[ok]).max() <= 1


# --- cancel --------------------------------------------------------------------------------------

class _CancelAtFirstProgress(Feedback):
    """Asks to stop as soon as the first batches are blended (progress > 0) and keeps the times."""

    def __init__(self):
        self.started = time.monotonic()
        self.first_progress = None  # (time, percent) when the first batches were done
        self.cancelled_at = None
        self.after_cancel = []  # progress reported after the cancel request

    def progress(self, percent):
        if self.cancelled_at is not None:
            self.after_cancel.append(percent)
        elif percent > 0 and self.first_progress is None:
            self.first_progress = (time.monotonic(), percent)

    def is_cancelled(self):
        if self.first_progress is None:
            return False
        self.cancelled_at = self.cancelled_at or time.monotonic()
        return True


def test_cancel_stops_long_before_the_end_and_removes_outputs(scene_factory, tmp_path):
    """What cancel guarantees, on any load: asked to stop once the first batches are done (under half
    of the run), it stops in less time than those first batches took, measured in the same run (so long
    before the run would have ended), reports no further progress to 100, and leaves no file and no
    thread behind. The bound is a ratio to work done in the same run, not a number of seconds (a busy
    machine slows both alike); latency figures: benchmarks/bench_cancel.py."""
    scene = scene_factory("blend", width=900, height=700, seed=2)  # 20 windows: 10 batches of 2
    slow = om.make_slow_model(tmp_path / "slow.onnx")  # one batch of 8 windows takes seconds on 2 cores
    out = tmp_path / "out"
    fb = _CancelAtFirstProgress()
    with pytest.raises(Cancelled):
        inference.segment_raster(str(scene), slow, output_probability=str(out / "p.tif"),
                                 output_mask=str(out / "m.tif"), output_polygons=str(out / "g.gpkg"),
                                 batch_size=2, feedback=fb)
    stopped = time.monotonic()
    assert fb.first_progress is not None and fb.cancelled_at is not None
    first_time, first_percent = fb.first_progress
    assert first_percent < 50, fb.first_progress  # most of the run was still to come
    latency = stopped - fb.cancelled_at
    assert latency < first_time - fb.started, (latency, first_time - fb.started)
    assert not [p for p in fb.after_cancel if p >= 100], fb.after_cancel
    assert not out.exists() or not list(out.iterdir())
    assert not [t for t in threading.enumerate() if t.name.startswith("gullyseg-")]


# --- tiles (the dock's screening scores) ------------------------------------------------------------

def test_predict_tiles_and_score_tiles(scene_factory, models, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    raw, _ = _scene_array(scene)
    model = onnx_model.load_model(models["pointwise"])
    tiles = [raw[:, :256, :256], raw[:, 256:512, 256:512], raw[:, :100, :300]]
    probs = inference.predict_tiles(model, tiles, batch_size=2)
    for t, p in zip(tiles, probs):
        ref = om.reference_pointwise(t / 255.0, (4.0, -3.0, 1.5), -0.8)
        assert p.shape == t.shape[1:] and np.abs(p - ref).max() < 1e-5
    paths = []
    for i, (x, y) in enumerate([(0, 0), (256, 256)]):
        path = tmp_path / f"t{i}.tif"
        gdal.Translate(str(path), str(scene), srcWin=[x, y, 256, 256])
        paths.append(str(path))
    scores = inference.score_tiles(model, paths, threshold=0.5)
    for s, p in zip(scores, probs[:2]):
        assert s["gully_share"] == pytest.approx((p >= 0.5).mean(), abs=1e-9)
        assert s["valid_fraction"] == 1.0


def test_progress_reported(scene_factory, models, tmp_path):
    scene = scene_factory("blend", width=900, height=700, seed=2)
    fb = RecordingFeedback()
    inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "p.tif"),
                             feedback=fb, batch_size=2)
    assert fb.percents and fb.percents[-1] == 100 and fb.percents == sorted(fb.percents)
    assert any("CPUExecutionProvider" in m or "CUDAExecutionProvider" in m for m in fb.infos)
    assert os.path.exists(tmp_path / "p.tif")


@pytest.mark.parametrize("panel_width", [256, 512])
def test_column_panels_give_the_same_outputs(scene_factory, models, tmp_path, monkeypatch, panel_width):
    """Wide scenes run in column panels (flat memory in width); the outputs must be bit-identical to
    one full-width pass, with nodata edges, EXTENT and the same window counts."""
    scene = scene_factory("panels", width=1100, height=600, seed=5, nodata_edge=True)
    ds = gdal.Open(str(scene))
    gt = ds.GetGeoTransform()
    extent = (gt[0] + 37 * gt[1], gt[3] + 590 * gt[5], gt[0] + 1090 * gt[1], gt[3] + 11 * gt[5])
    runs = {}
    for name, width in (("single", 10 ** 6), ("panels", panel_width)):
        monkeypatch.setattr(inference.grid, "PANEL_WIDTH", width)
        res = inference.segment_raster(str(scene), models["fcn"], output_probability=str(tmp_path / f"{name}_p.tif"),
                                       output_mask=str(tmp_path / f"{name}_m.tif"), extent=extent)
        runs[name] = res
    grid_panels = inference._Grid(1100, 600, (0, 0, 1100, 600), (256, 256), 64).panels(panel_width)
    assert len(grid_panels) > 1  # the panel path really ran
    for kind in ("p", "m"):
        np.testing.assert_array_equal(_read(tmp_path / f"single_{kind}.tif"), _read(tmp_path / f"panels_{kind}.tif"))
    for key in ("windows", "pixels_processed", "gully_area_m2"):
        assert runs["single"][key] == runs["panels"][key], key


# --- concurrency and the blending denominator ------------------------------------------------------

def test_outputs_do_not_depend_on_the_number_of_lanes(scene_factory, models, tmp_path):
    """Two batches at once (the default on 2+ CPUs) or one: results are blended in window order,
    so the outputs are bit-identical, skipped windows and counts included."""
    scene = scene_factory("lanes", width=900, height=700, seed=9, nodata_edge=True)
    runs = {}
    for threads in (1, 2):
        model = onnx_model.load_model(models["fcn"], threads=threads, providers=[onnx_model.CPU])
        assert model.lanes == threads
        runs[threads] = inference.segment_raster(
            str(scene), model, output_probability=str(tmp_path / f"p{threads}.tif"),
            output_mask=str(tmp_path / f"m{threads}.tif"), batch_size=3)
    for kind in ("p", "m"):
        np.testing.assert_array_equal(_read(tmp_path / f"{kind}1.tif"), _read(tmp_path / f"{kind}2.tif"))
    for key in ("windows", "windows_skipped", "pixels_processed", "gully_pixels"):
        assert runs[1][key] == runs[2][key], key


def test_plan_threads():
    assert onnx_model.plan_threads(1, [onnx_model.CPU]) == (1, 1)
    assert onnx_model.plan_threads(2, [onnx_model.CPU]) == (2, 1)
    assert onnx_model.plan_threads(8, [onnx_model.CPU]) == (2, 4)
    assert onnx_model.plan_threads(None, [onnx_model.CUDA, onnx_model.CPU]) == (1, 0)
    lanes, intra = onnx_model.plan_threads(None, [onnx_model.CPU])
    assert lanes * intra <= onnx_model.cpu_count() and intra >= 1


@pytest.mark.parametrize("size,out,panel", [
    ((1100, 600), (0, 0, 1100, 600), None),
    ((1100, 600), (37, 11, 1053, 579), 512),
    ((300, 200), (0, 0, 300, 200), None),  # smaller than a window: one padded window
])
def test_separable_weight_sums_equal_the_summed_window_weights(size, out, panel):
    """The blend divides by 1 / (row sum x column sum); the reference adds every window's 2-D weight."""
    grid = inference._Grid(size[0], size[1], out, (256, 256), 64)
    grids = grid.panels(panel) if panel else [grid]
    if panel:
        assert len(grids) > 1
    for g in grids:
        gx, gy, gw, gh = g.region
        total = np.zeros((gh, gw))
        for row in g.rows:
            for win in row:
                wt = inference.window_weight(win.width, win.height, *g.edges(win)).astype(np.float64)
                xa, xb = max(win.x_off, gx), min(win.x_end, gx + gw)
                ya, yb = max(win.y_off, gy), min(win.y_end, gy + gh)
                total[ya - gy:yb - gy, xa - gx:xb - gx] += wt[ya - win.y_off:yb - win.y_off,
                                                              xa - win.x_off:xb - win.x_off]
        inv_y, inv_x = inference._inverse_weight_sums(g)
        np.testing.assert_allclose(np.outer(inv_y, inv_x), 1.0 / total, rtol=2e-6)


def test_nan_pixels_never_reach_the_model(tmp_path, models):
    """A float raster with NaN holes gives exactly what the same raster with a -9999 nodata value
    gives: NaN is invalid and fed to the model as 0, so it cannot spread into valid pixels."""
    rng = np.random.default_rng(3)
    data = rng.random((3, 400, 500), dtype=np.float32)
    hole = np.zeros((400, 500), bool)
    hole[100:180, 200:260] = True
    hole[300:, :40] = True
    nan_data = data.copy()
    nan_data[:, hole] = np.nan
    nd_data = data.copy()
    nd_data[:, hole] = -9999
    rasters.write_raster(tmp_path / "nan.tif", nan_data, options=["TILED=YES"])
    rasters.write_raster(tmp_path / "nd.tif", nd_data, nodata=-9999, options=["TILED=YES"])
    for name in ("nan", "nd"):
        inference.segment_raster(str(tmp_path / f"{name}.tif"), models["fcn"],
                                 output_probability=str(tmp_path / f"{name}_p.tif"))
    a, b = _read(tmp_path / "nan_p.tif"), _read(tmp_path / "nd_p.tif")
    np.testing.assert_array_equal(a == 255, hole)
    np.testing.assert_array_equal(a, b)
    # and valid pixels next to the holes got real probabilities, as from a whole-image run
    x = np.where(hole, 0, data).astype(np.float32)
    reference = _whole_image(models["fcn"], x)
    inner = ~hole
    inner[:8] = inner[-8:] = False
    inner[:, :8] = inner[:, -8:] = False
    assert np.abs(a[inner] / 254.0 - reference[inner]).max() <= STEP


# --- blocks (distributed inference runs blocks of one scene on several workers) --------------------

def _mosaic_blocks(scene, model, tmp_path, blocks, name, **kwargs):
    """Run every block, check each output's grid, and mosaic them on the whole run's output grid."""
    whole = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / f"{name}_p.tif"),
                                     output_mask=str(tmp_path / f"{name}_m.tif"), **kwargs)
    ref = gdal.Open(str(tmp_path / f"{name}_p.tif"))
    rgt = ref.GetGeoTransform()
    src_gt = gdal.Open(str(scene)).GetGeoTransform()
    ox, oy = int(round((rgt[0] - src_gt[0]) / src_gt[1])), int(round((rgt[3] - src_gt[3]) / src_gt[5]))
    mosaic = {k: np.full((ref.RasterYSize, ref.RasterXSize), 77, np.uint8) for k in "pm"}
    totals = {"pixels_processed": 0, "gully_pixels": 0, "windows": 0}
    for i, block in enumerate(blocks):
        res = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / f"{name}_b{i}_p.tif"),
                                       output_mask=str(tmp_path / f"{name}_b{i}_m.tif"), block=block, **kwargs)
        bx, by, bw, bh = res["block"]
        for k in "pm":
            ds = gdal.Open(str(tmp_path / f"{name}_b{i}_{k}.tif"))
            assert (ds.RasterXSize, ds.RasterYSize) == (bw, bh)
            assert ds.GetGeoTransform() == pytest.approx(
                (src_gt[0] + bx * src_gt[1], src_gt[1], 0, src_gt[3] + by * src_gt[5], 0, src_gt[5]))
            assert osr.SpatialReference(ds.GetProjection()).IsSame(osr.SpatialReference(ref.GetProjection()))
            window = mosaic[k][by - oy:by - oy + bh, bx - ox:bx - ox + bw]
            assert (window == 77).all(), "blocks overlap"
            window[...] = ds.ReadAsArray()
        for key in totals:
            totals[key] += res[key]
    return whole, mosaic, totals


@pytest.mark.parametrize("panel_width", [10 ** 6, 256])
def test_blocks_mosaic_equals_a_whole_run(scene_factory, models, tmp_path, monkeypatch, panel_width):
    """Four uneven blocks (cuts through windows, rows and columns, not on 256 px output blocks) give,
    mosaicked, the whole run's outputs bit for bit; the counts add up to the whole run's."""
    monkeypatch.setattr(inference.grid, "PANEL_WIDTH", panel_width)  # 256: panels inside the blocks too
    scene = scene_factory("blocks", width=1100, height=700, seed=3)
    blocks = [(0, 0, 613, 301), (613, 0, 487, 301), (0, 301, 100, 399), (100, 301, 1000, 399)]
    whole, mosaic, totals = _mosaic_blocks(scene, models["fcn"], tmp_path, blocks, "w")
    for k in "pm":
        np.testing.assert_array_equal(mosaic[k], _read(tmp_path / f"w_{k}.tif"))
    assert totals["pixels_processed"] == whole["pixels_processed"] == 1100 * 700
    assert totals["gully_pixels"] == whole["gully_pixels"]
    assert totals["windows"] >= whole["windows"]  # windows across a block edge run for both blocks


def test_blocks_with_nodata_mask_layer_and_extent(scene_factory, models, tmp_path):
    """Blocks of a scene with nodata edges, a mask layer and an EXTENT: blocks are clipped to the output
    region, and the mosaic equals the whole run bit for bit."""
    scene = scene_factory("nodata", width=700, height=600, seed=7, nodata_edge=True)
    gt = gdal.Open(str(scene)).GetGeoTransform()
    x0, y0 = gt[0], gt[3]
    wkts = [f"POLYGON(({x0 + 20.3} {y0 - 30.1},{x0 + 400.7} {y0 - 45.5},{x0 + 380.2} {y0 - 410.9},"
            f"{x0 + 35.5} {y0 - 350.4},{x0 + 20.3} {y0 - 30.1}))"]
    extent = (x0 + 10 * gt[1], y0 + 590 * gt[5], x0 + 690 * gt[1], y0 + 5 * gt[5])
    blocks = [(0, 0, 300, 200), (300, 0, 400, 200), (0, 200, 431, 400), (431, 200, 269, 400)]
    whole, mosaic, totals = _mosaic_blocks(scene, models["fcn"], tmp_path, blocks, "n", mask_wkts=wkts,
                                           extent=extent)
    for k in "pm":
        ref = _read(tmp_path / f"n_{k}.tif")
        assert (ref == 255).any() and (ref != 255).any()
        np.testing.assert_array_equal(mosaic[k], ref)
    assert totals["pixels_processed"] == whole["pixels_processed"]
    assert totals["gully_pixels"] == whole["gully_pixels"]


def test_block_refusals(scene_factory, models, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    cases = [((700, 0, 10, 10), "does not overlap"), ((0, 0, 0, 10), "empty"), ((0, 0, 10.5, 10), "whole pixel"),
             ((0, 0, 10), "whole pixel")]
    for block, match in cases:
        with pytest.raises(GullySegError, match=match):
            inference.segment_raster(str(scene), models["pointwise"], output_probability=str(tmp_path / "p.tif"),
                                     block=block)
    with pytest.raises(GullySegError, match="OUTPUT_POLYGONS"):
        inference.segment_raster(str(scene), models["pointwise"], output_polygons=str(tmp_path / "g.gpkg"),
                                 block=(0, 0, 100, 100))
    res150 = om.make_pointwise_model(tmp_path / "pw150.onnx", weights=(1.0, 1.0, 1.0), metadata={"resolution": 150})
    with pytest.raises(GullySegError, match="block.*resolution"):
        inference.segment_raster(str(scene), res150, output_probability=str(tmp_path / "p.tif"), block=(0, 0, 99, 99))
    assert not list(tmp_path.glob("*.tif")) and not list(tmp_path.glob(".*"))


# --- 16-bit data above the model's input_max (issue 14, item 12) ----------------------------------------

def test_values_above_input_max_warn_and_far_above_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 1000, (3, 300, 400)).astype(np.uint16)
    data[:, 100, 200] = 1400  # 1.4 x input_max 1000
    rasters.write_raster(tmp_path / "ten.tif", data, options=["TILED=YES"])
    model = om.make_pointwise_model(tmp_path / "pw.onnx", weights=(1.0, 1.0, 1.0),
                                    metadata={"gullyseg": {"input_max": 1000}})
    fb = RecordingFeedback()
    res = inference.segment_raster(str(tmp_path / "ten.tif"), model, output_probability=str(tmp_path / "p.tif"),
                                   feedback=fb)
    assert res["input_maximum"] == 1400
    assert any("largest valid pixel value is 1400" in w and "input_max 1000" in w for w in fb.warnings)
    # within range: no warning
    fb = RecordingFeedback()
    ok = np.minimum(data, 1000)
    ok[0, 0, 0] = 65535  # a nodata value is not data
    rasters.write_raster(tmp_path / "ok.tif", ok, nodata=65535, options=["TILED=YES"])
    res = inference.segment_raster(str(tmp_path / "ok.tif"), model, output_probability=str(tmp_path / "q.tif"),
                                   feedback=fb)
    assert res["input_maximum"] <= 1000 and not [w for w in fb.warnings if "input_max" in w]
    # 12-bit data on a model that says 1000: far outside, refused before any output
    far = (data.astype(np.uint32) * 4).astype(np.uint16)
    rasters.write_raster(tmp_path / "far.tif", far, options=["TILED=YES"])
    with pytest.raises(GullySegError, match=r"INPUT: pixel values reach about \d+ .*input_max 1000"):
        inference.segment_raster(str(tmp_path / "far.tif"), model, output_probability=str(tmp_path / "r.tif"))
    assert not (tmp_path / "r.tif").exists()


def test_segment_result_is_typed_and_dict_compatible(scene_factory, models, tmp_path):
    scene = scene_factory("grid", width=600, height=520, seed=5)
    res = inference.segment_raster(str(scene), models["pointwise"], output_mask=str(tmp_path / "m.tif"))
    assert isinstance(res, inference.SegmentResult)
    assert res.windows == res["windows"] and res.pixels_processed == res["pixels_processed"] == 600 * 520
    assert res.outputs["mask"] == str(tmp_path / "m.tif") and res.polygons is None and res.block is None
    as_dict = dict(res)
    assert as_dict["gully_area_m2"] == res.gully_area_m2 and "extra" not in as_dict
    assert res.get("nope", 7) == 7 and "windows" in res
    with pytest.raises(KeyError):
        res["nope"]
