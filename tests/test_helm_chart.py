"""The Helm chart of deploy/helm/podguard: linted, rendered, compared with Kustomize, installed.

Rendered with the real, pinned ``helm`` (deploy/render.py builds ``helm.sh/helm/v3/cmd/helm``
from its Go module once per machine, like kustomize). The chart's RBAC rules and meta-alerts
are files generated from deploy/kustomize (``python -m deploy.render chart-files --write``),
whose remediate rules follow detector/remediation/rbac.py; a test checks they are current, so
a change of the RBAC or the rules in Kustomize fails here until the chart follows.

``helm template`` with the defaults (and with ``mode=remediate``) renders the same objects as
the Kustomize overlay alert-only (remediate): same kinds and names, same specs, same RBAC
rules, the same settings file. The intended differences, which the comparison normalises and
nothing else:

- Helm's standard labels (``app.kubernetes.io/instance``, ``managed-by``, ``version``,
  ``helm.sh/chart``) on every object; the selectors carry ``app.kubernetes.io/instance`` too,
  so two releases never select each other's pods;
- no Namespace object: Helm installs into ``--namespace`` (``--create-namespace``); the
  Kustomize base also labels its namespace for the restricted Pod Security Standard;
- the ConfigMap has a fixed name and the pod template a ``checksum/config`` annotation (Helm's
  way of rolling the pods on a change), where Kustomize's generator puts a hash in the name
  (and no labels);
- the models claim carries ``helm.sh/resource-policy: keep`` (``helm uninstall`` keeps the
  trained models).

(The order of a container's ports is not compared: Kustomize puts a patch's ports first.)
What the remediate overlay adds besides its ClusterRole and settings (objects such as a Role
for its records or admission policies, extra daemon ports) reaches the chart the same way,
as generated files (``files/remediate/``) that ``templates/remediate.yaml`` moves into the
release's namespace and names; so any change of the overlays either shows up in the chart
after ``chart-files --write`` or fails these tests.

The install test (``helm install`` on the local real control plane) is in
tests/stack/test_helm_chart.py.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import render
from deploy.render import OVERLAYS, build
from detector.settings import PrometheusSourceSettings, load_settings
from tests.test_deploy_manifests import one

Doc = dict[str, Any]
HELM_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
               "app.kubernetes.io/version", "helm.sh/chart")
MODES = {"alert-only": {}, "remediate": {"mode": "remediate"}}
_CACHE: dict[str, list[Doc]] = {}


def helm(*args: str, kubeconfig: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="podguard-helm-") as home:
        env = render.helm_env(Path(home))
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        r = subprocess.run([str(render.prepare_helm()), *args], capture_output=True,
                           text=True, timeout=300, env=env, check=False)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r


def template(values: Doc | None = None) -> list[Doc]:
    key = yaml.safe_dump(values or {})
    if key not in _CACHE:
        _CACHE[key] = render.helm_template(values)
    return copy.deepcopy(_CACHE[key])


def kustomized(mode: str) -> list[Doc]:
    key = f"kustomize:{mode}"
    if key not in _CACHE:
        _CACHE[key] = build(OVERLAYS[mode])
    return copy.deepcopy(_CACHE[key])


def _strip_labels(d: Any) -> None:
    if isinstance(d, dict):
        for k in ("labels", "matchLabels", "selector"):
            v = d.get(k)
            if isinstance(v, dict) and all(isinstance(x, str) for x in v.values()):
                for lbl in HELM_LABELS:
                    v.pop(lbl, None)
        for v in d.values():
            _strip_labels(v)
    elif isinstance(d, list):
        for v in d:
            _strip_labels(v)


def normalised(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """The objects by (kind, name) with the intended differences (module docstring) removed."""
    out: dict[tuple[str, str], Doc] = {}
    for d in copy.deepcopy(docs):
        if d["kind"] == "Namespace":
            continue
        _strip_labels(d)
        meta = d["metadata"]
        if d["kind"] == "ConfigMap" and meta["name"].startswith("podguard-config"):
            meta["name"] = "podguard-config"
            meta.pop("labels", None)  # Kustomize's generator gives it none
            d["data"] = {k: yaml.safe_load(v) for k, v in d["data"].items()}
        if d["kind"] == "PersistentVolumeClaim":
            meta.get("annotations", {}).pop("helm.sh/resource-policy", None)
        if d["kind"] == "DaemonSet":
            tmeta = d["spec"]["template"]["metadata"]
            tmeta.get("annotations", {}).pop("checksum/config", None)
            for c in d["spec"]["template"]["spec"]["containers"]:
                c["ports"] = sorted(c.get("ports", []), key=lambda p: p["name"])  # a set
            for v in d["spec"]["template"]["spec"]["volumes"]:
                if "configMap" in v:
                    v["configMap"]["name"] = "podguard-config"
        for m in (meta, d.get("spec", {}).get("template", {}).get("metadata", {})):
            for k in ("annotations", "labels"):
                if m.get(k) == {}:
                    del m[k]
        out[(d["kind"], meta["name"])] = d
    return out


# ============================================================================ static


def test_helm_is_the_pinned_build() -> None:
    out = helm("version", "--template", "{{ .Version }} {{ .GoVersion }}").stdout
    assert out.startswith(render.HELM_VERSION.rsplit(".", 1)[0]), out  # v3.22 (no ldflags)
    assert render.helm_binary().parent.name == f"helm-{render.HELM_VERSION}"


def test_generated_chart_files_are_current() -> None:
    """The chart's RBAC rules and meta-alerts are Kustomize's (the one source of both)."""
    for path, text in render.chart_files().items():
        assert path.is_file() and path.read_text() == text, \
            f"{path} is stale: python -m deploy.render chart-files --write"
    rem = yaml.safe_load((render.CHART_FILES / "rbac" / "remediate.yaml").read_text())
    from detector.remediation import rbac

    assert rem["rules"] == [r.as_manifest() for r in rbac.CONTROLLER_RULES]


@pytest.mark.parametrize("values", [{}, {"mode": "remediate"},
                                    {"models": {"persistence": {"enabled": False}}}])
def test_helm_lint(values: Doc, tmp_path: Path) -> None:
    vals = tmp_path / "values.yaml"
    vals.write_text(yaml.safe_dump(values))
    r = helm("lint", "--strict", str(render.CHART), "-f", str(vals),
             "--kube-version", render.TEMPLATE_KUBE_VERSION)
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout, r.stdout


@pytest.mark.parametrize(("values", "message"), [  # values.schema.json, then the templates
    ({"mode": "fix-everything"}, "at '/mode': value must be one of 'alert-only', 'remediate'"),
    ({"models": {"persistence": {"accessMode": "ReadOnlyMany"}}},
     "at '/models/persistence/accessMode': value must be one of"),
    ({"prometheus": {"url": ""}}, "at '/prometheus/url'"),
    ({"prometheus": {"auth": {"bearerToken": "x"}}}, "additional properties 'bearerToken'"),
    ({"alertmanager": {"urls": "http://am:9093"}}, "at '/alertmanager/urls'"),
    ({"prometheus": {"auth": {"bearerTokenKey": "token"}}}, "existingSecret, which is empty"),
    ({"prometheus": {"auth": {"username": "u", "existingSecret": "s"}}},
     "username needs prometheus.auth.passwordKey"),
])
def test_bad_values_are_refused_with_what_is_wrong(values: Doc, message: str) -> None:
    with pytest.raises(render.StackError, match=message):
        render.helm_template(values)


@pytest.mark.parametrize("mode", list(MODES))
def test_template_renders_the_kustomize_objects(mode: str) -> None:
    chart, kust = normalised(template(MODES[mode])), normalised(kustomized(mode))
    assert sorted(chart) == sorted(kust)
    for key in kust:
        assert chart[key] == kust[key], f"{key} differs between the chart and Kustomize"
    role = one(template(MODES[mode]), "ClusterRole")
    assert role["rules"] == one(kustomized(mode), "ClusterRole")["rules"]


def test_the_comparison_catches_drift() -> None:
    """Changing one verb, one resource figure or one setting is seen as a difference."""
    kust = normalised(kustomized("alert-only"))
    for change in ({"resources": {"limits": {"memory": "2Gi"}}},
                   {"config": {"alerting": {"critical_below_s": 1800}}}):
        chart = normalised(template(change))
        assert any(chart[k] != kust[k] for k in kust), change
    docs = template()
    one(docs, "ClusterRole")["rules"][0]["verbs"].append("list")
    assert normalised(docs)[("ClusterRole", "podguard")] != kust[("ClusterRole", "podguard")]


def _config(docs: list[Doc], tmp: Path) -> Any:
    path = tmp / "config.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["config.yaml"])
    return load_settings(path, environ={})


def test_values_prometheus_resources_placement_storage(tmp_path: Path) -> None:
    url = "https://prometheus.example.invalid:9090"
    docs = template({
        "prometheus": {"url": url}, "alertmanager": {"urls": ["http://am-0:9093",
                                                              "http://am-1:9093"]},
        "resources": {"requests": {"cpu": "200m", "memory": "600Mi"},
                      "limits": {"cpu": "2", "memory": "2Gi"}},
        "nodeSelector": {"pool": "gpu"}, "tolerations": [{"operator": "Exists"}],
        "models": {"persistence": {"accessMode": "ReadWriteMany", "storageClassName": "nfs"}},
        "config": {"alerting": {"critical_below_s": 1800}}})
    s = _config(docs, tmp_path)
    assert s.sources.prometheus.url == url and s.alerting.critical_below_s == 1800
    assert s.alerting.alertmanager_urls == ["http://am-0:9093", "http://am-1:9093"]
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    pvc = one(docs, "PersistentVolumeClaim")["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"] and pvc["storageClassName"] == "nfs"
    train = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert train["containers"][0]["args"][:3] == ["train", "--prometheus", url]
    assert "storageClassName" not in one(template(), "PersistentVolumeClaim")["spec"]
    assert one(template(), "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_values_without_model_storage(tmp_path: Path) -> None:
    docs = template({"models": {"persistence": {"enabled": False}}})
    kinds = {d["kind"] for d in docs}
    assert "PersistentVolumeClaim" not in kinds and "CronJob" not in kinds
    assert _config(docs, tmp_path).model.root == ""  # the image's shipped default model
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert {v["name"] for v in spec["volumes"]} == {"config", "tmp"}


def test_values_prometheus_auth_from_a_secret(tmp_path: Path) -> None:
    docs = template({"prometheus": {"auth": {"existingSecret": "prom-creds",
                                             "bearerTokenKey": "token", "caKey": "ca.crt",
                                             "headers": {"X-Scope-OrgID": "team-a"}}}})
    cfg = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    http = cfg["sources"]["prometheus"]["http"]
    base = "/var/run/secrets/podguard/prometheus"
    assert http == {"bearer_token_file": f"{base}/token", "ca_file": f"{base}/ca.crt",
                    "headers": {"X-Scope-OrgID": "team-a"}}
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    vol = next(v for v in spec["volumes"] if v["name"] == "prometheus-auth")
    assert vol["secret"]["secretName"] == "prom-creds"
    mount = next(m for m in spec["containers"][0]["volumeMounts"]
                 if m["name"] == "prometheus-auth")
    assert mount == {"name": "prometheus-auth", "mountPath": base, "readOnly": True}
    if "http" in PrometheusSourceSettings.model_fields:  # the TLS/auth settings exist
        s = _config(docs, tmp_path)
        assert s.sources.prometheus.http.bearer_token_file == f"{base}/token"


def test_changing_the_settings_rolls_the_pods() -> None:
    def checksum(values: Doc) -> str:
        ann = one(template(values), "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
        out: str = ann["checksum/config"]
        return out

    assert checksum({}) != checksum({"mode": "remediate"})
    assert checksum({}) == checksum({"resources": {"requests": {"cpu": "100m",
                                                                "memory": "512Mi"}}})


# ============================================================================ real cluster


