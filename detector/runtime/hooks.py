"""The remediation hook of the daemon, and the dry-run plan of the embedded default.

The daemon calls ``hook.handle(verdicts)`` after each step's verdicts went to the sinks, and
between steps ``hook.reconcile()`` (the controller's next moves) and ``hook.replacements()``
(pods a remediation recreated under the same name, whose windows must start afresh). In a
cluster the hook is :class:`detector.remediation.controller.RemediationController`; the
embedded default has no cluster, so :class:`DryRunPlan` prints, once per flagged pod, what
the controller would do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Protocol

from detector.explain import format_duration
from detector.settings import RemediationSettings
from detector.sinks.base import Sink
from detector.verdicts import Verdict


class RemediationHook(Protocol):
    def handle(self, verdicts: Sequence[Verdict]) -> object: ...

    def reconcile(self) -> object: ...

    def replacements(self) -> Mapping[tuple[str, str], float]:
        """``(namespace, pod) -> eviction time`` of pods recreated by a remediation."""
        ...


class DryRunPlan:
    """Prints the checkpoint-then-reschedule plan for each newly flagged pod; acts on nothing."""

    def __init__(self, settings: RemediationSettings, *, stream: IO[str] | None = None,
                 real_seconds: Callable[[float], float] = lambda s: s) -> None:
        self.settings = settings
        self.stream = stream if stream is not None else sys.stdout
        self.real_seconds = real_seconds
        self.planned: dict[tuple[str, str], str] = {}

    def handle(self, verdicts: Sequence[Verdict]) -> list[str]:
        out = []
        for v in verdicts:
            key = (v.namespace, v.pod)
            if not v.is_anomaly or v.stale or key in self.planned:
                continue
            if v.kind not in self.settings.kinds:
                continue
            tto = v.time_to_oom_s
            urgent = tto is not None and self.real_seconds(tto) < self.real_seconds(
                self.settings.evict_unacknowledged_below_s)
            when = (f"; OOM expected in ~{format_duration(self.real_seconds(tto))}"
                    if tto is not None else "")
            plan = (f"REMEDIATION (dry run) {v.namespace}/{v.pod}: would request a "
                    f"checkpoint over podguard's pod channel, wait up to "
                    f"{format_duration(self.settings.checkpoint_timeout_s)} for the "
                    f"workload's acknowledgement, then evict the pod so its controller "
                    f"reschedules it (taint node {v.node or '?'} PreferNoSchedule meanwhile)"
                    + (", evicting without waiting if no acknowledgement comes in time"
                       if urgent else "") + when)
            self.planned[key] = plan
            self.stream.write(plan + "\n")
            self.stream.flush()
            out.append(plan)
        return out

    def reconcile(self) -> None:
        """A plan only: nothing in flight to move on."""

    def replacements(self) -> dict[tuple[str, str], float]:
        return {}  # a plan recreates no pod


class OnChange:
    """A sink wrapper passing on a pod's positive verdicts only when its kind (or the status
    of its in-pod diagnosis) changes or ``every_s`` (source clock) passed: the console of the
    embedded default scores every real second and would otherwise print the same alert each
    time."""

    def __init__(self, sink: Sink, *, every_s: float) -> None:
        self.sink = sink
        self.name = f"{sink.name}-on-change"
        self.every_s = every_s
        self._shown: dict[tuple[str, str], tuple[str, float]] = {}

    def send(self, verdicts: Sequence[Verdict]) -> None:
        chosen = []
        for v in verdicts:
            key = (v.namespace, v.pod)
            if not v.is_anomaly:
                if not v.stale:
                    self._shown.pop(key, None)
                continue
            last = self._shown.get(key)
            kind = v.kind + ":" + str((v.diagnosis or {}).get("status", ""))  # an answer shows
            if last is None or last[0] != kind or v.ts - last[1] >= self.every_s:
                self._shown[key] = (kind, v.ts)
                chosen.append(v)
        if chosen:
            self.sink.send(chosen)

    def tick(self) -> None:
        self.sink.tick()

    def flush(self, timeout: float) -> bool:
        return self.sink.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.sink.close(timeout)
