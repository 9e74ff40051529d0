"""Tests of the window engine (detector.windows): ingestion hygiene, resampling, counters,
containers, limits, causality, bounded memory, baselines and features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import traces as tr
from detector.errors import InputError
from detector.scenarios import Imperfections, generate
from detector.windows import (
    CHANNEL_METRICS,
    CHANNELS,
    FEATURE_NAMES,
    PodKey,
    Sample,
    WindowBatch,
    WindowEngine,
    collect_windows,
    extract_features,
    iter_windows,
)

T0 = 1_767_225_600.0  # a multiple of 60
NS, POD = "ns", "p1"
KEY = PodKey(NS, POD)


def rows(metric: str, values: np.ndarray | list[float], *, t0: float = T0, step: float = 15.0,
         pod: str = POD, container: str = "c1", ns: str = NS, node: str = "n1") -> pd.DataFrame:
    v = np.asarray(values, dtype=np.float64)
    return pd.DataFrame({
        "timestamp": t0 + step * np.arange(v.size),
        "namespace": ns, "pod": pod, "container": container, "node": node,
        "metric": metric, "value": v,
    })


def trace(*parts: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True).sort_values("timestamp", kind="stable")


def ch(batch: WindowBatch, name: str, i: int = 0) -> np.ndarray:
    return batch.values[i, CHANNELS.index(name)]


def engine(**kw: float) -> WindowEngine:
    kw.setdefault("horizon_s", 3600)
    return WindowEngine(**kw)


# ----------------------------------------------------------------------------- data classes


def test_feature_names_are_documented_constants() -> None:
    assert 20 <= len(FEATURE_NAMES) <= 35
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    for name in FEATURE_NAMES:
        ch_, stat = name.split(".")
        assert ch_ in CHANNELS and stat
    assert "mem_working_set.floor_slope" in FEATURE_NAMES
    assert set(CHANNEL_METRICS) == set(CHANNELS)


def test_engine_rejects_bad_settings_naming_all_of_them() -> None:
    with pytest.raises(InputError) as e:
        WindowEngine(step_s=0, pod_ttl_s=-1)
    assert "step_s" in str(e.value) and "pod_ttl_s" in str(e.value)


# ----------------------------------------------------------------------------- ingestion


def test_gauge_resampled_to_grid_last_value_per_step() -> None:
    e = engine()
    n = 240  # 1 h at 15 s
    e.ingest(rows(tr.WORKING_SET, np.arange(n) * 1000.0))
    b = e.windows(at=T0 + 3600)
    assert len(b) == 1 and b.keys == [KEY] and b.nodes == ["n1"]
    assert b.grid[-1] == 0 and b.grid[0] == -3540 and b.values.shape == (1, len(CHANNELS), 60)
    assert b.ts[0] == T0 + 3600
    ws = ch(b, "mem_working_set")
    # bin ending at T0 + 3600 - 60k holds samples up to that time; the last one is index 4k'
    expect = np.array([(min(n - 1, (3600 - 60 * k) // 15) * 1000.0) for k in range(59, -1, -1)])
    np.testing.assert_allclose(ws[-59:], expect[-59:])


@pytest.mark.parametrize("at", [120, 121, 122, 123])  # last, first and middle of a bin
def test_counter_reset_gives_no_negative_rate(at: int) -> None:
    e = engine()
    v = np.arange(240) * 15 * 2.0 + 5000  # 2 cores
    v[at:] = (np.arange(240 - at) + 1) * 15 * 2.0  # reset to 0 between samples at-1 and at
    e.ingest(rows(tr.CPU_SECONDS, v))
    cpu = ch(e.windows(at=T0 + 3600), "cpu_rate")
    fin = cpu[np.isfinite(cpu)]
    assert fin.size >= 55
    assert (fin >= 0).all()
    np.testing.assert_allclose(np.median(fin), 2.0, rtol=1e-6)
    assert fin.min() > 1.5  # the reset costs at most a fraction of one bin


def test_reset_inside_a_bin_is_seen_through_the_bin_maximum() -> None:
    e = engine()
    v = np.arange(240) * 15.0 + 10_000  # 1 core, large running total
    v[122:] = (np.arange(118) + 1) * 15.0  # reset mid-bin (bins hold 4 samples)
    e.ingest(rows(tr.CPU_SECONDS, v))
    cpu = ch(e.windows(at=T0 + 3600), "cpu_rate")
    fin = cpu[np.isfinite(cpu)]
    assert (fin >= 0).all() and fin.max() < 1.5 and np.median(fin) == pytest.approx(1.0)


def test_restart_counter_gives_increments_per_step() -> None:
    e = engine()
    v = np.zeros(240)
    v[100:] = 1
    v[200:] = 3
    e.ingest(rows(tr.RESTARTS, v))
    r = ch(e.windows(at=T0 + 3600), "restarts")
    assert np.nansum(r) == 3 and np.nanmax(r) == 2 and np.nanmin(r) == 0


def test_duplicates_are_absorbed_and_counted() -> None:
    base = rows(tr.WORKING_SET, np.linspace(1e9, 2e9, 240))
    dup = base.iloc[::7]
    e1, e2 = engine(), engine()
    r1 = e1.ingest(base)
    r2 = e2.ingest(pd.concat([base, dup]).sort_values("timestamp", kind="stable"))
    r3 = e2.ingest(dup)  # the same samples again, later
    assert r1.duplicates == 0 and r2.duplicates == len(dup)
    # a re-delivery is recognised as a duplicate when it repeats its bin's newest sample;
    # older repeats are counted as late; either way they are absorbed
    assert r3.duplicates > 0 and r3.duplicates + r3.late == len(dup) and r3.accepted == len(dup)
    np.testing.assert_array_equal(e1.windows(at=T0 + 3600).values, e2.windows(at=T0 + 3600).values)


def test_bad_rows_are_counted_never_raised_and_never_lose_accepted_data() -> None:
    good = rows(tr.WORKING_SET, np.linspace(1e9, 2e9, 200))
    e = engine()
    e.ingest(good)
    before = e.windows(at=T0 + 3000)
    bad = pd.DataFrame({
        "timestamp": [T0 + 100, np.nan, -5.0, T0 + 200, T0 + 300, T0 + 400, T0 + 500, T0 + 600],
        "namespace": [NS, NS, NS, NS, NS, "", NS, NS],
        "pod": [POD] * 8,
        "container": ["c1", "c1", "c1", "c1", "c1", "c1", "POD", "c1"],
        "node": "",
        "metric": [tr.WORKING_SET, tr.WORKING_SET, tr.WORKING_SET, tr.WORKING_SET,
                   tr.CPU_SECONDS, tr.WORKING_SET, tr.WORKING_SET, tr.RSS],
        "value": [np.nan, 1.0, 1.0, np.inf, -3.0, 1.0, 1.0, -1.0],
    })
    rep = e.ingest(bad)
    assert rep.rows == 8 and rep.accepted == 0
    assert rep.rejected == {
        "nan_value": 1, "bad_timestamp": 2, "inf_value": 1, "negative_counter": 1,
        "missing_label": 1, "pause_container": 1, "negative_value": 1,
    }
    after = e.windows(at=T0 + 3000)
    np.testing.assert_array_equal(before.values, after.values)


def test_missing_columns_raise_before_anything_is_stored() -> None:
    e = engine()
    with pytest.raises(InputError, match="value"):
        e.ingest(pd.DataFrame({"timestamp": [T0], "namespace": [NS], "pod": [POD],
                               "metric": [tr.RSS]}))
    assert e.pods() == [] and e.state_size()["series"] == 0


def test_late_samples_inserted_in_order() -> None:
    df = trace(rows(tr.WORKING_SET, np.linspace(1e9, 3e9, 240)),
               rows(tr.CPU_SECONDS, np.arange(240) * 15.0))
    rng = np.random.default_rng(0)
    # deliver in 5-min chunks whose rows arrive shuffled, with some rows one chunk late
    shuffled = df.iloc[rng.permutation(len(df))]
    late = (shuffled["timestamp"].to_numpy() - T0) // 300 + rng.integers(0, 2, len(df))
    e1, e2 = engine(), engine()
    e1.ingest(df)
    n_late = 0
    for k in range(int(late.max()) + 1):
        n_late += e2.ingest(shuffled[late == k]).late
    assert n_late > 0
    np.testing.assert_array_equal(e1.windows(at=T0 + 3600).values, e2.windows(at=T0 + 3600).values)


def test_samples_older_than_horizon_plus_lateness_are_rejected_as_too_old() -> None:
    e = engine(max_late_s=300)  # 1 h horizon
    e.ingest(rows(tr.WORKING_SET, np.ones(480)))  # 2 h
    rep = e.ingest(rows(tr.WORKING_SET, [5.0, 6.0], t0=T0 + 67, step=3540))
    assert rep.rejected == {"too_old": 1} and rep.late == 1 and rep.accepted == 1


def test_ingest_samples_matches_dataframe_ingest() -> None:
    df = trace(rows(tr.WORKING_SET, np.linspace(1e9, 2e9, 120)),
               rows(tr.NET_RX, np.arange(120) * 1e6, container="c2"))
    e1, e2 = engine(), engine()
    e1.ingest(df)
    e2.ingest_samples(
        Sample(float(r["timestamp"]), str(r["namespace"]), str(r["pod"]), str(r["container"]),
               str(r["metric"]), float(r["value"]), str(r["node"]))
        for r in df.to_dict("records")
    )
    np.testing.assert_array_equal(e1.windows().values, e2.windows().values)


# ----------------------------------------------------------------------------- semantics


def test_containers_summed_limits_summed_and_unlimited_is_unknown() -> None:
    e = engine()
    n = 240
    e.ingest(trace(
        rows(tr.WORKING_SET, np.full(n, 1e9), container="a"),
        rows(tr.WORKING_SET, np.full(n, 2e8), container="b"),
        rows(tr.MEMORY_LIMIT, np.full(n, 2e9), container="a"),
        rows(tr.MEMORY_LIMIT, np.full(n, 5e8), container="b"),
        rows(tr.WORKING_SET, np.full(n, 9e9), container=""),  # pod-level cgroup: not summed
        rows(tr.WORKING_SET, np.full(n, 7e9), container="POD"),  # pause container: ignored
        rows(tr.WORKING_SET, np.full(n, 1e8), pod="p2"),
        rows(tr.MEMORY_LIMIT, np.full(n, 0.0), pod="p2"),  # 0 = unlimited
        rows(tr.WORKING_SET, np.full(n, 1e8), pod="p3"),
        rows(tr.KSM_LIMITS, np.full(n, 3e8), pod="p3"),  # kube-state-metrics fallback
    ))
    b = e.windows(at=T0 + 3600)
    by = {k.pod: i for i, k in enumerate(b.keys)}
    ws = CHANNELS.index("mem_working_set")
    np.testing.assert_allclose(b.values[by["p1"], ws, -10:], 1.2e9)
    assert b.limits[by["p1"], ws] == pytest.approx(2.5e9)
    assert b.limits[by["p1"], CHANNELS.index("mem_rss")] == pytest.approx(2.5e9)
    assert np.isnan(b.limits[by["p2"], ws])
    assert b.limits[by["p3"], ws] == pytest.approx(3e8)
    mw = FEATURE_NAMES.index("mem_working_set.frac_limit")
    assert b.features[by["p1"], mw] == pytest.approx(1.2 / 2.5, rel=1e-4)
    assert np.isnan(b.features[by["p2"], mw])


def test_pod_level_series_used_when_no_container_series() -> None:
    e = engine()
    e.ingest(rows(tr.WORKING_SET, np.full(240, 3e9), container=""))
    assert np.nanmax(ch(e.windows(at=T0 + 3600), "mem_working_set")) == pytest.approx(3e9)


def test_dcgm_units_and_card_limit() -> None:
    e = engine()
    n = 240
    e.ingest(trace(
        rows(tr.GPU_FB_USED, np.full(n, 1024.0)),
        rows(tr.GPU_FB_FREE, np.full(n, 3072.0)),
        rows(tr.GPU_UTIL, np.full(n, 85.0)),
    ))
    b = e.windows(at=T0 + 3600)
    assert np.nanmax(ch(b, "gpu_fb_used")) == pytest.approx(2**30)
    assert b.limits[0, CHANNELS.index("gpu_fb_used")] == pytest.approx(4 * 2**30)
    assert np.nanmax(ch(b, "gpu_util")) == pytest.approx(0.85)
    assert b.features[0, FEATURE_NAMES.index("gpu_fb_used.frac_limit")] == pytest.approx(0.25)


def test_custom_metrics_go_to_extra_counters_as_rates() -> None:
    e = engine()
    e.ingest(trace(
        rows("my_queue_depth", np.full(240, 7.0)),
        rows("my_requests_total", np.arange(240) * 15 * 3.0),
        rows(tr.WORKING_SET, np.ones(240), pod="p2"),
    ))
    b = e.windows(at=T0 + 3600)
    i = b.keys.index(KEY)
    assert set(b.extra) == {"my_queue_depth", "my_requests_total"}
    assert np.nanmax(b.extra["my_queue_depth"][i]) == 7.0
    assert np.nanmedian(b.extra["my_requests_total"][i]) == pytest.approx(3.0)
    assert np.isnan(b.extra["my_queue_depth"][b.keys.index(PodKey(NS, "p2"))]).all()


@pytest.mark.parametrize(("gap_s", "filled"), [(120, True), (600, False)])
def test_short_gaps_forward_filled_long_gaps_nan(gap_s: float, filled: bool) -> None:
    df = rows(tr.WORKING_SET, np.full(240, 5.0))
    t = df["timestamp"].to_numpy()
    gap = (t > T0 + 1800) & (t <= T0 + 1800 + gap_s)
    e = engine()
    e.ingest(df[~gap])
    ws = ch(e.windows(at=T0 + 3600), "mem_working_set")
    assert np.isfinite(ws[-29:]).all() if filled else np.isnan(ws).sum() >= gap_s // 60 - 5


def test_stale_for_new_pods_and_after_a_gap() -> None:
    e = engine(min_history_s=1800, stale_after_s=300, pod_ttl_s=3600)
    e.ingest(trace(
        rows(tr.WORKING_SET, np.ones(240)),  # 1 h of data
        rows(tr.WORKING_SET, np.ones(40), pod="young", t0=T0 + 3000),  # 10 min old
        rows(tr.WORKING_SET, np.ones(160), pod="gap"),  # silent for the last 20 min
    ))
    b = e.windows(at=T0 + 3600)
    stale = {k.pod: bool(s) for k, s in zip(b.keys, b.stale)}
    assert stale == {POD: False, "young": True, "gap": True}


def test_causality_windows_at_t_ignore_later_samples() -> None:
    df, _ = generate(n_pods_per_kind=1, hours=3, seed=3,
                     shapes=("steady", "fast_leak", "throughput_drift", "gc_sawtooth"))
    t = T0 + 2 * 3600
    early = df[df["timestamp"] <= t]
    e1, e2 = WindowEngine(), WindowEngine()
    e1.ingest(early)
    e2.ingest(df[df["timestamp"] <= t + 600])  # 10 min more data (within the ring)
    a, b = e1.windows(at=t + 59), e2.windows(at=t + 59)  # same end: the bin at t
    assert a.keys == b.keys and len(a) > 0
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.features, b.features)
    c = e2.windows(at=t + 600)
    assert not np.array_equal(np.nan_to_num(a.values), np.nan_to_num(c.values))


def test_vanished_pods_are_forgotten_and_memory_is_bounded() -> None:
    e = engine(pod_ttl_s=600)
    sizes = []
    for k in range(30):  # 30 generations of pods, 2 alive at a time
        t0 = T0 + k * 1200
        e.ingest(trace(rows(tr.WORKING_SET, np.ones(80), t0=t0, pod=f"a{k}"),
                       rows(tr.RSS, np.ones(80), t0=t0, pod=f"b{k}")))
        sizes.append(e.state_size()["bytes"])
        assert len(e.pods()) == 2
    assert sizes[-1] == sizes[5]  # slots of forgotten pods are reused
    assert e.drop_pod(PodKey(NS, "a29")) and not e.drop_pod(PodKey(NS, "a29"))
    assert e.pods() == [PodKey(NS, "b29")]


def test_windows_for_selected_pods_and_empty_engine() -> None:
    e = engine()
    assert len(e.windows()) == 0 and e.windows().values.shape[0] == 0
    e.ingest(trace(rows(tr.WORKING_SET, np.ones(80)), rows(tr.WORKING_SET, np.ones(80), pod="x")))
    b = e.windows(pods=[PodKey(NS, "x"), PodKey(NS, "unknown")])
    assert b.keys == [PodKey(NS, "x")]


def test_baseline_is_the_pods_own_history_before_the_last_hour() -> None:
    e = WindowEngine()  # 4 h horizon, baseline = all but the last hour
    n = 4 * 240
    v = np.where(np.arange(n) < 3 * 240, 1e9, 3e9) + (np.arange(n) % 2) * 1e6
    e.ingest(rows(tr.WORKING_SET, v))
    b = e.windows(at=T0 + 4 * 3600)
    med, mad = b.baseline[0, CHANNELS.index("mem_working_set")]
    assert med == pytest.approx(1e9, rel=1e-3) and mad <= 1e6
    assert np.isnan(b.baseline[0, CHANNELS.index("cpu_rate")]).all()
    e2 = engine()
    e2.ingest(rows(tr.WORKING_SET, v[:100]))
    assert np.isnan(e2.windows().baseline).all()  # too little history: unknown


def test_a_restart_starts_a_new_baseline_and_features_wait_for_it() -> None:
    """Before a container restart the baseline is another process's: only what follows the
    last restart counts, and the baseline-relative features are NaN (not divided by the
    absolute scale floor) until enough post-restart history lies in the baseline part."""
    n = 4 * 240  # 4 h at 15 s
    restart_at = 480  # after 2 h: 4 cores before, 1 core after
    cpu_rate = np.where(np.arange(n) < restart_at, 4.0, 1.0)
    cpu = np.cumsum(cpu_rate * 15.0)
    cpu[restart_at:] -= cpu[restart_at - 1]  # the counter resets with the container
    restarts = np.where(np.arange(n) < restart_at, 0.0, 1.0)
    df = trace(rows(tr.CPU_SECONDS, cpu), rows(tr.RESTARTS, restarts))
    e = WindowEngine()
    e.ingest(df)
    b = e.windows(at=T0 + 4 * 3600)
    med, _ = b.baseline[0, CHANNELS.index("cpu_rate")]
    assert med == pytest.approx(1.0, rel=0.02)  # the post-restart level, not a 4/1 mixture
    level = b.features[0, FEATURE_NAMES.index("cpu_rate.level_z")]
    assert abs(level) < 1.0
    # 45 min after the restart the baseline part (all but the last hour) holds none of the
    # new process -> no baseline, and the relative features are NaN
    e2 = WindowEngine()
    e2.ingest(df[df["timestamp"] <= T0 + 9900])
    b2 = e2.windows(at=T0 + 9900)
    assert np.isnan(b2.baseline[0, CHANNELS.index("cpu_rate")]).all()
    for stat in ("level_z", "slope_30m", "log_vol_ratio"):
        assert np.isnan(b2.features[0, FEATURE_NAMES.index(f"cpu_rate.{stat}")]), stat
    assert b2.features[0, FEATURE_NAMES.index("restarts.count_1h")] == 1.0


def test_subset_and_concat() -> None:
    e = engine()
    e.ingest(trace(rows(tr.WORKING_SET, np.ones(240)), rows("x_total", np.arange(240.0), pod="q")))
    b = e.windows(at=T0 + 3600)
    s = b.subset(np.array([1]))
    assert s.keys == [b.keys[1]] and s.values.shape[0] == 1 and s.extra["x_total"].shape[0] == 1
    c = WindowBatch.concat([b, s.subset(slice(0, 0)), b])
    assert len(c) == 4 and c.keys[2] == b.keys[0]
    np.testing.assert_array_equal(c.values[2:], b.values)
    with pytest.raises(InputError):
        WindowBatch.concat([])


def test_iter_windows_checks_its_period() -> None:
    df = rows(tr.WORKING_SET, np.ones(40))
    with pytest.raises(InputError):
        list(iter_windows(df, every_s=90))
    assert len(collect_windows(df, every_s=60, engine=engine())) == 11  # T0, ..., T0 + 600


def test_iter_windows_options_keep_empty_steps_drop_stale_windows_and_count_every_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One pod for an hour (stale for its first 30 min: a new pod), then silent past its TTL,
    then back for a minute: the steps in between have no windows."""
    df = trace(rows(tr.WORKING_SET, np.ones(240)),
               rows(tr.WORKING_SET, np.ones(4), t0=T0 + 3 * 3600))
    every = list(iter_windows(df, every_s=60, engine=engine(), keep_empty=True, progress=True,
                              desc="unit"))
    assert [t for t, _, _ in every] == [T0 + 60 * k for k in range(3 * 60 + 1 + 1)]
    assert sum(r.rows for _, _, r in every) == len(df)  # each slice's report, once
    assert any(len(b) == 0 for _, b, _ in every) and any(b.stale.any() for _, b, _ in every)
    assert "unit" in capsys.readouterr().err  # the progress bar
    non_empty = [(t, b) for t, b, _ in every if len(b)]
    assert [(t, len(b)) for t, b, _ in iter_windows(df, every_s=60, engine=engine())] == [
        (t, len(b)) for t, b in non_empty
    ]
    live = list(iter_windows(df, every_s=60, engine=engine(), drop_stale=True))
    assert [t for t, _, _ in live] == [t for t, b in non_empty if not b.stale.all()]
    assert all(len(b) and not b.stale.any() for _, b, _ in live)
    assert len(collect_windows(df, every_s=60, engine=engine(), drop_stale=True)) == len(live)
    for t, b, _ in every:  # causal: no window ends after the step it was asked for
        assert np.all(b.ts <= t)


# ----------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def drift_windows() -> tuple[WindowBatch, pd.DataFrame]:
    df, labels = generate(n_pods_per_kind=3, hours=6, seed=5, shapes=("steady", "throughput_drift"),
                          imperfections=Imperfections.none())
    return collect_windows(df, every_s=300), labels


def test_throughput_collapse_moves_the_features(
    drift_windows: tuple[WindowBatch, pd.DataFrame]
) -> None:
    b, labels = drift_windows
    lab = labels.set_index("pod")
    shape = np.array([lab.loc[k.pod, "shape"] for k in b.keys])
    onset = np.array([lab.loc[k.pod, "onset_ts"] for k in b.keys])
    fail = np.array([lab.loc[k.pod, "failure_ts"] for k in b.keys])
    collapsing = (shape == "throughput_drift") & (b.ts >= onset + 0.6 * (fail - onset))
    healthy = (shape == "steady") & ~b.stale & np.isfinite(b.baseline[:, 3, 0])
    assert collapsing.sum() >= 3 and healthy.sum() >= 10
    z = b.features[:, FEATURE_NAMES.index("cpu_rate.level_z")]
    net = b.features[:, FEATURE_NAMES.index("net_rx_rate.level_z")]
    assert np.nanmax(z[collapsing]) < -5 and np.nanmax(net[collapsing]) < -5
    assert np.nanmax(np.abs(z[healthy])) < 3 and np.nanmax(np.abs(net[healthy])) < 3


def test_features_nan_safe_and_fast() -> None:
    n, L = 1000, 240
    rng = np.random.default_rng(0)
    values = rng.normal(1e9, 1e7, (n, len(CHANNELS), L)).astype(np.float32)
    values[::3] = np.nan  # windows with nothing at all
    values[1::3, :, :100] = np.nan
    limits = np.full((n, len(CHANNELS)), 4e9, np.float32)
    base = np.stack([np.full((n, len(CHANNELS)), 1e9), np.full((n, len(CHANNELS)), 1e7)], -1)
    with np.errstate(all="raise"):
        f = extract_features(values, limits, base.astype(np.float32), 60.0)
    assert f.shape == (n, len(FEATURE_NAMES)) and f.dtype == np.float32
    assert np.isnan(f[::3]).all() and np.isfinite(f[1::3, 0]).all()
    # speed is the bench's (`podguard bench` prints scoring windows/s), not a timed assertion


def test_replay_workload_windows_every_pod() -> None:
    """Ingest + windows every 60 s: 25 pods x 4 h at 15 s (the bench runs 100 pods x 16 h and
    prints the replay's rows/s: speed is a benchmark figure, not a timed assertion here)."""
    df, _ = generate(n_pods=25, hours=4, seed=9)
    e = WindowEngine()
    n_windows = 0
    seen: set[object] = set()
    for t_end, chunk in tr.iter_time_chunks(df, 60):
        e.ingest(chunk)
        batch = e.windows(at=t_end)
        n_windows += len(batch)
        seen.update(batch.keys)
    assert n_windows > 25 * 150  # some pods start late in the trace
    assert len(seen) == df.groupby(["namespace", "pod"]).ngroups


# ----------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    increments=st.lists(st.floats(0, 1e4, allow_nan=False), min_size=40, max_size=200),
    resets=st.lists(st.floats(0.02, 0.98), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_counter_rates_are_never_negative_and_order_free(
    increments: list[float], resets: list[float], seed: int
) -> None:
    v = np.cumsum(increments) + 1e6
    for f in sorted(resets):
        r = int(f * v.size)
        v[r:] = v[r:] - v[r] + increments[r]  # counts again from 0
    df = rows(tr.NET_RX, v)
    a, b = engine(), engine()
    a.ingest(df)
    b.ingest(df.sample(frac=1.0, random_state=seed))  # any arrival order within one call
    wa, wb = a.windows(), b.windows()
    np.testing.assert_array_equal(wa.values, wb.values)
    rate = ch(wa, "net_rx_rate")
    assert (rate[np.isfinite(rate)] >= 0).all()


def test_series_store_grows_resets_and_reuses_every_declared_field() -> None:
    """The store's arrays are declared once (SERIES_FIELDS, BIN_FIELDS, POD_FIELDS): growing
    past the initial capacity, dropping a pod and reusing its slots walk every one of them."""
    import numpy as np

    from detector.windows.series import BIN_FIELDS, POD_FIELDS, SERIES_FIELDS, SeriesStore

    st = SeriesStore(ring=8)
    names = [("ns", f"p{i % 3}", f"c{i}", "container_memory_rss") for i in range(100)]
    sids = [st.series_slot(n) for n in names]
    assert st.capacity >= 100 and len(set(sids)) == 100
    assert all(getattr(st, "s_" + f).shape == (st.capacity,) for f in SERIES_FIELDS)
    assert all(getattr(st, f).shape == (st.capacity, 8) for f in BIN_FIELDS)
    st.bv[sids[0]] = 5.0
    st.s_newest_t[sids[0]] = 123.0
    dropped = [s for s, n in zip(sids, names) if n[1] == "p0"]
    assert st.drop_pod(PodKey("ns", "p0")) and not st.drop_pod(PodKey("ns", "p0"))
    for f, (_dtype, fill) in SERIES_FIELDS.items():
        np.testing.assert_array_equal(getattr(st, "s_" + f)[dropped], fill, err_msg=f)
    for f, (_dtype, fill) in BIN_FIELDS.items():
        np.testing.assert_array_equal(getattr(st, f)[dropped], fill, err_msg=f)
    assert PodKey("ns", "p0") not in st.pods() and len(st.pods()) == 2
    again = st.series_slot(("ns", "p9", "c0", "my_queue_depth"))  # reuses a dropped slot
    assert again in dropped and bool(st.s_alive[again]) and st.s_extra[again] == 0
    assert st.extra_names == ["my_queue_depth"]
    p = int(st.s_pod[again])
    assert st.pod_keys[p] == PodKey("ns", "p9")
    assert all(getattr(st, "p_" + f)[p] == fill for f, (_d, fill) in POD_FIELDS.items())
    size = st.state_size()
    assert size["series"] == 100 - len(dropped) + 1 and size["pods"] == 3
    # containers are numbered within their pod, afresh for a reused pod slot
    assert st.s_container[again] == 0
    p1 = [s for s, n in zip(sids, names) if n[1] == "p1"]
    assert st.s_container[p1].tolist() == list(range(len(p1)))
    again2 = st.series_slot(("ns", "p9", "c0", "container_memory_rss"))
    assert st.s_container[again2] == 0 and st.s_container[
        st.series_slot(("ns", "p9", "c1", "container_memory_rss"))] == 1


def test_prior_peak_and_group_reduce_match_their_plain_definitions() -> None:
    """The window engine's sliding maximum (by doubling widths) and grouped reduction
    (without ufunc.at) against a loop over their definitions, NaN gaps and odd widths."""
    import numpy as np

    from detector.windows.assemble import _group_reduce, _prior_peak

    rng = np.random.default_rng(3)
    for _ in range(200):
        m, n, k = int(rng.integers(1, 6)), int(rng.integers(1, 50)), int(rng.integers(1, 45))
        x = rng.normal(size=(m, n))
        x[rng.random((m, n)) < 0.3] = np.nan
        want = np.full((m, n), np.nan)
        for i in range(m):
            for j in range(n):
                prior = x[i, max(0, j - k): j]
                if np.isfinite(prior).any():
                    want[i, j] = np.nanmax(prior)
        np.testing.assert_array_equal(_prior_peak(x, k), want)
        g = rng.integers(0, 4, size=m)
        got = _group_reduce(np.add, x, g, 5, 0.0)
        for q in range(5):
            np.testing.assert_allclose(got[q], x[g == q].sum(axis=0) if (g == q).any() else 0.0)
        top = _group_reduce(np.maximum, np.nan_to_num(x), g, 5, -1.0)
        for q in range(5):
            np.testing.assert_array_equal(
                top[q], np.nan_to_num(x)[g == q].max(axis=0) if (g == q).any() else -1.0)


def _two_container_engine(side_reason: float | None, side_ws: float = 8e8) -> WindowEngine:
    """``main`` OOM-killed 50 min before the hour's end (its flag 1 from then on), then the
    ``side`` container (``side_ws`` of working set beside main's 1 GB) restarted 20 min
    before the end for ``side_reason`` (1 OOMKilled, 0 another reason, None: no reason
    exported)."""
    e = engine()
    n = 240  # 60 min at 15 s
    i = np.arange(n)
    parts = [
        rows(tr.WORKING_SET, np.full(n, 1e9), container="main"),
        rows(tr.WORKING_SET, np.full(n, side_ws), container="side"),
        rows(tr.RESTARTS, np.where(i >= 40, 1.0, 0.0), container="main"),
        rows(tr.RESTARTS, np.where(i >= 160, 1.0, 0.0), container="side"),
        rows(tr.OOM_KILLED, np.ones(n - 40), t0=T0 + 40 * 15.0, container="main"),
    ]
    if side_reason is not None:
        parts.append(rows(tr.OOM_KILLED, np.full(n - 160, side_reason), t0=T0 + 160 * 15.0,
                          container="side"))
    e.ingest(trace(*parts))
    return e


def _two_containers(side_reason: float | None, side_ws: float = 8e8) -> WindowBatch:
    return _two_container_engine(side_reason, side_ws).windows(at=T0 + 240 * 15.0)


def test_a_pods_oom_flag_is_the_reason_of_its_latest_restart_not_a_sum_over_containers(
) -> None:
    """A sidecar that restarts for another reason after the main container's OOM kill is no
    OOM kill (the flag summed over containers said 1: the main container's old reason)."""
    from detector.models.history import oom_reason_since

    b = _two_containers(side_reason=0.0)
    flag, rst = ch(b, "oom_killed"), ch(b, "restarts")
    r = np.flatnonzero(np.nan_to_num(rst) > 0)
    assert r.size == 2  # the two restarts, in the window
    # after main's kill and before the sidecar's restart: main's OOMKilled
    assert np.nanmax(flag[r[0]:r[1]]) == 1.0
    # from the sidecar's restart on: its own reason, Error
    assert oom_reason_since(flag[None, :], np.array([r[1]]))[0] == 0.0
    assert np.nanmax(flag[r[1]:]) == 0.0
    # the sidecar OOM-killed too: both flags count again (summed, as before)
    b2 = _two_containers(side_reason=1.0)
    assert oom_reason_since(ch(b2, "oom_killed")[None, :], np.array([r[1]]))[0] >= 0.5
    # the sidecar exports no reason: unknown at its restart, not main's old OOMKilled
    b3 = _two_containers(side_reason=None)
    assert np.isnan(oom_reason_since(ch(b3, "oom_killed")[None, :], np.array([r[1]]))[0])
    assert np.nanmax(ch(b3, "oom_killed")[r[0]:r[1]]) == 1.0


def test_a_sidecar_restarting_for_another_reason_after_an_oom_kill_is_counted_once() -> None:
    """Through the level history the daemon keeps: main's OOM kill counts, the sidecar's later
    restart for another reason does not (it did before: the flag summed over containers)."""
    from detector.models.history import LevelHistory

    e = _two_container_engine(side_reason=0.0)
    n = 240
    h = LevelHistory()
    kills = []
    for at in np.arange(T0 + 15 * 60.0, T0 + n * 15.0 + 1, 60.0):
        b = e.windows(at=float(at))
        kills.append(int(h.oom_kills(h.update(b))[0]))
    assert kills[-1] == 1
    assert max(kills) == 1


def test_a_small_sidecars_restart_starts_no_memory_incarnation_of_the_pod() -> None:
    """A sidecar holding 4 % of the pod's working set restarts: the pod's restart count says
    so, but the memory detectors' incarnation does not start again (its history would be cut
    at every restart of a flapping sidecar, hiding the main container's leak); main's own
    restart (its OOM kill) does start one, and its OOMKilled stays the pod's reason."""
    from detector.models.history import oom_reason_since

    b = _two_containers(side_reason=0.0, side_ws=4e7)
    rst = np.flatnonzero(np.nan_to_num(ch(b, "restarts")) > 0)
    assert rst.size == 2
    assert b.memory_restarts is not None
    mem = np.flatnonzero(np.nan_to_num(b.memory_restarts[0]) > 0)
    np.testing.assert_array_equal(mem, rst[:1])  # main's restart only
    np.testing.assert_array_equal(b.restarts_of_memory()[0], b.memory_restarts[0])
    assert oom_reason_since(ch(b, "oom_killed")[None, :], np.array([rst[0]]))[0] >= 0.5
    # a sidecar as large as main: both restarts start one (as before)
    big = _two_containers(side_reason=0.0, side_ws=8e8)
    assert big.memory_restarts is not None
    np.testing.assert_array_equal(np.flatnonzero(np.nan_to_num(big.memory_restarts[0]) > 0), rst)
    # a pod of one container: the restarts channel itself (no copy kept)
    e = engine()
    e.ingest(trace(rows(tr.WORKING_SET, np.full(240, 1e9)),
                   rows(tr.RESTARTS, np.where(np.arange(240) >= 100, 1.0, 0.0))))
    one = e.windows(at=T0 + 3600)
    assert one.memory_restarts is None
    np.testing.assert_array_equal(one.restarts_of_memory(), one.channel("restarts"))
    # subset and concat keep them row by row
    both = WindowBatch.concat([b, one])
    assert both.memory_restarts is not None
    np.testing.assert_array_equal(both.memory_restarts[1], one.channel("restarts")[0])
    np.testing.assert_array_equal(both.subset([0]).restarts_of_memory(), b.memory_restarts)
