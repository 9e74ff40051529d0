"""Review findings (session 6): each test fails on main at 49df752."""

from __future__ import annotations

import numpy as np
import pytest

from detector.models.trend import TrendDetector
from detector.windows import CHANNELS, FEATURE_NAMES, MEMORY_CHANNELS, PodKey, WindowBatch

MIB = float(1 << 20)
STEP = 15.0


def _batch(series: dict[str, np.ndarray], limits: dict[str, float]) -> WindowBatch:
    L = next(iter(series.values())).size
    values = np.full((1, len(CHANNELS), L), np.nan, np.float32)
    for c, v in series.items():
        values[0, CHANNELS.index(c)] = v
    lim = np.full((1, len(CHANNELS)), np.nan, np.float32)
    for c, v in limits.items():
        lim[0, CHANNELS.index(c)] = v
    return WindowBatch(keys=[PodKey("ns", "p")], nodes=[""], ts=np.array([1.7e9]),
                       grid=np.arange(-(L - 1), 1) * STEP, channels=CHANNELS, values=values,
                       limits=lim, baseline=np.full((1, len(CHANNELS), 2), np.nan, np.float32),
                       features=np.full((1, len(FEATURE_NAMES)), np.nan, np.float32),
                       feature_names=FEATURE_NAMES, stale=np.zeros(1, bool))


def test_a_gpu_leaks_pace_now_is_its_own_not_the_working_sets() -> None:
    """GPU memory leaking linearly at 1 MiB/s while the host working set accelerates (a
    leak of its own starting mid-span at 20 MiB/s): the GPU report's rate and time to OOM
    must come from the GPU channel."""
    t = np.arange(40) * STEP
    gpu_rate = 1 * MIB
    gpu = 10_000 * MIB + gpu_rate * t
    ws = 1000 * MIB + 20 * MIB * np.clip(t - 20 * STEP, 0, None)
    b = _batch({"mem_working_set": ws, "mem_rss": ws, "gpu_fb_used": gpu,
                "restarts": np.zeros(t.size)},
               {"mem_working_set": 64_000 * MIB, "gpu_fb_used": 16_000 * MIB})
    g = MEMORY_CHANNELS.index("gpu_fb_used")
    room = 16_000 * MIB - gpu[-1]
    rate, tto = TrendDetector()._pace_now(b, np.array([0]), np.array([g]),
                                          np.array([gpu_rate]), np.array([room / gpu_rate]),
                                          np.array([1.0]), np.array([t.size * STEP]))
    assert rate[0] == pytest.approx(gpu_rate, rel=0.05)
    assert tto[0] == pytest.approx(room / gpu_rate, rel=0.05)
