"""pytest fixtures for the local Kubernetes (real control plane, kwok nodes).

Load with ``pytest_plugins = ["tests.support.k8s_fixtures"]`` in tests/conftest.py.

``kube`` (session): the control plane of :class:`deploy.local.kubernetes.Kubernetes`. When
the local stack's directory (``PODGUARD_STACK_DIR``, else the one ``python -m deploy.local
up`` recorded) has it running, it is reused and left running; otherwise the binaries are
prepared (a Go build of several minutes the first time on a machine, then cached), a control
plane is started in a temporary directory and stopped at the end of the session.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

from deploy.local import stack
from deploy.local._proc import StackError
from deploy.local.kubernetes import Kubernetes


@dataclass(frozen=True)
class Kube:
    """A running local control plane, as a test sees it."""

    state: Path  # the stack directory
    kubeconfig: Path  # admin kubeconfig (client certificate in system:masters)
    api: client.ApiClient  # official client, configured from ``kubeconfig``
    nodes: tuple[str, ...]  # the kwok node names, e.g. ("kwok-node-0", ...)
    service: Kubernetes
    start_seconds: float | None  # wall time of start() in this session; None when reused


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    service = Kubernetes()
    running = stack.current_dir()
    reused = running is not None and stack.is_up(service, running)
    state = running if reused and running else tmp_path_factory.mktemp("k8s-stack")
    took: float | None = None
    if not reused:
        try:
            service.prepare()
            t0 = time.monotonic()
            service.start(state)
            took = time.monotonic() - t0
        except StackError as e:
            pytest.fail(f"local Kubernetes could not start: {e}\n(build it with "
                        "`make prepare` or `python -m deploy.local prepare`; needs Go >= 1.26 "
                        "and openssl)", pytrace=False)
    ep = service.endpoints(state)
    assert ep is not None, f"no kubernetes.json in {state}: the control plane did not start"
    kubeconfig = Path(service.env(state)["KUBECONFIG"])
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Kube(state=state, kubeconfig=kubeconfig, api=api, nodes=ep.nodes,
                   service=service, start_seconds=took)
    finally:
        api.close()
        if not reused:
            service.stop(state)
