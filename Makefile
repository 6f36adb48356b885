# GullySeg: `make demo` runs the main job on demo data, `make test` runs the tests.
# Both install what they need (Debian packages, .venv) through `make setup`.
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export QT_QPA_PLATFORM ?= offscreen
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=
BENCH_ARGS ?=
DEMO_DIR ?= demo_output

.PHONY: setup test test-qgis340 demo lint package qgis bench train-model clean help

help:
	@echo "make setup    install Debian packages (QGIS, GDAL) and .venv (idempotent)"
	@echo "make test     run the whole test suite headless"
	@echo "make test-qgis340  the same on Debian 13 / QGIS 3.40 in a cached debootstrap chroot (root; tools/debian13/run.sh)"
	@echo "make demo     run the whole workflow on generated demo data into $(DEMO_DIR)/"
	@echo "make lint     ruff + flake8-qgis + the Qt6/QGIS 4 check (tools/qt6_check.py)"
	@echo "make package  build dist/gullyseg-<version>.zip for 'Install from ZIP'"
	@echo "make qgis     start QGIS with the plugin loaded from this checkout"
	@echo "make bench    run the benchmarks in benchmarks/ (BENCH_ARGS=--quick for small sizes)"
	@echo "make train-model  train a demo-style model with trainmodel's engine into demo_output/ (PyTorch)"

setup:
	@bash tools/setup.sh

# pytest (the script, not `python -m pytest`, which would put the checkout on sys.path and
# hide QGIS's own `processing` package). Exit 5 (no tests collected) fails like any non-zero.
test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

# Debian 13 / QGIS 3.40 / Python 3.13 / numpy 2: `make setup` and `make test` in a chroot built once with
# debootstrap (cached in GULLYSEG_TRIXIE_ROOT, default /var/cache/gullyseg/trixie). Needs root.
test-qgis340:
	bash tools/debian13/run.sh test PYTEST_ARGS="$(PYTEST_ARGS)"

demo: setup
	$(BIN)/python tools/demo.py --out $(DEMO_DIR)

# N999 (module name) is left out: ruff names the package after the checkout's folder (a clone in
# "wt_A" or "gullyseg-main" would fail), while QGIS always installs the plugin as "gullyseg".
lint: setup
	$(BIN)/ruff check --extend-ignore N999 .
	$(BIN)/flake8 .
	$(BIN)/python tools/qt6_check.py

package: setup
	$(BIN)/python tools/package.py --out dist

qgis: setup
	bash tools/run_qgis.sh

bench: setup
	@for script in benchmarks/bench_*.py; do \
	  [ -e "$$script" ] || { echo "no benchmarks yet"; break; }; \
	  echo "== $$script"; $(BIN)/python "$$script" $(BENCH_ARGS) || exit 1; \
	done

# PyTorch (requirements-train.txt) is optional for the plugin; `make setup` installs it on Python 3.11 so the
# training tests train for real. This target trains a demo-style model with trainmodel's engine (demo_output/).
train-model: setup
	$(BIN)/python -m pip install -q -c $(VENV)/gullyseg-constraints.txt -r requirements-train.txt
	$(BIN)/python tools/train_demo_model.py --minutes 32

clean:
	rm -rf build dist $(DEMO_DIR) .pytest_cache .ruff_cache
