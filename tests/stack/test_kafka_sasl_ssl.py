"""Kafka over SSL and SASL_SSL with SCRAM-SHA-512 (issue 14 item 9), against a real broker.

The broker is a second real one (``secure_kafka``: ``deploy/local/kafka.py`` with
``KafkaSecurity``): an SSL listener requiring a client certificate and a SASL_SSL listener,
with a server certificate of a test CA, a SCRAM-SHA-512 user added when its storage was
formatted. Samples are produced over SASL_SSL
too, with the same client settings podguard's source uses.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import NewTopic

from detector.errors import AuthError, TlsError
from detector.settings import KafkaSecuritySettings, KafkaSourceSettings
from detector.sources.kafka import KafkaSource
from detector.sources.kafka_codec import encode_batch
from detector.transport.kafka import client_config
from tests.support.stack_fixtures import KafkaHandle

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

LOG = logging.getLogger("podguard.test.kafka_sasl")
WHERE = "sources.kafka.security"


def security(kafka: KafkaHandle, protocol: str, **kw: Any) -> KafkaSecuritySettings:
    files = kafka.security
    base: dict[str, Any] = {"protocol": protocol, "ca_file": files["ca_file"]}
    if protocol.startswith("SASL"):
        base.update(username=files["username"], password_file=files["password_file"])
    else:  # the SSL listener wants mutual TLS
        base.update(cert_file=files["client_cert"], key_file=files["client_key"])
    base.update(kw)
    return KafkaSecuritySettings.model_validate(base)


@pytest.fixture(scope="module")
def topic(secure_kafka: KafkaHandle) -> str:
    name = f"pg-sasl-{uuid.uuid4().hex[:8]}"
    admin = secure_kafka.admin()
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    now = time.time()
    producer = KafkaProducer(bootstrap_servers=secure_kafka.listener("SASL_SSL"), acks="all",
                             **client_config(security(secure_kafka, "SASL_SSL"), where=WHERE))
    try:
        for i in range(5):
            producer.send(name, key=b"ml/trainer-0", value=encode_batch([(
                "container_memory_working_set_bytes",
                {"namespace": "ml", "pod": "trainer-0", "container": "main", "node": "n1"},
                [(now - 60 + 15 * i, 1e9 + i)])]))
        producer.flush(timeout=30)
    finally:
        producer.close()
    return name


def source(kafka: KafkaHandle, listener: str, sec: KafkaSecuritySettings, topic: str
           ) -> KafkaSource:
    return KafkaSource(KafkaSourceSettings(
        bootstrap_servers=[kafka.listener(listener)], topic=topic,
        group_id=f"g-{uuid.uuid4().hex[:6]}", dead_letter_topic="", session_timeout_s=6,
        request_timeout_s=6, backoff_s=[1, 2], security=sec), logger=LOG)


@pytest.mark.parametrize("listener", ["SASL_SSL", "SSL"])
def test_the_source_consumes_and_commits_over_tls(secure_kafka: KafkaHandle, topic: str,
                                                  listener: str) -> None:
    src = source(secure_kafka, listener, security(secure_kafka, listener), topic)
    src.start()
    try:
        values: list[float] = []
        deadline = time.monotonic() + 40
        while len(values) < 5 and time.monotonic() < deadline:
            d = src.poll(1.0)
            values += list(d.samples.value)
            if d.token:
                src.commit([d.token])
        assert sorted(values) == [1e9 + i for i in range(5)]
        assert src.committed_total >= 1 and src.status().up
    finally:
        src.close()


def test_a_wrong_scram_password_is_a_clear_permanent_error(
        secure_kafka: KafkaHandle, topic: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    src = source(secure_kafka, "SASL_SSL",
                 security(secure_kafka, "SASL_SSL", password_file=str(wrong)), topic)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOG.name), pytest.raises(AuthError) as e:
        src.start()
    assert time.monotonic() - started < 20  # one bootstrap timeout (6 s), no backoff rounds
    assert "refused the SASL credentials" in str(e.value)
    assert "sources.kafka.security.password_file" in str(e.value)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_verification_is_on_a_broker_of_an_unknown_ca_is_refused(
        secure_kafka: KafkaHandle, topic: str) -> None:
    src = source(secure_kafka, "SSL", security(secure_kafka, "SSL", ca_file=""), topic)
    with pytest.raises(TlsError, match=r"set sources\.kafka\.security\.ca_file"):
        src.start()


def test_the_ssl_listener_requires_a_client_certificate(secure_kafka: KafkaHandle,
                                                        topic: str) -> None:
    src = source(secure_kafka, "SSL", security(secure_kafka, "SSL", cert_file="", key_file=""),
                 topic)
    started = time.monotonic()
    with pytest.raises(TlsError, match="client certificate"):
        src.start()
    assert time.monotonic() - started < 10
