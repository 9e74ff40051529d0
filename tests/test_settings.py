"""The settings tree: defaults, YAML + environment overrides, unknown keys, documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from detector.cli import main
from detector.errors import ConfigError
from detector.settings import Settings, defaults_yaml, load_settings


def test_no_configuration_is_the_embedded_default() -> None:
    s = load_settings(None, environ={})
    assert s == Settings()
    assert s.sources.kind == "local"
    assert s.server.host == "127.0.0.1" and s.server.port == 0
    assert s.model.root == ""


def test_printed_defaults_load_back_to_the_defaults(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--print-defaults"]) == 0
    text = capsys.readouterr().out
    assert text == defaults_yaml()
    f = tmp_path / "defaults.yaml"
    f.write_text(text)
    assert load_settings(f, environ={}) == Settings()
    assert "kube_pod_container_resource_limits" in text  # long lists are not wrapped


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _fields(ann, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", f))
    return out


def test_every_field_is_documented_with_a_unit_where_it_has_one() -> None:
    undocumented = [n for n, f in _fields(Settings) if not getattr(f, "description", None)]
    assert undocumented == []
    for name, f in _fields(Settings):
        desc = str(getattr(f, "description", ""))
        if name.endswith("_s") or name.endswith("_s_list"):
            assert "second" in desc, f"{name}: the unit (seconds) is not in {desc!r}"
        if name.endswith("_bytes"):
            assert "bytes" in desc, f"{name}: the unit (bytes) is not in {desc!r}"


def test_yaml_and_environment_overrides(tmp_path: Path) -> None:
    f = tmp_path / "podguard.yaml"
    f.write_text("sources:\n  kind: kafka\n  kafka:\n    bootstrap_servers: [127.0.0.1:9092]\n"
                 "    topic: samples\nwindows:\n  step_s: 15\n")
    s = load_settings(f, environ={"PODGUARD__SOURCES__KAFKA__TOPIC": "other",
                                  "PODGUARD__SERVER__PORT": "9464",
                                  "PODGUARD__SOURCES__PROMETHEUS__BACKOFF_S": "[1, 3]"})
    assert s.sources.kind == "kafka"
    assert s.sources.kafka.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.sources.kafka.topic == "other"  # the environment wins over the file
    assert s.server.port == 9464 and s.windows.step_s == 15
    assert s.sources.prometheus.backoff_s == [1, 3]


def test_unknown_keys_and_bad_values_are_errors_naming_every_problem(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("sources:\n  kind: carrier-pigeon\n  kafka:\n    topik: x\n"
                 "server:\n  port: 70000\nruntime:\n  lateness_s: -1\n")
    with pytest.raises(ConfigError) as e:
        load_settings(f, environ={})
    msg = str(e.value)
    for where in ("sources.kind", "sources.kafka.topik", "server.port", "runtime.lateness_s"):
        assert where in msg, msg
    with pytest.raises(ConfigError, match=re.escape("sources.prometheus.max_points")):
        load_settings(None, environ={"PODGUARD__SOURCES__PROMETHEUS__MAX_POINTS": "20000"})
    with pytest.raises(ConfigError, match=re.escape("model.wach_s")):
        load_settings(None, environ={"PODGUARD__MODEL__WACH_S": "3"})


def test_config_check_reports_a_bad_file_in_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("sources: [1, 2\n")
    assert main(["config", "--check", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("podguard: error:") and "not valid YAML" in err


# ------------------------------------------------------------------ what config --check refuses


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes,
           name: str = "podguard.yaml") -> str:
    f = tmp_path / name
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text)
    assert main(["config", "--check", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("podguard: error:") and "Traceback" not in err
    assert str(f) in err, err
    return err


@pytest.mark.parametrize(("text", "key", "words"), [
    ("server:\n  host: 999.1.1.1\n", "server.host", "not a valid IPv4 address"),
    ("server:\n  host: 'bad host!'\n", "server.host", "not a valid host name"),
    ("sources:\n  prometheus:\n    url: not a url\n", "sources.prometheus.url", "not a URL"),
    ("sources:\n  prometheus:\n    url: ftp://prom:9090\n", "sources.prometheus.url",
     "http:// or https://"),
    ("alerting:\n  alertmanager_urls: ['http://am:99999']\n", "alerting.alertmanager_urls",
     "invalid port"),
    ("windows:\n  horizon_s: 1e12\n", "windows.horizon_s", "less than or equal"),
    ("windows:\n  step_s: 1e-300\n", "windows.step_s", "greater than or equal to 1"),
    ("windows:\n  horizon_s: .inf\n", "windows.horizon_s", "finite"),
    ("windows:\n  horizon_s: 604800\n  step_s: 1\n", "windows", "points per window"),
    ("sources:\n  kafka:\n    bootstrap_servers: [kafka]\n", "sources.kafka.bootstrap_servers",
     "host:port"),
    ("model:\n  watch_s: 1e-9\n", "model.watch_s", "shorter than 1 ms"),
    ("runtime:\n  grace_period_s: ten seconds\n", "runtime.grace_period_s", "not a duration"),
    ("sources:\n  kind: prometheus\n", "sources", "sources.prometheus.url is empty"),
    ("sources:\n  kind: kafka\n", "sources", "bootstrap_servers is empty"),
    ("remediation:\n  channel_tls_key_file: /k.pem\n", "remediation",
     "channel_tls_cert_file is empty"),
    ("sources:\n  kind: kafka\n  kafka:\n    bootstrap_servers: ['k:9092']\n"
     "    backfill_prometheus: true\n", "sources", "backfill_prometheus is on but"),
    ("windows:\n  horizn_s: 3600\n", "windows.horizn_s", "did you mean 'horizon_s'"),
])
def test_config_check_names_the_file_the_key_and_the_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str,
        words: str) -> None:
    err = _check(tmp_path, capsys, text)
    assert f": {key}: " in err and words in err, err


def test_a_binary_file_and_broken_yaml_name_the_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _check(tmp_path, capsys, b"\x7fELF\x02\x01\x01\x00\xff\xfe" * 10, "binary.yaml")
    assert "not UTF-8 text" in err and "binary" in err
    err = _check(tmp_path, capsys, b"server: {port: 1}\x00\n", "nul.yaml")
    assert "NUL" in err
    err = _check(tmp_path, capsys, "server:\n  port: 1\n   host: x\n", "indent.yaml")
    assert "line 3, column 8" in err and "not valid YAML" in err


def test_a_bad_environment_override_is_blamed_on_its_variable(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text("server:\n  port: 9464\n")
    with pytest.raises(ConfigError) as e:
        load_settings(f, environ={"PODGUARD__SERVER__PORT": "abc"})
    assert "environment variable PODGUARD__SERVER__PORT: server.port:" in str(e.value)
    assert "'abc'" in str(e.value) and "ok.yaml:" not in str(e.value)
    host_error = re.escape("PODGUARD__SERVER__HOST: server.host: '999.1.1.1'")
    with pytest.raises(ConfigError, match=host_error):
        load_settings(None, environ={"PODGUARD__SERVER__HOST": "999.1.1.1"})
    with pytest.raises(ConfigError, match=r"PODGUARD__WINDOWS__HORIZN_S: windows\.horizn_s: "
                                          r"unknown key; did you mean 'horizon_s'"):
        load_settings(None, environ={"PODGUARD__WINDOWS__HORIZN_S": "3600"})


def test_durations_go_through_one_parser() -> None:
    from detector.errors import InputError
    from detector.settings import parse_duration

    assert [parse_duration(x) for x in ("90", "90s", "15m", "1h30m", "500ms", "7d", "2w", 3)] \
        == [90, 90, 900, 5400, 0.5, 604800, 1209600, 3]
    for bad in ("", "10x", "1h 3", "nan", "inf", "h", True):
        with pytest.raises(InputError):
            parse_duration(bad)
    s = load_settings(None, environ={"PODGUARD__WINDOWS__HORIZON_S": "2h",
                                     "PODGUARD__WINDOWS__STEP_S": "1m",
                                     "PODGUARD__ALERTING__BACKOFF_S": "[1s, 1m]"})
    assert (s.windows.horizon_s, s.windows.step_s) == (7200, 60)
    assert s.alerting.backoff_s == [1, 60]


def test_the_shipped_and_usual_values_stay_valid() -> None:
    s = load_settings(None, environ={
        "PODGUARD__SERVER__HOST": "::", "PODGUARD__SOURCES__KIND": "kafka",
        "PODGUARD__SOURCES__KAFKA__BOOTSTRAP_SERVERS": "[kafka-0.kafka:9092, '[::1]:9093']",
        "PODGUARD__SOURCES__PROMETHEUS__URL": "https://[fd00::1]:9090/prom",
        "PODGUARD__ALERTING__ALERTMANAGER_URLS": "[http://alertmanager-main.monitoring:9093]"})
    assert s.server.host == "::" and s.sources.kafka.bootstrap_servers[1] == "[::1]:9093"
    for host in ("0.0.0.0", "localhost", "podguard.monitoring.svc.cluster.local", "10.0.0.1"):
        assert load_settings(None, environ={"PODGUARD__SERVER__HOST": host}).server.host == host


def test_overrides_come_only_through_load_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODGUARD__SERVER__PORT", "9464")
    assert Settings().server.port == 0  # a Settings() built in code reads no globals
    assert Settings.model_validate({}).server.port == 0
    assert load_settings(None).server.port == 9464  # os.environ when no mapping is given


def test_every_bad_override_is_reported_at_once_naming_its_variable(tmp_path: Path) -> None:
    f = tmp_path / "podguard.yaml"
    f.write_text("server:\n  port: 9464\n")
    with pytest.raises(ConfigError) as e:
        load_settings(f, environ={"PODGUARD__ALERTING__BACKOFF_S": "[1, 2",
                                  "PODGUARD__MODLE__WATCH_S": "3",
                                  "PODGUARD__SERVER__PORT__X": "1",
                                  "PODGUARD__SOURCES__KIND": "carrier-pigeon"})
    msg = str(e.value)
    assert "(4 problems)" in msg and "podguard.yaml" not in msg, msg
    assert ("environment variable PODGUARD__ALERTING__BACKOFF_S: alerting.backoff_s: not a "
            "valid YAML value") in msg
    assert "environment variable PODGUARD__MODLE__WATCH_S: modle: unknown key; did you mean " \
           "'model'?" in msg
    assert "environment variable PODGUARD__SERVER__PORT__X: server.port:" in msg
    assert "environment variable PODGUARD__SOURCES__KIND: sources.kind:" in msg
    with pytest.raises(ConfigError, match="environment variable PODGUARD__ names no setting"):
        load_settings(None, environ={"PODGUARD__": "1"})
    s = load_settings(None, environ={"PODGUARD__RUNTIME__VERDICTS_PATH": "a: b",
                                     "PODGUARD__SERVER__HOST": "::",
                                     "PODGUARD__MODEL__ROOT": "",
                                     "PODGUARD__DETECTION__EXPLAIN": "no",
                                     "PODGUARD__ALERTING__ALERTMANAGER_HTTP__HEADERS":
                                         "{X-Scope-OrgID: tenant-1}"})
    assert (s.runtime.verdicts_path, s.server.host, s.model.root) == ("a: b", "::", "")
    assert s.detection.explain is False
    assert s.alerting.alertmanager_http.headers == {"X-Scope-OrgID": "tenant-1"}


def test_kafka_metadata_age_is_bounded() -> None:
    """``sources.kafka.metadata_max_age_s``: 30 s by default (kafka-python's own is 300 s, so a
    partition added to the topic went unread for up to 5 min), positive, at most an hour."""
    assert load_settings(None).sources.kafka.metadata_max_age_s == 30
    for bad in ("0", "-1", "7200", "soon"):
        with pytest.raises(ConfigError, match="metadata_max_age_s"):
            load_settings(None, environ={"PODGUARD__SOURCES__KAFKA__METADATA_MAX_AGE_S": bad})
    s = load_settings(None, environ={"PODGUARD__SOURCES__KAFKA__METADATA_MAX_AGE_S": "5"})
    assert s.sources.kafka.metadata_max_age_s == 5
