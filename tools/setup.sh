#!/usr/bin/env bash
# Idempotent environment setup for GullySeg (called by `make setup`).
# 1. Debian packages (QGIS, GDAL): apt-get as root, else sudo, else print the command and stop.
# 2. .venv from /usr/bin/python3 with --system-site-packages (the QGIS bindings live there).
# 3. Pinned Python requirements, with numpy kept < 2 (Debian's GDAL needs numpy 1.x).
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES="qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv python3-pip python3-pil python3-matplotlib xvfb xauth"
missing=""
for pkg in $DEB_PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $pkg"
  fi
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  if [ "$(id -u)" = 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "setup: these Debian packages are missing:$missing" >&2
    echo "setup: run this as root, then 'make setup' again:" >&2
    echo "    apt-get update && apt-get install -y$missing" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import qgis.core" 2>/dev/null; then
  echo "setup: creating .venv from /usr/bin/python3 (--system-site-packages)"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.gullyseg-requirements
want="$(cat requirements-dev.txt constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python requirements into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
.venv/bin/python - <<'PY'
import numpy
from osgeo import gdal, gdal_array  # noqa: F401
import onnxruntime
from qgis.core import Qgis
assert int(numpy.__version__.split(".")[0]) < 2, "numpy must stay < 2 for Debian's GDAL"
print(f"setup: QGIS {Qgis.QGIS_VERSION}, GDAL {gdal.__version__}, numpy {numpy.__version__}, "
      f"onnxruntime {onnxruntime.__version__}")
PY
