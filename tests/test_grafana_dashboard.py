"""deploy/grafana/podguard.json: every query parses and returns series from the real Prometheus.

The dashboard (fleet view; one pod's incident: memory vs limit with the fitted trend and the
projected OOM, score vs threshold) is built from the daemon's per-pod gauges
(``podguard_pod_*``), its process metrics, cAdvisor's working set and kube-state-metrics'
limits. Every query (panel targets and the template variables' selectors), with the
variables filled in, passes ``promtool check rules``. Then a real podguard daemon
(:class:`detector.runtime.daemon.Daemon` with the shipped model, its real /metrics server)
scores a leaking and a steady pod from a source of generated samples until the leak is
flagged; the real local Prometheus scrapes the daemon (``job="podguard"``), a cAdvisor-style
exporter and a kube-state-metrics/DCGM-style exporter for the same pod; every query of the
dashboard must return series, and the incident's figures must be the daemon's.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from detector.pipeline import Pipeline
from detector.runtime.build import make_engine
from detector.runtime.daemon import Daemon
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.runtime.server import MetricsServer
from detector.settings import Settings
from tests.support.exporter import CadvisorExporter
from tests.support.leak_source import GIB, LIMIT, LeakSource
from tests.support.stack_fixtures import PrometheusHandle

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "podguard.json"
LOG = logging.getLogger("podguard.test.grafana")


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d.get("panels", []):
        yield p
        yield from panels(p)


def queries(ns: str, pod: str) -> dict[str, str]:
    """Every query of the dashboard, variables filled in: "panel/refId" -> PromQL."""
    d = json.loads(DASHBOARD.read_text())
    out: dict[str, str] = {}

    def fill(expr: str) -> str:
        return (expr.replace("$namespace", ns).replace("$pod", pod)
                .replace("$__rate_interval", "1m"))

    for p in panels(d):
        for t in p.get("targets", []):
            out[f"{p['title']}/{t['refId']}"] = fill(t["expr"])
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])
            assert m, f"variable {var['name']}: not label_values(selector, label)"
            out[f"${var['name']}"] = fill(m.group(1))
    return out


def test_dashboard_is_grafana_json_with_both_views() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "podguard" and d["schemaVersion"] >= 36
    titles = [p["title"] for p in panels(d)]
    assert "Memory vs limit, fitted trend" in titles and "Score vs threshold" in titles
    assert "Projected OOM" in titles and "Flagged and near-threshold pods" in titles
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in d["templating"]["list"]}
    assert names == {"datasource", "namespace", "pod"}
    for p in panels(d):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]


def _promtool_check(exprs: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: make prepare"
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_every_query_parses(tmp_path: Path) -> None:
    qs = queries("ml", "trainer-0")
    assert len(qs) >= 25
    assert not any("$" in q for q in qs.values()), "a variable left unfilled"
    r = _promtool_check(qs, tmp_path / "rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    broken = {**qs, "bad": "max by (pod (podguard_pod_score)"}  # the check can fail
    assert _promtool_check(broken, tmp_path / "rules.yml").returncode != 0


# ============================================================================ real Prometheus


class _Limits(Collector):
    """kube-state-metrics' memory limit series and the DCGM exporter's framebuffer series of
    the given pods."""

    def __init__(self, ns: str, pods: list[str]) -> None:
        self.ns, self.pods = ns, pods

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("kube_pod_container_resource_limits", "Container limits.",
                              labels=["namespace", "pod", "container", "resource", "unit"])
        used = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer used (MiB).",
                                 labels=["namespace", "pod", "container", "gpu"])
        free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer free (MiB).",
                                 labels=["namespace", "pod", "container", "gpu"])
        for pod in self.pods:
            g.add_metric([self.ns, pod, "main", "memory", "byte"], LIMIT)
            used.add_metric([self.ns, pod, "main", "0"], 30_000.0)
            free.add_metric([self.ns, pod, "main", "0"], 51_000.0)
        yield g
        yield used
        yield free


@pytest.mark.stack
@pytest.mark.timeout(180)
def test_every_query_returns_series_when_prometheus_scrapes_a_podguard_daemon(
        local_prometheus: PrometheusHandle) -> None:
    ns = f"pg-dash-{uuid.uuid4().hex[:6]}"
    settings = Settings.model_validate({"windows": {"horizon_s": 4 * 3600, "step_s": 60},
                                        "runtime": {"lateness_s": 0.0, "console": False}})
    registry = CollectorRegistry()
    view = StateView()
    metrics = DaemonMetrics(registry, view, pod_min_ratio=settings.server.pod_metrics_min_ratio,
                            pod_max=settings.server.pod_metrics_max_pods)
    daemon = Daemon(settings=settings, source=LeakSource(ns, 1_800_000_000.0),
                    pipeline=Pipeline.load(None), engine=make_engine(settings), sinks=[],
                    metrics=metrics, logger=LOG)
    for _ in range(200):
        daemon.turn()
        leak = view.verdicts.get((ns, "leaky"))
        if leak is not None and leak.is_anomaly:
            break
    assert leak is not None and leak.is_anomaly and leak.kind == "memory_leak", leak
    assert leak.time_to_oom_s is not None and leak.leak_rate_bytes_per_s is not None
    server = MetricsServer(host="127.0.0.1", port=0, registry=registry,
                           healthy=daemon.healthy, ready=daemon.ready).start()
    cadvisor = CadvisorExporter()
    ksm_registry = CollectorRegistry()
    ksm_registry.register(_Limits(ns, ["leaky", "steady"]))
    ksm_server, ksm_thread = start_http_server(0, addr="127.0.0.1", registry=ksm_registry)
    jobs = {"podguard": f"127.0.0.1:{server.port}", f"cadvisor_{ns[-6:]}": cadvisor.target,
            f"ksm_{ns[-6:]}": f"127.0.0.1:{ksm_server.server_port}"}
    try:
        for pod in ("leaky", "steady"):
            cadvisor.set(ns, pod, "main", 2.3 * GIB if pod == "leaky" else GIB)
        for job, target in jobs.items():
            local_prometheus.set_targets(job, [target],
                                         labels={"namespace": "podguard", "pod": "pg-test"}
                                         if job == "podguard" else None)
        qs = queries(ns, "leaky")
        got: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = {k: local_prometheus.query(q) for k, q in qs.items()}
            if all(got.values()):
                break
            time.sleep(1)
        empty = sorted(k for k, v in got.items() if not v)
        assert not empty, f"no series for: {empty}"

        def value(key: str) -> float:
            return float(got[key][0]["value"][1])

        # the incident's figures are the daemon's, and the steady pod is not exported
        assert value("Projected OOM/A") - time.time() == pytest.approx(leak.time_to_oom_s,
                                                                       abs=120)
        assert value("Leak rate/A") == pytest.approx(leak.leak_rate_bytes_per_s, rel=1e-6)
        assert value("Score vs threshold/A") == pytest.approx(leak.score, rel=1e-6)
        assert value("Score vs threshold/B") == pytest.approx(leak.threshold, rel=1e-6)
        trend = value("Memory vs limit, fitted trend/C")
        assert trend == pytest.approx(LIMIT - leak.leak_rate_bytes_per_s * leak.time_to_oom_s)
        assert GIB < trend < LIMIT
        assert value("Memory vs limit, fitted trend/B") == LIMIT
        assert value("Memory vs limit, fitted trend/D") > trend
        assert value("GPU memory vs card (GPU leaks)/B") == 81_000.0
        assert {r["metric"]["pod"] for r in local_prometheus.query(
            f'podguard_pod_score{{namespace="{ns}"}}')} == {"leaky"}
        assert [r["metric"]["pod"] for r in got["$pod"] if r["metric"]["namespace"] == ns] \
            == ["leaky"]
    finally:
        for job in jobs:
            local_prometheus.remove_targets(job)
        server.close()
        daemon.shutdown()
        cadvisor.close()
        ksm_server.shutdown()
        ksm_server.server_close()
        ksm_thread.join(timeout=5)
