#!/usr/bin/env python3
"""Build dist/gullyseg-<version>.zip for QGIS's "Install from ZIP".

The zip holds one folder, ``gullyseg/``, with the plugin's files as git tracks them (so
nothing untracked, no caches) minus development files: tests, benchmarks, tools, docs, CI.
"""

import argparse
import configparser
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "gullyseg"
# Top-level entries that belong to development, not to the installed plugin.
EXCLUDE_TOP = {"tests", "benchmarks", "tools", "docs", ".ci", ".github", "Makefile", "pytest.ini",
               "requirements-dev.txt", "requirements-train.txt", "constraints.txt", "ruff.toml",
               ".gitignore", ".flake8", "setup.cfg"}
EXCLUDE_SUFFIX = (".pyc", ".pyo")


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def plugin_files():
    for rel in tracked_files():
        top = rel.split("/", 1)[0]
        if top in EXCLUDE_TOP or "__pycache__" in rel.split("/") or rel.endswith(EXCLUDE_SUFFIX):
            continue
        if os.path.isfile(os.path.join(ROOT, rel)):
            yield rel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.path.join(ROOT, "dist"), help="output folder")
    args = parser.parse_args(argv)
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(os.path.join(ROOT, "metadata.txt"), encoding="utf-8")
    version = meta["general"]["version"]
    os.makedirs(args.out, exist_ok=True)
    target = os.path.join(args.out, f"{PLUGIN}-{version}.zip")
    tmp = target + ".partial"
    files = sorted(plugin_files())
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            zf.write(os.path.join(ROOT, rel), f"{PLUGIN}/{rel}")
    os.replace(tmp, target)
    print(f"{target}: {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
