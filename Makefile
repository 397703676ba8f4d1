# nasaudit: the user interface. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= paper
DATASETS ?= cifar10 cifar100 mnist fashionmnist svhn

.DEFAULT_GOAL := help
.PHONY: help venv smoke-test smoke-bless test test-all lint data bench clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

# The virtual environment is rebuilt only when a requirements file or pyproject.toml changes.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with the pinned dependencies (done by every other target)

smoke-test: $(STAMP)  ## the whole pipeline on embedded digits data, CPU, minutes; checks expected_results/smoke
	$(PY) -m nasaudit.smoke --out results/smoke

smoke-bless: $(STAMP)  ## (developers) accept this machine's smoke outputs as expected_results/smoke
	$(PY) -m nasaudit.smoke --out results/smoke --bless

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check artifact tests benchmarks
	$(VENV)/bin/ruff format --check artifact tests benchmarks

test: lint  ## ruff + the fast test suite (skips tests marked slow)
	$(PY) -m pytest -q -m "not slow"

test-all: lint  ## ruff + every test, the slow ones too
	$(PY) -m pytest -q

data: $(STAMP)  ## download the real datasets into data/ (needs internet; checksums verified)
	for d in $(DATASETS); do $(VENV)/bin/nasaudit data download $$d || exit 1; done

bench: $(STAMP)  ## speed against plain-PyTorch baselines measured in the same run (CPU, and GPU if present)
	$(PY) -m benchmarks

clean:  ## remove results/ and caches (keeps data/ and .venv/)
	rm -rf results .pytest_cache .ruff_cache
