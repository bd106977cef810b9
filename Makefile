# lmforge developer entry points. `make demo` and `make test` work on a fresh machine: they create
# the virtual environment (.venv) on first use. See README.md.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
IMAGE     ?=
GPU_IMAGE ?=
PROFILE   ?=

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_USAGE_STATS_ENABLED=0

.PHONY: venv checkov-venv checkov demo test test-unit test-integration bench experiments experiments-mini compile lock lint format clean

venv: $(STAMP)  ## create .venv and install lmforge with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# checkov (static security scan of the chart and k8s/) in a virtualenv of its own: it pins a
# `packaging` older than pytest needs, so it cannot share .venv. tests/unit/deploy/test_checkov.py
# runs it through $(CHECKOV) (skipped where it is not installed).
CHECKOV_VENV  ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
export LMFORGE_CHECKOV := $(abspath $(CHECKOV_VENV))/bin/checkov

checkov-venv: $(CHECKOV_STAMP)  ## create .venv-checkov with checkov

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==3.3.30'
	touch $(CHECKOV_STAMP)

checkov: venv checkov-venv  ## checkov on the rendered chart (default and hardened values) and k8s/
	$(BIN)/pytest tests/unit/deploy/test_checkov.py -s -p no:cacheprovider

demo: venv  ## run the whole lifecycle on the tiny profile, locally (no cluster, no network, CPU)
	$(BIN)/lmforge run lifecycle --profile tiny

test: venv checkov-venv  ## unit + integration + e2e tests (benchmarks excluded)
	$(BIN)/pytest tests --ignore=tests/benchmarks --timeout=1500 -p no:cacheprovider

test-unit: venv
	$(BIN)/pytest tests/unit --timeout=600

test-integration: venv
	$(BIN)/pytest tests/integration tests/e2e --timeout=1500

bench: venv  ## benchmarks: print ratios against baselines measured in the same run
	$(BIN)/pytest tests/benchmarks -s --timeout=3600 -p no:cacheprovider

experiments: venv  ## the seeds' continual-pretraining comparisons on tiny, 2 seeds: table, verdicts and plots in .lmforge/experiments/continual/
	$(BIN)/lmforge experiment continual --preset tiny

experiments-mini: venv  ## the same on the mini model, 1 seed, each configuration within 5 min on 2 cores: .lmforge/experiments/continual-mini/
	$(BIN)/lmforge experiment continual --preset mini

# IMAGE / GPU_IMAGE: the CPU and CUDA images the compiled pipelines name, as repo:tag or, to pin
# what was pushed, repo@sha256:<digest> (components/common/images.py checks the form).
# PROFILE: the profile the compiled pipelines default to and are sized for (default small+cluster).
compile: venv  ## write pipelines/compiled/*.yaml (IMAGE=repo@sha256:… GPU_IMAGE=repo@sha256:… to pin your images, PROFILE=1b+cluster for a 1B pipeline)
	$(if $(IMAGE),LMFORGE_COMPILE_IMAGE='$(IMAGE)') $(if $(GPU_IMAGE),LMFORGE_COMPILE_GPU_IMAGE='$(GPU_IMAGE)') \
	  $(BIN)/lmforge compile $(if $(PROFILE),--profile $(PROFILE))

# The images' lock files (images/README.md, "Lock files"): requirements.lock holds everything both
# images share, resolved from PyPI without torch; torch-cpu.lock / torch-cuda.lock hold torch's
# build for each image and what only it needs. Needs uv and the network; run it after any change
# to pyproject.toml's dependencies (tests/unit/deploy fails until then). Existing pins are kept
# where still allowed; LOCK_UPGRADE=--upgrade moves everything to the newest allowed versions.
# TORCH_CPU_SOURCE: where the +cpu torch build comes from (the PyTorch CPU index by default;
# "--find-links DIR" for a directory of wheels mirrored from it). The loop at the end drops the list
# of packages left to requirements.lock that uv appends to the torch locks.
UV               ?= uv
TORCH_CPU_SOURCE ?= --torch-backend cpu
LOCK_UPGRADE     ?=
LOCK_FLAGS = --no-config --quiet --generate-hashes $(LOCK_UPGRADE) \
	--python-version $$(cat images/python-version) --python-platform x86_64-manylinux_2_39 \
	--custom-compile-command 'make lock'
LOCK_SHARED = -c images/requirements.lock $$(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/--no-emit-package \1/p' images/requirements.lock)

lock:  ## regenerate images/*.lock from pyproject.toml (needs uv and the network)
	echo torch | $(UV) pip compile pyproject.toml $(LOCK_FLAGS) --excludes /dev/stdin -o images/requirements.lock
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) $(TORCH_CPU_SOURCE) $(LOCK_SHARED) -o images/torch-cpu.lock
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) $(LOCK_SHARED) -o images/torch-cuda.lock
	for f in images/torch-cpu.lock images/torch-cuda.lock; do \
	  sed '/^# The following packages were excluded from the output:/,$$d' $$f > $$f.tmp && mv $$f.tmp $$f; \
	done

lint: venv  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove local run outputs (store, MLflow DB, KFP outputs)
	rm -rf .lmforge
