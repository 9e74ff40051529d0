"""Tests of the scenario generator (detector.scenarios) and data/generate_scenarios.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector import traces as tr
from detector.errors import InputError
from detector.scenarios import (
    ALL_SHAPES,
    FAULT_HOURS,
    HEALTHY_SHAPES,
    KIND_OF_SHAPE,
    KINDS,
    LABEL_COLUMNS,
    LATER_SHAPES,
    SPLITS,
    Imperfections,
    generate,
    generate_healthy,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scen() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate(n_pods_per_kind=2, hours=8, seed=4)


def test_deterministic_per_seed() -> None:
    shapes = ("gc_sawtooth", "fast_leak", "throughput_drift")
    a = generate(n_pods_per_kind=1, hours=1, seed=1, shapes=shapes)
    b = generate(n_pods_per_kind=1, hours=1, seed=1, shapes=shapes)
    c = generate(n_pods_per_kind=1, hours=1, seed=2, shapes=shapes)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert not a[0]["value"].equals(c[0]["value"])


def test_trace_is_valid_sorted_and_categorical(scen: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    trace, _ = scen
    assert list(trace.columns) == list(tr.TRACE_COLUMNS)
    assert (np.diff(trace["timestamp"].to_numpy()) >= 0).all()
    for c in tr.STRING_COLUMNS:
        assert isinstance(trace[c].dtype, pd.CategoricalDtype)
    tr.validate_trace(trace)


def test_labels_one_row_per_pod_with_consistent_fields(
    scen: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    trace, labels = scen
    assert list(labels.columns) == list(LABEL_COLUMNS)
    # one row per pod, except a crash-looping leak: one per incarnation the kernel killed
    loop = labels["shape"] == "crashloop_leak"
    assert labels.loc[~loop, "pod"].is_unique
    assert len(labels[~loop]) == 2 * (len(ALL_SHAPES) - 1)
    assert labels.loc[loop].groupby("pod").size().between(1, 4).all()
    for _pod, g in labels[loop].groupby("pod"):
        on, fail = g["onset_ts"].to_numpy(), g["failure_ts"].to_numpy()
        assert (on < fail).all() and (fail[:-1] < on[1:]).all()  # incarnations in order
    assert set(labels["pod"]) == set(trace["pod"].astype(str))
    assert set(labels["kind"]) == set(KINDS)
    metrics = set(trace["metric"].cat.categories)
    for r in labels.to_dict("records"):
        assert r["kind"] == KIND_OF_SHAPE[str(r["shape"])]
        onset, failure = float(r["onset_ts"]), float(r["failure_ts"])
        if r["kind"] == "none":
            assert np.isnan(onset) and np.isnan(failure) and r["fault_metric"] == ""
        else:
            assert onset < failure and set(r["fault_metric"].split("|")) <= metrics
    gpu = labels[labels["kind"] == "gpu_memory_leak"]
    assert (gpu["fault_metric"] == tr.GPU_FB_USED).all()
    drift = labels[labels["kind"] == "drift"]
    assert all({tr.CPU_SECONDS, tr.NET_RX, tr.NET_TX} <= set(m.split("|"))
               for m in drift["fault_metric"])


def test_growing_faults_take_their_drawn_time_and_fit_in_the_trace() -> None:
    """On a long trace the onset-to-OOM times fall in FAULT_HOURS; on a short one every
    fault is shortened so that its failure is observed inside the trace."""
    shapes = tuple(FAULT_HOURS)
    _, long_lab = generate(n_pods_per_kind=6, hours=72, seed=5, shapes=shapes,
                           imperfections=Imperfections.none())
    dur_h = (long_lab["failure_ts"] - long_lab["onset_ts"]) / 3600.0
    for shape, (lo, hi) in FAULT_HOURS.items():
        d = dur_h[long_lab["shape"] == shape]
        if shape == "crashloop_leak":  # a rate is drawn per loop, varied per incarnation
            assert ((d > 0.6 * lo) & (d < 1.4 * hi)).all(), d.tolist()
            continue
        if shape == "periodic_leak":  # the limit is met near a peak of the load cycle
            assert ((d > 0.5 * lo) & (d < 1.2 * hi)).all(), d.tolist()
            continue
        # the failure is where the noisy series first touches the limit: a little earlier
        assert ((d > 0.9 * lo) & (d <= hi * 1.001)).all(), (shape, d.tolist())
    assert dur_h[long_lab["shape"] == "slow_leak"].median() > 8
    short, short_lab = generate(n_pods_per_kind=3, hours=6, seed=5, shapes=shapes,
                                imperfections=Imperfections.none())
    end = float(short["timestamp"].max())
    assert (short_lab["failure_ts"] <= end + 60).all()
    assert (short_lab["failure_ts"] > short_lab["onset_ts"]).all()


def test_every_pod_has_companion_series(scen: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    trace, labels = scen
    metrics: dict[str, set[str]] = {}
    for pod, metric in trace[["pod", "metric"]].drop_duplicates().itertuples(index=False):
        metrics.setdefault(str(pod), set()).add(str(metric))
    base = {tr.WORKING_SET, tr.RSS, tr.CPU_SECONDS, tr.NET_RX, tr.NET_TX, tr.RESTARTS,
            tr.FS_USAGE}
    dcgm = {tr.GPU_FB_USED, tr.GPU_FB_FREE, tr.GPU_UTIL}
    n_gpu = 0
    for pod, ms in metrics.items():
        assert base <= ms, pod
        assert ms & {tr.MEMORY_LIMIT, tr.KSM_LIMITS}, pod
        has_gpu = bool(ms & dcgm)
        assert not has_gpu or dcgm <= ms
        n_gpu += has_gpu
    assert 0 < n_gpu < len(metrics)
    for pod in labels.loc[labels["shape"] == "gpu_creep", "pod"]:
        assert dcgm <= metrics[pod]


def test_leaking_pods_end_at_the_limit(scen: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    trace, labels = scen
    end = float(trace["timestamp"].max())
    leaks = labels[labels["kind"] == "memory_leak"]
    ended = 0
    last_failure = leaks.groupby("pod")["failure_ts"].max()
    for r in leaks.to_dict("records"):
        failure = float(r["failure_ts"])
        p = trace[trace["pod"] == r["pod"]]
        ws = p[(p["metric"] == tr.WORKING_SET) & (p["container"] != "sidecar")]
        lim = p[p["metric"].isin([tr.MEMORY_LIMIT, tr.KSM_LIMITS]) & (p["container"] != "sidecar")]
        if failure == last_failure[r["pod"]]:  # a crash loop lives on after earlier kills
            assert p["timestamp"].max() < failure + 2  # nothing after the failure (jitter 1 s)
        if failure < end:
            ended += 1
            before = ws[(ws["timestamp"] > failure - 600) & (ws["timestamp"] < failure + 2)]
            # a staircase reaches the limit with its last step: the level before it is lower
            near = 0.8 if r["shape"] == "step_leak" else 0.95
            assert before["value"].max() > near * lim["value"].max(), r["shape"]
        first = ws[ws["timestamp"] < leaks.loc[leaks["pod"] == r["pod"], "onset_ts"].min()]
        first = first["value"]
        if len(first):  # an early leak starts in the pod's first minutes
            assert first.median() < 0.7 * lim["value"].max()
    assert ended >= 3


def test_imperfections_present_by_default_and_absent_when_disabled(
    scen: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    trace, _ = scen
    key = ["pod", "container", "metric", "timestamp"]
    assert trace.duplicated(key).sum() > 0
    assert trace["value"].isna().sum() > 0
    cpu = trace[trace["metric"] == tr.CPU_SECONDS].dropna(subset=["value"])
    resets = sum(
        int((np.diff(g["value"].to_numpy()) < 0).sum())
        for _, g in cpu.groupby(["pod", "container"], observed=True)
    )
    assert resets >= 1
    clean, _ = generate(n_pods_per_kind=1, hours=2, seed=4, imperfections=Imperfections.none())
    assert clean.duplicated(key).sum() == 0 and clean["value"].notna().all()
    assert (clean["timestamp"] % 15 == 0).all()


def test_healthy_generator_and_argument_errors() -> None:
    trace, labels = generate_healthy(n_pods=8, hours=1, seed=0)
    assert set(labels["shape"]) <= set(HEALTHY_SHAPES) and (labels["kind"] == "none").all()
    assert len(labels) == 8 and trace["pod"].nunique() == 8
    with pytest.raises(InputError, match="slow_leak"):
        generate_healthy(shapes=("slow_leak",))
    with pytest.raises(InputError, match="bogus"):
        generate(shapes=("bogus",))
    with pytest.raises(InputError):
        generate(hours=0)


def test_generate_scenarios_script_writes_small_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen", REPO / "data" / "generate_scenarios.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--pods-per-kind", "1", "--hours", "1", "--out", str(tmp_path)]) == 0
    trace = tr.load_trace(tmp_path / "trace.parquet")
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert set(labels["pod"]) == set(trace["pod"].astype(str))
    assert (tmp_path / "trace.parquet").stat().st_size < 5e6


def test_shipped_scenario_set_matches_the_script() -> None:
    trace_p = REPO / "data" / "scenarios" / "trace.parquet"
    labels = pd.read_csv(REPO / "data" / "scenarios" / "labels.csv")
    assert trace_p.stat().st_size < 5e6
    _, expected = generate(n_pods_per_kind=2, hours=8, seed=7)
    assert labels["pod"].tolist() == expected["pod"].tolist()
    assert labels["shape"].tolist() == expected["shape"].tolist()


def test_a_late_leak_starts_after_a_long_flat_stretch_and_kills_within_minutes() -> None:
    """``late_leak``: flat for 20-60 min from the pod's start, then an OOM 5-20 min after the
    onset (the train split's ranges), the limit up to 9x the flat level."""
    trace, labels = generate(n_pods_per_kind=6, hours=6, seed=8, shapes=("late_leak",),
                             imperfections=Imperfections.none())
    start = trace.groupby("pod", observed=True)["timestamp"].min()
    lab = labels.set_index("pod")
    flat_min = (lab["onset_ts"] - start.reindex(lab.index)) / 60.0
    assert ((flat_min >= 20 - 0.5) & (flat_min <= 60 + 0.5)).all(), flat_min.tolist()
    dur_min = (lab["failure_ts"] - lab["onset_ts"]) / 60.0
    assert ((dur_min > 0.9 * 5) & (dur_min <= 20 * 1.001)).all(), dur_min.tolist()
    ws = trace[trace["metric"] == tr.WORKING_SET]
    for pod, row in lab.iterrows():
        s = ws[(ws["pod"] == pod) & (ws["container"] != "sidecar")]
        before = s[s["timestamp"] < row["onset_ts"]]["value"]
        assert before.max() < 1.05 * before.min()  # flat until the onset


def _wide(trace: pd.DataFrame, pod: str) -> pd.DataFrame:
    rows = trace[(trace["pod"] == pod) & (trace["container"] != "sidecar")]
    return rows.pivot_table(index="timestamp", columns="metric", values="value",
                            aggfunc="last", observed=True)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_page_cache_reader_ramps_its_working_set_with_a_flat_rss(split: str) -> None:
    """``page_cache``: the working set ramps with the file pages towards the limit, the RSS
    grows by at most the split's share of it, ``container_memory_cache`` holds the file part
    of the working set, and RSS + cache stays under the limit."""
    trace, labels = generate(n_pods_per_kind=4, hours=12, seed=3, shapes=("page_cache",),
                             imperfections=Imperfections.none(), split=split)
    share_hi = SPLITS[split].page_cache_rss_share[1]
    assert (labels["kind"] == "none").all() and len(labels) == 4
    for pod in labels["pod"]:
        w = _wide(trace, pod)
        lim = w[[c for c in (tr.MEMORY_LIMIT, tr.KSM_LIMITS) if c in w]].max(axis=1)
        ws, rss, cache = w[tr.WORKING_SET], w[tr.RSS], w[tr.CACHE]
        n = max(len(w) // 20, 4)
        grow_ws = ws.iloc[-n:].median() - ws.iloc[:n].median()
        grow_rss = rss.iloc[-n:].median() - rss.iloc[:n].median()
        assert grow_ws > 0.2 * ws.iloc[:n].median(), pod  # the working set ramps
        assert grow_rss <= share_hi * grow_ws + 0.02 * rss.iloc[:n].median(), pod
        assert (ws - rss <= cache * 1.01).all(), pod  # the file pages are cache
        assert (rss + cache <= lim * 1.01).all() and (ws < lim).all(), pod


def test_the_test_split_draws_its_own_page_cache_ranges() -> None:
    train, test = SPLITS["train"], SPLITS["test"]
    assert train.page_cache_ramp_h != test.page_cache_ramp_h
    assert train.page_cache_fill != test.page_cache_fill
    assert "page_cache" in ALL_SHAPES and KIND_OF_SHAPE["page_cache"] == "none"


@pytest.mark.parametrize("split", ["train", "test"])
def test_adding_a_later_shape_redraws_none_of_the_other_pods(split: str) -> None:
    """Shapes of ``LATER_SHAPES`` draw from their own seed stream: with them in the list,
    every other pod of the seed - its series, name and imperfections - is what it was."""
    shapes = ("gc_sawtooth", "fast_leak", "throughput_drift")
    a, la = generate(n_pods_per_kind=2, hours=3, seed=11, shapes=shapes, split=split)
    b, lb = generate(n_pods_per_kind=2, hours=3, seed=11, shapes=(*shapes, *LATER_SHAPES),
                     split=split)
    assert set(lb["shape"]) == {*shapes, *LATER_SHAPES}
    pd.testing.assert_frame_equal(la, lb[lb["shape"].isin(shapes)].reset_index(drop=True))
    old = b[b["pod"].astype(str).isin(set(la["pod"]))].reset_index(drop=True)
    for c in tr.STRING_COLUMNS:
        a[c], old[c] = a[c].astype(str), old[c].astype(str)
    pd.testing.assert_frame_equal(a, old)
