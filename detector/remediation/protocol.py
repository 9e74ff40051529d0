"""The records of remediation state, where they live, and how every one read back is checked.

Nothing a workload can write is a decision input (issue 14). podguard's state lives only in
objects podguard owns:

In podguard's namespace, one ``Lease`` per remediated workload (``kubectl get leases -n
podguard -l podguard.io/record=remediation``)
    annotation ``podguard.io/remediation``: a :class:`Remediation` record - the phase of the
    workload's latest remediation, its checkpoint request (the secret request id the pod is
    handed over the authenticated channel), the acknowledgement, the eviction, the follow-up.
    The record doubles as the workload's cooldown and, after a restart, as the history the
    eviction budgets are seeded from. No workload can write there (RBAC: only podguard's own
    Role in its own namespace grants leases).
On a node (nodes are not writable by workloads; the writes are confined to the daemon's own
node by the ValidatingAdmissionPolicy of :mod:`detector.remediation.rbac`)
    ``podguard.io/rescheduling``        remediation ids holding the PreferNoSchedule taint of
                                        the same key (``{id: unix seconds}``)
    ``podguard.io/cordoned``            who cordoned or tainted the node, and why

Annotations on pods, StatefulSets and Jobs (``podguard.io/remediate``, ``.../remediation``,
``.../verdict``, ``.../last-remediation``, ``.../checkpoint-ack``) are neither written nor
read: the controller decides from its own verdicts (in memory) and its own records.

Every record read back is validated strictly (:func:`parse_remediation`: unknown keys,
wrong types, NaN or infinite numbers, negative times are errors); a bad record is skipped and
reported by the reader (a log line and a counter), never stops the others.

The checkpoint request id is ``secrets.token_urlsafe(24)``: fresh for every request, never in
an Event, a log line or anything a workload can read; the pod learns it only over the
authenticated channel (:mod:`detector.remediation.channel`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REMEDIATION = "podguard.io/remediation"  # the Lease annotation holding the record
RECORD_LABEL = "podguard.io/record"  # label on podguard's Leases: "remediation"
MANAGED_BY = {"app.kubernetes.io/managed-by": "podguard", RECORD_LABEL: "remediation"}
RESCHEDULING = "podguard.io/rescheduling"  # node annotation and PreferNoSchedule taint key
UNHEALTHY = "podguard.io/unhealthy"  # NoSchedule taint key for node-level causes
CORDONED = "podguard.io/cordoned"

Phase = Literal["checkpointing", "blocked", "evicting", "evicted", "done", "abandoned"]
ACTIVE_PHASES: frozenset[str] = frozenset({"checkpointing", "blocked", "evicting"})

REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
"""What a request id looks like (``secrets.token_urlsafe``): no '/', no '.', bounded."""

Time = Annotated[float, Field(ge=0.0, le=1e11, allow_inf_nan=False)]
Text = Annotated[str, Field(max_length=2000)]
Name = Annotated[str, Field(max_length=253)]


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)


def new_request_id() -> str:
    """A fresh, unguessable checkpoint request id."""
    return secrets.token_urlsafe(24)


def new_remediation_id() -> str:
    return "r-" + secrets.token_hex(5)


class Remediation(BaseModel):
    """The latest remediation of one workload (a podguard Lease's annotation)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: Annotated[str, Field(pattern=r"^r-[0-9a-f]{10}$")]
    phase: Phase
    kind: Annotated[str, Field(max_length=64)]  # verdict kind that started it
    cause: Literal["pod", "node"]
    namespace: Name
    pod: Name
    uid: Annotated[str, Field(max_length=64)]  # uid of the pod it is about
    node: Name  # node the pod ran on when it started
    workload_kind: Literal["StatefulSet", "Job"]
    workload: Name
    workload_uid: Annotated[str, Field(max_length=64)]
    detected_at: Time  # unix seconds: the verdict the controller acted on
    at: Time  # unix seconds of the latest change
    request_id: Annotated[str, Field(max_length=128)] = ""  # secret; "" when none pending
    request_n: Annotated[int, Field(ge=0, le=1000)] = 0  # public number of the request
    requested_at: Time | None = None
    acked_at: Time | None = None
    checkpoint: Annotated[str, Field(max_length=4096)] | None = None
    step: Annotated[int, Field(ge=0)] | None = None
    forced: bool = False  # evicted without an acknowledged checkpoint (time to OOM < floor)
    attempts: Annotated[int, Field(ge=0)] = 0  # eviction attempts refused or deferred
    next_try: Time = 0.0  # unix seconds: no eviction attempt before
    escalated: bool = False
    avoid: bool = False  # holds the node's PreferNoSchedule taint until done
    evicted_at: Time | None = None
    done_at: Time | None = None
    new_node: Name | None = None
    told: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=16)] = []
    note: Text = ""  # the latest decision, readable

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def workload_ref(self) -> str:
        return f"{self.workload_kind}/{self.workload}"

    def to_json(self) -> str:
        return dumps(self.model_dump(mode="json"))

    def replace(self, **changes: Any) -> Remediation:
        """A copy with ``changes``, validated like a record read back."""
        return Remediation.model_validate({**self.model_dump(), **changes})


class BadRecord(ValueError):
    """A record that does not validate (the reader skips it and reports it)."""


def parse_remediation(text: str | None) -> Remediation:
    """The record in ``text``; :class:`BadRecord` naming what is wrong otherwise."""
    if not text:
        raise BadRecord("no record")
    if len(text) > 64_000:
        raise BadRecord(f"record of {len(text)} characters (at most 64000)")
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise BadRecord(f"not JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BadRecord(f"not a JSON object but {type(raw).__name__}")
    try:
        return Remediation.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "record"
        raise BadRecord(f"{where}: {first.get('msg')} ({e.error_count()} error(s))") from e


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def lease_name(workload_kind: str, namespace: str, name: str) -> str:
    """The Lease of a workload: stable, short, a valid name whatever the workload's name."""
    digest = hashlib.sha256(f"{workload_kind}/{namespace}/{name}".encode()).hexdigest()[:20]
    return f"pg-{'sts' if workload_kind == 'StatefulSet' else 'job'}-{digest}"


def finite_holders(raw: Any) -> dict[str, float]:
    """The ``podguard.io/rescheduling`` node annotation's holders; bad entries dropped."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    for k, v in raw.items():
        if (isinstance(k, str) and len(k) <= 64 and isinstance(v, int | float)
                and not isinstance(v, bool) and math.isfinite(v)):
            out[k] = float(v)
    return out
