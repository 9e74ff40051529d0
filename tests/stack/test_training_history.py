"""Retraining history: a chunked range pull from the real Prometheus returns the backfilled
history completely (every sample, every value, no duplicates across chunk borders)."""

from __future__ import annotations

import time
import uuid

import pytest

from deploy.local.prometheus import Series, to_openmetrics
from detector.errors import ServiceUnavailableError
from detector.traces import CPU_SECONDS, WORKING_SET
from tests.support.stack_fixtures import PrometheusHandle
from training.history import incident_pods, pull_history

pytestmark = [pytest.mark.stack]


def test_range_pull_returns_the_backfilled_history_completely(
        local_prometheus: PrometheusHandle) -> None:
    ns = f"hist-{uuid.uuid4().hex[:8]}"
    base = (int(time.time()) // 60) * 60 - 6 * 3600
    n = 4 * 240 + 1  # four hours at 15 s
    ts = [float(base + 15 * i) for i in range(n)]
    series = []
    for p in range(2):
        labels = {"namespace": ns, "pod": f"trainer-{p}", "container": "main", "node": "n1"}
        series.append(Series(WORKING_SET, labels,
                             [(t, 1e9 + p * 1e8 + 4096.0 * i) for i, t in enumerate(ts)]))
        series.append(Series(CPU_SECONDS, labels, [(t, 0.5 * i) for i, t in enumerate(ts)]))

    # incidents: an alert that fired for trainer-2, an OOM kill of trainer-3
    alert = {"alertname": "PodMemoryLeak", "alertstate": "firing", "namespace": ns,
             "pod": "trainer-2", "severity": "warning"}
    oom = {"namespace": ns, "pod": "trainer-3", "container": "main", "reason": "OOMKilled"}
    series.append(Series("ALERTS", alert, [(t, 1.0) for t in ts[100:140]]))
    series.append(Series("kube_pod_container_status_last_terminated_reason", oom,
                         [(t, 1.0) for t in ts[500:]]))
    assert local_prometheus.backfill(to_openmetrics(series))

    df = pull_history(local_prometheus.url, start=ts[0], end=ts[-1], step=15.0,
                      metrics=(WORKING_SET, CPU_SECONDS), matcher=f'namespace="{ns}"',
                      max_points=100)  # forces ~10 chunks per series

    assert incident_pods(df) == {(ns, "trainer-2"), (ns, "trainer-3")}
    df = df[df["metric"].isin([WORKING_SET, CPU_SECONDS])]
    assert len(df) == 4 * n
    for p in range(2):
        for metric, value in ((WORKING_SET, lambda i, p=p: 1e9 + p * 1e8 + 4096.0 * i),
                              (CPU_SECONDS, lambda i, p=p: 0.5 * i)):
            got = df[(df["pod"] == f"trainer-{p}") & (df["metric"] == metric)]
            got = got.sort_values("timestamp")
            assert got["timestamp"].tolist() == ts
            assert got["value"].tolist() == [value(i) for i in range(n)]
            assert set(got["namespace"].astype(str)) == {ns}
            assert set(got["node"].astype(str)) == {"n1"}


def test_unreachable_prometheus_is_a_temporary_error_after_finite_retries() -> None:
    slept: list[float] = []
    with pytest.raises(ServiceUnavailableError, match="gave up after"):
        pull_history("http://127.0.0.1:9", start=0.0, end=600.0, metrics=(WORKING_SET,),
                     sleep=slept.append)
    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0]
