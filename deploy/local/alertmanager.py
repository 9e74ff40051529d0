"""Alertmanager of the local stack: Debian's ``prometheus-alertmanager`` started by hand.

It listens on 127.0.0.1 on a port chosen at start (kept across restarts, recorded in
``<state>/alertmanager.json``), with gossip disabled (``--cluster.listen-address=``) and its
configuration and silences/notification log under ``<state>/alertmanager/``. Ready means the
v2 API answers ``GET /api/v2/alerts`` with a JSON list.

By default alerts are grouped by ``alertname`` (``group_by=("...",)``: each alert its own
group) and kept but sent nowhere; :meth:`Alertmanager.set_webhook`
points the default receiver at a webhook on 127.0.0.1 (e.g. a test's HTTP server).

``Alertmanager(web=WebSecurity(...))`` starts it with ``--web.config.file``: HTTPS with a
test CA, optionally client certificates and basic auth (:mod:`deploy.local.web`).

Used by :mod:`deploy.local.stack` (CLI) and ``tests/support/stack_fixtures.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from deploy.local import _proc
from deploy.local import web as web_config
from deploy.local._proc import LOOPBACK, StackError
from deploy.local._service import ServiceStatus
from deploy.local.stack import (
    atomic_write,
    ensure_debian_package,
    foreign_instances,
    http,
    http_json,
    process_status,
    read_record,
    reuse_port,
    write_record,
)
from deploy.local.web import WebFiles, WebSecurity

_BINARY = "prometheus-alertmanager"  # Debian's name for the alertmanager binary


class Alertmanager:
    """The Alertmanager of the local stack (implements ``Service``)."""

    name = "alertmanager"
    package = "prometheus-alertmanager"

    def __init__(self, *, ready_timeout: float = 60.0, group_wait: str = "1s",
                 group_interval: str = "1s", repeat_interval: str = "1h",
                 group_by: tuple[str, ...] = ("alertname",),
                 web: WebSecurity | None = None) -> None:
        self.ready_timeout = ready_timeout
        self.web = web  # TLS / client certificates / basic auth; None: plain HTTP
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.group_by = group_by  # ("...",): every alert its own group (own notifications)

    @staticmethod
    def home(state: Path) -> Path:
        return state / "alertmanager"

    def url(self, state: Path) -> str | None:
        rec = read_record(state, self.name)
        port = rec.get("port")
        if not isinstance(port, int):
            return None
        web = WebFiles.from_record(rec)
        return f"{web.scheme if web else 'http'}://{LOOPBACK}:{port}"

    def web_files(self, state: Path) -> WebFiles | None:
        """CA, client certificate, user and password file of a protected instance."""
        return WebFiles.from_record(read_record(state, self.name))

    def _client(self, state: Path) -> dict[str, Any]:
        web = self.web_files(state)
        return {} if web is None else {"context": web.context(), "headers": web.headers()}

    def _url(self, state: Path) -> str:
        url = self.url(state)
        if url is None:
            raise StackError(f"alertmanager was never started in {state}; "
                             f"run: python -m deploy.local up alertmanager")
        return url

    # ------------------------------------------------------------------ Service

    def prepare(self) -> None:
        binary = ensure_debian_package(self.package, _BINARY)
        others = foreign_instances(binary, f"--web.listen-address={LOOPBACK}:")
        if others:
            print(f"warning: an Alertmanager not started by podguard runs as PID "
                  f"{', '.join(map(str, others))} (systemd or the package's init script?); "
                  f"it is not used; stop it with: service prometheus-alertmanager stop",
                  file=sys.stderr)

    def start(self, state: Path) -> None:
        if _proc.alive(_proc.pid_of(self.name, state)):
            if self._ready(state):
                return
            self.stop(state)
        binary = ensure_debian_package(self.package, _BINARY)
        record = read_record(state, self.name)
        port = reuse_port(record.get("port"))
        data = self.home(state) / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.home(state) / "alertmanager.yml"
        webhook = record.get("webhook")
        atomic_write(config, self._config(webhook if isinstance(webhook, str) else None))
        web = web_config.write(self.home(state), self.web) if self.web else None
        scheme = web.scheme if web else "http"
        rec: dict[str, Any] = {"port": port, "url": f"{scheme}://{LOOPBACK}:{port}",
                               "webhook": webhook, "version": _version(binary)}
        if web is not None:
            rec["web"] = web.to_record()
        write_record(state, self.name, rec)
        _proc.start(self.name, [
            binary,
            f"--config.file={config}",
            f"--storage.path={data}",
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--web.external-url={scheme}://{LOOPBACK}:{port}/",
            "--cluster.listen-address=",  # no gossip port at all
            "--log.level=info",
            *([f"--web.config.file={web.web_config}"] if web else []),
        ], state)
        try:
            _proc.wait_until(lambda: self._ready(state), timeout=self.ready_timeout,
                             what="GET /api/v2/alerts answering", name=self.name, state=state)
        except StackError:
            self.stop(state)  # leave nothing half-started behind
            raise

    def stop(self, state: Path) -> None:
        _proc.stop(self.name, state, grace=10.0)

    def status(self, state: Path) -> list[ServiceStatus]:
        return [process_status(self.name, state, ready=lambda: self._ready(state),
                               url=lambda rec: str(rec.get("url", "")),
                               not_ready="API not answering")]

    def env(self, state: Path) -> dict[str, str]:
        url = self.url(state)
        return {"PODGUARD_ALERTMANAGER_URL": url} if url else {}

    # ------------------------------------------------------------------ extras for tests

    def restart(self, state: Path) -> None:
        self.stop(state)
        self.start(state)

    def set_webhook(self, state: Path, url: str | None) -> None:
        """Send notifications of the default route to ``url`` (on 127.0.0.1), or nowhere.

        Takes effect at once when running (``POST /-/reload``) and survives restarts.
        """
        if url is not None:
            host = urllib.parse.urlsplit(url).hostname
            if host not in (LOOPBACK, "localhost"):
                raise ValueError(f"webhook {url!r}: the local stack sends to 127.0.0.1 only")
        record = read_record(state, self.name)
        record["webhook"] = url
        write_record(state, self.name, record)
        atomic_write(self.home(state) / "alertmanager.yml", self._config(url))
        if _proc.alive(_proc.pid_of(self.name, state)):
            status, body = http("POST", self._url(state) + "/-/reload", timeout=30,
                                **self._client(state))
            if status != 200:
                raise StackError(f"alertmanager reload failed ({status}): "
                                 f"{body.decode(errors='replace')}")

    def alerts(self, state: Path, **filters: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` filtered by exact label matches."""
        qs = urllib.parse.urlencode(
            [("filter", f'{k}="{v}"') for k, v in filters.items()], doseq=True)
        answer = http_json("GET", f"{self._url(state)}/api/v2/alerts?{qs}",
                           **self._client(state))
        return list(answer) if isinstance(answer, list) else []

    # ------------------------------------------------------------------ internals

    def _config(self, webhook: str | None) -> str:
        receiver: dict[str, Any] = {"name": "default"}
        if webhook:
            receiver["webhook_configs"] = [{"url": webhook, "send_resolved": True}]
        config = {
            "route": {"receiver": "default", "group_by": list(self.group_by),
                      "group_wait": self.group_wait, "group_interval": self.group_interval,
                      "repeat_interval": self.repeat_interval},
            "receivers": [receiver],
        }
        return "# written by deploy/local/alertmanager.py\n" + yaml.safe_dump(
            config, sort_keys=False)

    def _ready(self, state: Path) -> bool:
        url = self.url(state)
        if url is None:
            return False
        try:
            status, body = http("GET", url + "/api/v2/alerts", timeout=3.0,
                                **self._client(state))
        except OSError:
            return False
        return status == 200 and body.lstrip().startswith(b"[")


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"version (\S+)", out.stdout + out.stderr)
    return f"alertmanager {m.group(1)}" if m else ""
