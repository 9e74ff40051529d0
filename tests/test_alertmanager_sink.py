"""The Alertmanager sink against real Alertmanagers (the session's and a second one: an HA pair).

Alerts are read back through Alertmanager's own v2 API. Outages are real (the second
Alertmanager is stopped and started); 503/429 with ``Retry-After`` and a 400 come from a small
fault-injecting proxy placed in front of the real Alertmanager. Backoff waits are faked
(recorded, not slept) where the test drives delivery itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from deploy.local.alertmanager import Alertmanager
from detector.settings import AlertingSettings
from detector.sinks.alertmanager import AlertmanagerSink
from detector.sinks.base import Sink
from detector.verdicts import Explanation, Kind, Verdict
from tests.support.stack_fixtures import AlertmanagerHandle

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

FEATURES = {"mem_working_set.slope": 0.61, "mem_working_set.monotonicity": 0.58,
            "mem_rss.slope": -0.02}


def verdict(ns: str, pod: str = "trainer-0", *, tto: float | None = 3 * 3600.0,
            kind: Kind = "memory_leak", anomaly: bool = True) -> Verdict:
    return Verdict(
        ts=time.time(), namespace=ns, pod=pod, node="node-a", is_anomaly=anomaly,
        kind=kind if anomaly else "none", score=2.5 if anomaly else 0.1, threshold=1.06,
        time_to_oom_s=tto if anomaly else None,
        time_to_oom_range_s=(tto * 0.6, tto * 1.8) if anomaly and tto else None,
        leak_rate_bytes_per_s=30_000.0 if anomaly and kind != "drift" else None,
        explanation=Explanation("working set +100 MiB/h for 3 h, OOM in ~3 h at the 1.2 GiB "
                                "limit", dict(FEATURES)) if anomaly else None)


def alerts_at(url: str, ns: str) -> list[dict[str, Any]]:
    s = requests.Session()
    s.trust_env = False
    r = s.get(f"{url}/api/v2/alerts", params={"filter": f'namespace="{ns}"'}, timeout=10)
    r.raise_for_status()
    out: list[dict[str, Any]] = r.json()
    return out


def settings(**kw: Any) -> AlertingSettings:
    return AlertingSettings(**kw)


@dataclass
class FakeSleep:
    """Records the waits instead of sleeping them."""

    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class SecondAlertmanager:
    service: Alertmanager
    state: Path

    @property
    def url(self) -> str:
        url = self.service.url(self.state)
        assert url is not None
        return url

    def stop(self) -> None:
        self.service.stop(self.state)

    def start(self) -> None:
        self.service.start(self.state)


@pytest.fixture(scope="module")
def am2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecondAlertmanager]:
    """A second real Alertmanager (the other half of an HA pair), owned by this module."""
    state = tmp_path_factory.mktemp("am2")
    service = Alertmanager()
    service.prepare()
    service.start(state)
    try:
        yield SecondAlertmanager(service, state)
    finally:
        service.stop(state)


@pytest.fixture
def ns() -> str:
    return f"pg-am-{uuid.uuid4().hex[:8]}"


def test_is_a_sink() -> None:
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=settings(), background=False)
    assert isinstance(sink, Sink)
    with pytest.raises(ValueError, match="at least one"):
        AlertmanagerSink([], settings=settings())


def test_alert_reaches_both_alertmanagers_with_labels_and_annotations(
        local_alertmanager: AlertmanagerHandle, am2: SecondAlertmanager, ns: str) -> None:
    sink = AlertmanagerSink([local_alertmanager.url, am2.url], settings=settings(),
                            container_of=lambda n, p: "main")
    try:
        sent_at = time.time()
        sink.send([verdict(ns)])
        assert sink.flush(15)
    finally:
        sink.close()
    for url in (local_alertmanager.url, am2.url):
        got = alerts_at(url, ns)
        assert len(got) == 1, (url, got)
        a = got[0]
        assert a["labels"] == {"alertname": "PodMemoryLeak", "namespace": ns,
                               "pod": "trainer-0", "container": "main", "node": "node-a",
                               "severity": "warning"}
        ann = a["annotations"]
        assert ann["summary"] == f"Memory leak in {ns}/trainer-0: OOM in ~3 h"
        assert ann["explanation"].startswith("working set +100 MiB/h")
        assert json.loads(ann["explanation_json"]) == FEATURES
        assert ann["time_to_oom"].startswith("~3 h (range ")
        assert ann["time_to_oom_seconds"] == "10800"
        assert ann["runbook_url"].endswith("#PodMemoryLeak")
        assert f"{ns}/trainer-0 on node node-a" in ann["description"]
        ends = datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00")).timestamp()
        assert sent_at + 290 < ends < time.time() + 310  # resolve_timeout_s ahead
        assert a["status"]["state"] == "active"


@pytest.mark.parametrize(("kind", "tto", "expected"), [
    ("memory_leak", 600.0, "critical"),
    ("memory_leak", 3599.0, "critical"),
    ("memory_leak", 3600.0, "warning"),
    ("gpu_memory_leak", 20 * 3600.0, "warning"),
    ("memory_leak", 30 * 3600.0, "info"),
    ("memory_leak", None, "warning"),  # no limit: time to OOM unknown
    ("drift", None, "warning"),
])
def test_severity_follows_time_to_oom(kind: Kind, tto: float | None, expected: str) -> None:
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=settings(), background=False)
    assert sink.severity(verdict("ns", kind=kind, tto=tto)) == expected


def test_alert_names_follow_the_kind() -> None:
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=settings(), background=False)
    for kind, name in (("memory_leak", "PodMemoryLeak"), ("gpu_memory_leak", "PodGpuMemoryLeak"),
                       ("drift", "PodPreFailureDrift")):
        sink.send([verdict(f"ns-{kind}", kind=kind)])  # type: ignore[arg-type]
        assert sink.active()[(f"ns-{kind}", "trainer-0")]["alertname"] == name


def test_active_alert_is_resent_and_resolved_once_healthy_twice(
        local_alertmanager: AlertmanagerHandle, ns: str) -> None:
    sink = AlertmanagerSink([local_alertmanager.url], settings=settings(resend_interval_s=0.3),
                            background=False)
    target = sink.targets[0]
    sink.send([verdict(ns)])
    assert sink.flush(10) and target.sent == 1
    sink.send([verdict(ns)])  # same alert within the interval: not sent again
    assert sink.flush(10) and target.sent == 1
    time.sleep(0.4)
    sink.send([verdict(ns)])
    assert sink.flush(10) and target.sent == 2
    sink.send([verdict(ns, anomaly=False)])  # one healthy verdict: not yet
    assert sink.flush(10) and len(alerts_at(local_alertmanager.url, ns)) == 1
    sink.send([verdict(ns, anomaly=False)])
    assert sink.flush(10)
    assert alerts_at(local_alertmanager.url, ns) == []
    assert sink.active() == {}


def test_stale_verdicts_neither_fire_nor_resolve(ns: str) -> None:
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=settings(), background=False)
    sink.send([verdict(ns)])
    for _ in range(3):
        sink.send([replace(verdict(ns, anomaly=False), stale=True)])
    assert (ns, "trainer-0") in sink.active()
    sink.send([replace(verdict(ns, pod="other"), stale=True)])
    assert (ns, "other") not in sink.active()


def test_alert_of_a_vanished_pod_is_resolved(local_alertmanager: AlertmanagerHandle,
                                             ns: str) -> None:
    sink = AlertmanagerSink([local_alertmanager.url], settings=settings(gone_after_s=0.5),
                            background=False)
    sink.send([verdict(ns)])
    assert sink.flush(10) and len(alerts_at(local_alertmanager.url, ns)) == 1
    time.sleep(0.6)
    sink.send([])  # the pod is no longer scored
    assert sink.flush(10)
    assert alerts_at(local_alertmanager.url, ns) == []


def test_new_severity_resolves_the_old_alert_and_escalation_makes_it_critical(
        local_alertmanager: AlertmanagerHandle, ns: str) -> None:
    sink = AlertmanagerSink([local_alertmanager.url], settings=settings(), background=False)
    sink.send([verdict(ns, tto=20 * 3600.0)])
    assert sink.flush(10)
    assert [a["labels"]["severity"] for a in alerts_at(local_alertmanager.url, ns)] == [
        "warning"]
    sink.send([verdict(ns, tto=600.0)])
    assert sink.flush(10)
    assert [a["labels"]["severity"] for a in alerts_at(local_alertmanager.url, ns)] == [
        "critical"]
    other = f"{ns}-b"
    sink.send([verdict(other)])
    sink.escalate(other, "trainer-0", "checkpoint request r-1.1 not acknowledged within 5 min")
    assert sink.flush(10)
    got = alerts_at(local_alertmanager.url, other)
    assert [a["labels"]["severity"] for a in got] == ["critical"]
    assert got[0]["annotations"]["remediation"].startswith("checkpoint request r-1.1")
    sink.send([verdict(other)])  # later verdicts keep the escalation
    assert sink.active()[(other, "trainer-0")]["severity"] == "critical"


def test_escalation_without_an_active_alert_fires_from_the_given_verdict(ns: str) -> None:
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=settings(), background=False)
    sink.escalate(ns, "trainer-0", "blocked")
    assert sink.active() == {}
    sink.escalate(ns, "trainer-0", "blocked", verdict(ns))
    assert sink.active()[(ns, "trainer-0")]["severity"] == "critical"


def test_alerts_are_queued_while_alertmanager_is_down_and_none_is_lost(
        am2: SecondAlertmanager, ns: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeSleep()
    sink = AlertmanagerSink([am2.url], settings=settings(backoff_s=[1, 2, 5], timeout_s=2),
                            background=False, sleep=fake)
    am2.stop()
    try:
        pods = [f"trainer-{i}" for i in range(5)]
        sink.send([verdict(ns, p) for p in pods])
        with caplog.at_level(logging.WARNING, logger="podguard.sinks.alertmanager"):
            assert sink.flush(0) is False
        assert fake.waits == [1, 2, 5]
        text = caplog.text
        assert "attempt 1/4, retrying in 1.0 s" in text
        assert "attempt 4/4: giving up this round, 5 alert(s) stay queued" in text
        assert sink.pending() == {am2.url: 5}
    finally:
        am2.start()
    assert sink.flush(10)
    assert sink.pending() == {am2.url: 0}
    assert sorted(a["labels"]["pod"] for a in alerts_at(am2.url, ns)) == pods
    assert sink.targets[0].dropped == 0 and sink.targets[0].sent == 5


class _FaultProxy:
    """Answers from a script (status, headers) before forwarding to the real Alertmanager."""

    def __init__(self, upstream: str, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.seen: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if proxy.script:
                    status, headers = proxy.script.pop(0)
                    proxy.seen.append(status)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(b'{"message":"injected"}')
                    return
                s = requests.Session()
                s.trust_env = False
                r = s.post(upstream + self.path, data=body,
                           headers={"Content-Type": "application/json"}, timeout=10)
                proxy.seen.append(r.status_code)
                self.send_response(r.status_code)
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_retry_after_is_honoured(local_alertmanager: AlertmanagerHandle, ns: str) -> None:
    proxy = _FaultProxy(local_alertmanager.url, [(503, {"Retry-After": "7"}),
                                                 (429, {"Retry-After": "3"})])
    fake = FakeSleep()
    try:
        sink = AlertmanagerSink([proxy.url], settings=settings(backoff_s=[1, 2, 5]),
                                background=False, sleep=fake)
        sink.send([verdict(ns)])
        assert sink.flush(0)
    finally:
        proxy.close()
    assert proxy.seen == [503, 429, 200]
    assert fake.waits == [7, 3]  # max(backoff step, Retry-After)
    assert len(alerts_at(local_alertmanager.url, ns)) == 1


def test_a_refused_alert_is_dropped_not_retried(local_alertmanager: AlertmanagerHandle,
                                                ns: str) -> None:
    proxy = _FaultProxy(local_alertmanager.url, [(400, {})])
    fake = FakeSleep()
    try:
        sink = AlertmanagerSink([proxy.url], settings=settings(), background=False, sleep=fake)
        sink.send([verdict(ns)])
        assert sink.flush(0)
    finally:
        proxy.close()
    assert proxy.seen == [400] and fake.waits == []
    assert sink.targets[0].rejected == 1 and sink.pending() == {proxy.url: 0}
    assert alerts_at(local_alertmanager.url, ns) == []


def test_the_queue_is_bounded_and_counts_what_it_drops(ns: str) -> None:
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=settings(queue_max=3),
                            background=False)
    sink.send([verdict(ns, f"p{i}") for i in range(5)])
    t = sink.targets[0]
    assert sink.pending() == {t.url: 3} and t.dropped == 2
    assert [a["labels"]["pod"] for a in t.pending.values()] == ["p2", "p3", "p4"]
    sink.send([verdict(ns, "p4", tto=600.0)])  # a newer state of a queued alert replaces it
    assert len(t.pending) <= 3
    assert sum(1 for a in t.pending.values() if a["labels"]["pod"] == "p4"
               and a["labels"]["severity"] == "critical") == 1


def test_background_delivery_rides_out_an_outage(am2: SecondAlertmanager, ns: str) -> None:
    sink = AlertmanagerSink([am2.url], settings=settings(backoff_s=[0.1, 0.2], timeout_s=2))
    am2.stop()
    try:
        sink.send([verdict(ns)])
        assert sink.flush(1.0) is False
        assert sink.targets[0].failures >= 1
    finally:
        am2.start()
    try:
        assert sink.flush(30)
    finally:
        sink.close()
    assert len(alerts_at(am2.url, ns)) == 1


def test_a_restarted_sink_adopts_its_alerts_and_resolves_them_when_the_pod_is_gone(
        local_alertmanager: AlertmanagerHandle, ns: str) -> None:
    first = AlertmanagerSink([local_alertmanager.url], settings=settings(), background=False)
    first.send([verdict(ns), verdict(f"{ns}-other")])
    assert first.flush(10)
    # a new process: knows nothing, adopts what Alertmanager holds for its scope only
    second = AlertmanagerSink([local_alertmanager.url], settings=settings(gone_after_s=0.5),
                              background=False, adopt_matchers=[f'namespace="{ns}"'])
    second.send([])
    assert set(second.active()) == {(ns, "trainer-0")}
    time.sleep(0.6)
    second.send([])
    assert second.flush(10)
    assert alerts_at(local_alertmanager.url, ns) == []
    assert len(alerts_at(local_alertmanager.url, f"{ns}-other")) == 1  # not its scope
