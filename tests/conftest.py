"""Test set-up: register the checkout as the package ``gullyseg`` and share fixtures.

The checkout folder is not named ``gullyseg`` and its ``processing/`` folder would hide
QGIS's own ``processing`` package if the repository root were on sys.path, so pytest runs
with ``--import-mode=importlib`` and the package is registered here under its real name.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _register_package():
    if "gullyseg" in sys.modules:
        return sys.modules["gullyseg"]
    spec = importlib.util.spec_from_file_location(
        "gullyseg", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["gullyseg"] = module
    spec.loader.exec_module(module)
    return module


_register_package()


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

QGIS_PROCESS = "/usr/bin/qgis_process.bin"


@pytest.fixture(scope="session")
def qgis_process_env(tmp_path_factory):
    """Environment for qgis_process.bin with the plugin enabled in an isolated profile."""
    if not os.path.exists(QGIS_PROCESS):
        pytest.skip(f"{QGIS_PROCESS} not installed")
    base = tmp_path_factory.mktemp("qgis_process")
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "gullyseg").symlink_to(ROOT, target_is_directory=True)
    profile = base / "profile"
    profile.mkdir()
    env = dict(os.environ)
    env.update(
        QGIS_PLUGINPATH=str(plugins),
        QGIS_CUSTOM_CONFIG_PATH=str(profile),
        QT_QPA_PLATFORM="offscreen",
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [QGIS_PROCESS, "plugins", "enable", "gullyseg"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"plugins enable failed:\n{done.stdout}\n{done.stderr}"
    return env


@pytest.fixture(scope="session")
def qgis_process(qgis_process_env):
    """Run ``qgis_process.bin run <alg> --json -- KEY=VALUE ...``; returns the parsed JSON."""

    def _run(alg_id, params, expect_ok=True, timeout=600):
        args = [QGIS_PROCESS, "--json", "run", alg_id, "--"]
        for key, value in params.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, bool):
                    v = "true" if v else "false"
                args.append(f"{key}={v}")
        done = subprocess.run(args, env=qgis_process_env, capture_output=True, text=True, timeout=timeout)
        if not expect_ok:
            return done
        assert done.returncode == 0, f"qgis_process failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        start = done.stdout.find("{")
        return json.loads(done.stdout[start:])

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
