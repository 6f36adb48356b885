#!/usr/bin/env python3
"""Train GullySeg's demo model on a dataset that GullySeg itself makes from synthetic scenes.

    .venv/bin/pip install -r requirements-train.txt      # PyTorch (CPU), for this tool only
    .venv/bin/python tools/train_demo_model.py            # ~25 min on 2 CPU cores

What it does (everything recorded in resources/models/gullyseg_demo_unet.json):

1. Synthetic scenes (engine.synthetic, EPSG:32606, 0.75 m) with TRAIN_SEEDS; some with a
   rotated nodata edge. The held-out test scene (TEST_SEED) is never used for training,
   validation or model selection.
2. The dataset, with GullySeg's own steps (the engines behind the Processing algorithms):
   gridtiles (256 x 256 GeoTIFF tiles, index), a scripted screening (keep tiles with
   gully and a share of tiles without, so the model sees negatives: roads, field edges,
   shadows), rasterizelabels (the ground-truth gully polygons as VECTOR, pixel-centre rule),
   splitdataset (7:2:1 by source tile, stratified) and augment (train split, x5).
3. A small U-Net (4 levels, 16..128 channels, batch norm, ~0.5 M parameters) trained on CPU
   with BCE + Dice loss on the train split (plus random flips), the best epoch chosen on the
   val split's mIoU.
4. ONNX export (opset 17, input [N, 3, H, W] float32 with dynamic N, H, W (multiples of 16),
   output [N, 1, H, W] gully probability after a sigmoid) with GullySeg's metadata (Deepness
   keys and the ``gullyseg`` key, docs/models.md).
5. Test metrics: the dataset's test split (tiles of the training scenes that were not trained
   on) and the held-out scene, segmented with the exported model through the ONNX engine and
   scored with the evaluation engine (as ``gullyseg:segment`` and ``gullyseg:evaluate`` do).

The model is a demonstration trained on synthetic data, not a model for real imagery.
"""

import argparse
import datetime
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gullyseg_cli import ROOT, register_package

register_package()
from osgeo import gdal, ogr  # noqa: E402

from gullyseg.processing.engine import (  # noqa: E402
    augment,
    dataset,
    labelme,
    metrics,
    rasterize,
    split,
    synthetic,
    tiling,
)
from gullyseg.processing.engine.feedback import Feedback  # noqa: E402

MODEL_NAME = "gullyseg_demo_unet"
DEFAULT_OUT = ROOT / "resources" / "models" / f"{MODEL_NAME}.onnx"
TRAIN_SEEDS = (1001, 1002, 1003, 1004, 1005, 1006)
NODATA_EDGE_SEEDS = (1002, 1005)
TEST_SEED = 2024  # held-out scene: never seen in training or model selection
SCENE_SIZE = 2048
TILE = 256
NEGATIVE_KEEP = 0.5  # share of gully-free tiles the scripted screening keeps
CHANNELS = (16, 32, 64, 96)
BOTTLENECK = 128
CLASSES = ["background", "gully"]


class Log(Feedback):
    def __init__(self):
        self.t0 = time.monotonic()

    def info(self, message):
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", flush=True)

    def warn(self, message):
        print(f"[{time.monotonic() - self.t0:7.1f}s] WARNING: {message}", flush=True)


# --- 1 + 2: scenes and the dataset, with GullySeg's own steps ----------------------------------

def gully_polygons(gpkg):
    """(wkt, 'gully') of the ground-truth polygons (same CRS as the scene)."""
    ds = ogr.Open(str(gpkg))
    layer = ds.GetLayer(0)
    items = [(f.GetGeometryRef().ExportToWkt(), "gully") for f in layer if f.GetGeometryRef() is not None]
    ds = None
    return items


def scripted_screening(index_path, mask_path, seed, negative_keep):
    """Stand-in for the human screening: keep tiles that hold gully (from the ground-truth mask)
    and a seeded share of tiles without (negatives); reject the rest. Writes status to the index."""
    records, _ = dataset.read_index(index_path)
    mask = gdal.Open(str(mask_path))
    band = mask.GetRasterBand(1)
    rng = random.Random(seed)
    updates = {}
    for rec in records:
        x, y = rec["x_off"], rec["y_off"]
        w = min(rec["width"], mask.RasterXSize - x)
        h = min(rec["height"], mask.RasterYSize - y)
        arr = band.ReadAsArray(x, y, w, h)
        has_gully = bool(np.any(arr == 1))
        keep = has_gully or rng.random() < negative_keep
        updates[rec["tile_id"]] = {"status": dataset.STATUS_KEEP if keep else dataset.STATUS_REJECT}
    dataset.update_index(index_path, updates)
    return sum(1 for u in updates.values() if u["status"] == dataset.STATUS_KEEP), len(updates)


def build_dataset(work, seeds, size, log):
    """One dataset folder per scene; returns a list of dicts describing them."""
    built = []
    for seed in seeds:
        scene_dir = work / f"scene_{seed}"
        scene_dir.mkdir(parents=True, exist_ok=True)
        scene = scene_dir / f"train{seed}.tif"
        mask = scene_dir / f"train{seed}_mask.tif"
        gpkg = scene_dir / f"train{seed}_gullies.gpkg"
        if not scene.exists():
            synthetic.make_scene(str(scene), width=size, height=size, seed=seed, bands="rgb",
                                 nodata_edge=seed in NODATA_EDGE_SEEDS, mask_path=str(mask),
                                 gullies_path=str(gpkg))
        root = work / f"dataset_{seed}"
        if root.exists():
            shutil.rmtree(root)
        tiling.grid_tiles(str(scene), str(root), tile_size=TILE, fmt=tiling.FORMAT_GTIFF)
        index = root / dataset.INDEX_NAME
        kept, total = scripted_screening(index, mask, seed, NEGATIVE_KEEP)
        res = rasterize.rasterize_labels(str(index), vector=gully_polygons(gpkg),
                                         classes=labelme.parse_classes("gully=1"))
        sp = split.split_dataset(str(root), ratios="7:2:1", seed=seed)
        aug = augment.augment_dataset(str(root), splits=("train",), copies=4, seed=seed)
        log.info(f"scene {seed}: {total} tiles, {kept} kept, {res['mask_count']} masks, "
                 f"split {sp['counts']}, {aug['count']} augmented variants")
        built.append({"seed": seed, "scene_size": size, "nodata_edge": seed in NODATA_EDGE_SEEDS,
                      "tiles": total, "kept": kept, "masks": res["mask_count"], "split": sp["counts"],
                      "augmented": aug["count"], "root": str(root)})
    return built


def _read(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray()


def load_split(roots, which):
    """Images (N, 3, H, W) uint8 and masks (N, H, W) uint8 of one split, from the list files."""
    images, masks, names = [], [], []
    for root in roots:
        root = Path(root)
        listing = root / f"{which}.txt"
        ids = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        for sid in ids:
            img = root / which / "images" / f"{sid}.tif"
            msk = root / which / "masks" / f"{sid}.tif"
            images.append(_read(img))
            masks.append(_read(msk))
            names.append(sid)
    if not images:
        return np.zeros((0, 3, TILE, TILE), np.uint8), np.zeros((0, TILE, TILE), np.uint8), []
    return np.stack(images), np.stack(masks), names


# --- 3: the network ---------------------------------------------------------------------------

def build_model(torch, in_channels=3):
    """A light U-Net: one convolution at full resolution (the costly level on a CPU), two per
    level below, bilinear upsampling and skip connections; logits out."""
    nn = torch.nn

    def conv(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    def block(cin, cout):
        return nn.Sequential(*conv(cin, cout), *conv(cout, cout))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            chans = CHANNELS
            self.enc = nn.ModuleList([nn.Sequential(*conv(in_channels, chans[0]))])
            for cin, cout in zip(chans[:-1], chans[1:]):
                self.enc.append(block(cin, cout))
            self.bottom = block(chans[-1], BOTTLENECK)
            self.dec = nn.ModuleList()
            cin = BOTTLENECK
            for i, c in enumerate(reversed(chans)):
                last = i == len(chans) - 1
                self.dec.append(nn.Sequential(*conv(cin + c, c)) if last else block(cin + c, c))
                cin = c
            self.head = nn.Conv2d(chans[0], 1, 1)

        def forward(self, x):
            skips = []
            for enc in self.enc:
                x = enc(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for dec, skip in zip(self.dec, reversed(skips)):
                x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
                x = dec(torch.cat([x, skip], dim=1))
            return self.head(x)  # logits

    return UNet()


class WithSigmoid:
    """Wraps the trained network so the exported model outputs probabilities."""

    @staticmethod
    def make(torch, net):
        class Exported(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return torch.sigmoid(self.net(x))

        return Exported()


def normalise(images_uint8, mean, std):
    x = images_uint8.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)[None, :, None, None]) / np.asarray(std, np.float32)[None, :, None, None]


def channel_stats(images, masks):
    valid = masks != 255
    x = images.astype(np.float64) / 255.0
    mean = [float(x[:, c][valid].mean()) for c in range(x.shape[1])]
    std = [float(x[:, c][valid].std()) for c in range(x.shape[1])]
    return [round(m, 4) for m in mean], [round(s, 4) for s in std]


def loss_fn(torch, logits, target):
    """BCE + soft Dice on labelled pixels (255 = ignore)."""
    valid = (target != 255).float()
    y = (target == 1).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=valid, reduction="sum")
    bce = bce / valid.sum().clamp(min=1.0)
    p = torch.sigmoid(logits) * valid
    inter = (p * y).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum() + (y * valid).sum() + 1.0)
    return bce + dice


def confusion(pred, target):
    """2 x 2 confusion matrix (rows reference) of binary predictions, 255 ignored."""
    valid = target != 255
    code = target[valid].astype(np.int64) * 2 + pred[valid].astype(np.int64)
    return np.bincount(code, minlength=4).reshape(2, 2)


def predict_tiles(torch, net, images, mean, std, batch=16):
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(normalise(images[i:i + batch], mean, std))
            out.append((torch.sigmoid(net(x)).numpy()[:, 0] >= 0.5).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[2:], np.uint8)


def train(torch, x_train, y_train, x_val, y_val, mean, std, steps_per_epoch, batch, crop, lr, seed, log,
          minutes, max_epochs):
    """Train for a time budget (``minutes``): the learning rate follows a warm-up and a cosine
    decay over the budget's elapsed fraction, so a slower machine runs fewer steps but still
    anneals. The val split's mIoU after every epoch picks the weights that are kept."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_model(torch, x_train.shape[1])
    params = sum(p.numel() for p in net.parameters())
    log.info(f"U-Net {CHANNELS}+{BOTTLENECK}: {params} parameters; {len(x_train)} train, {len(x_val)} val samples; "
             f"budget {minutes} min")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60.0
    best = {"miou": -1.0}
    history = []
    started = time.monotonic()
    steps = 0
    order = rng.permutation(len(x_train))
    cursor = 0
    for epoch in range(max_epochs):
        net.train()
        losses = []
        for _ in range(steps_per_epoch):
            frac = min(1.0, (time.monotonic() - started) / budget)
            warm = min(1.0, (steps + 1) / 30.0)
            for group in opt.param_groups:
                group["lr"] = lr * warm * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * frac)))
            if cursor + batch > len(order):
                order, cursor = rng.permutation(len(x_train)), 0
            idx = order[cursor:cursor + batch]
            cursor += batch
            xs, ys = [], []
            for i in idx:
                oy, ox = rng.integers(0, TILE - crop + 1, size=2)
                xi = x_train[i, :, oy:oy + crop, ox:ox + crop]
                yi = y_train[i, oy:oy + crop, ox:ox + crop]
                if rng.random() < 0.5:
                    xi, yi = xi[:, :, ::-1], yi[:, ::-1]
                if rng.random() < 0.5:
                    xi, yi = xi[:, ::-1, :], yi[::-1, :]
                k = int(rng.integers(0, 4))
                xi, yi = np.rot90(xi, k, axes=(1, 2)), np.rot90(yi, k)
                xs.append(np.ascontiguousarray(xi))
                ys.append(np.ascontiguousarray(yi))
            x = torch.from_numpy(normalise(np.stack(xs), mean, std))
            y = torch.from_numpy(np.stack(ys)[:, None].astype(np.float32))
            opt.zero_grad()
            loss = loss_fn(torch, net(x), y)
            loss.backward()
            opt.step()
            steps += 1
            losses.append(float(loss.detach()))
        pred = predict_tiles(torch, net, x_val, mean, std)
        m = sum((confusion(p, t) for p, t in zip(pred, y_val)), np.zeros((2, 2), np.int64))
        s = metrics.scores(m)
        elapsed = time.monotonic() - started
        history.append({"epoch": epoch + 1, "steps": steps, "loss": round(float(np.mean(losses)), 4),
                        "val_miou": round(s["miou"], 4), "val_iou_gully": round(s["iou_gully"], 4),
                        "val_oa": round(s["oa"], 4), "minutes": round(elapsed / 60, 2)})
        log.info(f"epoch {epoch + 1}: {steps} steps, loss {np.mean(losses):.4f}, val mIoU {s['miou']:.4f}, "
                 f"gully IoU {s['iou_gully']:.4f}, OA {s['oa']:.4f} ({elapsed / 60:.1f} min)")
        if s["miou"] > best["miou"]:
            best = {"miou": s["miou"], "epoch": epoch + 1, "steps": steps, "scores": s, "matrix": m.tolist(),
                    "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
        if elapsed >= budget:
            break
    net.load_state_dict(best["state"])
    return net, best, history, params, time.monotonic() - started


# --- 4: ONNX export with GullySeg's metadata ---------------------------------------------------

DESCRIPTION = ("GullySeg demo U-Net trained on synthetic scenes only (tools/train_demo_model.py): "
               "a demonstration, not a model for real imagery.")


def write_model_metadata(path, mean, std):
    """Deepness keys + GullySeg's own key (docs/models.md), written with GullySeg's own engine.

    The network ends with a sigmoid: one output channel holding the gully probability
    (gully_class 0, activation none); 8-bit RGB bands 1, 2, 3 divided by 255, then mean/std.
    """
    from gullyseg.processing.engine import onnx_model

    return onnx_model.set_model_metadata(
        str(path), model_type="Segmentor", class_names="background,gully", resolution=75.0, tile_size=TILE,
        tiles_overlap=25, mean=mean, std=std, threshold=0.5, input_max=255, activation="none", gully_class=0,
        bands="1,2,3", clear=True, overwrite=True)


def export_onnx(torch, net, path, mean, std, opset=17):
    import onnx

    wrapped = WithSigmoid.make(torch, net).eval()
    x = torch.zeros(1, 3, TILE, TILE)
    tmp = str(path) + ".tmp.onnx"
    torch.onnx.export(
        wrapped, (x,), tmp, input_names=["input"], output_names=["output"], opset_version=opset,
        dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}}, dynamo=False,
    )
    model = onnx.load(tmp)
    os.remove(tmp)
    model.producer_name = "gullyseg tools/train_demo_model.py"
    model.doc_string = DESCRIPTION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return write_model_metadata(path, mean, std)


# --- 5: held-out evaluation --------------------------------------------------------------------

def evaluate_heldout(model_path, work, seed, size, log, runner=None):
    """Make the held-out scene, segment it with gullyseg:segment and score it with gullyseg:evaluate."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gullyseg_cli import QgisProcess

    folder = work / f"heldout_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    scene = folder / f"test{seed}.tif"
    mask = folder / f"test{seed}_mask.tif"
    if not scene.exists():
        synthetic.make_scene(str(scene), width=size, height=size, seed=seed, bands="rgb", nodata_edge=True,
                             mask_path=str(mask), gullies_path=str(folder / f"test{seed}_gullies.gpkg"))
    pred = folder / "pred_mask.tif"
    for p in (pred, folder / "pred_prob.tif"):
        if p.exists():
            os.remove(p)
    with (runner or QgisProcess()) as qp:
        seg, seg_s = qp.run("gullyseg:segment", {"INPUT": str(scene), "MODEL": str(model_path),
                                                 "OUTPUT_MASK": str(pred),
                                                 "OUTPUT_PROBABILITY": str(folder / "pred_prob.tif")})
        ev, ev_s = qp.run("gullyseg:evaluate", {"PREDICTION": str(pred), "REFERENCE": str(mask),
                                                "OUTPUT_REPORT": str(folder / "evaluation.html")})
    log.info(f"held-out scene seed {seed} ({size}x{size}): mIoU {ev['MIOU']:.4f}, gully IoU {ev['IOU_GULLY']:.4f}, "
             f"OA {ev['OA']:.4f} (segment {seg_s:.1f} s)")
    return {"seed": seed, "size": size, "nodata_edge": True, "MIOU": ev["MIOU"], "IOU_GULLY": ev["IOU_GULLY"],
            "OA": ev["OA"], "PRECISION": ev["PRECISION"], "RECALL": ev["RECALL"], "F1": ev["F1"],
            "measured_with": "gullyseg:segment + gullyseg:evaluate (qgis_process)"}


def _round(scores):
    return {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 4) if isinstance(v, float) else v)
            for k, v in scores.items() if k != "iou"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="the .onnx to write (record: same name, .json)")
    ap.add_argument("--work", default=None, help="work folder for scenes and datasets (default: a temp folder)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder")
    ap.add_argument("--seeds", default=",".join(map(str, TRAIN_SEEDS)), help="training scene seeds")
    ap.add_argument("--scene-size", type=int, default=SCENE_SIZE)
    ap.add_argument("--test-seed", type=int, default=TEST_SEED, help="held-out scene seed (never trained on)")
    ap.add_argument("--test-size", type=int, default=1024)
    ap.add_argument("--minutes", type=float, default=25.0, help="training time budget (minutes)")
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--steps-per-epoch", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=7, help="training seed (weights, batches)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a busy 2-core machine; more on an idle one)")
    ap.add_argument("--skip-heldout", action="store_true", help="do not run the held-out evaluation")
    ap.add_argument("--heldout-only", action="store_true",
                    help="only (re)run the held-out evaluation of --out and update its record")
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the pipeline (not a usable model)")
    args = ap.parse_args(argv)
    log = Log()
    out = Path(args.out).resolve()
    record_path = out.with_suffix(".json")
    work = Path(args.work or tempfile.mkdtemp(prefix="gullyseg_train_")).resolve()
    work.mkdir(parents=True, exist_ok=True)

    if args.heldout_only:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        record["test"]["heldout_scene"] = evaluate_heldout(out, work, args.test_seed, args.test_size, log)
        record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return 0

    try:
        import torch
    except ImportError:
        print("PyTorch is missing: .venv/bin/pip install -r requirements-train.txt", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.test_seed in seeds:
        ap.error("--test-seed must not be one of the training seeds")
    if args.quick:
        seeds, args.scene_size, args.minutes, args.steps_per_epoch = seeds[:2], 512, 0.3, 3
    started = time.monotonic()
    log.info(f"building the dataset from {len(seeds)} synthetic scenes of {args.scene_size} px in {work}")
    built = build_dataset(work, seeds, args.scene_size, log)
    data_minutes = (time.monotonic() - started) / 60
    roots = [b["root"] for b in built]
    x_train, y_train, _ = load_split(roots, "train")
    x_val, y_val, _ = load_split(roots, "val")
    x_test, y_test, _ = load_split(roots, "test")
    mean, std = channel_stats(x_train, y_train)
    log.info(f"train {len(x_train)} samples, val {len(x_val)}, test {len(x_test)}; mean {mean}, std {std}")
    net, best, history, params, train_seconds = train(
        torch, x_train, y_train, x_val, y_val, mean, std, args.steps_per_epoch, args.batch, args.crop, args.lr,
        args.seed, log, args.minutes, args.max_epochs)
    pred = predict_tiles(torch, net, x_test, mean, std)
    m_test = sum((confusion(p, t) for p, t in zip(pred, y_test)), np.zeros((2, 2), np.int64))
    s_test = metrics.scores(m_test)
    log.info(f"test split: mIoU {s_test['miou']:.4f}, gully IoU {s_test['iou_gully']:.4f}, OA {s_test['oa']:.4f}")

    record = {
        "model": out.name,
        "description": ("Demonstration model trained on SYNTHETIC scenes made by GullySeg's generator; it is not a "
                        "model for real imagery. Use it to try the workflow; train your own on real labelled tiles."),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": "tools/train_demo_model.py",
        "command": "python tools/train_demo_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": args.threads, "machine": platform.machine()},
        "data": {
            "generator": "processing/engine/synthetic.py make_scene (EPSG:32606, 0.75 m, RGB uint8)",
            "train_scene_seeds": seeds, "scene_size": args.scene_size,
            "nodata_edge_seeds": [s for s in seeds if s in NODATA_EDGE_SEEDS],
            "steps": ["gridtiles (256 px, GeoTIFF)",
                      f"scripted screening: keep tiles with gully + {int(NEGATIVE_KEEP * 100)} % of the others",
                      "rasterizelabels (VECTOR = ground-truth gully polygons, pixel-centre rule)",
                      "splitdataset 7:2:1 by source tile, stratified, seed = scene seed",
                      "augment train split, 4 copies (hflip, vflip, rot90/180/270, brightness), seed = scene seed"],
            "scenes": [{k: v for k, v in b.items() if k != "root"} for b in built],
            "samples": {"train": int(len(x_train)), "val": int(len(x_val)), "test": int(len(x_test))},
            "minutes": round(data_minutes, 2),
        },
        "network": {"architecture": "U-Net", "encoder_channels": list(CHANNELS), "bottleneck": BOTTLENECK,
                    "parameters": int(params), "normalisation": {"divide_by": 255, "mean": mean, "std": std}},
        "training": {"epochs_run": len(history), "steps_per_epoch": args.steps_per_epoch,
                     "steps_run": history[-1]["steps"], "best_epoch": best["epoch"], "best_steps": best["steps"],
                     "time_budget_minutes": args.minutes, "batch": args.batch, "crop": args.crop,
                     "optimizer": "AdamW, warm-up + cosine decay over the time budget", "lr": args.lr,
                     "loss": "BCE + soft Dice (ignore 255)", "online_augmentation": "random flips and 90-degree turns",
                     "seed": args.seed, "minutes": round(train_seconds / 60, 2), "history": history},
        "validation": {"split": "val tiles of the training scenes", **_round(best["scores"]),
                       "confusion_matrix": best["matrix"]},
        "test": {"split_tiles": {"split": "test tiles of the training scenes (never trained on)", **_round(s_test),
                                 "confusion_matrix": m_test.tolist()}},
        "metric_convention": metrics.CONVENTION,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    record["onnx_metadata"] = export_onnx(torch, net, out, mean, std)
    record["onnx"] = {"opset": 17, "input": "input [N, 3, H, W] float32 (H, W multiples of 16)",
                      "output": "output [N, 1, H, W] gully probability (sigmoid)",
                      "bytes": out.stat().st_size}
    record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {record_path}")
    if not args.skip_heldout:
        try:
            record["test"]["heldout_scene"] = evaluate_heldout(out, work, args.test_seed, args.test_size, log)
        except Exception as exc:  # the model and record are written; report and go on
            log.warn(f"held-out evaluation failed: {exc}")
            record["test"]["heldout_scene"] = {"error": str(exc)[:500]}
        record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if not args.keep_work and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
