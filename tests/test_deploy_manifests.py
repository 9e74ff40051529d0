"""The Kustomize manifests of deploy/manifests: rendered, validated, installed.

Static checks: deploy/render.py gives the objects ``kubectl kustomize`` gives; the
ConfigMap's configuration passes ``load_settings`` (alert-only: remediation off; remediate:
on, not dry-run, nothing else different); the DaemonSet's port, probes, mounts, security
and resources; the CronJob; ``promtool check rules`` on the PrometheusRule and its metric
names against the daemon's registry; ``amtool check-config`` on the route example.

Against the real control plane (``kube`` fixture): each overlay, moved into a namespace of
the test's own (cluster-scoped names suffixed), passes a server-side dry-run, is then created,
its DaemonSet runs one pod on every kwok node, and the CronJob and RBAC objects exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from deploy.render import RenderError, relocate, render
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.settings import Settings, load_settings
from detector.sources.base import SourceStatus
from tests.support.k8s_fixtures import Kube

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "manifests"
OVERLAYS = ("alert-only", "remediate")
T = TypeVar("T")
Doc = dict[str, Any]


def overlay(name: str) -> list[Doc]:
    return render(MANIFESTS / "overlays" / name)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''} in the rendering"
    return hits[0]


def settings_of(docs: list[Doc], tmp: Path) -> Settings:
    path = tmp / "config.yaml"
    path.write_text(one(docs, "ConfigMap", "podguard-config")["data"]["config.yaml"])
    return load_settings(path, environ={})


# ============================================================================ renderer


@pytest.mark.parametrize("name", OVERLAYS)
def test_render_equals_kubectl_kustomize(name: str) -> None:
    from deploy.local.k8s_build import binaries

    built = binaries().kubectl  # built by `python -m deploy.local prepare` (make test does it)
    kubectl = str(built) if built.is_file() else shutil.which("kubectl")
    assert kubectl, ("kubectl (with its built-in kustomize) is needed to check the renderer: "
                     "run `.venv/bin/python -m deploy.local prepare kubernetes`")
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / "overlays" / name)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    mine = {(d["kind"], d["metadata"]["name"]): d for d in overlay(name)}
    assert mine.keys() == theirs.keys()
    for key, doc in mine.items():
        assert doc == theirs[key], f"{key} differs from kubectl kustomize"


def _kustomization(tmp: Path, body: str, files: dict[str, str]) -> Path:
    (tmp / "kustomization.yaml").write_text(body)
    for name, text in files.items():
        (tmp / name).write_text(text)
    return tmp


DS = """apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d}
spec:
  template:
    spec:
      tolerations: [{key: a, operator: Exists}]
      containers:
        - name: c
          image: x
          env: [{name: A, value: "1"}, {name: B, value: "2"}]
"""


def test_strategic_merge_by_key_null_deletes_other_lists_replaced(tmp_path: Path) -> None:
    patch = """apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d}
spec:
  template:
    spec:
      tolerations: [{key: b, operator: Exists}]
      containers:
        - name: c
          image: null
          env: [{name: B, value: "3"}, {name: C, value: "4"}]
        - name: side
          image: y
"""
    d = _kustomization(tmp_path, "resources: [ds.yaml]\nnamespace: n\npatches:\n"
                                 "  - path: p.yaml\n", {"ds.yaml": DS, "p.yaml": patch})
    [ds] = render(d)
    spec = ds["spec"]["template"]["spec"]
    assert ds["metadata"]["namespace"] == "n"
    assert spec["tolerations"] == [{"key": "b", "operator": "Exists"}]
    assert spec["containers"] == [
        {"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"},
                              {"name": "C", "value": "4"}]},
        {"name": "side", "image": "y"}]


def test_json_patch_and_refusals(tmp_path: Path) -> None:
    ops = "- op: add\n  path: /spec/template/spec/tolerations/-\n  value: {key: z}\n" \
          "- op: replace\n  path: /metadata/name\n  value: e\n"
    d = _kustomization(tmp_path, "resources: [ds.yaml]\npatches:\n  - path: ops.yaml\n"
                                 "    target: {kind: DaemonSet, name: d}\n",
                       {"ds.yaml": DS, "ops.yaml": ops})
    [ds] = render(d)
    assert ds["metadata"]["name"] == "e"
    assert ds["spec"]["template"]["spec"]["tolerations"][-1] == {"key": "z"}
    bad = {
        "commonLabels: {a: b}\nresources: [ds.yaml]\n": "unsupported fields",
        "resources: [ds.yaml]\npatches:\n  - path: ops.yaml\n": "needs a target",
        "resources: [ds.yaml]\npatches:\n  - path: ops.yaml\n    target: {kind: Job}\n":
            "no resource matches",
        "resources: [ds.yaml, ds.yaml]\n": "defined twice",
        "resources: [dup.yaml]\n": "duplicate key",
    }
    for body, error in bad.items():
        _kustomization(tmp_path, body, {"dup.yaml": "kind: A\nkind: B\napiVersion: v1\n"})
        with pytest.raises(RenderError, match=error):
            render(tmp_path)


def test_relocate_moves_namespace_and_suffixes_cluster_names() -> None:
    docs = relocate(overlay("alert-only"), "pg-test", "-x1")
    assert one(docs, "Namespace")["metadata"]["name"] == "pg-test"
    crb = one(docs, "ClusterRoleBinding")
    assert crb["metadata"]["name"] == "podguard-x1" and crb["roleRef"]["name"] == "podguard-x1"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "podguard",
                                "namespace": "pg-test"}]
    assert one(docs, "ClusterRole")["metadata"]["name"] == "podguard-x1"
    for d in docs:
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "pg-test", d["kind"]


# ============================================================================ configuration


def test_configuration_per_overlay(tmp_path: Path) -> None:
    alert = settings_of(overlay("alert-only"), tmp_path)
    rem = settings_of(overlay("remediate"), tmp_path)
    assert alert.remediation.enabled is False
    assert rem.remediation.enabled is True and rem.remediation.dry_run is False
    a, r = alert.model_dump(), rem.model_dump()
    a.pop("remediation")
    r.pop("remediation")
    assert a == r, "the overlays' configurations differ outside the remediation section"
    assert alert.sources.kind == "prometheus" and alert.sources.prometheus.url
    assert alert.sources.prometheus.node_name == ""  # NODE_NAME from the downward API
    assert alert.server.enabled and alert.server.host == "0.0.0.0" and alert.server.port > 0
    assert alert.runtime.verdicts_path == ""  # read-only root filesystem
    assert alert.alerting.kubernetes_events


def test_configuration_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    docs = overlay("alert-only")
    cm = one(docs, "ConfigMap")
    cm["data"]["config.yaml"] += "server:\n  prot: 1\n"
    from detector.errors import ConfigError
    with pytest.raises(ConfigError):
        settings_of(docs, tmp_path)


# ============================================================================ workloads


def _container(pod_spec: Doc, name: str) -> Doc:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


@pytest.mark.parametrize("name", OVERLAYS)
def test_daemonset(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    s = settings_of(docs, tmp_path)
    ds = one(docs, "DaemonSet", "podguard")
    spec = ds["spec"]["template"]["spec"]
    c = _container(spec, "podguard")
    assert spec["serviceAccountName"] == one(docs, "ClusterRoleBinding")["subjects"][0]["name"]
    assert c["args"][:1] == ["--config"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    config_dir = str(Path(c["args"][1]).parent)
    assert mounts[config_dir]["name"] == "config" and mounts[config_dir]["readOnly"]
    assert mounts[s.model.root]["readOnly"] is True and mounts[s.model.root]["name"] == "models"
    assert "/tmp" in mounts
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["tmp"]["emptyDir"] is not None
    assert vols["config"]["configMap"]["name"] == "podguard-config"
    pvc = one(docs, "PersistentVolumeClaim", vols["models"]["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port["http-metrics"] == s.server.port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}}
    assert spec["terminationGracePeriodSeconds"] > s.runtime.grace_period_s
    for ctr in [*spec["containers"], *spec.get("initContainers", [])]:
        sc = ctr["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "resources" in ctr and "limits" in ctr["resources"]
    tol = spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tol
    assert {"operator": "Exists", "effect": "NoSchedule"} in tol
    svc = one(docs, "Service", "podguard")
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http-metrics"
    sm = one(docs, "ServiceMonitor", "podguard")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "http-metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_seed_init_container_seeds_a_loadable_model_root_once(tmp_path: Path) -> None:
    """The DaemonSet's seed script, run for real on a scratch root (paths rewritten)."""
    spec = one(overlay("alert-only"), "DaemonSet")["spec"]["template"]["spec"]
    seed = next(c for c in spec["initContainers"] if c["name"] == "seed-model")
    assert seed["command"][:2] == ["python", "-c"]
    root = tmp_path / "models"
    root.mkdir()
    script = seed["command"][2].replace('"/models"', repr(str(root)))
    env = {**os.environ, "PODGUARD_DEFAULT_MODEL": str(ROOT / "data" / "model"),
           "POD_NAME": "podguard-abc"}
    for _ in range(2):  # the second run (another node, a restart) changes nothing
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True, timeout=60).stdout
        assert out.strip() == "model root: default-1"
    assert sorted(p.name for p in root.iterdir()) == ["current", "default-1"]
    from detector.models.store import CURRENT
    from detector.pipeline import Pipeline
    from detector.settings import DetectionSettings
    assert (root / CURRENT).read_text().strip() == "default-1"
    assert Pipeline.load(root, settings=DetectionSettings()).version


def test_retraining_cronjob(tmp_path: Path) -> None:
    docs = overlay("alert-only")
    s = settings_of(docs, tmp_path)
    cj = one(docs, "CronJob", "podguard-retrain")
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    c = _container(pod, "train")
    assert c["command"] + c["args"][:7] == [
        "podguard", "train", "--prometheus", "http://prometheus-operated.monitoring:9090",
        "--since", "7d", "--out", s.model.root]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert not mounts[s.model.root].get("readOnly")
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts[s.model.root]["name"]]["persistentVolumeClaim"]["claimName"] == \
        "podguard-models"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    import argparse

    from training.job import add_arguments  # the arguments parse as `podguard train` does
    p = argparse.ArgumentParser()
    add_arguments(p)
    ns = p.parse_args(c["args"][1:])
    assert str(ns.out) == s.model.root and ns.since == "7d"


# ============================================================================ alerting


def _rule_groups() -> list[Doc]:
    return one(overlay("alert-only"), "PrometheusRule")["spec"]["groups"]


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": _rule_groups()}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    names = {rule["alert"] for g in _rule_groups() for rule in g["rules"]}
    assert {"PodguardDaemonDown", "PodguardSourceStale", "PodguardDeadLetterRate",
            "PodguardModelTooOld"} <= names
    # and a broken rule does fail promtool (the check can fail)
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Bad", "expr": "rate(podguard_ready[5m]"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          timeout=60).returncode != 0


def test_rules_name_only_metrics_the_daemon_exports() -> None:
    reg = CollectorRegistry()
    DaemonMetrics(reg, StateView(source="prometheus", source_status=lambda: SourceStatus(
        up=True, caught_up=True, lag_s=1.0, extra={"lag_records": 0.0})))
    families = list(reg.collect())  # labelled counters have no sample before first use
    exported = {s.name for m in families for s in m.samples} | {m.name for m in families}
    exported |= {f"{m.name}_total" for m in families if m.type == "counter"}
    exported |= {f"{m.name}_{x}" for m in families if m.type == "histogram"
                 for x in ("bucket", "sum", "count")}
    used = {m for g in _rule_groups() for rule in g["rules"]
            for m in re.findall(r"\bpodguard_[a-z_]+", rule["expr"])}
    assert used, "no podguard_* metric in the rules"
    assert used <= exported, f"not exported by the daemon: {sorted(used - exported)}"


def test_alertmanager_route_example_passes_amtool(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool (Debian package prometheus-alertmanager) is needed"
    route = yaml.safe_load((MANIFESTS / "alertmanager-route-example.yml").read_text())

    def receivers(r: Doc) -> set[str]:
        return {r["receiver"], *(n for sub in r.get("routes", []) for n in receivers(sub))}

    cfg = {"route": {"receiver": "default", "routes": [route]},
           "receivers": [{"name": n} for n in sorted({"default", *receivers(route)})]}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    from detector.sinks.alertmanager import ALERT_NAMES
    for name in ALERT_NAMES.values():
        assert name in route["matchers"][0]
    cfg["receivers"] = [{"name": "default"}]  # a receiver the route names is missing: fails
    path.write_text(yaml.safe_dump(cfg))
    assert subprocess.run([amtool, "check-config", str(path)], capture_output=True,
                          timeout=60).returncode != 0


# ============================================================================ real cluster


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = check()
        except ApiException as e:
            got, last = None, e
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def d_(obj: Any) -> Doc:
    """A typed client model as a plain dict (snake_case keys; every field Optional in the
    model, present in the dict)."""
    out: Doc = obj.to_dict()
    return out


def install_crds(kube: Kube) -> None:
    """The project's CRD copies, unless the CRDs exist already; waits until Established."""
    ext = client.ApiextensionsV1Api(kube.api)
    dyn = dynamic.DynamicClient(kube.api)
    crd_api = dyn.resources.get(api_version="apiextensions.k8s.io/v1",
                                kind="CustomResourceDefinition")
    for doc in render(MANIFESTS / "crds"):
        try:
            crd_api.create(body=doc)
        except ApiException as e:
            if e.status != 409:
                raise
        name = doc["metadata"]["name"]
        wait_for(lambda n=name: any(  # type: ignore[misc]
            c["type"] == "Established" and c["status"] == "True"
            for c in (d_(ext.read_custom_resource_definition(n))["status"]["conditions"] or [])),
            timeout=60, what=f"CRD {name} Established")


def apply(kube: Kube, docs: list[Doc], *, dry_run: bool) -> list[Doc]:
    """Create every object (server-side dry-run if asked); returns what the server returned."""
    dyn = dynamic.DynamicClient(kube.api)
    out = []
    for d in docs:
        res = dyn.resources.get(api_version=d["apiVersion"], kind=d["kind"])
        ns = d["metadata"].get("namespace") if res.namespaced else None
        kw: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        out.append(res.create(body=d, namespace=ns, **kw).to_dict())
    return out


def delete_installation(kube: Kube, docs: list[Doc]) -> None:
    dyn = dynamic.DynamicClient(kube.api)
    for d in docs:
        if d["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"):
            res = dyn.resources.get(api_version=d["apiVersion"], kind=d["kind"])
            try:
                res.delete(name=d["metadata"]["name"])
            except ApiException as e:
                if e.status != 404:
                    raise


def models_pv(namespace: str, claim: str, storage_class: str | None, name: str) -> Doc:
    """A PersistentVolume pre-bound to the models claim (the test cluster has no RWX
    provisioner); kwok pods never touch it."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "podguard"}},
            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Retain",
                     "storageClassName": storage_class or "",
                     "hostPath": {"path": f"/tmp/{name}", "type": "DirectoryOrCreate"},
                     "claimRef": {"namespace": namespace, "name": claim}}}


class Installation:
    """One overlay installed in a namespace of the test's own (see ``installed``)."""

    def __init__(self, kube: Kube, name: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.kube, self.overlay = kube, name
        self.namespace = f"pg-deploy-{name}-{tag}"
        self.suffix = f"-{tag}"
        self.docs = relocate(overlay(name), self.namespace, self.suffix)
        self.created: list[Doc] = []

    def install(self) -> None:
        install_crds(self.kube)
        nsdoc = [d for d in self.docs if d["kind"] == "Namespace"]
        rest = [d for d in self.docs if d["kind"] != "Namespace"]
        self.created += nsdoc
        apply(self.kube, nsdoc, dry_run=False)
        apply(self.kube, rest, dry_run=True)  # everything validated before anything is made
        for d in rest:
            self.created.append(d)
            apply(self.kube, [d], dry_run=False)
        pvc = d_(client.CoreV1Api(self.kube.api).read_namespaced_persistent_volume_claim(
            "podguard-models", self.namespace))
        pv = models_pv(self.namespace, "podguard-models", pvc["spec"]["storage_class_name"],
                       f"podguard-models{self.suffix}")
        self.created.append(pv)
        apply(self.kube, [pv], dry_run=False)

    def remove(self) -> None:
        delete_installation(self.kube, self.created)


def installed(kube: Kube, name: str) -> Iterator[Installation]:
    inst = Installation(kube, name)
    try:
        inst.install()
        yield inst
    finally:
        inst.remove()


@pytest.fixture(scope="module", params=OVERLAYS)
def installation(request: pytest.FixtureRequest, kube: Kube) -> Iterator[Installation]:
    yield from installed(kube, request.param)


@pytest.mark.stack
@pytest.mark.timeout(300)
def test_overlay_installs_and_daemonset_runs_on_every_kwok_node(
        installation: Installation) -> None:
    kube, ns = installation.kube, installation.namespace
    core, apps = client.CoreV1Api(kube.api), client.AppsV1Api(kube.api)
    nodes = set(kube.nodes)
    for n in d_(core.list_node(label_selector="type=kwok"))["items"]:
        if n["metadata"]["name"] in nodes:  # GPU-like taints, if any, are tolerated
            for t in n["spec"]["taints"] or []:
                assert t["effect"] != "NoExecute" or t["key"] == "nvidia.com/gpu", t

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
    ds = d_(apps.read_namespaced_daemon_set("podguard", ns))
    assert ds["status"]["desired_number_scheduled"] == len(nodes)
    env = {e["name"]: e for e in pods()[0]["spec"]["containers"][0]["env"]}
    assert env["NODE_NAME"]["value_from"]["field_ref"]["field_path"] == "spec.nodeName"
    cj = d_(client.BatchV1Api(kube.api).read_namespaced_cron_job("podguard-retrain", ns))
    assert cj["spec"]["job_template"]["spec"]["template"]["spec"]["containers"][0]["args"][0] \
        == "train"
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    role = d_(rbac_api.read_cluster_role(f"podguard{installation.suffix}"))
    want = one(installation.docs, "ClusterRole")["rules"]
    assert [{"apiGroups": r["api_groups"], "resources": r["resources"], "verbs": r["verbs"]}
            for r in role["rules"]] == want
    crb = d_(rbac_api.read_cluster_role_binding(f"podguard{installation.suffix}"))
    assert crb["subjects"][0]["namespace"] == ns
    cm = d_(core.read_namespaced_config_map("podguard-config", ns))
    assert ("enabled: true" in cm["data"]["config.yaml"]) == \
        (installation.overlay == "remediate")
    dyn = dynamic.DynamicClient(kube.api)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        res = dyn.resources.get(api_version="monitoring.coreos.com/v1", kind=kind)
        assert res.get(name="podguard", namespace=ns).spec


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_server_side_dry_run_refuses_a_broken_manifest(kube: Kube) -> None:
    """The dry-run is a real validation: an invalid DaemonSet is refused by the server."""
    docs = relocate(overlay("alert-only"), "default", f"-{uuid.uuid4().hex[:6]}")
    ds = one(docs, "DaemonSet")
    ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = "other"
    with pytest.raises(ApiException) as err:
        apply(kube, [ds], dry_run=True)
    assert err.value.status == 422 and "selector" in str(err.value.body)
