"""The local Kafka, for real: topics, 20,000 messages, consumer groups, broker restart."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from tests.support.stack_fixtures import KafkaHandle

pytestmark = [pytest.mark.stack]

FIRST = 20_000
MORE = 500


def _produce(kafka: KafkaHandle, topic: str, numbers: range) -> Counter[int]:
    """Send one message per number (key = a pod name); returns messages per partition."""
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=20,
                             batch_size=256 * 1024, client_id="podguard-tests")
    try:
        futures = [producer.send(topic, key=f"trainer-{n % 11}".encode(), value=str(n).encode())
                   for n in numbers]
        producer.flush(timeout=120)
        return Counter(f.get(timeout=60).partition for f in futures)
    finally:
        producer.close(timeout=30)


def _consume(kafka: KafkaHandle, topic: str, group: str, expect: int,
             settle_s: float = 2.0, timeout: float = 120.0) -> list[int]:
    """Read from ``group`` until ``expect`` messages came and nothing more for ``settle_s``;
    commit the offsets and leave the group."""
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             client_id="podguard-tests", max_poll_records=5000,
                             metadata_max_age_ms=5000)  # a join that saw no partitions recovers
    got: list[int] = []

    def read(timeout_ms: int) -> None:
        for records in consumer.poll(timeout_ms=timeout_ms).values():
            got.extend(int(r.value) for r in records)

    try:
        deadline = time.monotonic() + timeout
        while len(got) < expect:
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} read {len(got)} of {expect} messages "
                                     f"from {topic} within {timeout:.0f}s")
            read(500)
        settled = time.monotonic() + settle_s  # anything more would be a duplicate or stale
        while time.monotonic() < settled:
            read(200)
        consumer.commit()
    finally:
        consumer.close()
    return got


def _committed(kafka: KafkaHandle, group: str) -> dict[int, int]:
    admin = kafka.admin()
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def test_three_partition_topic_groups_resume_at_commits_and_data_survive_restart(
        local_kafka: KafkaHandle) -> None:
    topic = f"podguard-test-{uuid.uuid4().hex[:8]}"
    group = f"podguard-group-{uuid.uuid4().hex[:8]}"
    admin = local_kafka.admin()
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    described = local_kafka.wait_for_partitions(topic, 3)
    assert described["error_code"] == 0
    assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2]

    per_partition = _produce(local_kafka, topic, range(FIRST))
    assert sorted(per_partition) == [0, 1, 2] and sum(per_partition.values()) == FIRST

    first = _consume(local_kafka, topic, group, FIRST)
    assert sorted(first) == list(range(FIRST))  # every message once, none twice
    assert _committed(local_kafka, group) == dict(per_partition)

    # A new consumer in the same group resumes at the committed offsets: only the new ones.
    _produce(local_kafka, topic, range(FIRST, FIRST + MORE))
    resumed = _consume(local_kafka, topic, group, MORE)
    assert sorted(resumed) == list(range(FIRST, FIRST + MORE))
    committed = _committed(local_kafka, group)
    assert sum(committed.values()) == FIRST + MORE

    # The broker restarts on the same data dir and port: topic, messages, commits survive.
    bootstrap = local_kafka.bootstrap
    local_kafka.restart()
    assert local_kafka.bootstrap == bootstrap
    assert _committed(local_kafka, group) == committed
    everything = _consume(local_kafka, topic, f"{group}-after-restart", FIRST + MORE)
    assert sorted(everything) == list(range(FIRST + MORE))
