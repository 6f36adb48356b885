"""Plugins > GullySeg > Install dependencies…: the real dialog runs the real pip.

The main test is what a new Debian user does after *Install from ZIP*: the system's
/usr/bin/python3 (externally managed, no onnxruntime, no venv on PATH) installs onnxruntime with
the dialog into a fresh folder (pip reaches the machine's package index as the user's pip does),
then a clean interpreter with only that folder added (as the plugin adds it at start-up) runs the
demo model over a scene and gets the same mask as the test venv's onnxruntime.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from gullyseg.ui import deps

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
DEMO_MODEL = ROOT / "resources" / "models" / "gullyseg_demo_unet.onnx"


def _wait(dialog, timeout):
    from qgis.core import QgsApplication

    end = time.monotonic() + timeout
    while dialog.is_running() and time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.05)
    QgsApplication.processEvents()
    return not dialog.is_running()


def _clean_env(home):
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
    for key, value in os.environ.items():  # the machine's package index settings, as a user's pip sees them
        if key.startswith("PIP_"):
            env[key] = value
    return env


def _system_python_ready():
    if not os.path.exists(SYSTEM_PYTHON):
        return "no /usr/bin/python3"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import pip, numpy; from osgeo import gdal"],
                           capture_output=True, text=True, env=_clean_env(os.environ.get("HOME", "/tmp")))
    return None if probe.returncode == 0 else probe.stderr.strip()[-300:]


def test_fake_pip_streams_live_and_cancel_stops_it(qgis_app, tmp_path):
    """Streaming and cancel with a stand-in for python (a script that prints then sleeps)."""
    from gullyseg.ui.deps_dialog import DependenciesDialog

    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho \"Collecting onnxruntime (args: $*)\"\nsleep 60\necho never\n")
    fake.chmod(0o755)
    dialog = DependenciesDialog(python=str(fake), target=str(tmp_path / "pkgs"), held={"numpy": "1.24.2"})
    assert dialog.checks["inference"].isChecked() and not dialog.checks["training"].isChecked()
    process = dialog.install()
    assert process is not None and dialog.is_running()
    assert not dialog.installButton.isEnabled() and dialog.cancelButton.isEnabled()
    from qgis.core import QgsApplication

    end = time.monotonic() + 20
    while "Collecting onnxruntime" not in dialog.log.toPlainText() and time.monotonic() < end:
        QgsApplication.processEvents()  # the GUI loop keeps running while pip works
        time.sleep(0.05)
    log = dialog.log.toPlainText()
    assert "Collecting onnxruntime" in log  # streamed before the process ended
    assert "--target " + str(tmp_path / "pkgs") in log and "--constraint" in log
    assert dialog.is_running()
    started = time.monotonic()
    dialog.cancelButton.click()
    assert _wait(dialog, 20)
    assert time.monotonic() - started < 15
    assert dialog.ok is False and "Cancelled" in dialog.result.text()
    assert "never" not in dialog.log.toPlainText()
    assert dialog.installButton.isEnabled()


def test_missing_interpreter_gives_a_clear_result(qgis_app, tmp_path):
    from gullyseg.ui.deps_dialog import DependenciesDialog

    dialog = DependenciesDialog(python=str(tmp_path / "no_python"), target=str(tmp_path / "pkgs"),
                                held={"numpy": "1.24.2"})
    dialog.install()
    assert _wait(dialog, 20)
    assert dialog.ok is False and "could not be started" in dialog.result.text()


@pytest.mark.slow
def test_dialog_installs_onnxruntime_with_system_python_then_inference_runs(qgis_app, tmp_path, scene_factory):
    from gullyseg.processing.engine import inference
    from gullyseg.ui.deps_dialog import DependenciesDialog

    problem = _system_python_ready()
    if problem:
        pytest.skip(f"the system Python cannot run pip with numpy and GDAL: {problem}")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import onnxruntime"], capture_output=True,
                           env=_clean_env(os.environ.get("HOME", "/tmp")))
    assert probe.returncode != 0, "the system Python already has onnxruntime: this test would prove nothing"
    numpy_version = subprocess.run([SYSTEM_PYTHON, "-c", "import numpy; print(numpy.__version__)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    target = tmp_path / "profile" / "python" / "gullyseg_packages" / "py3.11"

    dialog = DependenciesDialog(python=SYSTEM_PYTHON, target=str(target), held={"numpy": numpy_version})
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_clean_env(saved.get("HOME", "/tmp")))  # the dialog passes its environment on to pip
    try:
        assert dialog.install() is not None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert _wait(dialog, 540), dialog.log.toPlainText()[-3000:]
    log = dialog.log.toPlainText()
    assert dialog.ok, log[-3000:]
    assert "Installed" in dialog.result.text()
    assert (target / "onnxruntime").is_dir()
    assert not (target / "numpy").exists()  # QGIS's numpy is the one used
    # the constraints file held numpy to the system's version (pip resolved against it)
    assert "externally-managed" not in log

    # inference from the folder, in a clean interpreter: only the plugin's folder is added
    scene = scene_factory("deps", width=384, height=384, seed=3)
    out = tmp_path / "mask_from_folder.tif"
    script = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("gullyseg", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
module = importlib.util.module_from_spec(spec); sys.modules["gullyseg"] = module; spec.loader.exec_module(module)
from gullyseg.ui import deps
assert deps.add_to_sys_path({str(target)!r})
import numpy, onnxruntime
from gullyseg.processing.engine import inference
result = inference.segment_raster({str(scene)!r}, {str(DEMO_MODEL)!r}, output_mask={str(out)!r})
print(json.dumps({{"ort": onnxruntime.__file__, "numpy": numpy.__file__, "area": result["gully_area_m2"]}}))
"""
    run = subprocess.run([SYSTEM_PYTHON, "-c", script], capture_output=True, text=True,
                         env=_clean_env(os.environ.get("HOME", "/tmp")), cwd=str(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["ort"].startswith(str(target))
    assert not facts["numpy"].startswith(str(target))

    # reference: the same run with the test venv's own onnxruntime
    reference = tmp_path / "mask_reference.tif"
    inference.segment_raster(str(scene), str(DEMO_MODEL), output_mask=str(reference))
    got = gdal.Open(str(out)).ReadAsArray()
    want = gdal.Open(str(reference)).ReadAsArray()
    assert np.array_equal(got, want)
    assert facts["area"] > 0 or not want.any()


def test_start_up_appends_the_profile_folder(qgis_app, tmp_path, monkeypatch):
    from gullyseg.ui import deps_dialog

    folder = tmp_path / "python" / "gullyseg_packages" / f"py{sys.version_info[0]}.{sys.version_info[1]}"
    folder.mkdir(parents=True)
    monkeypatch.setattr(deps_dialog.QgsApplication, "qgisSettingsDirPath", staticmethod(lambda: str(tmp_path)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert deps_dialog.profile_packages_folder() == str(folder)
    assert deps_dialog.activate_packages_folder()
    assert sys.path[-1] == str(folder)
    assert deps.add_to_sys_path(str(folder)) is False
