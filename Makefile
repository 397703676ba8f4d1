# nasaudit: the user interface. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= paper
# SET='section.key=value ...' changes profile values of every nasaudit command below (`--set` each,
# checked before any work; no spaces inside a value), e.g. make table1 SET='train.epochs=10 grid.retries=0'
SET ?=
SET_ARGS = $(foreach s,$(SET),--set '$(s)')
DATASETS ?= cifar10 cifar100 mnist fashionmnist svhn

# THREADS=N: CPU threads per job for every command below (default: the CPUs a job may use, shared among
# the jobs run at once; see nasaudit/threads.py).
THREADS ?=
ifneq ($(THREADS),)
export NASAUDIT_THREADS := $(THREADS)
endif

.DEFAULT_GOAL := help
.PHONY: help venv smoke-test smoke-bless smoke-portability test test-all test-slurm lint data bench preflight \
	gpu-check clean table1 table2 table3 table4 table5 table6 figures report
include mk/docker.mk

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

# The virtual environment is rebuilt only when a requirements file or pyproject.toml changes.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with the pinned dependencies (done by every other target)

smoke-test: $(STAMP)  ## the whole pipeline on embedded digits data, CPU, < 10 min; checks expected_results/smoke
	$(PY) -m nasaudit.smoke --out results/smoke

smoke-bless: $(STAMP)  ## (developers) record this run's exact outputs and the steps' ranges as expected
	$(PY) -m nasaudit.smoke --out results/smoke --bless

# Not part of `make test`: four smoke runs (plain and best CPU kernels, 1 and 2 threads), then which
# outputs differ between them. STEPS=retrain,poison (say) runs only those steps.
STEPS ?=
smoke-portability: $(STAMP)  ## (developers) smoke test under 4 CPU settings; reports outputs that differ
	$(PY) -m nasaudit.smoke --portability --out results/smoke-portability $(if $(STEPS),--steps $(STEPS))

lint: $(STAMP) docker-lint  ## ruff, and hadolint on the Dockerfile
	$(VENV)/bin/ruff check artifact tests benchmarks
	$(VENV)/bin/ruff format --check artifact tests benchmarks

test: lint  ## ruff + the fast test suite (skips tests marked slow, and those marked cuda)
	$(PY) -m pytest -q -m "not slow and not cuda"

test-all: lint  ## ruff + every test: the slow ones, those marked cuda on a GPU machine, test-slurm when root
	$(PY) -m pytest -q -m "not slurm"
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) test-slurm; else echo "test-all: test-slurm skipped (needs root)"; fi

# A one-node Slurm cluster on localhost (tests/slurm/localslurm.py): installed with apt when missing,
# started in a temporary folder, stopped (exactly its processes) and removed after the checks.
test-slurm: $(STAMP)  ## (root) the slurm runner against a real one-node Slurm on localhost; ~15 min on 2 cores
	$(PY) tests/slurm/localslurm.py install
	$(PY) -m pytest -q -m slurm tests/slurm

data: $(STAMP)  ## download the real datasets into data/ (needs internet; checksums verified)
	for d in $(DATASETS); do $(VENV)/bin/nasaudit data download $$d || exit 1; done

# Tables 1, 3, 4, 5, 6: the experiment's grid (resumable: a rerun skips finished jobs), its table, then
# the cell-by-cell comparison with the paper's (PROFILE=paper) or expected_results/PROFILE/ when present.
# `grid-TABLE` is the grid step alone: natively, or with DOCKER=1 each algorithm in its image.
RUNNER ?= local
DOCKER ?=
TABLES = results/$(PROFILE)/tables
EXPECTED = $(if $(filter paper,$(PROFILE)),expected_results/published,expected_results/$(PROFILE))
GRID_TABLES := table1 table3 table4 table5 table6
.PHONY: $(addprefix grid-,$(GRID_TABLES))

$(addprefix grid-,$(GRID_TABLES)): grid-%: $(STAMP)
ifeq ($(DOCKER),1)
	$(MAKE) docker-grid EXPERIMENT=$* PROFILE=$(PROFILE)
else
	$(VENV)/bin/nasaudit grid run $* --profile $(PROFILE) $(SET_ARGS) --runner $(RUNNER) $(GRID_ARGS)
endif

define table_recipe
	$(VENV)/bin/nasaudit table $@ --profile $(PROFILE) $(SET_ARGS) --out $(TABLES)
	@if [ -f $(EXPECTED)/$@.csv ]; then \
		$(VENV)/bin/nasaudit compare $@ --ours $(TABLES)/$@.csv --expected $(EXPECTED)/$@.csv; \
	else \
		echo "$@: no $(EXPECTED)/$@.csv to compare with; the table above is complete (every job has a result)"; \
	fi
endef

table1: grid-table1  ## grid, table, comparison: PROFILE=paper|smoke RUNNER=local|slurm DOCKER=1 SET=... GRID_ARGS=...
	$(table_recipe)

table3: grid-table3  ## the same for Table 3 (search on MNIST, FashionMNIST, SVHN; retrain on CIFAR-10)
	$(table_recipe)

table4: grid-table4  ## the same for Table 4 (defended poisoned data against the undefended Table 1 cells)
	$(table_recipe)

table5: grid-table5  ## the same for Table 5 (NSGANetV2)
	$(table_recipe)

table6: grid-table6  ## the same for Table 6 (NAS-specific GC on P-DARTS, search without augmentation)
	$(table_recipe)

# Table 2 (metric sensitivity; no training) and Figure 1 (from Table 1's grid).
# PROFILE=paper needs `make data` and downloads pretrained weights on first use (each command refuses
# with one line naming what is missing); PROFILE=smoke runs on digits. ANALYSIS_ARGS=--victim FILE gives
# nas_gc its victim, or e.g. --device cuda:1 / --shard K/N (Table 2's parallel runs).
ANALYSIS_ARGS ?=

table2: $(STAMP)  ## Table 2: training-free metrics, clean vs poisoned (p = 50%), + comparison; ANALYSIS_ARGS=...
	$(VENV)/bin/nasaudit sensitivity --profile $(PROFILE) $(SET_ARGS) --out results/$(PROFILE)/table2 $(ANALYSIS_ARGS)
	@if [ -f $(EXPECTED)/$@.csv ] && [ -f results/$(PROFILE)/table2/table2.csv ]; then \
		$(VENV)/bin/nasaudit compare $@ --ours results/$(PROFILE)/table2/table2.csv --expected $(EXPECTED)/$@.csv; \
	fi

figures: $(STAMP)  ## Figure 1: cells of the best clean and worst RLF-50% P-DARTS architecture of `make table1`
	$(VENV)/bin/nasaudit figure cells --grid results --profile $(PROFILE) $(SET_ARGS) --out results/$(PROFILE)/figures/figure1

report: $(STAMP)  ## one HTML page, no network: every table vs the paper, plots, provenance (results/PROFILE/report)
	$(VENV)/bin/nasaudit report --profile $(PROFILE) $(SET_ARGS) --results results

bench: $(STAMP)  ## speed against plain-PyTorch baselines measured in the same run (CPU, and GPU if present)
	$(PY) -m benchmarks

# Every kind of task of every table at PROFILE's sizes for a few steps on synthetic data (docs/preflight.md);
# exit 1 if any fails. PREFLIGHT_ARGS=--device cuda | --only TEXT ... | --list
PREFLIGHT_ARGS ?=
preflight: $(STAMP)  ## every kind of task at PROFILE's sizes, a few steps on synthetic data (docs/preflight.md)
	$(VENV)/bin/nasaudit preflight --profile $(PROFILE) --out results/preflight $(PREFLIGHT_ARGS)

gpu-check: $(STAMP)  ## on a GPU machine, first: preflight, GPU ratios, fp32 vs bf16, concurrency, GPU-hours (≤ 13 min)
	$(PY) -m benchmarks.gpu_check --out results/gpu-check

clean:  ## remove results/ and caches (keeps data/ and .venv/)
	rm -rf results .pytest_cache .ruff_cache
