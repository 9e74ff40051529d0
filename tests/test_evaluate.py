"""Evaluation metrics and the baselines, on hand-made inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from detector.evaluate import episodes, names_fault, predict_linear_alarm, score_steps
from detector.windows import CHANNELS, FEATURE_NAMES, PodKey, WindowBatch


@pytest.mark.parametrize("flags,n", [([], 0), ([0, 0], 0), ([1], 1), ([1, 1, 0, 1], 2),
                                     ([0, 1, 1, 1, 0, 0, 1, 1], 2), ([1, 0, 1, 0, 1], 3)])
def test_episodes(flags: list[int], n: int) -> None:
    assert episodes(np.array(flags, dtype=bool)) == n


def test_names_fault() -> None:
    assert names_fault("mem_working_set.slope", "container_memory_working_set_bytes")
    assert names_fault("mem_rss.slope", "container_memory_working_set_bytes")  # one family
    assert names_fault("gpu_fb_used.slope", "DCGM_FI_DEV_FB_USED")
    assert not names_fault("gpu_fb_used.slope", "container_memory_working_set_bytes")
    assert names_fault("cpu_rate.level_z", "container_cpu_usage_seconds_total")
    assert not names_fault(None, "container_cpu_usage_seconds_total")


def _batch(ws: np.ndarray, limit: float, step: float = 60.0) -> WindowBatch:
    n, L = ws.shape
    values = np.full((n, len(CHANNELS), L), np.nan, dtype=np.float32)
    values[:, 0, :] = ws
    limits = np.full((n, len(CHANNELS)), np.nan, dtype=np.float32)
    limits[:, 0] = limit
    return WindowBatch(
        keys=[PodKey("ns", f"p{i}") for i in range(n)], nodes=[""] * n,
        ts=np.zeros(n), grid=np.arange(-(L - 1), 1) * step, channels=CHANNELS,
        values=values, limits=limits,
        baseline=np.full((n, len(CHANNELS), 2), np.nan, dtype=np.float32),
        features=np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32),
        feature_names=FEATURE_NAMES, stale=np.zeros(n, dtype=bool))


def test_predict_linear_fires_exactly_when_the_4h_projection_crosses_the_limit() -> None:
    L = 240
    t = np.arange(-(L - 1), 1) * 60.0
    gib = 2.0**30
    rate = 0.1 * gib / 3600  # 0.1 GiB/h
    # now at 1.5 GiB; in 4 h: 1.9 GiB. Limit 1.8 -> fires; limit 2.0 -> does not.
    ws = (1.5 * gib + rate * t)[None, :].repeat(2, axis=0)
    assert predict_linear_alarm(_batch(ws, 1.8 * gib)).tolist() == [True, True]
    assert predict_linear_alarm(_batch(ws, 2.0 * gib)).tolist() == [False, False]
    # only the last hour counts: a flat last hour after a steep rise does not fire
    flat = ws.copy()
    flat[:, -60:] = flat[:, -61:-60]
    assert not predict_linear_alarm(_batch(flat, 1.8 * gib)).any()
    # no limit -> never fires
    assert not predict_linear_alarm(_batch(ws, float("nan"))).any()


def test_score_steps_counts_recall_lead_and_false_alarm_episodes() -> None:
    step = 60.0
    ts = np.arange(0, 600, step)
    rows: list[tuple[str, str, float, bool, str | None]] = []
    # a healthy pod with two alarm episodes
    for t, a in zip(ts, [0, 1, 1, 0, 0, 1, 0, 0, 0, 0]):
        rows.append(("ns", "healthy", float(t), bool(a), None))
    # a leaking pod: onset 300, failure 600; one alarm before onset (false), detection at 420
    for t, a in zip(ts, [0, 1, 0, 0, 0, 0, 0, 1, 1, 1]):
        rows.append(("ns", "leaky", float(t), bool(a), "mem_working_set.slope"))
    # a missed fault
    for t in ts:
        rows.append(("ns", "missed", float(t), False, None))
    steps = pd.DataFrame(rows, columns=["namespace", "pod", "ts", "alarm", "top_feature"])
    steps["stale"] = False
    labels = pd.DataFrame([
        ("ns", "healthy", "none", math.nan, math.nan, ""),
        ("ns", "leaky", "memory_leak", 300.0, 600.0, "container_memory_working_set_bytes"),
        ("ns", "missed", "drift", 0.0, 600.0, "container_cpu_usage_seconds_total"),
    ], columns=["namespace", "pod", "kind", "onset_ts", "failure_ts", "fault_metric"])
    res, rate, hours = score_steps(steps, labels, step_s=step, detector="x")
    by = {r.kind: r for r in res}
    assert by["memory_leak"].detected == 1 and by["memory_leak"].median_lead_s == 600 - 420
    assert by["memory_leak"].top_feature_ok == 1.0
    assert by["drift"].detected == 0 and math.isnan(by["drift"].median_lead_s)
    # healthy: 10 steps + leaky before onset: 5 steps -> 15 min; episodes 2 + 1
    assert hours == pytest.approx(15 * 60 / 3600)
    assert rate == pytest.approx(1000 * 3 / hours)
