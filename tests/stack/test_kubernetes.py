"""The local Kubernetes behaves like a cluster: kwok nodes, StatefulSets, PVs, evictions, PDBs.

Runs against the real control plane of the ``kube`` fixture (tests/support/k8s_fixtures.py)
with the official ``kubernetes`` client.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deploy.local import k8s_build
from tests.support.k8s_fixtures import Kube
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

T = TypeVar("T")


def _some(value: T | None, what: str) -> T:
    """The client's models type every field Optional: assert the ones the API always sets."""
    assert value is not None, f"{what} missing"
    return value


def _meta(obj: Any) -> client.V1ObjectMeta:
    meta: client.V1ObjectMeta = _some(obj.metadata, "metadata")
    return meta


def _ready(node: client.V1Node) -> bool:
    conds = _some(node.status, "node status").conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


def test_three_kwok_nodes_are_ready(kube: Kube) -> None:
    core = client.CoreV1Api(kube.api)
    nodes = core.list_node(label_selector="type=kwok").items
    assert sorted(str(_meta(n).name) for n in nodes) == [
        "kwok-node-0", "kwok-node-1", "kwok-node-2"]
    for n in nodes:
        status = _some(n.status, "node status")
        assert _ready(n), f"{_meta(n).name} not Ready: {status.conditions}"
        assert (_meta(n).annotations or {}).get("kwok.x-k8s.io/node") == "fake"
        allocatable = _some(status.allocatable, "allocatable")
        assert allocatable["cpu"] == "32"
        assert allocatable["pods"] == "110"
        assert allocatable["nvidia.com/gpu"] == "8"
        assert (_meta(n).labels or {}).get("type") == "kwok"
        assert not _some(n.spec, "node spec").unschedulable


def test_status_lists_every_process_ready_with_pid_and_rss(kube: Kube) -> None:
    rows = {s.name: s for s in kube.service.status(kube.state)}
    assert list(rows) == ["etcd", "kube-apiserver", "kube-controller-manager",
                          "kube-scheduler", "kwok"]
    for s in rows.values():
        assert s.ready, f"{s.name} not ready: {s.detail}"
        assert s.pid and s.rss_bytes and s.rss_bytes > 1_000_000, s
        assert s.url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), s.url
    assert rows["kube-apiserver"].detail == "v1.35.4"
    assert rows["etcd"].detail.startswith("etcd 3.6."), rows["etcd"].detail
    assert rows["kwok"].detail == "3/3 kwok nodes Ready"
    assert kube.service.env(kube.state) == {"KUBECONFIG": str(kube.kubeconfig)}


def test_binaries_are_cached_and_report_their_release(kube: Kube) -> None:
    assert k8s_build.prepare() == {}, "prepare rebuilt something that was already built"
    b = k8s_build.binaries()

    def version(binary: Path) -> str:
        return subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    for binary in (b.kube_apiserver, b.kube_controller_manager, b.kube_scheduler):
        assert version(binary).strip() == f"Kubernetes {k8s_build.K8S_VERSION}", binary
    assert f"etcd Version: {k8s_build.ETCD_VERSION.lstrip('v')}" in version(b.etcd)
    assert f"kwok version {k8s_build.KWOK_VERSION}" in version(b.kwok)


def test_start_on_a_running_control_plane_reuses_it(kube: Kube) -> None:
    before = {s.name: s.pid for s in kube.service.status(kube.state)}
    t0 = time.monotonic()
    kube.service.start(kube.state)
    assert time.monotonic() - t0 < 5
    assert {s.name: s.pid for s in kube.service.status(kube.state)} == before


def test_api_server_is_authenticated_and_authorized(kube: Kube) -> None:
    """Anonymous requests are refused; the controller manager works under its own identity."""
    anon = client.Configuration()
    anon.host = kube.api.configuration.host
    anon.ssl_ca_cert = kube.api.configuration.ssl_ca_cert
    with client.ApiClient(anon) as api, pytest.raises(ApiException) as err:
        client.CoreV1Api(api).list_namespaced_pod("default")
    assert err.value.status in (401, 403)
    # --use-service-account-credentials: each controller got its own ServiceAccount
    sas = client.CoreV1Api(kube.api).list_namespaced_service_account("kube-system").items
    names = {_meta(sa).name for sa in sas}
    assert {"statefulset-controller", "disruption-controller",
            "generic-garbage-collector"} <= names, names


@dataclass
class Web:
    """One StatefulSet ``web`` with one replica and a PVC bound to a pre-made PV."""

    ns: str
    pv: str
    pvc: str = "data-web-0"
    pod: str = "web-0"


@pytest.fixture
def web(kube: Kube) -> Iterator[Web]:
    core, apps = client.CoreV1Api(kube.api), client.AppsV1Api(kube.api)
    storage = client.StorageV1Api(kube.api)
    suffix = uuid.uuid4().hex[:6]
    w = Web(ns=f"podguard-sts-{suffix}", pv=f"podguard-pv-{suffix}")
    sc_name = "podguard-manual"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=w.ns)))
    try:
        storage.create_storage_class(client.V1StorageClass(
            metadata=client.V1ObjectMeta(name=sc_name),
            provisioner="kubernetes.io/no-provisioner", volume_binding_mode="Immediate",
            reclaim_policy="Retain"))
    except ApiException as e:
        if e.status != 409:
            raise
    # No nodeAffinity: the volume may follow the pod to any node. Pre-bound to the claim
    # the StatefulSet will make, so the PV binder has exactly one choice.
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=w.pv),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "1Gi"}, access_modes=["ReadWriteOnce"],
            storage_class_name=sc_name, persistent_volume_reclaim_policy="Retain",
            host_path=client.V1HostPathVolumeSource(path=f"/podguard-test/{w.pv}"),
            claim_ref=client.V1ObjectReference(namespace=w.ns, name=w.pvc))))
    labels = {"app": "web"}
    apps.create_namespaced_stateful_set(w.ns, client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1StatefulSetSpec(
            replicas=1, service_name="web",
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(
                    name="web", image="registry.invalid/podguard/web:never-pulled",
                    volume_mounts=[client.V1VolumeMount(name="data", mount_path="/data")])])),
            volume_claim_templates=[client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name="data"),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"], storage_class_name=sc_name,
                    resources=client.V1VolumeResourceRequirements(
                        requests={"storage": "1Gi"})))])))
    try:
        yield w
    finally:
        core.delete_namespace(w.ns)
        core.delete_persistent_volume(w.pv)


def _running_pod(core: client.CoreV1Api, w: Web) -> client.V1Pod | None:
    try:
        pod = core.read_namespaced_pod(w.pod, w.ns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    if _meta(pod).deletion_timestamp is None and _some(pod.status, "status").phase == "Running":
        return pod
    return None


def _claim_of(pod: client.V1Pod) -> str:
    volumes = _some(_some(pod.spec, "pod spec").volumes, "volumes")
    return next(str(v.persistent_volume_claim.claim_name) for v in volumes
                if v.persistent_volume_claim is not None)


def _evict(core: client.CoreV1Api, w: Web) -> None:
    core.create_namespaced_pod_eviction(w.pod, w.ns, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=w.pod, namespace=w.ns)))


def _wait_running(core: client.CoreV1Api, w: Web) -> client.V1Pod:
    pod = wait_for(lambda: _running_pod(core, w), timeout=90, what=f"{w.ns}/{w.pod} Running")
    _assert_bound(core, w)
    assert _claim_of(pod) == w.pvc
    return pod


def _assert_bound(core: client.CoreV1Api, w: Web) -> None:
    pvc = core.read_namespaced_persistent_volume_claim(w.pvc, w.ns)
    status, spec = _some(pvc.status, "pvc status"), _some(pvc.spec, "pvc spec")
    assert status.phase == "Bound" and spec.volume_name == w.pv, status
    assert _meta(pvc).deletion_timestamp is None


def _node_of(pod: client.V1Pod) -> str:
    return str(_some(pod.spec, "pod spec").node_name)


def test_pdb_forbids_eviction_with_429(kube: Kube, web: Web) -> None:
    core, policy = client.CoreV1Api(kube.api), client.PolicyV1Api(kube.api)
    _wait_running(core, web)
    policy.create_namespaced_pod_disruption_budget(web.ns, client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1PodDisruptionBudgetSpec(
            min_available=1, selector=client.V1LabelSelector(match_labels={"app": "web"}))))

    # the disruption controller has seen the budget and the healthy pod it protects
    def settled() -> client.V1PodDisruptionBudget | None:
        pdb = policy.read_namespaced_pod_disruption_budget("web", web.ns)
        st = pdb.status
        done = (st is not None and st.observed_generation == _meta(pdb).generation
                and st.current_healthy == 1 and st.disruptions_allowed == 0)
        return pdb if done else None

    wait_for(settled, timeout=150, what="the PDB's status from the disruption controller",
             describe=lambda: policy.read_namespaced_pod_disruption_budget("web", web.ns).status)
    with pytest.raises(ApiException) as err:
        _evict(core, web)
    assert err.value.status == 429, err.value
    assert "disruption budget" in (err.value.body or ""), err.value.body
    still = core.read_namespaced_pod(web.pod, web.ns)
    assert _meta(still).deletion_timestamp is None


def test_eviction_reschedules_statefulset_pod_on_another_node_with_its_pvc(
        kube: Kube, web: Web) -> None:
    core = client.CoreV1Api(kube.api)
    first = _wait_running(core, web)
    old_node, old_uid = _node_of(first), _meta(first).uid
    assert old_node in kube.nodes
    core.patch_node(old_node, {"spec": {"unschedulable": True}})
    try:
        _evict(core, web)

        def replaced() -> client.V1Pod | None:
            pod = _running_pod(core, web)
            return pod if pod is not None and _meta(pod).uid != old_uid else None

        second = wait_for(replaced, timeout=90,
                          what="the StatefulSet controller to recreate the evicted pod")
        assert _node_of(second) in kube.nodes
        assert _node_of(second) != old_node, "scheduled onto the cordoned node"
        assert _claim_of(second) == web.pvc
        _assert_bound(core, web)
    finally:
        core.patch_node(old_node, {"spec": {"unschedulable": False}})
