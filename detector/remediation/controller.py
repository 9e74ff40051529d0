"""The remediation controller: checkpoint, then reschedule, one state machine per workload.

The daemon calls :meth:`RemediationController.handle` with each evaluation's verdicts and
:meth:`RemediationController.reconcile` every few seconds; the pod channel
(:mod:`detector.remediation.channel`) calls :meth:`pending` and :meth:`answer` (the
``checkpoint`` request kind) from its threads. Every cluster change goes through the
:class:`~detector.remediation.actuator.Actuator`; every decision and its reason is an Event
on the pod (or node, or workload).

What it trusts (issue 14): its own verdicts (in memory, never read back from the cluster),
its own records (Leases in podguard's namespace, :mod:`detector.remediation.store`, each one
validated), and answers the API server vouched for (a pod's own bound token, checked with a
TokenReview, naming the uid the request was made to, carrying that request's fresh secret
id). Nothing a workload writes into an object - annotations, a forged record, a forged
verdict - starts, steers or stalls a remediation. The pod's opt-in label and its
controller are read to *restrict* (only opted-in pods of a StatefulSet or Job whose uid the
owner reference names); they never trigger anything without a verdict of this daemon.

Who is remediated: pods labelled ``<opt_in_label>=true`` whose controller is a StatefulSet
or a Job, flagged with a kind in ``settings.kinds``, when ``settings.enabled``, on this
daemon's node (``node``; every node when empty). At most one remediation is in flight per
workload; its record doubles as the workload's cooldown and is the eviction budgets' history.

The phases (``Remediation.phase``)::

    (flagged) --request checkpoint--> checkpointing --the pod answers the request--> evicting
    checkpointing --no answer within checkpoint_timeout_s--> blocked (alert escalated)
    checkpointing/blocked --time to OOM < evict_unacknowledged_below_s--> evicting (forced)
    blocked --late answer--> evicting
    evicting --PDB 429 / budget / cooldown--> evicting (retry after retry_s, never forced)
    evicting --403 (RBAC, or the admission policy: not this daemon's node)--> evicting
             (an EvictionRefused Event once, retried after retry_s)
    evicting --acknowledged checkpoint older than checkpoint_max_age_s--> checkpointing (new id)
    evicting --Eviction API accepted--> evicted --replacement running--> done
    checkpointing/blocked --the pod is gone--> abandoned

Before evicting: for a node-level cause (``node_cause_min_pods`` pods on one node flagged with
pre-failure drift in the same evaluation) the node is cordoned or tainted NoSchedule
(``node_action``); for a pod-level cause it is tainted PreferNoSchedule while the replacement
is scheduled (``avoid_node``). After the eviction the record is followed until a replacement
runs; then the taint is released and a ``Rescheduled`` Event says where. Events that close a
step (Evicted, Rescheduled) are written *before* the record that follows them, under a name
fixed per remediation (issue 17): a daemon killed in between redoes the step after its
restart and the Event exists once. In dry-run the plan is printed once per pod and nothing
is written.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from detector.errors import PodguardError
from detector.explain import format_duration
from detector.remediation import protocol as proto
from detector.remediation.actuator import (
    Actuator,
    ForbiddenError,
    ObjectRef,
    Outcome,
    WorkloadRef,
    owner_of,
)
from detector.remediation.channel import Answer, PodIdentity, PodRequest
from detector.remediation.store import RecordStore, Stored
from detector.settings import RemediationSettings
from detector.verdicts import Verdict

log = logging.getLogger("podguard.remediation.controller")

Escalate = Callable[[str, str, str, Verdict | None], None]
"""``escalate(namespace, pod, reason, latest_verdict)``: e.g. ``AlertmanagerSink.escalate``."""


@dataclass(frozen=True)
class Decision:
    """One decision of the controller (also written as an Event)."""

    namespace: str
    pod: str
    action: str  # the Event reason
    message: str
    remediation_id: str = ""


def _dur(seconds: float | None) -> str:
    return "unknown" if seconds is None else format_duration(float(seconds))


def _workload_ref(rec: proto.Remediation) -> WorkloadRef:
    return WorkloadRef(rec.workload_kind, rec.namespace, rec.workload, rec.workload_uid)


class RemediationController:
    """Checkpoint-then-reschedule (see the module docstring); also the channel's
    ``checkpoint`` :class:`~detector.remediation.channel.RequestKind`."""

    kind = "checkpoint"

    def __init__(self, actuator: Actuator, *, settings: RemediationSettings,
                 store: RecordStore | None = None, escalate: Escalate | None = None,
                 node: str = "", logger: logging.Logger | None = None) -> None:
        self.log = logger if logger is not None else log
        self.actuator = actuator
        self.settings = settings
        self.store = store if store is not None else RecordStore(
            actuator, settings.namespace or "podguard", logger=self.log)
        self.escalate = escalate
        self.node = node
        self.clock = actuator.clock
        self.decisions: list[Decision] = []  # every decision since construction
        self._latest: dict[tuple[str, str], Verdict] = {}
        self._records: dict[str, Stored] = {}  # Lease name -> latest record read or written
        self._next_resync = 0.0
        self._planned: dict[tuple[str, str], float] = {}
        self._lock = threading.RLock()  # the daemon loop vs the channel's threads

    # ------------------------------------------------------------------ entry points

    def handle(self, verdicts: Sequence[Verdict]) -> list[Decision]:
        """Starts remediations for flagged, opted-in pods; returns the decisions taken."""
        if not self.settings.enabled:
            return []
        with self._lock:
            mark = len(self.decisions)
            drifting: dict[str, set[str]] = {}
            for v in verdicts:
                key = (v.namespace, v.pod)
                if v.is_anomaly and not v.stale:
                    self._latest[key] = v
                    if v.node and v.kind == "drift":
                        drifting.setdefault(v.node, set()).add(f"{v.namespace}/{v.pod}")
                elif not v.stale:
                    self._latest.pop(key, None)
            sick = {n for n, pods in drifting.items()
                    if len(pods) >= self.settings.node_cause_min_pods}
            if not self.actuator.dry_run and self.clock() >= self._next_resync:
                self._resync()
            for v in verdicts:
                if v.is_anomaly and not v.stale and v.kind in self.settings.kinds:
                    try:
                        for _ in range(3):  # a conflict (another writer) is retried at once
                            if self._start(v, "node" if v.node in sick else "pod"):
                                break
                    except PodguardError as e:
                        self.log.warning("remediation of %s/%s not started: %s", v.namespace,
                                         v.pod, e)
            return self.decisions[mark:]

    def reconcile(self) -> list[Decision]:
        """Advances every remediation in flight (from podguard's records); returns decisions."""
        if not self.settings.enabled or self.actuator.dry_run:
            return []
        with self._lock:
            mark = len(self.decisions)
            self._resync()
            for stored in list(self._records.values()):
                rec = stored.record
                if self.node and rec.node != self.node:
                    continue  # another node's daemon is in charge
                try:
                    if rec.active:
                        self._advance(stored)
                    elif rec.phase == "evicted" or (rec.phase == "done" and rec.avoid):
                        self._follow_up(stored)
                    else:
                        self._collect(stored)
                except PodguardError as e:
                    self.log.warning("remediation %s of %s in %s: %s", rec.id, rec.workload_ref,
                                     rec.namespace, e)
            return self.decisions[mark:]

    def replacements(self) -> dict[tuple[str, str], float]:
        """Pods recreated (same name) by a remediation, with the eviction time (unix seconds).

        The daemon should start such a pod's window afresh from that time: samples before it
        belong to the evicted predecessor (Prometheus series of both carry the same
        namespace/pod/container). Read from podguard's records, so known after a restart.
        """
        with self._lock:
            return {(s.record.namespace, s.record.pod): float(s.record.evicted_at)
                    for s in self._records.values()
                    if s.record.evicted_at is not None and s.record.workload_kind == "StatefulSet"}

    # ------------------------------------------------------------------ the channel's side

    def pending(self, pod: PodIdentity) -> list[PodRequest]:
        """The checkpoint request for ``pod`` (its uid, as the API server vouched), if any."""
        with self._lock:
            return [PodRequest(self.kind, s.record.request_id,
                               float(s.record.requested_at or s.record.at),
                               f"{s.record.kind}: {s.record.note}"[:500])
                    for s in self._records.values()
                    if s.record.phase in ("checkpointing", "blocked") and s.record.request_id
                    and (s.record.namespace, s.record.pod, s.record.uid)
                    == (pod.namespace, pod.pod, pod.uid)]

    def answer(self, pod: PodIdentity, request_id: str,
               result: Mapping[str, Any]) -> Answer:
        """Accepts the checkpoint acknowledgement of ``pod`` for its current request only."""
        if not proto.REQUEST_ID.match(request_id):
            return Answer(False, "malformed request id")
        path, step = result.get("path"), result.get("step")
        if not isinstance(path, str) or not path or len(path) > 4096:
            return Answer(False, "result.path must be the checkpoint's path (a string)")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)
                                 or step < 0):
            return Answer(False, "result.step must be a non-negative integer")
        with self._lock:
            found = next((s for s in self._records.values()
                          if (s.record.namespace, s.record.pod, s.record.uid)
                          == (pod.namespace, pod.pod, pod.uid)), None)
            if found is None:
                return Answer(False, "no checkpoint request for this pod")
            for _ in range(3):
                rec, rv = self.store.get(found.record.workload_kind, found.record.namespace,
                                         found.record.workload)
                if rec is None or rv is None or rec.uid != pod.uid or \
                        rec.phase not in ("checkpointing", "blocked") or not rec.request_id:
                    return Answer(False, "no checkpoint request pending for this pod")
                if not secrets.compare_digest(rec.request_id.encode(), request_id.encode()):
                    return Answer(False, "not the pending request (stale or unknown id)")
                now = self.clock()
                waited = now - float(rec.requested_at or now)
                new = rec.replace(phase="evicting", acked_at=now, checkpoint=path, step=step,
                                  request_id="", at=now,
                                  note=f"checkpoint {path} acknowledged by the pod")
                if self._put(new, rv):
                    self._decide(ObjectRef("Pod", rec.pod, rec.namespace, rec.uid),
                                 "CheckpointAcknowledged",
                                 f"checkpoint {path} (step {step}) saved for request "
                                 f"{rec.request_n} {waited:.1f} s after the request "
                                 f"(acknowledged by the pod's own token); evicting",
                                 remediation_id=rec.id)
                    return Answer(True)
            return Answer(False, "the record kept changing; answer again")

    # ------------------------------------------------------------------ records

    def _resync(self) -> None:
        """Reads every record (each minute from ``handle``, each ``reconcile``)."""
        stored = self.store.list()
        self._records = {s.name: s for s in stored}
        self.actuator.seed_budgets(s.record for s in stored)
        self._next_resync = self.clock() + min(60.0, self.settings.resync_s)

    def _put(self, rec: proto.Remediation, rv: str | None) -> bool:
        new_rv = self.store.put(rec, rv)
        name = proto.lease_name(rec.workload_kind, rec.namespace, rec.workload)
        if new_rv is None:
            self._records.pop(name, None)  # read again at the next pass
            return False
        self._records[name] = Stored(name, rec, new_rv)
        return True

    # ------------------------------------------------------------------ decisions

    def _decide(self, obj: ObjectRef, reason: str, message: str, *, warning: bool = False,
                pod: str = "", remediation_id: str = "", once: str | None = None,
                required: bool = False) -> None:
        """Records a decision and its Event. ``once`` names the Event deterministically (see
        ``Actuator.event``); ``required`` lets an Event error propagate, so the caller does
        not write the state that follows the decision and redoes the step later."""
        try:
            self.actuator.event(obj, reason, message, warning=warning, once=once)
        except PodguardError as e:
            if required:
                raise
            self.log.warning("could not record Event %s on %s %s: %s", reason, obj.kind,
                             obj.name, e)
        d = Decision(obj.namespace, pod or obj.name, reason, message, remediation_id)
        self.decisions.append(d)
        self.log.info("%s %s/%s: %s", reason, obj.namespace, obj.name, message)

    def _start(self, v: Verdict, cause: str) -> bool:
        """Starts a remediation for ``v``'s pod if allowed; False only on a write conflict."""
        pod = self.actuator.read_pod(v.namespace, v.pod)
        if pod is None or pod.metadata is None or pod.metadata.deletion_timestamp is not None:
            return True
        m = pod.metadata
        node = str(pod.spec.node_name or "") if pod.spec else ""
        if self.node and node != self.node:
            return True  # not this daemon's pod
        ref = ObjectRef.pod(pod)
        if (m.labels or {}).get(self.settings.opt_in_label) != "true":
            self._decide(ref, "RemediationSkipped",
                         f"{v.kind}: alert only, the pod does not opt in "
                         f"({self.settings.opt_in_label}=true)")
            return True
        workload = self._verified_owner(pod)
        if workload is None:
            self._decide(ref, "RemediationSkipped",
                         f"{v.kind}: alert only, the pod is not controlled by a StatefulSet "
                         f"or a Job")
            return True
        prev, rv = self.store.get(workload.kind, workload.namespace, workload.name)
        if prev is not None and prev.uid == m.uid and prev.phase != "done":
            return True  # in flight (or evicted, awaiting deletion): one per pod
        rid = proto.new_remediation_id()
        why = (self.actuator.cooldown_refusal(prev, rid)
               or self.actuator.budget_refusal(node=node, namespace=str(m.namespace)))
        if why:
            self._decide(ref, "RemediationSkipped", f"{v.kind}: not remediating now: {why}")
            return True
        now = self.clock()
        reason = v.explanation.text if v.explanation else v.kind
        rec = proto.Remediation(
            id=rid, phase="checkpointing", kind=v.kind,
            cause="node" if cause == "node" else "pod", namespace=str(m.namespace),
            pod=str(m.name), uid=str(m.uid), node=node, workload_kind=workload.kind,
            workload=workload.name, workload_uid=workload.uid, detected_at=now, at=now,
            request_id=proto.new_request_id(), request_n=1, requested_at=now,
            note=f"{reason}"[:500])
        if self.actuator.dry_run:
            key = (v.namespace, v.pod)
            if now - self._planned.get(key, -1e18) < self.settings.cooldown_s:
                return True
            self._planned[key] = now
            self.actuator._plan(self._plan_text(v, rec, workload))
            return True
        if not self._put(rec, rv):
            return False  # changed under us: read again
        self._decide(ref, "CheckpointRequested",
                     f"{v.kind} (time to OOM {_dur(v.time_to_oom_s)}): {reason}. Remediation "
                     f"{rid} ({cause}-level cause): checkpoint requested (request 1, handed "
                     f"to the pod over podguard's authenticated channel); the pod is evicted "
                     f"once it is acknowledged (waiting up to "
                     f"{_dur(self.settings.checkpoint_timeout_s)})",
                     warning=True, remediation_id=rid)
        return True

    def _verified_owner(self, pod: client.V1Pod) -> WorkloadRef | None:
        """The pod's StatefulSet or Job, if it exists with the uid the reference names."""
        ref = owner_of(pod)
        if ref is None:
            return None
        obj = self.actuator.read_workload(ref)
        if obj is None or obj.metadata is None or str(obj.metadata.uid) != ref.uid:
            return None
        return ref

    def _plan_text(self, v: Verdict, rec: proto.Remediation, workload: WorkloadRef) -> str:
        s = self.settings
        if rec.cause == "node" and s.node_action != "none":
            move = (f"cordon node {rec.node}" if s.node_action == "cordon"
                    else f"taint node {rec.node} {proto.UNHEALTHY}:NoSchedule")
        elif s.avoid_node:
            move = f"taint node {rec.node} {proto.RESCHEDULING}:PreferNoSchedule"
        else:
            move = "leave the node as it is"
        return (f"{v.namespace}/{v.pod} ({workload}, node {rec.node}): {v.kind}, time to "
                f"OOM {_dur(v.time_to_oom_s)}; would request a checkpoint (over podguard's "
                f"authenticated pod channel), wait up to "
                f"{_dur(s.checkpoint_timeout_s)} for the acknowledgement (evicting without one "
                f"only below {_dur(s.evict_unacknowledged_below_s)} to OOM), then {move} and "
                f"evict through the Eviction API (PodDisruptionBudgets respected)")

    def _advance(self, stored: Stored) -> None:
        rec, rv = stored.record, stored.resource_version
        ref = ObjectRef("Pod", rec.pod, rec.namespace, rec.uid)
        pod = self.actuator.read_pod(rec.namespace, rec.pod)
        if pod is None or pod.metadata is None or str(pod.metadata.uid) != rec.uid:
            now = self.clock()
            if rec.phase == "evicting":  # gone meanwhile (or evicted by a predecessor)
                self._put(rec.replace(phase="evicted", evicted_at=rec.evicted_at or now, at=now,
                                      request_id="", note="the pod is gone"), rv)
            else:
                self._put(rec.replace(phase="abandoned", request_id="", at=now,
                                      note="the pod is gone before its checkpoint"), rv)
            return
        now = self.clock()
        s = self.settings
        latest = self._latest.get((rec.namespace, rec.pod))  # this daemon's own verdicts only
        tto = latest.time_to_oom_s if latest is not None and latest.is_anomaly else None
        floor = s.evict_unacknowledged_below_s

        if rec.phase in ("checkpointing", "blocked"):
            if tto is not None and tto < floor:
                new = rec.replace(phase="evicting", forced=True, request_id="", at=now,
                                  note="evicting without checkpoint: time to OOM below the "
                                       "floor")
                if not self._put(new, rv):
                    return
                self._decide(ref, "EvictingWithoutCheckpoint",
                             f"checkpoint request {rec.request_n} not acknowledged; the "
                             f"projected time to OOM ({_dur(tto)}) is below the floor "
                             f"({_dur(floor)}, remediation.evict_unacknowledged_below_s): the "
                             f"pod dies anyway, so it is evicted now without a checkpoint",
                             warning=True, remediation_id=rec.id)
                rec, rv = new, self._records[stored.name].resource_version
            elif rec.phase == "checkpointing":
                if now - float(rec.requested_at or now) < s.checkpoint_timeout_s:
                    return
                why = (f"checkpoint request {rec.request_n} not acknowledged within "
                       f"{_dur(s.checkpoint_timeout_s)}; not evicting (time to OOM "
                       f"{_dur(tto)} is not below the floor {_dur(floor)}): the alert is "
                       f"escalated")
                if not self._put(rec.replace(phase="blocked", escalated=True, note=why, at=now),
                                 rv):
                    return
                self._decide(ref, "CheckpointNotAcknowledged", why, warning=True,
                             remediation_id=rec.id)
                self._escalate(rec.namespace, rec.pod, why, latest)
                return
            else:  # blocked, still no answer: keep the escalation alive (idempotent)
                self._escalate(rec.namespace, rec.pod, rec.note, latest)
                return

        if rec.phase != "evicting" or now < rec.next_try:
            return
        if (not rec.forced and rec.acked_at is not None
                and now - float(rec.acked_at) > s.checkpoint_max_age_s):
            n = rec.request_n + 1
            new = rec.replace(phase="checkpointing", request_id=proto.new_request_id(),
                              request_n=n, requested_at=now, acked_at=None, checkpoint=None,
                              step=None, at=now, note=f"checkpoint requested again ({n})")
            if self._put(new, rv):
                self._decide(ref, "CheckpointRequested",
                             f"the acknowledged checkpoint is older than "
                             f"{_dur(s.checkpoint_max_age_s)} and the pod is still here: "
                             f"checkpoint requested again (request {n})",
                             remediation_id=rec.id)
            return
        self._evict(pod, rec, rv)

    def _evict(self, pod: client.V1Pod, rec: proto.Remediation, rv: str) -> None:
        s = self.settings
        ref = ObjectRef.pod(pod)
        node = rec.node
        if rec.cause == "node" and s.node_action != "none":
            why = (f"{s.node_action} node {node}: {s.node_cause_min_pods} or more pods flagged "
                   f"on it (remediation {rec.id})")
            changed = (self.actuator.cordon(node, by=rec.id, reason=why)
                       if s.node_action == "cordon" else
                       self.actuator.taint(node, key=proto.UNHEALTHY, effect="NoSchedule",
                                           by=rec.id, reason=why))
            if changed:
                self._decide(ObjectRef.node(node), "NodeCordoned" if s.node_action == "cordon"
                             else "NodeTainted", why, warning=True, pod=rec.pod,
                             remediation_id=rec.id)
        avoid = rec.cause == "pod" and s.avoid_node
        try:
            if avoid:
                self.actuator.hold_rescheduling_taint(node, rec.id)
            result = self.actuator.evict(pod, remediation_id=rec.id)
        except ForbiddenError as e:
            # refused by RBAC or by the admission policies confining each daemon to its own
            # node: repeating it at once cannot help, so once an Event, then retry_s apart
            self._refused(pod, rec, rv, e, release=avoid)
            return
        now = self.clock()
        if result.outcome is Outcome.EVICTED:
            how = ("without a checkpoint (time to OOM below the floor)" if rec.forced
                   else f"after checkpoint {rec.checkpoint}")
            away = (f"; node {node} is tainted {proto.RESCHEDULING}:PreferNoSchedule until the "
                    f"replacement runs" if avoid else "")
            self._decide(ref, "Evicted",
                         f"evicted from node {node} through the Eviction API {how}; "
                         f"{rec.workload_ref} recreates it (remediation {rec.id}, "
                         f"{rec.kind}){away}", warning=True, remediation_id=rec.id,
                         once=f"{rec.id}.evicted")
            new = rec.replace(phase="evicted", evicted_at=now, at=now, avoid=avoid,
                              told=[*rec.told, "evicted"], note=result.detail)
            if not self._put(new, rv):  # someone wrote meanwhile: keep the fact, retry once
                again, rv2 = self.store.get(rec.workload_kind, rec.namespace, rec.workload)
                if again is not None and again.id == rec.id and rv2 is not None:
                    self._put(new, rv2)
            return
        if avoid:
            self.actuator.release_rescheduling_taint(node, rec.id)
        if result.outcome is Outcome.GONE:
            self._put(rec.replace(phase="evicted", evicted_at=now, at=now,
                                  note=result.detail), rv)
            return
        delay = max(s.retry_s, result.retry_after_s or 0.0)
        if not self._put(rec.replace(attempts=rec.attempts + 1, next_try=now + delay, at=now,
                                     note=result.detail[:500]), rv):
            return
        if result.outcome is Outcome.PDB_BLOCKED:
            self._decide(ref, "EvictionBlocked",
                         f"a PodDisruptionBudget forbids the eviction now ({result.detail}); "
                         f"retried every {_dur(delay)}, never forced (remediation {rec.id})",
                         warning=True, remediation_id=rec.id)
        else:
            self._decide(ref, "EvictionDeferred",
                         f"{result.detail}; retried every {_dur(delay)} "
                         f"(remediation {rec.id})", remediation_id=rec.id)

    def _refused(self, pod: client.V1Pod, rec: proto.Remediation, rv: str, e: ForbiddenError,
                 *, release: bool) -> None:
        if release:
            try:
                self.actuator.release_rescheduling_taint(rec.node, rec.id)
            except PodguardError as again:
                self.log.warning("releasing the taint of node %s failed: %s", rec.node, again)
        now = self.clock()
        detail = str(e)[:500]
        if not self._put(rec.replace(attempts=rec.attempts + 1,
                                     next_try=now + self.settings.retry_s, at=now,
                                     note=f"refused: {detail}"), rv):
            return
        self._decide(ObjectRef.pod(pod), "EvictionRefused",
                     f"the API server refused podguard's eviction of this pod from node "
                     f"{rec.node} ({detail}); retried every {_dur(self.settings.retry_s)} "
                     f"(remediation {rec.id})", warning=True, remediation_id=rec.id,
                     once=f"{rec.id}.refused")

    def _escalate(self, namespace: str, pod: str, why: str, latest: Verdict | None) -> None:
        if self.escalate is None:
            return
        try:
            self.escalate(namespace, pod, why, latest)
        except Exception as e:  # a sink's problem must not stop remediation
            self.log.warning("escalation of %s/%s failed: %s", namespace, pod, e)

    # ------------------------------------------------------------------ after the eviction

    def _replacement(self, rec: proto.Remediation) -> tuple[bool, str | None]:
        """(whether a replacement runs, the node it runs on if known)."""
        if rec.workload_kind == "StatefulSet":
            p = self.actuator.read_pod(rec.namespace, rec.pod)
            pm: Any = p.metadata if p is not None else None
            if (p is not None and pm is not None and pm.uid != rec.uid
                    and pm.deletion_timestamp is None and p.status is not None
                    and p.status.phase == "Running" and p.spec is not None
                    and p.spec.node_name):
                return True, str(p.spec.node_name)
            return False, None
        job = self.actuator.read_workload(_workload_ref(rec))
        st = getattr(job, "status", None)
        old = self.actuator.read_pod(rec.namespace, rec.pod)
        old_gone = old is None or old.metadata is None or str(old.metadata.uid) != rec.uid
        running = int(getattr(st, "ready", 0) or 0) >= 1 or int(getattr(st, "active", 0) or 0) >= 1
        return (old_gone and running), None

    def _follow_up(self, stored: Stored) -> None:
        rec, rv = stored.record, stored.resource_version
        now = self.clock()
        if rec.phase == "done":  # the taint is still held (a daemon died before releasing)
            self.actuator.release_rescheduling_taint(rec.node, rec.id)
            self._put(rec.replace(avoid=False, at=now), rv)
            return
        evicted_at = float(rec.evicted_at if rec.evicted_at is not None else rec.at)
        if "evicted" not in rec.told:  # a daemon killed right after the eviction never said so
            self._decide(ObjectRef("Pod", rec.pod, rec.namespace, rec.uid), "Evicted",
                         f"evicted from node {rec.node} through the Eviction API "
                         + (f"after checkpoint {rec.checkpoint}" if rec.checkpoint else
                            "without a checkpoint") + f"; {rec.workload_ref} recreates it "
                         f"(remediation {rec.id}, recorded by a restarted daemon)",
                         warning=True, pod=rec.pod, remediation_id=rec.id,
                         once=f"{rec.id}.evicted")
            rec = rec.replace(told=[*rec.told, "evicted"])
        running, node = self._replacement(rec)
        if not running:
            if rec.avoid and now - evicted_at > self.settings.avoid_ttl_s:
                self.actuator.release_rescheduling_taint(rec.node, rec.id)
                rec = rec.replace(avoid=False)
            if now - evicted_at > max(self.settings.cooldown_s, self.settings.avoid_ttl_s):
                rec = rec.replace(phase="done", done_at=now,
                                  note="no replacement came back; nothing left to release")
            if rec != stored.record:
                self._put(rec.replace(at=now), rv)
            return
        where = ("another node" if node and node != rec.node else
                 "the same node (no other node fitted)" if node else "a node")
        msg = (f"replacement of {rec.pod} (remediation {rec.id}) is running on "
               f"{node or 'a node'}{'' if not node else ', ' + where}, "
               f"{now - evicted_at:.1f} s after the eviction from {rec.node}; "
               + (f"it resumes from checkpoint {rec.checkpoint}" if rec.checkpoint
                  else "no checkpoint was taken"))
        # Events first, then the record (issue 17): "done" written before its Events was
        # final for a daemon killed in between - its successor saw "done" and never told.
        # Named once per remediation, the Events are safe to write again after a crash; an
        # error writing them leaves the record as it is and the next pass redoes the step.
        if rec.workload_kind == "StatefulSet":
            new = self.actuator.read_pod(rec.namespace, rec.pod)
            if new is not None and new.metadata is not None:
                self._decide(ObjectRef.pod(new), "Rescheduled", msg, remediation_id=rec.id,
                             once=f"{rec.id}.rescheduled", required=True)
        self._decide(_workload_ref(rec).object_ref(), "Rescheduled", msg, pod=rec.pod,
                     remediation_id=rec.id, once=f"{rec.id}.rescheduled", required=True)
        done = rec.replace(phase="done", at=now, done_at=now, new_node=node,
                           told=[*rec.told, "rescheduled"])
        if not self._put(done, rv):
            return
        if rec.avoid:
            self.actuator.release_rescheduling_taint(rec.node, rec.id)
            self._put(done.replace(avoid=False), self._records[stored.name].resource_version)

    def _collect(self, stored: Stored) -> None:
        """Deletes records nothing needs any more (older than the cooldown and the budget
        window: they limit nothing)."""
        rec = stored.record
        keep = max(self.settings.cooldown_s, self.settings.budget_window_s)
        if rec.phase in ("done", "abandoned") and self.clock() - rec.at > keep \
                and self.store.delete(stored):
            self._records.pop(stored.name, None)
