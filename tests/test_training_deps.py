"""Without PyTorch / segmentation-models-pytorch the plugin still loads and trainmodel says what to install."""

import subprocess
import sys

import pytest
from qgis.core import QgsProcessingException

from gullyseg.processing.engine.training import deps


def test_provider_loads_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['segmentation_models_pytorch'] = None\n"
        "sys.path.insert(0, 'tools')\n"
        "from gullyseg_cli import register_package; register_package()\n"
        "from gullyseg.processing.provider import algorithm_classes\n"
        "ids = [c.ALG_ID for c in algorithm_classes()]\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(sorted(set(ids) & {'trainmodel', 'comparemodels'}))\n"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                         env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['comparemodels', 'trainmodel']" in out.stdout


def test_trainmodel_says_what_to_install(monkeypatch, run_alg, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    assert "requirements-train.txt" in deps.missing()
    with pytest.raises(QgsProcessingException, match="torch is not installed.*pip install.*segmentation-models"):
        run_alg("trainmodel", {"DATASET": str(tmp_path), "OUTPUT_MODEL": str(tmp_path / "m.onnx")})
    assert list(tmp_path.iterdir()) == []
