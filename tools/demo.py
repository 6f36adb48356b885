#!/usr/bin/env python3
"""GullySeg's whole workflow, once, on a synthetic scene: what `make demo` runs.

    .venv/bin/python tools/demo.py --out demo_output            # ~2048 x 2048 px scene
    .venv/bin/python tools/demo.py --out /tmp/demo --quick       # a small scene, for a quick check

Every step runs through QGIS's batch runner ``qgis_process.bin`` with the plugin enabled in a
private profile, exactly as a user batches it (the command lines are saved in
<out>/commands.sh):

 1. gullyseg:syntheticscene   a demo scene in EPSG:32606 (WGS 84 / UTM 6N, 0.75 m) with its truth
 2. gullyseg:gridtiles        256 x 256 tiles (GeoTIFF + JPEG) and the tile index
 3. screening                 a scripted stand-in for the person at the dock: keep the tiles that
                              contain gully (read from the ground-truth mask), reject the others;
                              the status is written to the index as the dock does
 4. gullyseg:exportlabelme    Labelme JSON for the kept tiles, prefilled with the ground-truth
                              polygons (standing in for the annotators' finished work)
 5. gullyseg:rasterizelabels  the Labelme files -> one mask per kept tile, on the tile's grid
 6. gullyseg:splitdataset     train/val/test 6:2:2 by source tile
 7. gullyseg:augment          4 variants per train tile
 8. gullyseg:segment          the demo model over the whole scene (probability, mask, polygons)
 9. gullyseg:evaluate         the predicted mask against the ground-truth mask (mIoU, OA ...)

Then it prints a summary, writes <out>/summary.json, a picture of the result next to the truth
(<out>/demo_comparison.png) and a QGIS project with the layers styled (<out>/gullyseg_demo.qgz),
which `make qgis` opens.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gullyseg_cli import ROOT, QgisProcess, QgisProcessError, register_package

MARKER = ".gullyseg_demo"  # marks a folder this script made (so a re-run may replace it)
MODEL = ROOT / "resources" / "models" / "gullyseg_demo_unet.onnx"
STYLES = ROOT / "resources" / "styles"
PROJECT_NAME = "gullyseg_demo.qgz"
DEMO_SEED = 7  # not a seed the demo model was trained on (see resources/models/gullyseg_demo_unet.json)


def prepare_output(out, overwrite):
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        if (out / MARKER).exists() or overwrite:
            shutil.rmtree(out)
        else:
            raise SystemExit(
                f"demo: '{out}' exists and was not made by the demo; choose another --out or pass --overwrite."
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by tools/demo.py; `make demo` replaces this folder\n", encoding="utf-8")
    return out


def screen_tiles(index_path, truth_mask):
    """Keep the tiles holding gully pixels in the ground-truth mask, reject the others."""
    register_package()
    import numpy as np
    from osgeo import gdal

    from gullyseg.processing.engine import dataset

    records, _ = dataset.read_index(str(index_path))
    ds = gdal.Open(str(truth_mask))
    band = ds.GetRasterBand(1)
    updates = {}
    for rec in records:
        x, y = rec["x_off"], rec["y_off"]
        w = max(0, min(rec["width"], ds.RasterXSize - x))
        h = max(0, min(rec["height"], ds.RasterYSize - y))
        has_gully = w > 0 and h > 0 and bool(np.any(band.ReadAsArray(x, y, w, h) == 1))
        updates[rec["tile_id"]] = {"status": dataset.STATUS_KEEP if has_gully else dataset.STATUS_REJECT}
    dataset.update_index(str(index_path), updates)
    kept = sum(1 for u in updates.values() if u["status"] == dataset.STATUS_KEEP)
    return kept, len(records)


class Steps:
    """Runs and times the steps; collects what the summary shows."""

    def __init__(self):
        self.times = []

    def run(self, name, func):
        print(f"-- {name}", flush=True)
        started = time.monotonic()
        result = func()
        seconds = time.monotonic() - started
        self.times.append((name, seconds))
        print(f"   done in {seconds:.1f} s", flush=True)
        return result


def run_demo(out, size, seed, quick=False, overwrite=False, project=True, model=MODEL):
    model = Path(model).resolve()
    if not model.exists():
        raise SystemExit(f"demo: the model {model} is missing (tools/train_demo_model.py makes the demo model).")
    out = prepare_output(out, overwrite)
    started = time.monotonic()
    steps = Steps()
    scene_dir, data_dir, inf_dir = out / "scene", out / "dataset", out / "inference"
    scene_dir.mkdir()
    inf_dir.mkdir()
    scene = scene_dir / "demo_scene.tif"
    truth_mask = scene_dir / "demo_scene_truth_mask.tif"
    truth_gullies = scene_dir / "demo_scene_truth_gullies.gpkg"
    index = data_dir / "index.gpkg"
    prob = inf_dir / "gully_probability.tif"
    mask = inf_dir / "gully_mask.tif"
    polygons = inf_dir / "gully_polygons.gpkg"
    report = out / "evaluation" / "evaluation.html"
    summary = {"scene": {"size": size, "seed": seed, "crs": "EPSG:32606", "pixel_size_m": 0.75}}

    qp = steps.run("0 qgis_process.bin plugins enable gullyseg (private profile)", QgisProcess)
    with qp:

        def synthetic():
            res, _ = qp.run("gullyseg:syntheticscene", {
                "WIDTH": size, "HEIGHT": size, "SEED": seed, "BANDS": 0, "NODATA_EDGE": True,
                "OUTPUT": str(scene), "OUTPUT_GULLIES": str(truth_gullies), "OUTPUT_MASK": str(truth_mask)})
            summary["scene"]["gully_fraction"] = res.get("GULLY_FRACTION")
        steps.run("1 syntheticscene: demo scene in EPSG:32606", synthetic)

        def grid():
            res, _ = qp.run("gullyseg:gridtiles", {"INPUT": str(scene), "OUTPUT_DIR": str(data_dir), "FORMAT": 2})
            summary["tiles"] = int(res["TILE_COUNT"])
        steps.run("2 gridtiles: 256 x 256 tiles and the tile index", grid)

        def screen():
            kept, total = screen_tiles(index, truth_mask)
            summary["kept"], summary["rejected"] = kept, total - kept
        steps.run("3 screening (scripted: keep the tiles with gully)", screen)

        def export():
            res, _ = qp.run("gullyseg:exportlabelme", {"TILES": str(index), "ONLY_KEPT": True,
                                                      "PREFILL": str(truth_gullies), "LABEL": "gully"})
            summary["labelme_files"] = res.get("JSON_COUNT")  # exportlabelme's output key
        steps.run("4 exportlabelme: Labelme files (prefilled with the truth = the annotators' work)", export)

        def rasterize():
            res, _ = qp.run("gullyseg:rasterizelabels", {"TILES": str(index)})
            summary["masks"] = int(res["MASK_COUNT"])
            summary["label_problems"] = int(res.get("PROBLEM_COUNT", 0))
        steps.run("5 rasterizelabels: Labelme -> tile masks", rasterize)

        def split():
            res, _ = qp.run("gullyseg:splitdataset", {"DATASET": str(data_dir), "RATIOS": "6:2:2", "SEED": 42})
            summary["split"] = {k: int(res[f"{k.upper()}_COUNT"]) for k in ("train", "val", "test")}
        steps.run("6 splitdataset: train/val/test 6:2:2 by source tile", split)

        def augment():
            res, _ = qp.run("gullyseg:augment", {"DATASET": str(data_dir), "COPIES": 4, "SEED": 42})
            summary["augmented"] = int(res["AUGMENTED_COUNT"])
        steps.run("7 augment: 4 variants per train tile", augment)

        def segment():
            res, _ = qp.run("gullyseg:segment", {
                "INPUT": str(scene), "MODEL": str(model), "OUTPUT_PROBABILITY": str(prob), "OUTPUT_MASK": str(mask),
                "OUTPUT_POLYGONS": str(polygons)})
            summary["inference"] = {k.lower(): res.get(k) for k in ("PIXELS_PROCESSED", "GULLY_AREA_M2")}
            summary["inference"]["provider"] = res.get("EXECUTION_PROVIDER", res.get("PROVIDER"))
        steps.run("8 segment: the demo model over the whole scene", segment)

        def evaluate():
            res, _ = qp.run("gullyseg:evaluate", {"PREDICTION": str(mask), "REFERENCE": str(truth_mask),
                                                  "OUTPUT_REPORT": str(report)})
            summary["evaluation"] = {k: res[k] for k in ("MIOU", "OA", "IOU_GULLY", "PRECISION", "RECALL", "F1")}
        steps.run("9 evaluate: prediction against the truth", evaluate)
        commands = list(qp.command_lines)

    (out / "commands.sh").write_text(
        "#!/bin/sh\n# The qgis_process command lines the demo ran (plugin enabled with "
        "`qgis_process.bin plugins enable gullyseg`).\n" + "\n".join(commands) + "\n", encoding="utf-8")
    picture = out / "demo_comparison.png"
    steps.run("picture: inference next to the truth", lambda: write_comparison(scene, truth_mask, mask, picture))
    if project:
        steps.run("QGIS project with the styled layers", lambda: write_project(out / PROJECT_NAME, {
            "scene": scene, "truth_mask": truth_mask, "truth_gullies": truth_gullies, "index": index,
            "probability": prob, "mask": mask, "polygons": polygons}))
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    summary["step_seconds"] = {name: round(sec, 1) for name, sec in steps.times}
    summary["outputs"] = {"project": str(out / PROJECT_NAME) if project else None, "report": str(report),
                          "picture": str(picture), "dataset": str(data_dir)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_summary(summary)
    return summary


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def print_summary(s):
    ev = s["evaluation"]
    sp = s["split"]
    lines = [
        "",
        "GullySeg demo summary",
        f"  scene        {s['scene']['size']} x {s['scene']['size']} px, EPSG:32606, 0.75 m, seed {s['scene']['seed']}",
        f"  tiles        {s['tiles']} (256 x 256), kept {s['kept']}, rejected {s['rejected']}",
        f"  masks        {s['masks']} (label problems: {s['label_problems']})",
        f"  split        train {sp['train']}, val {sp['val']}, test {sp['test']}; augmented +{s['augmented']}",
        f"  evaluation   mIoU {_fmt(ev['MIOU'])} (background + gully), gully IoU {_fmt(ev['IOU_GULLY'])}, "
        f"OA {_fmt(ev['OA'])}, F1 {_fmt(ev['F1'])}",
        "  time per step:",
    ]
    for name, sec in s["step_seconds"].items():
        lines.append(f"    {sec:7.1f} s  {name}")
    lines.append(f"  total        {s['total_seconds']:.1f} s")
    if s["outputs"]["project"]:
        lines.append(f"  QGIS project {s['outputs']['project']}  (make qgis opens it)")
    lines.append(f"  report       {s['outputs']['report']}")
    print("\n".join(lines), flush=True)


# --- the picture and the QGIS project (PyQGIS, headless) -------------------------------------

_QGS_APP = None


def _qgis_app():
    global _QGS_APP
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    if QgsApplication.instance() is None:
        QgsApplication.setPrefixPath("/usr", True)
        _QGS_APP = QgsApplication([], False)
        _QGS_APP.initQgis()
    return QgsApplication.instance()


def write_comparison(scene, truth_mask, pred_mask, path, max_side=1024):
    """Three panels side by side: the image, the truth (red) and the prediction (cyan) on it."""
    import numpy as np
    from osgeo import gdal

    _qgis_app()
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter

    ds = gdal.Open(str(scene))
    factor = max(1, int(np.ceil(max(ds.RasterXSize, ds.RasterYSize) / max_side)))
    w, h = ds.RasterXSize // factor, ds.RasterYSize // factor

    def read(path_, resample):
        d = gdal.Open(str(path_))
        return d.ReadAsArray(buf_xsize=w, buf_ysize=h, resample_alg=resample)

    rgb = np.moveaxis(read(scene, gdal.GRIORA_Average)[:3], 0, -1).astype(np.float32)
    truth = read(truth_mask, gdal.GRIORA_NearestNeighbour)
    pred = read(pred_mask, gdal.GRIORA_NearestNeighbour)

    def overlay(mask, colour):
        img = rgb.copy()
        sel = mask == 1
        img[sel] = 0.45 * img[sel] + 0.55 * np.asarray(colour, np.float32)
        return img.clip(0, 255).astype(np.uint8)

    outside = truth == 255  # outside the scene's footprint: white in every panel
    rgb[outside] = 255.0
    panels = [rgb.clip(0, 255).astype(np.uint8), overlay(truth, (255, 40, 40)), overlay(pred, (0, 230, 255))]
    titles = ["Synthetic scene (RGB)", "Ground truth: gully (red)", "Demo model: gully (cyan)"]
    gap, head = 12, 34
    canvas = np.full((h + head, 3 * w + 2 * gap, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        canvas[head:, i * (w + gap):i * (w + gap) + w] = panel
    canvas = np.ascontiguousarray(canvas)
    image = QImage(canvas.data, canvas.shape[1], canvas.shape[0], canvas.strides[0], QImage.Format.Format_RGB888)
    image = image.copy()
    painter = QPainter(image)
    font = QFont()
    font.setPixelSize(20)
    painter.setFont(font)
    painter.setPen(QColor(20, 20, 20))
    for i, title in enumerate(titles):
        painter.drawText(QRect(i * (w + gap), 0, w, head), int(Qt.AlignmentFlag.AlignCenter), title)
    painter.end()
    if not image.save(str(path), "PNG"):
        raise RuntimeError(f"could not write {path}")
    return str(path)


def _style(layer, name):
    qml = STYLES / name
    if qml.exists():
        layer.loadNamedStyle(str(qml))


def write_project(path, files):
    """A .qgz with the demo's layers in a group, styled with resources/styles/*.qml."""
    _qgis_app()
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsVectorLayer

    project = QgsProject()
    project.setTitle("GullySeg demo")
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32606"))
    root = project.layerTreeRoot()
    group = root.addGroup("GullySeg demo")
    entries = [
        ("polygons", "Predicted gully polygons", "vector", "gully_polygons.qml", True),
        ("mask", "Predicted gully mask", "raster", "mask.qml", True),
        ("probability", "Gully probability", "raster", "probability.qml", False),
        ("truth_gullies", "Ground truth gullies", "vector", None, False),
        ("truth_mask", "Ground truth mask", "raster", "mask.qml", False),
        ("index", "Tile index (screening status)", "vector", "tiles_status.qml", False),
        ("scene", "Demo scene (synthetic, EPSG:32606)", "raster", None, True),
    ]
    for key, title, kind, qml, visible in entries:
        source = str(files[key])
        if kind == "raster":
            layer = QgsRasterLayer(source, title, "gdal")
        else:
            layer = QgsVectorLayer(source, title, "ogr")
        if not layer.isValid():
            raise RuntimeError(f"could not load {source} as a {kind} layer")
        if qml:
            _style(layer, qml)
        elif key == "truth_gullies":
            from qgis.core import QgsFillSymbol

            layer.renderer().setSymbol(QgsFillSymbol.createSimple(
                {"color": "0,0,0,0", "outline_color": "255,40,40,255", "outline_width": "0.5"}))
        if project.addMapLayer(layer, False) is None:
            raise RuntimeError(f"could not add {source} to the project")
        node = group.addLayer(layer)
        node.setItemVisibilityChecked(visible)
    # open on the scene: a project written without a canvas has no view extent of its own
    from qgis.core import QgsReferencedRectangle

    scene = project.mapLayersByName("Demo scene (synthetic, EPSG:32606)")[0]
    project.viewSettings().setDefaultViewExtent(QgsReferencedRectangle(scene.extent(), scene.crs()))
    if not project.write(str(path)):
        raise RuntimeError(f"could not write the QGIS project {path}: {project.error()}")
    return str(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="GullySeg's whole workflow on a synthetic scene (make demo).")
    ap.add_argument("--out", default="demo_output", help="output folder (replaced if an earlier demo made it)")
    ap.add_argument("--size", type=int, default=None, help="scene width and height in pixels (default 2048)")
    ap.add_argument("--seed", type=int, default=DEMO_SEED, help="scene seed")
    ap.add_argument("--quick", action="store_true", help="a small scene (768 x 768) for a quick check")
    ap.add_argument("--overwrite", action="store_true", help="replace --out even if the demo did not make it")
    ap.add_argument("--no-project", action="store_true", help="skip the QGIS project")
    ap.add_argument("--model", default=str(MODEL), help="ONNX model for step 8 (default: the demo model)")
    args = ap.parse_args(argv)
    size = args.size or (768 if args.quick else 2048)
    try:
        run_demo(args.out, size, args.seed, quick=args.quick, overwrite=args.overwrite,
                 project=not args.no_project, model=args.model)
    except QgisProcessError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
