"""Every output layout GullySeg accepts (docs/models.md), against whole-image references.

Models are built with the ``onnx`` package (tests/onnx_models.py); references are one onnxruntime
run of the same model on the whole image (zero padding at the image edge, which is what GullySeg
feeds beyond the scene edge), or the same network in another layout.
"""

import numpy as np
import onnx_models as om
import onnxruntime
import pytest
import rasters
from osgeo import gdal

from gullyseg.processing.engine import inference, onnx_model
from gullyseg.processing.engine.errors import GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback


def _read(path):
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray()


def _whole(model_path, x, output=0, pad=0):
    """One onnxruntime run on the whole (C, H, W) image (zero-padded by ``pad``): the output array."""
    sess = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    return sess.run(None, {sess.get_inputs()[0].name: x[None].astype(np.float32)})[output][0]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("layouts") / "scene.tif"
    rng = np.random.default_rng(21)
    data = rng.integers(0, 256, (3, 700, 900)).astype(np.uint8)
    # smooth structure so that the models' outputs vary over the scene
    yy, xx = np.mgrid[0:700, 0:900]
    data[0] = np.clip(data[0] * 0.3 + 90 * (1 + np.sin(xx / 37.0) * np.cos(yy / 23.0)), 0, 255).astype(np.uint8)
    rasters.write_raster(path, data, options=["TILED=YES"])
    return path


def _raw(scene):
    ds = gdal.Open(str(scene))
    return ds.ReadAsArray()


# --- context margin: exact stitching for wide receptive fields --------------------------------------

def test_context_margin_gives_the_whole_image_result(tmp_path):
    """Six dilated 3x3 convs (radius 63), window 512, OVERLAP 128: with context_margin 63 no probability
    is more than one step off a whole-image run; without it (today's blending) some are."""
    path = tmp_path / "wide.tif"
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (3, 1000, 1150)).astype(np.uint8)
    rasters.write_raster(path, data, options=["TILED=YES"])
    plain = om.make_dilated_model(tmp_path / "dilated.onnx", metadata={"tile_size": 512})
    marked = om.make_dilated_model(tmp_path / "dilated63.onnx",
                                   metadata={"tile_size": 512, "gullyseg": {"context_margin": 63}})
    reference = np.rint(_whole(plain, data.astype(np.float32) / 255)[0] * 254).astype(int)
    fb = RecordingFeedback()
    res = inference.segment_raster(str(path), marked, output_probability=str(tmp_path / "m.tif"), overlap=128,
                                   feedback=fb)
    assert any("Context margin 63" in m for m in fb.infos)
    margin = _read(tmp_path / "m.tif").astype(int)
    assert np.abs(margin - reference).max() <= 1
    assert res["windows"] == 9
    inference.segment_raster(str(path), plain, output_probability=str(tmp_path / "p.tif"), overlap=128)
    blended = _read(tmp_path / "p.tif").astype(int)
    assert (np.abs(blended - reference) > 1).mean() > 0.001  # the test can fail: Hann blending alone is off
    # CONTEXT_MARGIN 0 overrides the metadata: today's result, bit for bit
    inference.segment_raster(str(path), marked, output_probability=str(tmp_path / "z.tif"), overlap=128,
                             context_margin=0)
    np.testing.assert_array_equal(_read(tmp_path / "z.tif"), blended.astype(np.uint8))
    # and the parameter sets a margin on a model without one
    inference.segment_raster(str(path), plain, output_probability=str(tmp_path / "q.tif"), overlap=128,
                             context_margin=63)
    np.testing.assert_array_equal(_read(tmp_path / "q.tif"), margin.astype(np.uint8))


def test_context_margin_refusals_and_overlap(scene, tmp_path):
    model = om.make_fcn_model(tmp_path / "fcn.onnx", layers=3, seed=4)  # window 256
    with pytest.raises(GullySegError, match="CONTEXT_MARGIN 128.*no core"):
        inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"), context_margin=128)
    with pytest.raises(GullySegError, match="gullyseg.context_margin"):
        onnx_model.load_model(om.make_fcn_model(tmp_path / "bad.onnx", metadata={"gullyseg": {"context_margin": 2.5}}))
    fb = RecordingFeedback()
    res = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"), overlap=16,
                                   context_margin=20, feedback=fb)
    assert res["overlap"] == 40 and any("raised to 40" in m for m in fb.infos)
    assert not (_read(tmp_path / "p.tif") == 255).any()


# --- [N, H, W] and an output batch pinned to 1 --------------------------------------------------

def test_nhw_output_equals_the_nchw_model(scene, tmp_path):
    nchw = om.make_fcn_model(tmp_path / "nchw.onnx", layers=3, hidden=8, seed=4)
    nhw = om.make_nhw_model(tmp_path / "nhw.onnx", layers=3, hidden=8, seed=4)
    m = onnx_model.load_model(nhw)
    assert m.output_rank == 3 and m.output_channels == 1
    for name, path in (("a", nchw), ("b", nhw)):
        inference.segment_raster(str(scene), path, output_probability=str(tmp_path / f"{name}.tif"))
    np.testing.assert_array_equal(_read(tmp_path / "a.tif"), _read(tmp_path / "b.tif"))


def test_output_batch_pinned_to_one_runs_one_window_at_a_time(scene, tmp_path):
    pinned = om.make_nhw_model(tmp_path / "pinned.onnx", layers=3, hidden=8, seed=4, size=128, pin_batch=True)
    m = onnx_model.load_model(pinned)
    assert m.fixed_batch is None and m.run_batch == 1 and m.window == (128, 128)
    reference = om.make_fcn_model(tmp_path / "ref.onnx", layers=3, hidden=8, seed=4, size=128)
    for name, path in (("pinned", pinned), ("ref", reference)):
        inference.segment_raster(str(scene), path, output_probability=str(tmp_path / f"{name}.tif"), batch_size=8)
    np.testing.assert_array_equal(_read(tmp_path / "pinned.tif"), _read(tmp_path / "ref.tif"))


# --- outputs smaller than the window: the centred core -------------------------------------------

@pytest.mark.parametrize("size", [None, 128])
def test_core_output_equals_a_zero_padded_whole_image_run(scene, tmp_path, size):
    """A valid 9x9 conv: windows are laid out by their 120 px core; pixels near the scene edge come
    from windows padded with zeros (as Deepness pads) and equal a zero-padded whole-image run."""
    path = om.make_core_model(tmp_path / "core.onnx", kernel=9, size=size, metadata={"tile_size": 128})
    m = onnx_model.load_model(path)
    assert m.core == (120, 120) and m.offset == (4, 4) and m.window == (128, 128)
    raw = _raw(scene)
    dynamic = om.make_core_model(tmp_path / "dynamic.onnx", kernel=9)  # the same weights on any size
    reference = _whole(dynamic, raw.astype(np.float32) / 255, pad=4)[1]
    assert reference.shape == raw.shape[1:]
    fb = RecordingFeedback()
    inference.segment_raster(str(scene), path, output_probability=str(tmp_path / "p.tif"), feedback=fb)
    prob = _read(tmp_path / "p.tif").astype(int)
    assert np.abs(prob - np.rint(reference * 254)).max() <= 1
    assert any("centred 120x120 core" in m and "padded with zeros" in m for m in fb.infos)
    # predict_tiles blends such tiles (their edge pixels need context) instead of batching them as is
    tile = raw[:, :128, :128]
    got = inference.predict_tiles(m, [tile])[0]
    ref_tile = _whole(dynamic, tile.astype(np.float32) / 255, pad=4)[1]
    assert np.abs(got - ref_tile).max() < 1e-4


def test_core_model_is_bit_identical_across_lanes_panels_and_blocks(scene, tmp_path, monkeypatch):
    path = om.make_core_model(tmp_path / "core.onnx", kernel=9, metadata={"tile_size": 128})
    runs = {}
    for name, threads, panel in (("one", 1, 10 ** 6), ("two", 2, 10 ** 6), ("panels", 2, 256)):
        monkeypatch.setattr(inference.grid, "PANEL_WIDTH", panel)
        model = onnx_model.load_model(path, threads=threads, providers=[onnx_model.CPU])
        runs[name] = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / f"{name}.tif"),
                                              batch_size=3)
    ref = _read(tmp_path / "one.tif")
    for name in ("two", "panels"):
        np.testing.assert_array_equal(_read(tmp_path / f"{name}.tif"), ref)
        assert runs[name]["windows"] == runs["one"]["windows"]
    mosaic = np.zeros_like(ref)
    for i, (x, y, w, h) in enumerate([(0, 0, 450, 333), (450, 0, 450, 333), (0, 333, 900, 367)]):
        inference.segment_raster(str(scene), path, output_probability=str(tmp_path / f"b{i}.tif"),
                                 block=(x, y, w, h))
        mosaic[y:y + h, x:x + w] = _read(tmp_path / f"b{i}.tif")
    np.testing.assert_array_equal(mosaic, ref)


def test_odd_core_refuses_tta(scene, tmp_path):
    path = om.make_core_model(tmp_path / "core.onnx", kernel=8, metadata={"tile_size": 128})  # margin 3.5
    with pytest.raises(GullySegError, match="TTA.*not centred"):
        inference.segment_raster(str(scene), path, output_probability=str(tmp_path / "p.tif"), tta=1)


# --- several heads ------------------------------------------------------------------------------------

def test_head_named_by_class_names_or_gully_output(scene, tmp_path):
    raw = _raw(scene).astype(np.float32) / 255
    names = [{"0": "edge"}, {"0": "background", "1": "gully"}]
    path = om.make_two_head_model(tmp_path / "heads.onnx", metadata={"class_names": names})
    m = onnx_model.load_model(path)
    assert (m.output_name, m.gully_class, m.outputs) == ("seg", 1, ["edges", "seg"])
    assert "class_names" in m.choice and "'seg'" in m.summary()
    fb = RecordingFeedback()
    inference.segment_raster(str(scene), path, output_probability=str(tmp_path / "p.tif"), feedback=fb)
    assert any("of output 'seg'" in msg for msg in fb.infos)
    ref = _whole(path, raw, output=1)[1]
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(_read(tmp_path / "p.tif").astype(int) - np.rint(ref * 254))[inner].max() <= 1
    # gully_output names the head (here: the other one); without either, the first head
    other = om.make_two_head_model(tmp_path / "other.onnx", metadata={"gullyseg": {"gully_output": "edges"}})
    m2 = onnx_model.load_model(other)
    assert (m2.output_name, m2.gully_class) == ("edges", 0) and "gully_output" in m2.choice
    first = onnx_model.load_model(om.make_two_head_model(tmp_path / "first.onnx"))
    assert first.output_name == "edges" and "first of 2" in first.choice
    with pytest.raises(GullySegError, match="gully_output='nope'.*edges"):
        onnx_model.load_model(om.make_two_head_model(tmp_path / "bad.onnx",
                                                     metadata={"gullyseg": {"gully_output": "nope"}}))


# --- NaN in the output ------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["sigmoid", "none"])
def test_nan_output_is_an_error_naming_model_and_window(scene, tmp_path, activation):
    meta = {"gullyseg": {"activation": "none"}} if activation == "none" else None
    path = om.make_nan_model(tmp_path / "nan.onnx", activation=activation, metadata=meta)
    out = tmp_path / "out"
    with pytest.raises(GullySegError, match=r"nan.onnx' returned NaN for \d+ pixel\(s\) of the window at column "
                                            r"\d+, row \d+"):
        inference.segment_raster(str(scene), path, output_probability=str(out / "p.tif"),
                                 output_mask=str(out / "m.tif"))
    assert not out.exists() or not list(out.iterdir())
    with pytest.raises(GullySegError, match="NaN"):
        inference.predict_array(onnx_model.load_model(path), _raw(scene)[:, :200, :200])


@pytest.mark.parametrize("out_channels,activation", [(2, "none"), (2, "softmax"), (1, "sigmoid")])
def test_unprobed_load_reads_the_declared_channels_like_the_probe(tmp_path, out_channels, activation):
    """load_model(probe=False) (trainmodel's export check) sees the channels and rank the probe sees."""
    path = om.make_fcn_model(tmp_path / "m.onnx", out_channels=out_channels, activation=activation,
                             metadata={"gullyseg": f'{{"gully_class": {out_channels - 1}}}'})
    probed = onnx_model.load_model(path, threads=1)
    declared = onnx_model.load_model(path, threads=1, probe=False)
    assert len(declared.class_names) == len(probed.class_names) == out_channels
    assert declared.output_rank == probed.output_rank == 4
    assert declared.gully_class == probed.gully_class == out_channels - 1
