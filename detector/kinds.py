"""Verdict kinds, declared once: what each positive verdict is called everywhere.

Each row of :data:`KIND_TABLE` gives a kind's name (the ``kind`` of a verdict line), the
detector that decides it, the words a person reads, its Alertmanager alert name and its
Kubernetes Event reason (None: not alerted), and whether it is a leak (a time to OOM, an
in-pod diagnosis). The verdicts (``detector.verdicts``), the settings' kind lists
(``detector.settings``), the Alertmanager and Event sinks and the evaluation read it.

It sits at the bottom of the layering (imports nothing of podguard's), beside the channel
table, so the settings can name kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Kind = Literal["memory_leak", "gpu_memory_leak", "drift", "metric_anomaly", "none"]
"""Every verdict kind ("none" for a negative verdict)."""
AlertKind = Literal["memory_leak", "gpu_memory_leak", "drift"]
"""The kinds that raise an alert and an Event (and may start a remediation)."""
LeakKind = Literal["memory_leak", "gpu_memory_leak"]
"""The leak kinds (a time to OOM; an in-pod diagnosis may be asked for)."""


@dataclass(frozen=True)
class VerdictKind:
    """One positive verdict kind."""

    name: str
    detector: str
    """The detector that decides it (``detector`` of a verdict line)."""
    words: str
    """What a person reads ("Memory leak")."""
    alert_name: str | None = None
    """Its Alertmanager ``alertname``; None: not alerted."""
    event_reason: str | None = None
    """Its Kubernetes Event reason; None: not posted."""
    leak: bool = False


KIND_TABLE: tuple[VerdictKind, ...] = (
    VerdictKind("memory_leak", "trend", "Memory leak", "PodMemoryLeak", "MemoryLeakDetected",
                leak=True),
    VerdictKind("gpu_memory_leak", "trend", "GPU memory leak", "PodGpuMemoryLeak",
                "GpuMemoryLeakDetected", leak=True),
    VerdictKind("drift", "drift (autoencoder + isolation forest)", "Pre-failure drift",
                "PodPreFailureDrift", "PreFailureDriftDetected"),
    # a custom metric (outside the built-in channels) far from its own baseline, judged by
    # detector.models.univariate when no built-in detector fired
    VerdictKind("metric_anomaly", "univariate", "Custom metric anomaly"),
)
"""Every positive kind."""

KINDS: tuple[Kind, ...] = get_args(Kind)
ALERT_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)
LEAK_KINDS: tuple[LeakKind, ...] = get_args(LeakKind)
BY_NAME: Mapping[str, VerdictKind] = {k.name: k for k in KIND_TABLE}

DETECTOR_OF_KIND: Mapping[str, str] = {k.name: k.detector for k in KIND_TABLE}
"""The detector that decides each positive kind."""
ALERT_NAMES: Mapping[str, str] = {k.name: k.alert_name for k in KIND_TABLE if k.alert_name}
"""Kind -> Alertmanager alert name, for the alerted kinds."""
EVENT_REASONS: Mapping[str, str] = {
    k.name: k.event_reason for k in KIND_TABLE if k.event_reason}
"""Kind -> Kubernetes Event reason, for the alerted kinds."""
KIND_WORDS: Mapping[str, str] = {k.name: k.words for k in KIND_TABLE}


def _check() -> None:
    names = tuple(k.name for k in KIND_TABLE)
    problems = []
    if (*names, "none") != KINDS:
        problems.append(f"table kinds {names} + 'none' != Kind {KINDS}")
    if tuple(ALERT_NAMES) != ALERT_KINDS or tuple(EVENT_REASONS) != ALERT_KINDS:
        problems.append(f"alerted kinds {tuple(ALERT_NAMES)} != AlertKind {ALERT_KINDS}")
    if tuple(k.name for k in KIND_TABLE if k.leak) != LEAK_KINDS:
        problems.append(f"leak kinds != LeakKind {LEAK_KINDS}")
    if problems:  # pragma: no cover - a broken table fails at import, in every test
        raise ValueError("verdict kinds: " + "; ".join(problems))


_check()
