"""ONNX model loading, checks and metadata (read: Deepness + GullySeg keys; written: setmodelmetadata)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_models as om
import onnxruntime
import pytest

from gullyseg.processing.engine import onnx_model
from gullyseg.processing.engine.errors import GullySegError

ROOT = Path(__file__).resolve().parents[1]

DEEPNESS = {
    "model_type": "Segmentor",
    "class_names": {0: "background", 1: "gully"},
    "resolution": 75,
    "tile_size": 128,
    "tiles_overlap": 25,
    "standardization_mean": [0.485, 0.456, 0.406],
    "standardization_std": [0.229, 0.224, 0.225],
    "seg_thresh": 0.35,
}


def test_deepness_metadata_is_read(tmp_path):
    path = om.make_fcn_model(tmp_path / "m.onnx", out_channels=2, activation="softmax", metadata=DEEPNESS)
    m = onnx_model.load_model(path)
    assert m.class_names == ["background", "gully"]
    assert m.gully_class == 1
    assert m.resolution_cm == 75
    assert m.window == (128, 128) and not m.fixed_size  # dynamic model: tile_size from metadata
    assert m.overlap == 32  # 25 % of 128
    assert m.threshold == pytest.approx(0.35) and m.threshold_from_metadata
    np.testing.assert_allclose(m.mean, DEEPNESS["standardization_mean"], rtol=1e-6)
    np.testing.assert_allclose(m.std, DEEPNESS["standardization_std"], rtol=1e-6)
    assert m.activation == "none" and m.output_channels == 2
    assert m.provider in onnxruntime.get_available_providers()
    # Deepness' own convention: /255 then (x - mean) / std
    raw = np.full((3, 2, 2), 200, np.uint8)
    x = m.normalise(raw, m.input_scale(raw.dtype))
    np.testing.assert_allclose(x[:, 0, 0], (200 / 255 - np.array(DEEPNESS["standardization_mean"]))
                               / np.array(DEEPNESS["standardization_std"]), rtol=1e-5)


def test_deepness_class_names_as_python_literal(tmp_path):
    # Deepness also accepts str({0: 'a', 1: 'b'}) (int keys, single quotes)
    path = om.make_fcn_model(tmp_path / "m.onnx", out_channels=3, activation="softmax",
                             metadata={"class_names": "{0: 'background', 1: 'dam land', 2: 'gully'}"})
    m = onnx_model.load_model(path)
    assert m.class_names == ["background", "dam land", "gully"]
    assert m.gully_class == 2  # found by name when gullyseg.gully_class is absent


def test_gullyseg_key_is_read(tmp_path):
    own = {"input_max": 1023, "activation": "sigmoid", "gully_class": 0, "bands": [3, 2, 1]}
    path = om.make_fcn_model(tmp_path / "m.onnx", activation="none", metadata={"gullyseg": own})
    m = onnx_model.load_model(path)
    assert m.input_max == 1023 and m.activation == "sigmoid" and m.gully_class == 0 and m.bands == [3, 2, 1]
    assert m.input_scale(np.uint16) == 1023
    d = onnx_model.describe(path)
    assert d["bands"] == [3, 2, 1] and d["normalisation"]["input_max"] == 1023 and d["window"] == 256


def test_no_metadata_defaults(tmp_path):
    m = onnx_model.load_model(om.make_fcn_model(tmp_path / "m.onnx"))
    assert m.window == (256, 256) and m.overlap == 64 and m.threshold == 0.5 and not m.threshold_from_metadata
    assert m.gully_class == 0 and m.activation == "none" and m.bands is None
    assert m.input_scale(np.uint8) == 255
    with pytest.raises(GullySegError, match="input_max"):
        m.input_scale(np.uint16)  # 16-bit data needs the model to say how to scale it


def test_fixed_size_and_batch(tmp_path):
    m = onnx_model.load_model(om.make_fcn_model(tmp_path / "m.onnx", size=(96, 128), batch=2))
    assert m.window == (128, 96) and m.fixed_size and m.fixed_batch == 2


@pytest.mark.parametrize("maker, message", [
    (om.make_not_onnx, "not an ONNX model"),
    (om.make_vector_input_model, "not an image tensor"),
    (om.make_classifier_model, "per-pixel output"),
    (om.make_downsampling_model, "input's N, H and W"),
    (om.make_int_input_model, "float32"),
])
def test_bad_models_are_refused(tmp_path, maker, message):
    path = maker(tmp_path / "bad.onnx")
    with pytest.raises(GullySegError, match=message) as err:
        onnx_model.load_model(path)
    assert "MODEL" in str(err.value) and "bad.onnx" in str(err.value)


def test_missing_file_and_bad_metadata(tmp_path):
    with pytest.raises(GullySegError, match="does not exist"):
        onnx_model.load_model(tmp_path / "nope.onnx")
    path = om.make_fcn_model(tmp_path / "m.onnx", metadata={"gullyseg": {"activation": "relu"}})
    with pytest.raises(GullySegError, match="activation"):
        onnx_model.load_model(path)
    path = om.make_fcn_model(tmp_path / "d.onnx", metadata={"model_type": "Detector"})
    with pytest.raises(GullySegError, match="Detector"):
        onnx_model.load_model(path)
    path = om.make_fcn_model(tmp_path / "s.onnx", metadata={"standardization_mean": [0.5, 0.5]})
    with pytest.raises(GullySegError, match="2 values for 3 input channels"):
        onnx_model.load_model(path)


def _outputs(path, x):
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_set_model_metadata_roundtrip(tmp_path):
    src = om.make_fcn_model(tmp_path / "m.onnx", out_channels=2, activation="none",
                            metadata={"author_note": "keep me"})
    before = Path(src).read_bytes()
    out = tmp_path / "with_meta.onnx"
    onnx_model.set_model_metadata(
        src, output=str(out), class_names="background,gully", resolution=75, tile_size=128, tiles_overlap=10,
        mean="0.4,0.4,0.4", std="0.2,0.2,0.2", threshold=0.4, input_max=1023, activation="softmax",
        gully_class=1, bands="3,2,1")
    assert Path(src).read_bytes() == before  # the source is untouched when writing a copy
    meta = om.read_metadata(out)  # read with the onnx package, independent of GullySeg's reader
    assert meta["author_note"] == "keep me"
    assert json.loads(meta["model_type"]) == "Segmentor"
    assert json.loads(meta["class_names"]) == {"0": "background", "1": "gully"}
    assert json.loads(meta["resolution"]) == 75 and json.loads(meta["tile_size"]) == 128
    assert json.loads(meta["tiles_overlap"]) == 10 and json.loads(meta["seg_thresh"]) == 0.4
    assert json.loads(meta["standardization_mean"]) == [0.4] * 3
    assert json.loads(meta["gullyseg"]) == {"input_max": 1023, "activation": "softmax", "gully_class": 1,
                                            "bands": [3, 2, 1]}
    # same graph: identical outputs before and after
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(src, x), _outputs(out, x))
    m = onnx_model.load_model(out)
    assert m.activation == "softmax" and m.window == (128, 128) and m.input_max == 1023
    # update in place, keeping other keys; then clear
    onnx_model.set_model_metadata(str(out), threshold=0.6)
    meta = om.read_metadata(out)
    assert json.loads(meta["seg_thresh"]) == 0.6 and json.loads(meta["resolution"]) == 75
    onnx_model.set_model_metadata(str(out), clear=True, model_type=None)
    assert om.read_metadata(out) == {"author_note": "keep me"}
    assert not list(tmp_path.glob(".*partial*"))


def test_set_model_metadata_refuses(tmp_path):
    src = om.make_fcn_model(tmp_path / "m.onnx")
    other = tmp_path / "exists.onnx"
    other.write_bytes(b"x")
    with pytest.raises(GullySegError, match="already exists"):
        onnx_model.set_model_metadata(src, output=str(other), resolution=75)
    assert other.read_bytes() == b"x"
    with pytest.raises(GullySegError, match="not an ONNX"):
        onnx_model.set_model_metadata(om.make_not_onnx(tmp_path / "n.onnx"), resolution=75)
    with pytest.raises(GullySegError, match="gully class 3"):
        onnx_model.set_model_metadata(src, gully_class=3)  # checked after writing: nothing replaced
    assert om.read_metadata(src) == {}


def test_command_line_tool(tmp_path):
    src = om.make_fcn_model(tmp_path / "m.onnx")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "set_model_metadata.py"), src, "--resolution", "75",
                           "--input-max", "1023", "--bands", "3,2,1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    meta = om.read_metadata(src)
    assert json.loads(meta["resolution"]) == 75
    assert json.loads(meta["gullyseg"]) == {"input_max": 1023, "bands": [3, 2, 1]}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "set_model_metadata.py"), src, "--show"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and '"resolution_cm": 75.0' in done.stdout


def test_missing_onnxruntime_is_a_clear_error_and_the_provider_still_loads(tmp_path):
    """A plugin installed from the zip into a QGIS without onnxruntime: every algorithm still
    registers (onnxruntime is imported only when a model runs), and inference says what to install.
    Run in a fresh interpreter so that nothing is already imported."""
    path = om.make_fcn_model(tmp_path / "m.onnx")
    root = Path(__file__).resolve().parents[1]
    script = f"""
import sys
sys.modules["onnxruntime"] = None  # import onnxruntime -> ImportError
sys.path.insert(0, {str(root / "tools")!r})
import gullyseg_cli
gullyseg_cli.register_package()
from gullyseg.processing.provider import algorithm_classes
print(sorted(cls.ALG_ID for cls in algorithm_classes()))
from gullyseg.processing.engine import onnx_model
from gullyseg.processing.engine.errors import GullySegError

try:
    onnx_model.load_model({str(path)!r})
except GullySegError as exc:
    print("ERROR:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr
    assert "'segment'" in done.stdout and "'gridtiles'" in done.stdout and "'evaluate'" in done.stdout
    assert "ERROR: onnxruntime is not installed in QGIS's Python" in done.stdout


# --- out-of-range metadata is refused with the key and the value (issue 14, item 11) ----------------

@pytest.mark.parametrize("meta, match", [
    ({"tiles_overlap": 100}, "tiles_overlap=100"),
    ({"tiles_overlap": 250}, "tiles_overlap=250"),
    ({"resolution": 1e300}, "resolution=1e\\+300"),
    ({"resolution": 1e-300}, "resolution=1e-300"),
    ({"standardization_std": "[0.2, Infinity, 0.2]"}, "standardization_std=.*not finite"),
    ({"standardization_std": [0.2, 0, 0.2]}, "standardization_std=.*positive"),
    ({"standardization_std": [-0.2, 0.2, 0.2]}, "standardization_std=.*positive"),
    ({"standardization_mean": "[NaN, 0, 0]"}, "standardization_mean=.*not finite"),
    ({"tile_size": "1e400"}, "tile_size=1e400.*finite"),
    ({"tile_size": 100000}, "tile_size=100000.*outside"),
    ({"tile_size": 128.5}, "tile_size=128.5.*whole"),
    ({"seg_thresh": 1.5}, "seg_thresh=1.5"),
    ({"gullyseg": {"gully_class": 0.7}}, "gully_class=0.7.*whole"),
    ({"gullyseg": {"gully_class": True}}, "gully_class=True.*not a number"),
    ({"gullyseg": {"input_max": "1e400"}}, "input_max"),
    ({"gullyseg": {"context_margin": -3}}, "context_margin=-3"),
    ({"gullyseg": {"gully_output": [1]}}, "gully_output"),
    ({"class_names": {"0": "background", "2": "gully"}}, "class_names=.*ids 0..K-1"),
    ({"class_names": {"0": "background", "x": "gully"}}, "class_names=.*ids"),
    ({"class_names": {"0": "", "1": "gully"}}, "class_names=.*non-empty"),
    ({"class_names": {"0": 5, "1": "gully"}}, "class_names=.*non-empty"),
    ({"class_names": [{"0": "a"}, {"1": "b"}]}, "class_names=.*ids 0..K-1"),
    ({"class_names": {"0": "background", "1": "gully"}, "gullyseg": {"gully_class": 0}},
     "gully_class=0 points at the class named 'background'"),
    ({"class_names": {"0": "background", "1": "gully"}, "gullyseg": {"gully_class": 2}},
     "gully class 2 \\(gullyseg.gully_class\\) is not one of the 2 output channel"),
    ({"gullyseg": {"context_margin": 128}}, "context_margin=128 leaves no core"),
])
def test_out_of_range_metadata_is_refused(tmp_path, meta, match):
    path = om.make_fcn_model(tmp_path / "m.onnx", out_channels=2, activation="softmax", metadata=meta)
    with pytest.raises(GullySegError, match=match) as err:
        onnx_model.load_model(path)
    assert "MODEL" in str(err.value) and "m.onnx" in str(err.value)


def test_one_sigmoid_channel_named_background_gully_is_deepness_convention(tmp_path):
    """Deepness names one sigmoid channel [background, gully]: gully_class 0 is then the gully score."""
    path = om.make_fcn_model(tmp_path / "m.onnx", metadata={"class_names": {"0": "background", "1": "gully"},
                                                            "gullyseg": {"gully_class": 0}})
    m = onnx_model.load_model(path)
    assert m.gully_class == 0 and m.output_channels == 1


def test_set_model_metadata_writes_new_keys_and_refuses_contradictions(tmp_path):
    src = om.make_fcn_model(tmp_path / "m.onnx", out_channels=2, activation="none")
    onnx_model.set_model_metadata(src, context_margin=20, gully_output=0, class_names="background,gully")
    assert json.loads(om.read_metadata(src)["gullyseg"]) == {"context_margin": 20, "gully_output": 0}
    m = onnx_model.load_model(src)
    assert m.context_margin == 20 and m.gully_class == 1
    before = om.read_metadata(src)
    for kwargs, match in (({"gully_class": 0}, "class named 'background'"), ({"gully_class": 0.7}, "GULLY_CLASS"),
                          ({"context_margin": 200}, "no core"), ({"context_margin": 1e400}, "CONTEXT_MARGIN"),
                          ({"class_names": "background,"}, "empty class name"), ({"resolution": 1e300}, "RESOLUTION"),
                          ({"tile_size": 1e400}, "TILE_SIZE"), ({"std": "0.2,inf,0.2"}, "STD"),
                          ({"gully_output": "nope"}, "gully_output='nope'")):
        with pytest.raises(GullySegError, match=match):
            onnx_model.set_model_metadata(src, **kwargs)
        assert om.read_metadata(src) == before, kwargs
    # class names per head ('|' between heads), as Deepness writes them
    heads = om.make_two_head_model(tmp_path / "heads.onnx")
    onnx_model.set_model_metadata(heads, class_names="edge | background,gully")
    assert json.loads(om.read_metadata(heads)["class_names"]) == [{"0": "edge"}, {"0": "background", "1": "gully"}]
    assert onnx_model.load_model(heads).output_name == "seg"


# --- the protobuf fallback against the onnx package itself ----------------------------------------

def test_metadata_fallback_agrees_with_onnx(tmp_path, monkeypatch):
    import onnx

    from gullyseg.processing.engine import onnx_metadata

    src = om.make_fcn_model(tmp_path / "m.onnx", out_channels=2, activation="none",
                            metadata={"note": "é ünïcode", "class_names": {"0": "background", "1": "gully"}})
    buf = Path(src).read_bytes()
    assert onnx_metadata._proto_split(buf)[1] == om.read_metadata(src)
    with_onnx = onnx_metadata._serialise(src, buf, {"a": "1", "gullyseg": '{"context_margin": 3}'})
    monkeypatch.setattr(onnx_metadata, "_onnx", lambda: None)  # as without the onnx package
    assert onnx_metadata.read_metadata(src) == om.read_metadata(src)
    fallback = onnx_metadata._serialise(src, buf, {"a": "1", "gullyseg": '{"context_margin": 3}'})
    a, b = onnx.load_from_string(with_onnx), onnx.load_from_string(fallback)
    assert {p.key: p.value for p in a.metadata_props} == {p.key: p.value for p in b.metadata_props} == \
        {"a": "1", "gullyseg": '{"context_margin": 3}'}
    a_rest, b_rest = onnx.ModelProto(), onnx.ModelProto()
    a_rest.CopyFrom(a)
    b_rest.CopyFrom(b)
    del a_rest.metadata_props[:]
    del b_rest.metadata_props[:]
    assert a_rest.SerializeToString(deterministic=True) == b_rest.SerializeToString(deterministic=True)
    # the fallback writes a model that loads and runs (GullySeg's own check) with the new keys
    out = tmp_path / "fallback.onnx"
    onnx_model.set_model_metadata(src, output=str(out), context_margin=5)
    assert json.loads(om.read_metadata(out)["gullyseg"]) == {"context_margin": 5}
    with pytest.raises(GullySegError, match="not an ONNX"):
        onnx_metadata.read_metadata(om.make_not_onnx(tmp_path / "n.onnx"))
