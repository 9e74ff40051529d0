"""The window engine: the one object callers hold (replay, daemon sources, training).

:class:`WindowEngine` validates its parameters and joins the three parts of the engine: a
:class:`~detector.windows.series.SeriesStore` (the bounded per-series state), an
:class:`~detector.windows.ingest.Ingester` (samples in) and a
:class:`~detector.windows.assemble.WindowAssembler` (windows out). :func:`iter_windows` and
:func:`collect_windows` are the one causal replay loop over a whole trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from detector import traces as tr
from detector.errors import InputError
from detector.windows.assemble import Geometry, WindowAssembler
from detector.windows.batch import IngestReport, PodKey, Sample, WindowBatch
from detector.windows.ingest import Ingester
from detector.windows.series import SeriesStore


class WindowEngine:
    """Bounded per-pod history of every series, resampled to windows on request.

    Parameters (all keyword-only, all in seconds):

    * ``horizon_s`` - window length (the grid has ``horizon_s / step_s`` points);
    * ``step_s`` - grid step and bin width;
    * ``max_late_s`` - a late sample is merged if it is at most ``horizon_s + max_late_s``
      behind its series' newest sample (older ones are rejected as ``too_old``);
    * ``max_gap_s`` - gaps up to this long are forward-filled on the grid, longer ones are NaN;
    * ``stale_after_s`` - a window whose newest data is older than this is ``stale``;
    * ``min_history_s`` - a pod seen for less than this is ``stale`` (new pod; 2 min: the
      leak decision judges an imminent OOM from then, drift waits 5 min, see the pipeline);
    * ``baseline_exclude_s`` - the most recent part of a window left out of its baseline
      (default: one hour, at most a quarter of the horizon);
    * ``min_baseline_s`` - data needed in the baseline part before a baseline is given;
    * ``pod_ttl_s`` - a pod with no sample for this long is forgotten;
    * ``origin_s`` - bins end at ``origin_s + k * step_s``.
    """

    def __init__(
        self,
        *,
        horizon_s: float = 4 * 3600,
        step_s: float = 60,
        max_late_s: float = 900,
        max_gap_s: float = 300,
        stale_after_s: float = 300,
        min_history_s: float = 120,
        baseline_exclude_s: float | None = None,
        min_baseline_s: float = 1800,
        pod_ttl_s: float = 900,
        origin_s: float = 0.0,
    ) -> None:
        if baseline_exclude_s is None:
            baseline_exclude_s = min(3600.0, horizon_s / 4)
        problems = [
            f"{name} must be > 0 (got {val!r})"
            for name, val in (
                ("horizon_s", horizon_s),
                ("step_s", step_s),
                ("stale_after_s", stale_after_s),
                ("min_history_s", min_history_s),
                ("pod_ttl_s", pod_ttl_s),
            )
            if not (isinstance(val, int | float) and math.isfinite(val) and val > 0)
        ]
        problems += [
            f"{name} must be >= 0 (got {val!r})"
            for name, val in (
                ("max_late_s", max_late_s),
                ("max_gap_s", max_gap_s),
                ("baseline_exclude_s", baseline_exclude_s),
                ("min_baseline_s", min_baseline_s),
            )
            if not (isinstance(val, int | float) and math.isfinite(val) and val >= 0)
        ]
        if not problems and horizon_s < 4 * step_s:
            problems.append(f"horizon_s ({horizon_s}) must be at least 4 steps ({4 * step_s})")
        if not problems and baseline_exclude_s >= horizon_s:
            problems.append("baseline_exclude_s must be shorter than horizon_s")
        if problems:
            raise InputError("WindowEngine: " + "; ".join(problems))
        self.horizon_s = float(horizon_s)
        self.step_s = float(step_s)
        self.max_late_s = float(max_late_s)
        self.max_gap_s = float(max_gap_s)
        self.stale_after_s = float(stale_after_s)
        self.min_history_s = float(min_history_s)
        self.baseline_exclude_s = float(baseline_exclude_s)
        self.min_baseline_s = float(min_baseline_s)
        self.pod_ttl_s = float(pod_ttl_s)
        self.origin_s = float(origin_s)

        self.n_bins = max(4, round(self.horizon_s / self.step_s))  # L
        gap_bins = int(self.max_gap_s // self.step_s)
        lead = gap_bins + 1  # bins gathered before the window (rates, fill)
        ring = self.n_bins + lead + int(np.ceil(self.max_late_s / self.step_s)) + 1
        self.geometry = Geometry(
            n_bins=self.n_bins, step_s=self.step_s, origin_s=self.origin_s, lead=lead,
            gap_bins=gap_bins, stale_after_s=self.stale_after_s,
            min_history_s=self.min_history_s, baseline_exclude_s=self.baseline_exclude_s,
            min_baseline_s=self.min_baseline_s, pod_ttl_s=self.pod_ttl_s)
        self.grid = self.geometry.grid
        self.store = SeriesStore(ring)
        self._ingester = Ingester(self.store, step_s=self.step_s, origin_s=self.origin_s,
                                  lead=lead, pod_ttl_s=self.pod_ttl_s)
        self._assembler = WindowAssembler(self.store, self.geometry)

    @property
    def clock(self) -> float:
        """The newest timestamp ingested (-inf before any)."""
        return self.store.clock

    # ---------------------------------------------------------------- registry

    def pods(self) -> list[PodKey]:
        """The pods currently held, in registration order."""
        return self.store.pods()

    def drop_pod(self, key: PodKey) -> bool:
        """Forgets a pod and all its series; returns whether it was held."""
        return self.store.drop_pod(key)

    def forget_vanished(self, now: float | None = None) -> list[PodKey]:
        """Drops pods with no sample in the last ``pod_ttl_s`` before ``now`` (default: clock)."""
        t = self.clock if now is None else float(now)
        return self.store.forget_vanished(t, self.pod_ttl_s)

    def state_size(self) -> dict[str, int]:
        """Pods and series held and the bytes of the per-series ring buffers."""
        return self.store.state_size()

    # ---------------------------------------------------------------- samples in

    def ingest_samples(self, samples: Iterable[Sample]) -> IngestReport:
        """Ingests samples from a streaming source (see :meth:`ingest`)."""
        return self._ingester.ingest_samples(samples)

    def ingest(self, df: pd.DataFrame | Mapping[str, Any]) -> IngestReport:
        """Ingests rows in the trace format (a DataFrame or a mapping of equal-length columns).

        Vectorised over the rows. Bad rows are rejected and counted by reason in the returned
        report (``bad_timestamp``, ``missing_label``, ``nan_value``, ``inf_value``,
        ``negative_counter``, ``negative_value``, ``too_old``, ``pause_container``,
        ``unused_metric``); only a frame without the required columns raises
        :class:`InputError` (before anything is stored). Pods silent for ``pod_ttl_s`` are
        forgotten afterwards.
        """
        return self._ingester.ingest(df)

    # ---------------------------------------------------------------- windows out

    def window_end(self, at: float) -> float:
        """The end (grid point 0) of the window evaluated at ``at``: a bin boundary <= at."""
        return self.origin_s + math.floor((at - self.origin_s) / self.step_s) * self.step_s

    def windows(
        self, at: float | None = None, pods: Iterable[PodKey] | None = None
    ) -> WindowBatch:
        """The windows of all held pods (or of ``pods``) ending at the last bin boundary <= at.

        ``at`` defaults to the engine clock. Pods with no data in the window, or silent for
        ``pod_ttl_s`` before its end, are left out; so are requested pods that are not held.
        Only samples with timestamps <= the window end are used.
        """
        return self._assembler.windows(at, pods)

    def empty_batch(self) -> WindowBatch:
        """A batch of zero windows with this engine's grid, channels and features."""
        return self._assembler.empty_batch()


# ---------------------------------------------------------------------------------------------
# Replaying a whole trace (training, evaluation, tests)


def iter_windows(
    trace: pd.DataFrame,
    *,
    every_s: float = 600.0,
    engine: WindowEngine | None = None,
    start: float | None = None,
    keep_empty: bool = False,
    drop_stale: bool = False,
    progress: bool = False,
    desc: str = "windows",
) -> Iterator[tuple[float, WindowBatch, IngestReport]]:
    """Feeds ``trace`` to ``engine`` in time order, one ``engine.step_s`` slice at a time, and
    yields ``(t, windows at t, ingest report since the previous yield)`` every ``every_s``
    seconds of trace time (at multiples of ``every_s``; ``every_s`` must be a multiple of the
    engine step, :class:`InputError` otherwise).

    The one causal replay loop (the replay, evaluation and training all use it): a window at
    ``t`` has seen only samples <= t. Slices ending before ``start`` are ingested but yield
    nothing. ``drop_stale`` leaves stale windows out; a batch left empty is skipped unless
    ``keep_empty``. ``progress`` shows a bar of slices labelled ``desc`` (stderr).
    """
    eng = WindowEngine() if engine is None else engine
    ratio = every_s / eng.step_s
    if not every_s > 0 or abs(ratio - round(ratio)) > 1e-9:
        raise InputError(
            f"every_s ({every_s}) must be a positive multiple of the step ({eng.step_s})"
        )
    frame = tr.sort_by_time(trace)
    bar = _progress_bar(frame, eng.step_s, desc) if progress else None
    rep = IngestReport()
    try:
        for t_end, chunk in tr.iter_time_chunks(frame, eng.step_s):
            rep.merge(eng.ingest(chunk))
            if bar is not None:
                bar.update(1)
            if start is not None and t_end < start:
                continue
            k = (t_end - eng.origin_s) / every_s
            if abs(k - round(k)) > 1e-6:
                continue
            batch = eng.windows(at=t_end)
            if drop_stale and len(batch):
                stale = np.asarray(batch.stale, dtype=bool)
                if stale.any():
                    batch = batch.subset(np.flatnonzero(~stale))
            if len(batch) or keep_empty:
                yield t_end, batch, rep
                rep = IngestReport()
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(frame: pd.DataFrame, step_s: float, desc: str) -> Any:
    """A tqdm bar over the slices :func:`detector.traces.iter_time_chunks` will yield (tqdm is
    imported only here, so the daemon never loads it)."""
    from tqdm import tqdm

    total = None
    if len(frame):
        ts = frame["timestamp"]
        t0, t1 = float(ts.iloc[0]), float(ts.iloc[-1])
        total = math.ceil(t1 / step_s) - math.ceil(t0 / step_s) + 1
    return tqdm(total=total, unit="step", desc=desc, leave=False)


def collect_windows(
    trace: pd.DataFrame,
    *,
    every_s: float = 600.0,
    engine: WindowEngine | None = None,
    start: float | None = None,
    drop_stale: bool = False,
    progress: bool = False,
    desc: str = "windows",
) -> WindowBatch:
    """All windows of :func:`iter_windows` in one batch (empty batch if there are none)."""
    eng = WindowEngine() if engine is None else engine
    batches = [
        b
        for _, b, _ in iter_windows(
            trace, every_s=every_s, engine=eng, start=start, drop_stale=drop_stale,
            progress=progress, desc=desc,
        )
    ]
    return WindowBatch.concat(batches) if batches else eng.empty_batch()
