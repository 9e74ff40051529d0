"""The one retry policy and the transport settings, without servers (fake time).

The same code against real servers: tests/stack/test_prometheus_tls_auth.py,
tests/stack/test_alertmanager_tls_auth.py, tests/stack/test_kafka_sasl_ssl.py.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from detector.errors import (
    ConfigError,
    PermanentError,
    ServiceUnavailableError,
    TemporaryError,
)
from detector.settings import HttpClientSettings, KafkaSecuritySettings, load_settings
from detector.transport.http import FileSecret, HttpClient, build_session
from detector.transport.kafka import classify, client_config
from detector.transport.prometheus import chunks
from detector.transport.retry import MAX_RETRY_AFTER_S, http_date, parse_retry_after, retrying

LOG = logging.getLogger("test.transport")


def test_retry_after_in_seconds_or_as_a_date_bounded() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("1e12") == MAX_RETRY_AFTER_S  # untrusted: a day-long stall is not
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    now = time.time()
    got = parse_retry_after(http_date(now + 30), now=lambda: now)
    assert got is not None and 29 <= got <= 30


def test_temporary_errors_are_retried_over_the_list_stretched_to_the_hint(
        caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    errors = [ServiceUnavailableError("503", delay=7.0), ServiceUnavailableError("no answer")]

    def call() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert retrying(call, delays=[1, 2, 5], what="x", log=LOG, sleep=slept.append) == "ok"
    assert slept == [7.0, 2.0]
    assert "503; attempt 1/4, retrying in 7.0 s" in caplog.text
    assert "no answer; attempt 2/4, retrying in 2.0 s" in caplog.text


def test_permanent_errors_are_not_retried_and_retries_are_finite() -> None:
    slept: list[float] = []
    calls = [0]

    def refused() -> None:
        calls[0] += 1
        raise PermanentError("HTTP 400")

    with pytest.raises(PermanentError, match="HTTP 400"):
        retrying(refused, delays=[1, 2], what="x", log=LOG, sleep=slept.append)
    assert calls == [1] and slept == []

    def down() -> None:
        calls[0] += 1
        raise TemporaryError("down")

    calls[0] = 0
    with pytest.raises(ServiceUnavailableError, match="x: gave up after 3 attempts: down") as e:
        retrying(down, delays=[1, 2], what="x", log=LOG, sleep=slept.append)
    assert calls == [3] and slept == [1, 2]
    assert isinstance(e.value.__cause__, TemporaryError)

    def bug() -> None:
        raise KeyError("a bug is not retried either")

    with pytest.raises(KeyError):
        retrying(bug, delays=[1], what="x", log=LOG, sleep=slept.append)


def test_chunks_cover_the_range_once() -> None:
    assert chunks(0, 100, 10, max_points=4) == [(0, 30), (40, 70), (80, 100)]
    assert chunks(0, 0, 10) == [(0, 0)]
    assert chunks(10, 0, 10) == []
    with pytest.raises(ValueError):
        chunks(0, 10, 0)


def test_http_settings_errors_name_the_key(tmp_path: Path) -> None:
    where = "sources.prometheus.http"
    cases = [
        (HttpClientSettings(ca_file=str(tmp_path / "nope.pem")), "http.ca_file: .*does not exist"),
        (HttpClientSettings(cert_file=__file__), "cert_file and key_file go together"),
        (HttpClientSettings(bearer_token_file=__file__, username="u", password_file=__file__),
         "not both"),
        (HttpClientSettings(username="u"), "needs both username and password_file"),
        (HttpClientSettings(headers={"X-Scope-OrgID": "a\r\nEvil: 1"}), "invalid header"),
        (HttpClientSettings(ca_file=__file__, insecure_skip_verify=True), "contradict"),
    ]
    for settings, match in cases:
        with pytest.raises(ConfigError, match=match):
            build_session(settings, where=where)
    with pytest.raises(ConfigError, match="is not an http"):
        HttpClient("ftp://x", where=where, timeout_s=1)
    s = build_session(HttpClientSettings(headers={"X-Scope-OrgID": "tenant-a"}), where=where,
                      url="http://127.0.0.1:9090")
    assert s.verify is True and s.headers["X-Scope-OrgID"] == "tenant-a" and not s.trust_env


def test_the_settings_tree_takes_the_transport_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources:\n  prometheus:\n    http:\n      ca_file: /ca.pem\n"
                   "      headers: {X-Scope-OrgID: t1}\n")
    s = load_settings(cfg, environ={"PODGUARD__SOURCES__KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
                                    "PODGUARD__ALERTING__ALERTMANAGER_HTTP__USERNAME": "am"})
    assert s.sources.prometheus.http.ca_file == "/ca.pem"
    assert s.sources.prometheus.http.headers == {"X-Scope-OrgID": "t1"}
    assert s.sources.kafka.security.protocol == "SASL_SSL"
    assert s.alerting.alertmanager_http.username == "am"
    assert s.sources.prometheus.http.insecure_skip_verify is False  # verification on
    with pytest.raises(ConfigError, match=r"sources\.prometheus\.http\.ca_fle"):
        load_settings(environ={"PODGUARD__SOURCES__PROMETHEUS__HTTP__CA_FLE": "x"})


def test_a_secret_file_is_reread_only_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("one\n")
    secret = FileSecret(str(f), key="k.bearer_token_file")
    assert secret.get() == "one" and secret.get() == "one" and secret.reads == 1
    new = tmp_path / "token.new"
    new.write_text("two\n")
    os.replace(new, f)  # atomic swap: a new inode
    assert secret.get() == "two" and secret.reads == 2
    f.write_text("")
    with pytest.raises(ConfigError, match=r"k\.bearer_token_file: .* is empty"):
        secret.get()
    f.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        secret.get()


def test_kafka_security_config(tmp_path: Path) -> None:
    where = "sources.kafka.security"
    assert client_config(KafkaSecuritySettings(), where=where) == {
        "security_protocol": "PLAINTEXT"}
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = client_config(KafkaSecuritySettings(protocol="SASL_SSL", username="podguard",
                                              password_file=str(pw)), where=where)
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512" and cfg["sasl_plain_password"] == "s3cret"
    assert cfg["ssl_context"].check_hostname and cfg["ssl_check_hostname"]
    with pytest.raises(ConfigError, match="need protocol SSL"):
        client_config(KafkaSecuritySettings(ca_file=__file__), where=where)
    with pytest.raises(ConfigError, match="SASL needs username and password_file"):
        client_config(KafkaSecuritySettings(protocol="SASL_SSL"), where=where)
    with pytest.raises(ConfigError, match="need protocol SASL_SSL"):
        client_config(KafkaSecuritySettings(protocol="SSL", username="u"), where=where)
    err = classify(RuntimeError("boom"), what="Kafka at x", where=where)
    assert isinstance(err, ServiceUnavailableError)
