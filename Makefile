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

.PHONY: setup test demo lint package qgis bench train-model clean help

help:
	@echo "make setup    install Debian packages (QGIS, GDAL) and .venv (idempotent)"
	@echo "make test     run the whole test suite headless"
	@echo "make demo     run the whole workflow on generated demo data into $(DEMO_DIR)/"
	@echo "make lint     ruff + flake8-qgis"
	@echo "make package  build dist/gullyseg-<version>.zip for 'Install from ZIP'"
	@echo "make qgis     start QGIS with the plugin loaded from this checkout"
	@echo "make bench    run the benchmarks in benchmarks/ (BENCH_ARGS=--quick for small sizes)"
	@echo "make train-model  retrain the demo model (installs PyTorch, a tool-only dependency)"

setup:
	@bash tools/setup.sh

# pytest (the script, not `python -m pytest`, which would put the checkout on sys.path and
# hide QGIS's own `processing` package). Exit 5 (no tests collected) fails like any non-zero.
test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/python tools/demo.py --out $(DEMO_DIR)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/flake8 .

package: setup
	$(BIN)/python tools/package.py --out dist

qgis: setup
	bash tools/run_qgis.sh

bench: setup
	@for script in benchmarks/bench_*.py; do \
	  [ -e "$$script" ] || { echo "no benchmarks yet"; break; }; \
	  echo "== $$script"; $(BIN)/python "$$script" $(BENCH_ARGS) || exit 1; \
	done

# PyTorch is needed by tools/train_demo_model.py only, never by the plugin or the tests.
train-model: setup
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-train.txt
	$(BIN)/python tools/train_demo_model.py --minutes 32

clean:
	rm -rf build dist $(DEMO_DIR) .pytest_cache .ruff_cache
