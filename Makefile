# lmforge developer entry points. `make demo` and `make test` work on a fresh machine: they create
# the virtual environment (.venv) on first use. See README.md.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
IMAGE  ?=
PROFILE ?=

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_USAGE_STATS_ENABLED=0

.PHONY: venv demo test test-unit test-integration bench compile lint format clean

venv: $(STAMP)  ## create .venv and install lmforge with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv  ## run the whole lifecycle on the tiny profile, locally (no cluster, no network, CPU)
	$(BIN)/lmforge run lifecycle --profile tiny

test: venv  ## unit + integration + e2e tests (benchmarks excluded)
	$(BIN)/pytest tests --ignore=tests/benchmarks --timeout=1500 -p no:cacheprovider

test-unit: venv
	$(BIN)/pytest tests/unit --timeout=600

test-integration: venv
	$(BIN)/pytest tests/integration tests/e2e --timeout=1500

bench: venv  ## benchmarks: print ratios against baselines measured in the same run
	$(BIN)/pytest tests/benchmarks -s --timeout=3600 -p no:cacheprovider

compile: venv  ## write pipelines/compiled/*.yaml (IMAGE=registry/lmforge:tag for your registry, PROFILE=1b+cluster for a 1B pipeline)
	$(if $(IMAGE),LMFORGE_COMPILE_IMAGE=$(IMAGE)) $(BIN)/lmforge compile $(if $(PROFILE),--profile $(PROFILE))

lint: venv  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove local run outputs (store, MLflow DB, KFP outputs)
	rm -rf .lmforge
