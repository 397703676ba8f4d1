# One image per NAS algorithm, each with the PyTorch of its official implementation where that is
# at least 2.0, else 2.0.1, the oldest this package supports (README, "Containers", says which and why).
#   make docker-build-pdarts      # or: docker build --target pdarts --tag nasaudit:pdarts .
#   make docker-run ALGO=pdarts CMD="data info digits"
# torch 2.0.1 supports Python 3.8-3.11, requirements.txt's other pins need >= 3.11: so 3.11.

FROM python:3.11-slim-bookworm AS python
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
# docker/torch-VERSION.txt), then torch and torchvision from the CUDA wheel index its build arguments
# name, holding those pins, then the package; only then the unprivileged user.
# cu118 is the oldest CUDA whose torch 2.0.1 wheels carry sm_90 (H100) kernels; cu117's stop at sm_86.

# P-DARTS (Chen et al., 2019): official README asks for "PyTorch 0.4 or above".
FROM base AS pdarts
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

# TE-NAS (Chen et al., 2021): official requirements.txt pins torch==1.6.0.
FROM base AS tenas
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

# RoBoT (He et al., 2024): official requirements.txt pins torch==2.0.1.
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

# NSGANetV2 (Lu et al., 2020): official README lists PyTorch 1.5.1.
FROM base AS nsganetv2
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
