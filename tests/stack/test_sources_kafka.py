"""The Kafka source and the daemon against the real local Kafka.

- 100,000 samples (plus 100 malformed messages) while the broker restarts mid-stream: every
  sample is folded or dead-lettered, none lost, and every offset ends up committed;
- a daemon process killed with SIGKILL and started again resumes at the last commit;
- two daemons of one group split the partitions (and so the pods).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from prometheus_client import CollectorRegistry

from detector.pipeline import Pipeline
from detector.runtime.build import make_engine
from detector.runtime.daemon import Daemon
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.settings import Settings
from detector.sources.kafka import KafkaSource
from detector.sources.kafka_codec import encode_adapter, encode_batch
from tests.support.daemons import start_podguard_run
from tests.support.stack_fixtures import KafkaHandle

pytestmark = [pytest.mark.stack]

LOG = logging.getLogger("podguard.test.kafka")
METRICS = ("container_memory_working_set_bytes", "container_memory_rss",
           "container_cpu_usage_seconds_total", "container_spec_memory_limit_bytes",
           "kube_pod_container_status_restarts_total")


@pytest.fixture(scope="module")
def shipped() -> Pipeline:
    return Pipeline.load(None)


def _fresh(p: Pipeline) -> Pipeline:
    return Pipeline(trend=p.trend, drift=p.drift, settings=p.settings, version=p.version)


def _topics(kafka: KafkaHandle, partitions: int, dlq: bool = True) -> tuple[str, str]:
    topic = f"pg-samples-{uuid.uuid4().hex[:8]}"
    dead = f"{topic}-dlq"
    admin = kafka.admin()
    try:
        new = [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        if dlq:
            new.append(NewTopic(dead, num_partitions=1, replication_factor=1))
        admin.create_topics(new)
    finally:
        admin.close()
    kafka.wait_for_partitions(topic, partitions)
    return topic, dead


def _settings(kafka: KafkaHandle, topic: str, dead: str, group: str, **kafka_extra: Any
              ) -> Settings:
    return Settings.model_validate({
        "windows": {"horizon_s": 3600, "step_s": 5, "pod_ttl_s": 7200},
        "sources": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [kafka.bootstrap], "topic": topic, "group_id": group,
            "dead_letter_topic": dead, "max_message_bytes": 256 * 1024,
            "session_timeout_s": 6, "request_timeout_s": 10, **kafka_extra}},
        "runtime": {"lateness_s": 0.2, "console": False, "verdicts_path": ""},
        "server": {"enabled": False},
    })


def _daemon(settings: Settings, pipeline: Pipeline) -> tuple[Daemon, KafkaSource,
                                                             CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry, StateView(), process=False)
    source = KafkaSource(settings.sources.kafka, logger=LOG)
    daemon = Daemon(settings=settings, source=source, pipeline=_fresh(pipeline),
                    engine=make_engine(settings), sinks=[], metrics=metrics, logger=LOG,
                    poll_timeout_s=0.2)
    return daemon, source, registry


class Runner:
    """Turns a daemon's loop in a thread until stopped; re-raises what the loop raised."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.daemon.stopping:
                self.daemon.turn()
        except BaseException as e:
            self.error = e

    def __enter__(self) -> Runner:
        self.daemon.source.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop("test over")
        self.thread.join(timeout=30)
        self.daemon.shutdown()
        assert self.error is None, f"the daemon loop raised {self.error!r}"


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _committed(kafka: KafkaHandle, group: str) -> dict[int, int]:
    admin = kafka.admin()
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except Exception:
        return {}
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def _end_offsets(kafka: KafkaHandle, topic: str, partitions: int) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap, client_id="podguard-tests")
    try:
        ends = c.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        c.close()
    return {tp.partition: off for tp, off in ends.items()}


def _producer(kafka: KafkaHandle) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=20,
                         batch_size=256 * 1024, retries=1_000_000, retry_backoff_ms=200,
                         delivery_timeout_ms=240_000, request_timeout_ms=10_000,
                         max_in_flight_requests_per_connection=1,
                         max_request_size=1_048_576, client_id="podguard-tests")


def _pod_messages(pods: int, steps: int, t0: float, *, prefix: str = "pod"
                  ) -> Iterator[tuple[bytes, bytes]]:
    """(key, batch message) per pod and timestamp, 5 series of one sample each."""
    for k in range(steps):
        ts = t0 + 15.0 * k
        for p in range(pods):
            labels = {"namespace": "ml", "pod": f"{prefix}-{p}", "container": "main",
                      "node": "node-a"}
            vals = [1e9 + 1e5 * p + 1e3 * k, 9e8 + 1e3 * k, 10.0 * k, 4e9, 0.0]
            yield (f"ml/{prefix}-{p}".encode(),
                   encode_batch([(m, labels, [(ts, v)]) for m, v in zip(METRICS, vals)]))


def _malformed(t0: float) -> tuple[list[bytes], Counter[str]]:
    good = {"namespace": "ml", "pod": "bad-0", "container": "main"}
    msgs: list[bytes] = []
    want: Counter[str] = Counter()
    for i in range(20):
        msgs.append(b"\x00not json at all %d" % i)
        want["not_json"] += 1
        msgs.append(json.dumps({"timestamp": "2026-01-01T00:00:00Z", "value": "NaN",
                                "name": METRICS[0], "labels": good}).encode())
        want["non_finite_value"] += 1
        msgs.append(encode_batch([(METRICS[0], {"namespace": "ml"}, [(t0 + i, 1.0)])]))
        want["missing_label"] += 1
        msgs.append(encode_batch([(METRICS[2], good, [(t0 + i, -3.0)])]))
        want["negative_counter"] += 1
    for i in range(10):
        msgs.append(encode_adapter(METRICS[0], {**good, "x": "y" * (300 * 1024 + i)}, t0, 1.0))
        want["too_large"] += 1
        msgs.append(encode_adapter(METRICS[0], {**good, **{f"l{j}": "v" for j in range(3000)}},
                                   t0, 1.0))
        want["too_many_labels"] += 1
    return msgs, want


def test_100k_samples_through_a_broker_restart_every_sample_accounted_for(
        local_kafka: KafkaHandle, shipped: Pipeline) -> None:
    partitions = 3
    topic, dead = _topics(local_kafka, partitions)
    group = f"pg-{uuid.uuid4().hex[:8]}"
    settings = _settings(local_kafka, topic, dead, group)
    pods, steps = 100, 200  # x 5 series = 100,000 samples
    t0 = time.time() - 15.0 * steps
    messages = list(_pod_messages(pods, steps, t0))
    bad, want_rejected = _malformed(t0)
    total_samples = pods * steps * len(METRICS)
    daemon, source, registry = _daemon(settings, shipped)
    producer = _producer(local_kafka)
    with Runner(daemon):
        half = len(messages) // 2
        for i, (key, value) in enumerate(messages[:half]):
            producer.send(topic, key=key, value=value)
            if i % 400 == 0:
                producer.send(topic, key=b"bad", value=bad[i // 400 % len(bad)])
        producer.flush(timeout=120)
        sent_bad = len(range(0, half, 400))
        _wait(lambda: _value(registry, "podguard_samples_ingested_total", source="kafka") > 0,
              "the daemon to fold the first samples", 60)
        local_kafka.restart()  # mid-stream: the daemon keeps running through it
        for key, value in messages[half:]:
            producer.send(topic, key=key, value=value)
        for b in bad[sent_bad:]:
            producer.send(topic, key=b"bad", value=b)
        producer.flush(timeout=180)
        producer.close(timeout=30)
        ends = _end_offsets(local_kafka, topic, partitions)
        assert sum(ends.values()) == len(messages) + len(bad)

        def folded() -> float:
            return (_value(registry, "podguard_samples_ingested_total", source="kafka")
                    - _value(registry, "podguard_samples_duplicate_total", source="kafka"))

        _wait(lambda: folded() >= total_samples and _committed(local_kafka, group) == ends,
              "every sample folded and every offset committed", 180)

    assert folded() == total_samples  # each distinct sample once; replays absorbed
    rejected = {r: _value(registry, "podguard_samples_rejected_total", source="kafka", reason=r)
                for r in want_rejected}
    assert rejected == dict(want_rejected)
    # the dead-letter topic holds each malformed message (deduplicated by its origin)
    dl = KafkaConsumer(dead, bootstrap_servers=local_kafka.bootstrap,
                       auto_offset_reset="earliest", consumer_timeout_ms=5000,
                       client_id="podguard-tests")
    try:
        records = [json.loads(r.value) for r in dl]
    finally:
        dl.close()
    origins = {(r["source"]["partition"], r["source"]["offset"]): r for r in records}
    assert len(origins) == len(bad)
    assert Counter(r["reason"] for r in origins.values()) == want_rejected
    assert all(r["source"]["topic"] == topic for r in origins.values())
    assert _value(registry, "podguard_dead_letter_messages_total", source="kafka") >= len(bad)
    assert source.committed_total > 0


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_the_source_knows_the_topics_partitions_before_it_joins_its_group(
        local_kafka: KafkaHandle) -> None:
    """``KafkaSource.start`` loads the topic's partitions into the consumer's metadata before
    it subscribes: a join that raced the first metadata answer was assigned nothing (CI on a
    clean clone: "No partition metadata for topic", two daemons that read nothing for 60 s)."""
    topic, dead = _topics(local_kafka, 3)
    settings = _settings(local_kafka, topic, dead, f"pg-{uuid.uuid4().hex[:8]}")
    source = KafkaSource(settings.sources.kafka, logger=LOG)
    source.start()
    try:
        assert source._consumer is not None
        assert source._consumer._client.cluster.partitions_for_topic(topic) == {0, 1, 2}
    finally:
        source.close()


def test_partitions_added_while_the_daemon_reads_are_read_within_the_metadata_age(
        local_kafka: KafkaHandle, shipped: Pipeline) -> None:
    """A topic grown from 1 to 3 partitions while the daemon reads it: the new partitions are
    assigned at the consumer's next metadata refresh (``sources.kafka.metadata_max_age_s``, 5 s
    here; with kafka-python's own 300 s they would sit unread for up to 5 min) and their
    samples are folded. The same refresh rescues a daemon whose first join saw no partitions
    of a topic just created."""
    topic, dead = _topics(local_kafka, 1)
    group = f"pg-{uuid.uuid4().hex[:8]}"
    settings = _settings(local_kafka, topic, dead, group, metadata_max_age_s=5)
    daemon, _source, registry = _daemon(settings, shipped)
    t0 = time.time() - 15.0 * 4
    first = list(_pod_messages(2, 4, t0, prefix="first"))
    late = list(_pod_messages(2, 4, t0, prefix="late"))
    per_message = len(METRICS)
    ingested = lambda: _value(registry, "podguard_samples_ingested_total",  # noqa: E731
                              source="kafka")
    with Runner(daemon):
        producer = _producer(local_kafka)
        for key, value in first:
            producer.send(topic, key=key, value=value, partition=0)
        producer.flush(timeout=60)
        producer.close()
        _wait(lambda: ingested() >= per_message * len(first), "the first partition's samples",
              60)
        admin = local_kafka.admin()
        try:
            admin.create_partitions({topic: 3})
        finally:
            admin.close()
        local_kafka.wait_for_partitions(topic, 3)
        producer = _producer(local_kafka)  # a new client: the new partitions in its metadata
        for key, value in late:
            producer.send(topic, key=key, value=value, partition=2)
        producer.flush(timeout=60)
        producer.close()
        _wait(lambda: ingested() >= per_message * (len(first) + len(late)),
              "the samples of a partition added while running", 45)
    assert ingested() == per_message * (len(first) + len(late))


def test_sigkilled_daemon_restarts_at_the_last_commit(local_kafka: KafkaHandle,
                                                      tmp_path: Path) -> None:
    topic, dead = _topics(local_kafka, 2)
    group = f"pg-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "podguard.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML; a long step: commits are 20 s apart
        "windows": {"horizon_s": 3600, "step_s": 20, "pod_ttl_s": 7200},
        "sources": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [local_kafka.bootstrap], "topic": topic, "group_id": group,
            "dead_letter_topic": dead, "session_timeout_s": 6,
            "rewind_s": 0}},  # resume exactly at the commit (the default re-reads the window)
        "runtime": {"lateness_s": 0.2, "console": False, "verdicts_path": "",
                    "log_format": "json"},
        "server": {"port": 0}}))
    t0 = time.time() - 15.0 * 30
    first = list(_pod_messages(20, 30, t0))  # 600 messages
    more = list(_pod_messages(20, 20, t0 + 15.0 * 30))  # 400 more
    producer = _producer(local_kafka)
    for key, value in first:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=60)

    p1, url1 = start_podguard_run(cfg, tmp_path / "p1.log")
    try:
        _wait(lambda: sum(_committed(local_kafka, group).values()) == len(first),
              "the first daemon to commit the first batch", 120)
        for key, value in more:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=60)
        _wait(lambda: scrape(url1).get('podguard_source_messages_total{source="kafka"}', 0)
              >= len(first) + len(more), "the first daemon to read the second batch", 60)
        p1.send_signal(signal.SIGKILL)  # no chance to commit anything more
        p1.wait(timeout=30)
    finally:
        if p1.poll() is None:
            p1.kill()
    committed = sum(_committed(local_kafka, group).values())
    assert len(first) <= committed <= len(first) + len(more)

    p2, url2 = start_podguard_run(cfg, tmp_path / "p2.log")
    try:
        _wait(lambda: sum(_committed(local_kafka, group).values()) == len(first) + len(more),
              "the second daemon to commit everything", 120)
        m = scrape(url2)
        # it read exactly what was not committed: nothing before the commit, nothing twice
        assert committed < len(first) + len(more), "the kill came after the last commit"
        assert m.get('podguard_source_messages_total{source="kafka"}', 0.0) == (
            len(first) + len(more) - committed)
        assert m["podguard_ready"] == 1.0
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(timeout=30) == 0  # graceful, within the grace period
    finally:
        if p2.poll() is None:
            p2.kill()
        producer.close(timeout=10)
    assert '"daemon stopped"' in (tmp_path / "p2.log").read_text()


def test_two_daemons_in_one_group_split_the_partitions(local_kafka: KafkaHandle,
                                                        shipped: Pipeline) -> None:
    partitions = 4
    topic, dead = _topics(local_kafka, partitions)
    group = f"pg-{uuid.uuid4().hex[:8]}"
    settings = _settings(local_kafka, topic, dead, group)
    a, src_a, reg_a = _daemon(settings, shipped)
    b, src_b, reg_b = _daemon(settings, shipped)
    with Runner(a), Runner(b):
        _wait(lambda: len(src_a.assignment()) + len(src_b.assignment()) == partitions
              and bool(src_a.assignment()) and bool(src_b.assignment()),
              "both daemons to hold partitions", 60)
        pa, pb = set(src_a.assignment()), set(src_b.assignment())
        assert pa.isdisjoint(pb) and pa | pb == set(range(partitions))
        messages = list(_pod_messages(40, 10, time.time() - 150))
        producer = _producer(local_kafka)
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=60)
        producer.close(timeout=10)
        ends = _end_offsets(local_kafka, topic, partitions)
        _wait(lambda: _committed(local_kafka, group) == ends, "everything committed", 90)
        pods_a, pods_b = set(a.engine.pods()), set(b.engine.pods())
        n_a = _value(reg_a, "podguard_source_messages_total", source="kafka")
        n_b = _value(reg_b, "podguard_source_messages_total", source="kafka")
    assert pods_a and pods_b and pods_a.isdisjoint(pods_b)  # a pod lives in one partition
    assert len(pods_a | pods_b) == 40
    assert n_a > 0 and n_b > 0 and n_a + n_b == len(messages)
