"""The pipeline's per-pod level history (detector.models.history) and what it decides:
a load cycle coming back to a level it held is no leak, and a crash-looping leak is warned in
every incarnation after its first OOM kill, named as one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detector import scenarios
from detector import traces as tr
from detector.models.history import LevelHistory
from detector.pipeline import Pipeline
from detector.replay import iter_batches
from detector.settings import WindowSettings
from detector.windows import CHANNELS, FEATURE_NAMES, PodKey, WindowBatch

L, STEP = 240, 60.0


def _batch(ts: float, ws: np.ndarray, *, limit: float = 4e9, restarts: np.ndarray | None = None
           ) -> WindowBatch:
    values = np.full((1, len(CHANNELS), L), np.nan, np.float32)
    values[0, CHANNELS.index("mem_working_set")] = ws
    if restarts is not None:
        values[0, CHANNELS.index("restarts")] = restarts
    limits = np.full((1, len(CHANNELS)), np.nan, np.float32)
    limits[0, CHANNELS.index("mem_working_set")] = limit
    return WindowBatch(keys=[PodKey("ns", "p")], nodes=[""], ts=np.array([ts]),
                       grid=np.arange(-(L - 1), 1) * STEP, channels=CHANNELS, values=values,
                       limits=limits, baseline=np.full((1, len(CHANNELS), 2), np.nan, np.float32),
                       features=np.full((1, len(FEATURE_NAMES)), np.nan, np.float32),
                       feature_names=FEATURE_NAMES, stale=np.zeros(1, bool))


def _level(t: np.ndarray) -> np.ndarray:
    """A 6 h load cycle between 1 and 2 GB."""
    return 1.5e9 - 0.5e9 * np.cos(2 * np.pi * t / (6 * 3600))


def _feed(h: LevelHistory, fn, t_end: float, every: float = 900.0) -> WindowBatch:
    b = None
    for ts in np.arange(14400.0, t_end + 1, every):
        t = ts + np.arange(-(L - 1), 1) * STEP
        b = _batch(ts, fn(t))
        h.update(b)
    assert b is not None
    return b


def test_a_cycle_coming_round_again_is_a_revisit_a_new_high_is_not() -> None:
    h = LevelHistory()
    # 15 h in: the pod has held 2 GB (the cycle's top) at 3 h, 9 h and is rising again
    b = _feed(h, _level, 15 * 3600 - 1800)
    slots = h.update(b)
    ch = np.array(["mem_working_set"], dtype=object)
    assert h.revisits(b, slots, ch, np.array([3600.0]), np.array([4e9]))[0]
    # the same rise with the cycle lifted by a leak above anything held before is no revisit
    h2 = LevelHistory()
    b2 = _feed(h2, lambda t: _level(t) + 4e4 * np.maximum(t - 12 * 3600, 0), 15 * 3600 - 1800)
    s2 = h2.update(b2)
    assert not h2.revisits(b2, s2, ch, np.array([3600.0]), np.array([4e9]))[0]
    # nothing growing: nothing to veto
    assert not h.revisits(b, slots, np.array([""], dtype=object), None, np.array([4e9]))[0]


def test_a_restart_near_the_limit_counts_as_an_oom_kill_and_starts_afresh() -> None:
    h = LevelHistory()
    t = np.arange(L) * STEP
    b = _batch(1e6, 1e9 + 0.5e9 * t / t[-1])
    s = h.update(b)
    assert h.oom_kills(s)[0] == 0 and h.prior_max(s, b.ts, np.array([0.0]))[0, 0] > 0
    near = _batch(1e6 + 60, np.full(L, 3.8e9))  # at 95 % of its limit
    h.update(near)
    r = np.where(np.arange(L) >= L - 2, 1.0, 0.0)  # restarted a minute ago
    after = _batch(1e6 + 120, np.where(np.arange(L) >= L - 2, 0.5e9, 3.8e9), restarts=r)
    s = h.update(after)
    assert h.oom_kills(s)[0] == 1
    assert np.isnan(h.prior_max(s, after.ts, np.array([0.0]))[0, 0])  # the old life is gone
    # a restart far from the limit is no OOM kill
    low = _batch(1e6 + 3600, np.full(L, 0.6e9), restarts=np.where(np.arange(L) >= L - 1, 2.0, r))
    assert h.oom_kills(h.update(low))[0] == 1
    h.forget(PodKey("ns", "p"))
    assert h.oom_kills(h.update(low))[0] == 0


@pytest.fixture(scope="module")
def loop_and_cycle() -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[float, str, bool, str]]]:
    trace, labels = scenarios.generate(n_pods_per_kind=1, hours=6, seed=3,
                                       shapes=("crashloop_leak",))
    # plus a healthy 3 h load cycle between 45 and 75 % of its limit, 14 h
    t = scenarios.DEFAULT_START_TS + np.arange(0, 14 * 3600, 30.0)
    lim = 4 * 2.0**30
    ws = lim * (0.6 - 0.15 * np.cos(2 * np.pi * (t - t[0]) / (3 * 3600)))
    rows = []
    for m, v in ((tr.WORKING_SET, ws), (tr.RSS, 0.8 * ws), (tr.MEMORY_LIMIT, np.full(t.size, lim)),
                 (tr.CPU_SECONDS, np.cumsum(np.full(t.size, 30.0))),
                 (tr.RESTARTS, np.zeros(t.size))):
        rows.append(pd.DataFrame({"timestamp": t, "namespace": "ml", "pod": "cycle",
                                  "container": "main", "node": "n", "metric": m, "value": v}))
    cycle = pd.concat(rows, ignore_index=True)
    out = []
    for tr_ in (trace, cycle):
        pl = Pipeline.load(None)
        for _t, batch, _e in iter_batches(tr_, step_s=60.0, windows=WindowSettings(step_s=60.0)):
            for v in pl.evaluate(batch):
                out.append((v.ts, v.pod, v.is_anomaly, v.explanation.text if v.explanation
                            else ""))
    return trace, labels, out


def test_every_incarnation_of_a_crash_loop_after_the_first_kill_is_warned_as_one(
        loop_and_cycle: tuple[pd.DataFrame, pd.DataFrame, list[tuple[float, str, bool, str]]]
) -> None:
    _, labels, out = loop_and_cycle
    v = pd.DataFrame(out, columns=["ts", "pod", "alarm", "text"])
    loop = v[v["pod"] == labels["pod"].iloc[0]]
    assert len(labels) >= 2
    for k, lab in enumerate(labels.to_dict("records")):
        hit = loop[(loop["ts"] >= lab["onset_ts"]) & (loop["ts"] < lab["failure_ts"])
                   & loop["alarm"]]
        assert len(hit), f"incarnation {k} not warned before its OOM kill"
        if k:
            assert "crash-looping leak" in hit["text"].iloc[0], hit["text"].iloc[0]


def test_after_two_oom_kills_an_incarnation_is_warned_from_its_start(
        loop_and_cycle: tuple[pd.DataFrame, pd.DataFrame, list[tuple[float, str, bool, str]]]
) -> None:
    """A crash loop named as one: from its third incarnation on, the kernel's two kills are the
    evidence, so the alarm comes within the first minutes (confirmation and the restart's
    scrape), not once the new growth is measurable again."""
    trace, labels, out = loop_and_cycle
    v = pd.DataFrame(out, columns=["ts", "pod", "alarm", "text"])
    loop = v[v["pod"] == labels["pod"].iloc[0]]
    rs = trace[(trace["metric"] == tr.RESTARTS) & (trace["pod"] == labels["pod"].iloc[0])]
    rise = rs.sort_values("timestamp")["value"].diff() > 0
    restarts = rs.sort_values("timestamp")["timestamp"][rise].to_numpy()
    assert len(restarts) >= 2
    for r_ts in restarts[1:]:
        first = loop[(loop["ts"] >= r_ts) & loop["alarm"]]["ts"].min()
        assert first - r_ts <= 5 * 60, (r_ts, first - r_ts)


def test_a_multi_hour_load_cycle_is_not_paged_as_a_leak(
        loop_and_cycle: tuple[pd.DataFrame, pd.DataFrame, list[tuple[float, str, bool, str]]]
) -> None:
    *_, out = loop_and_cycle
    v = pd.DataFrame(out, columns=["ts", "pod", "alarm", "text"])
    cyc = v[v["pod"] == "cycle"]
    assert len(cyc) > 700
    t0 = cyc["ts"].min()
    # after its first full cycle (3 h) the pod is never flagged again
    assert not cyc[(cyc["ts"] > t0 + 3 * 3600) & cyc["alarm"]].any().any(), \
        cyc[cyc["alarm"]].head()
