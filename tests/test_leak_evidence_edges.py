"""Edge cases of the leak evidence: whose pace a report states, when a pod is born, how old
a life is, what counts as a throughput shift (each failed before its fix, session 6 review)."""

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
    for c, bound in limits.items():
        lim[0, CHANNELS.index(c)] = bound
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


def test_a_pod_first_seen_before_its_working_set_is_still_young_when_it_comes() -> None:
    """kube-state-metrics reports a pod (restarts 0) while its image is pulled, before
    cAdvisor has a working set: that first window has no working-set data; the pod's age is
    still measured from its first working-set sample, not 'older than a window' for good."""
    from detector.models.history import LevelHistory

    L = 240
    step = 60.0

    def batch(ts: float, ws: np.ndarray) -> WindowBatch:
        b = _batch({"mem_working_set": ws, "restarts": np.zeros(L)},
                   {"mem_working_set": 4e9})
        grid = np.arange(-(L - 1), 1) * step
        return WindowBatch(keys=b.keys, nodes=b.nodes, ts=np.array([ts]), grid=grid,
                           channels=b.channels, values=b.values, limits=b.limits,
                           baseline=b.baseline, features=b.features,
                           feature_names=b.feature_names, stale=b.stale)

    h = LevelHistory()
    t0 = 1.7e9
    h.update(batch(t0, np.full(L, np.nan)))  # the image pull: no working set yet
    ws = np.full(L, np.nan)
    ws[-30:] = 1e9  # 30 min of data
    b = batch(t0 + 1800.0, ws)
    slots = h.update(b)
    age = h.incarnation_age(slots, b.ts)
    assert age[0] == pytest.approx(29 * step)


def test_a_throughput_shift_is_measured_above_the_channels_noise_floor() -> None:
    """An idle channel's relative change is noise: network receive from 100 to 300 B/s
    (scrapes only) beside a steady CPU is no 20 % throughput shift; a GPU going from idle
    (median 0) to 80 % busy is one."""
    from detector.models.drift import DRIFT_MIN_SHIFT, throughput_shift

    L = 60
    cpu, rx, gpu = (CHANNELS.index(c) for c in ("cpu_rate", "net_rx_rate", "gpu_util"))
    b = _batch({"cpu_rate": np.full(L, 2.05), "net_rx_rate": np.full(L, 300.0),
                "mem_working_set": np.full(L, 1e9)}, {})
    b.baseline[0, cpu, 0], b.baseline[0, rx, 0] = 2.0, 100.0
    assert throughput_shift(b)[0] < DRIFT_MIN_SHIFT
    b2 = _batch({"gpu_util": np.full(L, 0.8), "mem_working_set": np.full(L, 1e9)}, {})
    b2.baseline[0, gpu, 0] = 0.0
    assert throughput_shift(b2)[0] >= DRIFT_MIN_SHIFT


def test_a_life_older_than_the_first_window_has_no_known_length() -> None:
    """The daemon starts (or backfills 4 h) while a container has run for longer: its OOM
    kill's life is unknown, not the window's length (the next life would be told it dies
    when it has run as long as the window)."""
    from detector.models.history import LevelHistory

    L, step = 240, 60.0

    def batch(ts: float, ws: np.ndarray, restarts: np.ndarray, oom: np.ndarray) -> WindowBatch:
        b = _batch({"mem_working_set": ws, "restarts": restarts, "oom_killed": oom},
                   {"mem_working_set": 4e9})
        return WindowBatch(keys=b.keys, nodes=b.nodes, ts=np.array([ts]),
                           grid=np.arange(-(L - 1), 1) * step, channels=b.channels,
                           values=b.values, limits=b.limits, baseline=b.baseline,
                           features=b.features, feature_names=b.feature_names, stale=b.stale)

    h = LevelHistory()
    t0 = 1e6
    ramp = np.linspace(2e9, 3.9e9, L)  # running since before this first window
    h.update(batch(t0, ramp, np.zeros(L), np.full(L, np.nan)))
    fresh = np.arange(L) >= L - 2
    ws = np.where(fresh, 0.3e9, np.concatenate([ramp[1:], [3.9e9]]))
    s = h.update(batch(t0 + step, ws, np.where(fresh, 1.0, 0.0), np.where(fresh, 1.0, np.nan)))
    assert h.oom_kills(s)[0] == 1
    assert np.isnan(h.time_to_oom_by_last_life(s, np.array([t0 + 2 * step]))[0])
