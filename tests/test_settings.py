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
