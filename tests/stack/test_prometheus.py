"""The local Prometheus, for real: scraping an exporter, range queries, backfill, restart."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from deploy.local._proc import StackError
from deploy.local.prometheus import Series, to_openmetrics
from tests.support.exporter import CadvisorExporter
from tests.support.stack_fixtures import PrometheusHandle, prometheus_client

pytestmark = [pytest.mark.stack]


def _wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_scrapes_cadvisor_style_exporter_and_range_query_returns_series(
        local_prometheus: PrometheusHandle) -> None:
    job = f"cadvisor_{uuid.uuid4().hex[:8]}"
    with CadvisorExporter() as exporter:
        exporter.set("ml", "trainer-0", "main", 1_000_000_000)
        exporter.set("ml", "trainer-1", "main", 2_000_000_000)
        local_prometheus.set_targets(job, [exporter.target], {"node": "node-a"})
        try:
            local_prometheus.wait_for_targets(job, timeout=60)
            start = datetime.now(UTC) - timedelta(seconds=30)
            exporter.set("ml", "trainer-0", "main", 1_250_000_000)  # the leak grows
            selector = f'container_memory_working_set_bytes{{job="{job}",pod="trainer-0"}}'
            _wait_for(lambda: any(r["value"][1] == "1250000000"
                                  for r in local_prometheus.query(selector)),
                      "the new value of trainer-0 to be scraped")
            end = datetime.now(UTC) + timedelta(seconds=2)  # a step after the new sample

            client = prometheus_client(local_prometheus)
            data = client.query_range(
                f'container_memory_working_set_bytes{{job="{job}"}}',
                start.timestamp(), end.timestamp(), 1.0)
            by_pod = {r["metric"]["pod"]: r for r in data}
            assert set(by_pod) == {"trainer-0", "trainer-1"}
            for r in data:
                m = r["metric"]
                assert (m["namespace"], m["container"], m["node"]) == ("ml", "main", "node-a")
                assert m["__name__"] == "container_memory_working_set_bytes"
            assert {v for _, v in by_pod["trainer-1"]["values"]} == {"2000000000"}
            growing = [float(v) for _, v in by_pod["trainer-0"]["values"]]
            assert growing[0] == 1e9 and growing[-1] == 1.25e9
            assert growing == sorted(growing)

            ranged = client.query_range(
                f'container_memory_working_set_bytes{{job="{job}",pod="trainer-1"}}',
                start.timestamp(), end.timestamp(), 15.0)
            assert len(ranged) == 1
            assert ranged[0]["metric"]["pod"] == "trainer-1"
            assert all(v == "2000000000" for _, v in ranged[0]["values"])
        finally:
            local_prometheus.remove_targets(job)


def test_backfilled_block_is_queryable_with_exact_values(
        local_prometheus: PrometheusHandle) -> None:
    name = f"podguard_backfill_{uuid.uuid4().hex[:8]}_bytes"
    base = (int(time.time()) // 60) * 60 - 3 * 3600  # three hours ago, on a minute
    samples = [(float(base + 15 * i), 1_000_000.0 + 4096.0 * i) for i in range(41)]
    tricky_pod = 'old-"0"\\x'  # quotes and a backslash must survive the escaping
    text = to_openmetrics([
        Series(name, {"namespace": "ml", "pod": tricky_pod, "container": "main"}, samples),
        Series(name, {"namespace": "ml", "pod": "old-1", "container": "main"},
               [(ts, 7.0) for ts, _ in samples]),
    ])
    assert text.endswith("# EOF\n")

    blocks = local_prometheus.backfill(text)

    assert blocks, "promtool made no block"
    data = prometheus_client(local_prometheus).query_range(
        f'{name}{{pod!="old-1"}}', base, base + 600, 15.0)
    assert len(data) == 1
    assert data[0]["metric"]["pod"] == tricky_pod
    got = [(float(ts), float(v)) for ts, v in data[0]["values"]]
    assert got == samples
    at = local_prometheus.query(f'{name}{{pod="old-1"}} @ {base + 300}')
    assert [float(r["value"][1]) for r in at] == [7.0]


def test_backfill_rejects_bad_input_with_the_reason(local_prometheus: PrometheusHandle) -> None:
    with pytest.raises(StackError, match="# EOF"):
        local_prometheus.backfill("podguard_x 1 1700000000\n")
    with pytest.raises(StackError, match="promtool"):
        local_prometheus.backfill("this is { not openmetrics\n# EOF\n")


def test_restart_keeps_port_and_data(local_prometheus: PrometheusHandle) -> None:
    url_before = local_prometheus.url
    scrapes = 'up{job="prometheus"}[30s]'
    _wait_for(lambda: sum(len(r["values"]) for r in local_prometheus.query(scrapes)) >= 3,
              "three scrapes of Prometheus itself")
    window = f'up{{job="prometheus"}}[30s] @ {time.time():.3f}'
    before = local_prometheus.query(window)
    assert len(before) == 1 and len(before[0]["values"]) >= 3, before

    local_prometheus.restart()

    assert local_prometheus.url == url_before
    assert local_prometheus.query(window) == before  # the same samples, read from disk


def test_to_openmetrics_refuses_what_promtool_would_misread() -> None:
    with pytest.raises(ValueError, match="metric name"):
        to_openmetrics([Series("bad-name", {}, [(1.0, 1.0)])])
    with pytest.raises(ValueError, match="_total"):
        to_openmetrics([Series("requests", {}, [(1.0, 1.0)], type="counter")])
    text = to_openmetrics([Series("x_total", {"a": "b"}, [(2.0, math.inf), (1.0, 0.5)],
                                  type="counter")])
    assert text.splitlines() == ["# TYPE x counter", 'x_total{a="b"} 0.5 1.000',
                                 'x_total{a="b"} +Inf 2.000', "# EOF"]
