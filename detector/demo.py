"""``podguard demo`` / ``make demo``: the embedded default, end to end, in about a minute.

Generates a small labelled scenario trace (one pod of every healthy and faulty shape),
replays it causally through the shipped default model, writes the verdicts and a timeline
plot, and prints what was detected, when (relative to the fault's onset and the failure) and
why. (Once the daemon exists, ``podguard run`` with no configuration is the live version.)
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

from detector import scenarios
from detector.explain import format_duration
from detector.pipeline import Pipeline
from detector.replay import read_verdicts, replay_to_file


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print("podguard demo: generating one pod of each healthy and faulty shape (8 h at 15 s)")
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


def plot_timeline(trace: pd.DataFrame, verdicts: pd.DataFrame, labels: pd.DataFrame,
                  path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pods = list(labels["pod"])
    fig, axes = plt.subplots(len(pods), 1, figsize=(11, 1.3 * len(pods)), sharex=True)
    axes = np.atleast_1d(axes)
    t0 = float(trace["timestamp"].min())
    pos = verdicts[verdicts["is_anomaly"]] if len(verdicts) else verdicts
    for ax, lab in zip(axes, _records(labels)):
        metric = (lab.fault_metric if isinstance(lab.fault_metric, str) and lab.fault_metric
                  else "container_memory_working_set_bytes")
        metric = metric.split("|")[0]
        rows = trace[(trace["pod"] == lab.pod) & (trace["metric"] == metric)]
        s = rows.groupby("timestamp", observed=True)["value"].sum()
        ax.plot((s.index.to_numpy(dtype=np.float64) - t0) / 3600, s.to_numpy(), lw=0.7,
                color="tab:blue")
        g = pos[pos["pod"] == lab.pod]
        if not g.empty:
            ax.axvline((g["ts"].iloc[0] - t0) / 3600, color="tab:red", lw=1.2, label="alarm")
        onset = float(lab.onset_ts)
        if lab.kind != "none" and math.isfinite(onset):
            ax.axvline((onset - t0) / 3600, color="tab:orange", ls="--", lw=1, label="onset")
        ax.set_ylabel(lab.shape, rotation=0, ha="right", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    axes[-1].set_xlabel("hours")
    axes[0].set_title("fault metric per pod; red = podguard alarm, orange = fault onset")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
