"""The embedded default's first minutes: one clock in every line, a progress line before the
first alarm (detector.runtime.build), and the replay's readable summary (detector.replay)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from detector import scenarios
from detector.explain import describe, format_bytes
from detector.models.base import Attribution
from detector.pipeline import Pipeline
from detector.replay import replay_to_file
from detector.runtime.build import Progress, real_clock_text
from detector.verdicts import DETECTOR_OF_KIND, VERDICT_SCHEMA, Verdict


def _verdict(pod: str, anomaly: bool = False) -> Verdict:
    return Verdict(ts=0.0, namespace="local", pod=pod, node="vm", is_anomaly=anomaly,
                   kind="memory_leak" if anomaly else "none", score=0.0, threshold=1.0)


def test_a_sentence_in_model_time_is_rewritten_in_real_time() -> None:
    """The sentence the pipeline writes (durations and rates of the 60x clock) becomes the
    real clock's: the alert says "OOM in ~2 min", as its time to OOM does, never "2.1 h"."""
    attr = Attribution(values={"mem_working_set.slope_1h": 0.4}, base_value=0.0)
    model_time = describe(attr, {"subject": "working set",
                                 "growth_bytes_per_s": 410 * 2**20 / 3600.0,
                                 "growth_duration_s": 3 * 3600.0,
                                 "time_to_oom_s": 2.1 * 3600.0,
                                 "time_to_oom_low_s": 1.2 * 3600.0,
                                 "time_to_oom_high_s": 2.3 * 3600.0,
                                 "limit_bytes": 1.5 * 2**30})
    assert "OOM in ~2.1 h (72 min-2.3 h)" in model_time and "+410 MiB/h for 3 h" in model_time
    real = real_clock_text(model_time, 60.0)
    assert "OOM in ~2 min (72 s-2 min)" in real and "for 3 min" in real, real
    assert f"+{format_bytes(410 * 2**20 * 60)}/h" in real  # 60x the rate per real hour
    assert "at the 1.5 GiB limit" in real  # sizes are not times
    assert real.endswith(model_time.split("; ", 1)[1])  # the contributors are unchanged
    assert real_clock_text(model_time, 1.0) == model_time


def test_scores_and_thresholds_are_not_mistaken_for_durations() -> None:
    text = "pre-failure drift, score 7.10 over threshold 6.30; top contributors: x (0.40)"
    assert real_clock_text(text, 60.0) == text


def test_progress_lines_until_the_first_alarm_then_silence() -> None:
    now = [1000.0]
    out = io.StringIO()
    p = Progress(out, scale=60.0, judge_after_s=7200.0, every_s=20.0, wall=lambda: now[0])
    p.send([_verdict("trainer-0"), _verdict("leaky-trainer-0")])
    assert out.getvalue() == ""  # not before every_s
    now[0] += 25.0
    p.send([_verdict("trainer-0"), _verdict("leaky-trainer-0")])
    line = out.getvalue().strip()
    assert line.startswith("podguard run: +25 s: 2 pods scored every step, no alarm yet")
    assert "once watched for 120 s, the oldest for 25 s (judged in ~95 s)" in line
    assert " h" not in line and "min" not in line  # one clock: real seconds
    now[0] += 5.0
    p.send([_verdict("trainer-0")])
    assert out.getvalue().count("\n") == 1  # at most one line per every_s
    now[0] += 30.0
    p.send([_verdict("leaky-trainer-0", anomaly=True)])
    now[0] += 60.0
    p.send([_verdict("trainer-0")])
    assert out.getvalue().count("\n") == 1  # the alarm itself is the console's; then silent


@pytest.mark.parametrize("scale", [1.0, 60.0, 3600.0])
def test_the_progress_deadline_is_the_detectors_in_real_seconds(scale: float) -> None:
    out = io.StringIO()
    now = [0.0]
    p = Progress(out, scale=scale, judge_after_s=7200.0, every_s=1.0, wall=lambda: now[0])
    p.send([_verdict("a")])
    now[0] = 2.0
    p.send([_verdict("a")])
    assert f"once watched for {7200.0 / scale:.0f} s" in out.getvalue()


def test_replay_summary_and_verdict_lines_name_detector_model_and_schema(tmp_path: Path) -> None:
    """One pod of every shape, replayed: each line names its detector, the model version
    and the line format; the readable summary has one row per flagged pod (first alarm, kind,
    time to OOM for a leak) and counts the quiet ones."""
    trace, labels = scenarios.generate(n_pods_per_kind=1, hours=8.0, seed=7)
    pipe = Pipeline.load(None)
    summary = replay_to_file(trace, pipe, tmp_path / "v.jsonl", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert {x["schema"] for x in lines} == {VERDICT_SCHEMA}
    assert {x["model_version"] for x in lines} == {pipe.version}
    for x in lines:
        assert x["detector"] == DETECTOR_OF_KIND.get(x["kind"])
    assert list(lines[0])[-3:] == ["detector", "model_version", "schema"]  # added at the end
    flagged = {f"{x['namespace']}/{x['pod']}" for x in lines if x["is_anomaly"]}
    assert flagged and len(summary.first_detection) == len(flagged)
    text = summary.lines()
    n_pods = labels["pod"].nunique()  # a crash loop has a label row per incarnation
    assert text[0].startswith(f"replay: {summary.rows:,} samples, {n_pods} pods")
    assert pipe.version in text[0]
    leaks = set(labels.loc[labels["kind"] == "memory_leak", "pod"])
    for pod in flagged:
        [row] = [r for r in text if r.startswith(f"  {pod} ")]
        kind = summary.first_detection[pod][1]
        assert f" {kind} " in row
        if pod.split("/")[1] in leaks and kind == "memory_leak":
            assert " ~" in row  # its time to OOM
    assert text[-1] == f"{len(flagged)} pod(s) flagged, {n_pods - len(flagged)} without " \
                       f"an alarm"
    as_json = summary.to_json_dict()
    assert as_json["model_version"] == pipe.version and as_json["pods"] == n_pods
    alarms = as_json["first_alarms"]
    assert isinstance(alarms, list) and {a["pod"] for a in alarms} == flagged
