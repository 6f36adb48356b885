"""gullyseg:comparemodels' engine: several ONNX models, the same test data, one ranked table.

Every model runs with gullyseg:segment's engine (inference.predict_tiles on the tiles of a dataset's
test split, or inference.segment_raster over one scene) and is scored by gullyseg:evaluate's engine
(metrics.evaluate_folders / evaluate_rasters) on the masks it produced, so the numbers are those
evaluate reports. No torch needed. Rows are ranked by mIoU (then gully IoU), best first.
"""

import csv
import html
import math
import os
import shutil
import tempfile
import time

import numpy as np
from osgeo import gdal

from .. import gdalio, inference, metrics, onnx_model
from ..errors import GullySegError
from ..feedback import Feedback
from . import data

CSV_FIELDS = ("rank", "model", "architecture", "encoder", "parameters", "oa", "miou", "iou_gully", "precision",
              "recall", "f1", "megapixels_per_s", "pixels", "path")


def parse_models(value) -> list:
    """A list of paths, or one ';'-separated string (the command line)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(";")
    out = [str(p).strip() for p in items if str(p).strip()]
    for p in out:
        if not os.path.isfile(p):
            raise GullySegError(f"MODELS: the model file '{p}' does not exist.")
        if not p.lower().endswith(".onnx"):
            raise GullySegError(f"MODELS: '{p}' is not an .onnx file.")
    if not out:
        raise GullySegError("MODELS: give at least one .onnx model.")
    return out


def _describe(path):
    meta = onnx_model.read_metadata(path)
    rec = {}
    if "gullyseg_training" in meta:
        import json

        try:
            rec = json.loads(meta["gullyseg_training"])
        except ValueError:
            rec = {}
    return {"architecture": rec.get("architecture_label") or "unknown", "encoder": rec.get("encoder") or "",
            "parameters": rec.get("parameters") or ""}


def _write_mask(path, prob, threshold, ref_ds):
    """uint8 mask (1 gully, 0 background, 255 no prediction) on the reference tile's grid."""
    mask = np.where(np.isnan(prob), 255, prob >= threshold).astype(np.uint8)
    drv = gdal.GetDriverByName("GTiff")
    out = drv.Create(path, mask.shape[1], mask.shape[0], 1, gdal.GDT_Byte)
    gt = ref_ds.GetGeoTransform(can_return_null=True)
    if gt:
        out.SetGeoTransform(gt)
    if ref_ds.GetProjection():
        out.SetProjection(ref_ds.GetProjection())
    out.GetRasterBand(1).WriteArray(mask)
    out = None


def _score_dataset(model_path, spec, work, threads, feedback):
    model = onnx_model.load_model(model_path, threads=threads)
    pred_dir = os.path.join(work, "pred")
    ref_dir = os.path.join(work, "ref")
    os.makedirs(pred_dir)
    os.makedirs(ref_dir)
    seconds, pixels = 0.0, 0
    ids = spec.ids("test")
    for i, sid in enumerate(ids):
        feedback.check_cancelled()
        s = spec.samples[sid]
        ds = gdal.Open(s["image"])
        bands, _ = inference.resolve_bands(model, ds.RasterCount)
        raw = ds.ReadAsArray(band_list=bands).reshape(len(bands), ds.RasterYSize, ds.RasterXSize)
        valid = gdalio.valid_mask(ds, 0, 0, ds.RasterXSize, ds.RasterYSize)
        t0 = time.perf_counter()
        prob = inference.predict_tiles(model, [raw], valid=[valid])[0]
        seconds += time.perf_counter() - t0
        pixels += raw.shape[1] * raw.shape[2]
        _write_mask(os.path.join(pred_dir, f"{sid}.tif"), prob, model.threshold, ds)
        os.symlink(s["mask"], os.path.join(ref_dir, f"{sid}.tif"))
        ds = None
        feedback.progress(100.0 * (i + 1) / len(ids))
    result = metrics.evaluate_folders(pred_dir, ref_dir, feedback=Feedback())
    return result, pixels, seconds


def _score_scene(model_path, scene, reference, work, threads, feedback):
    model = onnx_model.load_model(model_path, threads=threads)
    mask = os.path.join(work, "mask.tif")
    t0 = time.perf_counter()
    res = inference.segment_raster(scene, model, output_mask=mask, feedback=feedback)
    seconds = time.perf_counter() - t0
    result = metrics.evaluate_rasters(mask, reference, feedback=Feedback())
    return result, res["pixels_processed"], seconds


def compare_models(models, dataset_root=None, scene=None, reference=None, output_table=None, output_report=None,
                   threads=None, feedback=None) -> list:
    """Score every model on the same data; returns the ranked rows (dicts, best first)."""
    feedback = feedback or Feedback()
    paths = parse_models(models)
    if dataset_root and (scene or reference):
        raise GullySegError("Give either DATASET (its test split is used) or SCENE and REFERENCE, not both.")
    spec = None
    if dataset_root:
        spec = data.open_dataset(dataset_root)
        if not spec.ids("test"):
            raise GullySegError(f"DATASET: the test list of '{spec.root}' is empty; nothing to compare on.")
    elif scene or reference:
        if not (scene and reference):
            raise GullySegError("SCENE and REFERENCE go together: a scene and its reference mask on the same grid.")
    else:
        raise GullySegError("DATASET: give a split dataset folder (its test split), or SCENE and REFERENCE.")
    for key, path in (("OUTPUT_TABLE", output_table), ("OUTPUT_REPORT", output_report)):
        if path and os.path.abspath(path) in {os.path.abspath(p) for p in paths}:
            raise GullySegError(f"{key}: '{path}' is one of the models.")
    rows = []
    for k, path in enumerate(paths):
        feedback.info(f"Model {k + 1}/{len(paths)}: {path}")
        work = tempfile.mkdtemp(prefix="gullyseg_compare_")
        try:
            sub = feedback.scaled(100.0 * k / len(paths), 100.0 * (k + 1) / len(paths))
            if spec is not None:
                result, pixels, seconds = _score_dataset(path, spec, work, threads, sub)
            else:
                result, pixels, seconds = _score_scene(path, scene, reference, work, threads, sub)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        s = result.scores
        row = {"model": os.path.basename(path), "path": os.path.abspath(path), **_describe(path),
               "oa": s["oa"], "miou": s["miou"], "iou_gully": s["iou_gully"], "precision": s["precision"],
               "recall": s["recall"], "f1": s["f1"], "pixels": s["pixels"],
               "megapixels_per_s": (pixels / 1e6 / seconds) if seconds > 0 else float("nan"),
               "matrix": result.matrix.tolist()}
        feedback.info(f"  mIoU {s['miou']:.4f}, gully IoU {s['iou_gully']:.4f}, OA {s['oa']:.4f}, "
                      f"{row['megapixels_per_s']:.2f} Mpx/s")
        rows.append(row)

    def key(r):
        return tuple(-v if not math.isnan(v) else math.inf for v in (r["miou"], r["iou_gully"]))

    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    if output_table:
        with gdalio.atomic_output(output_table, overwrite=True, what="OUTPUT_TABLE", side_suffixes=[]) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                w = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    if output_report:
        with gdalio.atomic_output(output_report, overwrite=True, what="OUTPUT_REPORT", side_suffixes=[]) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(_html(rows, spec, scene, reference))
    return rows


def _html(rows, spec, scene, reference):
    where = (f"the test split of {html.escape(spec.root)} ({len(spec.ids('test'))} tiles)" if spec is not None
             else f"the scene {html.escape(str(scene))} against {html.escape(str(reference))}")
    head = "".join(f"<th>{c}</th>" for c in CSV_FIELDS[:-1])
    body = ""
    for r in rows:
        cells = "".join(f"<td>{r[c]:.4f}</td>" if isinstance(r[c], float) else f"<td>{html.escape(str(r[c]))}</td>"
                        for c in CSV_FIELDS[:-1])
        body += f"<tr>{cells}</tr>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>GullySeg model comparison</title>"
            "<style>td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}</style></head><body>"
            f"<h1>Model comparison</h1><p>{len(rows)} models on {where}, run with gullyseg:segment's engine and "
            "scored with gullyseg:evaluate's conventions, best mIoU first.</p>"
            f"<table><tr>{head}</tr>{body}</table><p>{html.escape(metrics.CONVENTION)}</p></body></html>\n")
