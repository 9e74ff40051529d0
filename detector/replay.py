"""Causal replay of a recorded trace through the pipeline (``podguard replay``).

The trace is cut into ``step``-second slices in time order; after each slice is ingested
the engine is asked for windows at the slice's end, so a verdict at time ``t`` uses only
samples with timestamps up to ``t``. One JSON line per pod per step is written.

Before anything is walked the trace's times are checked
(:func:`detector.traces.check_replayable`): a row more than ``max_future_s`` past the wall
clock, or a span of more than :data:`~detector.traces.MAX_REPLAY_STEPS` steps (one row at
ts=1 beside a 2026 trace), is an :class:`~detector.errors.InputError` naming the row, instead
of an array over the whole span or a loop of millions of empty steps.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pandas as pd

from detector.explain import format_duration
from detector.pipeline import Pipeline
from detector.settings import WindowSettings
from detector.traces import DEFAULT_MAX_FUTURE_S, check_replayable
from detector.verdicts import DETECTOR_OF_KIND, Verdict
from detector.windows import IngestReport, WindowBatch, WindowEngine, iter_windows


@dataclass
class ReplaySummary:
    rows: int = 0
    steps: int = 0
    verdicts: int = 0
    positives: Counter[str] = field(default_factory=Counter)
    #: ``namespace/pod`` -> (time, kind, explanation, time to OOM in s or None) of its first
    #: positive verdict
    first_detection: dict[str, tuple[float, str, str, float | None]] = field(
        default_factory=dict)
    ingest: IngestReport = field(default_factory=IngestReport)
    seconds: float = 0.0
    model_version: str = ""
    pods: set[str] = field(default_factory=set)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows, "steps": self.steps, "verdicts": self.verdicts,
            "positives_by_kind": dict(self.positives),
            "rejected_rows": dict(self.ingest.rejected), "duplicates": self.ingest.duplicates,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds else None,
            "model_version": self.model_version,
            "pods": len(self.pods),
            "first_alarms": [
                {"pod": pod, "ts": ts, "kind": kind, "detector": DETECTOR_OF_KIND.get(kind),
                 "time_to_oom_s": tto}
                for pod, (ts, kind, _text, tto) in sorted(self.first_detection.items())],
        }

    def lines(self, width: int = 150) -> list[str]:
        """The summary as a person reads it: one line per pod with an alarm (its first: when,
        what, time to OOM, why), then how many pods had none."""
        out = [f"replay: {self.rows:,} samples, {len(self.pods)} pods, {self.steps:,} steps, "
               f"model {self.model_version or '?'}"]
        if not self.first_detection:
            return [*out, "no pod flagged"]
        name_w = min(40, max(len(p) for p in self.first_detection))
        out.append(f"  {'pod':<{name_w}}  {'first alarm (UTC)':<19}  {'kind':<15}  "
                   f"{'OOM in':<8}  why")
        for pod, (ts, kind, text, tto) in sorted(self.first_detection.items(),
                                                  key=lambda kv: kv[1][0]):
            when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
            oom = f"~{format_duration(tto)}" if tto is not None else "-"
            head = f"  {pod:<{name_w}}  {when:<19}  {kind:<15}  {oom:<8}  "
            room = max(20, width - len(head))
            why = text if len(text) <= room else text[: room - 3] + "..."
            out.append(head + why)
        quiet = len(self.pods) - len(self.first_detection)
        out.append(f"{len(self.first_detection)} pod(s) flagged, {quiet} without an alarm")
        return out


def make_engine(ws: WindowSettings) -> WindowEngine:
    return WindowEngine(horizon_s=ws.horizon_s, step_s=ws.step_s, pod_ttl_s=ws.pod_ttl_s)


def iter_batches(trace: pd.DataFrame, *, step_s: float, windows: WindowSettings | None = None,
                 progress: bool = False, summary: ReplaySummary | None = None,
                 desc: str = "replay", max_future_s: float | None = DEFAULT_MAX_FUTURE_S
                 ) -> Iterator[tuple[float, WindowBatch, WindowEngine]]:
    """Yields ``(t, windows at t, engine)`` every ``step_s`` seconds of trace time, causally.

    :func:`detector.windows.iter_windows` on an engine built from ``windows`` (default: the
    defaults with ``step_s``), keeping every step, empty ones too; the engine comes back so
    the caller can forget the pods it no longer holds, and ``summary`` gets the rows and the
    ingest counts. ``step_s`` must be a multiple of the window step. The trace's times are
    checked first (:func:`detector.traces.check_replayable`, ``max_future_s``).
    """
    engine = make_engine(windows or WindowSettings(step_s=step_s))
    check_replayable(trace, step_s=min(step_s, engine.step_s), max_future_s=max_future_s)
    if summary is not None:
        summary.rows = len(trace)
    for t_end, batch, report in iter_windows(trace, every_s=step_s, engine=engine,
                                             keep_empty=True, progress=progress, desc=desc):
        if summary is not None:
            summary.ingest.merge(report)
        yield t_end, batch, engine


def iter_replay(trace: pd.DataFrame, pipeline: Pipeline, *, step_s: float,
                windows: WindowSettings | None = None, progress: bool = False,
                summary: ReplaySummary | None = None,
                max_future_s: float | None = DEFAULT_MAX_FUTURE_S) -> Iterator[list[Verdict]]:
    """Yields the verdicts of each evaluation step, causally."""
    summary = summary if summary is not None else ReplaySummary()
    for _t, batch, engine in iter_batches(trace, step_s=step_s, windows=windows,
                                          progress=progress, summary=summary,
                                          max_future_s=max_future_s):
        for key in set(pipeline.known_pods()) - set(engine.pods()):
            pipeline.forget(key)
        verdicts = pipeline.evaluate(batch)
        summary.steps += 1
        summary.verdicts += len(verdicts)
        summary.model_version = pipeline.version
        for v in verdicts:
            summary.pods.add(f"{v.namespace}/{v.pod}")
            if v.is_anomaly:
                summary.positives[v.kind] += 1
                summary.first_detection.setdefault(f"{v.namespace}/{v.pod}",
                                                   (v.ts, v.kind, _text(v), v.time_to_oom_s))
        yield verdicts


def _text(v: Verdict) -> str:
    return v.explanation.text if v.explanation else ""


def replay_to_file(trace: pd.DataFrame, pipeline: Pipeline, out: str | Path, *,
                   step_s: float = 60.0, progress: bool = True,
                   on_step: Callable[[list[Verdict]], None] | None = None,
                   max_future_s: float | None = DEFAULT_MAX_FUTURE_S) -> ReplaySummary:
    """Replays ``trace`` and writes JSON lines to ``out`` (written to a temp name, renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    summary = ReplaySummary()
    started = time.perf_counter()
    with open(tmp, "w") as fh:
        for verdicts in iter_replay(trace, pipeline, step_s=step_s, progress=progress,
                                    summary=summary, max_future_s=max_future_s):
            _write(fh, verdicts)
            if on_step:
                on_step(verdicts)
    tmp.replace(out)
    summary.seconds = time.perf_counter() - started
    return summary


def _write(fh: IO[str], verdicts: list[Verdict]) -> None:
    for v in verdicts:
        fh.write(v.to_json())
        fh.write("\n")


def read_verdicts(path: str | Path) -> pd.DataFrame:
    """Verdict lines back as a DataFrame (for evaluation and tests)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)
