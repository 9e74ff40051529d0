"""Which alerts ``podguard run`` adopts from Alertmanager after a restart (build.make_outputs):
a Prometheus-source daemon judges its node's pods, so it takes over its node's alerts; a
Kafka-group member owns partitions, not a node, so it adopts none (adopting its node's would
resolve alerts another member judges). The restart end to end is
tests/stack/test_restart_alerts.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from detector.runtime.build import make_outputs
from detector.settings import Settings
from detector.sinks.alertmanager import AlertmanagerSink
from tests.support.kube import use_kubeconfig

LOG = logging.getLogger("podguard.test.adoption")


def _sink(source: dict[str, object], tmp_path: Path) -> AlertmanagerSink:
    settings = Settings.model_validate({
        "sources": source, "runtime": {"console": False, "verdicts_path": ""},
        "alerting": {"alertmanager_urls": ["http://127.0.0.1:9"], "kubernetes_events": False}})
    sinks, _ = make_outputs(settings, logger=LOG, out_dir=tmp_path)
    [am] = [s for s in sinks if isinstance(s, AlertmanagerSink)]
    return am


@pytest.fixture(autouse=True)
def _node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NODE_NAME", "node-a")  # as the DaemonSet's downward API sets it
    use_kubeconfig(monkeypatch, tmp_path / "none")  # no cluster: alerts only


def test_a_prometheus_daemon_adopts_its_nodes_alerts(tmp_path: Path) -> None:
    am = _sink({"kind": "prometheus", "prometheus": {"url": "http://127.0.0.1:9"}}, tmp_path)
    try:
        assert am.adopt_matchers == ['node="node-a"']
    finally:
        am.close(timeout=1)


def test_a_kafka_group_member_adopts_no_node_scope(tmp_path: Path) -> None:
    am = _sink({"kind": "kafka", "kafka": {"bootstrap_servers": ["127.0.0.1:9"]}}, tmp_path)
    try:
        assert am.adopt_matchers is None
    finally:
        am.close(timeout=1)
