"""tools/gpu_check.py, the GPU machine's check, here on the CPU: pack reads the dataset with the training
engine's reader; run works in a Python where GDAL cannot be imported (as on the GPU machine) and its
numbers are the engine's."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (optional training dependency)")
pytest.importorskip("segmentation_models_pytorch", reason="segmentation-models-pytorch is not installed")

import dataset_builder

from gullyseg.processing.engine import split
from gullyseg.processing.engine.training import data

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"


def test_pack_and_run_without_gdal(tmp_path, scene_factory):
    scene = scene_factory("gpu_check", width=256, height=256, seed=6, nodata_edge=True)
    root = tmp_path / "dataset"
    dataset_builder.build_dataset(root, scene, tile_size=64)
    split.split_dataset(str(root), ratios="6:2:2", seed=1)
    npz = tmp_path / "data.npz"
    subprocess.run([sys.executable, str(TOOL), "pack", str(root), str(npz)], check=True, capture_output=True)

    packed = np.load(npz)
    spec = data.check_dataset(data.open_dataset(str(root)))
    src = data.TileSource(spec, "test", 1)
    for k, sid in enumerate(src.ids):  # the device's normalisation = the engine's reader, nodata included
        x, y, _ = src.read(sid)
        raw = packed["test_raw"][k].astype(np.float32)
        again = raw * packed["a"] + packed["b"]
        again[:, ~packed["test_valid"][k]] = 0.0
        np.testing.assert_allclose(again, x, rtol=1e-6, atol=1e-6)
        assert np.array_equal(packed["test_y"][k], y)

    code = ("import sys, runpy; sys.modules['osgeo'] = None; "
            f"sys.argv = [{str(TOOL)!r}, 'run', {str(npz)!r}, '--out', {str(tmp_path / 'out')!r}, '--epochs', '1', "
            "'--batch', '4', '--allow-cpu', '--budget', '0', '--window', '64']; "
            f"runpy.run_path({str(TOOL)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["cuda_available"] is False and result["samples"]["train"] == len(spec.ids("train"))
    assert result["onnx_vs_torch_gpu"]["max_abs_diff_probability"] < 1e-4  # engine export = PyTorch
    assert 0.0 <= result["unet_gpu"]["test"]["miou"] <= 1.0
    rows = result["comparison"]["rows"]
    assert {r["architecture"] for r in rows} >= {"U-Net", "PSPNet"}  # budget 0: the rest skipped, said so
    assert all(r.get("skipped") == "time budget" for r in rows)
