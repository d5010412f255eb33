# Developer tasks for pb-adapters.
#
#   make demo      train the built-in offline demo task (python examples/train.py)
#   make test      ruff, mkdocs build --strict, then the whole test suite
#   make test-min  the test suite against the lowest versions pyproject.toml allows (.venv-min)
#
# demo and test create .venv and install the project into it (pip install -e ".[dev]") on first
# use, and again whenever pyproject.toml changes; test-min does the same with .venv-min. Override
# variables on the command line, e.g.
#   make test PYTEST_ARGS="-k serialization -x"    make demo DEMO_ARGS="--epochs 1"

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pb-adapters-dev-installed
PYTEST_ARGS ?=
# Threads per torch process in the test suite. The tests use tiny tensors, for which thread
# hand-offs cost more than they save: on 2 cores, 1 thread ran the suite several times faster
# than torch's default of 2.
TEST_THREADS ?= 1
DEMO_ARGS ?=
SITE_DIR ?= site

# Quiet the theme's end-of-life banner in build logs.
export NO_MKDOCS_2_WARNING := 1

# Fails when torch and torchvision cannot be imported together (for example a torch build from a
# local wheel folder next to a torchvision from the package index, which are ABI-incompatible).
TORCH_CHECK := import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")

# The lowest-versions environment of `make test-min`: uv resolves the direct dependencies (and the
# extras the suite needs) to the lowest versions pyproject.toml allows, everything else to the
# newest that fits, as a user who pins only the floors would get today.
MIN_VENV ?= .venv-min
MIN_BIN := $(MIN_VENV)/bin
MIN_STAMP := $(MIN_VENV)/.pb-adapters-min-installed
MIN_EXTRAS := --extra test --extra examples --extra benchmarks
UV_VERSION ?= 0.13.9
VERSIONS := import importlib.metadata as m; print("; ".join(f"{d} {m.version(d)}" for d in ("torch", "torchvision", "timm", "transformers", "huggingface-hub", "accelerate", "datasets", "safetensors", "numpy", "pillow", "matplotlib", "constriction", "peft")))

.PHONY: help install demo test test-min lint format docs docs-serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "pb-adapters needs Python >= 3.10; run: make PYTHON=python3.X ..." >&2; exit 1; }
	@test -x $(BIN)/python || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet "pip>=23.1"
	$(BIN)/python -m pip install -e ".[dev]"
	@if ! $(BIN)/python -c '$(TORCH_CHECK)' >/dev/null 2>&1; then \
		echo "torch and torchvision in $(VENV) do not work together; reinstalling both from the package index (ignoring pip's find-links and user configuration)" >&2; \
		$(BIN)/python -m pip --isolated --disable-pip-version-check install --upgrade --force-reinstall torch torchvision; \
	fi
	@$(BIN)/python -c '$(TORCH_CHECK)' || { echo "torch/torchvision still fail to import in $(VENV); see the error above" >&2; exit 1; }
	@touch $@

install: $(STAMP)  ## create .venv and install the project with its dev extras

demo: $(STAMP)  ## train the offline demo task (examples/train.py, default settings)
	$(BIN)/python examples/train.py $(DEMO_ARGS)

test: $(STAMP)  ## ruff, strict docs build, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
		&& echo "mkdocs build --strict (into a temporary folder)" \
		&& $(BIN)/mkdocs build --strict --quiet --site-dir "$$tmp"
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest $(PYTEST_ARGS)

$(MIN_STAMP): pyproject.toml
	rm -rf $(MIN_VENV)
	@echo "creating $(MIN_VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(MIN_BIN)/uv pip compile --quiet --python $(MIN_BIN)/python --resolution lowest-direct \
		pyproject.toml $(MIN_EXTRAS) --output-file $(MIN_VENV)/requirements-min.txt
	$(MIN_BIN)/uv pip install --python $(MIN_BIN)/python -r $(MIN_VENV)/requirements-min.txt
	$(MIN_BIN)/uv pip install --quiet --python $(MIN_BIN)/python --no-deps -e .
	@touch $@

test-min: $(MIN_STAMP)  ## the test suite with the lowest versions pyproject.toml allows
	@$(MIN_BIN)/python -c '$(VERSIONS)'
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(TEST_THREADS) $(MIN_BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(STAMP)  ## build the documentation site into site/
	$(BIN)/mkdocs build --strict --site-dir $(SITE_DIR)

docs-serve: $(STAMP)  ## serve the documentation on http://127.0.0.1:8000 with live reload
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

clean:  ## remove .venv, .venv-min, the built site, build outputs and caches
	rm -rf $(VENV) $(MIN_VENV) $(SITE_DIR) build dist .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find src -name '*.egg-info' -type d -prune -exec rm -rf {} +
