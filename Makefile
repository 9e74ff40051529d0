# podguard: the two set-up commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.podguard-installed

.PHONY: demo demo-replay test test-pythons venv prepare lint unit stack-up stack-down stack-status bench evaluate model clean soak realnode-check story

# The virtual environment is built once from the exact lock and reused: torch is a
# multi-GB download, so it is only reinstalled when requirements.lock changes.
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

# Installs/builds every service of the local stack into the per-user cache (once per machine).
prepare: $(STAMP)
	$(PY) -m deploy.local prepare
	$(PY) -m deploy.render prepare

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The whole suite: lint, then every test against the real local stack (started by the fixtures).
test: prepare lint
	$(PY) -m pytest -q
	$(if $(strip $(EXTRA_PYTHONS)),$(PY) -m tests.support.other_pythons $(EXTRA_PYTHONS))

# The daemon's unit tests on the other supported Pythons, in venvs holding only its runtime
# set (requirements-daemon.lock): `make test EXTRA_PYTHONS=` skips them.
EXTRA_PYTHONS ?= python3.12 python3.13
test-pythons: $(STAMP)
	$(if $(strip $(EXTRA_PYTHONS)),$(PY) -m tests.support.other_pythons $(EXTRA_PYTHONS))

unit: $(STAMP)
	$(PY) -m pytest -q -m "not stack and not slow"

# The main job on the embedded default: `podguard run` with no configuration (real training
# loops, one leaking, sampled from /proc), for 150 s, then a summary.
demo: $(STAMP)
	$(PY) -m detector run --duration 150

# Not the daemon: the detection core on generated scenarios, replayed causally, with a
# summary and a timeline plot (`podguard replay-demo`).
demo-replay: $(STAMP)
	$(PY) -m detector replay-demo

bench: $(STAMP)
	$(PY) -m detector bench

# The real-node soak (~60 min, root): a dozen real workloads under real memory limits, killed by
# the kernel; podguard's first verdicts and the predict_linear rule side by side per workload.
soak: prepare
	$(PY) -m deploy.local.node_soak --minutes $(or $(SOAK_MINUTES),60)

# The whole story once (~10 min, root): a leaking PyTorch trainer of a StatefulSet on the local
# control plane, in a real memory cgroup; podguard flags it, the trainer checkpoints, the pod is
# evicted and recreated, the new process resumes; the kernel never OOM-kills it. A timeline.
story: prepare
	$(PY) -m deploy.local.story

# podguard on the shipped real recording (no root needed): exit 1 unless every kernel OOM kill
# was preceded by a memory_leak verdict with a time to OOM and the healthy pods raised nothing.
realnode-check: $(STAMP)
	$(PY) -m deploy.local.node_soak --trace data/real/mixed.csv.gz --check

# The full Exathlon benchmark when it lies beside the checkout (EXATHLON_DIR=... to point
# elsewhere), else the 3-run excerpt shipped in data/exathlon.
EXATHLON_DIR ?= $(wildcard ../shared/data/exathlon)
evaluate: $(STAMP)
	$(PY) -m detector evaluate --out out/evaluation $(if $(EXATHLON_DIR),--exathlon-dir $(EXATHLON_DIR))

stack-up: prepare
	$(PY) -m deploy.local up
stack-down: $(STAMP)
	$(PY) -m deploy.local down
stack-status: $(STAMP)
	$(PY) -m deploy.local status

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
