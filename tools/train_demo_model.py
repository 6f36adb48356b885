#!/usr/bin/env python3
"""Train GullySeg's demo model with gullyseg:trainmodel's engine on a dataset GullySeg makes itself.

    .venv/bin/pip install -c constraints.txt -r requirements-train.txt   # PyTorch + smp (CPU)
    .venv/bin/python tools/train_demo_model.py --minutes 30 --out demo_output/demo_model.onnx

A thin user of the engines behind the Processing algorithms (the same code paths as the Toolbox):

1. Six synthetic scenes (engine.synthetic, EPSG:32606, 0.75 m; TRAIN_SEEDS), placed side by side
   (``origin``) and mosaicked in a VRT, so that one dataset folder holds them all; two have a
   rotated nodata edge. The held-out scene (TEST_SEED) is never used for training, validation or
   model selection.
2. The dataset: gridtiles (256 px GeoTIFF tiles, index), a scripted screening (keep the tiles
   with gully and a seeded share of the others, as negatives), rasterizelabels (the ground-truth
   gully polygons as VECTOR), splitdataset (7:2:1 by source tile, stratified), augment (train x4).
3. trainmodel's engine (processing/engine/training/trainer.py): ARCHITECTURE/ENCODER (default
   U-Net / mobilenet_v2), cross-entropy + Dice, flips/turns on the fly, the best epoch on val mIoU
   within a time budget (--minutes: the cosine decay spans the epochs that fit it), test split
   scored with evaluate's conventions, ONNX export with the metadata and training record, checked
   against PyTorch.
4. The held-out scene segmented with gullyseg:segment and scored with gullyseg:evaluate
   (qgis_process), as a user would.

The record (same name, .json) holds the data steps, the engine's training record and the
held-out numbers. The model is a demonstration trained on synthetic data, not a model for real
imagery. The committed demo model (resources/models/gullyseg_demo_unet.onnx, 26.5 MB) and its
record were made by ``--minutes 26`` (docs/training.md gives the run); --out pointing there
replaces them.
"""

import argparse
import datetime
import json
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
    rasterize,
    split,
    synthetic,
    tiling,
)
from gullyseg.processing.engine.feedback import Feedback  # noqa: E402

MODEL_NAME = "gullyseg_demo_unet"
DEFAULT_OUT = ROOT / "demo_output" / "trained_demo_model.onnx"
TRAIN_SEEDS = (1001, 1002, 1003, 1004, 1005, 1006)
NODATA_EDGE_SEEDS = (1002, 1005)
TEST_SEED = 2024  # held-out scene: never seen in training or model selection
SCENE_SIZE = 2048
TILE = 256
NEGATIVE_KEEP = 0.5  # share of gully-free tiles the scripted screening keeps
PIXEL = 0.75
ORIGIN = (420000.0, 7010000.0)


class Log(Feedback):
    def __init__(self):
        self.t0 = time.monotonic()
        self.last = -1.0

    def info(self, message):
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", flush=True)

    def warn(self, message):
        print(f"[{time.monotonic() - self.t0:7.1f}s] WARNING: {message}", flush=True)

    def progress(self, percent):
        if percent - self.last >= 5.0 or percent >= 100.0:
            self.last = percent
            print(f"[{time.monotonic() - self.t0:7.1f}s] {percent:5.1f} %", flush=True)


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


def build_dataset(work, seeds, size, log, tile=TILE):
    """One dataset folder from a VRT mosaic of the scenes; returns (root, description)."""
    scenes, masks, polygons = [], [], []
    for k, seed in enumerate(seeds):
        folder = work / f"scene_{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        scene, mask, gpkg = folder / f"train{seed}.tif", folder / f"train{seed}_mask.tif", folder / "gullies.gpkg"
        if not scene.exists():
            synthetic.make_scene(str(scene), width=size, height=size, seed=seed, bands="rgb",
                                 nodata_edge=seed in NODATA_EDGE_SEEDS, mask_path=str(mask), gullies_path=str(gpkg),
                                 origin=(ORIGIN[0] + k * size * PIXEL, ORIGIN[1]))
        scenes.append(str(scene))
        masks.append(str(mask))
        polygons += gully_polygons(gpkg)
    mosaic = work / "mosaic.vrt"
    mosaic_mask = work / "mosaic_mask.vrt"
    gdal.BuildVRT(str(mosaic), scenes)
    gdal.BuildVRT(str(mosaic_mask), masks)
    root = work / "dataset"
    if root.exists():
        shutil.rmtree(root)
    tiling.grid_tiles(str(mosaic), str(root), tile_size=tile, fmt=tiling.FORMAT_GTIFF)
    index = root / dataset.INDEX_NAME
    kept, total = scripted_screening(index, mosaic_mask, seeds[0], NEGATIVE_KEEP)
    res = rasterize.rasterize_labels(str(index), vector=polygons, classes=labelme.parse_classes("gully=1"))
    sp = split.split_dataset(str(root), ratios="7:2:1", seed=seeds[0])
    aug = augment.augment_dataset(str(root), splits=("train",), copies=4, seed=seeds[0])
    log.info(f"dataset: {total} tiles, {kept} kept, {res['mask_count']} masks, split {sp['counts']}, "
             f"{aug['count']} augmented variants")
    return root, {"tiles": total, "kept": kept, "masks": res["mask_count"], "split": sp["counts"],
                  "augmented": aug["count"]}


DESCRIPTION = ("Demonstration model trained on SYNTHETIC scenes made by GullySeg's generator; it is not a model "
               "for real imagery. Use it to try the workflow; train your own on real labelled tiles.")


def mark_synthetic(path):
    """Say in the ONNX file itself (doc string, shown by Netron and GullySeg's model panel) that the
    model only knows synthetic scenes. Written to a temporary file and renamed."""
    import onnx

    proto = onnx.load(str(path))
    if DESCRIPTION not in proto.doc_string:
        proto.doc_string = f"{proto.doc_string}. {DESCRIPTION}".lstrip(". ")
    tmp = f"{path}.doc.partial"
    onnx.save(proto, tmp)
    os.replace(tmp, str(path))


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="the .onnx to write (record: same name, .json)")
    ap.add_argument("--work", default=None, help="work folder for scenes and the dataset (default: a temp folder)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder")
    ap.add_argument("--seeds", default=",".join(map(str, TRAIN_SEEDS)), help="training scene seeds")
    ap.add_argument("--scene-size", type=int, default=SCENE_SIZE)
    ap.add_argument("--tile", type=int, default=TILE, help="tile size (a multiple of 32)")
    ap.add_argument("--test-seed", type=int, default=TEST_SEED, help="held-out scene seed (never trained on)")
    ap.add_argument("--test-size", type=int, default=1024)
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget (minutes)")
    ap.add_argument("--epochs", type=int, default=1000, help="at most this many epochs")
    ap.add_argument("--architecture", default="unet")
    ap.add_argument("--encoder", default=None, help="default: the engine's default encoder")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", default="auto")
    ap.add_argument("--seed", type=int, default=7, help="training seed (weights, batches)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
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

    from gullyseg.processing.engine.training import deps, trainer

    if deps.missing():
        print(deps.missing(), file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.test_seed in seeds:
        ap.error("--test-seed must not be one of the training seeds")
    if args.quick:
        seeds, args.scene_size, args.minutes, args.epochs = seeds[:2], 512, 0.5, 1
    started = time.monotonic()
    log.info(f"building the dataset from {len(seeds)} synthetic scenes of {args.scene_size} px in {work}")
    root, built = build_dataset(work, seeds, args.scene_size, log, args.tile)
    data_minutes = (time.monotonic() - started) / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    res = trainer.train_model(
        str(root), str(out), architecture=args.architecture, encoder=args.encoder, epochs=args.epochs,
        batch_size=args.batch, learning_rate=args.lr, seed=args.seed, threads=args.threads, augment=True,
        output_report=str(out.with_suffix(".html")), max_minutes=args.minutes, feedback=log)
    engine_record = res["record"]
    mark_synthetic(out)
    record = {
        "model": out.name,
        "description": DESCRIPTION,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": "tools/train_demo_model.py (gullyseg:trainmodel's engine)",
        "command": "python tools/train_demo_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
        "data": {
            "generator": "processing/engine/synthetic.py make_scene (EPSG:32606, 0.75 m, RGB uint8)",
            "train_scene_seeds": seeds, "scene_size": args.scene_size,
            "nodata_edge_seeds": [s for s in seeds if s in NODATA_EDGE_SEEDS],
            "steps": ["scenes side by side, one VRT mosaic", f"gridtiles ({args.tile} px, GeoTIFF)",
                      f"scripted screening: keep tiles with gully + {int(NEGATIVE_KEEP * 100)} % of the others",
                      "rasterizelabels (VECTOR = ground-truth gully polygons, pixel-centre rule)",
                      "splitdataset 7:2:1 by source tile, stratified",
                      "augment train split, 4 copies (hflip, vflip, rot90/180/270, brightness)"],
            "dataset": built, "minutes": round(data_minutes, 2),
        },
        "network": {"architecture": engine_record["architecture_label"], "encoder": engine_record["encoder"],
                    "parameters": engine_record["parameters"], "normalisation": engine_record["input"]},
        "training": {"epochs_run": engine_record["epochs_run"], "best_epoch": engine_record["best_epoch"],
                     "time_budget_minutes": args.minutes, "minutes": round(engine_record["duration_s"] / 60, 2),
                     "history": res["history"], "engine_record": engine_record},
        "validation": {"split": "val tiles of the training scenes", **(engine_record["val"] or {})},
        "test": {"split_tiles": {"split": "test tiles of the training scenes (never trained on)",
                                 **(engine_record["test"] or {})}},
        "metric_convention": engine_record["metric_convention"],
    }
    record_path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    log.info(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {record_path}")
    if not args.skip_heldout:
        try:
            record["test"]["heldout_scene"] = evaluate_heldout(out, work, args.test_seed, args.test_size, log)
        except Exception as exc:  # the model and record are written; report and go on
            log.warn(f"held-out evaluation failed: {exc}")
            record["test"]["heldout_scene"] = {"error": str(exc)[:500]}
        record_path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    if not args.keep_work and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
