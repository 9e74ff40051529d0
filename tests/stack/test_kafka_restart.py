"""A restarted Kafka daemon is judging again within a minute (issue: after a rolling update
every pod used to be stale for a whole window): on assignment the partition is re-read by the
window length before the commit, the windows are stale (no alarm, no resolution) until the
re-read reaches where the partition ended, and the commit never moves backwards. Against the
real local Kafka."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

import pytest

from detector.runtime.build import make_source
from detector.settings import Settings
from detector.sinks.base import SynchronousSink
from detector.verdicts import Verdict
from tests.stack.test_sources_kafka import (
    Runner,
    _committed,
    _pod_messages,
    _producer,
    _topics,
    _wait,
)
from tests.support.daemons import in_process_daemon
from tests.support.stack_fixtures import KafkaHandle

pytestmark = [pytest.mark.stack]
LOG = logging.getLogger("podguard.test.kafka_restart")
PODS = 4


class Recorder(SynchronousSink):
    name = "recorder"

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[Verdict]]] = []

    def send(self, verdicts: Sequence[Verdict]) -> None:
        self.batches.append((time.monotonic(), list(verdicts)))


    def judged_at(self) -> float | None:
        """When a batch first judged every pod (no stale verdict)."""
        for t, vs in self.batches:
            if len(vs) == PODS and not any(v.stale for v in vs):
                return t
        return None


def test_a_restarted_daemon_refills_its_windows_and_judges_within_a_minute(
        local_kafka: KafkaHandle) -> None:
    topic, dead = _topics(local_kafka, 1)
    group = f"pg-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({
        "windows": {"horizon_s": 3600, "step_s": 20, "pod_ttl_s": 7200},
        "sources": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [local_kafka.bootstrap], "topic": topic, "group_id": group,
            "dead_letter_topic": dead, "session_timeout_s": 6, "request_timeout_s": 10}},
        "runtime": {"lateness_s": 0.2, "console": False, "verdicts_path": ""},
        "server": {"enabled": False}})
    assert settings.sources.kafka.rewind_s is None  # the default: rewind by the window
    steps = 236
    t0 = time.time() - 15.0 * steps
    history = list(_pod_messages(PODS, steps, t0))  # the last hour of 4 pods
    producer = _producer(local_kafka)
    for key, value in history:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=60)

    first = Recorder()
    with Runner(in_process_daemon(settings, [first], LOG)):
        _wait(lambda: sum(_committed(local_kafka, group).values()) == len(history),
              "the first daemon to commit the history", 120)
    assert first.judged_at() is not None  # it had judged the pods before the "update"

    second = Recorder()
    started = time.monotonic()
    daemon = in_process_daemon(settings, [second], LOG)
    with Runner(daemon):
        _wait(lambda: second.judged_at() is not None,
              "the restarted daemon to judge every pod again", 60)
        judged = second.judged_at()
        assert judged is not None and judged - started < 60
        status = daemon.source.status()
        assert status.caught_up and status.extra.get("rewind_partitions", 0) == 0
        # the whole window came back (5 series per message), not just what followed the commit
        assert daemon.summary.samples >= 0.95 * len(history) * 5
        assert len(daemon.engine.pods()) == PODS
        # before it was caught up, every verdict it handed over was stale: no alarm and no
        # resolution from a half-refilled window
        before = [vs for t, vs in second.batches if t < judged]
        assert all(v.stale for vs in before for v in vs)
        time.sleep(1.0)
    # the re-read history never moved the group's commit backwards
    assert sum(_committed(local_kafka, group).values()) == len(history)
    producer.close(timeout=10)


def test_unacknowledged_dead_letters_pause_reading_instead_of_growing(
        local_kafka: KafkaHandle) -> None:
    """A dead-letter topic the broker refuses: the copies cannot be acknowledged, so at
    max_pending_dead_letters the source stops reading (memory bounded), reports itself not up,
    and commits nothing past them."""
    topic, _ = _topics(local_kafka, 1, dlq=False)
    group = f"pg-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({"sources": {"kind": "kafka", "kafka": {
        "bootstrap_servers": [local_kafka.bootstrap], "topic": topic, "group_id": group,
        "dead_letter_topic": "refused topic!", "max_pending_dead_letters": 10,
        "max_poll_records": 5, "session_timeout_s": 6, "request_timeout_s": 5,
        "backoff_s": [0.2]}}})
    producer = _producer(local_kafka)
    for i in range(60):
        producer.send(topic, value=b"\x00not json %d" % i)
    producer.flush(timeout=60)
    producer.close(timeout=10)
    source = make_source(settings, logger=LOG)
    source.start()
    try:
        read = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            d = source.poll(0.5)
            read += d.messages
            source.commit([d.token] if d.token else [])
            if not source.status().up and read >= 10:
                break
        pending = source.status().extra["pending_dead_letters"]
        assert 10 <= pending <= 10 + 5 and read <= 15, (pending, read)
        assert "dead-letter" in source.status().detail
        for _ in range(5):  # paused: nothing more is read
            assert source.poll(0.2).messages == 0
        assert sum(_committed(local_kafka, group).values()) == 0
    finally:
        source.close(timeout=5)
