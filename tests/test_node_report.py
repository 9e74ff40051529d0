"""Scoring a real-node recording against the kernel's kills (deploy.local.node_report.score):
one row per incarnation, alarms counted only inside it and before its kill."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from deploy.local.node_report import rule_on_trace, score, table
from detector import traces as tr


def _labels() -> dict[str, object]:
    return {"end": 1000.0, "pods": {
        "leaky": {"meant_to_leak": True, "starts": [0.0, 400.0], "oom_kills": [390.0]},
        "ok": {"meant_to_leak": False, "starts": [0.0], "oom_kills": []}}}


def _v(ts: float, pod: str, anomaly: bool, kind: str = "none",
       tto: float | None = None) -> dict[str, object]:
    return {"ts": ts, "pod": pod, "is_anomaly": anomaly, "kind": kind, "time_to_oom_s": tto}


def test_rows_per_incarnation_with_lead_kind_and_time_to_oom() -> None:
    verdicts = pd.DataFrame([
        _v(100, "leaky", False), _v(200, "leaky", True, "memory_leak", 150.0),
        _v(300, "leaky", True, "memory_leak", 80.0),
        _v(395, "leaky", True, "drift"),  # after the kill, before the restart: nobody's
        _v(500, "leaky", True, "drift"),
        _v(600, "ok", False)])
    rows = score(_labels(), verdicts, rule={"leaky": [250.0, 450.0]}, rule10m={})
    first, second, ok = rows
    assert (first.incarnation, first.killed, first.first_alarm, first.first_kind) == (
        0, 390.0, 200.0, "memory_leak")
    assert first.lead_s == 190.0 and first.tto_estimate_s == 150.0 and first.tto_real_s == 190.0
    assert first.alarms == 2 and first.rule_first == 250.0 and first.rule_lead_s == 140.0
    assert first.rule10m_first is None
    assert (second.killed, second.first_kind, second.alarms, second.lead_s) == (
        None, "drift", 1, None)
    assert second.rule_first == 450.0
    assert ok.alarms == 0 and ok.first_alarm is None
    text = table(rows)
    assert "OOM kills: 1; warned before the kill by podguard (memory_leak): 1" in text
    assert "false alarms on healthy pods: podguard 0 of 1" in text


def test_an_alarm_on_a_healthy_pod_is_counted() -> None:
    rows = score(_labels(), pd.DataFrame([_v(50, "ok", True, "memory_leak", 9.0)]))
    assert [r.alarms for r in rows if r.pod == "ok"] == [1]
    assert "podguard 1 of 1" in table(rows)


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
