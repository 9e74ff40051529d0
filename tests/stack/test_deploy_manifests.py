"""The Kustomize overlays installed on the real control plane (``kube`` fixture).

Each overlay, moved by Kustomize into a namespace of the test's own with every name suffixed,
passes a server-side dry-run with strict field validation (the project's CRD copies installed
first), is then created, its DaemonSet runs one pod on every kwok node, and the CronJob and
RBAC objects exist. Everything created is deleted at the end, CRDs included when this module
created them. The static checks of the same manifests are in tests/test_deploy_manifests.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from deploy import render
from deploy.render import OVERLAYS, build_relocated
from tests.support.k8s_fixtures import Kube
from tests.support.waiting import wait_for
from tests.test_deploy_manifests import CLUSTER_KINDS, Doc, one


def d_(obj: Any) -> Doc:
    """A typed client model as a plain dict (snake_case keys)."""
    out: Doc = obj.to_dict()
    return out


STRICT = [("fieldValidation", "Strict")]  # unknown or duplicate fields are errors, as kubectl


def apply(kube: Kube, docs: list[Doc], *, dry_run: bool) -> list[Doc]:
    """Create every object (server-side dry-run if asked), strict field validation; returns
    what the server returned."""
    dyn = dynamic.DynamicClient(kube.api)
    out = []
    for d in docs:
        res = dyn.resources.get(api_version=d["apiVersion"], kind=d["kind"])
        ns = d["metadata"].get("namespace") if res.namespaced else None
        kw: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        out.append(res.create(body=d, namespace=ns, query_params=list(STRICT), **kw).to_dict())
    return out


def delete_installation(kube: Kube, docs: list[Doc]) -> None:
    """Delete the cluster-scoped objects among ``docs`` (a namespace takes its contents)."""
    dyn = dynamic.DynamicClient(kube.api)
    for d in docs:
        if d["kind"] in CLUSTER_KINDS:
            res = dyn.resources.get(api_version=d["apiVersion"], kind=d["kind"])
            try:
                res.delete(name=d["metadata"]["name"])
            except ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture(scope="module")
def crds(kube: Kube) -> Iterator[list[Doc]]:
    """The project's CRD copies, unless these CRDs exist already (then left alone); waits
    until they are Established; deletes the ones it created."""
    ext = client.ApiextensionsV1Api(kube.api)
    created: list[Doc] = []
    docs = render.load_crds()
    try:
        for doc in docs:
            try:
                apply(kube, [doc], dry_run=False)
                created.append(doc)
            except ApiException as e:
                if e.status != 409:
                    raise
            name = doc["metadata"]["name"]

            def established(n: str = name) -> bool:
                conds = d_(ext.read_custom_resource_definition(n))["status"]["conditions"]
                return any(c["type"] == "Established" and c["status"] == "True"
                           for c in conds or [])

            wait_for(established, timeout=60, what=f"CRD {name} Established")
        yield docs
    finally:
        delete_installation(kube, created)


def models_pv(namespace: str, claim: str, name: str) -> Doc:
    """A PersistentVolume pre-bound to the models claim: the test cluster has no RWX
    provisioner (a real one would make it); kwok pods never touch it."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "podguard"}},
            "spec": {"capacity": {"storage": "2Gi"},
                     "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "hostPath": {"path": f"/tmp/{name}", "type": "DirectoryOrCreate"},
                     "claimRef": {"namespace": namespace, "name": claim}}}


class Installation:
    """One overlay installed by Kustomize into a namespace of the test's own, every name
    suffixed (see ``deploy.render.relocation``)."""

    def __init__(self, kube: Kube, name: str, *, prefix: str = "pg-deploy") -> None:
        tag = uuid.uuid4().hex[:6]
        self.kube, self.overlay = kube, name
        self.namespace = f"{prefix}-{name}-{tag}"
        self.suffix = f"-{tag}"
        self.docs = build_relocated(OVERLAYS[name], namespace=self.namespace,
                                    suffix=self.suffix)
        # no default StorageClass here: the claim binds the PV below, storageClassName ""
        one(self.docs, "PersistentVolumeClaim")["spec"]["storageClassName"] = ""
        self.created: list[Doc] = []

    def name(self, base: str) -> str:
        return f"{base}{self.suffix}"

    def install(self, kinds: tuple[str, ...] | None = None) -> None:
        """Namespace first, then a server-side dry-run of everything else, then the real
        creation (only ``kinds`` if given)."""
        docs = [d for d in self.docs if kinds is None or d["kind"] in kinds]
        ns = [d for d in docs if d["kind"] == "Namespace"]
        rest = [d for d in docs if d["kind"] != "Namespace"]
        apply(self.kube, ns, dry_run=True)
        self.created += ns
        apply(self.kube, ns, dry_run=False)
        apply(self.kube, rest, dry_run=True)  # everything validated before anything is made
        for d in rest:
            self.created.append(d)
            apply(self.kube, [d], dry_run=False)
        if kinds is None or "PersistentVolumeClaim" in kinds:
            pv = models_pv(self.namespace, self.name("podguard-models"),
                           self.name("podguard-models"))
            self.created.append(pv)
            apply(self.kube, [pv], dry_run=False)

    def remove(self) -> None:
        delete_installation(self.kube, self.created)


@pytest.fixture(scope="module", params=list(OVERLAYS))
def installation(request: pytest.FixtureRequest, kube: Kube,
                 crds: list[Doc]) -> Iterator[Installation]:
    inst = Installation(kube, request.param)
    try:
        inst.install()
        yield inst
    finally:
        inst.remove()


@pytest.mark.stack
@pytest.mark.timeout(300)
def test_overlay_installs_and_daemonset_runs_on_every_kwok_node(
        installation: Installation) -> None:
    inst = installation
    kube, ns = inst.kube, inst.namespace
    core, apps = client.CoreV1Api(kube.api), client.AppsV1Api(kube.api)
    nodes = set(kube.nodes)

    def pods() -> list[Doc]:
        items: list[Doc] = d_(core.list_namespaced_pod(
            ns, label_selector="app.kubernetes.io/name=podguard"))["items"]
        return items

    def running() -> dict[str, str] | None:
        items = pods()
        by_node = {p["spec"]["node_name"]: p["status"]["phase"] for p in items}
        if set(by_node) == nodes and all(ph == "Running" for ph in by_node.values()) \
                and len(items) == len(nodes):
            return by_node
        return None

    wait_for(running, timeout=180, what=f"one Running podguard pod per kwok node in {ns}")
    ds = d_(apps.read_namespaced_daemon_set(inst.name("podguard"), ns))
    assert ds["status"]["desired_number_scheduled"] == len(nodes)
    pod = pods()[0]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["NODE_NAME"]["value_from"]["field_ref"]["field_path"] == "spec.nodeName"
    assert pod["spec"]["security_context"]["run_as_non_root"] is True
    pvc = d_(core.read_namespaced_persistent_volume_claim(inst.name("podguard-models"), ns))
    assert pvc["status"]["phase"] == "Bound"
    cj = d_(client.BatchV1Api(kube.api).read_namespaced_cron_job(
        inst.name("podguard-retrain"), ns))
    train = cj["spec"]["job_template"]["spec"]["template"]["spec"]
    assert train["containers"][0]["args"][0] == "train"
    assert train["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    role = d_(rbac_api.read_cluster_role(inst.name("podguard")))
    want = one(inst.docs, "ClusterRole")["rules"]
    assert [{"apiGroups": r["api_groups"], "resources": r["resources"], "verbs": r["verbs"]}
            for r in role["rules"]] == want
    crb = d_(rbac_api.read_cluster_role_binding(inst.name("podguard")))
    assert crb["subjects"][0]["namespace"] == ns
    assert crb["subjects"][0]["name"] == ds["spec"]["template"]["spec"]["service_account_name"]
    cm_name = one(inst.docs, "ConfigMap")["metadata"]["name"]
    cm = d_(core.read_namespaced_config_map(cm_name, ns))
    assert yaml.safe_load(cm["data"]["config.yaml"])["remediation"]["enabled"] == \
        (inst.overlay == "remediate")
    dyn = dynamic.DynamicClient(kube.api)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        res = dyn.resources.get(api_version="monitoring.coreos.com/v1", kind=kind)
        assert res.get(name=inst.name("podguard"), namespace=ns).spec


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_server_side_dry_run_refuses_broken_manifests(kube: Kube, crds: list[Doc]) -> None:
    """The dry-run is a real validation: an invalid DaemonSet, and a misspelt field in the
    ServiceMonitor (checked by the CRD copy's schema), are refused by the server."""
    docs = build_relocated(OVERLAYS["alert-only"], namespace="default",
                           suffix=f"-{uuid.uuid4().hex[:6]}")
    ds = one(docs, "DaemonSet")
    ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = "other"
    with pytest.raises(ApiException) as err:
        apply(kube, [ds], dry_run=True)
    assert err.value.status == 422 and "selector" in str(err.value.body)
    sm = one(docs, "ServiceMonitor")
    apply(kube, [sm], dry_run=True)  # as rendered: accepted
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(ApiException) as err:
        apply(kube, [sm], dry_run=True)
    # strict field validation: an unknown field is a bad request
    body = str(err.value.body)
    assert err.value.status == 400 and "unknown field" in body, body
    assert "spec.endpoints[0].intervall" in body, body
    sm["spec"]["endpoints"][0].pop("intervall")
    sm["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(ApiException) as err:
        apply(kube, [sm], dry_run=True)
    assert err.value.status == 422 and "interval" in str(err.value.body), err.value.body

