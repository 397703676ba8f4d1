# One image per NAS algorithm, each with the PyTorch the paper's authors ran it with (their forks'
# requirement files) where that is at least 2.0, else 2.0.0, the oldest this package supports (README,
# "Containers", says which and why).
#   make docker-build-pdarts      # or: docker build --target pdarts --tag nasaudit:pdarts .
#   make docker-run ALGO=pdarts CMD="data info digits"
# torch 2.0.x supports Python 3.8-3.11, requirements.txt's other pins need >= 3.11: so 3.11.
# The base image: its tag unless pinned by digest. `docker buildx imagetools inspect
# python:3.11-slim-bookworm` prints the tag's current index digest; build on exactly that image with
#   make docker-build PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# No digest is written here: none could be verified where this file was last edited (no registry access).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package as a wheel, and the pins the images install; no source tree reaches an image.
FROM python AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY artifact/ artifact/
RUN pip wheel --no-deps --wheel-dir /opt/nasaudit/dist .
COPY requirements.txt /opt/nasaudit/
COPY docker/ /opt/nasaudit/docker/

# What every algorithm's image shares: an unprivileged user, the data/ and results/ volumes, the CLI.
FROM python AS base
COPY --from=build /opt/nasaudit /opt/nasaudit
RUN groupadd --gid 1000 nasaudit \
    && useradd --create-home --uid 1000 --gid 1000 nasaudit \
    && mkdir -p /workspace/data /workspace/results \
    && chown -R 1000:1000 /workspace
# `make docker-run` runs as the host's uid, which has no home here: matplotlib gets a writable cache.
ENV NASAUDIT_DATA=/workspace/data \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /workspace
VOLUME ["/workspace/data", "/workspace/results"]
ENTRYPOINT ["nasaudit"]
CMD ["--help"]

# Each target, as root: requirements.txt's pins other than torch's (adapted to the target's torch by
# docker/torch-MAJOR.MINOR.txt), then torch and torchvision from the CUDA wheel index its build
# arguments name, holding those pins, then the package; only then the unprivileged user.
# cu118 is the oldest CUDA whose torch 2.0.x wheels carry sm_90 (H100) kernels; cu117's stop at sm_86.

# P-DARTS as the authors ran it: ztcoalson/pdarts reqs_pip.txt:37 torch==2.0.0+cu118 (its torchvision
# 0.15.0+cu118 is not on PyPI; 0.15.1 is torch 2.0.0's release pair).
FROM base AS pdarts
ARG TORCH_VERSION=2.0.0
ARG TORCHVISION_VERSION=0.15.1
ARG CUDA_VARIANT=cu118
RUN python /opt/nasaudit/docker/requirements.py "${TORCH_VERSION}" > /opt/nasaudit/requirements-image.txt \
    && pip install --requirement /opt/nasaudit/requirements-image.txt \
    && pip install --index-url "https://download.pytorch.org/whl/${CUDA_VARIANT}" \
        --constraint /opt/nasaudit/requirements-image.txt \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install --no-deps /opt/nasaudit/dist/nasaudit-*.whl \
    && pip check
USER 1000:1000

# TE-NAS: the authors ran torch==1.8.0+cu111 (ztcoalson/TENAS reqs_pip.txt:53), older than this package
# supports: the oldest it does.
FROM base AS tenas
ARG TORCH_VERSION=2.0.0
ARG TORCHVISION_VERSION=0.15.1
ARG CUDA_VARIANT=cu118
RUN python /opt/nasaudit/docker/requirements.py "${TORCH_VERSION}" > /opt/nasaudit/requirements-image.txt \
    && pip install --requirement /opt/nasaudit/requirements-image.txt \
    && pip install --index-url "https://download.pytorch.org/whl/${CUDA_VARIANT}" \
        --constraint /opt/nasaudit/requirements-image.txt \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install --no-deps /opt/nasaudit/dist/nasaudit-*.whl \
    && pip check
USER 1000:1000

# RoBoT as the authors ran it: ztcoalson/RoBoT reqs_pip.txt:41 torch==2.0.1 (PyPI's, CUDA 11.7).
FROM base AS robot
ARG TORCH_VERSION=2.0.1
ARG TORCHVISION_VERSION=0.15.2
ARG CUDA_VARIANT=cu118
RUN python /opt/nasaudit/docker/requirements.py "${TORCH_VERSION}" > /opt/nasaudit/requirements-image.txt \
    && pip install --requirement /opt/nasaudit/requirements-image.txt \
    && pip install --index-url "https://download.pytorch.org/whl/${CUDA_VARIANT}" \
        --constraint /opt/nasaudit/requirements-image.txt \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install --no-deps /opt/nasaudit/dist/nasaudit-*.whl \
    && pip check
USER 1000:1000

# NSGANetV2: the authors ran torch==1.8.0+cu111 (ztcoalson/nsganetv2 requirements.txt:43; 1.5.1 before
# commit f8b664b), older than this package supports: the oldest it does.
FROM base AS nsganetv2
ARG TORCH_VERSION=2.0.0
ARG TORCHVISION_VERSION=0.15.1
ARG CUDA_VARIANT=cu118
RUN python /opt/nasaudit/docker/requirements.py "${TORCH_VERSION}" > /opt/nasaudit/requirements-image.txt \
    && pip install --requirement /opt/nasaudit/requirements-image.txt \
    && pip install --index-url "https://download.pytorch.org/whl/${CUDA_VARIANT}" \
        --constraint /opt/nasaudit/requirements-image.txt \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install --no-deps /opt/nasaudit/dist/nasaudit-*.whl \
    && pip check
USER 1000:1000
