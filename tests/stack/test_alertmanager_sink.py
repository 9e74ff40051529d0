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


def _by_severity(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["labels"]["severity"]: a for a in alerts}


def test_escalation_adds_a_critical_alert_and_keeps_the_first_one_unchanged(
        local_alertmanager: AlertmanagerHandle, ns: str) -> None:
    """One incident, one label set: the time to OOM falling under an hour fires a second
    alert (same labels, severity=critical) beside the warning one, which keeps firing with
    its labels and startsAt; what changed is in the annotations; the escalation is sticky."""
    sink = AlertmanagerSink([local_alertmanager.url], settings=settings(), background=False,
                            container_of=lambda n, p: "main")
    sink.send([verdict(ns, tto=20 * 3600.0)])
    assert sink.flush(10)
    first = alerts_at(local_alertmanager.url, ns)
    assert [a["labels"]["severity"] for a in first] == ["warning"]
    assert first[0]["annotations"]["time_to_oom_seconds"] == "72000"
    sink.send([verdict(ns, tto=600.0)])
    assert sink.flush(10)
    got = _by_severity(alerts_at(local_alertmanager.url, ns))
    assert set(got) == {"warning", "critical"}
    base = {k: v for k, v in first[0]["labels"].items() if k != "severity"}
    for sev, a in got.items():
        assert a["labels"] == {**base, "severity": sev}  # identity: only severity differs
        assert a["annotations"]["time_to_oom_seconds"] == "600"  # the change: annotations
        assert a["annotations"]["time_to_oom_low_seconds"] == "360"
        assert a["annotations"]["time_to_oom_high_seconds"] == "1080"
        assert a["annotations"]["leak_rate_bytes_per_second"] == "30000"
        assert a["annotations"]["score"] == "2.5" and a["annotations"]["threshold"] == "1.06"
    assert got["warning"]["startsAt"] == first[0]["startsAt"]  # never resolved, not re-fired
    assert got["warning"]["fingerprint"] == first[0]["fingerprint"]
    sink.send([verdict(ns, tto=5 * 3600.0)])  # better again: the critical alert stays
    assert sink.flush(10)
    assert set(_by_severity(alerts_at(local_alertmanager.url, ns))) == {"warning", "critical"}
    assert [x["severity"] for x in sink.alerts()[(ns, "trainer-0")]] == ["warning", "critical"]
    assert sink.active()[(ns, "trainer-0")]["severity"] == "critical"
    # the remediation escalating (checkpoint not acknowledged) raises another incident
    other = f"{ns}-b"
    sink.send([verdict(other)])
    sink.escalate(other, "trainer-0", "checkpoint request r-1.1 not acknowledged within 5 min")
    assert sink.flush(10)
    esc = _by_severity(alerts_at(local_alertmanager.url, other))
    assert set(esc) == {"warning", "critical"}
    assert esc["critical"]["annotations"]["remediation"].startswith("checkpoint request r-1.1")
    sink.send([verdict(other, tto=30 * 3600.0)])  # later verdicts keep the escalation
    assert sink.active()[(other, "trainer-0")]["severity"] == "critical"
    # recovery resolves every alert of the incident together
    for _ in range(2):
        sink.send([verdict(ns, anomaly=False)])
    assert sink.flush(10)
    assert alerts_at(local_alertmanager.url, ns) == []


def test_a_slow_leak_starts_at_info_and_the_container_label_never_changes(ns: str) -> None:
    names = iter(["main", None, "other"])
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=settings(), background=False,
                            container_of=lambda n, p: next(names))
    sink.send([verdict(ns, tto=30 * 3600.0)])
    sink.send([verdict(ns, tto=10 * 3600.0)])
    sink.send([verdict(ns, tto=20 * 60.0)])
    assert sink.alerts()[(ns, "trainer-0")] == [
        {"alertname": "PodMemoryLeak", "namespace": ns, "pod": "trainer-0",
         "container": "main", "node": "node-a", "severity": sev}
        for sev in ("info", "warning", "critical")]
    sink.send([verdict(ns, kind="drift")])  # another kind: the leak incident ends
    assert [x["alertname"] for x in sink.alerts()[(ns, "trainer-0")]] == ["PodPreFailureDrift"]
    queued = list(sink.targets[0].pending.values())
    now = datetime.now().astimezone().timestamp()
    ends = {(a["labels"]["alertname"], a["labels"]["severity"]): datetime.fromisoformat(
        a["endsAt"].replace("Z", "+00:00")).timestamp() for a in queued}
    assert set(ends) == {("PodMemoryLeak", "info"), ("PodMemoryLeak", "warning"),
                         ("PodMemoryLeak", "critical"), ("PodPreFailureDrift", "warning")}
    assert all(ends[("PodMemoryLeak", s)] <= now for s in ("info", "warning", "critical"))
    assert ends[("PodPreFailureDrift", "warning")] > now + 200  # firing


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
    sink.send([verdict(ns, "p4", tto=2 * 3600.0)])  # a newer state of a queued alert replaces it
    assert len(t.pending) == 3
    assert [a["annotations"]["time_to_oom_seconds"] for a in t.pending.values()
            if a["labels"]["pod"] == "p4"] == ["7200"]


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


# ============================================================================ the shipped route


class _Webhook:
    """Records Alertmanager's webhook notifications (path -> payloads), on 127.0.0.1."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.got.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def notifications(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for pth, p in self.got if pth == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ROUTE_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "alertmanager" / \
    "route-example.yml"


class _RouteExampleAlertmanager(Alertmanager):
    """The real Alertmanager running deploy/alertmanager/route-example.yml as shipped, but
    its placeholder webhooks pointed at a local recorder and its waits shortened."""

    def __init__(self, webhook: str) -> None:
        super().__init__()
        self.webhook = webhook

    def _config(self, webhook: str | None) -> str:
        import yaml

        cfg = yaml.safe_load(ROUTE_EXAMPLE.read_text())
        for r in cfg["receivers"]:
            for w in r.get("webhook_configs", []):
                w["url"] = f"{self.webhook}/{r['name']}"
                w["send_resolved"] = True

        def fast(route: dict[str, Any]) -> None:
            for k in ("group_wait", "group_interval"):
                if k in route:
                    route[k] = "1s"
            for child in route.get("routes", []):
                fast(child)

        fast(cfg["route"])
        return yaml.safe_dump(cfg)


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _alerts_of(notes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["status"], a["labels"]["severity"]) for n in notes for a in n["alerts"]]


def test_escalation_through_the_shipped_route_is_one_group_without_resolve_or_refire(
        tmp_path: Path, ns: str) -> None:
    """The real Alertmanager with the shipped route and inhibit rules: a warning incident
    escalating to critical pages once, stays one group in the team's channel, the warning
    alert is muted by the critical one (not resolved, not re-fired), and the whole incident
    resolves when the pod recovers."""
    hook = _Webhook()
    am = _RouteExampleAlertmanager(hook.url)
    am.prepare()
    am.start(tmp_path)
    sink = AlertmanagerSink([str(am.url(tmp_path))], settings=settings(resend_interval_s=0.5),
                            background=False, container_of=lambda n, p: "main")
    url = str(am.url(tmp_path))
    try:
        sink.send([verdict(ns, tto=20 * 3600.0)])
        assert sink.flush(10)
        _wait(lambda: hook.notifications("/ml-platform"), 30, "the warning notification")
        assert _alerts_of(hook.notifications("/ml-platform")) == [("firing", "warning")]
        assert hook.notifications("/ml-platform-pager") == []  # a warning does not page
        started = alerts_at(url, ns)[0]["startsAt"]
        for tto in (900.0, 600.0, 300.0):  # escalates, then the annotations keep changing
            sink.send([verdict(ns, tto=tto)])
            assert sink.flush(10)
            time.sleep(0.6)
        pages = _wait(lambda: hook.notifications("/ml-platform-pager"), 30, "the page")
        got = _by_severity(alerts_at(url, ns))
        assert set(got) == {"warning", "critical"}
        assert got["warning"]["status"]["state"] == "suppressed"  # muted by the inhibit rule
        assert got["warning"]["status"]["inhibitedBy"] == [got["critical"]["fingerprint"]]
        assert got["warning"]["startsAt"] == started and got["critical"]["status"]["state"] \
            == "active"
        s = requests.Session()
        s.trust_env = False
        groups = [g for g in s.get(f"{url}/api/v2/alerts/groups",
                                   params={"filter": f'namespace="{ns}"'}, timeout=10).json()
                  if g["receiver"]["name"] == "ml-platform"]
        assert len(groups) == 1, groups  # one group holds the incident
        assert sorted(a["labels"]["severity"] for a in groups[0]["alerts"]) == [
            "critical", "warning"]
        _wait(lambda: ("firing", "critical") in _alerts_of(hook.notifications("/ml-platform")),
              30, "the critical alert in the team's group")
        time.sleep(2.5)  # several group_intervals while the annotations change
        team = hook.notifications("/ml-platform")
        assert {n["groupKey"] for n in team} == {team[0]["groupKey"]}  # never a new group
        assert all(st == "firing" for st, _ in _alerts_of(team + pages)), _alerts_of(team)
        assert {sev for _, sev in _alerts_of(pages)} == {"critical"}
        # the pod recovers: everything of the incident resolves, in the same group
        for _ in range(2):
            sink.send([verdict(ns, anomaly=False)])
        assert sink.flush(10)
        _wait(lambda: ("resolved", "critical") in _alerts_of(
            hook.notifications("/ml-platform")), 30, "the resolved notification")
        assert alerts_at(url, ns) == []
        team = hook.notifications("/ml-platform")
        assert {n["groupKey"] for n in team} == {team[0]["groupKey"]}
    finally:
        sink.close()
        am.stop(tmp_path)
        hook.close()


def test_a_restarted_sink_adopts_an_escalated_incident_whole(
        local_alertmanager: AlertmanagerHandle, ns: str) -> None:
    """Both alerts of an escalated incident are adopted as one incident: re-sent with their
    labels and startsAt unchanged, not escalated twice, and resolved together."""
    first = AlertmanagerSink([local_alertmanager.url], settings=settings(), background=False)
    first.send([verdict(ns, tto=20 * 3600.0)])
    first.send([verdict(ns, tto=600.0)])
    assert first.flush(10)
    before = _by_severity(alerts_at(local_alertmanager.url, ns))
    assert set(before) == {"warning", "critical"}
    second = AlertmanagerSink([local_alertmanager.url], settings=settings(resend_interval_s=0.1),
                              background=False, adopt_matchers=[f'namespace="{ns}"'])
    second.send([])
    assert [a["severity"] for a in second.alerts()[(ns, "trainer-0")]] == ["warning", "critical"]
    time.sleep(0.2)
    second.send([verdict(ns, tto=500.0)])  # the incident goes on under the new process
    second.escalate(ns, "trainer-0", "blocked")  # already critical: nothing new fires
    assert second.flush(10)
    after = _by_severity(alerts_at(local_alertmanager.url, ns))
    assert set(after) == {"warning", "critical"}
    for sev in after:
        assert after[sev]["labels"] == before[sev]["labels"]
        assert after[sev]["startsAt"] == before[sev]["startsAt"]
    assert after["critical"]["annotations"]["time_to_oom_seconds"] == "500"
    for _ in range(2):
        second.send([verdict(ns, anomaly=False)])
    assert second.flush(10)
    assert alerts_at(local_alertmanager.url, ns) == []
