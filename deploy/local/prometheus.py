"""Prometheus of the local stack: Debian's ``prometheus`` started by hand on 127.0.0.1.

Layout in the state directory (``<state>/prometheus/``):

- ``prometheus.yml``: written at every start; scrapes itself and every target listed in
  ``file_sd/*.json`` every second (file_sd is re-read within a second of a change, no reload
  needed), and loads rule files from ``rules/*.yml`` (after :meth:`Prometheus.reload`);
- ``data/``: the TSDB. :meth:`Prometheus.backfill` writes historical blocks there with
  ``promtool tsdb create-blocks-from openmetrics``; Prometheus loads them when it starts.

Ready means a query answers with the ``up`` series of Prometheus's own scrape target, i.e. the
first scrape went through (``/-/ready`` answers seconds earlier). Stopping and starting again
keeps the port (recorded in ``<state>/prometheus.json``) and the data.

``Prometheus(web=WebSecurity(...))`` starts it with ``--web.config.file``: HTTPS with a test
CA, optionally client certificates and basic auth (:mod:`deploy.local.web`); the stack's own
requests (probe, query, reload, self-scrape) then use the CA and credentials it recorded.

Used by :mod:`deploy.local.stack` (CLI) and ``tests/support/stack_fixtures.py``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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

_JOB_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]*$")
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Series:
    """One time series for :func:`to_openmetrics`: samples are (unix seconds, value)."""

    name: str
    labels: Mapping[str, str]
    samples: Sequence[tuple[float, float]]
    help: str = ""
    type: str = "gauge"  # OpenMetrics type of the family: gauge, counter or unknown


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def to_openmetrics(series: Iterable[Series]) -> str:
    """OpenMetrics text with explicit timestamps, grouped by family and ended by ``# EOF``.

    The input of :meth:`Prometheus.backfill`. Samples of each series are sorted by time.
    """
    families: dict[str, list[Series]] = {}
    for s in series:
        if not _NAME_RE.match(s.name):
            raise ValueError(f"invalid metric name {s.name!r}")
        for k in s.labels:
            if not _LABEL_RE.match(k):
                raise ValueError(f"invalid label name {k!r} in series {s.name}")
        families.setdefault(s.name, []).append(s)
    lines: list[str] = []
    for name, members in families.items():
        kind = members[0].type
        if kind not in ("gauge", "counter", "unknown"):
            raise ValueError(f"unsupported OpenMetrics type {kind!r} for {name}")
        family = name.removesuffix("_total") if kind == "counter" else name
        if kind == "counter" and family == name:
            raise ValueError(f"counter {name} must end in _total")
        lines.append(f"# TYPE {family} {kind}")
        if members[0].help:
            lines.append(f"# HELP {family} {_escape(members[0].help)}")
        for s in members:
            lbl = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            head = f"{name}{{{lbl}}}" if lbl else name
            for ts, value in sorted(s.samples):
                lines.append(f"{head} {_number(value)} {ts:.3f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class Prometheus:
    """The Prometheus server of the local stack (implements ``Service``)."""

    name = "prometheus"
    package = "prometheus"

    def __init__(self, *, scrape_interval: str = "1s", ready_timeout: float = 60.0,
                 retention: str = "3650d", web: WebSecurity | None = None) -> None:
        self.scrape_interval = scrape_interval
        self.ready_timeout = ready_timeout
        self.retention = retention  # long: backfilled history must not be deleted
        self.web = web  # TLS / basic auth (--web.config.file); None: plain HTTP

    # ------------------------------------------------------------------ paths

    @staticmethod
    def home(state: Path) -> Path:
        return state / "prometheus"

    @classmethod
    def data_dir(cls, state: Path) -> Path:
        return cls.home(state) / "data"

    @classmethod
    def file_sd_dir(cls, state: Path) -> Path:
        """Target files (``<job>.json``) Prometheus watches; see :meth:`set_targets`."""
        return cls.home(state) / "file_sd"

    @classmethod
    def rules_dir(cls, state: Path) -> Path:
        """Rule files (``*.yml``) loaded at start and on :meth:`reload`."""
        return cls.home(state) / "rules"

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
            raise StackError(f"prometheus was never started in {state}; "
                             f"run: python -m deploy.local up prometheus")
        return url

    # ------------------------------------------------------------------ Service

    def prepare(self) -> None:
        prom = ensure_debian_package(self.package, "prometheus")
        ensure_debian_package(self.package, "promtool")
        others = foreign_instances(prom, f"--web.listen-address={LOOPBACK}:")
        if others:
            print(f"warning: a Prometheus not started by podguard runs as PID "
                  f"{', '.join(map(str, others))} (systemd or the package's init script?); "
                  f"it is not used; stop it with: service prometheus stop", file=sys.stderr)

    def start(self, state: Path) -> None:
        pid = _proc.pid_of(self.name, state)
        if _proc.alive(pid):
            if self._ready(state):
                return
            self.stop(state)
        binary = ensure_debian_package(self.package, "prometheus")
        port = reuse_port(read_record(state, self.name).get("port"))
        for d in (self.data_dir(state), self.file_sd_dir(state), self.rules_dir(state)):
            d.mkdir(parents=True, exist_ok=True)
        web = web_config.write(self.home(state), self.web) if self.web else None
        scheme = web.scheme if web else "http"
        record: dict[str, Any] = {"port": port, "url": f"{scheme}://{LOOPBACK}:{port}",
                                  "version": _version(binary), "started_at": time.time()}
        if web is not None:
            record["web"] = web.to_record()
        write_record(state, self.name, record)  # before the config: _config reads it
        config = self.home(state) / "prometheus.yml"
        atomic_write(config, self._config(state, port))
        web_args = [f"--web.config.file={web.web_config}"] if web else []
        _proc.start(self.name, [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir(state)}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--web.external-url={scheme}://{LOOPBACK}:{port}/",
            "--web.enable-lifecycle",
            "--web.enable-admin-api",
            "--log.level=info",
            *web_args,
        ], state)
        try:
            _proc.wait_until(lambda: self._probe(state), timeout=self.ready_timeout,
                             what='a query returning up{job="prometheus"}', name=self.name,
                             state=state)
        except StackError:
            self.stop(state)  # leave nothing half-started behind
            raise

    def stop(self, state: Path) -> None:
        _proc.stop(self.name, state, grace=20.0)

    def status(self, state: Path) -> list[ServiceStatus]:
        return [process_status(self.name, state, ready=lambda: self._ready(state),
                               url=lambda rec: str(rec.get("url", "")),
                               not_ready="not answering queries")]

    def env(self, state: Path) -> dict[str, str]:
        url = self.url(state)
        return {"PODGUARD_PROMETHEUS_URL": url} if url else {}

    # ------------------------------------------------------------------ extras for tests

    def restart(self, state: Path) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop(state)
        self.start(state)

    def reload(self, state: Path) -> None:
        """Re-read ``prometheus.yml`` and the rule files (``POST /-/reload``)."""
        status, body = http("POST", self._url(state) + "/-/reload", timeout=30,
                            **self._client(state))
        if status != 200:
            raise StackError(
                f"prometheus reload failed ({status}): {body.decode(errors='replace')}")

    def set_targets(self, state: Path, job: str, targets: Sequence[str],
                    labels: Mapping[str, str] | None = None) -> None:
        """Scrape ``targets`` (``host:port`` on 127.0.0.1) every scrape interval as ``job``.

        Written to ``file_sd/<job>.json``; works before start and while running (picked up
        within a second). Scrapes honour the exporter's own labels (``honor_labels``).
        """
        if not _JOB_RE.match(job):
            raise ValueError(f"job name {job!r} must match {_JOB_RE.pattern}")
        for t in targets:
            host = t.rsplit(":", 1)[0]
            if host not in (LOOPBACK, "localhost"):
                raise ValueError(f"target {t!r}: the local stack scrapes 127.0.0.1 only")
        group = {"targets": list(targets), "labels": {**(labels or {}), "job": job}}
        atomic_write(self.file_sd_dir(state) / f"{job}.json", json.dumps([group], indent=2))

    def remove_targets(self, state: Path, job: str) -> None:
        (self.file_sd_dir(state) / f"{job}.json").unlink(missing_ok=True)

    def query(self, state: Path, promql: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list of the answer."""
        qs = urllib.parse.urlencode({"query": promql})
        answer = http_json("GET", f"{self._url(state)}/api/v1/query?{qs}", timeout=timeout,
                           **self._client(state))
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise StackError(f"prometheus query {promql!r} failed: {answer}")
        result = answer["data"]["result"]
        return list(result) if isinstance(result, list) else []

    def wait_for_targets(self, state: Path, job: str, count: int = 1,
                         timeout: float = 30.0) -> None:
        """Wait until ``count`` targets of ``job`` have been scraped successfully."""
        _proc.wait_until(lambda: len(self.query(state, f'up{{job="{job}"}} == 1')) >= count,
                         timeout=timeout, what=f"{count} healthy target(s) of job {job}",
                         name=self.name, state=state)

    def backfill(self, state: Path, openmetrics: str | Path) -> list[str]:
        """Load historical samples (OpenMetrics text with timestamps, ending in ``# EOF``).

        ``openmetrics`` is the text itself (``str``) or a file (``Path``). Blocks are made
        with ``promtool tsdb create-blocks-from openmetrics`` and moved into the data
        directory. Meant to be called before :meth:`start`; if Prometheus is running it is
        stopped and started again (same port) so the new blocks are loaded at once.
        Returns the names of the new blocks.
        """
        promtool = ensure_debian_package(self.package, "promtool")
        work = self.home(state) / "backfill" / uuid.uuid4().hex
        work.mkdir(parents=True)
        try:
            if isinstance(openmetrics, Path):
                if not openmetrics.is_file():
                    raise StackError(f"backfill input {openmetrics} does not exist")
                src = openmetrics
            else:
                if not openmetrics.rstrip().endswith("# EOF"):
                    raise StackError("backfill input must be OpenMetrics text ending in '# EOF'")
                src = work / "input.om"
                src.write_text(openmetrics)
            out = work / "blocks"
            out.mkdir()
            proc = subprocess.run(
                [promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                 str(src), str(out)],
                capture_output=True, text=True, check=False, timeout=600,
            )
            if proc.returncode != 0:
                raise StackError(f"promtool could not backfill {src}: "
                                 f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
            blocks = sorted(p.name for p in out.iterdir() if p.is_dir())
            if not blocks:
                raise StackError(f"promtool made no block from {src} (no samples?)")
            was_running = _proc.alive(_proc.pid_of(self.name, state))
            if was_running:
                self.stop(state)
            self.data_dir(state).mkdir(parents=True, exist_ok=True)
            for b in blocks:
                (out / b).rename(self.data_dir(state) / b)
            if was_running:
                self.start(state)
            return blocks
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ internals

    def _config(self, state: Path, port: int) -> str:
        web = self.web_files(state)
        config = {
            "global": {"scrape_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "rule_files": [str(self.rules_dir(state) / "*.yml")],
            "scrape_configs": [
                {"job_name": "prometheus",
                 "static_configs": [{"targets": [f"{LOOPBACK}:{port}"]}],
                 **(web.scrape_config() if web else {})},
                {"job_name": "file_sd",
                 "honor_labels": True,
                 "file_sd_configs": [{"files": [str(self.file_sd_dir(state) / "*.json")],
                                      "refresh_interval": "1s"}]},
            ],
        }
        return "# written by deploy/local/prometheus.py at each start\n" + yaml.safe_dump(
            config, sort_keys=False)

    def _ready(self, state: Path) -> bool:
        try:
            return self._probe(state)
        except (OSError, StackError, ValueError, KeyError):
            return False

    def _probe(self, state: Path) -> bool:
        """A query answers with a successful scrape of Prometheus itself since this start.

        After a restart the last ``up`` sample of the previous run is still there, so the
        sample's own timestamp must be newer than the start of this process.
        """
        started = read_record(state, self.name).get("started_at")
        since = float(started) if isinstance(started, (int, float)) else 0.0
        result = self.query(state, 'up{job="prometheus"}[1m]', timeout=3.0)
        return any(float(ts) >= since and v == "1" for r in result for ts, v in r["values"])


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"version (\S+)", out.stdout + out.stderr)
    return f"{Path(binary).name} {m.group(1)}" if m else ""
