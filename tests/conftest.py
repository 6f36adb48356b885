"""Test set-up: register the checkout as the package ``gullyseg`` and share fixtures.

The checkout folder is not named ``gullyseg`` and its ``processing/`` folder would hide
QGIS's own ``processing`` package if the repository root were on sys.path, so pytest runs
with ``--import-mode=importlib`` and the package is registered here under its real name.
The tests folder itself goes on sys.path, so tests import its plain helper modules by name
(``import onnx_models``, ``import dataset_builder``); it holds no ``processing`` folder.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
SHARED_DATA = ROOT.parent / "shared" / "data"


def _load_cli_helpers():
    """tools/gullyseg_cli.py: package registration and qgis_process set-up, shared with the tools."""
    spec = importlib.util.spec_from_file_location("gullyseg_cli", ROOT / "tools" / "gullyseg_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli_helpers()
sys.modules.setdefault("gullyseg_cli", cli)  # tests import it by name (from gullyseg_cli import QGIS_PROCESS)
cli.register_package()


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data (third-party rasters and Labelme files); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a fresh clone has no ../shared): third-party test data unavailable")
    return SHARED_DATA


_KEEP_ALIVE = []  # the registry does not keep the Python provider object alive


def ensure_provider():
    """The registered GullySeg provider, registering one (as initProcessing does) when absent.

    Checked on every use: plugin load/unload tests remove the provider, and QGIS deletes a
    removed provider, so no test may hold on to one across tests.
    """
    from qgis.core import QgsApplication

    from gullyseg.processing.provider import GullySegProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("gullyseg") is None:
        prov = GullySegProvider()
        assert registry.addProvider(prov)
        _KEEP_ALIVE[:] = [prov]
    return registry.providerById("gullyseg")


@pytest.fixture
def provider(qgis_app, qgis_processing):
    """The GullySeg provider registered in the test QGIS session."""
    return ensure_provider()


@pytest.fixture
def run_alg(provider):
    """Run ``gullyseg:<id>`` through processing.run; returns the result dict."""
    from qgis import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    def _run(alg_id, params, feedback=None, context=None):
        if context is None:
            context = QgsProcessingContext()
            context.setProject(QgsProject.instance())
        return processing.run(
            f"gullyseg:{alg_id}" if ":" not in alg_id else alg_id,
            params,
            feedback=feedback or QgsProcessingFeedback(),
            context=context,
        )

    return _run


# --- the command line (qgis_process.bin) -------------------------------------------------

QGIS_PROCESS = cli.QGIS_PROCESS


@pytest.fixture(scope="session")
def qgis_process_runner(tmp_path_factory):
    """qgis_process.bin with the plugin enabled in an isolated profile (tools/gullyseg_cli.py)."""
    if not os.path.exists(QGIS_PROCESS):
        pytest.skip(f"{QGIS_PROCESS} not installed")
    return cli.QgisProcess(base_dir=tmp_path_factory.mktemp("qgis_process"))


@pytest.fixture(scope="session")
def qgis_process_env(qgis_process_runner):
    """Environment for qgis_process.bin: QGIS_PLUGINPATH, private QGIS_CUSTOM_CONFIG_PATH, venv on PATH."""
    return qgis_process_runner.env


@pytest.fixture(scope="session")
def qgis_process(qgis_process_runner):
    """Run ``qgis_process.bin --json run <alg> -- KEY=VALUE ...``; returns the parsed JSON
    (or, with expect_ok=False, the finished subprocess)."""

    def _run(alg_id, params, expect_ok=True, timeout=600):
        if not expect_ok:
            return qgis_process_runner.run_raw(alg_id, params, timeout)
        try:
            return qgis_process_runner.run_json(alg_id, params, timeout)[0]
        except cli.QgisProcessError as exc:
            pytest.fail(str(exc))

    return _run


@pytest.fixture
def gdal_tool():
    """Path of a GDAL command-line tool (gdal_translate, gdal_rasterize ...) or skip."""

    def _find(name):
        path = shutil.which(name)
        if path is None:
            pytest.skip(f"{name} is not installed")
        return path

    return _find


# --- synthetic scenes (issue 3's generator) ---------------------------------------------

@pytest.fixture(scope="session")
def scene_factory(tmp_path_factory):
    """``scene_factory(name="scene", **kwargs) -> Path`` of a synthetic EPSG:32606 GeoTIFF.

    kwargs go to ``engine.synthetic.make_scene`` (width, height, seed, bands, nodata_edge ...).
    Scenes are cached for the session by their arguments: treat them as read-only.
    Ground truth is written beside the scene: <name>_mask.tif and <name>_gullies.gpkg.
    """
    from gullyseg.processing.engine import synthetic

    cache = {}
    base = tmp_path_factory.mktemp("scenes")

    def _make(name="scene", **kwargs):
        kwargs.setdefault("width", 512)
        kwargs.setdefault("height", 512)
        kwargs.setdefault("seed", 1)
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            folder = base / f"{name}_{len(cache)}"
            folder.mkdir()
            path = folder / f"{name}.tif"
            synthetic.make_scene(
                str(path),
                mask_path=str(folder / f"{name}_mask.tif"),
                gullies_path=str(folder / f"{name}_gullies.gpkg"),
                **kwargs,
            )
            cache[key] = path
        return cache[key]

    return _make
