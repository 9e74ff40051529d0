"""The local Alertmanager, for real: the v2 alert API, webhook delivery, and the stack CLI."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.stack_fixtures import AlertmanagerHandle

pytestmark = [pytest.mark.stack]

ROOT = Path(__file__).resolve().parents[2]


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # loopback only, whatever proxy the environment names
    return s


def _alert(name: str, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, "namespace": "ml", "pod": "trainer-0",
                   "severity": "warning", **labels},
        "annotations": {"summary": "memory leak in trainer-0",
                        "description": "working set grows 12 MiB/min; time to OOM 42m"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
        "generatorURL": "http://127.0.0.1/podguard",
    }


def test_posted_alert_is_read_back_with_labels_and_annotations(
        local_alertmanager: AlertmanagerHandle) -> None:
    name = f"PodguardTest{uuid.uuid4().hex[:8]}"
    alert = _alert(name)
    resp = _session().post(f"{local_alertmanager.url}/api/v2/alerts", json=[alert], timeout=10)
    assert resp.status_code == 200, resp.text

    got = _session().get(f"{local_alertmanager.url}/api/v2/alerts",
                         params={"filter": f'alertname="{name}"'}, timeout=10).json()

    assert len(got) == 1
    assert got[0]["labels"] == alert["labels"]
    assert got[0]["annotations"] == alert["annotations"]
    assert got[0]["status"]["state"] == "active"
    assert local_alertmanager.alerts(alertname=name, pod="trainer-0")[0]["labels"] == \
        alert["labels"]
    assert local_alertmanager.alerts(alertname=name, pod="someone-else") == []


def test_alert_without_labels_is_rejected(local_alertmanager: AlertmanagerHandle) -> None:
    resp = _session().post(f"{local_alertmanager.url}/api/v2/alerts",
                           json=[{"annotations": {"summary": "no labels"}}], timeout=10)
    assert resp.status_code == 422  # the v2 API's answer to a schema violation
    assert "labels in body is required" in resp.json()["message"]


def test_webhook_receives_the_notification(local_alertmanager: AlertmanagerHandle) -> None:
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    name = f"PodguardHook{uuid.uuid4().hex[:8]}"
    try:
        local_alertmanager.set_webhook(f"http://127.0.0.1:{server.server_port}/hook")
        resp = _session().post(f"{local_alertmanager.url}/api/v2/alerts",
                               json=[_alert(name)], timeout=10)
        assert resp.status_code == 200, resp.text
        while True:  # notifications of other tests' alerts may come first
            note = received.get(timeout=30)
            alerts = [a for a in note["alerts"] if a["labels"]["alertname"] == name]
            if alerts:
                break
        assert note["status"] == "firing"
        assert alerts[0]["annotations"]["description"].endswith("time to OOM 42m")
    finally:
        local_alertmanager.set_webhook(None)
        server.shutdown()
        server.server_close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.local", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def test_cli_up_status_env_down_round_trip(tmp_path: Path) -> None:
    """The CLI on a stack of its own (Alertmanager only: the quickest service)."""
    env = dict(os.environ, PODGUARD_STACK_DIR=str(tmp_path / "stack"))
    try:
        up = _cli(env, "up", "alertmanager")
        assert up.returncode == 0, up.stderr
        assert f"stack dir: {tmp_path / 'stack'}" in up.stdout
        assert "alertmanager: started" in up.stdout

        again = _cli(env, "up", "alertmanager")
        assert again.returncode == 0 and "alertmanager: already running" in again.stdout

        status = _cli(env, "status", "alertmanager")
        assert status.returncode == 0, status.stdout + status.stderr
        row = next(line for line in status.stdout.splitlines()
                   if line.startswith("alertmanager"))
        _, url, ready, pid, rss, unit, *_ = row.split()
        assert url.startswith("http://127.0.0.1:") and ready == "yes"
        assert int(pid) > 0 and int(rss) > 0 and unit == "MiB"

        exported = _cli(env, "env", "alertmanager")
        assert exported.stdout == f"export PODGUARD_ALERTMANAGER_URL={url}\n"
        assert _session().get(f"{url}/api/v2/status", timeout=10).status_code == 200
    finally:
        down = _cli(env, "down", "alertmanager")
    assert down.returncode == 0, down.stderr
    after = _cli(env, "status", "alertmanager")
    assert after.returncode == 3 and "not running" in after.stdout
    with pytest.raises(requests.ConnectionError):
        _session().get(f"{url}/api/v2/status", timeout=5)


def test_cli_rejects_unknown_service_naming_the_known_ones(tmp_path: Path) -> None:
    env = dict(os.environ, PODGUARD_STACK_DIR=str(tmp_path / "stack"))
    res = _cli(env, "up", "grafana")
    assert res.returncode == 1
    assert "unknown service(s) grafana" in res.stderr and "prometheus" in res.stderr
