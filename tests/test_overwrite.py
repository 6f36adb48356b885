"""An existing output FILE that QGIS's own file dialog already confirmed ("replace?") is replaced in
QGIS desktop; qgis_process still refuses without OVERWRITE; dataset folders keep their refusal."""

from pathlib import Path

import pytest
from qgis.core import QgsProcessingException

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = str(ROOT / "resources" / "models" / "gullyseg_demo_unet.onnx")


def test_desktop_replaces_a_confirmed_output_file(run_alg, scene_factory, tmp_path):
    from gullyseg.processing.algorithms.base import running_in_qgis_gui

    assert running_in_qgis_gui()  # pytest-qgis gives the GUI's iface, as QGIS desktop does
    scene = scene_factory("ow", width=256, height=256, seed=2)
    mask = tmp_path / "mask.tif"
    mask.write_bytes(b"an older file the person chose to replace in the file dialog")
    res = run_alg("segment", {"INPUT": str(scene), "MODEL": DEMO_MODEL, "OUTPUT_MASK": str(mask),
                              "OUTPUT_PROBABILITY": str(tmp_path / "p.tif")})
    assert Path(res["OUTPUT_MASK"]) == mask
    assert mask.read_bytes()[:2] in (b"II", b"MM")  # a GeoTIFF now


def test_desktop_still_refuses_a_dataset_folder(run_alg, scene_factory, tmp_path):
    scene = scene_factory("ow", width=256, height=256, seed=2)
    run_alg("gridtiles", {"INPUT": str(scene), "TILE_SIZE": 128, "OUTPUT_DIR": str(tmp_path / "ds")})
    with pytest.raises(QgsProcessingException):
        run_alg("gridtiles", {"INPUT": str(scene), "TILE_SIZE": 128, "OUTPUT_DIR": str(tmp_path / "ds")})


@pytest.mark.slow
def test_qgis_process_refuses_without_overwrite(qgis_process, scene_factory, tmp_path):
    scene = scene_factory("ow", width=256, height=256, seed=2)
    mask = tmp_path / "mask.tif"
    mask.write_bytes(b"keep me")
    params = {"INPUT": str(scene), "MODEL": DEMO_MODEL, "OUTPUT_MASK": str(mask),
              "OUTPUT_PROBABILITY": str(tmp_path / "p.tif")}
    done = qgis_process("gullyseg:segment", params, expect_ok=False)
    assert done.returncode != 0
    assert mask.read_bytes() == b"keep me"
    qgis_process("gullyseg:segment", dict(params, OVERWRITE=True))
    assert mask.read_bytes()[:2] in (b"II", b"MM")
