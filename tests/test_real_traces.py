"""The shipped real traces (data/real/): a valid trace, the memory breakdown present, and the
kernel's ground truth consistent with what cAdvisor and the supervisor's counters recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from deploy.local.node_record import BREAKDOWN
from detector import traces as tr

HERE = Path(__file__).resolve().parent.parent / "data" / "real"


@pytest.fixture(scope="module")
def mixed() -> tuple[pd.DataFrame, dict[str, Any]]:
    trace = tr.load_trace(HERE / "mixed.csv.gz")
    labels = json.loads((HERE / "mixed.labels.json").read_text())
    return trace, labels


def _series(trace: pd.DataFrame, pod: str, metric: str) -> pd.Series:
    s = trace[(trace["pod"] == pod) & (trace["metric"] == metric)]
    return s.set_index("timestamp")["value"].sort_index()


def test_small_and_every_pod_has_every_channel(mixed: tuple[pd.DataFrame, dict[str, Any]]
                                               ) -> None:
    trace, labels = mixed
    assert sum(p.stat().st_size for p in HERE.iterdir()) < 2_000_000
    assert set(trace["pod"].astype(str)) == set(labels["pods"])
    wanted = {tr.WORKING_SET, tr.RSS, tr.CPU_SECONDS, tr.MEMORY_LIMIT, tr.RESTARTS,
              tr.KSM_LIMITS, *BREAKDOWN}
    for pod in labels["pods"]:
        have = set(trace[trace["pod"] == pod]["metric"].astype(str))
        assert wanted <= have, (pod, wanted - have)


def test_every_kernel_oom_kill_is_at_the_limit_and_counted(
        mixed: tuple[pd.DataFrame, dict[str, Any]]) -> None:
    trace, labels = mixed
    kills = 0
    for pod, info in labels["pods"].items():
        limit = info["memory_limit_bytes"]
        restarts = _series(trace, pod, tr.RESTARTS)
        assert float(restarts.iloc[-1]) == len(info["exits"]), pod
        for t in info["oom_kills"]:
            kills += 1
            usage = _series(trace, pod, "container_memory_usage_bytes")
            before = usage[(usage.index > t - 30) & (usage.index <= t)]
            assert before.max() >= 0.85 * limit, (pod, t, before.max() / limit)
            assert float(restarts[restarts.index > t + 10].iloc[0]) >= 1
        assert all(e["reason"] == "OOMKilled" for e in info["exits"]), pod
        assert len(info["exits"]) == len(info["oom_kills"]), pod
    assert kills >= 5


def test_healthy_shapes_were_never_killed(mixed: tuple[pd.DataFrame, dict[str, Any]]) -> None:
    trace, labels = mixed
    for pod, info in labels["pods"].items():
        if not info["meant_to_leak"]:
            assert info["oom_kills"] == [] and info["exits"] == [], pod
            assert float(_series(trace, pod, tr.RESTARTS).max()) == 0.0


def test_dataloader_worker_kill_is_oomkilled_by_the_kernels_count_not_the_signal(
        mixed: tuple[pd.DataFrame, dict[str, Any]]) -> None:
    _, labels = mixed
    exits = labels["pods"]["trainer-loader-leak"]["exits"]
    assert exits and all(e["returncode"] == 1 and e["signal"] is None and e["oom_kills"] >= 1
                         for e in exits)


def test_page_cache_reader_is_cache_at_the_limit_with_flat_rss(
        mixed: tuple[pd.DataFrame, dict[str, Any]]) -> None:
    trace, labels = mixed
    limit = labels["pods"]["pagecache-reader"]["memory_limit_bytes"]
    late = lambda m: _series(trace, "pagecache-reader", m).iloc[-60:]  # noqa: E731
    assert late("container_memory_usage_bytes").median() > 0.9 * limit
    assert late("container_memory_cache").median() > 10 * late(tr.RSS).median()
    rss = _series(trace, "pagecache-reader", tr.RSS).iloc[20:]
    assert float(np.ptp(rss.to_numpy())) < 4 * 2**20  # flat anonymous memory
    # ... and yet the working set ramps, as re-read file pages move to the active list
    ws = _series(trace, "pagecache-reader", tr.WORKING_SET)
    assert ws.iloc[-60:].median() > 1.5 * ws.iloc[12:24].median()
