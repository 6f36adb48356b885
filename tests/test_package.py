"""`make package` gives a zip that QGIS's "Install from ZIP" accepts."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_zip(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "package.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    zips = list(tmp_path.glob("gullyseg-*.zip"))
    assert len(zips) == 1
    with zipfile.ZipFile(zips[0]) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
        metadata = zf.read("gullyseg/metadata.txt").decode()
        licence = zf.read("gullyseg/LICENSE").decode()
    assert "GPL-2.0-or-later" in licence and "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2" in licence
    assert all(n.startswith("gullyseg/") for n in names), "one folder gullyseg/ inside"
    for required in ("gullyseg/metadata.txt", "gullyseg/__init__.py", "gullyseg/plugin.py",
                     "gullyseg/resources/icons/gullyseg.svg", "gullyseg/processing/provider.py",
                     "gullyseg/processing/engine/windows.py", "gullyseg/LICENSE", "gullyseg/ui/deps.py",
                     "gullyseg/ui/deps_dialog.py", "gullyseg/processing/styling.py"):
        assert required in names, f"{required} missing from the zip"
    for name in names:
        parts = name.split("/")
        assert parts[1] not in ("tests", "benchmarks", "tools", "docs", ".ci", "Makefile"), name
        assert "__pycache__" not in parts and not name.endswith(".pyc"), name
        assert ".venv" not in parts and ".git" not in parts, name
    icon = [line.split("=", 1)[1].strip() for line in metadata.splitlines() if line.startswith("icon=")][0]
    assert f"gullyseg/{icon}" in names, "the icon named in metadata.txt is in the zip"
    assert f"-{_version()}.zip" in zips[0].name


def _version():
    from gullyseg import metadata

    return metadata.VERSION
