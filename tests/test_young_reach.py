"""A pod's first minutes: a young incarnation's projection is paged only within a few times
its age (trend.beyond_reach, YOUNG_START_REACH): an early leak is still paged within
minutes of its start, the first tooth of a GC sawtooth (linear growth for 10 min that
projects an OOM in ~45 min) is not."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from detector import scenarios
from detector import traces as tr
from detector.models import trend
from detector.pipeline import Pipeline
from detector.replay import iter_batches
from detector.settings import WindowSettings

GIB = 2.0**30
LIMIT = 6 * GIB
STEP = 60.0


def test_a_young_incarnations_reach_is_a_few_times_its_age_then_the_floor() -> None:
    """Under :data:`~detector.models.trend.YOUNG_REACH_FLOOR_S` the reach is
    ``YOUNG_START_REACH`` x the age; above it ``YOUNG_REACH`` x the age; never beyond the
    horizon; no projection (NaN) is never beyond it."""
    h, m = 3600.0, 60.0
    age = np.array([5 * m, 9 * m, 9 * m, 1 * h, 1 * h, 3 * h, 3 * h, 30 * h, 5 * m, np.inf])
    tto = np.array([19 * m, 35 * m, 38 * m, 3.9 * h, 4.1 * h, 8.9 * h, 9.1 * h, 23 * h,
                    np.nan, 23 * h])
    got = trend.beyond_reach(tto, age, horizon_s=24 * h)
    assert got.tolist() == [False, False, True, False, True, False, True, False, False, False]
    assert trend.beyond_reach(np.array([25 * h]), np.array([30 * h]), 24 * h).tolist() == [True]


def _trace(ws_of_t: Callable[[np.ndarray], np.ndarray], minutes: float
           ) -> tuple[pd.DataFrame, float]:
    """One pod from its start: working set ``ws_of_t(seconds since start)`` under a 6 GiB
    limit, RSS 0.9 of it; returns (trace, start)."""
    t0 = scenarios.DEFAULT_START_TS
    t = t0 + np.arange(0.0, minutes * 60.0, 15.0)
    rng = np.random.default_rng(5)
    ws = ws_of_t(t - t0) * (1 + 0.002 * rng.normal(size=t.size))
    rows = [pd.DataFrame({"timestamp": t, "namespace": "ml", "pod": "young", "container": "main",
                          "node": "n", "metric": metric, "value": v})
            for metric, v in ((tr.WORKING_SET, ws), (tr.RSS, 0.9 * ws),
                              (tr.MEMORY_LIMIT, np.full(t.size, LIMIT)),
                              (tr.CPU_SECONDS, np.cumsum(np.full(t.size, 15.0))),
                              (tr.RESTARTS, np.zeros(t.size)))]
    return pd.concat(rows, ignore_index=True).sort_values("timestamp", kind="stable"), t0


def _first_leak(trace: pd.DataFrame) -> tuple[float, float | None] | None:
    """(time, time to OOM) of the first leak verdict, or None."""
    pl = Pipeline.load(None)
    for _t, batch, _e in iter_batches(trace, step_s=STEP, windows=WindowSettings(step_s=STEP)):
        for v in pl.evaluate(batch):
            if v.is_anomaly:
                assert v.kind == "memory_leak", v
                return v.ts, v.time_to_oom_s
    return None


def test_an_early_leak_is_still_paged_in_its_first_minutes() -> None:
    """From 40 % of the limit to the limit in 30 min (a leak from the pod's start): paged with
    a time to OOM by its 8th minute (its projection, ~24 min at 6 min, is within 4x its age
    from then on), more than 20 min before the OOM."""
    trace, t0 = _trace(lambda s: LIMIT * (0.4 + 0.6 * np.minimum(s / 1800.0, 1.0)), 30.0)
    got = _first_leak(trace)
    assert got is not None, "never paged"
    ts, tto = got
    assert ts - t0 <= 8 * 60.0, (ts - t0) / 60.0
    assert tto is not None and tto > 0 and 1800.0 - (ts - t0) > 20 * 60.0


def _sawtooth(s: np.ndarray) -> np.ndarray:
    """A GC sawtooth from its first minute: 2.8 GiB (47 % of the limit) + 3.5 GiB/h for
    10 min, then freed; its first tooth's projection at 6-9 min is an OOM ~45-50 min ahead."""
    return 2.8 * GIB + 3.5 * GIB * np.mod(s, 600.0) / 3600.0


def test_the_first_tooth_of_a_gc_sawtooth_is_not_paged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sawtooth above for 2 h: nothing raised. Its first tooth is what a reach of
    YOUNG_REACH_FLOOR_S at any age pages (the guard in the test: it can fail)."""
    trace, _t0 = _trace(_sawtooth, 120.0)
    assert _first_leak(trace) is None
    monkeypatch.setattr(trend, "YOUNG_START_REACH", np.inf)
    got = _first_leak(trace)
    assert got is not None and got[0] - _t0 < 600.0, got
