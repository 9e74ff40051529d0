"""The daemon's RBAC on the real API server, with a TokenRequest token of its ServiceAccount.

Each overlay's Namespace, ServiceAccount, ClusterRole, Role and bindings installed by Kustomize
under test-owned names: the real Kubernetes Events sink writes its Event and repeat; allowed
calls succeed, others get 403: no pod is patched or listed, no workload patched; eviction,
nodes and TokenReviews only in remediate, Leases only in podguard's namespace. The comparison
of the YAML with detector/remediation/rbac.py is in tests/test_deploy_rbac.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deploy.render import OVERLAYS
from detector.remediation.actuator import Actuator
from detector.settings import AlertingSettings, RemediationSettings
from detector.sinks.k8s_events import KubernetesEventSink
from detector.verdicts import Verdict
from tests.stack.test_deploy_manifests import Installation
from tests.support.k8s_fixtures import Kube
from tests.test_deploy_manifests import one

RESTRICTED = {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


class Identity:
    """An overlay's Namespace, ServiceAccount, ClusterRole and binding, under test names,
    and an API client authenticated with a TokenRequest token of that ServiceAccount."""

    KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
             "RoleBinding")

    def __init__(self, kube: Kube, name: str) -> None:
        self.kube, self.overlay = kube, name
        self.inst = Installation(kube, name, prefix="pg-rbac")
        self.namespace = self.inst.namespace
        self.inst.install(self.KINDS)
        ds = one(self.inst.docs, "DaemonSet")["spec"]["template"]["spec"]
        sa = ds["serviceAccountName"]  # the daemon's own ServiceAccount
        tr = client.CoreV1Api(kube.api).create_namespaced_service_account_token(
            sa, self.namespace, client.AuthenticationV1TokenRequest(
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
        self.inst.remove()


@pytest.fixture(scope="module", params=list(OVERLAYS))
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
def test_events_sink_works_with_the_service_account_alone(identity: Identity) -> None:
    """The real Kubernetes Events sink, on an API client holding only the ServiceAccount's
    token: an Event and its repeat (patch of the count), no error, the pod untouched."""
    ns = identity.namespace
    identity.pod("leaky")
    actuator = Actuator(identity.api, settings=RemediationSettings(), dry_run=False,
                        event_interval_s=0.01, sleep=lambda s: None)
    sink = KubernetesEventSink(actuator, settings=AlertingSettings(event_interval_s=0.01),
                               background=False)
    v = Verdict(ts=time.time(), namespace=ns, pod="leaky", node="kwok-node-0",
                is_anomaly=True, kind="memory_leak", score=9.0, threshold=1.0,
                time_to_oom_s=1800.0)
    for _ in range(2):
        sink.send([v])
        assert sink.flush(10.0)
        time.sleep(0.05)  # past event_interval_s: the second send repeats the Event
    assert sink.errors == 0 and sink.written == 2
    admin = client.CoreV1Api(identity.kube.api)
    events = [e for e in admin.list_namespaced_event(ns).items
              if e.involved_object.name == "leaky" and e.reporting_component == "podguard"]
    assert len(events) == 1 and events[0].count == 2, [(e.reason, e.count) for e in events]
    assert events[0].type == "Warning" and events[0].reason == "MemoryLeakDetected"
    pod = admin.read_namespaced_pod("leaky", ns)
    assert pod.metadata is not None and not any(
        k.startswith("podguard.io/") for k in pod.metadata.annotations or {})
    sink.close(1.0)


@pytest.mark.stack
@pytest.mark.timeout(180)
def test_service_account_token_allowed_and_forbidden_calls(identity: Identity) -> None:
    core = client.CoreV1Api(identity.api)
    ns = identity.namespace
    identity.pod("flagged")
    assert _status(core.read_namespaced_pod, "flagged", ns) == 200
    assert _status(core.patch_namespaced_pod, "flagged", ns, {
        "metadata": {"annotations": {"podguard.io/verdict": "test"}}}) == 403
    assert _status(core.list_pod_for_all_namespaces, limit=5) == 403
    assert _status(core.list_namespaced_pod, ns, limit=5) == 403
    # forbidden in both modes: delete a node or a pod, read secrets, watch anything
    assert _status(core.delete_node, "kwok-node-0", dry_run="All") == 403
    assert _status(core.list_namespaced_secret, ns) == 403
    assert _status(core.list_secret_for_all_namespaces) == 403
    assert _status(core.read_namespaced_secret, "anything", ns) == 403
    assert _status(core.delete_namespaced_pod, "flagged", ns) == 403
    assert _status(core.list_node) == 403
    assert not _can(identity, "update", "pods", namespace=ns)
    assert not _can(identity, "watch", "pods")
    assert not _can(identity, "delete", "nodes")
    assert not _can(identity, "create", "pods", namespace=ns)


@pytest.mark.stack
@pytest.mark.timeout(180)
def test_eviction_nodes_records_and_token_reviews_only_in_remediate(
        identity: Identity) -> None:
    core = client.CoreV1Api(identity.api)
    ns = identity.namespace
    remediate = identity.overlay == "remediate"
    identity.pod("victim")
    assert _status(core.read_node, "kwok-node-0") == (200 if remediate else 403)
    # a server-side dry run is authorized like the real call and changes nothing (the
    # admission policies are not installed here: tests/stack/test_remediation_trust.py runs them)
    status = _status(core.patch_node, "kwok-node-0",
                     {"metadata": {"annotations": {"podguard.io/rbac-test": "x"}}},
                     dry_run="All")
    assert status == (200 if remediate else 403), status
    status = _status(core.create_namespaced_pod_eviction, "victim", ns, {
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "victim", "namespace": ns}}, dry_run="All")
    assert status == (200 if remediate else 403), status
    assert _can(identity, "create", "pods", subresource="eviction", namespace=ns) is remediate
    assert _can(identity, "get", "statefulsets", group="apps", namespace=ns) is remediate
    assert _can(identity, "create", "tokenreviews", group="authentication.k8s.io") is remediate
    assert _can(identity, "create", "leases", group="coordination.k8s.io",
                namespace=ns) is remediate
    assert not _can(identity, "create", "leases", group="coordination.k8s.io",
                    namespace="default")
    assert not _can(identity, "list", "statefulsets", group="apps")
    assert not _can(identity, "patch", "jobs", group="batch", namespace=ns)
    assert not _can(identity, "patch", "statefulsets", group="apps", namespace=ns)
    assert not _can(identity, "patch", "pods", namespace=ns)
    assert _can(identity, "patch", "events", namespace=ns)
    assert not _can(identity, "delete", "statefulsets", group="apps", namespace=ns)
    node = client.CoreV1Api(identity.kube.api).read_node("kwok-node-0")
    assert node.metadata is not None
    assert "podguard.io/rbac-test" not in (node.metadata.annotations or {})

