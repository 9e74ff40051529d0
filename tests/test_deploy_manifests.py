"""The Kustomize manifests of deploy/kustomize: rendered, validated, installed.

Rendered with the real, pinned ``kustomize`` (deploy/render.py builds it from its Go module
once per machine). Static checks: the configuration in each overlay's generated ConfigMap
passes ``load_settings`` (alert-only: remediation off; remediate: on, nothing else
different); the DaemonSet's port, probes, mounts, security, tolerations and resources; the
seed script run for real; the CronJob; ``promtool check rules`` and ``promtool test rules``
(every meta-alert fires on a synthetic series and stays quiet on a healthy one), the metric
names against the daemon's registry; ``amtool check-config`` and ``amtool config routes
test`` on the Alertmanager example. The installation on the real control plane is in
tests/stack/test_deploy_manifests.py.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from deploy import render
from deploy.render import OVERLAYS, build, build_relocated
from detector.errors import ConfigError
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.settings import Settings, load_settings
from detector.sources.base import SourceStatus

ROOT = Path(__file__).resolve().parent.parent
ROUTE_EXAMPLE = ROOT / "deploy" / "alertmanager" / "route-example.yml"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
Doc = dict[str, Any]

_RENDERED: dict[str, list[Doc]] = {}


def overlay(name: str) -> list[Doc]:
    """The rendering of an overlay (cached: kustomize runs once per overlay and session)."""
    if name not in _RENDERED:
        _RENDERED[name] = build(OVERLAYS[name])
    return copy.deepcopy(_RENDERED[name])


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of ``kind`` (named ``name``, or whose name starts with ``name-`` for a
    generated, hash-suffixed ConfigMap)."""
    exact = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    hits = exact or [d for d in docs if d["kind"] == kind and (
        name is None or d["metadata"]["name"].startswith(f"{name}-"))]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''} in the rendering"
    return hits[0]


def config_text(docs: list[Doc]) -> str:
    data: str = one(docs, "ConfigMap", "podguard-config")["data"]["config.yaml"]
    return data


def settings_of(docs: list[Doc], tmp: Path) -> Settings:
    path = tmp / "config.yaml"
    path.write_text(config_text(docs))
    return load_settings(path, environ={})


# ============================================================================ rendering


def test_kustomize_is_the_pinned_build() -> None:
    out = subprocess.run([str(render.prepare()), "version"], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    assert out == render.KUSTOMIZE_VERSION


def test_base_needs_no_crds_overlays_add_the_monitoring_objects() -> None:
    base = {d["kind"] for d in build(render.BASE)}
    assert base == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                    "ConfigMap", "PersistentVolumeClaim", "DaemonSet", "Service", "CronJob",
                    "NetworkPolicy"}
    # remediate adds podguard's records Role and the admission policies (detector/remediation)
    extra = {"remediate": {"Role", "RoleBinding", "ValidatingAdmissionPolicy",
                           "ValidatingAdmissionPolicyBinding"}}
    for name in OVERLAYS:
        kinds = [d["kind"] for d in overlay(name)]
        assert set(kinds) == base | {"ServiceMonitor", "PrometheusRule"} | extra.get(
            name, set()), name
        assert all(d["metadata"].get("namespace") == "podguard" for d in overlay(name)
                   if d["kind"] not in CLUSTER_KINDS)


def test_images_are_this_version_cpu_for_the_daemon_cuda_for_training() -> None:
    docs = overlay("alert-only")
    ds = one(docs, "DaemonSet", "podguard")["spec"]["template"]["spec"]
    images = {c["image"] for c in [*ds["containers"], *ds["initContainers"]]}
    assert images == {f"podguard:{VERSION}"}
    cj = one(docs, "CronJob", "podguard-retrain")["spec"]["jobTemplate"]["spec"]["template"]
    assert [c["image"] for c in cj["spec"]["containers"]] == [f"podguard:{VERSION}-cuda"]


def test_models_rwx_component_switches_the_claim_to_read_write_many(tmp_path: Path) -> None:
    """components/models-rwx, added to an overlay the way a user does, changes the claim's
    access mode and nothing else."""
    for name in OVERLAYS:
        work = tmp_path / name
        work.mkdir()
        (work / "kustomization.yaml").write_text(yaml.safe_dump({
            "resources": [os.path.relpath(OVERLAYS[name], work)],
            "components": [os.path.relpath(render.KUSTOMIZE_DIR / "components" / "models-rwx",
                                           work)]}))
        rwx, plain = build(work), overlay(name)
        assert one(rwx, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
        assert one(plain, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
        one(rwx, "PersistentVolumeClaim")["spec"]["accessModes"] = ["ReadWriteOnce"]
        assert rwx == plain


def test_relocation_moves_every_object_and_the_binding_subject() -> None:
    docs = build_relocated(OVERLAYS["alert-only"], namespace="pg-test", suffix="-x1")
    assert one(docs, "Namespace")["metadata"]["name"] == "pg-test"
    crb = one(docs, "ClusterRoleBinding")
    assert crb["metadata"]["name"] == "podguard-x1" and crb["roleRef"]["name"] == "podguard-x1"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "podguard-x1",
                                "namespace": "pg-test"}]
    ds = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert ds["serviceAccountName"] == "podguard-x1"
    vols = {v["name"]: v for v in ds["volumes"]}
    assert vols["models"]["persistentVolumeClaim"]["claimName"] == "podguard-models-x1"
    assert vols["config"]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    for d in docs:
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "pg-test", d["kind"]
            assert d["metadata"]["name"].startswith("podguard") and "-x1" in \
                d["metadata"]["name"], d["metadata"]["name"]



@pytest.mark.parametrize("suffix", ["-123e45", "-098765", "-123456", "-0x1f", "-true"])
def test_relocation_keeps_a_suffix_that_reads_as_a_number_or_boolean_a_string(
        suffix: str) -> None:
    """The stack tests draw suffixes from uuid hex: one like ``-123e45`` or ``-098765``
    reaches kustomize as a number unless quoted, which failed a CI build (session 7)."""
    docs = build_relocated(OVERLAYS["alert-only"], namespace="pg-test", suffix=suffix)
    assert one(docs, "ClusterRoleBinding")["metadata"]["name"] == f"podguard{suffix}"


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
    assert alert.alerting.kubernetes_events and alert.alerting.alertmanager_urls
    # the generated ConfigMap's name changes with its content, so a change rolls the pods
    assert one(overlay("alert-only"), "ConfigMap")["metadata"]["name"] != \
        one(overlay("remediate"), "ConfigMap")["metadata"]["name"]


def test_configuration_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(overlay("alert-only")).replace("  port: 9731", "  prot: 9731"))
    with pytest.raises(ConfigError, match="prot"):
        load_settings(path, environ={})


# ============================================================================ workloads


def _container(pod_spec: Doc, name: str) -> Doc:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


@pytest.mark.parametrize("name", list(OVERLAYS))
def test_network_policy_admits_only_prometheus_to_the_metrics_port(name: str) -> None:
    docs = overlay(name)
    pol = one(docs, "NetworkPolicy", "podguard")["spec"]
    ds = one(docs, "DaemonSet", "podguard")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert pol["podSelector"]["matchLabels"].items() <= pod_labels.items()  # the daemon pods
    cron = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
    assert not pol["podSelector"]["matchLabels"].items() <= cron["labels"].items()
    assert pol["policyTypes"] == ["Ingress"]  # outgoing calls stay open
    (rule,) = pol["ingress"]
    assert rule["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    ports = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    assert "http-metrics" in ports
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]


@pytest.mark.parametrize("name", list(OVERLAYS))
def test_daemonset(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    s = settings_of(docs, tmp_path)
    ds = one(docs, "DaemonSet", "podguard")
    spec = ds["spec"]["template"]["spec"]
    c = _container(spec, "podguard")
    assert spec["serviceAccountName"] == one(docs, "ClusterRoleBinding")["subjects"][0]["name"]
    assert c["args"] == ["--config", "/etc/podguard/config.yaml"]  # entrypoint: podguard run
    assert "command" not in c
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/podguard"]["name"] == "config" and mounts["/etc/podguard"]["readOnly"]
    assert mounts[s.model.root]["readOnly"] is True and mounts[s.model.root]["name"] == "models"
    assert "/tmp" in mounts
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["tmp"]["emptyDir"] is not None
    assert vols["config"]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    pvc = one(docs, "PersistentVolumeClaim", vols["models"]["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]  # binds on any cluster
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port["http-metrics"] == s.server.port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    # from `podguard bench` (deploy/README.md): 290-390 MB RSS, 0.1 % of a core at 110 pods
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}}
    assert spec["terminationGracePeriodSeconds"] > s.runtime.grace_period_s
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001
    for ctr in [*spec["containers"], *spec.get("initContainers", [])]:
        sc = ctr["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001  # the image's USER
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "limits" in ctr["resources"] and "requests" in ctr["resources"]
    tol = spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tol
    assert {"operator": "Exists", "effect": "NoSchedule"} in tol
    svc = one(docs, "Service", "podguard")
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"][0]["targetPort"] == "http-metrics"
    sm = one(docs, "ServiceMonitor", "podguard")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "podguard"  # job="podguard"
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
    assert script != seed["command"][2]
    env = {**os.environ, "PODGUARD_DEFAULT_MODEL": str(ROOT / "data" / "model"),
           "POD_NAME": "podguard-abc"}
    current = (ROOT / "data" / "model" / "current").read_text().strip()
    for _ in range(2):  # the second run (another node, a restart) changes nothing
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True, timeout=60).stdout
        assert out.strip() == f"model root: {current}"
    assert sorted(p.name for p in root.iterdir()) == ["current", current]
    from detector.models.store import CURRENT
    from detector.pipeline import Pipeline
    from detector.settings import DetectionSettings
    assert (root / CURRENT).read_text().strip() == current
    assert Pipeline.load(root, settings=DetectionSettings()).version == current


def test_retraining_cronjob(tmp_path: Path) -> None:
    docs = overlay("alert-only")
    s = settings_of(docs, tmp_path)
    cj = one(docs, "CronJob", "podguard-retrain")
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    c = _container(pod, "train")
    assert c["command"] == ["podguard"] and c["args"][0] == "train"
    from training.job import add_arguments  # the arguments parse as `podguard train` does

    p = argparse.ArgumentParser()
    add_arguments(p)
    ns = p.parse_args(c["args"][1:])
    assert ns.prometheus == s.sources.prometheus.url  # the daemon's Prometheus
    assert str(ns.out) == s.model.root and ns.since == "7d"
    for part in ("requests", "limits"):
        assert c["resources"][part]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert not mounts[s.model.root].get("readOnly")
    vols = {v["name"]: v for v in pod["volumes"]}
    ds = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    ds_vols = {v["name"]: v for v in ds["volumes"]}
    assert vols[mounts[s.model.root]["name"]]["persistentVolumeClaim"] == \
        ds_vols["models"]["persistentVolumeClaim"]  # the volume the daemons read
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod["automountServiceAccountToken"] is False  # it needs no API access
    assert pod["securityContext"]["runAsNonRoot"] is True


# ============================================================================ alerting


def _rule_groups() -> list[Doc]:
    groups: list[Doc] = one(overlay("alert-only"), "PrometheusRule")["spec"]["groups"]
    return groups


def test_plain_rules_file_is_current() -> None:
    assert render.RULES_FILE.read_text() == render.rules_text(), \
        "deploy/prometheus/rules.yml is stale: python -m deploy.render rules --write " \
        "deploy/prometheus/rules.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def test_prometheus_rules_pass_promtool_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": _rule_groups()}))
    r = _promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    names = {rule["alert"] for g in _rule_groups() for rule in g["rules"]}
    assert {"PodguardDaemonDown", "PodguardSourceStale", "PodguardDeadLetterRate",
            "PodguardModelTooOld"} <= names
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [  # the check can fail
        {"alert": "Bad", "expr": "rate(podguard_ready[5m]"}]}]}))
    assert _promtool("check", "rules", str(path)).returncode != 0


# alert -> (input series as (series, values), evaluation time, labels of the alert).
# Each also gets a healthy counterpart (HEALTHY) at the same time, where it must not fire.
POD = 'job="podguard",namespace="podguard",pod="podguard-a",node="n1"'
POD_B = 'job="podguard",namespace="podguard",pod="podguard-b",node="n2"'
FIRING: dict[str, tuple[list[tuple[str, str]], str, dict[str, str]]] = {
    "PodguardDaemonDown": (
        [(f'up{{{POD},instance="10.0.0.1:9731"}}', "0x20")], "10m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1",
         "instance": "10.0.0.1:9731"}),
    "PodguardDaemonsUnavailable": (
        [('kube_daemonset_status_number_unavailable{daemonset="podguard",'
          'namespace="podguard"}', "1x40")], "20m",
        {"daemonset": "podguard", "namespace": "podguard"}),
    "PodguardNotReady": (
        [(f"podguard_ready{{{POD}}}", "0x40")], "20m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1"}),
    "PodguardSourceDown": (
        [(f'podguard_source_up{{{POD},source="prometheus"}}', "0x20")], "10m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1",
         "source": "prometheus"}),
    "PodguardSourceStale": (
        [(f'podguard_source_lag_seconds{{{POD},source="prometheus"}}', "700x40")], "20m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1",
         "source": "prometheus"}),
    "PodguardDeadLetterRate": (
        [(f'podguard_dead_letter_messages_total{{{POD},source="kafka"}}', "0+60x60")], "30m",
        {"namespace": "podguard", "pod": "podguard-a", "source": "kafka"}),
    "PodguardSamplesRejected": (
        [(f'podguard_samples_rejected_total{{{POD},source="kafka",reason="labels"}}',
          "0+120x60")], "30m",
        {"namespace": "podguard", "pod": "podguard-a", "source": "kafka", "reason": "labels"}),
    "PodguardSinkErrors": (
        [(f'podguard_sink_errors_total{{{POD},sink="alertmanager"}}', "0+1x60")], "40m",
        {"namespace": "podguard", "pod": "podguard-a", "node": "n1", "sink": "alertmanager"}),
    "PodguardFallingBehind": (
        [(f"podguard_evaluation_skipped_steps_total{{{POD}}}", "0+1x60")], "40m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1"}),
    "PodguardMemoryNearLimit": (
        [(f"process_resident_memory_bytes{{{POD}}}", "1000000000x40")], "20m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1"}),
    "PodguardPodMetricsCapped": (
        [(f"podguard_pod_metrics_omitted{{{POD}}}", "12x40")], "35m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1"}),
    "PodguardModelReloadFailed": (
        [(f'podguard_model_reloads_total{{{POD},outcome="failed"}}', "0 0 0 1x20")], "10m",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1",
         "outcome": "failed"}),
    # promtool's clock starts at 0: created at -9 days is 9 days before the start. One
    # daemon of two on an old trained model is enough; one alert per namespace.
    "PodguardModelTooOld": (
        [(f"podguard_model_created_timestamp_seconds{{{POD}}}", "-777600x100"),
         (f'podguard_model_info{{{POD},version="20261118T030000Z-abc123"}}', "1x100"),
         (f"podguard_model_created_timestamp_seconds{{{POD_B}}}", "0x100"),
         (f'podguard_model_info{{{POD_B},version="20261127T030000Z-def456"}}', "1x100")],
        "90m", {"namespace": "podguard"}),
    "PodguardModelIsShippedDefault": (
        [(f'podguard_model_info{{{POD},version="default-2"}}', "1x3000")], "49h",
        {"job": "podguard", "namespace": "podguard", "pod": "podguard-a", "node": "n1",
         "version": "default-2"}),
}
HEALTHY: dict[str, list[tuple[str, str]]] = {
    "PodguardDaemonDown": [(f'up{{{POD},instance="10.0.0.1:9731"}}', "1x20")],
    "PodguardDaemonsUnavailable": [('kube_daemonset_status_number_unavailable{'
                                    'daemonset="podguard",namespace="podguard"}', "0x40")],
    "PodguardNotReady": [(f"podguard_ready{{{POD}}}", "1x40")],
    "PodguardSourceDown": [(f'podguard_source_up{{{POD},source="prometheus"}}', "1x20")],
    "PodguardSourceStale": [
        (f'podguard_source_lag_seconds{{{POD},source="prometheus"}}', "30x40"),
        (f'podguard_source_caught_up{{{POD},source="prometheus"}}', "1x40")],
    "PodguardDeadLetterRate": [
        (f'podguard_dead_letter_messages_total{{{POD},source="kafka"}}', "0+1x60")],
    "PodguardSamplesRejected": [
        (f'podguard_samples_rejected_total{{{POD},source="kafka",reason="labels"}}', "0x60")],
    "PodguardSinkErrors": [(f'podguard_sink_errors_total{{{POD},sink="alertmanager"}}',
                            "0x60")],
    "PodguardFallingBehind": [(f"podguard_evaluation_skipped_steps_total{{{POD}}}", "1x60")],
    "PodguardMemoryNearLimit": [(f"process_resident_memory_bytes{{{POD}}}",
                                 "300000000x40")],
    "PodguardPodMetricsCapped": [(f"podguard_pod_metrics_omitted{{{POD}}}", "0x40")],
    "PodguardModelReloadFailed": [(f'podguard_model_reloads_total{{{POD},outcome="failed"}}',
                                   "0x20")],
    # a model 7 days old, and the shipped default however old (PodguardModelIsShippedDefault)
    "PodguardModelTooOld": [
        (f"podguard_model_created_timestamp_seconds{{{POD}}}", "-604800x100"),
        (f'podguard_model_info{{{POD},version="20261120T030000Z-abc123"}}', "1x100"),
        (f"podguard_model_created_timestamp_seconds{{{POD_B}}}", "-8640000x100"),
        (f'podguard_model_info{{{POD_B},version="default-2"}}', "1x100")],
    "PodguardModelIsShippedDefault": [
        (f'podguard_model_info{{{POD},version="20261127T030000Z-abc123"}}', "1x3000")],
}


@pytest.mark.slow
def test_every_meta_alert_fires_on_its_condition_only(tmp_path: Path) -> None:
    """``promtool test rules``: each alert fires with the expected labels on a synthetic
    series and not on a healthy one. Annotations are left out of the copy under test (their
    templates are checked by ``promtool check rules``)."""
    groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"}
                              for r in g["rules"]]} for g in _rule_groups()]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(FIRING) == set(HEALTHY) == set(alerts), "an alert without a test case"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))

    def case(series: list[tuple[str, str]], at: str, name: str,
             expected: list[Doc]) -> Doc:
        return {"interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [{"eval_time": at, "alertname": name,
                                     "exp_alerts": expected}]}

    tests = []
    for name, (series, at, labels) in FIRING.items():
        severity = alerts[name]["labels"]["severity"]
        tests.append(case(series, at, name, [{"exp_labels": {**labels, "severity": severity}}]))
        tests.append(case(HEALTHY[name], at, name, []))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}))
    r = _promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-6000:]
    # a wrong expectation fails (the test can fail)
    tests[0]["alert_rule_test"][0]["exp_alerts"] = []
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests[:1]}))
    assert _promtool("test", "rules", str(tmp_path / "tests.yml")).returncode != 0


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
            for m in re.findall(r"\b(?:podguard|process)_[a-z_]+", rule["expr"])}
    assert "process_resident_memory_bytes" in used  # the standard name, not podguard_process_
    assert len(used) >= 8, used
    assert used <= exported, f"not exported by the daemon: {sorted(used - exported)}"


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    amtool = shutil.which("amtool")
    assert amtool, "amtool (Debian package prometheus-alertmanager) is needed"
    return subprocess.run([amtool, *args], capture_output=True, text=True, timeout=60)


def test_alertmanager_route_example_passes_amtool(tmp_path: Path) -> None:
    r = _amtool("check-config", str(ROUTE_EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load(ROUTE_EXAMPLE.read_text())
    from detector.sinks.alertmanager import ALERT_NAMES

    routed = {
        # critical pages and stays in the incident's group of the team's channel
        ("PodMemoryLeak", "critical"): "ml-platform-pager,ml-platform",
        ("PodGpuMemoryLeak", "critical"): "ml-platform-pager,ml-platform",
        ("PodPreFailureDrift", "warning"): "ml-platform",
        ("PodMemoryLeak", "info"): "ml-platform",
        ("PodguardDaemonDown", "warning"): "ml-platform",
        ("PodguardSourceStale", "critical"): "ml-platform",  # meta-alerts never page
        ("SomethingElse", "critical"): "default",
    }
    assert {n for n, _ in routed} >= set(ALERT_NAMES.values())
    for (alertname, severity), receiver in routed.items():
        r = _amtool("config", "routes", "test", f"--config.file={ROUTE_EXAMPLE}",
                    f"alertname={alertname}", f"severity={severity}", "namespace=ml",
                    "pod=train-0")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == receiver, (alertname, severity, r.stdout)
    cfg["receivers"] = [{"name": "default"}]  # a receiver the route names is missing: fails
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(yaml.safe_dump(cfg))
    assert _amtool("check-config", str(broken)).returncode != 0


# ============================================================================ real cluster


CLUSTER_KINDS = ("Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                 "CustomResourceDefinition", "ValidatingAdmissionPolicy",
                 "ValidatingAdmissionPolicyBinding")


