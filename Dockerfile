# podguard image: the daemon (`podguard run`, the entrypoint) and the retraining job
# (`podguard train`, the CronJob's command). See deploy/README.md.
#
#   docker build -t podguard:0.1.0 .                      # CPU torch (default; daemon + CPU training)
#   docker build -t podguard:0.1.0-cuda \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .   # CUDA torch (GPU training)
#
# tests/test_dockerfile.py parses this file: COPY sources exist, the torch version equals the
# pin in pyproject.toml, every package installed by name is pinned as in requirements.lock.

# ---------------------------------------------------------------- builder: the podguard wheel
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY training ./training
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM python:3.11-slim AS runtime
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.15.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PODGUARD_DEFAULT_MODEL=/opt/podguard/model \
    MPLCONFIGDIR=/tmp/matplotlib HOME=/tmp
COPY requirements.lock /tmp/requirements.lock
# 1. The exact lock minus torch and its CUDA-only wheels (torch comes from TORCH_INDEX next).
# 2. torch from TORCH_INDEX (CPU by default), its dependencies held to the lock's versions.
RUN grep -Ev '^(torch|triton|nvidia-[A-Za-z0-9_.-]+|cuda-[A-Za-z0-9_.-]+)==' \
        /tmp/requirements.lock > /tmp/runtime.lock \
    && pip install --no-deps -r /tmp/runtime.lock \
    && pip install --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
        -c /tmp/requirements.lock "torch==${TORCH_VERSION}" \
    && rm /tmp/runtime.lock /tmp/requirements.lock
COPY --from=builder /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels
# The shipped default model, found through PODGUARD_DEFAULT_MODEL (detector.pipeline).
COPY data/model /opt/podguard/model
RUN groupadd --system --gid 10001 podguard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin podguard
USER 10001:10001
WORKDIR /tmp
EXPOSE 9731
ENTRYPOINT ["podguard", "run"]
