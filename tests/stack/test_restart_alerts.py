"""A restarted daemon neither loses nor repeats alerts, end to end (issue 14, restart).

Real Kafka (the session's broker), a real Alertmanager of this test's own (started by
``deploy/local/alertmanager.py``, every alert its own notification group, group_wait 0 s) that
notifies a webhook receiver on 127.0.0.1 run here, and ``podguard run`` as a child process
fed by a producer thread (samples stamped with the wall clock, as a remote-write adapter
sends them). The daemon flags a leaking pod and its alert reaches Alertmanager and the
webhook; it is killed with SIGKILL (by PID) and started again. While it is down a second pod
shows up in the stream already leaking. Then:

- the first alert is still the same alert: same labels and fingerprint, ``startsAt``
  unchanged, never resolved in between (no resolve-then-fire flap);
- the webhook got exactly one firing notification for it and no resolved one (no duplicate);
- the pod that began leaking while the daemon was down is alerted after the restart;
- the restarted daemon judged (non-stale verdicts) within a minute of its start.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deploy.local._proc import StackError
from deploy.local.alertmanager import Alertmanager
from detector.sources.kafka_codec import encode_batch
from tests.stack.test_sources_kafka import _producer, _topics, _wait, scrape
from tests.support.daemons import start_podguard_run
from tests.support.stack_fixtures import AlertmanagerHandle, KafkaHandle, ServiceHandle

pytestmark = [pytest.mark.stack]

LOG = logging.getLogger("podguard.test.restart_alerts")
GIB = 2.0**30
LIMIT = 4 * GIB
NODE = "node-a"
STEP = 15.0  # seconds between two history samples of a pod


class Webhook:
    """Alertmanager's webhook receiver on 127.0.0.1: keeps every notification."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        notes, lock = self.notes, self.lock

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    notes.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def about(self, pod: str) -> list[tuple[str, dict[str, Any]]]:
        """(notification status, the pod's alert in it) of every notification naming pod."""
        with self.lock:
            return [(n.get("status", ""), a) for n in self.notes for a in n.get("alerts", [])
                    if a.get("labels", {}).get("pod") == pod]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[AlertmanagerHandle, Webhook]]:
    """A real Alertmanager of this test's own, notifying a webhook receiver run here."""
    hook = Webhook()
    service = Alertmanager(group_wait="0s", group_interval="1s", repeat_interval="1h",
                           group_by=("...",))
    state = tmp_path / "am"
    state.mkdir()
    try:
        service.prepare()
        service.set_webhook(state, hook.url)  # written to the config read at start
        service.start(state)
    except StackError as e:
        hook.close()
        pytest.fail(f"the local alertmanager could not start: {e} (its log: "
                    f"{state / 'alertmanager.log'}); to install what it needs: make prepare",
                    pytrace=False)
    try:
        yield ServiceHandle(service, state), hook
    finally:
        service.stop(state)
        hook.close()


METRICS = ("container_memory_working_set_bytes", "container_memory_rss",
           "container_cpu_usage_seconds_total", "container_spec_memory_limit_bytes",
           "kube_pod_container_status_restarts_total")


class Feed:
    """The pods' telemetry: history before now, then a producer thread stamping samples with
    the wall clock every second. Leaking pods grow ``rate`` of the limit per hour from
    their start; the others stay flat."""

    def __init__(self, kafka: KafkaHandle, topic: str) -> None:
        self.topic = topic
        self.producer = _producer(kafka)
        self.pods: dict[str, tuple[float, float]] = {}  # pod -> (start ts, GiB per hour)
        self.rng = random.Random(11)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.cpu: dict[str, float] = {}

    def _message(self, pod: str, ts: float) -> bytes:
        start, rate = self.pods[pod]
        ws = (1.0 + rate * (ts - start) / 3600) * GIB * (1 + self.rng.gauss(0, 0.002))
        labels = {"namespace": "ml", "pod": pod, "container": "main", "node": NODE}
        values = (ws, 0.9 * ws, 0.5 * (ts - start), LIMIT, 0.0)
        return encode_batch([(m, labels, [(ts, v)]) for m, v in zip(METRICS, values,
                                                                     strict=True)])

    def add(self, pod: str, *, history_s: float, rate: float) -> None:
        """Pod ``pod`` started ``history_s`` ago; its samples up to now are sent at once."""
        now = time.time()
        with self.lock:
            self.pods[pod] = (now - history_s, rate)
            for k in range(int(history_s // STEP) + 1):
                ts = now - history_s + k * STEP
                self.producer.send(self.topic, key=f"ml/{pod}".encode(),
                                   value=self._message(pod, ts))
        self.producer.flush(timeout=60)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                now = time.time()
                for pod in self.pods:
                    self.producer.send(self.topic, key=f"ml/{pod}".encode(),
                                       value=self._message(pod, now))
            self.producer.flush(timeout=30)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.producer.close(timeout=10)


def _env(cfg: Path) -> dict[str, str]:
    """``podguard run``'s node, and no cluster (alerts only)."""
    return {"NODE_NAME": NODE, "KUBECONFIG": str(cfg.parent / "no-kubeconfig")}


def _judged(url: str) -> float:
    """Non-stale verdicts the daemon handed over so far."""
    try:
        m = scrape(url)
    except OSError:
        return 0.0
    return sum(v for k, v in m.items() if k.startswith("podguard_verdicts_total{")
               and 'kind="stale"' not in k)


def _active(am: AlertmanagerHandle, pod: str) -> list[dict[str, Any]]:
    return [a for a in am.alerts(pod=pod) if a["status"]["state"] == "active"]


def test_a_restarted_daemon_neither_loses_nor_repeats_alerts(
        local_kafka: KafkaHandle, alertmanager: tuple[AlertmanagerHandle, Webhook],
        tmp_path: Path) -> None:
    am, hook = alertmanager
    topic, dead = _topics(local_kafka, 2)
    cfg = tmp_path / "podguard.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "windows": {"horizon_s": 3600, "step_s": 5, "pod_ttl_s": 7200},
        "sources": {"kind": "kafka", "kafka": {
            "bootstrap_servers": [local_kafka.bootstrap], "topic": topic,
            "group_id": f"pg-{uuid.uuid4().hex[:8]}", "dead_letter_topic": dead,
            "session_timeout_s": 6, "request_timeout_s": 10}},
        "alerting": {"alertmanager_urls": [am.url], "kubernetes_events": False,
                     "backoff_s": [0.5, 1]},
        "runtime": {"lateness_s": 0.2, "console": False, "verdicts_path": "",
                    "log_format": "json", "grace_period_s": 10},
        "diagnosis": {"enabled": False},
        "server": {"port": 0}}))
    feed = Feed(local_kafka, topic)
    feed.add("leak-a", history_s=3600, rate=1.4)  # OOM in ~70 min: a warning
    feed.add("steady-0", history_s=3600, rate=0.0)
    feed.add("steady-1", history_s=3600, rate=0.0)
    feed.thread.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        p1, _ = start_podguard_run(cfg, tmp_path / "p1.log", env=_env(cfg))
        procs.append(p1)
        _wait(lambda: bool(_active(am, "leak-a")) and bool(hook.about("leak-a")),
              "the first daemon's alert in Alertmanager and at the webhook", 60)
        before = _active(am, "leak-a")
        assert len(before) == 1, before
        first = before[0]
        assert first["labels"]["alertname"] == "PodMemoryLeak"
        assert not _active(am, "steady-0") and not _active(am, "steady-1")

        os.kill(p1.pid, signal.SIGKILL)  # no flush, no goodbye
        p1.wait(timeout=30)
        # while it is down: a pod shows up in the stream already leaking fast
        feed.add("late-b", history_s=2400, rate=2.0)

        started = time.monotonic()
        p2, url2 = start_podguard_run(cfg, tmp_path / "p2.log", env=_env(cfg))
        procs.append(p2)
        _wait(lambda: _judged(url2) > 0, "the restarted daemon to judge again", 60)
        judged_after = time.monotonic() - started
        _wait(lambda: bool(_active(am, "late-b")),
              "the alert of the pod that began leaking while the daemon was down", 60)
        # a few judged steps with the leak still positive, then look at what Alertmanager
        # and the webhook have seen
        n = _judged(url2)
        _wait(lambda: _judged(url2) >= n + 4 * len(feed.pods),
              "four more judged steps of the restarted daemon", 40)
        time.sleep(2.0)  # group_interval 1 s: a notification of a flap would have come

        after = _active(am, "leak-a")
        assert len(after) == 1, after
        assert after[0]["fingerprint"] == first["fingerprint"]
        assert after[0]["labels"] == first["labels"]
        assert after[0]["startsAt"] == first["startsAt"]  # the same incident, not a new one
        notes = hook.about("leak-a")
        assert all(s == "firing" for s, _ in notes), notes  # never resolved
        same = [s for s, a in notes if a.get("fingerprint") == first["fingerprint"]]
        assert same == ["firing"], notes  # one notification of it, no duplicate
        late = hook.about("late-b")
        assert [s for s, _ in late] == ["firing"], late
        assert not _active(am, "steady-0") and not _active(am, "steady-1")
        assert judged_after < 60
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(timeout=30) == 0
        log2 = (tmp_path / "p2.log").read_text()
        assert "resolved" not in "\n".join(
            line for line in log2.splitlines() if "leak-a" in line)
        print(f"restarted daemon judged again {judged_after:.1f} s after its start")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        feed.close()
