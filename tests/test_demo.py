"""tools/demo.py (what `make demo` runs), in its quick variant: every step through qgis_process,
the summary, the picture and the QGIS project."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gullyseg_cli import QGIS_PROCESS
from osgeo import gdal

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tools" / "demo.py"
MODEL = ROOT / "resources" / "models" / "gullyseg_demo_unet.onnx"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not os.path.exists(QGIS_PROCESS):
        pytest.skip(f"{QGIS_PROCESS} is not installed")
    if not MODEL.exists():
        pytest.fail("the demo model is missing")
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, str(DEMO), "--out", str(out), "--quick"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out, done.stdout


@pytest.mark.slow
def test_demo_quick_end_to_end(demo_run):
    out, stdout = demo_run
    summary = json.loads((out / "summary.json").read_text())
    # the printed summary
    assert "GullySeg demo summary" in stdout and "mIoU" in stdout and "time per step" in stdout
    # 768 x 768 px -> 3 x 3 tiles of 256; the screening kept exactly the tiles with gully in the truth
    assert summary["tiles"] == 9
    truth = gdal.Open(str(out / "scene" / "demo_scene_truth_mask.tif")).ReadAsArray()
    with_gully = sum(bool(np.any(truth[r:r + 256, c:c + 256] == 1)) for r in range(0, 768, 256)
                     for c in range(0, 768, 256))
    assert summary["kept"] == with_gully > 0
    assert summary["masks"] == summary["kept"] and summary["label_problems"] == 0
    assert summary["labelme_files"] == summary["kept"]  # one Labelme file per kept tile (not null)
    assert sum(summary["split"].values()) == summary["kept"]
    assert summary["augmented"] == 4 * summary["split"]["train"]
    # every step ran and was timed; the commands a user can re-run were saved
    assert len(summary["step_seconds"]) >= 10
    commands = (out / "commands.sh").read_text()
    for alg in ("syntheticscene", "gridtiles", "exportlabelme", "rasterizelabels", "splitdataset", "augment",
                "segment", "evaluate"):
        assert f"gullyseg:{alg}" in commands
    # the evaluation in the summary is the one in the report
    report = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert report["MIOU"] == pytest.approx(summary["evaluation"]["MIOU"])
    assert 0.0 < summary["evaluation"]["OA"] <= 1.0
    assert (out / "demo_comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_project_opens_with_styled_layers(demo_run, qgis_app):
    from qgis.core import QgsProject

    out, _ = demo_run
    project = QgsProject()
    assert project.read(str(out / "gullyseg_demo.qgz"))
    layers = list(project.mapLayers().values())
    assert len(layers) == 7 and all(layer.isValid() for layer in layers)
    names = {layer.name() for layer in layers}
    assert {"Predicted gully mask", "Gully probability", "Ground truth mask", "Tile index (screening status)"} <= names
    assert project.crs().authid() == "EPSG:32606"
    scene = next(layer for layer in layers if layer.name().startswith("Demo scene"))
    view = project.viewSettings().defaultViewExtent()
    assert view.crs().authid() == "EPSG:32606" and view.contains(scene.extent().center())
    assert abs(view.width() - scene.extent().width()) < 1.0  # QGIS opens on the scene


def test_demo_refuses_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    done = subprocess.run([sys.executable, str(DEMO), "--out", str(foreign), "--quick"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert done.returncode != 0 and "not made by the demo" in (done.stderr + done.stdout)
    assert (foreign / "notes.txt").read_text() == "user data"
