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
from pathlib import Path
from typing import IO

import pandas as pd

from detector.pipeline import Pipeline
from detector.settings import WindowSettings
from detector.traces import DEFAULT_MAX_FUTURE_S, check_replayable
from detector.verdicts import Verdict
from detector.windows import IngestReport, WindowBatch, WindowEngine, iter_windows


@dataclass
class ReplaySummary:
    rows: int = 0
    steps: int = 0
    verdicts: int = 0
    positives: Counter[str] = field(default_factory=Counter)
    first_detection: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    ingest: IngestReport = field(default_factory=IngestReport)
    seconds: float = 0.0

    def to_json_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows, "steps": self.steps, "verdicts": self.verdicts,
            "positives_by_kind": dict(self.positives),
            "rejected_rows": dict(self.ingest.rejected), "duplicates": self.ingest.duplicates,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds else None,
        }


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
        for v in verdicts:
            if v.is_anomaly:
                summary.positives[v.kind] += 1
                summary.first_detection.setdefault(f"{v.namespace}/{v.pod}",
                                                   (v.ts, v.kind, _text(v)))
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
