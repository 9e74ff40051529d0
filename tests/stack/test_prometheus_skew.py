"""The Prometheus source refuses samples stamped beyond its clock skew (a remote-write proxy or
exporter with a broken clock): they are dropped and counted as future_timestamp, and the one
from the year 5100 does not move the window engine's clock. Against the real local
Prometheus."""

from __future__ import annotations

import logging
import time

import pytest

from detector.settings import PrometheusSourceSettings
from detector.sources.base import SampleColumns
from detector.sources.prometheus import PrometheusSource
from detector.windows import WindowEngine
from tests.support.stack_fixtures import PrometheusHandle

LOG = logging.getLogger("podguard.test.prometheus_skew")


@pytest.mark.stack
def test_samples_beyond_the_skew_are_dropped_and_counted(
        local_prometheus: PrometheusHandle) -> None:
    now = time.time()
    source = PrometheusSource(PrometheusSourceSettings(
        url=local_prometheus.url, node_name="node-skew", metrics=["up"], backfill_s=600,
        query_step_s=15, poll_s=15, timeout_s=5, backoff_s=[1], max_future_s=300),
        logger=LOG, clock=lambda: now, sleep=lambda s: None)
    source.start()
    real_fetch = source._fetch

    def fetch_then_skewed(start: float, end: float, out: SampleColumns) -> None:
        real_fetch(start, end, out)  # the real answer (this node has no pods: empty)
        for t, pod in ((end, "ok"), (now + 299, "ok"), (now + 301, "skewed"),
                       (9.87e10, "year-5100")):
            out.append(t, "ml", pod, "main", "node-skew",
                       "container_memory_working_set_bytes", 1e9)

    source._fetch = fetch_then_skewed  # type: ignore[method-assign]
    delivery = source.poll(1.0)
    assert source.status().up, source.status().detail
    assert dict(delivery.rejected) == {"future_timestamp": 2}
    assert len(delivery.samples) == 2 and max(delivery.samples.timestamp) == now + 299
    assert set(delivery.samples.pod) == {"ok"}
    engine = WindowEngine()
    engine.ingest(delivery.samples.columns())
    assert engine.clock <= now + 300
