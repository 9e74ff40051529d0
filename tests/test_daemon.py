"""The daemon loop: hot reload, at-least-once commits, probes, SIGTERM, the embedded source."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detector.models.store import CARD, card_digest, promote
from detector.pipeline import default_model_dir
from detector.runtime.build import make_engine
from detector.runtime.daemon import Daemon
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.runtime.models import ModelWatcher
from detector.settings import LocalSourceSettings, Settings
from detector.sources.base import Delivery, SourceStatus
from detector.sources.local import LocalSource, read_proc

ROOT = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("podguard.test.daemon")


class StepSource:
    """A real implementation of the Source contract over generated samples: each poll
    delivers one 15-s scrape of ``pods`` pods and advances its clock by 15 s."""

    name = "steps"

    def __init__(self, pods: int, t0: float) -> None:
        self.pods = pods
        self.t = t0
        self.n = 0
        self.committed: list[Any] = []

    def start(self) -> None:
        pass

    def poll(self, timeout: float) -> Delivery:
        d = Delivery(messages=1, token=self.n)
        for p in range(self.pods):
            d.samples.append(self.t, "ml", f"p{p}", "main", "n1",
                             "container_memory_working_set_bytes", 1e9 + p)
        self.n += 1
        self.t += 15.0
        return d

    def commit(self, tokens: Sequence[Any]) -> None:
        self.committed.extend(tokens)

    def now(self) -> float:
        return self.t

    def clock_rate(self) -> float:
        return 1.0

    def status(self) -> SourceStatus:
        return SourceStatus(up=True, caught_up=True)

    def close(self, timeout: float = 5.0) -> None:
        pass


def _created(version: str) -> float:
    """The creation time _model_root writes into ``version``'s card (v1, v2, ...: distinct)."""
    return 1_780_000_000.0 + 86400.0 * int(version.lstrip("v"))


def _model_root(tmp: Path, *versions: str) -> Path:
    root = tmp / "models"
    src = default_model_dir()
    src = src / (src / "current").read_text().strip() if (src / "current").exists() else src
    for v in versions:
        shutil.copytree(src, root / v)
        card = json.loads((root / v / CARD).read_text())
        card["version"] = v
        card["created"] = datetime.fromtimestamp(_created(v), UTC).isoformat()
        if "card_sha256" in card:
            card["card_sha256"] = card_digest(card)  # re-sealed: a deliberate new card
        (root / v / CARD).write_text(json.dumps(card))
    promote(root, versions[0])
    return root


def test_hot_reload_keeps_windows_and_debouncing_state_and_refuses_a_broken_model(
        tmp_path: Path) -> None:
    root = _model_root(tmp_path, "v1", "v2", "v3")
    settings = Settings.model_validate({"windows": {"horizon_s": 3600, "step_s": 60},
                                        "runtime": {"lateness_s": 0.0}})
    watcher = ModelWatcher(root, detection=settings.detection, logger=LOG, watch_s=0.01)
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry, StateView(), process=False)
    source = StepSource(pods=5, t0=1_800_000_000.0)
    daemon = Daemon(settings=settings, source=source, pipeline=watcher.load(),
                    engine=make_engine(settings), sinks=[], metrics=metrics, logger=LOG,
                    models=watcher)
    assert daemon.pipeline.version == "v1" and not daemon.ready()[0]
    created = "podguard_model_created_timestamp_seconds"
    assert registry.get_sample_value(created) == _created("v1")
    for _ in range(40):
        daemon.turn()
    engine = daemon.engine
    held = engine.state_size()
    assert held["pods"] == 5 and daemon.ready()[0]
    streaks = daemon.pipeline._pods
    assert len(streaks) == 5
    # at-least-once: every delivery folded before a step was committed after it
    assert source.committed and source.committed == sorted(source.committed)
    assert max(source.committed) >= source.n - 5

    promote(root, "v2")
    for _ in range(400):
        daemon.turn()
        if daemon.pipeline.version == "v2":
            break
        watcher.wait_idle(5)
    assert daemon.pipeline.version == "v2"
    assert daemon.engine is engine and engine.state_size()["pods"] == 5
    assert daemon.pipeline._pods is streaks  # debouncing state carried over
    assert registry.get_sample_value("podguard_model_info", {"version": "v2"}) == 1.0
    assert registry.get_sample_value("podguard_model_info", {"version": "v1"}) is None
    assert registry.get_sample_value(created) == _created("v2")  # updated on hot reload
    assert registry.get_sample_value("podguard_model_reloads_total", {"outcome": "ok"}) == 1

    # a tampered bundle is refused; v2 keeps scoring
    trend = root / "v3" / "trend.json"
    trend.write_text(trend.read_text().replace('"u0"', '"u0" ', 1))
    (root / "current").write_text("v3\n")
    for _ in range(400):
        daemon.turn()
        if registry.get_sample_value("podguard_model_reloads_total", {"outcome": "failed"}):
            break
        watcher.wait_idle(5)
    assert registry.get_sample_value("podguard_model_reloads_total", {"outcome": "failed"}) == 1
    assert daemon.pipeline.version == "v2"
    assert registry.get_sample_value(created) == _created("v2")  # the refused v3 changes nothing
    n = daemon.summary.evaluations
    for _ in range(10):
        daemon.turn()
    assert daemon.summary.evaluations > n  # still scoring
    assert (registry.get_sample_value("podguard_windows_scored_total") or 0) > 0


def test_a_card_without_creation_time_still_loads_and_exports_no_age(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _model_root(tmp_path, "v1")
    card = json.loads((root / "v1" / CARD).read_text())
    del card["created"]  # the card is outside the files' checksums: the bundle still verifies
    if "card_sha256" in card:
        card["card_sha256"] = card_digest(card)  # re-sealed: a card written without the time
    (root / "v1" / CARD).write_text(json.dumps(card))
    settings = Settings()
    watcher = ModelWatcher(root, detection=settings.detection, logger=LOG)
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        Daemon(settings=settings, source=StepSource(pods=1, t0=1_800_000_000.0),
               pipeline=watcher.load(), engine=make_engine(settings), sinks=[],
               metrics=DaemonMetrics(registry, StateView(), process=False), logger=LOG,
               models=watcher)
    assert watcher.created_ts is None and "creation time unknown" in caplog.text
    assert registry.get_sample_value("podguard_model_created_timestamp_seconds") is None
    assert registry.get_sample_value("podguard_model_info", {"version": "v1"}) == 1.0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_probes_and_graceful_sigterm_of_the_real_process(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("sources:\n  local:\n    healthy_workloads: 0\n    leaky_workloads: 0\n"
                   "runtime:\n  grace_period_s: 5\n")
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "detector", "run", "--config", str(cfg),
                                 "--out", str(tmp_path / "out")],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"serving /metrics' in line:
                    url = json.loads(line)["url"]
            assert proc.poll() is None, log.read_text()
            time.sleep(0.3)
        assert url, log.read_text()
        assert _get(url + "/healthz")[0] == 200
        code, body = _get(url + "/readyz")
        assert code == 503 and "waiting for data" in body  # no workload: no data yet
        code, text = _get(url + "/metrics")
        assert code == 200 and 'podguard_model_info{version="default-' in text
        assert "podguard_scoring_duration_seconds_bucket" in text
        assert _get(url + "/nope")[0] == 404
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 5 + 2  # within the grace period (plus start-up slack)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    stopped = [x for x in lines if x["msg"] == "daemon stopped"]
    assert stopped and stopped[0]["reason"] == "signal SIGTERM"
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)


@pytest.mark.slow
def test_local_source_samples_real_workloads_and_kills_one_at_its_limit() -> None:
    s = LocalSourceSettings(healthy_workloads=1, leaky_workloads=1, leak_after_s=0,
                            leak_bytes_per_s=40 * 2**20, steps_per_s=4,
                            memory_limit_bytes=1200 * 2**20, sample_interval_s=0.5)
    src = LocalSource(s, logger=LOG)
    src.start()
    try:
        seen: dict[str, list[tuple[float, float]]] = {}
        restarts: dict[str, float] = {}
        oom_flag: dict[str, float] = {}
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            d = src.poll(0.5)
            c = d.samples
            for ts, pod, m, v in zip(c.timestamp, c.pod, c.metric, c.value):
                if m == "container_memory_working_set_bytes":
                    seen.setdefault(pod, []).append((ts, v))
                if m == "kube_pod_container_status_restarts_total":
                    restarts[pod] = v
                if m == "kube_pod_container_status_last_terminated_reason_oomkilled":
                    oom_flag[pod] = v
            if (restarts.get("leaky-trainer-0", 0) >= 1 and len(seen.get("trainer-0", [])) > 20
                    and "leaky-trainer-0" in oom_flag):
                break
        assert restarts.get("leaky-trainer-0", 0) >= 1, "the leaky workload was never OOM-killed"
        assert restarts.get("trainer-0") == 0
        # the kubelet's last terminated reason, as kube-state-metrics exports it: OOMKilled
        # after the kill, no series for a container that never ended
        assert oom_flag == {"leaky-trainer-0": 1.0}, oom_flag
        leaky = src.workloads[0]
        assert leaky.oom_kills and leaky.leaky
        healthy = [v for _, v in seen["trainer-0"]][-5:]  # torch imported by now
        assert min(healthy) > 100 * 2**20 and max(healthy) < 1200 * 2**20
        stamps = [t for t, _ in seen["trainer-0"]]
        # the compressed clock: 0.5 real seconds between samples are 30 model seconds
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
        assert 25 < gaps[len(gaps) // 2] < 40
        assert src.real_seconds(60.0) == 1.0
        pid = src.workloads[1].proc.pid  # type: ignore[union-attr]
        stats = read_proc(pid)
        assert stats is not None and stats[2] > 0
    finally:
        src.close(timeout=10)
    assert all(w.proc is None or w.proc.poll() is not None for w in src.workloads)
