"""Pods of several containers: a small sidecar that restarts every few minutes (a log shipper
failing its liveness probe) must not hide the main container's leak. Before the window engine
told the restarts of the containers holding the pod's memory from the others
(``WindowBatch.memory_restarts``), each sidecar restart started a new memory incarnation: the
trend judged only the minutes since, and the young-incarnation gate held every projection
back - a staircase leak was never paged."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector import scenarios
from detector import traces as tr
from detector.pipeline import Pipeline
from detector.replay import iter_replay


def _with_flapping_sidecar(one: pd.DataFrame, every_s: float) -> pd.DataFrame:
    """``one`` (a single pod) with a ``sidecar`` container of 30-40 MiB restarting every
    ``every_s`` for another reason than an OOM kill."""
    ts = np.sort(one["timestamp"].unique())
    first = one.iloc[0]
    age = ts - ts[0]
    restarts = np.floor(age / every_s)
    ws = 30 * 2**20 + 10 * 2**20 * (age % every_s) / every_s

    def series(metric: str, values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"timestamp": ts, "namespace": first["namespace"],
                             "pod": first["pod"], "container": "sidecar", "node": first["node"],
                             "metric": metric, "value": values})

    side = [series(tr.RESTARTS, restarts), series(tr.WORKING_SET, ws), series(tr.RSS, ws),
            series(tr.OOM_KILLED, np.where(restarts > 0, 0.0, np.nan))]
    return (pd.concat([one, *side]).dropna(subset=["value"])
            .sort_values("timestamp", kind="stable").reset_index(drop=True))


def test_a_leak_beside_a_sidecar_restarting_every_ten_minutes_is_paged_before_its_oom(
) -> None:
    trace, labels = scenarios.generate(n_pods_per_kind=1, hours=8.0, seed=7)
    fault = labels[labels["shape"] == "step_leak"].iloc[0]
    one = _with_flapping_sidecar(trace[trace["pod"] == fault["pod"]], every_s=600.0)
    assert (one["container"] == "sidecar").any() and (one["container"] != "sidecar").any()
    pipe = Pipeline.load(None)
    first = next((v for step in iter_replay(one, pipe, step_s=60.0) for v in step
                  if v.is_anomaly), None)
    assert first is not None, "the leak was never paged"
    assert first.kind == "memory_leak"
    assert first.ts < float(fault["failure_ts"]) - 3600.0, (
        f"paged {(float(fault['failure_ts']) - first.ts) / 3600:.1f} h before the OOM")
