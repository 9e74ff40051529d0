"""The remediation hook of the daemon, and the dry-run plan of the embedded default.

The daemon calls ``hook.handle(verdicts)`` after each step's verdicts went to the sinks (and
``hook.reconcile()`` if it has one). In a cluster the hook is
:class:`detector.remediation.controller.RemediationController`; the embedded default has no
cluster, so :class:`DryRunPlan` prints, once per flagged pod, what the controller would do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import IO, Protocol

from detector.explain import format_duration
from detector.settings import RemediationSettings
from detector.verdicts import Verdict


class RemediationHook(Protocol):
    def handle(self, verdicts: Sequence[Verdict]) -> object: ...


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
            plan = (f"REMEDIATION (dry run) {v.namespace}/{v.pod}: would annotate "
                    f"podguard.io/checkpoint-request, wait up to "
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
