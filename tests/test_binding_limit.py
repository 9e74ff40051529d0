"""Pods of several containers: the kernel OOM-kills a container at its *own* memory limit.

Recorded on the real-node harness (mix ``sidecars``, session 9): a log shipper leaking under
its own 160 MiB limit beside a healthy 512 MiB main container was warned 4 min before the
kernel killed it, with "OOM in ~41 min": the pod's working set summed against the pod's
summed limits (672 MiB) still had 350 MiB of room. The window engine now tells which
container's own limit binds (``WindowAssembler._binding``) and states the pod's memory limit
as that container's own plus the others' newest use, so the headroom - and the time to OOM -
is the binding container's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector import traces as tr
from detector.pipeline import Pipeline
from detector.replay import iter_replay
from detector.windows import WindowEngine

MIB = 2.0**20
STEP = 10.0


def _pod(containers: dict[str, tuple[np.ndarray, float]], minutes: float,
         limit_metric: str = tr.MEMORY_LIMIT, pod: str = "p",
         restarts: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """A pod sampled every STEP s: container -> (working set on the grid, bytes, NaN for no
    sample; limit, bytes, 0 for none, NaN for no limit series); ``restarts``: a container's
    restart counter on the grid (else 0)."""
    ts = 1_700_000_000.0 + np.arange(0.0, minutes * 60.0 + STEP / 2, STEP)
    rows = []
    for name, (ws, limit) in containers.items():
        series = [(tr.WORKING_SET, ws), (tr.RSS, 0.9 * ws),
                  (tr.CPU_SECONDS, np.cumsum(np.full(ts.size, 0.1 * STEP))),
                  (tr.RESTARTS, (restarts or {}).get(name, np.zeros(ts.size)))]
        if not np.isnan(limit):
            series.append((limit_metric, np.full(ts.size, limit)))
        for metric, vals in series:
            rows.append(pd.DataFrame({"timestamp": ts, "namespace": "ns", "pod": pod,
                                      "container": name, "node": "n1", "metric": metric,
                                      "value": vals}).dropna(subset=["value"]))
    return pd.concat(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)


def _grid(minutes: float) -> np.ndarray:
    return np.arange(0.0, minutes * 60.0 + STEP / 2, STEP)


def _last_window(trace: pd.DataFrame):
    eng = WindowEngine(step_s=STEP, horizon_s=3600.0)
    eng.ingest(trace)
    return eng.windows(float(trace["timestamp"].max()))


def _ws_limit(batch) -> float:
    return float(batch.limits[0, batch.channels.index("mem_working_set")])


def _ws_now(batch) -> float:
    return float(batch.channel("mem_working_set")[0, -1])


def test_a_small_sidecar_leaking_under_its_own_limit_binds_the_pod() -> None:
    t = _grid(30)
    main = 200 * MIB + 0.5 * MIB * np.sin(t / 97.0)
    side = 10 * MIB + 8 * MIB * np.maximum(t - 120.0, 0.0) / 60.0  # 8 MiB/min from 2 min
    b = _last_window(_pod({"main": (main, 512 * MIB), "shipper": (side, 160 * MIB)}, 30))
    assert b.memory_container is not None and b.memory_container[0] == "shipper"
    assert b.memory_container_limit is not None
    assert b.memory_container_limit[0] == 160 * MIB
    # the pod's headroom is the shipper's own, not the pod sum's
    room = _ws_limit(b) - _ws_now(b)
    assert abs(room - (160 * MIB - side[-1])) < 1 * MIB, room / MIB
    assert b.binding_of(0) == ("shipper", 160 * MIB)
    # RSS is bounded the same way: the shipper's own RSS against its limit
    rss_room = (float(b.limits[0, b.channels.index("mem_rss")])
                - float(b.channel("mem_rss")[0, -1]))
    assert abs(rss_room - (160 * MIB - 0.9 * side[-1])) < 1 * MIB


def test_a_leaking_main_container_binds_beside_a_flat_sidecar() -> None:
    t = _grid(40)
    main = 100 * MIB + 6 * MIB * t / 60.0
    side = 60 * MIB + 0.2 * MIB * np.cos(t / 50.0)
    b = _last_window(_pod({"main": (main, 512 * MIB), "sidecar": (side, 256 * MIB)}, 40,
                          limit_metric=tr.KSM_LIMITS))
    assert b.binding_of(0) == ("main", 512 * MIB)
    assert abs((_ws_limit(b) - _ws_now(b)) - (512 * MIB - main[-1])) < 1 * MIB


def test_no_container_binds_where_none_grows_and_the_summed_limit_stays() -> None:
    t = _grid(40)
    main = 300 * MIB + 2 * MIB * np.sin(t / 300.0)
    # a GC sawtooth: its floor is flat, however steep each tooth
    side = 40 * MIB + 80 * MIB * ((t % 240.0) / 240.0)
    b = _last_window(_pod({"main": (main, 512 * MIB), "sidecar": (side, 160 * MIB)}, 40))
    assert b.memory_container is None or b.memory_container[0] == ""
    assert _ws_limit(b) == 672 * MIB


def test_a_single_container_pod_is_unchanged() -> None:
    t = _grid(30)
    b = _last_window(_pod({"main": (50 * MIB + 8 * MIB * t / 60.0, 512 * MIB)}, 30))
    assert b.memory_container is None
    assert _ws_limit(b) == 512 * MIB


def test_an_unlimited_container_growing_faster_keeps_the_limit_unknown() -> None:
    t = _grid(30)
    main = 100 * MIB + 1.5 * MIB * t / 60.0  # grows, under a limit
    side = 50 * MIB + 6 * MIB * t / 60.0  # grows faster, under no limit (0 = unlimited)
    b = _last_window(_pod({"main": (main, 512 * MIB), "sidecar": (side, 0.0)}, 30))
    assert b.binding_of(0) is None
    assert np.isnan(_ws_limit(b))  # as before: a 0 on any container makes it unknown


def test_a_leak_under_a_limit_beside_a_flat_unlimited_sidecar_gets_a_limit() -> None:
    t = _grid(30)
    main = 100 * MIB + 6 * MIB * t / 60.0
    side = 50 * MIB + 0.3 * MIB * np.sin(t / 40.0)
    b = _last_window(_pod({"main": (main, 512 * MIB), "sidecar": (side, 0.0)}, 30))
    assert b.binding_of(0) == ("main", 512 * MIB)
    assert abs((_ws_limit(b) - _ws_now(b)) - (512 * MIB - main[-1])) < 1 * MIB


def test_the_binding_survives_subset_and_concat() -> None:
    t = _grid(30)
    side = 10 * MIB + 8 * MIB * t / 60.0
    a = _last_window(_pod({"main": (200 * MIB + 0 * t, 512 * MIB),
                           "shipper": (side, 160 * MIB)}, 30))
    single = _last_window(_pod({"main": (50 * MIB + 0 * t, 512 * MIB)}, 30, pod="q"))
    both = type(a).concat([single, a])
    assert both.binding_of(0) is None and both.binding_of(1) == ("shipper", 160 * MIB)
    assert both.subset([1]).binding_of(0) == ("shipper", 160 * MIB)


def test_the_sidecar_leak_is_paged_with_its_own_time_to_oom() -> None:
    """End to end: the pod is paged as a memory leak before the shipper reaches its limit,
    with a time to OOM within +-30 % of the real one, naming the container."""
    minutes = 24.0
    t = _grid(minutes)
    main = 200 * MIB * (1 - np.exp(-t / 120.0)) + 2 * MIB  # a warm-up that plateaus
    onset, rate = 120.0, 8 * MIB / 60.0
    side = 10 * MIB + rate * np.maximum(t - onset, 0.0)
    oom_at = onset + 150 * MIB / rate  # the shipper reaches 160 MiB
    trace = _pod({"main": (main, 512 * MIB), "shipper": (side, 160 * MIB)},
                 minutes)
    trace = trace[trace["timestamp"] < trace["timestamp"].min() + oom_at]
    t0 = float(trace["timestamp"].min())
    pipe = Pipeline.load(None)
    first = next((v for step in iter_replay(trace, pipe, step_s=STEP) for v in step
                  if v.is_anomaly), None)
    assert first is not None, "the shipper's leak was never paged"
    assert first.kind == "memory_leak", first.kind
    real = t0 + oom_at - first.ts
    assert real > 0
    assert first.time_to_oom_s is not None
    assert abs(first.time_to_oom_s - real) <= 0.3 * real, (
        f"stated {first.time_to_oom_s / 60:.1f} min, real {real / 60:.1f} min")
    assert first.explanation is not None
    assert "of container shipper" in first.explanation.text, first.explanation.text


def _crash_loop(t: np.ndarray, *, base: float, rate: float, limit: float,
                restart_s: float = 20.0) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A container leaking ``rate`` bytes/s from each start, OOM-killed at ``limit`` and
    restarted ``restart_s`` later: (working set, NaN while down; restart counter; kill
    times)."""
    ws, rst, kills = np.full(t.size, np.nan), np.zeros(t.size), []
    start, n = 0.0, 0
    for i, x in enumerate(t):
        if x >= start:
            level = base + rate * (x - start)
            if level >= limit:
                kills.append(float(x))
                n += 1
                start = x + restart_s
            else:
                ws[i] = level
        rst[i] = n
    return ws, rst, kills


def _flapping_sidecar(t: np.ndarray, period_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A 30 MiB log shipper exiting (not OOM) every ``period_s``, back 10 s later."""
    phase = t % period_s
    ws = np.where(phase < period_s - STEP, 30 * MIB + 0.2 * MIB * np.sin(t / 7.0), np.nan)
    return ws, np.floor(t / period_s)


def test_a_crash_looping_main_container_binds_from_its_first_minutes() -> None:
    """A main container killed every ~6 min at its own 256 MiB limit beside a flapping
    128 MiB shipper (the real-node mix ``sidecars``): 3 min into an incarnation the pod's
    headroom is already the main container's own. Before, a container's growth was read in
    5-min blocks over 30 min, and no life of a crash loop held three of them: the pod's
    summed limit (384 MiB) stayed, and the first alarm stated 2.9 min to OOM with 0.6 left."""
    t = _grid(16)
    main, rst, kills = _crash_loop(t, base=20 * MIB, rate=40 * MIB / 60.0, limit=256 * MIB)
    side, side_rst = _flapping_sidecar(t, 200.0)
    assert len(kills) == 2
    trace = _pod({"main": (main, 256 * MIB), "shipper": (side, 128 * MIB)}, 16,
                 restarts={"main": rst, "shipper": side_rst})
    at = kills[1] + 20.0 + 180.0  # 3 min into the third incarnation
    b = _last_window(trace[trace["timestamp"] <= trace["timestamp"].min() + at])
    assert b.binding_of(0) == ("main", 256 * MIB)
    now = 20 * MIB + 40 * MIB / 60.0 * 180.0
    assert abs((_ws_limit(b) - _ws_now(b)) - (256 * MIB - now)) < 2 * MIB, (
        (_ws_limit(b) - _ws_now(b)) / MIB)


def test_the_binding_containers_own_growth_is_projected() -> None:
    """Where a container binds, the pod's memory channels are its own series plus the
    others' newest use: the shipper's exits (its working set gone for a scrape every 200 s)
    no longer bend the series whose growth is projected, and the newest bin is the sum."""
    t = _grid(30)
    main = 100 * MIB + 6 * MIB * t / 60.0
    side, side_rst = _flapping_sidecar(t, 200.0)
    b = _last_window(_pod({"main": (main, 512 * MIB), "shipper": (side, 128 * MIB)}, 30,
                          restarts={"shipper": side_rst}))
    assert b.binding_of(0) == ("main", 512 * MIB)
    ws = b.channel("mem_working_set")[0]
    fin = np.isfinite(ws)
    expect = main[-fin.sum():] + side[-1]
    np.testing.assert_allclose(ws[fin], expect.astype(np.float32), rtol=0, atol=0.05 * MIB)
    assert abs(ws[-1] - (main[-1] + side[-1])) < 0.05 * MIB


def test_each_crash_loop_incarnation_is_warned_with_its_own_time_to_oom() -> None:
    """End to end at a 10 s step: every kill of the crash-looping main container is warned
    before it, and the first alarm's time to OOM is within +-30 % of the real one."""
    minutes = 14.0
    t = _grid(minutes)
    main, rst, kills = _crash_loop(t, base=20 * MIB, rate=40 * MIB / 60.0, limit=256 * MIB)
    side, side_rst = _flapping_sidecar(t, 200.0)
    trace = _pod({"main": (main, 256 * MIB), "shipper": (side, 128 * MIB)}, minutes,
                 restarts={"main": rst, "shipper": side_rst})
    t0 = float(trace["timestamp"].min())
    pipe = Pipeline.load(None)
    alarms = [v for step in iter_replay(trace, pipe, step_s=STEP) for v in step
              if v.is_anomaly]
    starts = [0.0] + [k + 20.0 for k in kills]
    for start, kill in zip(starts, kills, strict=False):
        first = next((v for v in alarms if start <= v.ts - t0 < kill), None)
        assert first is not None, f"the kill at {kill / 60:.1f} min was not warned"
        assert first.kind == "memory_leak" and first.time_to_oom_s is not None
        real = t0 + kill - first.ts
        assert abs(first.time_to_oom_s - real) <= 0.3 * real + STEP, (
            f"stated {first.time_to_oom_s / 60:.1f} min, real {real / 60:.1f} min")


def test_two_containers_warming_up_together_are_not_paged() -> None:
    """A pod's start: a main container warming up to 200 MiB of 512 beside a sidecar warming
    up to 60 MiB of 128 (both growing in their first minutes) is no leak of either."""
    minutes = 40.0
    t = _grid(minutes)
    main = 200 * MIB * (1 - np.exp(-t / 240.0)) + 5 * MIB
    side = 60 * MIB * (1 - np.exp(-t / 120.0)) + 2 * MIB
    trace = _pod({"main": (main, 512 * MIB), "sidecar": (side, 128 * MIB)}, minutes)
    pipe = Pipeline.load(None)
    raised = [v for step in iter_replay(trace, pipe, step_s=STEP) for v in step
              if v.is_anomaly]
    assert not raised, raised[0]
