#!/usr/bin/env bash
# `make qgis`: start QGIS desktop with GullySeg loaded from this checkout, in a private profile,
# opening the demo project when `make demo` has written one. Needs a display.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BASE="${GULLYSEG_QGIS_HOME:-$ROOT/.qgis-settings}"
mkdir -p "$BASE/plugins" "$BASE/profile"
ln -sfn "$ROOT" "$BASE/plugins/gullyseg"
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  echo "make qgis needs a display (DISPLAY is not set). On a headless machine try: xvfb-run make qgis" >&2
  exit 1
fi
export QGIS_PLUGINPATH="$BASE/plugins"
export QGIS_CUSTOM_CONFIG_PATH="$BASE/profile"
export PATH="$ROOT/.venv/bin:$PATH"
unset QT_QPA_PLATFORM
# enable the plugin in the private profile
/usr/bin/qgis_process.bin plugins enable gullyseg >/dev/null 2>&1 || true
PROJECT=()
[ -f demo_output/gullyseg_demo.qgz ] && PROJECT=(--project "$ROOT/demo_output/gullyseg_demo.qgz")
exec qgis --nologo "${PROJECT[@]}" "$@"
