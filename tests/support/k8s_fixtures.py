"""pytest fixtures for the local Kubernetes (real control plane, kwok nodes).

Load with ``pytest_plugins = [..., "tests.support.k8s_fixtures"]`` in tests/conftest.py,
next to ``tests.support.stack_fixtures``, whose session fixture ``local_kubernetes`` this
builds on: the control plane of :class:`deploy.local.kubernetes.Kubernetes` is started (or
reused) in the session's stack directory exactly once, whichever fixture a test asks for.

``kube`` (session): that control plane as a test sees it, with an official
``kubernetes.client.ApiClient`` for the admin user. When a stack is already up
(``PODGUARD_STACK_DIR`` or ``python -m deploy.local up``) and runs Kubernetes, it is reused
and left running; otherwise the binaries are prepared (a Go build of several minutes the
first time on a machine, then cached) and the control plane is started for the session and
stopped at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

from deploy.local.kubernetes import Endpoints, Kubernetes
from tests.support.stack_fixtures import KubernetesHandle


@dataclass(frozen=True)
class Kube:
    """A running local control plane, as a test sees it."""

    state: Path  # the stack directory
    kubeconfig: Path  # admin kubeconfig (client certificate in system:masters)
    api: client.ApiClient  # official client, configured from ``kubeconfig``
    service: Kubernetes
    endpoints: Endpoints  # URLs of each process, node names, start timings

    @property
    def nodes(self) -> tuple[str, ...]:
        """The kwok node names: ("kwok-node-0", "kwok-node-1", "kwok-node-2")."""
        return self.endpoints.nodes


@pytest.fixture(scope="session")
def kube(local_kubernetes: KubernetesHandle) -> Iterator[Kube]:
    service = local_kubernetes.service
    assert isinstance(service, Kubernetes), type(service)
    state = local_kubernetes.state
    endpoints = service.endpoints(state)
    assert endpoints is not None, f"no kubernetes.json in {state}: the control plane never started"
    kubeconfig = Path(local_kubernetes.kubeconfig)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Kube(state=state, kubeconfig=kubeconfig, api=api, service=service,
                   endpoints=endpoints)
    finally:
        api.close()
