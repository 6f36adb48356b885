"""The committed demo model: its metadata and record, and its quality on a synthetic scene that
training never saw, segmented with gullyseg:segment and scored with gullyseg:evaluate."""

import json
import os

import onnx
import pytest

from gullyseg.metadata import resource_path

MODEL = resource_path("models", "gullyseg_demo_unet.onnx")
RECORD = resource_path("models", "gullyseg_demo_unet.json")
UNSEEN_SEED = 4242  # neither a training seed, nor the record's held-out seed, nor the demo's


@pytest.fixture(scope="module")
def record():
    assert os.path.exists(MODEL), "the demo model is not committed (tools/train_demo_model.py makes it)"
    with open(RECORD, encoding="utf-8") as handle:
        return json.load(handle)


def test_model_file_metadata_and_size(record):
    size = os.path.getsize(MODEL)
    # an smp U-Net with the default encoder (mobilenet_v2, 6.6 M float32 parameters) made by trainmodel's
    # engine; the plugin zip carries it, so it must stay the light default, not e.g. resnet18 (57 MB)
    assert size < 30_000_000, f"the demo model is {size / 1e6:.1f} MB; keep it the default encoder's size"
    model = onnx.load(MODEL)  # independent of GullySeg's own reader
    meta = {p.key: p.value for p in model.metadata_props}
    for key in ("model_type", "class_names", "resolution", "tile_size", "standardization_mean",
                "standardization_std", "seg_thresh", "gullyseg"):
        assert key in meta, f"metadata key {key} is missing"
    own = json.loads(meta["gullyseg"])
    assert own["input_max"] == 255 and own["bands"] == [1, 2, 3]
    # class names are in output-channel order: the gully_class channel is the one named gully
    assert json.loads(meta["class_names"])[str(own["gully_class"])] == "gully"
    assert float(json.loads(meta["resolution"])) == 75.0  # cm per pixel: 0.75 m imagery
    inp = model.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.FLOAT and len(inp.shape.dim) == 4 and inp.shape.dim[1].dim_value == 3
    assert "SYNTHETIC" in model.doc_string and "not a model for real imagery" in model.doc_string


def test_training_record(record):
    assert "SYNTHETIC" in record["description"] and "not a model for real imagery" in record["description"]
    seeds = record["data"]["train_scene_seeds"]
    heldout = record["test"]["heldout_scene"]
    assert heldout["seed"] not in seeds and UNSEEN_SEED not in seeds
    assert heldout["MIOU"] >= 0.85
    for key in ("epochs_run", "minutes", "history"):
        assert record["training"][key]
    # the quality run: trained by trainmodel's engine on 2 CPU cores within 30 minutes (data steps
    # included), test split mIoU >= 0.90
    engine = record["training"]["engine_record"]
    assert engine["algorithm"] == "gullyseg:trainmodel" and engine["device"] == "cpu" and engine["threads"] == 2
    assert record["training"]["minutes"] + record["data"]["minutes"] <= 30
    assert record["test"]["split_tiles"]["miou"] >= 0.90
    assert record["validation"]["miou"] > 0.8
    assert any("augment" in step for step in record["data"]["steps"])
    assert any("rasterizelabels" in step for step in record["data"]["steps"])


def test_unseen_scene_miou_at_least_085(run_alg, scene_factory, tmp_path, record):
    """mIoU (mean over background and gully) >= 0.85 on a 1024 x 1024 scene of an unseen seed."""
    scene = scene_factory("unseen", width=1024, height=1024, seed=UNSEEN_SEED, nodata_edge=True)
    truth = str(scene).replace(".tif", "_mask.tif")
    seg = run_alg("segment", {"INPUT": str(scene), "MODEL": MODEL,
                              "OUTPUT_PROBABILITY": str(tmp_path / "prob.tif"),
                              "OUTPUT_MASK": str(tmp_path / "mask.tif")})
    ev = run_alg("evaluate", {"PREDICTION": seg["OUTPUT_MASK"], "REFERENCE": truth,
                              "OUTPUT_REPORT": str(tmp_path / "report.html")})
    assert ev["PIXELS_EVALUATED"] > 0.6 * 1024 * 1024  # the rest is outside the rotated footprint
    assert ev["MIOU"] >= 0.85, f"demo model mIoU {ev['MIOU']:.3f} on an unseen scene (gully IoU {ev['IOU_GULLY']:.3f})"
    assert ev["OA"] >= 0.89
    print(f"unseen scene: mIoU {ev['MIOU']:.4f}, gully IoU {ev['IOU_GULLY']:.4f}, OA {ev['OA']:.4f}")
