"""Scoring a real-node recording: podguard's verdicts and the rule, against the kernel's kills.

Called by the soak benchmark (:mod:`deploy.local.node_soak`), ``benchmarks``-style scripts and
the real-kernel tests. Three inputs, all real:

- the kernel's ground truth (labels from :func:`deploy.local.node_record.labels_from_events`):
  each incarnation's start and the OOM kill that ended it, if any;
- podguard's verdicts: the shipped :class:`detector.pipeline.Pipeline` replayed causally over the
  recorded trace (:func:`podguard_verdicts`, as ``podguard replay`` does);
- the rule users already run, evaluated by the real Prometheus of the harness
  (:data:`RULE_EXPR`, loaded as alerting rules by :func:`install_rule`), read back as the
  ``ALERTS`` series (:func:`rule_firings`).

:func:`score` gives one row per incarnation: when it was killed, podguard's first anomalous
verdict in it (time, kind, time-to-OOM estimate vs the real remaining time), the rule's first
firing; healthy pods count their false alarms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from deploy.local.node import NodePrometheus
from deploy.local.stack import atomic_write, http_json

RULE_EXPR = (
    "predict_linear(container_memory_working_set_bytes[1h], 4*3600)"
    " > on(namespace, pod, container) group_left()"
    ' max by (namespace, pod, container) (kube_pod_container_resource_limits{resource="memory"})'
)
"""``predict_linear(container_memory_working_set_bytes[1h], 4*3600) > limit``, per container."""

RULE_ALERTS = {"PredictLinearOOM": "0s", "PredictLinearOOMFor10m": "10m"}
"""The rule without ``for`` (its earliest possible firing) and with ``for: 10m`` as run."""


def install_rule(prom: NodePrometheus, state: Path) -> None:
    """Load :data:`RULE_EXPR` as alerting rules into the harness's Prometheus (and reload)."""
    groups = {"groups": [{"name": "podguard-realnode-baseline", "interval": "5s", "rules": [
        {"alert": name, "expr": RULE_EXPR, "for": f} for name, f in RULE_ALERTS.items()]}]}
    prom.rules_dir(state).mkdir(parents=True, exist_ok=True)
    atomic_write(prom.rules_dir(state) / "baseline.yml", yaml.safe_dump(groups, sort_keys=False))
    prom.reload(state)


def rule_firings(url: str, *, start: float, end: float, alert: str = "PredictLinearOOM",
                 step: float = 5.0) -> dict[str, list[float]]:
    """Pod -> the times (step-resolution) at which ``alert`` was firing."""
    import urllib.parse

    q = urllib.parse.urlencode({
        "query": f'ALERTS{{alertname="{alert}",alertstate="firing"}}',
        "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}s"})
    answer = http_json("GET", f"{url}/api/v1/query_range?{q}", timeout=30)
    out: dict[str, list[float]] = {}
    for series in answer["data"]["result"]:
        pod = series["metric"].get("pod")
        if pod:
            out.setdefault(pod, []).extend(float(t) for t, _ in series["values"])
    return {p: sorted(set(ts)) for p, ts in out.items()}


def podguard_verdicts(trace: pd.DataFrame, *, step_s: float = 15.0,
                      out: Path | None = None) -> pd.DataFrame:
    """The shipped pipeline replayed causally over ``trace`` (as ``podguard replay``)."""
    import tempfile

    from detector.pipeline import Pipeline
    from detector.replay import read_verdicts, replay_to_file
    from detector.settings import load_settings

    pipe = Pipeline.load(None, settings=load_settings(None).detection)
    with tempfile.TemporaryDirectory() as t:
        path = out or Path(t) / "verdicts.jsonl"
        replay_to_file(trace, pipe, path, step_s=step_s, progress=False, max_future_s=None)
        return read_verdicts(path)


@dataclass
class Row:
    """One container incarnation."""

    pod: str
    incarnation: int
    meant_to_leak: bool
    started: float
    killed: float | None  # the kernel's OOM kill (None: not killed while recorded)
    first_alarm: float | None = None
    first_kind: str = ""
    tto_estimate_s: float | None = None  # podguard's time to OOM at its first alarm
    rule_first: float | None = None
    rule10m_first: float | None = None
    alarms: int = 0  # anomalous verdicts in this incarnation
    onset: float | None = None  # when the leak began, as the workload was told

    def captured(self, alarm: float | None) -> float | None:
        """Share of the warning time an alarm at ``alarm`` captured, (kill - alarm) / (kill -
        onset), at most 1; 0 for no alarm before the kill; None when not killed."""
        if self.killed is None:
            return None
        if alarm is None or alarm > self.killed:
            return 0.0
        onset = self.started if self.onset is None else min(self.onset, self.killed - 1e-9)
        return min(1.0, (self.killed - alarm) / (self.killed - onset))

    @property
    def lead_s(self) -> float | None:
        if self.killed is None or self.first_alarm is None or self.first_alarm > self.killed:
            return None
        return self.killed - self.first_alarm

    @property
    def warned(self) -> bool:
        """Killed, and warned before the kill by a ``memory_leak`` alarm."""
        return self.lead_s is not None and self.first_kind == "memory_leak"

    @property
    def rule_lead_s(self) -> float | None:
        if self.killed is None or self.rule_first is None or self.rule_first > self.killed:
            return None
        return self.killed - self.rule_first

    @property
    def tto_real_s(self) -> float | None:
        if self.killed is None or self.first_alarm is None:
            return None
        return self.killed - self.first_alarm


def _first_in(times: Sequence[float], lo: float, hi: float) -> float | None:
    for t in times:
        if lo <= t <= hi:
            return t
    return None


def sample_times(trace: pd.DataFrame, labels: Mapping[str, Any] | None = None
                 ) -> dict[str, np.ndarray]:
    """Pod -> the sorted times of its working-set samples in a recorded ``trace`` (what
    :func:`score` dates each verdict's data by); with ``labels``, of the container each pod
    is scored by only (a sidecar's samples go on while the scored container restarts)."""
    from detector import traces as tr

    ws = trace[trace["metric"] == tr.WORKING_SET]
    if labels is not None:
        scored = {(str(p), str(i.get("container", "main"))) for p, i in labels["pods"].items()}
        keep = [(str(p), str(c)) in scored for p, c in zip(ws["pod"], ws["container"],
                                                           strict=True)]
        ws = ws[np.asarray(keep, dtype=bool)]
    return {str(pod): np.unique(g["timestamp"].to_numpy(dtype=np.float64))
            for pod, g in ws.groupby("pod", observed=True)}


def _data_times(v: pd.DataFrame, samples: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each verdict's data time: its pod's last sample at or before the verdict (NaN for
    none; the verdict's own time for a pod without samples)."""
    out = v["ts"].to_numpy(dtype=np.float64).copy()
    for pod, idx in v.groupby("pod", observed=True).indices.items():
        t = samples.get(str(pod))
        if t is None:
            continue
        at = np.searchsorted(t, out[idx], side="right") - 1
        out[idx] = np.where(at >= 0, t[np.clip(at, 0, None)], np.nan)
    return out


def score(labels: Mapping[str, Any], verdicts: pd.DataFrame,
          rule: Mapping[str, Sequence[float]] | None = None,
          rule10m: Mapping[str, Sequence[float]] | None = None,
          samples: Mapping[str, np.ndarray] | None = None) -> list[Row]:
    """One :class:`Row` per incarnation of every pod (see the module docstring).

    With ``samples`` (:func:`sample_times` of the recorded trace) a verdict belongs to the
    incarnation whose data it judged - its pod's last sample at or before it is from that
    incarnation - as well as falling before that incarnation's kill: a verdict evaluated
    seconds after a restart on the killed incarnation's last samples (the new one not yet
    scraped) is the dying incarnation's late word, not the new one's first alarm. Without,
    verdicts are dated by their own time only."""
    rows: list[Row] = []
    end = float(labels["end"])
    v = verdicts
    if len(v):
        v = v[v["is_anomaly"].astype(bool)]
    if len(v):
        v = v.assign(data_ts=_data_times(v, samples) if samples is not None
                     else v["ts"].to_numpy(dtype=np.float64))
    for pod, info in labels["pods"].items():
        starts = [float(s) for s in info["starts"]]
        kills = [float(k) for k in info["oom_kills"]]
        for i, s in enumerate(starts):
            nxt = starts[i + 1] if i + 1 < len(starts) else end
            killed = _first_in(kills, s, nxt)
            row = Row(pod, i, bool(info["meant_to_leak"]), s, killed)
            if row.meant_to_leak:
                row.onset = s + float(info.get("leak_onset_after_start_s") or 0.0)
            hi = killed if killed is not None else nxt
            mine = (v[(v["pod"] == pod) & (v["data_ts"] >= s) & (v["ts"] >= s)
                      & (v["ts"] <= hi)] if len(v) else v)
            row.alarms = len(mine)
            if len(mine):
                first = mine.sort_values("ts").iloc[0]
                row.first_alarm, row.first_kind = float(first["ts"]), str(first["kind"])
                tto = first.get("time_to_oom_s")
                row.tto_estimate_s = (float(tto) if tto is not None
                                      and not (isinstance(tto, float) and math.isnan(tto))
                                      else None)
            if rule is not None:
                row.rule_first = _first_in(rule.get(pod, ()), s, hi)
            if rule10m is not None:
                row.rule10m_first = _first_in(rule10m.get(pod, ()), s, hi)
            rows.append(row)
    return rows


def _m(x: float | None) -> str:
    return "-" if x is None else f"{x / 60:.1f}"


def table(rows: Sequence[Row]) -> str:
    """A plain-text table, minutes after each incarnation's start."""
    head = (f"{'pod':<24} {'inc':>3} {'leak':>4} {'OOM':>6} {'podguard':>8} {'kind':<18} "
            f"{'TTO est':>7} {'TTO real':>8} {'rule':>6} {'rule10m':>7} {'alarms':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def rel(t: float | None, r: Row = r) -> float | None:
            return None if t is None else t - r.started

        lines.append(
            f"{r.pod:<24} {r.incarnation:>3} {'yes' if r.meant_to_leak else 'no':>4} "
            f"{_m(rel(r.killed)):>6} {_m(rel(r.first_alarm)):>8} {r.first_kind or '-':<18} "
            f"{_m(r.tto_estimate_s):>7} {_m(r.tto_real_s):>8} {_m(rel(r.rule_first)):>6} "
            f"{_m(rel(r.rule10m_first)):>7} {r.alarms:>6}")
    killed = [r for r in rows if r.killed is not None]
    warned = [r for r in killed if r.warned]
    ruled = [r for r in killed if r.rule_lead_s is not None]
    healthy = [r for r in rows if not r.meant_to_leak]
    lines += ["", "(minutes after the incarnation's start; TTO: time to OOM, podguard's "
              "estimate at its first alarm vs the real one)",
              f"OOM kills: {len(killed)}; warned before the kill by podguard (memory_leak): "
              f"{len(warned)}; by the rule (no for:): {len(ruled)}",
              _captured_line(killed, warned),
              f"false alarms on healthy pods: podguard {sum(r.alarms > 0 for r in healthy)} "
              f"of {len(healthy)} incarnations, the rule "
              f"{sum(r.rule_first is not None for r in healthy)}, the rule with for: 10m "
              f"{sum(r.rule10m_first is not None for r in healthy)}"]
    return "\n".join(lines)


def _captured_line(killed: Sequence[Row], warned: Sequence[Row]) -> str:
    if not killed:
        return "no OOM kill"
    pg = [r.captured(r.first_alarm if r.warned else None) or 0.0 for r in killed]
    rule = [r.captured(r.rule_first) or 0.0 for r in killed]
    close = sum(1 for r in warned if r.tto_estimate_s is not None and r.tto_real_s
                and abs(r.tto_estimate_s - r.tto_real_s) <= 0.3 * r.tto_real_s)
    text = (f"warning time captured, (kill - first alarm) / (kill - leak onset), a miss 0, mean "
            f"over the kills: podguard {sum(pg) / len(pg):.2f}")
    rule10m = [r.captured(r.rule10m_first) or 0.0 for r in killed]
    if any(r.rule_first is not None for r in killed):  # (it fires on every start-up ramp too)
        text += (f", the rule without for: {sum(rule) / len(rule):.2f}, with for: 10m "
                 f"{sum(rule10m) / len(rule10m):.2f}")
    return (text + f"; podguard's time to OOM at its first alarm within ±30 % of the real one: "
            f"{close} of {len(warned)}")


def rule_on_trace(trace: pd.DataFrame, state: Path, *, step: float = 5.0
                  ) -> dict[str, dict[str, list[float]]]:
    """The rule evaluated by a real Prometheus over a *recorded* trace (no live harness).

    The trace's working set and memory limits are backfilled (``promtool tsdb
    create-blocks-from openmetrics``) into a Prometheus of its own in ``state``, and
    :data:`RULE_EXPR` is evaluated with ``query_range`` at ``step``. ``for: 10m`` is applied
    here: firing at ``t`` when the expression held at every step of ``[t - 10 min, t]``. The
    trace has one series per container (no cgroup ``id``), so a run of "true" can span a
    restart, where the live rule (keyed on ``id``) would start pending again.
    Returns ``{alert name: {pod: [times firing]}}`` as :func:`rule_firings` does.
    """
    import urllib.parse

    from deploy.local.prometheus import Prometheus, Series
    from detector import traces as tr

    class _Offline(Prometheus):
        name = "realnode-rule-prometheus"

    prom = _Offline(scrape_interval=f"{step:g}s")
    series = []
    keep = trace[trace["metric"].isin([tr.WORKING_SET, tr.KSM_LIMITS])]
    for (ns, pod, container, metric), g in keep.groupby(
            ["namespace", "pod", "container", "metric"], observed=True):
        labels = {"namespace": str(ns), "pod": str(pod), "container": str(container)}
        if metric == tr.KSM_LIMITS:
            labels["resource"] = "memory"
        series.append(Series(str(metric), labels, list(zip(
            g["timestamp"].astype(float), g["value"].astype(float), strict=True))))
    state.mkdir(parents=True, exist_ok=True)
    from deploy.local.prometheus import to_openmetrics

    prom.backfill(state, to_openmetrics(series))
    prom.start(state)
    try:
        url = prom.url(state)
        start, end = float(trace["timestamp"].min()), float(trace["timestamp"].max())
        q = urllib.parse.urlencode({"query": RULE_EXPR, "start": f"{start:.0f}",
                                    "end": f"{end:.0f}", "step": f"{step:g}s"})
        answer = http_json("GET", f"{url}/api/v1/query_range?{q}", timeout=60)
    finally:
        prom.stop(state)
    fire0: dict[str, list[float]] = {}
    for s in answer["data"]["result"]:
        pod = s["metric"].get("pod")
        if pod:
            fire0.setdefault(pod, []).extend(float(t) for t, _ in s["values"])
    fire10: dict[str, list[float]] = {}
    for pod, ts in fire0.items():
        ts = sorted(set(ts))
        run_start = None
        prev = None
        for t in ts:
            if prev is None or t - prev > step * 1.5:
                run_start = t
            prev = t
            if run_start is not None and t - run_start >= 600:
                fire10.setdefault(pod, []).append(t)
        fire0[pod] = ts
    return {"PredictLinearOOM": fire0, "PredictLinearOOMFor10m": fire10}
