"""The command line: `qgis_process.bin` with the plugin enabled in an isolated profile.

This is how users run batch jobs; it must keep working. The fixtures (tests/conftest.py) link the
checkout as `gullyseg` into a private plugin folder, point QGIS_CUSTOM_CONFIG_PATH at a temporary
profile and run `qgis_process.bin plugins enable gullyseg` first.
"""

import subprocess

from gullyseg_cli import QGIS_PROCESS
from osgeo import gdal, ogr

from gullyseg.processing.provider import algorithm_classes


def test_list_and_help(qgis_process_env):
    listing = _run(qgis_process_env, "list")
    for cls in algorithm_classes():
        assert f"gullyseg:{cls.ALG_ID}" in listing, f"gullyseg:{cls.ALG_ID} missing from qgis_process list"
    helptext = _run(qgis_process_env, "help", "gullyseg:gridtiles")
    assert "TILE_SIZE" in helptext and "OUTPUT_DIR" in helptext


def test_scene_then_tiles_from_the_command_line(qgis_process, tmp_path):
    """Two real batch steps chained on the command line: a synthetic scene, then its tiles."""
    scene = tmp_path / "scene.tif"
    out = qgis_process("gullyseg:syntheticscene", {
        "WIDTH": 600, "HEIGHT": 520, "SEED": 3, "BANDS": 0, "NODATA_EDGE": False,
        "OUTPUT": str(scene), "OUTPUT_MASK": str(tmp_path / "mask.tif"),
        "OUTPUT_GULLIES": str(tmp_path / "gullies.gpkg"),
    })
    ds = gdal.Open(str(scene))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (600, 520, 3)
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32606"
    assert out["results"]["OUTPUT"] == str(scene)

    dataset_dir = tmp_path / "dataset"
    out = qgis_process("gullyseg:gridtiles", {
        "INPUT": str(scene), "TILE_SIZE": 256, "EDGE": 0, "FORMAT": 0, "OUTPUT_DIR": str(dataset_dir),
    })
    assert int(out["results"]["TILE_COUNT"]) == 3 * 3  # ceil(600/256) x ceil(520/256), padded
    tiles = sorted((dataset_dir / "images").glob("*.tif"))
    assert len(tiles) == 9
    # the first tile equals gdal_translate -srcwin 0 0 256 256 of the scene
    ref = gdal.Translate("/vsimem/ref.tif", str(scene), srcWin=[0, 0, 256, 256])
    tile = gdal.Open(str(tiles[0]))
    assert tile.GetGeoTransform() == ref.GetGeoTransform()
    assert (tile.ReadAsArray() == ref.ReadAsArray()).all()
    ref = None
    gdal.Unlink("/vsimem/ref.tif")
    index = ogr.Open(str(dataset_dir / "index.gpkg"))
    assert index.GetLayer(0).GetFeatureCount() == 9


def test_bad_input_fails_with_a_clear_message(qgis_process, tmp_path):
    done = qgis_process("gullyseg:gridtiles", {
        "INPUT": str(tmp_path / "missing.tif"), "OUTPUT_DIR": str(tmp_path / "ds"),
    }, expect_ok=False)
    assert done.returncode != 0
    assert not (tmp_path / "ds" / "index.gpkg").exists()


def _run(env, *args):
    done = subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
