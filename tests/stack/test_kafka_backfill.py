"""The Kafka source backfills its windows from Prometheus at start (``backfill_prometheus``),
against the real local Prometheus (history loaded with promtool) and the real local Kafka.

- With Prometheus up: the windows come from Prometheus before any record is read, so a leak
  whose history Kafka no longer holds (only its last three minutes) is judged and flagged at
  once; Kafka samples that Prometheus already gave are dropped by timestamp (counted), the
  newer ones folded.
- With Prometheus down: a logged warning, not a crash; the start falls back to re-reading the
  window from Kafka (the rewind) and judges from that.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Sequence

import pytest

from deploy.local.prometheus import Series, to_openmetrics
from detector.settings import Settings
from detector.sinks.base import SynchronousSink
from detector.sources.backfill import PrometheusBackfill
from detector.sources.kafka import KafkaSource
from detector.sources.kafka_codec import encode_batch
from detector.verdicts import Verdict
from tests.stack.test_sources_kafka import Runner, _committed, _producer, _topics, _wait
from tests.support.daemons import in_process_daemon
from tests.support.stack_fixtures import KafkaHandle, PrometheusHandle

pytestmark = [pytest.mark.stack]
LOG = logging.getLogger("podguard.test.kafka_backfill")
GIB = 2.0**30
LIMIT = 4 * GIB
METRICS = ("container_memory_working_set_bytes", "container_memory_rss",
           "container_cpu_usage_seconds_total", "container_spec_memory_limit_bytes")
RATES = {"leaky": 1.4, "steady": 0.0}  # GiB per hour, from 1 GiB an hour ago


class Recorder(SynchronousSink):
    name = "recorder"

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[Verdict]]] = []

    def send(self, verdicts: Sequence[Verdict]) -> None:
        self.batches.append((time.monotonic(), list(verdicts)))

    def first(self, pod: str, kind: str) -> float | None:
        """When a judged verdict of ``pod`` was first ``kind``."""
        for t, vs in self.batches:
            if any(v.pod == pod and v.kind == kind and not v.stale for v in vs):
                return t
        return None


def _values(pod: str, ts: float, t0: float) -> list[float]:
    ws = (1.0 + RATES[pod] * (ts - t0) / 3600) * GIB
    return [ws, 0.9 * ws, 0.5 * (ts - t0), LIMIT]


def _labels(pod: str, job: str) -> dict[str, str]:
    return {"namespace": "ml", "pod": pod, "container": "main", "node": "node-a", "job": job}


def _send(producer: object, topic: str, pod: str, job: str, ts: float, t0: float) -> None:
    labels = _labels(pod, job)
    producer.send(topic, key=f"ml/{pod}".encode(),  # type: ignore[attr-defined]
                  value=encode_batch([(m, labels, [(ts, v)])
                                      for m, v in zip(METRICS, _values(pod, ts, t0),
                                                      strict=True)]))


def _settings(kafka: KafkaHandle, topic: str, dead: str, group: str, prometheus_url: str,
              job: str) -> Settings:
    return Settings.model_validate({
        "windows": {"horizon_s": 3600, "step_s": 5, "pod_ttl_s": 7200},
        "sources": {"kind": "kafka",
                    "kafka": {"bootstrap_servers": [kafka.bootstrap], "topic": topic,
                              "group_id": group, "dead_letter_topic": dead,
                              "session_timeout_s": 6, "request_timeout_s": 10,
                              "backfill_prometheus": True},
                    "prometheus": {"url": prometheus_url, "node_name": "node-a",
                                   "extra_matchers": f'job="{job}"', "metrics": list(METRICS),
                                   "query_step_s": 15, "timeout_s": 5, "backoff_s": [0.5]}},
        "runtime": {"lateness_s": 0.2, "console": False, "verdicts_path": ""},
        "server": {"enabled": False}})


def test_kafka_start_backfills_from_prometheus_and_judges_at_once(
        local_kafka: KafkaHandle, local_prometheus: PrometheusHandle) -> None:
    job = f"kafka_backfill_{uuid.uuid4().hex[:8]}"
    now = time.time()
    t0 = now - 3600
    stamps = [t0 + 15 * k for k in range(((3600 - 20) // 15) + 1)]  # up to ~now - 20 s
    local_prometheus.backfill(to_openmetrics(
        [Series(m, _labels(pod, job), [(t, _values(pod, t, t0)[i]) for t in stamps])
         for pod in RATES for i, m in enumerate(METRICS)]))
    topic, dead = _topics(local_kafka, 1)
    producer = _producer(local_kafka)
    old = [now - 185 + 15 * k for k in range(12)]  # Kafka keeps the last 3 min only
    for ts in old:
        for pod in RATES:
            _send(producer, topic, pod, job, ts, t0)
    producer.flush(timeout=60)
    settings = _settings(local_kafka, topic, dead, f"pg-{uuid.uuid4().hex[:8]}",
                         local_prometheus.url, job)
    sink = Recorder()
    daemon = in_process_daemon(settings, [sink], LOG)
    source = daemon.source
    assert isinstance(source, KafkaSource) and isinstance(source.backfill, PrometheusBackfill)
    stop = threading.Event()

    def live() -> None:  # the stream goes on, newer than anything Prometheus gave
        while not stop.wait(1.0):
            for pod in RATES:
                _send(producer, topic, pod, job, time.time(), t0)

    feeder = threading.Thread(target=live, daemon=True)
    started = time.monotonic()
    try:
        with Runner(daemon):
            feeder.start()
            _wait(lambda: sink.first("leaky", "memory_leak") is not None,
                  "the leak to be flagged from the backfilled windows", 60)
            flagged = sink.first("leaky", "memory_leak")
            assert flagged is not None
            status = source.status()
            assert status.caught_up and status.up
            assert source.backfill.succeeded
            backfilled = source.backfill.samples
            # Prometheus answered on its grid for the whole hour, every series
            assert backfilled >= 0.95 * len(stamps) * len(METRICS) * len(RATES)
            # every Kafka sample older than the backfill's end was dropped, counted once
            assert source.backfill.overlap == len(old) * len(METRICS) * len(RATES)
            assert status.extra["backfill_overlap_samples"] == source.backfill.overlap
            assert sink.first("steady", "memory_leak") is None
            time.sleep(1.5)
    finally:
        stop.set()
        feeder.join(timeout=10)
        producer.close(timeout=10)
    # what was folded: the backfill plus only the live Kafka samples (no overlap twice)
    live_samples = daemon.summary.samples - backfilled
    assert live_samples > 0 and live_samples % (len(METRICS) * len(RATES)) == 0
    assert daemon.summary.duplicates == 0
    print(f"flagged from the backfill {flagged - started:.1f} s after the start")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_a_prometheus_that_is_down_falls_back_to_the_kafka_rewind(
        local_kafka: KafkaHandle, caplog: pytest.LogCaptureFixture) -> None:
    job = f"kafka_nobackfill_{uuid.uuid4().hex[:8]}"
    now = time.time()
    t0 = now - 3600
    topic, dead = _topics(local_kafka, 1)
    group = f"pg-{uuid.uuid4().hex[:8]}"
    producer = _producer(local_kafka)
    history = [t0 + 15 * k for k in range(240)]
    for ts in history:
        for pod in RATES:
            _send(producer, topic, pod, job, ts, t0)
    producer.flush(timeout=60)
    producer.close(timeout=10)
    plain = _settings(local_kafka, topic, dead, group, "http://127.0.0.1:9", job)
    plain = plain.model_copy(update={"sources": plain.sources.model_copy(update={
        "kafka": plain.sources.kafka.model_copy(update={"backfill_prometheus": False})})})
    with Runner(in_process_daemon(plain, [Recorder()], LOG)):  # a first daemon commits the hour
        _wait(lambda: sum(_committed(local_kafka, group).values()) == len(history) * 2,
              "the first daemon to commit the history", 90)
    settings = _settings(local_kafka, topic, dead, group,
                         f"http://127.0.0.1:{_closed_port()}", job)
    sink = Recorder()
    daemon = in_process_daemon(settings, [sink], LOG)
    with caplog.at_level(logging.WARNING, logger=LOG.name), Runner(daemon):
        _wait(lambda: sink.first("leaky", "memory_leak") is not None,
              "the leak to be flagged from the re-read Kafka window", 60)
        source = daemon.source
        assert isinstance(source, KafkaSource) and source.backfill is not None
        assert source.backfill.state == "failed" and source.backfill.samples == 0
        assert source.status().up and source.status().caught_up
    warned = [r for r in caplog.records if "prometheus backfill failed" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    # the window came back from Kafka (the rewind), not only what followed the commit
    assert daemon.summary.samples >= 0.95 * len(history) * len(METRICS) * len(RATES)
