"""From the zip to an inference result in a fresh QGIS profile, with no venv on PATH.

The zip (tools/package.py) is unpacked into a new profile's plugin folder, as *Install from ZIP*
does; qgis_process.bin runs with the system's Python only (PATH=/usr/bin:/bin). Inference first
fails with a message that names Plugins > GullySeg > Install dependencies…; then the dialog's
command (ui/deps.py: pip --target into the profile's gullyseg_packages folder, numpy held) runs,
and the same qgis_process command maps gullies: the plugin put the folder on sys.path at start-up.
The mask equals the test venv's own run of the engine (an independent onnxruntime)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from gullyseg.ui import deps

ROOT = Path(__file__).resolve().parents[1]
QGIS_PROCESS = "/usr/bin/qgis_process.bin"
SYSTEM_PYTHON = "/usr/bin/python3"


def _env(config, home):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "QT_QPA_PLATFORM": "offscreen",
           "QGIS_CUSTOM_CONFIG_PATH": str(config)}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})  # the machine's package index
    return env


@pytest.mark.slow
def test_zip_fresh_profile_install_dependencies_then_inference(tmp_path, scene_factory):
    if not os.path.exists(QGIS_PROCESS) or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs Debian's qgis_process.bin and /usr/bin/python3")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import onnxruntime"], capture_output=True,
                           env={"PATH": "/usr/bin:/bin"})
    assert probe.returncode != 0, "the system Python already has onnxruntime: this test would prove nothing"
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "package.py"), "--out", str(dist)],
                          capture_output=True, text=True, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    (zip_path,) = list(dist.glob("gullyseg-*.zip"))
    config = tmp_path / "config"
    profile = config / "profiles" / "default"  # QGIS_CUSTOM_CONFIG_PATH/profiles/<name>
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(plugins)
    assert (plugins / "gullyseg" / "LICENSE").exists()
    env = _env(config, tmp_path)
    enabled = subprocess.run([QGIS_PROCESS, "plugins", "enable", "gullyseg"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr

    scene = scene_factory("zip", width=320, height=256, seed=4)
    model = plugins / "gullyseg" / "resources" / "models" / "gullyseg_demo_unet.onnx"
    mask = tmp_path / "mask.tif"
    run = [QGIS_PROCESS, "run", "gullyseg:segment", "--", f"INPUT={scene}", f"MODEL={model}",
           f"OUTPUT_MASK={mask}", f"OUTPUT_PROBABILITY={tmp_path / 'prob.tif'}"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode != 0 and not mask.exists()
    assert "onnxruntime is not installed" in first.stdout + first.stderr
    assert "Install dependencies" in first.stdout + first.stderr

    # what the dialog runs (its QProcess is tested in test_deps_dialog.py)
    numpy_version = subprocess.run([SYSTEM_PYTHON, "-c", "import numpy; print(numpy.__version__)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    target = deps.packages_folder(str(profile))
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(deps.constraints_text({"numpy": numpy_version}))
    python = deps.find_python("/usr/bin/qgis", "/usr", "linux")  # as inside QGIS, where sys.executable is qgis
    command = deps.install_command(python, target, deps.requirements(["inference"]), str(constraints))
    pip = subprocess.run(command, env=deps.environment(env), capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    deps.remove_held(target)
    assert not os.path.exists(os.path.join(target, "numpy"))

    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert mask.exists()
    from gullyseg.processing.engine import inference

    reference = tmp_path / "reference.tif"
    inference.segment_raster(str(scene), str(model), output_mask=str(reference))
    assert np.array_equal(gdal.Open(str(mask)).ReadAsArray(), gdal.Open(str(reference)).ReadAsArray())
