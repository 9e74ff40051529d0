"""The rule ``predict_linear(...) > limit`` on a recorded real-node trace, evaluated by a
real Prometheus (deploy.local.node_report.rule_on_trace); the scoring itself is in
tests/test_node_report.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from deploy.local.node_report import rule_on_trace
from detector import traces as tr


@pytest.mark.stack
def test_rule_on_a_recorded_trace_is_evaluated_by_a_real_prometheus(tmp_path: Path) -> None:
    t0 = float(int(time.time()) - 3600)
    rows = []
    limit = 100 * 2**20
    for i in range(0, 1800, 5):  # 30 min at 5 s
        for pod, ws in (("leaky", 10 * 2**20 + i * 40_000.0), ("flat", 50 * 2**20)):
            rows += [(t0 + i, "ns", pod, "main", "", tr.WORKING_SET, ws),
                     (t0 + i, "ns", pod, "main", "", tr.KSM_LIMITS, float(limit))]
    trace = tr.validate_trace(pd.DataFrame(rows, columns=list(tr.TRACE_COLUMNS)))
    got = rule_on_trace(trace, tmp_path / "prom")
    leaky = got["PredictLinearOOM"]["leaky"]
    # 40 kB/s: the 4 h projection passes 100 MiB as soon as two points give the slope
    assert leaky and leaky[0] <= t0 + 60
    assert got["PredictLinearOOMFor10m"]["leaky"][0] >= leaky[0] + 600
    assert "flat" not in got["PredictLinearOOM"]

