"""The annotations that hold all remediation state, and their JSON records.

State lives in the cluster, not in the daemon's memory, so a restarted daemon continues the
remediation it was doing (and never starts a second one):

On the pod
    ``podguard.io/checkpoint-request``  controller -> workload  :class:`CheckpointRequest`
    ``podguard.io/checkpoint-ack``      workload -> controller  :class:`CheckpointAck`
    ``podguard.io/remediation``         the controller's phase  :class:`RemediationState`
    ``podguard.io/verdict``             the latest verdict (``Verdict.to_json``), written by
                                        :mod:`detector.sinks.k8s_events`
On the owning StatefulSet or Job
    ``podguard.io/last-remediation``    :class:`WorkloadRecord`: the cooldown, the eviction
                                        budgets after a restart, and what is left to do once
                                        the pod is gone (release the node, report where the
                                        replacement runs)
On a node
    ``podguard.io/rescheduling``        remediation ids holding the PreferNoSchedule taint of
                                        the same key (``{id: unix seconds}``)
    ``podguard.io/cordoned``            who cordoned or tainted the node, and why

The checkpoint protocol: the controller writes a request with a fresh ``id``; the workload
saves a checkpoint and writes an acknowledgement carrying the same ``id`` and the checkpoint's
path. Records are tolerant on read (an unreadable annotation reads as absent) and compact on
write. Used by the controller, the actuator, the Events sink and the checkpoint helper.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar, cast

from detector.verdicts import KINDS, Explanation, Kind, Verdict

REQUEST = "podguard.io/checkpoint-request"
ACK = "podguard.io/checkpoint-ack"
STATE = "podguard.io/remediation"
VERDICT = "podguard.io/verdict"
WORKLOAD_RECORD = "podguard.io/last-remediation"
RESCHEDULING = "podguard.io/rescheduling"  # node annotation and PreferNoSchedule taint key
UNHEALTHY = "podguard.io/unhealthy"  # NoSchedule taint key for node-level causes
CORDONED = "podguard.io/cordoned"

Phase = Literal["checkpointing", "blocked", "evicting", "evicted", "done", "abandoned"]
ACTIVE_PHASES: frozenset[str] = frozenset({"checkpointing", "blocked", "evicting"})

T = TypeVar("T")


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _load(cls: type[T], text: str | None) -> T | None:
    """A record from its annotation text; None when absent or unreadable."""
    if not text:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in raw.items() if k in known})
    except TypeError:
        return None


@dataclass(frozen=True)
class CheckpointRequest:
    id: str  # request id: "<remediation id>.<n>"
    ts: float  # unix seconds when requested
    reason: str = ""

    def to_json(self) -> str:
        return dumps(asdict(self))

    @classmethod
    def parse(cls, text: str | None) -> CheckpointRequest | None:
        r = _load(cls, text)
        return r if r is not None and isinstance(r.id, str) and r.id else None


@dataclass(frozen=True)
class CheckpointAck:
    id: str  # the id of the request it answers
    path: str  # where the checkpoint was saved (inside the pod's volume)
    ts: float  # unix seconds when saved
    step: int | None = None  # training step the checkpoint holds, if the workload says

    def to_json(self) -> str:
        return dumps(asdict(self))

    @classmethod
    def parse(cls, text: str | None) -> CheckpointAck | None:
        r = _load(cls, text)
        return r if r is not None and isinstance(r.id, str) and r.id else None


@dataclass(frozen=True)
class RemediationState:
    """The controller's state for one pod (annotation ``podguard.io/remediation``)."""

    id: str  # remediation id, "r-<hex>"
    phase: str  # a Phase
    kind: str  # verdict kind that started it
    cause: str  # "pod" or "node"
    node: str  # node the pod ran on when it started
    uid: str  # uid of the pod it is about
    workload: str  # "StatefulSet/<name>" or "Job/<name>"
    detected_at: float  # unix seconds: first positive verdict the controller acted on
    request_id: str = ""
    requested_at: float | None = None
    acked_at: float | None = None
    checkpoint: str | None = None
    forced: bool = False  # evicted without an acknowledged checkpoint (time to OOM < floor)
    attempts: int = 0  # eviction attempts refused (PDB) or deferred (budget, cooldown)
    next_try: float = 0.0  # unix seconds: no eviction attempt before
    escalated: bool = False
    note: str = ""  # the latest decision, readable

    def to_json(self) -> str:
        return dumps(asdict(self))

    @classmethod
    def parse(cls, text: str | None) -> RemediationState | None:
        r = _load(cls, text)
        return r if r is not None and isinstance(r.id, str) and r.id else None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES


@dataclass(frozen=True)
class WorkloadRecord:
    """The latest remediation of a workload (annotation ``podguard.io/last-remediation``)."""

    id: str
    namespace: str
    pod: str
    uid: str
    node: str
    phase: str  # "evicting" (about to), "evicted", "done" (replacement running)
    at: float  # unix seconds of the latest phase change
    cause: str = "pod"
    evicted_at: float | None = None
    done_at: float | None = None
    new_node: str | None = None
    avoid: bool = False  # holds the node's PreferNoSchedule taint until done
    checkpoint: str | None = None
    forced: bool = False
    detected_at: float | None = None
    requested_at: float | None = None
    acked_at: float | None = None

    def to_json(self) -> str:
        return dumps(asdict(self))

    @classmethod
    def parse(cls, text: str | None) -> WorkloadRecord | None:
        r = _load(cls, text)
        return r if r is not None and isinstance(r.id, str) and r.id else None


def compact_verdict(v: Verdict, *, max_features: int = 6) -> str:
    """The verdict annotation: ``Verdict.to_json`` with only the top SHAP features."""
    d = v.to_json_dict()
    ex = d.get("explanation")
    if isinstance(ex, dict) and isinstance(ex.get("features"), dict):
        top = sorted(ex["features"].items(), key=lambda kv: -abs(kv[1]))[:max_features]
        ex["features"] = dict(top)
    return dumps(d)


def parse_verdict(text: str | None) -> Verdict | None:
    """The inverse of :func:`compact_verdict` / ``Verdict.to_json`` (None if unreadable)."""
    if not text:
        return None
    try:
        d = json.loads(text)
        kind = d.get("kind", "none")
        if kind not in KINDS:
            return None
        ex = d.get("explanation")
        explanation = (Explanation(text=str(ex["text"]),
                                   features={str(k): float(x) for k, x in ex["features"].items()})
                       if isinstance(ex, dict) else None)
        rng = d.get("time_to_oom_range_s")
        return Verdict(
            ts=float(d["ts"]), namespace=str(d["namespace"]), pod=str(d["pod"]),
            node=str(d.get("node") or ""), is_anomaly=bool(d["is_anomaly"]),
            kind=cast(Kind, kind), score=_num(d.get("score")), threshold=_num(d.get("threshold")),
            time_to_oom_s=_opt(d.get("time_to_oom_s")),
            time_to_oom_range_s=((_num(rng[0]), _num(rng[1]))
                                 if isinstance(rng, list) and len(rng) == 2 else None),
            leak_rate_bytes_per_s=_opt(d.get("leak_rate_bytes_per_s")),
            explanation=explanation, stale=bool(d.get("stale", False)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _num(x: Any) -> float:
    return float(x) if x is not None else math.nan


def _opt(x: Any) -> float | None:
    return float(x) if x is not None else None
