# mypy: disable-error-code="union-attr"
# (the Kubernetes client types every field Optional; the objects read back here have them)
"""The legitimate checkpoint-then-evict flow with podguard's ValidatingAdmissionPolicies in
force, on the real local API server (issue 14, item 3).

The daemon is the real controller, actuator, record store and pod channel, with the token
the kubelet would give the daemon pod on ``kwok-node-0`` (bound to that pod, so the API server
puts the node's name in the request's user info) and exactly the rules of
:mod:`detector.remediation.rbac`; the policies are :func:`rbac.admission_policies` for its
ServiceAccount. Two opted-in StatefulSet trainers, one pinned to each of two nodes, answer
their checkpoint requests over the channel with their own pod-bound tokens
(:class:`~detector.remediation.checkpoint.CheckpointResponder`).

* On its own node the whole flow runs: checkpoint requested, acknowledged, the node tainted
  PreferNoSchedule while the replacement is scheduled (a node patch, admitted), the pod
  evicted (admitted) and recreated by its StatefulSet, the record done.
* The same token driving a controller that stands for every node (``node=""``, what one
  daemon for several nodes would be) gets the other node's pod checkpointed, then its
  eviction refused by the API server (403 from the eviction policy): the pod stays, the
  record stays ``evicting`` and says why, and the refusal is retried on the slow schedule, not
  in a loop. Its node patch on the other node is refused too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from detector.remediation import protocol as proto
from detector.remediation import rbac
from detector.remediation.actuator import Actuator
from detector.remediation.channel import ChannelServer, TokenReviewer
from detector.remediation.checkpoint import ChannelClient, CheckpointResponder
from detector.remediation.controller import RemediationController
from detector.remediation.store import RecordStore
from detector.settings import RemediationSettings
from tests.stack.test_remediation_e2e import _model
from tests.stack.test_remediation_trust import _status, leak, wait_for
from tests.support.admission import install_policies, remove_policies
from tests.support.k8s_fixtures import Kube
from tests.support.pod_identity import api_for, pod_token

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]
IMAGE = "registry.invalid/podguard/x:never"
OWN, OTHER = "kwok-node-0", "kwok-node-1"


@dataclass
class Setup:
    kube: Kube
    system: str  # the daemon's namespace (its ServiceAccount, records, pod)
    work: str  # the trainers' namespace
    daemon_api: client.ApiClient  # the daemon pod's bound token: node OWN


def _trainer(apps: client.AppsV1Api, ns: str, name: str, node: str) -> None:
    labels = {"app": name}
    apps.create_namespaced_stateful_set(ns, client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1StatefulSetSpec(
            service_name=name, replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={**labels,
                                                     "podguard.io/remediate": "true"}),
                spec=client.V1PodSpec(node_name=node, containers=[
                    client.V1Container(name="main", image=IMAGE)])))))


@pytest.fixture
def setup(kube: Kube) -> Iterator[Setup]:
    sfx = uuid.uuid4().hex[:6]
    system, work, role = f"pg-adm-{sfx}-system", f"pg-adm-{sfx}", f"pg-adm-{sfx}"
    core = client.CoreV1Api(kube.api)
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    adm = client.AdmissionregistrationV1Api(kube.api)
    policies = rbac.admission_policies(system, "podguard", prefix=role)
    for ns in (system, work):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    api: client.ApiClient | None = None
    try:
        core.create_namespaced_service_account(system, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name="podguard")))
        rbac_api.create_cluster_role(_model(client.V1ClusterRole, rbac.cluster_role(role)))
        rbac_api.create_cluster_role_binding(client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=role),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io",
                                      kind="ClusterRole", name=role),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="podguard",
                                           namespace=system)]))
        store_role = rbac.store_role(system)
        rbac_api.create_namespaced_role(system, _model(client.V1Role, store_role))
        rbac_api.create_namespaced_role_binding(system, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="podguard-records"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                      name=store_role["metadata"]["name"]),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="podguard",
                                           namespace=system)]))
        install_policies(adm, policies)
        core.create_namespaced_pod(system, client.V1Pod(
            metadata=client.V1ObjectMeta(name="podguard-own"),
            spec=client.V1PodSpec(node_name=OWN, service_account_name="podguard",
                                  containers=[client.V1Container(name="c", image=IMAGE)])))
        daemon_pod = core.read_namespaced_pod("podguard-own", system)
        api = api_for(kube.api, pod_token(kube.api, daemon_pod, audience=None))
        apps = client.AppsV1Api(kube.api)
        _trainer(apps, work, "own", OWN)
        _trainer(apps, work, "other", OTHER)
        # the policies take a moment to apply: probe with dry runs until both refuse
        probe = client.CoreV1Api(api)
        change = {"metadata": {"annotations": {"podguard.io/adm-test": "x"}}}
        wait_for(lambda: _status(probe.patch_node, OTHER, change, dry_run="All") == 403,
                 timeout=60, what="the node policy in force")
        yield Setup(kube, system, work, api)
    finally:
        if api is not None:
            api.close()
        remove_policies(adm, policies)
        for call in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            try:
                call(role)
            except ApiException:
                pass
        for ns in (work, system):
            core.delete_namespace(ns)
        for node in (OWN, OTHER):  # a taint a failed run may have left
            n = core.read_node(node)
            taints = [t for t in (n.spec.taints or []) if t.key != proto.RESCHEDULING]
            if len(taints) != len(n.spec.taints or []):
                core.patch_node(node, {"spec": {"taints": [t.to_dict() for t in taints]}})


def _running(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod | None:
    try:
        pod = core.read_namespaced_pod(name, ns)
    except ApiException:
        return None
    phase = pod.status.phase if pod.status else None
    return pod if phase == "Running" and pod.metadata.deletion_timestamp is None else None


def _responder(s: Setup, pod: client.V1Pod, channel: ChannelServer, tmp: Path
               ) -> CheckpointResponder:
    token = tmp / f"{pod.metadata.name}.token"
    token.write_text(pod_token(s.kube.api, pod))
    return CheckpointResponder(directory=tmp / str(pod.metadata.name),
                               channel=ChannelClient(channel.url, token), min_interval_s=0)


def _save(path: Path) -> None:
    path.write_bytes(b"model state")


def _settings(system: str, **kw: Any) -> RemediationSettings:
    return RemediationSettings(**{
        "enabled": True, "namespace": system, "api_backoff_s": [0.2, 0.5],
        "max_evictions_per_node": 3, "max_evictions_per_namespace": 3, "retry_s": 30,
        "avoid_node": True, "avoid_ttl_s": 120, "resync_s": 1, **kw})


def test_own_node_flow_is_admitted_and_another_nodes_eviction_refused(
        setup: Setup, tmp_path: Path) -> None:
    s = setup
    core = client.CoreV1Api(s.kube.api)
    own = wait_for(lambda: _running(core, s.work, "own-0"), timeout=90, what="own-0 running")
    other = wait_for(lambda: _running(core, s.work, "other-0"), timeout=90,
                     what="other-0 running")
    assert own.spec.node_name == OWN and other.spec.node_name == OTHER

    # ---------------------------------------------------------------- the daemon of OWN
    actuator = Actuator(s.daemon_api, settings=_settings(s.system))
    store = RecordStore(actuator, s.system)
    daemon = RemediationController(actuator, settings=_settings(s.system), store=store,
                                   node=OWN)
    channel = ChannelServer(TokenReviewer(actuator), [daemon], host="127.0.0.1").start()
    try:
        responder = _responder(s, own, channel, tmp_path)
        reasons = [d.action for d in daemon.handle([leak(own)])]
        assert reasons == ["CheckpointRequested"], reasons
        saved = wait_for(lambda: responder.maybe_checkpoint(_save, step=7), timeout=20,
                         what="the trainer's checkpoint accepted")
        assert saved and responder.last_ack is not None
        evicted = wait_for(lambda: [d for d in daemon.reconcile() if d.action == "Evicted"],
                           timeout=30, what="the own-node eviction")
        assert OWN in evicted[0].message
        replaced = wait_for(
            lambda: (p := _running(core, s.work, "own-0")) is not None
            and p.metadata.uid != own.metadata.uid and p, timeout=90,
            what="own-0 recreated by its StatefulSet")
        assert replaced.spec.node_name == OWN

        def done() -> Any:
            daemon.reconcile()  # follows the replacement, then releases the taint
            r = store.get("StatefulSet", s.work, "own")[0]
            return r if r is not None and r.phase == "done" else None

        assert wait_for(done, timeout=60, what="the own-node record done").new_node == OWN
        node = core.read_node(OWN)
        assert not [t for t in (node.spec.taints or []) if t.key == proto.RESCHEDULING]
    finally:
        channel.close()

    # ------------------------------ the same token standing for every node (node="")
    rogue_settings = _settings(s.system, avoid_node=False)
    rogue = RemediationController(Actuator(s.daemon_api, settings=rogue_settings),
                                  settings=rogue_settings, store=store, node="")
    channel = ChannelServer(TokenReviewer(actuator), [rogue], host="127.0.0.1").start()
    try:
        responder = _responder(s, other, channel, tmp_path)
        reasons = [d.action for d in rogue.handle([leak(other)])]
        assert reasons == ["CheckpointRequested"], reasons
        wait_for(lambda: responder.maybe_checkpoint(_save, step=3), timeout=20,
                 what="the other trainer's checkpoint accepted")
        decisions = [d for _ in range(3) for d in rogue.reconcile()]
        assert not [d for d in decisions if d.action == "Evicted"], decisions
        refused = [d for d in decisions if d.action == "EvictionRefused"]
        assert len(refused) == 1, decisions  # once: then retried on the slow schedule
        assert "may evict only pods on the node it runs on" in refused[0].message
        rec = store.get("StatefulSet", s.work, "other")[0]
        assert rec is not None and rec.phase == "evicting" and rec.attempts == 1
        assert rec.next_try >= time.time() + 20  # retry_s 30: not a loop of refused calls
        assert "403" in rec.note or "Forbidden" in rec.note
        still = core.read_namespaced_pod("other-0", s.work)
        assert still.metadata.uid == other.metadata.uid and still.metadata.deletion_timestamp \
            is None
        # its node patch of the other node is refused by the node policy too
        with pytest.raises(Exception, match="may change only the node it runs on"):
            rogue.actuator.hold_rescheduling_taint(OTHER, rec.id)
        assert not [t for t in (core.read_node(OTHER).spec.taints or [])
                    if t.key == proto.RESCHEDULING]
    finally:
        channel.close()
