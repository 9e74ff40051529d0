# podguard images. Two targets of one file (see deploy/README.md, "Images"):
#
#   docker build -t podguard:0.1.0 .                                      # the daemon (default)
#   docker build --target train -t podguard-train:0.1.0 .                 # retraining, CPU torch
#   docker build --target train --build-arg TORCH_VARIANT=cu130 -t podguard:0.1.0-cuda .
#
# * `daemon` (the last stage, so the default): `podguard run`, the DaemonSet's image. Only the
#   daemon's runtime set (pyproject.toml `dependencies`, pinned in requirements-daemon.lock):
#   no torch, CUDA, shap, pyod, numba, matplotlib, scikit-learn, scipy, skops or pyarrow; the
#   models are numpy arrays read with safetensors. Its Python environment is a venv at
#   /opt/podguard/venv (~270 MB; tests/test_torch_free.py checks the daemon imports nothing
#   outside that set).
# * `train`: `podguard train`, the retraining CronJob's image (`podguard-cuda` in
#   deploy/kustomize/base/kustomization.yaml): podguard[train] with torch from the PyTorch
#   wheel index of TORCH_VARIANT (cpu, or a CUDA variant such as cu130).
#
# tests/test_dockerfile.py checks this file without a Docker engine: it parses, every COPY
# source exists and is in the build context, the daemon stage installs exactly
# requirements-daemon.lock (no torch), torch in the train stage is the version of
# pyproject.toml and requirements.lock, and the builder stage's COPY set builds the wheel.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Builds the wheel (the version of requirements.lock; tests/test_dockerfile.py checks it).
ARG SETUPTOOLS_VERSION=84.2.1

# ---------------------------------------------------------------- builder: the podguard wheel
FROM ${PYTHON_IMAGE} AS builder
ARG SETUPTOOLS_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install "setuptools==${SETUPTOOLS_VERSION}"
COPY pyproject.toml README.md LICENSE ./
COPY detector ./detector
COPY training ./training
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------- daemon-env: the daemon's venv
FROM ${PYTHON_IMAGE} AS daemon-env
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-daemon.lock /tmp/requirements-daemon.lock
COPY --from=builder /wheels /wheels
# A venv without pip (the base image's pip installs into it): the runtime lock is the whole
# closure, so --no-deps installs exactly its pins, then the podguard wheel on top. The
# Kubernetes client's asyncio twin (kubernetes/aio, 67 MB) is never imported by podguard or
# by the synchronous client it uses.
RUN python -m venv --without-pip /opt/podguard/venv \
    && pip --python /opt/podguard/venv/bin/python install --no-deps \
        -r /tmp/requirements-daemon.lock \
    && pip --python /opt/podguard/venv/bin/python install --no-deps /wheels/podguard-*.whl \
    && rm -rf /opt/podguard/venv/lib/python3.*/site-packages/kubernetes/aio

# ---------------------------------------------------------------- train: podguard train
FROM ${PYTHON_IMAGE} AS train
ARG SETUPTOOLS_VERSION
ARG TORCH_VERSION=2.15.0
# cpu, or a CUDA variant of the PyTorch wheel index (cu130, ...): torch==TORCH_VERSION+VARIANT
ARG TORCH_VARIANT=cpu
# the version of pyproject.toml (tests/test_dockerfile.py checks that they agree)
ARG PODGUARD_VERSION=0.1.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PODGUARD_DEFAULT_MODEL=/opt/podguard/model \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib NUMBA_CACHE_DIR=/tmp/numba
COPY requirements.lock /tmp/requirements.lock
COPY --from=builder /wheels /wheels
# 1. torch alone from the PyTorch wheel index of TORCH_VARIANT (2.15.0+cpu by default);
# 2. the podguard wheel with its [train] extra, every version held to requirements.lock (a
#    constraints file: only what podguard[train] needs, none of the lock's dev tools). The
#    installed torch satisfies `torch==2.15.0` (a local version label is ignored).
RUN pip install --no-deps --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}" \
    && pip install -c /tmp/requirements.lock --find-links /wheels \
        "setuptools==${SETUPTOOLS_VERSION}" "podguard[train]==${PODGUARD_VERSION}" \
    && rm -rf /wheels /tmp/requirements.lock
COPY data/model /opt/podguard/model
RUN groupadd --system --gid 10001 podguard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin podguard
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["podguard"]
CMD ["train", "--help"]

# ---------------------------------------------------------------- daemon: podguard run (default)
FROM ${PYTHON_IMAGE} AS daemon
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/podguard/venv/bin:$PATH \
    PODGUARD_DEFAULT_MODEL=/opt/podguard/model \
    HOME=/tmp
COPY --from=daemon-env /opt/podguard/venv /opt/podguard/venv
# The shipped default model, found through PODGUARD_DEFAULT_MODEL (detector.pipeline).
COPY data/model /opt/podguard/model
RUN groupadd --system --gid 10001 podguard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin podguard
USER 10001:10001
WORKDIR /tmp
EXPOSE 9731
ENTRYPOINT ["podguard", "run"]
