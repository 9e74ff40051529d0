"""``podguard replay-demo`` / ``make demo-replay``: the detection core on scenarios, in a minute.

Generates a small labelled scenario trace (one pod of every healthy and faulty shape),
replays it causally through the shipped default model, writes the verdicts and a timeline
plot, and prints what was detected, when (relative to the fault's onset and the failure) and
why. No daemon and no workload: the live version is ``make demo`` (``podguard run`` with no
configuration: the daemon on real training loops). ``podguard demo`` is an alias.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from detector import channels as chan
from detector import scenarios
from detector import traces as tr
from detector.explain import format_duration
from detector.pipeline import Pipeline
from detector.replay import read_verdicts, replay_to_file


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print("podguard replay-demo: the detection core replayed on generated scenarios (no daemon; "
          "`make demo` runs the live daemon). Generating one pod of each healthy and faulty "
          "shape (8 h at 15 s)")
    trace, labels = scenarios.generate(n_pods_per_kind=1, hours=8.0, seed=args.seed)
    pipe = Pipeline.load(None)
    print(f"model {pipe.version}; replaying {len(trace):,} samples causally, one step a minute")
    summary = replay_to_file(trace, pipe, out / "verdicts.jsonl", step_s=60.0)
    verdicts = read_verdicts(out / "verdicts.jsonl")
    lines = summarise(verdicts, labels)
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    plot_timeline(trace, verdicts, labels, out / "timeline.png")
    print(f"\nverdicts: {out / 'verdicts.jsonl'}  plot: {out / 'timeline.png'}  "
          f"({summary.rows / max(summary.seconds, 1e-9):,.0f} samples/s, "
          f"{time.perf_counter() - started:.0f} s in all)")
    return 0


def summarise(verdicts: pd.DataFrame, labels: pd.DataFrame) -> list[str]:
    lines = ["", f"{'pod':<16} {'shape':<17} {'verdict':<16} {'when':<34} why"]
    pos = verdicts[verdicts["is_anomaly"]] if len(verdicts) else verdicts
    for lab in _records(labels):
        g = pos[pos["pod"] == lab.pod]
        if g.empty:
            verdict = "no alarm"
            ok = lab.kind == "none"
            lines.append(f"{lab.pod:<16} {lab.shape:<17} {verdict:<16} {'':<34} "
                         f"{'(correct)' if ok else '(MISSED)'}")
            continue
        first = g.iloc[0]
        when = ""
        onset, failure, first_ts = float(lab.onset_ts), float(lab.failure_ts), float(first["ts"])
        if lab.kind != "none" and math.isfinite(onset):
            after = first_ts - onset
            before = failure - first_ts
            when = (f"{format_duration(after)} after onset, "
                    f"{format_duration(before)} before failure" if after >= 0
                    else f"{format_duration(-after)} BEFORE onset")
        else:
            when = "(false alarm)"
        expl = first.get("explanation") or {}
        lines.append(f"{lab.pod:<16} {lab.shape:<17} {first['kind']:<16} {when:<34} "
                     f"{expl.get('text', '')}")
    faults = labels[labels["kind"] != "none"]
    caught = sum(1 for p in faults["pod"] if (pos["pod"] == p).any())
    healthy = labels[labels["kind"] == "none"]
    false = sum(1 for p in healthy["pod"] if (pos["pod"] == p).any())
    lines += ["", f"faults caught before failure: {caught}/{len(faults)}; "
                  f"healthy pods with an alarm: {false}/{len(healthy)}"]
    return lines


def _records(labels: pd.DataFrame) -> list[Any]:
    """Label rows as attribute objects (``lab.pod``, ``lab.onset_ts``...)."""
    return [SimpleNamespace(**{str(k): v for k, v in r.items()})
            for r in labels.to_dict("records")]


_DISPLAY: dict[str, tuple[str, float]] = {
    "bytes": ("GiB", 2.0**-30), "bytes/s": ("MiB/s", 2.0**-20), "fraction": ("%", 100.0),
    "cores": ("cores", 1.0)}
"""A channel unit (``detector.channels``) -> the unit it is plotted in and the factor."""


def _plotted() -> dict[str, tuple[str, str, float, bool, tuple[str, ...]]]:
    """How each metric of the channel table is drawn: (row label, unit, scale of the
    plotted trace value, is a counter (its rate is drawn), the metric(s) whose sum is the
    row's limit line: the limit's first metric, plus the channel's own for a limit given as
    free capacity). Increase channels (restarts) are drawn as a rate by the fallback."""
    out = {}
    for c in chan.CHANNEL_TABLE:
        if c.kind == "increase" or c.unit not in _DISPLAY:
            continue
        unit, factor = _DISPLAY[c.unit]
        limit: tuple[str, ...] = ()
        if c.limit is not None:
            lim = chan.LIMITS[c.limit]
            first = lim.metrics[0].metric
            limit = (c.metric, first) if lim.plus_used else (first,)
        out[c.metric] = (c.words, unit, c.scale * factor, c.kind == "rate", limit)
    return out


_PLOTTED = _plotted()


def _series(trace: pd.DataFrame, pod: str, metric: str) -> pd.Series:
    rows = trace[(trace["pod"] == pod) & (trace["metric"] == metric)]
    # a duplicated sample counts once (the median of the copies); NaN samples are gaps
    return rows.groupby("timestamp", observed=True)["value"].median().dropna().sort_index()


def _rate(s: pd.Series) -> pd.Series:
    """Per-second rate of a cumulative counter; a reset (a drop) gives no point, and a lone
    corrupt sample (a spike the next one undoes) is smoothed out by a 3-sample median."""
    s = s.rolling(3, center=True, min_periods=1).median()
    t = s.index.to_numpy(dtype=np.float64)
    v = s.to_numpy(dtype=np.float64)
    if t.size < 2:
        return s.iloc[:0]
    dv, dt = np.diff(v), np.diff(t)
    ok = (dv >= 0) & (dt > 0)
    return pd.Series(dv[ok] / dt[ok], index=t[1:][ok])


def plot_timeline(trace: pd.DataFrame, verdicts: pd.DataFrame, labels: pd.DataFrame,
                  path: Path) -> None:
    """One row per pod: its fault metric (memory for healthy pods) in its unit, counters as
    rates (a throughput collapse is a drop, not a bend in a rising line), the limit where
    the metric has one, the fault's onset and podguard's first alarm; one legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pods = list(labels["pod"])
    fig, axes = plt.subplots(len(pods), 1, figsize=(11, 1.45 * len(pods) + 0.8), sharex=True)
    axes = np.atleast_1d(axes)
    t0 = float(trace["timestamp"].min())
    pos = verdicts[verdicts["is_anomaly"]] if len(verdicts) else verdicts
    handles: dict[str, Any] = {}
    for ax, lab in zip(axes, _records(labels)):
        metric = (lab.fault_metric if isinstance(lab.fault_metric, str) and lab.fault_metric
                  else tr.WORKING_SET)
        metric = metric.split("|")[0]
        name, unit, scale, counter, limit_of = _PLOTTED.get(
            metric, (metric, "per s" if metric.endswith("_total") else "",
                     1.0, metric.endswith("_total"), ()))
        s = _series(trace, lab.pod, metric)
        if counter:
            s = _rate(s)
        x = (s.index.to_numpy(dtype=np.float64) - t0) / 3600
        y = s.to_numpy() * scale
        (line,) = ax.plot(x, y, lw=0.8, color="tab:blue")
        if counter and y.size:  # a rate right after a counter reset can be one wild point
            ax.set_ylim(top=max(1.25 * float(np.quantile(y, 0.995)), 1e-9))
        handles.setdefault("metric (rate for counters)", line)
        if limit_of:
            parts = [_series(trace, lab.pod, m) for m in limit_of]
            if all(len(p) for p in parts):
                lim = sum(parts[1:], parts[0]).dropna()
                lim = lim.rolling(5, center=True, min_periods=1).median()  # corrupt samples
                if len(lim):
                    xl = (lim.index.to_numpy(dtype=np.float64) - t0) / 3600
                    (lline,) = ax.plot(xl, lim.to_numpy() * scale, lw=1.0, ls=":",
                                       color="black")
                    handles.setdefault("limit", lline)
        g = pos[pos["pod"] == lab.pod]
        if not g.empty:
            alarm = ax.axvline((g["ts"].iloc[0] - t0) / 3600, color="tab:red", lw=1.4)
            handles.setdefault("podguard's first alarm", alarm)
        onset = float(lab.onset_ts)
        if lab.kind != "none" and math.isfinite(onset):
            on = ax.axvline((onset - t0) / 3600, color="tab:orange", ls="--", lw=1)
            handles.setdefault("fault onset", on)
        ax.set_title(f"{lab.pod} ({lab.shape}): {name}", fontsize=8, loc="left", pad=2)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_ylim(bottom=0)  # after the top: set_ylim(top=) above keeps it
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    axes[-1].set_xlabel("hours since the start of the trace")
    fig.suptitle("podguard replay-demo: each pod's fault metric (memory for healthy pods)",
                 fontsize=10)
    fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=8, ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
