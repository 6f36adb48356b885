"""Helpers for GullySeg's command-line tools (demo, demo-model training): the plugin package
and QGIS's batch runner ``qgis_process.bin`` with the plugin enabled in a private profile.

Plain Python; importable from tools/ scripts (``sys.path`` gets tools/ as the script's folder)
and from tests (load it by path). It does the same set-up a user does for batch jobs:

    QGIS_PLUGINPATH=<folder holding a 'gullyseg' link to the checkout>
    QGIS_CUSTOM_CONFIG_PATH=<private profile folder>
    qgis_process.bin plugins enable gullyseg
    qgis_process.bin --json run gullyseg:<id> -- KEY=VALUE ...
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_qgis_process():
    """QGIS's batch runner: $GULLYSEG_QGIS_PROCESS, else Debian's binary ``/usr/bin/qgis_process.bin``
    (Debian 12's ``qgis_process`` wrapper passes it an option it rejects; Debian 13's works, and both
    ship the binary), else ``qgis_process`` on PATH (other packagings). The Debian path when none is found
    (the callers then say it is not installed)."""
    if os.environ.get("GULLYSEG_QGIS_PROCESS"):
        return os.environ["GULLYSEG_QGIS_PROCESS"]
    if os.path.exists("/usr/bin/qgis_process.bin"):
        return "/usr/bin/qgis_process.bin"
    return shutil.which("qgis_process") or "/usr/bin/qgis_process.bin"


QGIS_PROCESS = find_qgis_process()


def register_package():
    """Import the checkout as the package ``gullyseg`` (its folder name may differ)."""
    if "gullyseg" in sys.modules:
        return sys.modules["gullyseg"]
    spec = importlib.util.spec_from_file_location(
        "gullyseg", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["gullyseg"] = module
    spec.loader.exec_module(module)
    return module


class QgisProcessError(RuntimeError):
    """A qgis_process run failed; the message holds its output."""


def _format_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class QgisProcess:
    """``qgis_process.bin`` with the GullySeg plugin enabled in an isolated profile.

    Use as a context manager (the temporary profile is removed at the end), or call
    ``close()``. ``run(alg_id, params)`` returns the parsed ``--json`` output's ``results``.
    """

    def __init__(self, base_dir=None, python_bin_dir=None, log=None):
        if not os.path.exists(QGIS_PROCESS):
            raise QgisProcessError(f"{QGIS_PROCESS} is not installed (Debian package qgis); run 'make setup'.")
        self._own = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="gullyseg_qgis_process_"))
        plugins = self.base / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        link = plugins / "gullyseg"
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        profile = self.base / "profile"
        profile.mkdir(exist_ok=True)
        env = dict(os.environ)
        bin_dir = python_bin_dir or str(Path(sys.executable).parent)
        env.update(
            QGIS_PLUGINPATH=str(plugins),
            QGIS_CUSTOM_CONFIG_PATH=str(profile),
            QT_QPA_PLATFORM="offscreen",
            PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        )
        env.pop("PYTHONPATH", None)
        self.env = env
        self.log = log
        self.command_lines = []
        done = subprocess.run([QGIS_PROCESS, "plugins", "enable", "gullyseg"], env=env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise QgisProcessError(f"qgis_process plugins enable gullyseg failed:\n{done.stdout}\n{done.stderr}")

    def args(self, alg_id, params):
        args = [QGIS_PROCESS, "--json", "run", alg_id, "--"]
        for key, value in params.items():
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                args.append(f"{key}={_format_value(v)}")
        return args

    def run_raw(self, alg_id, params, timeout=3600):
        """Run one algorithm; returns the finished subprocess (whatever its exit code)."""
        args = self.args(alg_id, params)
        self.command_lines.append(" ".join(_quote(a) for a in args))
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)

    def run_json(self, alg_id, params, timeout=3600):
        """Run one algorithm; returns (qgis_process's whole --json output, seconds)."""
        started = time.monotonic()
        done = self.run_raw(alg_id, params, timeout)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise QgisProcessError(
                f"{alg_id} failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        start = done.stdout.find("{")
        try:
            data = json.loads(done.stdout[start:])
        except ValueError:
            raise QgisProcessError(f"{alg_id}: could not read qgis_process's JSON output:\n{done.stdout[-2000:]}") \
                from None
        if self.log is not None:
            self.log(alg_id, data, seconds)
        return data, seconds

    def run(self, alg_id, params, timeout=3600):
        """Run one algorithm; returns (results dict, seconds). Raises QgisProcessError."""
        data, seconds = self.run_json(alg_id, params, timeout)
        return data.get("results", {}), seconds

    def close(self):
        if self._own:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _quote(arg):
    if not arg or any(c in arg for c in " '\"$;&|<>()*?"):
        return "'" + arg.replace("'", "'\\''") + "'"
    return arg
