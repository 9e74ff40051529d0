# podguard image: the daemon (`podguard run`, the entrypoint) and the retraining job
# (`podguard train`, the CronJob's command). See deploy/README.md.
#
#   docker build -t podguard:0.1.0 .                                   # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu130 -t podguard:0.1.0-cuda .   # CUDA torch
#
# The daemon never imports torch (scoring and explanations run on numpy); torch is there for
# `podguard train`. The CPU wheel keeps the default image small; the CUDA one is for the GPU
# retraining CronJob (image `podguard-cuda` in deploy/kustomize/base/kustomization.yaml).
#
# tests/test_dockerfile.py checks this file without a Docker engine: it parses, every COPY
# source exists and is in the build context, torch is the version of pyproject.toml and
# requirements.lock, the lock is the constraints file, and the builder stage's COPY set is
# enough to build the wheel.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Builds the wheel, and is installed in the image too (torch requires it); the version of
# requirements.lock (tests/test_dockerfile.py checks that they agree).
ARG SETUPTOOLS_VERSION=84.2.1

# ---------------------------------------------------------------- builder: the podguard wheel
FROM ${PYTHON_IMAGE} AS builder
ARG SETUPTOOLS_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install "setuptools==${SETUPTOOLS_VERSION}"
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY training ./training
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG SETUPTOOLS_VERSION
ARG TORCH_VERSION=2.15.0
# cpu, or a CUDA variant of the PyTorch wheel index (cu130, ...): torch==TORCH_VERSION+VARIANT
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PODGUARD_DEFAULT_MODEL=/opt/podguard/model \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib NUMBA_CACHE_DIR=/tmp/numba
COPY requirements.lock /tmp/requirements.lock
COPY --from=builder /wheels /wheels
# 1. torch alone from the PyTorch wheel index of TORCH_VARIANT (2.15.0+cpu by default);
# 2. the podguard wheel with its dependencies, every version held to requirements.lock (a
#    constraints file: only what podguard needs is installed, none of the lock's dev tools).
#    The installed torch satisfies `torch==2.15.0` (a local version label is ignored), and
#    its own dependencies are resolved here, under the same constraints.
RUN pip install --no-deps --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}" \
    && pip install -c /tmp/requirements.lock "setuptools==${SETUPTOOLS_VERSION}" \
        /wheels/podguard-*.whl \
    && rm -rf /wheels /tmp/requirements.lock
# The shipped default model, found through PODGUARD_DEFAULT_MODEL (detector.pipeline).
COPY data/model /opt/podguard/model
RUN groupadd --system --gid 10001 podguard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin podguard
USER 10001:10001
WORKDIR /tmp
EXPOSE 9731
ENTRYPOINT ["podguard", "run"]
