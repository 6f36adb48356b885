"""gullyseg:trainmodel and the training engine: real training on tiny data (64 px tiles, CPU).

Skipped as a whole, with the reason, where PyTorch / segmentation-models-pytorch are absent
(e.g. Python 3.13 without wheels); test_training_deps.py checks the plugin still loads then.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (optional training dependency: pip install -r requirements-train.txt)")
pytest.importorskip(
    "segmentation_models_pytorch",
    reason="segmentation-models-pytorch is not installed (optional: pip install -r requirements-train.txt)")

import dataset_builder  # noqa: E402
import training_data  # noqa: E402
from osgeo import gdal  # noqa: E402

from gullyseg.processing.engine import metrics, onnx_model  # noqa: E402
from gullyseg.processing.engine.errors import Cancelled, GullySegError  # noqa: E402
from gullyseg.processing.engine.feedback import RecordingFeedback  # noqa: E402
from gullyseg.processing.engine.training import data, export, loop, models, trainer  # noqa: E402

LOOP_PY = Path(__file__).resolve().parents[1] / "processing" / "engine" / "training" / "loop.py"
FAST = {"epochs": 2, "batch_size": 4, "learning_rate": "0.003", "seed": 1, "threads": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 256 x 256 synthetic scene cut into 16 tiles of 64 px, masks from its ground truth, split 6:2:2."""
    return training_data.tiny_dataset(tmp_path_factory.mktemp("training"))


@pytest.fixture(scope="module")
def trained(tiny, provider_module):
    """One trainmodel run through processing.run (2 epochs), with checkpoint and report; enum
    parameters by name, as batch rows, scripts and qgis_process give them."""
    out = tiny["base"] / "trained"
    out.mkdir()
    params = {"DATASET": str(tiny["root"]), "ARCHITECTURE": "unet", "ENCODER": models.DEFAULT_ENCODER,
              "LOSS": "ce+dice", "EPOCHS": 2, "BATCH_SIZE": 4, "LEARNING_RATE": "0.003", "SEED": 1,
              "THREADS": 1, "DEVICE": "cpu", "OUTPUT_MODEL": str(out / "model.onnx"),
              "OUTPUT_CHECKPOINT": str(out / "model.pt"), "OUTPUT_REPORT": str(out / "report.html")}
    results = provider_module("trainmodel", params)
    return {"results": results, "out": out, "params": params}


_KEEP = []


def _ensure_provider():
    """The provider, registered when absent (checked on every use, as conftest.ensure_provider does)."""
    from qgis.core import QgsApplication

    from gullyseg.processing.provider import GullySegProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("gullyseg") is None:
        prov = GullySegProvider()
        assert registry.addProvider(prov)
        _KEEP[:] = [prov]


@pytest.fixture(scope="module")
def provider_module(qgis_app, qgis_processing):
    """processing.run for module-scoped fixtures."""
    from qgis import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    def _run(alg_id, params, feedback=None):
        _ensure_provider()
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        return processing.run(f"gullyseg:{alg_id}", params, feedback=feedback or QgsProcessingFeedback(),
                              context=context)

    return _run


def _arrays(root, n=4, which="train"):
    spec = data.check_dataset(data.open_dataset(root))
    src = data.TileSource(spec, which, 4)
    items = [src.read(i) for i in src.ids]
    order = sorted(range(len(items)), key=lambda k: -float((items[k][1] == 1).mean()))[:n]  # tiles with gully
    return spec, np.stack([items[k][0] for k in order]), np.stack([items[k][1] for k in order])


# --- the loop ---------------------------------------------------------------------------------

def test_unet_overfits_four_tiles_and_loss_decreases(tiny):
    _, x, y = _arrays(tiny["root"])
    assert (y == 1).any() and (y == 0).any()
    loop.seed_everything(0, 1)
    net = models.build("unet", models.DEFAULT_ENCODER, 3)
    res = loop.train_on_arrays(net, x, y, x, y, epochs=60, batch_size=4, lr=3e-3, augment=False, seed=0,
                               threads=1)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.25 * losses[0]
    assert res.best_miou >= 0.9
    # the loop's mIoU is evaluate's (metrics.scores) on the same matrix
    assert res.best_miou == pytest.approx(metrics.scores(np.asarray(res.best_matrix))["miou"], abs=1e-12)


def test_same_seed_same_weights_on_cpu(tiny):
    _, x, y = _arrays(tiny["root"], n=4)
    states = []
    for _ in range(2):
        loop.seed_everything(5, 1)
        net = models.build("unet", models.DEFAULT_ENCODER, 3)
        loop.train_on_arrays(net, x, y, epochs=2, batch_size=2, lr=1e-3, seed=5, threads=1)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_loop_miou_is_evaluates_convention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.integers(0, 1000, size=(2, 2))
        assert loop.miou(m) == pytest.approx(metrics.scores(m)["miou"], abs=1e-12)
    m = np.array([[50, 0], [0, 0]])  # no gully in reference nor prediction: NaN class left out
    assert loop.miou(m) == metrics.scores(m)["miou"] == 1.0


def test_loop_runs_without_gdal(tmp_path):
    """loop.py loaded by path in a Python where GDAL cannot be imported (a GPU box without GDAL)."""
    code = f"""
import importlib.util, sys
sys.modules['osgeo'] = None
spec = importlib.util.spec_from_file_location('loop', {str(LOOP_PY)!r})
loop = importlib.util.module_from_spec(spec); spec.loader.exec_module(loop)
import numpy as np, torch
net = torch.nn.Conv2d(3, 2, 3, padding=1)
x = np.random.RandomState(0).rand(4, 3, 16, 16).astype('float32'); y = (x[:, 0] > .5).astype('int64')
r = loop.train_on_arrays(net, x, y, x, y, epochs=2, batch_size=2, lr=0.01, seed=0, threads=1)
print('OK', len(r.history), 0 <= r.best_miou <= 1)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK 2 True" in out.stdout


# --- the algorithm ----------------------------------------------------------------------------

def test_trainmodel_outputs_and_metadata_round_trip(tiny, trained):
    res, out = trained["results"], trained["out"]
    assert res["BEST_EPOCH"] in (1, 2)
    for key in ("TEST_OA", "TEST_MIOU", "TEST_IOU_GULLY", "TEST_F1"):
        assert 0.0 <= res[key] <= 1.0 or np.isnan(res[key])
    assert res["OUTPUT_MODEL"] == str(out / "model.onnx")
    from gullyseg.processing.algorithms import trainmodel

    assert trainmodel.trained_models()[0] == str(out / "model.onnx")  # offered to the dock's inference tab
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt", "report.csv", "report.html"]
    csv_rows = (out / "report.csv").read_text().strip().splitlines()
    assert csv_rows[0].startswith("epoch,train_loss,val_loss,val_miou") and len(csv_rows) == 3
    html_text = (out / "report.html").read_text()
    assert html_text.count("data:image/png;base64,") == 2 and "Confusion matrix" in html_text

    model = onnx_model.load_model(str(out / "model.onnx"), threads=1)
    spec = data.check_dataset(data.open_dataset(tiny["root"]))
    assert model.channels == 3 and model.output_channels == 2 and model.gully_class == 1
    assert model.activation == "none" and model.input_max == 255 and model.tile_size == 64
    assert model.bands == [1, 2, 3] and model.class_names == ["background", "gully"]
    np.testing.assert_allclose(model.mean, spec.mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.std, spec.std, rtol=0, atol=1e-6)
    assert model.resolution_cm == pytest.approx(75.0)
    record = export.read_training_record(str(out / "model.onnx"))
    assert record["architecture"] == "unet" and record["encoder"] == models.DEFAULT_ENCODER
    assert record["dataset"]["split_sizes"] == {"train": 10, "val": 3, "test": 3}
    assert record["dataset"]["checksum_sha256"] == trainer.card_checksum(str(tiny["root"]))
    assert record["best_epoch"] == res["BEST_EPOCH"] and record["epochs_run"] == 2
    assert record["seed"] == 1 and record["device"] == "cpu"
    assert record["test"]["miou"] == pytest.approx(res["TEST_MIOU"])
    import onnx

    proto = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]


def test_segment_runs_the_exported_model_like_pytorch(tiny, trained, provider_module):
    """gullyseg:segment over the scene (no overlap: one window per tile) equals PyTorch on the same windows."""
    out = trained["out"]
    ckpt = trainer.load_checkpoint(str(out / "model.pt"))
    net = models.build("unet", models.DEFAULT_ENCODER, 3)
    net.load_state_dict(ckpt["best_model"])
    net.eval()
    prob_path = out.parent / "segment_prob.tif"
    mask_path = out.parent / "segment_mask.tif"
    provider_module("segment", {"INPUT": str(tiny["scene"]), "MODEL": str(out / "model.onnx"), "OVERLAP": 0,
                                "OUTPUT_PROBABILITY": str(prob_path), "OUTPUT_MASK": str(mask_path)})
    seg_prob = gdal.Open(str(prob_path)).ReadAsArray().astype(np.float64)
    seg_mask = gdal.Open(str(mask_path)).ReadAsArray()
    scene = gdal.Open(str(tiny["scene"])).ReadAsArray()
    mean = np.asarray(ckpt["config"]["mean"], np.float64)
    std = np.asarray(ckpt["config"]["std"], np.float64)
    a = (1.0 / (255.0 * std)).astype(np.float32).reshape(-1, 1, 1)
    b = (-mean / std).astype(np.float32).reshape(-1, 1, 1)
    windows = []
    for y0 in range(0, 256, 64):
        for x0 in range(0, 256, 64):
            x = scene[:, y0:y0 + 64, x0:x0 + 64].astype(np.float32) * a + b
            windows.append((y0, x0, x))
    probs = export.torch_probabilities(net, np.stack([w[2] for w in windows]))[:, 1]
    ref = np.zeros((256, 256))
    for (y0, x0, _), p in zip(windows, probs):
        ref[y0:y0 + 64, x0:x0 + 64] = p
    # segment stores probabilities as uint8 x 254 (docs/models.md)
    assert np.max(np.abs(seg_prob / 254.0 - ref)) <= 0.5 / 254.0 + 1e-4
    decided = np.abs(ref - 0.5) > 1e-3
    assert np.array_equal(seg_mask[decided], (ref[decided] >= 0.5).astype(seg_mask.dtype))


def test_resume_continues_from_the_saved_epoch(tiny, trained, tmp_path):
    ckpt_path = trained["out"] / "model.pt"
    before = trainer.load_checkpoint(str(ckpt_path))
    assert before["state"]["epoch"] == 2
    fb = RecordingFeedback()
    res = trainer.train_model(str(tiny["root"]), str(tmp_path / "resumed.onnx"), epochs=3, batch_size=4, seed=1,
                              threads=1, resume=str(ckpt_path), output_checkpoint=str(tmp_path / "resumed.pt"),
                              feedback=fb)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    assert res["history"][:2] == before["state"]["history"]
    assert any("Resuming after epoch 2" in m for m in fb.infos)
    assert trainer.load_checkpoint(str(tmp_path / "resumed.pt"))["state"]["epoch"] == 3
    assert export.read_training_record(str(tmp_path / "resumed.onnx"))["epochs_run"] == 3


def test_fine_tune_with_a_frozen_encoder(tiny, trained, tmp_path):
    base_path = trained["out"] / "model.pt"
    base = trainer.load_checkpoint(str(base_path))["best_model"]
    res = trainer.train_model(str(tiny["root"]), str(tmp_path / "ft.onnx"), fine_tune_from=str(base_path),
                              freeze_encoder=True, output_checkpoint=str(tmp_path / "ft.pt"),
                              **{**FAST, "epochs": 1})
    tuned = trainer.load_checkpoint(str(tmp_path / "ft.pt"))["best_model"]
    encoder = [k for k in base if k.startswith("encoder.")]
    decoder = [k for k in base if not k.startswith("encoder.") and base[k].is_floating_point()]
    assert encoder and all(torch.equal(base[k], tuned[k]) for k in encoder)  # weights and BN statistics
    assert any(not torch.equal(base[k], tuned[k]) for k in decoder)
    assert res["record"]["fine_tune_from"] == str(base_path) and res["record"]["freeze_encoder"] is True
    with pytest.raises(GullySegError, match=f"FINE_TUNE_FROM: .* is a unet / {models.DEFAULT_ENCODER}"):
        trainer.train_model(str(tiny["root"]), str(tmp_path / "fpn.onnx"), architecture="fpn",
                            fine_tune_from=str(base_path), **FAST)
    assert not (tmp_path / "fpn.onnx").exists()


# --- architectures ----------------------------------------------------------------------------

def _encoder_for(arch):
    return "mit_b0" if arch == "segformer" else models.DEFAULT_ENCODER


@pytest.mark.slow
@pytest.mark.parametrize("arch", models.ARCHITECTURE_KEYS)
def test_every_architecture_trains_and_exports_or_is_refused(arch, tiny, tmp_path):
    spec, x, y = _arrays(tiny["root"], n=2)
    encoder = _encoder_for(arch)
    try:
        _, dynamic = models.check_exportable(arch, encoder, 3, 64)
    except GullySegError as exc:
        assert "refused" in str(exc) and models.label(arch) in str(exc)
        assert arch == "pspnet"  # adaptive pooling (docs/training.md); the others must export
        return
    loop.seed_everything(0, 1)
    net = models.build(arch, encoder, 3)
    res = loop.train_on_arrays(net, x, y, epochs=1, batch_size=2, lr=1e-3, seed=0, threads=1)
    assert np.isfinite(res.history[0]["train_loss"])
    net.load_state_dict(res.best_state)
    diff, _ = export.export_model(net, tmp_path / f"{arch}.onnx", spec, {"architecture": arch}, x, dynamic=dynamic)
    assert diff < export.MAX_PROB_DIFF
    assert onnx_model.load_model(str(tmp_path / f"{arch}.onnx"), threads=1).output_channels == 2


def test_refused_architecture_writes_nothing(tiny, tmp_path):
    with pytest.raises(GullySegError, match="PSPNet .* refused: it cannot be exported to ONNX"):
        trainer.train_model(str(tiny["root"]), str(tmp_path / "m.onnx"), architecture="pspnet",
                            output_report=str(tmp_path / "r.html"), output_checkpoint=str(tmp_path / "c.pt"), **FAST)
    assert list(tmp_path.iterdir()) == []


def test_offered_choices_match_the_algorithm():
    from gullyseg.processing.algorithms import trainmodel

    assert trainmodel.ARCHITECTURES == list(models.ARCHITECTURE_KEYS)
    assert trainmodel.ENCODERS == list(models.ENCODERS)
    assert trainmodel.DEFAULT_ENCODER == models.DEFAULT_ENCODER
    assert sorted(trainmodel.LOSSES) == sorted(loop.LOSSES) and trainmodel.DEVICES == list(loop.DEVICES)


# --- weights ----------------------------------------------------------------------------------

def test_imagenet_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-gullyseg-hf-home")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-gullyseg-torch-home")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read at import: the env var alone is too late
    with pytest.raises(GullySegError, match="ENCODER_WEIGHTS.*imagenet.*ENCODER_WEIGHTS=none"):
        models.build("unet", "resnet18", 3, "imagenet")


def test_local_encoder_weights_file(tmp_path):
    torch.manual_seed(3)
    donor = models.build("unet", "resnet18", 3)
    torch.save(donor.encoder.state_dict(), tmp_path / "enc.pt")
    net = models.build("unet", "resnet18", 3, str(tmp_path / "enc.pt"))
    assert all(torch.equal(v, donor.encoder.state_dict()[k]) for k, v in net.encoder.state_dict().items())
    with pytest.raises(GullySegError, match="matches only 0"):
        models.build("unet", "efficientnet-b0", 3, str(tmp_path / "enc.pt"))


# --- bad inputs -------------------------------------------------------------------------------

def _copy(tiny, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny["root"], root)
    return root


def _no_split(root):
    os.remove(root / "split.json")


def _empty_train(root):
    (root / "train.txt").write_text("")


def _bad_mask(root):
    sid = (root / "train.txt").read_text().split()[0]
    path = root / "masks" / f"{sid}.tif"
    ds = gdal.Open(str(path), gdal.GA_Update)
    arr = ds.GetRasterBand(1).ReadAsArray()
    arr[0, 0] = 7
    ds.GetRasterBand(1).WriteArray(arr)
    ds = None
    return str(path)


def _band_mismatch(root):
    card = json.loads((root / "dataset.json").read_text())
    card["source"]["bands"] = 4
    (root / "dataset.json").write_text(json.dumps(card))


@pytest.mark.parametrize("breaker, message", [
    (_no_split, "has no split .*splitdataset"),
    (_empty_train, "train list .* is empty"),
    (_bad_mask, r"holds the value\(s\) \[7\]"),
    (_band_mismatch, "has 3 band\\(s\\), but the dataset card says 4"),
    (None, "DEVICE: 'cuda' was asked for"),
])
def test_bad_input_is_an_error_and_writes_nothing(breaker, message, tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    named = breaker(root) if breaker else None
    if breaker is None and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: 'cuda' is not absent here")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GullySegError, match=message) as info:
        trainer.train_model(str(root), str(out / "m.onnx"), output_checkpoint=str(out / "c.pt"),
                            output_report=str(out / "r.html"), device="cuda" if breaker is None else "cpu", **FAST)
    if isinstance(named, str):
        assert named in str(info.value)
    assert list(out.iterdir()) == []


def test_cancel_stops_between_batches_and_writes_nothing(tiny, tmp_path):
    fb = RecordingFeedback(cancel_after=8)  # a few dataset-check and batch progress calls
    with pytest.raises(Cancelled):
        trainer.train_model(str(tiny["root"]), str(tmp_path / "m.onnx"), output_report=str(tmp_path / "r.html"),
                            feedback=fb, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_data_reads_what_the_contract_lists(tiny):
    spec = data.check_dataset(data.open_dataset(tiny["root"]))
    for which in ("train", "val", "test"):
        listed = (tiny["root"] / f"{which}.txt").read_text().split()
        assert spec.ids(which) == listed
    sid = spec.ids("train")[0]
    x, y, raw = data.TileSource(spec, "train", 2).read(sid)
    ref = gdal.Open(str(tiny["root"] / "images" / f"{sid}.tif")).ReadAsArray()
    assert np.array_equal(raw, ref) and x.shape == (3, 64, 64) and x.dtype == np.float32
    assert set(np.unique(y)) <= {0, 1, 255}
    # mean/std of the train split, independently with numpy over every train tile
    imgs = np.stack([gdal.Open(str(tiny["root"] / "images" / f"{s}.tif")).ReadAsArray() for s in spec.ids("train")])
    np.testing.assert_allclose(spec.mean, (imgs / 255.0).mean(axis=(0, 2, 3)), atol=1e-5)



def test_in_a_graphical_model(tiny, tmp_path, qgis_processing):
    """splitdataset -> trainmodel -> comparemodels chained through their outputs, as the Modeler builds it."""
    from qgis import processing
    from qgis.core import (
        QgsApplication,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProject,
    )

    from gullyseg import compat

    _ensure_provider()
    root = tmp_path / "ds"
    dataset_builder.build_dataset(root, tiny["scene"], tile_size=64)
    src = QgsProcessingModelChildParameterSource
    graph = QgsProcessingModelAlgorithm("train_in_a_model", "tests")
    graph.addModelParameter(QgsProcessingParameterFile("dataset", "Dataset", behavior=compat.FILE_FOLDER),
                            QgsProcessingModelParameter("dataset"))
    steps = {
        "split": ("gullyseg:splitdataset", {"DATASET": src.fromModelParameter("dataset"),
                                            "RATIOS": src.fromStaticValue("6:2:2"), "SEED": src.fromStaticValue(1)}),
        "train": ("gullyseg:trainmodel", {"DATASET": src.fromChildOutput("split", "OUTPUT_DIR"),
                                          "EPOCHS": src.fromStaticValue(1), "BATCH_SIZE": src.fromStaticValue(4),
                                          "LEARNING_RATE": src.fromStaticValue("0.001"),
                                          "THREADS": src.fromStaticValue(1), "DEVICE": src.fromStaticValue("cpu")}),
        "compare": ("gullyseg:comparemodels", {"MODELS": src.fromChildOutput("train", "OUTPUT_MODEL"),
                                               "DATASET": src.fromChildOutput("split", "OUTPUT_DIR")}),
    }
    for child_id, (alg_id, sources) in steps.items():
        child = QgsProcessingModelChildAlgorithm(alg_id)
        child.setChildId(child_id)
        for name, source in sources.items():
            child.addParameterSources(name, [source])
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        for definition in alg.parameterDefinitions():  # the rest at their defaults, as the Modeler sets them
            if not definition.isDestination() and definition.name() not in child.parameterSources() \
                    and definition.defaultValue() is not None:
                child.addParameterSources(definition.name(), [src.fromStaticValue(definition.defaultValue())])
        outputs = {}
        for name, child_output in {"train": [("model", "OUTPUT_MODEL")],
                                   "compare": [("table", "OUTPUT_TABLE")]}.get(child_id, []):
            out = QgsProcessingModelOutput(name, name)
            out.setChildId(child_id)
            out.setChildOutputName(child_output)
            outputs[name] = out
        child.setModelOutputs(outputs)
        graph.addChildAlgorithm(child)
    graph.updateDestinationParameters()
    ok, problems = graph.validate()
    assert ok, problems
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    res = processing.run(graph, {"dataset": str(root), "train:model": str(tmp_path / "m.onnx"),
                                 "compare:table": str(tmp_path / "t.csv")},
                         feedback=QgsProcessingFeedback(), context=context)
    assert res["train:model"] == str(tmp_path / "m.onnx")
    rows = (tmp_path / "t.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1] == "m.onnx"
    assert export.read_training_record(str(tmp_path / "m.onnx"))["dataset"]["folder"] == str(root)
