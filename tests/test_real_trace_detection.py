"""Detection on telemetry podguard did not generate: ``data/real/mixed`` (real processes in
real memory cgroups, measured by cAdvisor, OOM-killed by a real kernel; see data/real/README).

Replayed through the default model at the daemon's step for a 15 s scrape: every leaking
workload is flagged as a memory leak before the kernel's first OOM kill of it (the crash
loop, whose incarnations live under 4 min, before one of its later kills), with a time to OOM;
the healthy trainer, the page-cache reader, the GC sawtooth and the warm-up raise nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from detector.pipeline import Pipeline
from detector.replay import iter_batches
from detector.settings import WindowSettings

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
Replayed = tuple[dict[str, list[float]], dict[str, tuple[float, str, float | None]],
                 dict[str, float]]
HEALTHY = ("trainer-healthy", "pagecache-reader", "gc-sawtooth", "warmup-plateau")


@pytest.fixture(scope="module")
def replayed() -> Replayed:
    trace = pd.read_csv(REAL / "mixed.csv.gz")
    labels = json.loads((REAL / "mixed.labels.json").read_text())
    kills = {pod: [float(e["ts"]) for e in info.get("exits", []) if e["reason"] == "OOMKilled"]
             for pod, info in labels["pods"].items()}
    pipe = Pipeline.load(None)
    first: dict[str, tuple[float, str, float | None]] = {}
    alarms: dict[str, float] = {}
    for _t, batch, _e in iter_batches(trace, step_s=15.0, windows=WindowSettings(step_s=15.0)):
        for v in pipe.evaluate(batch):
            if v.is_anomaly:
                alarms[v.pod] = alarms.get(v.pod, 0) + 1
                first.setdefault(v.pod, (v.ts, v.kind, v.time_to_oom_s))
    return kills, first, alarms


def test_every_real_leak_is_flagged_before_the_kernel_kills_it(replayed: Replayed) -> None:
    kills, first, _ = replayed
    leaking = [p for p, k in kills.items() if k]
    assert len(leaking) >= 5
    for pod in leaking:
        assert pod in first, f"{pod}: no alarm at all (kills at {kills[pod]})"
        ts, kind, tto = first[pod]
        assert kind == "memory_leak", (pod, kind)
        assert tto is not None and tto > 0, pod
        if pod == "crashloop-leak":  # incarnations of < 4 min: warned before a later kill
            assert any(ts < k for k in kills[pod][1:]), (pod, ts, kills[pod])
        else:
            assert ts < kills[pod][0], (pod, ts - kills[pod][0])


def test_the_healthy_real_workloads_raise_nothing(replayed: Replayed) -> None:
    _, _, alarms = replayed
    for pod in HEALTHY:
        assert alarms.get(pod, 0) == 0, (pod, alarms.get(pod))
