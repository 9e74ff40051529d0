"""A source is one module plus one settings class (issue 12): the runtime finds a source's
builder through its settings section (``module`` -> that module's ``SOURCE``) and names no
source itself; a source that is not complete is refused naming the setting. Sinks likewise:
each sink module's ``SINK``, listed once in ``detector.sinks.base.SINK_MODULES``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, get_args

import pytest
from pydantic import ValidationError

from detector.runtime import build
from detector.settings import Settings, SourcesSettings, _SourceSection
from detector.sources.base import Delivery, SourceSpec, SourceStatus, source_spec
from tests.support.kube import use_kubeconfig

ROOT = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("test")


def _settings(kind: str, **section: Any) -> Settings:
    return Settings.model_validate({"sources": {"kind": kind, **section}})


def test_every_source_kind_has_a_section_whose_module_builds_it() -> None:
    kinds = get_args(SourcesSettings.model_fields["kind"].annotation)
    assert set(kinds) == {"local", "prometheus", "kafka"}
    given: dict[str, dict[str, Any]] = {
        "prometheus": {"prometheus": {"url": "http://127.0.0.1:9"}},
        "kafka": {"kafka": {"bootstrap_servers": ["127.0.0.1:9"]}}}
    for kind in kinds:
        spec = source_spec(_settings(kind, **given.get(kind, {})))
        assert isinstance(spec, SourceSpec) and spec.kind == kind
    assert source_spec(_settings("local")).embedded
    assert source_spec(_settings("prometheus", **given["prometheus"])).adopts_node_alerts
    assert not source_spec(_settings("kafka", **given["kafka"])).adopts_node_alerts


def test_the_runtime_names_no_source() -> None:
    text = (ROOT / "detector" / "runtime" / "build.py").read_text()
    assert not re.search(r"[\"'](local|prometheus|kafka)[\"']", text)
    assert "detector.sources.local" not in text and "LocalSource" not in text


def test_an_incomplete_source_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match=r"sources\.prometheus\.url is empty"):
        _settings("prometheus")
    with pytest.raises(ValidationError, match=r"sources\.kafka\.bootstrap_servers is empty"):
        _settings("kafka")
    with pytest.raises(ValidationError, match=r"sources\.prometheus\.url is empty: give the "
                                              r"Prometheus to backfill from"):
        _settings("kafka", kafka={"bootstrap_servers": ["h:1"], "backfill_prometheus": True})


# A throwaway source, as a new source module would be: its Source, its SOURCE; and its
# settings class (in detector.settings a real one is a section of SourcesSettings).


class ScratchSource:
    name = "scratch"

    def __init__(self, greeting: str) -> None:
        self.greeting, self.started = greeting, False

    def start(self) -> None:
        self.started = True

    def poll(self, timeout: float) -> Delivery:  # pragma: no cover - not polled here
        raise NotImplementedError

    def commit(self, tokens: Any) -> None:  # pragma: no cover
        pass

    def now(self) -> float:
        return 0.0

    def clock_rate(self) -> float:
        return 1.0

    def status(self) -> SourceStatus:  # pragma: no cover
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:  # pragma: no cover
        pass


class ScratchSourceSettings(_SourceSection):
    module: ClassVar[str] = __name__
    greeting: str = "hello"

    def incomplete(self, sources: Any) -> str | None:
        return None if self.greeting else "sources.scratch.greeting is empty"


def _build(settings: Any, logger: logging.Logger, out_dir: Path | None) -> Any:
    return ScratchSource(settings.sources.scratch.greeting)


SOURCE = SourceSpec("scratch", _build)


def test_a_new_source_needs_no_runtime_edit(tmp_path: Path) -> None:
    section = ScratchSourceSettings(greeting="hi")
    settings: Any = SimpleNamespace(sources=SimpleNamespace(kind="scratch", scratch=section))
    source = build.make_source(settings, logger=LOG, out_dir=tmp_path)
    assert isinstance(source, ScratchSource) and source.greeting == "hi"
    assert ScratchSourceSettings(greeting="").incomplete(None) == (
        "sources.scratch.greeting is empty")


# Sinks: each sink module's SINK, in SINK_MODULES order; the runtime names none.


def test_every_sink_module_has_its_spec_and_the_runtime_names_no_sink() -> None:
    from detector.sinks.base import SINK_MODULES, SinkSpec, sink_specs

    specs = sink_specs()
    assert len(specs) == len(SINK_MODULES) and all(isinstance(s, SinkSpec) for s in specs)
    assert [s.name for s in specs] == ["jsonl", "console", "alertmanager", "kubernetes-events"]
    text = (ROOT / "detector" / "runtime" / "build.py").read_text()
    for name in ("ConsoleSink", "JsonLinesSink", "AlertmanagerSink", "KubernetesEventSink",
                 "alertmanager_urls", "verdicts_path"):
        assert name not in text, name


def test_the_outputs_are_what_the_sink_specs_build(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from detector.runtime.hooks import DryRunPlan, OnChange
    from detector.sinks.alertmanager import AlertmanagerSink
    from detector.sinks.console import ConsoleSink
    from detector.sinks.jsonl import JsonLinesSink

    use_kubeconfig(monkeypatch, tmp_path / "none")  # no cluster
    sinks, hook = build.make_outputs(Settings(), logger=LOG, out_dir=tmp_path)
    assert [type(s) for s in sinks] == [JsonLinesSink, OnChange]  # the embedded default
    assert isinstance(sinks[1], OnChange) and isinstance(sinks[1].sink, ConsoleSink)
    assert isinstance(hook, DryRunPlan)
    assert isinstance(sinks[0], JsonLinesSink) and sinks[0].path.parent == tmp_path
    cluster = Settings.model_validate({
        "sources": {"kind": "prometheus", "prometheus": {"url": "http://127.0.0.1:9"}},
        "runtime": {"verdicts_path": ""},
        "alerting": {"alertmanager_urls": ["http://127.0.0.1:9"], "kubernetes_events": True}})
    sinks, hook = build.make_outputs(cluster, logger=LOG, out_dir=tmp_path)
    try:  # no cluster configuration: no Events sink, no remediation
        assert [type(s) for s in sinks] == [ConsoleSink, AlertmanagerSink] and hook is None
    finally:
        for s in sinks:
            s.close(1.0)


_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_sinks_and_the_diagnosis_share_one_actuator(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One Actuator for every Event of the daemon (its event dedupe in one place): the Event
    sink's and the in-pod diagnosis' Events go through the same one (a dry run: planned, not
    posted; the kubeconfig only read, nothing is contacted)."""
    from detector.sinks.k8s_events import KubernetesEventSink

    (tmp_path / "kubeconfig").write_text(_KUBECONFIG)
    use_kubeconfig(monkeypatch, tmp_path / "kubeconfig")
    cluster = Settings.model_validate({
        "sources": {"kind": "prometheus", "prometheus": {"url": "http://127.0.0.1:9",
                                                         "node_name": "n1"}},
        "runtime": {"verdicts_path": "", "console": False},
        "remediation": {"dry_run": True},
        "alerting": {"kubernetes_events": True}})
    actuator = build.cluster_actuator(cluster, LOG)
    sinks, hook = build.make_outputs(cluster, logger=LOG, out_dir=tmp_path, actuator=actuator)
    try:
        assert hook is None and [type(s) for s in sinks] == [KubernetesEventSink]
        shared = actuator()
        assert shared is not None and actuator() is shared
        assert isinstance(sinks[0], KubernetesEventSink) and sinks[0].actuator is shared
        requester = build.make_diagnosis(cluster, logger=LOG, out_dir=tmp_path,
                                         actuator=actuator)
        requester.event("ns", "p", "DiagnosisTest", "asked", False)
        assert [k[1] for k in shared._events] == ["DiagnosisTest"]
    finally:
        for s in sinks:
            s.close(1.0)


def test_the_node_is_node_name_else_the_environment() -> None:
    from detector.settings import PrometheusSourceSettings

    assert PrometheusSourceSettings(node_name="a").node({"NODE_NAME": "b"}) == "a"
    assert PrometheusSourceSettings().node({"NODE_NAME": "b"}) == "b"
    assert PrometheusSourceSettings().node({}) == ""
