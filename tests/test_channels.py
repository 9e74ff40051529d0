"""The channel table (detector.channels) is the one place a metric is declared: the window
engine, the trace names, the settings' series, the retraining history, the explanations, the
evaluation and the drift feature selection all read it; and its worked example, the page
cache, tells a real page-cache reader from real leaks on the shipped real-kernel trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector import channels as chan
from detector import evaluate, traces, windows
from detector.explain import human_name
from detector.settings import PrometheusSourceSettings
from detector.windows import WindowEngine, iter_windows
from detector.windows.features import _SCALE_FLOOR
from detector.windows.series import KNOWN
from training.fit import drift_feature_names
from training.history import HISTORY_METRICS, OOM_KILLED

REAL = Path(__file__).resolve().parents[1] / "data" / "real" / "mixed.csv.gz"
MIB = 2.0**20


def test_every_reader_derives_from_the_table() -> None:
    assert tuple(c.name for c in chan.CHANNEL_TABLE) == windows.CHANNELS
    assert windows.MEMORY_CHANNELS == ("mem_working_set", "mem_rss", "gpu_fb_used")
    assert set(windows.THROUGHPUT_CHANNELS) == {"cpu_rate", "gpu_util", "net_rx_rate",
                                                "net_tx_rate"}
    for row in chan.CHANNEL_TABLE:  # every channel metric is known to the engine
        target, _kind, scale = KNOWN[row.metric]
        assert target == windows.CHANNELS.index(row.name) and scale == row.scale
        assert windows.CHANNEL_METRICS[row.name] == row.metric
        assert evaluate.METRIC_CHANNEL[row.metric] == row.name
    for lim in chan.LIMIT_TABLE:
        for m in lim.metrics:
            assert m.metric in KNOWN
    # the series the daemon pulls and training reads are the table's
    assert set(PrometheusSourceSettings().metrics) == set(chan.read_metrics())
    assert set(HISTORY_METRICS) == set(chan.read_metrics()) - {traces.KSM_LIMITS, OOM_KILLED}
    assert traces.CACHE == "container_memory_cache"
    assert traces.CACHE in HISTORY_METRICS
    assert _SCALE_FLOOR.tolist() == [c.floor for c in chan.CHANNEL_TABLE]
    assert {"mem_working_set", "mem_rss", "mem_cache"} == evaluate.MEMORY_FAMILY


def test_feature_names_and_their_words_come_from_the_table() -> None:
    names = windows.FEATURE_NAMES
    assert len(names) == len(set(names))
    for row in chan.CHANNEL_TABLE:
        for stat in row.stats():
            assert f"{row.name}.{stat}" in names
            assert human_name(f"{row.name}.{stat}").startswith(
                dict(row.feature_words).get(stat, row.words).split()[0])
    assert "restarts.level_z" not in names and "restarts.count_1h" in names
    assert "mem_cache.frac_limit" not in names  # not a leak channel
    assert human_name("cpu_rate.level_z") == "CPU level vs baseline"
    assert human_name("mem_cache.slope_30m") == "page cache trend (30 min)"
    assert human_name("mem_rss.slope_30m") == "RSS growth"
    assert human_name("restarts.count_1h") == "restarts in the last hour"
    # statistics no feature has are not in the words table (they drifted before)
    assert set(chan.STAT_WORDS) == {n.partition(".")[2] for n in names}


def test_drift_features_are_the_rows_drift_stats() -> None:
    picked = drift_feature_names(windows.FEATURE_NAMES)
    assert "cpu_rate.level_z" in picked and "restarts.count_1h" in picked
    assert "mem_working_set.log_vol_ratio" in picked
    assert "mem_working_set.level_z" not in picked  # memory levels are the leak detector's
    assert not [n for n in picked if n.startswith("mem_cache.")]  # not learnt until retrained
    assert not [n for n in picked if n.endswith((".frac_limit", ".floor_slope"))]


def _trace(rows: list[tuple[float, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"timestamp": t, "namespace": "ns", "pod": "p", "container": c,
                          "node": "n1", "metric": m, "value": v} for t, c, m, v in rows])


def test_limits_follow_the_limit_table() -> None:
    rows = []
    for k in range(1, 121):
        t = 60.0 * k
        rows += [(t, "main", traces.WORKING_SET, 300 * MIB), (t, "main", traces.CACHE, 50 * MIB),
                 (t, "main", traces.KSM_LIMITS, 1024 * MIB),
                 (t, "main", traces.GPU_FB_USED, 1000.0), (t, "main", traces.GPU_FB_FREE, 3000.0)]
    eng = WindowEngine(horizon_s=3600, step_s=60)
    eng.ingest(_trace(rows))
    b = eng.windows(at=7200.0)
    lim = dict(zip(b.channels, b.limits[0].tolist()))
    # the memory limit (here kube-state-metrics' fallback) bounds every row naming "memory"
    assert lim["mem_working_set"] == lim["mem_rss"] == lim["mem_cache"] == 1024 * MIB
    assert lim["gpu_fb_used"] == 4000 * MIB  # used + free, DCGM's MiB scaled to bytes
    assert np.isnan(lim["cpu_rate"]) and np.isnan(lim["fs_usage"])  # no fs limit given
    assert float(b.channel("mem_cache")[0, -1]) == 50 * MIB


@pytest.fixture(scope="module")
def real_windows() -> windows.WindowBatch:
    trace = traces.load_trace(REAL)
    last = None
    for _t, batch, _rep in iter_windows(trace, every_s=60.0,
                                        engine=WindowEngine(horizon_s=3600, step_s=15)):
        last = batch
    assert last is not None
    return last


def test_page_cache_tells_a_cache_reader_from_anonymous_growth(
        real_windows: windows.WindowBatch) -> None:
    """data/real/mixed (real cgroups, real cAdvisor): the page-cache reader's working set is
    mostly page cache, the leaks' is anonymous memory (RSS) with almost no cache."""
    b = real_windows
    peak = {str(k): {c: float(np.nanmax(b.channel(c)[i])) for c in
                     ("mem_working_set", "mem_rss", "mem_cache")} for i, k in enumerate(b.keys)}
    reader = peak["realnode/pagecache-reader"]
    assert reader["mem_cache"] > 0.8 * 256 * MIB
    assert reader["mem_rss"] < 0.1 * reader["mem_cache"]
    for pod in ("slow-leak", "crashloop-leak", "trainer-kept-loss", "trainer-loader-leak"):
        p = peak[f"realnode/{pod}"]
        assert p["mem_rss"] > 0.95 * p["mem_working_set"], pod
        assert p["mem_cache"] < 0.05 * p["mem_rss"], pod
