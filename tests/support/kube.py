"""The Kubernetes configuration a unit test's daemon finds (``detector.runtime.build``'s
``_kube_api``): only the one the test names, whatever this machine's ``~/.kube/config`` or
``KUBECONFIG`` hold. The client reads ``KUBECONFIG`` once, when it is first imported, so
setting the variable alone is not enough once any test has imported it."""

from __future__ import annotations

from pathlib import Path

import pytest


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """The client's configuration is the kubeconfig ``path`` (a missing file: none, so no
    Events sink and no remediation) for this test; undone with ``monkeypatch``."""
    from kubernetes import client
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setattr(client.Configuration, "_default", None)  # loading it sets the default
