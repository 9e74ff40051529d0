"""The daemon's RBAC in deploy/manifests, against rbac.py and the real API server.

The ClusterRole of the remediate overlay grants exactly ``CONTROLLER_RULES``; the alert-only
one exactly the rules alerting uses (pods, events). Then, on the real control plane, with a
TokenRequest token of the daemon's ServiceAccount (the namespace, ClusterRole and binding of
each overlay created under test-owned names): allowed calls succeed, others get 403, and
eviction is refused in alert-only and allowed in remediate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from detector.remediation.rbac import CONTROLLER_RULES, cluster_role
from tests.support.k8s_fixtures import Kube
from tests.test_deploy_manifests import OVERLAYS, apply, delete_installation, one, overlay

ALERTING_RESOURCES = {("pods",), ("events",)}
"""What alerting needs (read_pod, annotate_pod, event); everything else is remediation."""

Doc = dict[str, Any]


def _key(rule: Doc) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return tuple(rule["apiGroups"]), tuple(rule["resources"]), tuple(rule["verbs"])


def test_remediate_cluster_role_is_exactly_rbac_py() -> None:
    rules = one(overlay("remediate"), "ClusterRole")["rules"]
    assert sorted(map(_key, rules)) == sorted(map(_key, cluster_role()["rules"]))
    assert len(rules) == len(CONTROLLER_RULES)


def test_alert_only_cluster_role_is_the_alerting_part_of_rbac_py() -> None:
    rules = one(overlay("alert-only"), "ClusterRole")["rules"]
    want = [r.as_manifest() for r in CONTROLLER_RULES if r.resources in ALERTING_RESOURCES]
    assert sorted(map(_key, rules)) == sorted(map(_key, want))
    for r in rules:
        assert "pods/eviction" not in r["resources"] and "nodes" not in r["resources"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_wildcards_no_delete_no_secrets(name: str) -> None:
    for r in one(overlay(name), "ClusterRole")["rules"]:
        assert "*" not in r["verbs"] and "*" not in r["resources"]
        assert not {"delete", "deletecollection", "update", "escalate", "bind"} & set(r["verbs"])
        assert "secrets" not in r["resources"]


# ============================================================================ real API server

RESTRICTED = {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


class Identity:
    """An overlay's namespace, ServiceAccount, ClusterRole and binding, under test names,
    and an API client authenticated as that ServiceAccount."""

    def __init__(self, kube: Kube, name: str) -> None:
        from deploy.render import relocate
        tag = uuid.uuid4().hex[:6]
        self.kube, self.overlay = kube, name
        self.namespace = f"pg-rbac-{name}-{tag}"
        docs = relocate(overlay(name), self.namespace, f"-{tag}")
        self.docs = [d for d in docs if d["kind"] in (
            "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
        apply(kube, self.docs, dry_run=False)
        core = client.CoreV1Api(kube.api)
        tr = core.create_namespaced_service_account_token(
            "podguard", self.namespace, client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)))
        assert tr.status is not None and tr.status.token
        cfg = client.Configuration()
        cfg.host = kube.api.configuration.host
        cfg.ssl_ca_cert = kube.api.configuration.ssl_ca_cert
        cfg.api_key = {"authorization": f"Bearer {tr.status.token}"}
        self.api = client.ApiClient(cfg)

    def pod(self, name: str) -> None:
        """A pod the test (admin) makes, for the ServiceAccount to act on."""
        body: Any = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                     "spec": {"containers": [{
                         "name": "c", "image": "busybox", "securityContext": RESTRICTED}]}}
        client.CoreV1Api(self.kube.api).create_namespaced_pod(self.namespace, body)

    def close(self) -> None:
        self.api.close()
        delete_installation(self.kube, self.docs)


@pytest.fixture(scope="module", params=OVERLAYS)
def identity(request: pytest.FixtureRequest, kube: Kube) -> Iterator[Identity]:
    ident = Identity(kube, request.param)
    try:
        yield ident
    finally:
        ident.close()


def _status(call: Any, *args: Any, **kw: Any) -> int:
    try:
        call(*args, **kw)
    except ApiException as e:
        return int(e.status)
    return 200


def _can(ident: Identity, verb: str, resource: str, *, group: str = "",
         subresource: str = "", namespace: str | None = None) -> bool:
    review = client.AuthorizationV1Api(ident.api).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, subresource=subresource or None,
                namespace=namespace))))
    assert review.status is not None
    return bool(review.status.allowed)


@pytest.mark.stack
@pytest.mark.timeout(180)
def test_service_account_token_allowed_and_forbidden_calls(identity: Identity) -> None:
    core = client.CoreV1Api(identity.api)
    ns = identity.namespace
    identity.pod("flagged")
    # allowed: list pods (all namespaces), annotate a pod, write an Event
    assert _status(core.list_pod_for_all_namespaces, limit=5) == 200
    assert _status(core.patch_namespaced_pod, "flagged", ns, {
        "metadata": {"annotations": {"podguard.io/verdict": "test"}}}) == 200
    pod = client.CoreV1Api(identity.kube.api).read_namespaced_pod("flagged", ns)
    assert pod.metadata is not None and pod.metadata.annotations is not None
    assert pod.metadata.annotations["podguard.io/verdict"] == "test"
    assert _status(core.create_namespaced_event, ns, {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"flagged.{uuid.uuid4().hex}"},
        "involvedObject": {"kind": "Pod", "name": "flagged", "namespace": ns},
        "reason": "PodguardTest", "message": "rbac test", "type": "Normal"}) == 200
    # forbidden in both modes: delete a node, read secrets, delete a pod
    assert _status(core.delete_node, f"podguard-rbac-probe-{uuid.uuid4().hex[:6]}") == 403
    assert _status(core.list_namespaced_secret, ns) == 403
    assert _status(core.list_secret_for_all_namespaces) == 403
    assert _status(core.delete_namespaced_pod, "flagged", ns) == 403
    assert not _can(identity, "update", "pods", namespace=ns)


@pytest.mark.stack
@pytest.mark.timeout(180)
def test_eviction_and_remediation_verbs_only_in_remediate(identity: Identity) -> None:
    core = client.CoreV1Api(identity.api)
    ns = identity.namespace
    remediate = identity.overlay == "remediate"
    identity.pod("victim")
    status = _status(core.create_namespaced_pod_eviction, "victim", ns, {
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "victim", "namespace": ns}})
    assert status in ((200, 201) if remediate else (403,)), status
    assert _can(identity, "create", "pods", subresource="eviction", namespace=ns) is remediate
    assert _can(identity, "patch", "nodes") is remediate
    assert _can(identity, "get", "nodes") is remediate
    assert _can(identity, "list", "statefulsets", group="apps") is remediate
    assert _can(identity, "patch", "jobs", group="batch", namespace=ns) is remediate
    assert _can(identity, "patch", "pods", namespace=ns)
    assert _can(identity, "patch", "events", namespace=ns)
    assert not _can(identity, "delete", "nodes")
