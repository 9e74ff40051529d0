"""Scoring a real-node recording against the kernel's kills (deploy.local.node_report.score):
one row per incarnation, alarms counted only inside it and before its kill. The rule
evaluated by a real Prometheus is in tests/stack/test_node_report.py."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deploy.local.node_report import sample_times, score, table
from detector import traces as tr


def _labels() -> dict[str, object]:
    return {"end": 1000.0, "pods": {
        "leaky": {"meant_to_leak": True, "starts": [0.0, 400.0], "oom_kills": [390.0],
                  "leak_onset_after_start_s": 10.0},
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
    # warning captured: (390 - 200) / (390 - 10); the rule's (390 - 250) / 380; within ±30 %:
    # the stated 150 s against the real 190 s (-21 %)
    assert first.onset == 10.0 and first.captured(first.first_alarm) == 190 / 380
    assert second.captured(second.first_alarm) is None  # not killed
    assert first.captured(None) == 0.0 and first.captured(395.0) == 0.0  # missed / too late
    assert ("mean over the kills: podguard 0.50, the rule without for: 0.37, with for: 10m "
            "0.00; podguard's time to OOM at its first alarm within ±30 % of the real one: "
            "1 of 1") in text


def test_an_alarm_on_a_healthy_pod_is_counted() -> None:
    rows = score(_labels(), pd.DataFrame([_v(50, "ok", True, "memory_leak", 9.0)]))
    assert [r.alarms for r in rows if r.pod == "ok"] == [1]
    assert "podguard 1 of 1" in table(rows)




def test_a_dying_incarnations_late_verdict_is_not_the_next_ones_first_alarm() -> None:
    """Evaluated 5 s after the restart (at 405) on the killed incarnation's last samples (the
    new one's first scrape comes at 410), a verdict is the dying incarnation's late word: with
    the trace's sample times it belongs to neither (after the first's kill, on data from
    before the second's start); the second's first alarm is its own, at 420."""
    verdicts = pd.DataFrame([_v(200, "leaky", True, "memory_leak", 150.0),
                             _v(405, "leaky", True, "memory_leak", 1.0),
                             _v(420, "leaky", True, "memory_leak", 300.0)])
    samples = {"leaky": np.array([0.0, 100.0, 200.0, 385.0, 410.0, 420.0])}
    _first, second, _ok = score(_labels(), verdicts, samples=samples)
    assert (second.first_alarm, second.tto_estimate_s, second.alarms) == (420.0, 300.0, 1)
    # by the verdicts' own times only, it would be the second's first alarm
    _first, second, _ok = score(_labels(), verdicts)
    assert (second.first_alarm, second.tto_estimate_s, second.alarms) == (405.0, 1.0, 2)


def test_sample_times_are_each_pods_working_set_samples() -> None:
    trace = pd.DataFrame({"timestamp": [5.0, 0.0, 5.0, 3.0], "pod": ["a", "a", "b", "a"],
                          "metric": [tr.WORKING_SET, tr.WORKING_SET, tr.WORKING_SET, tr.RSS],
                          "value": 1.0})
    got = sample_times(trace)
    assert got["a"].tolist() == [0.0, 5.0] and got["b"].tolist() == [5.0]


def test_sample_times_of_the_scored_container_only_with_labels() -> None:
    """A pod of two containers is scored by the one its labels name: the sidecar's samples,
    which go on while the scored container restarts, do not date its verdicts."""
    trace = pd.DataFrame({"timestamp": [0.0, 5.0, 7.0, 5.0], "pod": ["a", "a", "a", "b"],
                          "container": ["main", "main", "shipper", "main"],
                          "metric": tr.WORKING_SET, "value": 1.0})
    labels = {"pods": {"a": {"container": "main"}, "b": {"container": "main"}}}
    got = sample_times(trace, labels)
    assert got["a"].tolist() == [0.0, 5.0] and got["b"].tolist() == [5.0]
    assert sample_times(trace)["a"].tolist() == [0.0, 5.0, 7.0]


def test_labels_keep_each_containers_events_and_score_the_pods_first() -> None:
    """``labels_from_events`` with a pod of two workloads: the first is the pod's entry, the
    second is under its ``sidecars``; each container's starts, kills and exits are its own
    (a sidecar's restart for an error is not an incarnation of the scored container)."""
    from types import SimpleNamespace

    from deploy.local.node import Workload
    from deploy.local.node_record import labels_from_events

    mib = 1 << 20
    node = SimpleNamespace(namespace="realnode", scrape_interval="5s", workloads=[
        Workload("p", "leak", 256 * mib, ("--onset-s", "60"), leaky=True),
        Workload("p", "flap", 128 * mib, ("--period-s", "200"), container="shipper")])
    events = [
        {"event": "supervisor_start", "cgroup_version": 1},
        {"event": "start", "pod": "p", "container": "main", "ts": 1.0},
        {"event": "start", "pod": "p", "container": "shipper", "ts": 1.5},
        {"event": "exit", "pod": "p", "container": "shipper", "ts": 201.0, "reason": "Error",
         "returncode": 1},
        {"event": "start", "pod": "p", "container": "shipper", "ts": 212.0},
        {"event": "oom_kill", "pod": "p", "container": "main", "ts": 300.0},
        {"event": "start", "pod": "p", "container": "main", "ts": 311.0}]
    got = labels_from_events(node, events, start=0.0, end=400.0, step=5.0)  # type: ignore[arg-type]
    main = got["pods"]["p"]
    assert main["container"] == "main" and main["starts"] == [1.0, 311.0]
    assert main["oom_kills"] == [300.0] and main["exits"] == []
    assert main["leak_onset_after_start_s"] == 60.0 and main["meant_to_leak"]
    side = main["sidecars"]["shipper"]
    assert side["starts"] == [1.5, 212.0] and side["oom_kills"] == []
    assert [e["reason"] for e in side["exits"]] == ["Error"]
    rows = score(got, pd.DataFrame(columns=["ts", "pod", "is_anomaly", "kind"]))
    assert [(r.incarnation, r.killed) for r in rows] == [(0, 300.0), (1, None)]
