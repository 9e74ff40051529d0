"""Daemons for the tests: ``podguard run`` as a real child process, and the in-process
:class:`~detector.runtime.daemon.Daemon` built as ``podguard run`` builds it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from detector.pipeline import Pipeline
from detector.runtime.build import make_engine, make_source
from detector.runtime.daemon import Daemon
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.settings import Settings
from detector.sinks.base import Sink

ROOT = Path(__file__).resolve().parents[2]


def start_podguard_run(cfg: Path, log: Path, *, env: Mapping[str, str] | None = None,
                       timeout_s: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """``podguard run --config cfg`` as a child process (stdout+stderr to ``log``, extra
    ``env`` on top of this one's), and its /metrics URL once it serves it."""
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "detector", "run", "--config", str(cfg)],
                            stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT),
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"serving /metrics' in line:
                return proc, json.loads(line)["url"]
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"daemon did not serve /metrics in {timeout_s:.0f} s: "
                         f"{log.read_text()[-3000:]}")


def in_process_daemon(settings: Settings, sinks: Sequence[Sink], logger: logging.Logger,
                      ) -> Daemon:
    """The daemon on the embedded default model, its source and engine made from
    ``settings`` as ``podguard run`` makes them, no /metrics server."""
    return Daemon(settings=settings, source=make_source(settings, logger=logger),
                  pipeline=Pipeline.load(None), engine=make_engine(settings), sinks=list(sinks),
                  metrics=DaemonMetrics(CollectorRegistry(), StateView(), process=False),
                  logger=logger, poll_timeout_s=0.2)
