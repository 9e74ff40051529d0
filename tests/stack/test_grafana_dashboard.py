"""deploy/grafana/podguard.json against the real Prometheus: every query returns series.

A real podguard daemon (:class:`detector.runtime.daemon.Daemon` with the shipped model, its
real /metrics server) scores a leaking and a steady pod from a source of generated samples
until the leak is flagged; the real local Prometheus scrapes the daemon (``job="podguard"``),
a cAdvisor-style exporter and a kube-state-metrics/DCGM-style exporter for the same pod; every
query of the dashboard must return series, and the incident's figures must be the daemon's.
The static checks (every query parses) are in tests/test_grafana_dashboard.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
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
from tests.test_grafana_dashboard import queries

LOG = logging.getLogger("podguard.test.grafana")


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

