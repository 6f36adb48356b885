"""gullyseg:trainmodel's engine: a split dataset folder in, a deployable ONNX model out.

Order of work (every check before the first training step, nothing written on error or cancel):
torch present -> device -> dataset (split, lists, files, band count, mask values; train mean/std)
-> architecture exportable at the tile size -> network (weights, fine-tuning, resume) -> learning
rate (range test for 'auto') -> epochs (best val mIoU kept; checkpoint each epoch if asked) ->
test split scored with evaluate's conventions (metrics.scores) -> ONNX export + check -> report.
"""

import datetime
import hashlib
import math
import os
import platform
import time
import uuid

import numpy as np

from ....metadata import VERSION
from .. import metrics
from ..errors import GullySegError
from ..feedback import Feedback
from . import data, models
from .deps import require_torch

CHECKPOINT_FORMAT = "gullyseg-checkpoint/1"
DEFAULTS = {
    "architecture": models.DEFAULT_ARCHITECTURE, "encoder": models.DEFAULT_ENCODER, "encoder_weights": "none",
    "epochs": 30, "batch_size": 8, "learning_rate": "auto", "loss": "ce+dice", "class_weights": False,
    "early_stopping": 0, "augment": True, "seed": 42, "device": "auto", "threads": 0,
}
REPORT_TILES = 12


def card_checksum(root) -> str:
    """sha256 of dataset.json and split.json (what the model was trained from)."""
    h = hashlib.sha256()
    for name in ("dataset.json", "split.json"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path, "rb") as handle:
                h.update(handle.read())
    return h.hexdigest()


def _atomic_torch_save(obj, path):
    torch, _ = require_torch()
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial-{uuid.uuid4().hex[:8]}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, what="RESUME") -> dict:
    torch, _ = require_torch()
    if not os.path.isfile(str(path)):
        raise GullySegError(f"{what}: the checkpoint '{path}' does not exist.")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds
        raise GullySegError(f"{what}: cannot read the checkpoint '{path}': {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise GullySegError(f"{what}: '{path}' is not a GullySeg training checkpoint (written by OUTPUT_CHECKPOINT).")
    return ckpt


def _check_outputs(output_model, output_checkpoint, output_report):
    if not output_model:
        raise GullySegError("OUTPUT_MODEL: give the .onnx file to write.")
    if not str(output_model).lower().endswith(".onnx"):
        raise GullySegError(f"OUTPUT_MODEL: '{output_model}' must end in .onnx.")
    if output_checkpoint and not str(output_checkpoint).lower().endswith((".pt", ".pth")):
        raise GullySegError(f"OUTPUT_CHECKPOINT: '{output_checkpoint}' must end in .pt.")
    if output_report and not str(output_report).lower().endswith((".html", ".htm")):
        raise GullySegError(f"OUTPUT_REPORT: '{output_report}' must end in .html.")


def _parse_lr(value):
    if value is None or str(value).strip().lower() in ("", "auto"):
        return "auto"
    try:
        lr = float(value)
    except ValueError:
        raise GullySegError(f"LEARNING_RATE: '{value}' is neither 'auto' nor a number such as 0.001.") from None
    if not 0 < lr < 10:
        raise GullySegError(f"LEARNING_RATE: {lr} must be > 0 (e.g. 0.001) or 'auto'.")
    return lr


def train_model(dataset_root, output_model, architecture=None, encoder=None, encoder_weights="none",
                fine_tune_from=None, freeze_encoder=False, epochs=30, batch_size=8, learning_rate="auto",
                loss="ce+dice", class_weights=False, early_stopping=0, augment=True, seed=42, device="auto",
                threads=0, output_checkpoint=None, resume=None, output_report=None, max_minutes=None,
                feedback=None) -> dict:
    """Train, select on val, score on test, export. Returns a dict of results (see the algorithm).

    max_minutes: an optional time budget for the epochs (tools/train_demo_model.py); no new epoch
    starts once it is spent.
    """
    feedback = feedback or Feedback()
    started = time.monotonic()
    require_torch()  # says what to install before anything else
    from . import loop, report

    _check_outputs(output_model, output_checkpoint, output_report)
    lr = _parse_lr(learning_rate)
    _check_numbers(epochs, batch_size, loss, loop.LOSSES)
    dev = loop.resolve_device(device)
    ckpt, architecture, encoder, base = _network_choice(architecture, encoder, resume, fine_tune_from)

    spec, checksum, sizes = _read_dataset(dataset_root, ckpt, resume, feedback)
    n_params, dynamic = models.check_exportable(architecture, encoder, spec.bands, spec.tile_size)
    threads = int(threads or 0) or max(1, os.cpu_count() or 1)
    loop.seed_everything(seed, threads)
    weights = encoder_weights or "none"
    if ckpt or base:
        weights = "none"  # the checkpoint's weights replace them
    net = models.build(architecture, encoder, spec.bands, weights)
    if base:
        _load_base(net, base, fine_tune_from, (architecture, encoder, spec.bands), feedback)
    cw = loop.class_weights_from_counts(spec.class_counts) if class_weights else None
    if ckpt:
        lr = ckpt["config"]["learning_rate"]
        cw = ckpt["config"]["class_weights"]
    feedback.info(f"{models.label(architecture)} / {encoder} ({n_params / 1e6:.2f} M parameters, weights {weights}), "
                  f"device {dev} ({threads} thread(s)), loss {loop.LOSS_LABELS[loss]}"
                  f"{', class weights ' + str([round(w, 3) for w in cw]) if cw else ''}, seed {seed}.")

    train_src = data.TileSource(spec, "train", batch_size)
    val_src = data.TileSource(spec, "val", batch_size) if sizes["val"] else None
    test_src = data.TileSource(spec, "test", batch_size) if sizes["test"] else None
    train_batches = train_src.batches(seed)
    val_batches = val_src.batches() if val_src else None
    if not val_src:
        feedback.warn("The val split is empty: the best epoch is chosen on the train loss.")
    if lr == "auto":
        net.to(dev)
        lr = loop.lr_range_test(net, train_batches, loop.make_loss(loss, cw, dev), dev,
                                steps=min(30, max(10, 2 * train_batches.count())), feedback=feedback)
    config = {
        "architecture": architecture, "encoder": encoder, "encoder_weights": str(encoder_weights or "none"),
        "bands": spec.bands, "tile_size": spec.tile_size, "input_max": spec.input_max, "mean": spec.mean,
        "std": spec.std, "learning_rate": lr, "loss": loss, "class_weights": cw, "batch_size": int(batch_size),
        "epochs": int(epochs), "seed": int(seed), "augment": bool(augment), "early_stopping": int(early_stopping),
        "freeze_encoder": bool(freeze_encoder), "dataset": spec.root, "dataset_checksum": checksum,
        "fine_tune_from": str(fine_tune_from) if fine_tune_from else None,
    }

    def on_epoch(state):
        if output_checkpoint:
            _atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": config, "state": state,
                                "best_model": state["best"]["state"]}, output_checkpoint)

    fb_train = feedback.scaled(3, 92)
    result = loop.fit(net, train_batches, (lambda: val_batches(0)) if val_batches else None, int(epochs), lr=lr,
                      loss=loss, class_weights=cw, early_stopping=int(early_stopping), augment=bool(augment),
                      seed=int(seed), device=dev, freeze_encoder=bool(freeze_encoder), feedback=fb_train,
                      state=ckpt["state"] if ckpt else None, on_epoch=on_epoch,
                      max_seconds=60.0 * float(max_minutes) if max_minutes else None)
    net.load_state_dict(result.best_state)
    net.to("cpu").eval()

    # test split: evaluate's conventions (metrics.scores) on the confusion matrix of the best epoch's weights
    feedback.info(f"Scoring the best epoch ({result.best_epoch}) on the test split ...")
    matrix, tiles_for_report = _score_test(net, test_src, feedback)
    test = metrics.scores(matrix) if matrix.sum() else None
    val = metrics.scores(np.asarray(result.best_matrix)) if result.best_matrix is not None else None
    if test:
        feedback.info(f"Test: OA {test['oa']:.4f}, mIoU {test['miou']:.4f}, gully IoU {test['iou_gully']:.4f}, "
                      f"F1 {test['f1']:.4f}.")
    else:
        feedback.warn("The test split is empty: no test numbers.")
    record = _training_record(spec, checksum, sizes, config, result, matrix, test, val, n_params, dev, threads,
                              started)
    feedback.check_cancelled()
    check_ids = (val_src or test_src or train_src).ids[:4]
    check_batch = np.stack([(val_src or test_src or train_src).read(sid)[0] for sid in check_ids])
    diff, dynamic = data_export(net, output_model, spec, record, check_batch, dynamic, feedback)
    record["onnx_check_max_abs_diff"] = diff
    report_paths = None
    if output_report:
        report_paths = report.write_training_report(output_report, record, result.history, matrix,
                                                    tiles_for_report, spec)
        feedback.info(f"Report: {report_paths[0]} (per-epoch CSV {report_paths[1]}).")
    feedback.progress(100.0)
    return {
        "model": os.path.abspath(output_model), "checkpoint": os.path.abspath(output_checkpoint)
        if output_checkpoint else None, "report": report_paths[0] if report_paths else None,
        "history": result.history, "best_epoch": int(result.best_epoch), "test": test, "val": val,
        "test_matrix": matrix, "record": record, "net": net, "spec": spec,
    }


def _network_choice(architecture, encoder, resume, fine_tune_from):
    """(resume checkpoint, architecture, encoder, fine-tune base): a resumed run keeps its network."""
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt:
        cfg = ckpt["config"]
        architecture, encoder = cfg["architecture"], cfg["encoder"]
    architecture = models.parse_architecture(architecture or models.DEFAULT_ARCHITECTURE)
    encoder = models.parse_encoder(encoder or models.DEFAULT_ENCODER)
    base = load_checkpoint(fine_tune_from, "FINE_TUNE_FROM") if fine_tune_from else None
    return ckpt, architecture, encoder, base


def _read_dataset(dataset_root, ckpt, resume, feedback):
    """The dataset's spec (checked; the checkpoint's scaling when resuming), its checksum and split sizes."""
    feedback.info(f"Reading the dataset {dataset_root} ...")
    spec = data.open_dataset(dataset_root)
    data.check_dataset(spec, feedback.scaled(0, 3))
    checksum = card_checksum(spec.root)
    if ckpt and ckpt["config"].get("dataset_checksum") != checksum:
        raise GullySegError(f"RESUME: the checkpoint '{resume}' was written for another dataset (or another split "
                            f"of it) than '{spec.root}'; resume with the dataset it was trained on.")
    if ckpt:  # the scaling the network was trained with
        spec.mean, spec.std = ckpt["config"]["mean"], ckpt["config"]["std"]
    sizes = spec.sizes()
    feedback.info(
        f"Dataset: {sizes['train']} train, {sizes['val']} val, {sizes['test']} test samples of {spec.tile_size} px, "
        f"{spec.bands} band(s) {spec.data_type} (/ {spec.input_max:g}); train mean {spec.mean}, std {spec.std}; "
        f"gully pixel share {spec.class_counts[1] / max(sum(spec.class_counts), 1):.4f}.")
    return spec, checksum, sizes


def _training_record(spec, checksum, sizes, config, result, matrix, test, val, n_params, dev, threads, started):
    """The training record (ONNX metadata and report): what was trained, from what, how, and the scores."""
    torch, smp = require_torch()
    return {
        "gullyseg_version": VERSION, "algorithm": "gullyseg:trainmodel",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dataset": {"folder": spec.root, "checksum_sha256": checksum, "split_sizes": sizes,
                    "card_source": (spec.card.get("source") or {}).get("scene_name")},
        "architecture": config["architecture"], "architecture_label": models.label(config["architecture"]),
        "encoder": config["encoder"],
        "encoder_weights": config["encoder_weights"], "fine_tune_from": config["fine_tune_from"],
        "freeze_encoder": config["freeze_encoder"], "parameters": int(n_params),
        "epochs_asked": config["epochs"], "epochs_run": len(result.history), "best_epoch": int(result.best_epoch),
        "early_stopped": result.stopped_early, "batch_size": config["batch_size"],
        "learning_rate": config["learning_rate"],
        "loss": config["loss"], "class_weights": config["class_weights"], "augment_on_the_fly": config["augment"],
        "seed": config["seed"],
        "device": str(dev), "threads": threads, "torch": torch.__version__, "smp": smp.__version__,
        "python": platform.python_version(), "duration_s": round(time.monotonic() - started, 1),
        "input": {"bands": spec.bands, "data_type": spec.data_type, "input_max": spec.input_max,
                  "mean": spec.mean, "std": spec.std},
        "val": _clean(val), "test": _clean(test), "test_confusion_matrix": matrix.tolist(),
        "metric_convention": "gullyseg:evaluate (mIoU over background and gully, 255 ignored)",
    }


def _check_numbers(epochs, batch_size, loss, losses):
    if int(epochs) < 1:
        raise GullySegError(f"EPOCHS: {epochs} must be at least 1.")
    if int(batch_size) < 1:
        raise GullySegError(f"BATCH_SIZE: {batch_size} must be at least 1.")
    if loss not in losses:
        raise GullySegError(f"LOSS: '{loss}' is not one of {', '.join(losses)}.")


def _load_base(net, base, fine_tune_from, arch_encoder_bands, feedback):
    """FINE_TUNE_FROM: the base checkpoint's best weights, when it is the same network."""
    bcfg = base["config"]
    if (bcfg["architecture"], bcfg["encoder"], bcfg["bands"]) != arch_encoder_bands:
        raise GullySegError(
            f"FINE_TUNE_FROM: '{fine_tune_from}' is a {bcfg['architecture']} / {bcfg['encoder']} with "
            f"{bcfg['bands']} band(s); choose the same ARCHITECTURE and ENCODER, on a dataset with that band "
            "count.")
    net.load_state_dict(base["best_model"])
    feedback.info(f"Fine-tuning from {fine_tune_from} (best epoch {base['state']['best']['epoch']}).")


def _score_test(net, test_src, feedback):
    """The test split's confusion matrix of ``net`` (thresholded at 0.5) and the first tiles for the report."""
    import torch

    from . import export, loop

    tiles_for_report = []
    matrix = np.zeros((2, 2), dtype=np.int64)
    if test_src:
        for i, sid in enumerate(test_src.ids):
            if i % 8 == 0:
                feedback.check_cancelled()
            x, y, raw = test_src.read(sid)
            prob = export.torch_probabilities(net, x[None])[0, 1]
            pred = (prob >= 0.5).astype(np.int64)
            matrix += loop.confusion(torch.from_numpy(pred), torch.from_numpy(y)).numpy()
            if len(tiles_for_report) < REPORT_TILES:
                tiles_for_report.append((sid, raw, y, pred))
    return matrix, tiles_for_report


def _clean(s):
    return None if s is None else {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()}


def data_export(net, output_model, spec, record, check_batch, dynamic, feedback) -> tuple:
    from . import export

    return export.export_model(net, output_model, spec, record, check_batch, dynamic=dynamic, feedback=feedback)
