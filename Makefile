# make demo: set up, then run the main job on the bundled default model (without the bitstream step).
# make test: set up, then run the tests.
# Setup creates .venv when missing and installs everything, torch 2.13.0 (CPU) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.accel-installed

.PHONY: setup demo test test-all bench check-timm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	@# Icarus Verilog, the second simulator (Debian package; needs root). Without it the Icarus
	@# tests skip and say why.
	@command -v iverilog >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && apt-get install -y -qq iverilog >/dev/null; } || \
	  echo "note: iverilog could not be installed; the Icarus tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

# The bitstream step is left out to keep the demo at about 2 minutes: place and route of digits-moe
# on the ULX3S-85F takes 11 minutes or more with the YoWASP nextpnr, and whether it routes depends
# on the placement (docs/benchmarks.md); `accel run` alone includes it.
demo: setup
	$(BIN)/accel run --no-build

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

bench: setup
	$(BIN)/python bench/reference.py --model m3vit-tiny-224

# timm needs torchvision, whose PyPI wheels do not load beside the CPU torch 2.13.0 of .venv:
# check the importer against timm's own forward in a separate venv (torch 2.14.1 + torchvision
# 0.29.1, about 5.5 GB).
check-timm:
	test -x .venv-timm/bin/python || $(PYTHON) -m venv .venv-timm
	.venv-timm/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	.venv-timm/bin/python -m pip install -q timm numpy pyyaml scikit-learn pytest
	.venv-timm/bin/python -m pip install -q --no-deps -e .
	.venv-timm/bin/python -m pytest -q tests/test_importer.py

clean:
	rm -rf build sim_build .pytest_cache
