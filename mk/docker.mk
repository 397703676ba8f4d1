# Containers: one image per NAS algorithm, each with the PyTorch its Dockerfile target pins.
# Included from the Makefile; `make help` lists these targets with the others.
# The registered algorithms' images (NasAlgorithm.image), written out so that `make -n` needs no venv;
# tests/test_docker.py checks that the list is exactly the registry's and each a Dockerfile target.
DOCKER_ALGOS := pdarts tenas robot nsganetv2
.PHONY: docker-build docker-run docker-grid docker-lint test-compat \
	$(addprefix docker-build-,$(DOCKER_ALGOS)) $(addprefix docker-grid-,$(DOCKER_ALGOS))

DOCKER_BIN ?= docker
DOCKER_IMAGE ?= nasaudit
# Set CUDA_VARIANT (e.g. cu117 for a driver older than CUDA 11.8's) to build against another wheel index.
CUDA_VARIANT ?=
# Set PYTHON_IMAGE (python:3.11-slim-bookworm@sha256:...) to build on a base image pinned by digest.
PYTHON_IMAGE ?=
GRID_ARGS ?=
# The host's data/ and results/ are the container's, and files are written as the calling user; THREADS
# reaches the container (without it, nasaudit sizes its threads to the container's CPU quota).
DOCKER_RUN = $(DOCKER_BIN) run --rm --gpus all --ipc=host --user $(shell id -u):$(shell id -g) \
	-v $(CURDIR)/data:/workspace/data -v $(CURDIR)/results:/workspace/results \
	$(if $(THREADS),-e NASAUDIT_THREADS=$(THREADS))

docker-build: $(addprefix docker-build-,$(DOCKER_ALGOS))  ## build every algorithm's image (docker-build-ALGO: one)

$(addprefix docker-build-,$(DOCKER_ALGOS)): docker-build-%:
	$(DOCKER_BIN) build --target $* --tag $(DOCKER_IMAGE):$* $(if $(CUDA_VARIANT),--build-arg CUDA_VARIANT=$(CUDA_VARIANT) )$(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) ).

docker-run:  ## run CMD in ALGO's image on the GPUs: make docker-run ALGO=pdarts CMD="data info digits"
	$(if $(filter $(DOCKER_ALGOS),$(ALGO)),,$(error ALGO must be one of: $(DOCKER_ALGOS)))
	mkdir -p data results
	$(DOCKER_RUN) $(DOCKER_IMAGE):$(ALGO) $(CMD)

docker-grid: $(addprefix docker-grid-,$(DOCKER_ALGOS))  ## EXPERIMENT's grid, each algorithm in its image: make docker-grid EXPERIMENT=table1

$(addprefix docker-grid-,$(DOCKER_ALGOS)): docker-grid-%: docker-build-%
	$(if $(EXPERIMENT),,$(error EXPERIMENT is not set, e.g. make docker-grid EXPERIMENT=table1))
	mkdir -p data results
	$(DOCKER_RUN) $(DOCKER_IMAGE):$* grid run $(EXPERIMENT) --profile $(PROFILE) $(SET_ARGS) --algo $* $(GRID_ARGS)

docker-lint: $(STAMP)  ## hadolint on the Dockerfile, ruff on docker/
	$(VENV)/bin/hadolint --no-color Dockerfile
	$(VENV)/bin/ruff check docker
	$(VENV)/bin/ruff format --check docker

# The images' library sets without Docker: one venv per distinct torch the targets pin (.venv-compat-
# VERSION), CPU-run wheels from PyPI, and requirements.txt's other pins as docker/requirements.py adapts
# them to that torch. COMPAT_PAIRS lists torch:torchvision as the Dockerfile's targets pin them.
COMPAT_PAIRS := 2.0.0:0.15.1 2.0.1:0.15.2
COMPAT_TORCHES := $(foreach pair,$(COMPAT_PAIRS),$(word 1,$(subst :, ,$(pair))))
compat_torchvision = $(word 2,$(subst :, ,$(filter $(1):%,$(COMPAT_PAIRS))))
.PHONY: $(addprefix test-compat-,$(COMPAT_TORCHES))

.venv-compat-%/.installed: requirements.txt requirements-dev.txt pyproject.toml docker/requirements.py docker/torch-2.0.txt
	$(PYTHON) -m venv .venv-compat-$*
	$(PYTHON) docker/requirements.py $* > .venv-compat-$*/requirements.txt
	.venv-compat-$*/bin/python -m pip install --quiet --disable-pip-version-check \
		torch==$* torchvision==$(call compat_torchvision,$*) \
		-r .venv-compat-$*/requirements.txt -r requirements-dev.txt
	.venv-compat-$*/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

test-compat: $(addprefix test-compat-,$(COMPAT_TORCHES))  ## the fast tests under each torch the images pin (test-compat-VERSION: one)

$(addprefix test-compat-,$(COMPAT_TORCHES)): test-compat-%: .venv-compat-%/.installed
	.venv-compat-$*/bin/python -m pytest -q -m "not slow"
