"""The daemon loop: source -> window engine -> pipeline -> sinks and remediation -> commit.

Built by :mod:`detector.runtime.build` (``podguard run``), driven step by step by tests and
the benchmark. One thread does all the work, in this order, forever:

1. ``source.poll`` (at most ``poll_timeout_s``): fold the delivered samples into the window
   engine and count them (ingested, duplicates, refused by reason, dead-lettered);
2. when the source clock passes the end of the next window plus ``runtime.lateness_s``:
   score every pod's window (marked stale while the source reports a gap, so a gap raises no
   alarm), hand the verdicts to every sink, then to the remediation hook, and only then
   commit the deliveries folded before that window (at-least-once);
3. every ``model.watch_s``: swap in a new model version if the model root's pointer moved
   (window state and debouncing state kept).

A sink or hook that raises is logged and counted, never fatal; the source handles its own
outages. :meth:`Daemon.stop` (SIGTERM) ends the loop; :meth:`Daemon.shutdown` then flushes the
sinks and closes the source within ``runtime.grace_period_s``.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from detector.pipeline import Pipeline
from detector.settings import Settings
from detector.sinks.base import Sink
from detector.sources.base import Delivery, Source
from detector.verdicts import Verdict
from detector.windows import PodKey, WindowEngine

from .hooks import RemediationHook
from .metrics import DaemonMetrics, StateView
from .models import ModelWatcher


@dataclass
class Detection:
    """The first positive verdict of a pod (for the run summary)."""

    verdict: Verdict
    wall_time: float  # time.time() when it was handed to the sinks


@dataclass
class RunSummary:
    started: float = field(default_factory=time.time)
    ended: float = 0.0
    evaluations: int = 0
    samples: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    positives: Counter[str] = field(default_factory=Counter)
    first: dict[tuple[str, str], Detection] = field(default_factory=dict)
    model_versions: list[str] = field(default_factory=list)
    stop_reason: str = ""


BIG_DELIVERY = 100_000  # samples; after folding one this large, freed heap is returned


def release_freed_memory() -> None:
    """Returns freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere). A 4 h
    backfill of a node's pods is folded in one delivery; without this its temporaries stay
    in the process's RSS (measured: 480 MB instead of ~300 MB at 110 pods)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


HOUSEKEEPING_S = 5.0  # seconds between housekeeping passes (reconcile, re-sends)


class Daemon:
    def __init__(self, *, settings: Settings, source: Source, pipeline: Pipeline,
                 engine: WindowEngine, sinks: Sequence[Sink], metrics: DaemonMetrics,
                 logger: logging.Logger, remediation: RemediationHook | None = None,
                 models: ModelWatcher | None = None,
                 present: Callable[[Verdict], Verdict] | None = None,
                 poll_timeout_s: float = 0.25,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.source = source
        self.pipeline = pipeline
        self.engine = engine
        self.sinks = list(sinks)
        self.metrics = metrics
        self.view: StateView = metrics.view
        self.log = logger
        self.remediation = remediation
        self.models = models
        self.present = present  # e.g. compressed -> real time for the embedded default
        self.poll_timeout_s = poll_timeout_s
        self.monotonic = monotonic
        self.summary = RunSummary(model_versions=[pipeline.version])
        self._pending: list[Any] = []  # tokens of deliveries folded since the last step
        self._next_end: float | None = None
        self._stop_reason: str | None = None
        self._stop_at: float | None = None
        self._heartbeat = monotonic()
        self._got_data = False
        self.view.model_version = pipeline.version
        self.view.model_created_ts = models.created_ts if models is not None else None
        self.view.source = source.name
        self.view.source_status = source.status
        self.on_verdicts: list[Callable[[list[Verdict]], None]] = []  # tests, benchmark
        self.housekeeping_s = HOUSEKEEPING_S
        self._housekeeping_at = monotonic()
        self._replaced: dict[tuple[str, str], float] = {}
        self.diagnosis: Any = None  # a detector.diagnosis.requester.DiagnosisRequester

    # ------------------------------------------------------------------ probes

    def healthy(self) -> tuple[bool, str]:
        age = self.monotonic() - self._heartbeat
        if age > self.settings.server.stall_after_s:
            return False, f"main loop stalled for {age:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self._got_data:
            return False, f"model {self.pipeline.version} loaded; waiting for data from " \
                          f"the {self.source.name} source"
        return True, f"ready: model {self.pipeline.version}, source {self.source.name}"

    # ------------------------------------------------------------------ control

    def stop(self, reason: str = "stop requested") -> None:
        """Ends the loop at its next turn (safe from a signal handler)."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_at = self.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    def run(self, *, duration_s: float | None = None) -> RunSummary:
        """Runs until :meth:`stop` (or ``duration_s`` of wall time), then shuts down."""
        deadline = None if duration_s is None else self.monotonic() + duration_s
        try:
            while not self.stopping:
                if deadline is not None and self.monotonic() >= deadline:
                    self.stop(f"duration of {duration_s:g} s reached")
                    break
                self.turn()
        finally:
            self.shutdown()
        return self.summary

    def turn(self) -> list[Verdict] | None:
        """One turn of the loop: poll once, score if a window is due. Returns the verdicts
        of a scoring step, else None."""
        self._heartbeat = self.monotonic()
        now = self.source.now()
        if self._next_end is None:
            self._next_end = self.engine.window_end(now)
        due = self._next_end + self.settings.runtime.lateness_s
        timeout = self.poll_timeout_s
        if now < due:
            # source clock units may differ from real seconds (embedded default)
            scale = max(1e-9, clock_rate(self.source))
            timeout = min(timeout, (due - now) / scale)
        delivery = self.source.poll(max(0.0, timeout))
        self.fold(delivery)
        if self.monotonic() >= self._housekeeping_at:
            self.housekeeping()
            self._housekeeping_at = self.monotonic() + self.housekeeping_s
        now = self.source.now()
        if now >= due:
            return self.evaluate(now)
        return None

    # ------------------------------------------------------------------ work

    def fold(self, d: Delivery) -> None:
        src = self.source.name
        m = self.metrics
        if d.messages:
            m.messages.labels(src).inc(d.messages)
        if d.dead_lettered:
            m.dead_letter.labels(src).inc(d.dead_lettered)
            self.summary.dead_lettered += d.dead_lettered
        for reason, n in d.rejected.items():
            m.rejected.labels(src, reason).inc(n)
            self.summary.rejected[reason] += n
        if len(d.samples):
            rep = self.engine.ingest(d.samples.columns())
            m.samples.labels(src).inc(rep.accepted)
            m.duplicates.labels(src).inc(rep.duplicates)
            for reason, n in rep.rejected.items():
                m.rejected.labels(src, reason).inc(n)
                self.summary.rejected[reason] += n
            self.summary.samples += rep.accepted
            self.summary.duplicates += rep.duplicates
            if len(d.samples) >= BIG_DELIVERY:
                release_freed_memory()  # a backfill's temporaries: hand the heap back
            if rep.accepted:
                self._got_data = True
                self.view.ready = True
        if d.token is not None:
            self._pending.append(d.token)

    def evaluate(self, now: float) -> list[Verdict]:
        """Scores the window ending at the next boundary; hands over; commits."""
        assert self._next_end is not None
        step = self.engine.step_s
        end = self._next_end
        lateness = self.settings.runtime.lateness_s
        latest = self.engine.window_end(now - lateness)
        if latest > end:  # fell behind: score the newest window only
            missed = round((latest - end) / step)
            self.metrics.skipped_steps.inc(missed)
            end = latest
        self._next_end = end + step
        tokens, self._pending = self._pending, []
        t0 = time.perf_counter()
        batch = self.engine.windows(at=end)
        status = self.source.status()
        outcome = "ok"
        if len(batch) and not status.caught_up:
            batch = replace(batch, stale=np.ones(len(batch), dtype=bool))
            outcome = "stale"
        try:
            verdicts = self.pipeline.evaluate(batch)
        except Exception:
            self.metrics.evaluations.labels("error").inc()
            self.log.exception("scoring failed; this step is skipped",
                               extra={"window_end": end, "pods": len(batch)})
            self._pending = tokens + self._pending  # not scored: not committed
            return []
        self.metrics.scoring.observe(time.perf_counter() - t0)
        self.metrics.evaluations.labels(outcome).inc()
        self.metrics.windows.inc(len(batch))
        shown = [self.present(v) for v in verdicts] if self.present else verdicts
        if self.diagnosis is not None:  # asks flagged leaks what grows; attaches the answer
            try:
                shown = self.diagnosis.decorate(shown)
            except Exception as e:
                self.log.error("diagnosis hook failed", extra={"error": repr(e)})
        for sink in self.sinks:
            try:
                sink.send(shown)
            except Exception as e:
                self.metrics.sink_errors.labels(sink.name).inc()
                self.log.error("sink refused verdicts", extra={"sink": sink.name,
                                                               "error": repr(e)})
        if self.remediation is not None:
            try:
                self.remediation.handle(verdicts)
            except Exception as e:
                self.log.error("remediation hook failed", extra={"error": repr(e)})
        if tokens:
            self.source.commit(tokens)
            self.metrics.commits.labels(self.source.name).inc()
        self._after(verdicts, shown, end)
        for cb in self.on_verdicts:
            cb(verdicts)
        if self.models is not None:
            self._maybe_reload()
        return verdicts

    def housekeeping(self) -> None:
        """Every few seconds, between scoring steps: the remediation controller's next step
        (checkpoint acknowledged? evict now?), Alertmanager re-sends and resolutions of pods
        that are gone, and a fresh window for a pod a remediation recreated under the same
        name (its predecessor's samples must not be judged as its own); the answers to
        in-pod diagnosis requests."""
        if self.diagnosis is not None:
            try:
                self.diagnosis.poll()
            except Exception as e:
                self.log.error("diagnosis housekeeping failed", extra={"error": repr(e)})
        for sink in self.sinks:
            try:
                sink.tick()
            except Exception as e:
                self.metrics.sink_errors.labels(sink.name).inc()
                self.log.error("sink housekeeping failed", extra={"sink": sink.name,
                                                                  "error": repr(e)})
        if self.remediation is None:
            return
        try:
            self.remediation.reconcile()
            for key, evicted_at in self.remediation.replacements().items():
                if self._replaced.get(key) == evicted_at:
                    continue
                self._replaced[key] = evicted_at
                pod = PodKey(*key)
                self.engine.drop_pod(pod)
                self.pipeline.forget(pod)
                self.log.info("window restarted for a recreated pod",
                              extra={"namespace": key[0], "pod": key[1]})
        except Exception as e:
            self.log.error("remediation housekeeping failed", extra={"error": repr(e)})

    def _after(self, verdicts: list[Verdict], shown: list[Verdict], end: float) -> None:
        s = self.summary
        s.evaluations += 1
        flagged: dict[tuple[str, str], str] = {}
        kinds: Counter[str] = Counter()
        for v, p in zip(verdicts, shown, strict=True):
            kinds["stale" if v.stale else v.kind] += 1
            if v.is_anomaly:
                flagged[(v.namespace, v.pod)] = v.kind
                s.positives[v.kind] += 1
                if (v.namespace, v.pod) not in s.first:
                    s.first[(v.namespace, v.pod)] = Detection(p, time.time())
                    self.log.warning("pod flagged", extra={
                        "namespace": v.namespace, "pod": v.pod, "kind": v.kind,
                        "score": v.score, "threshold": v.threshold,
                        "time_to_oom_s": p.time_to_oom_s,
                        "why": p.explanation.text if p.explanation else ""})
        for k, n in kinds.items():
            self.metrics.verdicts.labels(k).inc(n)
        self.view.flagged = flagged
        self.view.verdicts = {(p.namespace, p.pod): p for p in shown if not p.stale}
        pods = set(self.engine.pods())
        for key in set(self.pipeline.known_pods()) - pods:
            self.pipeline.forget(key)
        self.view.pods_watched = len(pods)
        self.view.engine_bytes = self.engine.state_size()["bytes"]
        self.view.last_evaluation_ts = end

    def _maybe_reload(self) -> None:
        assert self.models is not None
        new, error = self.models.poll(self.pipeline)
        if new is not None:
            self.pipeline = new
            self.view.model_version = new.version
            self.view.model_created_ts = self.models.created_ts
            self.summary.model_versions.append(new.version)
            self.metrics.reloads.labels("ok").inc()
        elif error is not None:
            self.metrics.reloads.labels("failed").inc()

    def shutdown(self) -> None:
        """Flushes sinks and closes the source within the grace period (from the stop)."""
        grace = self.settings.runtime.grace_period_s
        start = self._stop_at if self._stop_at is not None else self.monotonic()
        deadline = start + grace

        def left() -> float:
            return max(0.1, deadline - self.monotonic())

        self.summary.stop_reason = self._stop_reason or "ended"
        self.summary.ended = time.time()
        for sink in self.sinks:
            try:
                if not sink.flush(left()):
                    self.log.warning("sink not flushed within the grace period",
                                     extra={"sink": sink.name})
                sink.close(left())
            except Exception as e:
                self.log.error("sink failed to close", extra={"sink": sink.name,
                                                              "error": repr(e)})
        try:
            # deliveries scored were committed at their step; the rest are replayed later
            self.source.close(left())
        except Exception as e:
            self.log.error("source failed to close", extra={"error": repr(e)})
        self.log.info("daemon stopped", extra={
            "reason": self.summary.stop_reason, "evaluations": self.summary.evaluations,
            "samples": self.summary.samples, "uncommitted_deliveries": len(self._pending),
            "shutdown_s": round(self.monotonic() - start, 3)})


def clock_rate(source: Source) -> float:
    """Source-clock seconds per real second (``Source.clock_rate``; 1 except for the
    compressed embedded default), 1 if the source answers nonsense."""
    scale = float(source.clock_rate())
    return scale if math.isfinite(scale) and scale > 0 else 1.0
