#!/usr/bin/env bash
# Idempotent environment setup for GullySeg (called by `make setup`). Works on Debian 12 (QGIS 3.22,
# Python 3.11, numpy 1.x) and Debian 13 (QGIS 3.40, Python 3.13, numpy 2.x).
# 1. Debian packages (QGIS, GDAL): apt-get as root, else sudo, else print the command and stop.
# 2. .venv from /usr/bin/python3 with --system-site-packages (the QGIS bindings live there).
# 3. numpy constrained to the ABI Debian's GDAL was built for (python3-gdal's python3-numpy*-abi*
#    dependency): Debian's osgeo.gdal_array only imports under that numpy major version.
# 4. Pinned Python requirements (requirements-dev.txt) and the training tools' (requirements-train.txt,
#    PyTorch: see GULLYSEG_TRAIN below), with a stamp so that a second run does nothing.
#
# GULLYSEG_TRAIN=auto (default) installs requirements-train.txt where its wheels come from this machine's
# package index (Python 3.11 / Debian 12) and skips it elsewhere (Python 3.13: a ~3 GB download of CUDA
# wheels); the training tests skip then, saying so. GULLYSEG_TRAIN=1 installs it anyway, 0 never.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*"; }

DEB_PACKAGES="qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv python3-pip python3-pil python3-matplotlib xvfb xauth"
missing=""
for pkg in $DEB_PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $pkg"
  fi
done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
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

# --- the platform ----------------------------------------------------------------------------------
py_version="$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
os_name="$(. /etc/os-release && echo "${PRETTY_NAME:-$ID}")"
# numpy ABI of Debian's GDAL: python3-numpy-abi9 = numpy 1.x, python3-numpy2-abi0 = numpy 2.x.
numpy_abi="$(dpkg-query -W -f='${Depends}' python3-gdal 2>/dev/null | grep -o 'python3-numpy[0-9]*-abi[0-9]*' | head -n1 || true)"
case "$numpy_abi" in
  python3-numpy-abi*) numpy_major=1 ;;
  python3-numpy2-abi*) numpy_major=2 ;;
  *)  # not a Debian-style dependency: the major version of the numpy the system Python imports
    numpy_abi="system numpy"
    numpy_major="$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__.split(".")[0])')" ;;
esac
numpy_pin="numpy>=${numpy_major},<$((numpy_major + 1))"

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import qgis.core" 2>/dev/null \
    || [ "$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$py_version" ]; then
  say "creating .venv from /usr/bin/python3 $py_version (--system-site-packages)"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

# --- which requirements ------------------------------------------------------------------------------
train="${GULLYSEG_TRAIN:-auto}"
if [ "$train" = auto ]; then
  if [ "$py_version" = 3.11 ]; then train=1; else train=0; fi
fi
requirements=(-r requirements-dev.txt)
if [ "$train" = 1 ] && [ -s requirements-train.txt ]; then
  requirements+=(-r requirements-train.txt)
  train_note="installed (requirements-train.txt)"
else
  train_note="skipped on Python $py_version (GULLYSEG_TRAIN=1 installs them); the training tests skip"
fi

# constraints.txt with its numpy line replaced by the one this system's GDAL needs.
constraints=.venv/gullyseg-constraints.txt
{
  echo "# written by tools/setup.sh: constraints.txt, numpy for $numpy_abi (python3-gdal)"
  grep -v -E '^[[:space:]]*numpy([<>=!~ ;]|$)' constraints.txt
  echo "$numpy_pin"
} > "$constraints.new"
mv "$constraints.new" "$constraints"

say "$os_name, Python $py_version, GDAL's numpy ABI: $numpy_abi -> '$numpy_pin'; training dependencies $train_note"

stamp=.venv/.gullyseg-requirements
want="$(cat requirements-dev.txt "$constraints" tools/setup.sh; echo "$train $py_version"
        if [ "$train" = 1 ]; then cat requirements-train.txt; fi)"
want="$(echo "$want" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing Python requirements into .venv: ${requirements[*]}"
  # (without the warnings about index folders that this machine's pip configuration names but lacks)
  { .venv/bin/python -m pip install -q --disable-pip-version-check -c "$constraints" "${requirements[@]}" \
      2>&1 1>&3 | { grep -v -E "WARNING: Location .* is ignored: it is" >&2 || true; }; } 3>&1
  echo "$want" > "$stamp"
fi
NUMPY_MAJOR="$numpy_major" .venv/bin/python - <<'PY'
import os
from importlib import metadata

import numpy
from osgeo import gdal, gdal_array  # noqa: F401 (Debian's gdal_array imports only under its numpy ABI)
import onnxruntime
from qgis.core import Qgis

assert numpy.__version__.split(".")[0] == os.environ["NUMPY_MAJOR"], (
    f"numpy {numpy.__version__} in .venv, but Debian's GDAL needs numpy {os.environ['NUMPY_MAJOR']}.x")
try:
    torch_note = f", torch {metadata.version('torch')}"
except metadata.PackageNotFoundError:
    torch_note = ", no torch"
print(f"setup: QGIS {Qgis.QGIS_VERSION}, GDAL {gdal.__version__}, numpy {numpy.__version__}, "
      f"onnxruntime {onnxruntime.__version__}{torch_note}")
PY
