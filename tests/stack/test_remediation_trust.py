"""Issue 14 items 1-3: remediation no workload can steer, on the real local API server.

A second, unprivileged tenant ServiceAccount plays the attacker (a TokenRequest token), with
more than any workload needs in its own namespace (pods, StatefulSets, Jobs, Leases: get,
list, patch; events create). Each attack the issue lists is run and is refused or has no
effect on the real controller, store, pod channel and API server:

* forged ``podguard.io/remediate`` / ``remediation`` / ``verdict`` / ``checkpoint-ack``
  annotations on its pod, forged ``last-remediation`` records (NaN, garbage) on its
  StatefulSet and Job: nothing is cordoned, tainted, evicted or recorded; budgets and the
  rest of the cluster's remediation go on; a forged verdict forces nothing;
* podguard's records (Leases in podguard's namespace) cannot be written by the tenant;
* acknowledgements: another pod's token, a bare ServiceAccount token, a token for the API
  audience, a garbage token, a wrong or replayed id - all refused; only the pod itself, with
  its own bound token and the fresh id, is accepted;
* the ValidatingAdmissionPolicies of :func:`detector.remediation.rbac.admission_policies`:
  the daemon's token bound to a pod on node A may patch node A and evict pods on node A, not
  node B; its bare token may do neither.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from detector.remediation import protocol as proto
from detector.remediation import rbac
from detector.remediation.actuator import Actuator
from detector.remediation.channel import ChannelServer, TokenReviewer
from detector.remediation.controller import RemediationController
from detector.remediation.store import RecordStore
from detector.settings import RemediationSettings
from detector.verdicts import Explanation, Verdict
from tests.support.admission import install_policies, remove_policies
from tests.support.k8s_fixtures import Kube
from tests.support.pod_identity import account_token, api_for, pod_token
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

OPT_IN = {"podguard.io/remediate": "true"}
IMAGE = "registry.invalid/podguard/x:never"


def settings(**kw: Any) -> RemediationSettings:
    return RemediationSettings(**{"enabled": True, "api_backoff_s": [0.2, 0.5],
                                  "max_evictions_per_node": 1,
                                  "max_evictions_per_namespace": 1, "avoid_node": False,
                                  **kw})


def _status(call: Any, *args: Any, **kw: Any) -> int:
    try:
        call(*args, **kw)
    except ApiException as e:
        return int(e.status)
    return 200


@dataclass
class Cluster:
    kube: Kube
    system: str  # podguard's namespace (its records)
    tenant: str  # the attacker's namespace
    other: str  # an innocent namespace
    attacker: client.ApiClient  # the tenant ServiceAccount's token

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.kube.api)

    def statefulset(self, ns: str, name: str, node: str, *, account: str = "default"
                    ) -> client.V1Pod:
        client.AppsV1Api(self.kube.api).create_namespaced_stateful_set(ns, client.V1StatefulSet(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1StatefulSetSpec(
                replicas=1, service_name=name,
                selector=client.V1LabelSelector(match_labels={"app": name}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": name, **OPT_IN}),
                    spec=client.V1PodSpec(
                        service_account_name=account,
                        node_selector={"kubernetes.io/hostname": node},
                        containers=[client.V1Container(name="main", image=IMAGE)])))))
        return wait_for(lambda: self.running(ns, f"{name}-0"), timeout=90,
                        what=f"{ns}/{name}-0 running")

    def running(self, ns: str, name: str) -> client.V1Pod | None:
        try:
            p = self.core.read_namespaced_pod(name, ns)
        except ApiException:
            return None
        return p if p.status is not None and p.status.phase == "Running" else None

    def controller(self, s: RemediationSettings | None = None) -> RemediationController:
        s = s or settings()
        act = Actuator(self.kube.api, settings=s)
        return RemediationController(act, settings=s, store=RecordStore(act, self.system))

    def records(self) -> list[proto.Remediation]:
        act = Actuator(self.kube.api, settings=settings())
        return [st.record for st in RecordStore(act, self.system).list()]


@pytest.fixture(scope="module")
def cluster(kube: Kube) -> Iterator[Cluster]:
    sfx = uuid.uuid4().hex[:6]
    names = [f"pg-tr-{sfx}-{n}" for n in ("system", "tenant", "other")]
    core = client.CoreV1Api(kube.api)
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    for n in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=n)))
    tenant = names[1]
    core.create_namespaced_service_account(tenant, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="attacker")))
    rule = {"verbs": ["get", "list", "patch"]}
    rbac_api.create_namespaced_role(tenant, client.V1Role(
        metadata=client.V1ObjectMeta(name="attacker"), rules=[
            client.V1PolicyRule(api_groups=[""], resources=["pods"], **rule),
            client.V1PolicyRule(api_groups=["apps"], resources=["statefulsets"], **rule),
            client.V1PolicyRule(api_groups=["batch"], resources=["jobs"], **rule),
            client.V1PolicyRule(api_groups=["coordination.k8s.io"], resources=["leases"],
                                verbs=["get", "list", "patch", "create"]),
            client.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["create"])]))
    rbac_api.create_namespaced_role_binding(tenant, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="attacker"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                  name="attacker"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="attacker",
                                       namespace=tenant)]))
    attacker = api_for(kube.api, account_token(kube.api, tenant, "attacker"))
    try:
        yield Cluster(kube, names[0], tenant, names[2], attacker)
    finally:
        attacker.close()
        for n in names:
            core.delete_namespace(n)


def leak(pod: client.V1Pod, *, tto: float = 5 * 3600.0) -> Verdict:
    m, spec = pod.metadata, pod.spec
    assert m is not None and spec is not None
    return Verdict(ts=time.time(), namespace=str(m.namespace), pod=str(m.name),
                   node=str(spec.node_name), is_anomaly=True, kind="memory_leak", score=2.0,
                   threshold=1.0, time_to_oom_s=tto, leak_rate_bytes_per_s=1e5,
                   explanation=Explanation("working set +100 MiB/h for 3 h", {}))


def _node(kube: Kube, name: str) -> client.V1Node:
    return client.CoreV1Api(kube.api).read_node(name)


def _untouched(kube: Kube, name: str) -> bool:
    n = _node(kube, name)
    assert n.spec is not None and n.metadata is not None
    return not n.spec.unschedulable and not any(
        str(t.key).startswith("podguard.io/") for t in n.spec.taints or []) and not any(
        k.startswith("podguard.io/") for k in n.metadata.annotations or {})


# =========================================================================== item 1


def test_forged_annotations_and_records_start_steer_or_stall_nothing(cluster: Cluster) -> None:
    victim_node = "kwok-node-1"
    own = cluster.statefulset(cluster.tenant, "mine", victim_node, account="attacker")
    assert own.metadata is not None
    evil = client.CoreV1Api(cluster.attacker)
    forged_state = proto.dumps({
        "id": "r-forged", "phase": "evicting", "kind": "drift", "cause": "node",
        "node": victim_node, "uid": own.metadata.uid, "workload": "StatefulSet/mine",
        "detected_at": 1.0, "request_id": "x.1", "requested_at": 1.0, "acked_at": 1.0,
        "checkpoint": "/does/not/exist.pt"})
    forged_verdict = proto.dumps({
        "ts": time.time(), "namespace": cluster.tenant, "pod": "mine-0", "node": victim_node,
        "is_anomaly": True, "kind": "memory_leak", "score": 9, "threshold": 1,
        "time_to_oom_s": 1})
    patch = {"metadata": {"labels": OPT_IN, "annotations": {
        "podguard.io/remediation": forged_state, "podguard.io/verdict": forged_verdict,
        "podguard.io/checkpoint-request": '{"id":"x.1","ts":1}',
        "podguard.io/checkpoint-ack": '{"id":"x.1","ts":NaN,"path":"/does/not/exist.pt"}'}}}
    assert _status(evil.patch_namespaced_pod, "mine-0", cluster.tenant, patch) == 200
    record = proto.dumps({"id": "r-forged", "namespace": cluster.other, "pod": "p", "uid": "u",
                          "node": victim_node, "phase": "evicted", "at": time.time(),
                          "evicted_at": "x"})
    assert _status(client.AppsV1Api(cluster.attacker).patch_namespaced_stateful_set, "mine",
                   cluster.tenant, {"metadata": {"annotations": {
                       "podguard.io/last-remediation": record}}}) == 200
    # the attacker may also write Leases of its own namespace: podguard does not read them
    client.CoordinationV1Api(cluster.attacker).create_namespaced_lease(
        cluster.tenant, client.V1Lease(metadata=client.V1ObjectMeta(
            name=proto.lease_name("StatefulSet", cluster.other, "innocent"),
            labels=proto.MANAGED_BY, annotations={proto.REMEDIATION: record})))
    ctl = cluster.controller()
    assert ctl.reconcile() == [] and ctl.handle([]) == []
    time.sleep(1.0)
    assert ctl.reconcile() == []
    assert cluster.records() == []
    assert _untouched(cluster.kube, victim_node)
    still = cluster.core.read_namespaced_pod("mine-0", cluster.tenant)
    assert still.metadata is not None and still.metadata.uid == own.metadata.uid
    assert still.metadata.deletion_timestamp is None
    # the budgets are not spent: an innocent pod on the same node is remediated normally
    innocent = cluster.statefulset(cluster.other, "innocent", victim_node)
    [d] = ctl.handle([leak(innocent)])
    assert d.action == "CheckpointRequested", d
    [rec] = cluster.records()
    assert rec.namespace == cluster.other and rec.phase == "checkpointing"
    # a forged verdict saying "1 s to OOM" forces nothing: only this daemon's verdicts count
    fresh = cluster.controller()  # e.g. restarted: no verdict in memory
    cluster.core.patch_namespaced_pod("innocent-0", cluster.other, {"metadata": {
        "annotations": {"podguard.io/verdict": forged_verdict.replace("mine-0",
                                                                       "innocent-0")}}})
    assert fresh.reconcile() == []
    [rec] = cluster.records()
    assert rec.phase == "checkpointing" and not rec.forced
    assert _untouched(cluster.kube, victim_node)


def test_the_tenant_cannot_write_podguards_records(cluster: Cluster) -> None:
    coord = client.CoordinationV1Api(cluster.attacker)
    body = client.V1Lease(metadata=client.V1ObjectMeta(
        name="pg-sts-forged", labels=proto.MANAGED_BY,
        annotations={proto.REMEDIATION: "{}"}))
    assert _status(coord.create_namespaced_lease, cluster.system, body) == 403
    assert _status(coord.list_namespaced_lease, cluster.system) == 403
    assert _status(coord.patch_namespaced_lease, "anything", cluster.system,
                   {"metadata": {"annotations": {proto.REMEDIATION: "{}"}}}) == 403


# =========================================================================== item 2


def test_only_the_pod_itself_with_the_fresh_id_can_acknowledge(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    node = "kwok-node-2"
    victim = cluster.statefulset(cluster.tenant, "victim", node)
    thief = cluster.statefulset(cluster.tenant, "thief", node)  # same namespace, same account
    ctl = cluster.controller(settings(max_evictions_per_namespace=5,
                                      max_evictions_per_node=5))
    [d] = ctl.handle([leak(victim)])
    assert d.action == "CheckpointRequested"
    rec = next(r for r in cluster.records() if r.pod == "victim-0")
    rid = rec.request_id  # what a leak of the id would give an attacker
    server = ChannelServer(TokenReviewer(Actuator(cluster.kube.api, settings=settings())),
                           [ctl], host="127.0.0.1", port=0).start()
    try:
        s = requests.Session()
        s.trust_env = False

        def call(path: str, token: str, body: dict[str, Any] | None = None
                 ) -> requests.Response:
            return s.post(server.url + path, json=body or {}, timeout=10,
                          headers={"Authorization": f"Bearer {token}"})

        answer: dict[str, Any] = {"kind": "checkpoint", "id": rid,
                                  "result": {"path": "/does/not/exist.pt", "step": 1}}
        thief_token = pod_token(cluster.kube.api, thief)
        assert call("/v1/requests", thief_token).json() == {"requests": []}
        r = call("/v1/answers", thief_token, answer)
        assert r.status_code == 409 and "no checkpoint request for this pod" in r.text
        bare = account_token(cluster.kube.api, cluster.tenant, "default", audience="podguard")
        r = call("/v1/answers", bare, answer)
        assert r.status_code == 401 and "not bound to a pod" in r.text
        api_audience = pod_token(cluster.kube.api, victim, audience=None)
        r = call("/v1/answers", api_audience, answer)
        assert r.status_code == 401 and "audience" in r.text
        assert call("/v1/answers", "garbage", answer).status_code == 401
        assert s.post(server.url + "/v1/answers", json=answer, timeout=10).status_code == 401
        own = pod_token(cluster.kube.api, victim)
        wrong = {**answer, "id": "Z" * 32}
        r = call("/v1/answers", own, wrong)
        assert r.status_code == 409 and "not the pending request" in r.text
        assert call("/v1/answers", own, {**answer, "id": "a/b/../c"}).status_code == 409
        assert call("/v1/answers", own, {**answer, "kind": "rm -rf"}).status_code == 400
        r = s.post(server.url + "/v1/answers", data=b"x" * 70000, timeout=10,
                   headers={"Authorization": f"Bearer {own}"})
        assert r.status_code == 413
        assert [q["id"] for q in call("/v1/requests", own).json()["requests"]] == [rid]
        rec = next(r for r in cluster.records() if r.pod == "victim-0")
        assert rec.phase == "checkpointing" and rec.acked_at is None  # nothing got through
        ok = call("/v1/answers", own, {**answer, "result": {"path": "/data/ckpt.pt",
                                                            "step": 5}})
        assert ok.status_code == 200 and ok.json() == {"accepted": True}
        assert call("/v1/answers", own, answer).status_code == 409  # replay: the id is spent
        rec = next(r for r in cluster.records() if r.pod == "victim-0")
        assert rec.phase == "evicting" and rec.checkpoint == "/data/ckpt.pt" and rec.step == 5
        assert server.stats["accepted"] == 1 and server.stats["unauthenticated"] >= 4
    finally:
        server.close()


# =========================================================================== item 3


def test_admission_policy_confines_the_daemon_to_its_own_node(kube: Kube) -> None:
    sfx = uuid.uuid4().hex[:6]
    ns = f"pg-vap-{sfx}"
    core = client.CoreV1Api(kube.api)
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    adm = client.AdmissionregistrationV1Api(kube.api)
    role = f"pg-vap-{sfx}"
    policies = rbac.admission_policies(ns, "podguard", prefix=role)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        core.create_namespaced_service_account(ns, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name="podguard")))
        rbac_api.create_cluster_role(client.V1ClusterRole.from_dict(  # type: ignore[arg-type]
            rbac.cluster_role(role)))
        rbac_api.create_cluster_role_binding(client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=role),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io",
                                      kind="ClusterRole", name=role),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="podguard",
                                           namespace=ns)]))
        install_policies(adm, policies)

        def pod(name: str, node: str, account: str = "default") -> client.V1Pod:
            core.create_namespaced_pod(ns, client.V1Pod(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1PodSpec(node_name=node, service_account_name=account,
                                      containers=[client.V1Container(name="c", image=IMAGE)])))
            return core.read_namespaced_pod(name, ns)

        daemon = pod("podguard-a", "kwok-node-0", "podguard")
        pod("here", "kwok-node-0")
        pod("there", "kwok-node-1")
        bound = client.CoreV1Api(api_for(kube.api, pod_token(kube.api, daemon, audience=None)))
        bare = client.CoreV1Api(api_for(kube.api, account_token(kube.api, ns, "podguard")))
        change = {"metadata": {"annotations": {"podguard.io/vap-test": "x"}}}

        def evict(api: client.CoreV1Api, name: str) -> int:
            return _status(api.create_namespaced_pod_eviction, name, ns, {
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns}}, dry_run="All")

        def patch(api: client.CoreV1Api, node: str) -> int:
            return _status(api.patch_node, node, change, dry_run="All")

        # the policies (and the eviction policy's pod parameters) take a moment to apply
        wait_for(lambda: patch(bound, "kwok-node-1") == 403 and evict(bound, "there") == 403,
                 timeout=60, what="the admission policies in force")
        assert patch(bound, "kwok-node-0") == 200
        assert evict(bound, "here") == 200
        assert patch(bare, "kwok-node-0") == 403 and evict(bare, "here") == 403
        try:
            bound.patch_node("kwok-node-1", change, dry_run="All")
        except ApiException as e:
            assert "only the node it runs on" in str(e.body)
        # others (the admin here) are not matched
        assert _status(core.patch_node, "kwok-node-1", change, dry_run="All") == 200
        node = _node(kube, "kwok-node-0")
        assert "podguard.io/vap-test" not in (node.metadata.annotations or {})  # type: ignore[union-attr]
    finally:
        remove_policies(adm, policies)
        for call in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            try:
                call(role)
            except ApiException:
                pass
        core.delete_namespace(ns)
