"""The remediation controller: checkpoint, then reschedule, one state machine per pod.

The daemon calls :meth:`RemediationController.handle` with each evaluation's verdicts and
:meth:`RemediationController.reconcile` every few seconds. Every cluster change goes through
the :class:`~detector.remediation.actuator.Actuator`; every decision and its reason is an
Event on the pod (or node, or workload). All state is in annotations (see
:mod:`detector.remediation.protocol`), so a daemon killed at any point and started again
continues the same remediation, once.

Who is remediated: pods labelled ``<opt_in_label>=true`` whose controller is a StatefulSet
or a Job, flagged with a kind in ``settings.kinds``, when ``settings.enabled``. Anything else
is alert-only (an Event says so). At most one remediation is in flight per pod, and one per
workload (the workload's record doubles as its cooldown).

The phases of a pod (annotation ``podguard.io/remediation``)::

    (flagged) --request checkpoint--> checkpointing --ack with the same id--> evicting
    checkpointing --no ack within checkpoint_timeout_s--> blocked (alert escalated, no eviction)
    checkpointing/blocked --time to OOM < evict_unacknowledged_below_s--> evicting (forced)
    blocked --late ack--> evicting
    evicting --PDB 429 / budget / cooldown--> evicting (retry after retry_s, never forced)
    evicting --acknowledged checkpoint older than checkpoint_max_age_s--> checkpointing (new id)
    evicting --Eviction API accepted--> evicted

Before evicting: for a node-level cause (``node_cause_min_pods`` pods on one node flagged with
pre-failure drift in the same evaluation; a leak is the pod's own) the node is cordoned or
tainted NoSchedule (``node_action``); for a pod-level cause it is tainted PreferNoSchedule while
the replacement is scheduled (``avoid_node``), so the replacement lands elsewhere when another
node fits. After the eviction the workload's record is followed until
a replacement pod runs; then the taint is released and a ``Rescheduled`` Event says where.
In dry-run the plan is printed once per pod and nothing is written.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client

from detector.errors import PodguardError
from detector.explain import format_duration
from detector.remediation import protocol as proto
from detector.remediation.actuator import Actuator, ObjectRef, Outcome, WorkloadRef, owner_of
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


class RemediationController:
    """Checkpoint-then-reschedule (see the module docstring)."""

    def __init__(self, actuator: Actuator, *, settings: RemediationSettings,
                 escalate: Escalate | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.log = logger if logger is not None else log
        self.actuator = actuator
        self.settings = settings
        self.escalate = escalate
        self.clock = actuator.clock
        self.decisions: list[Decision] = []  # every decision since construction
        self._latest: dict[tuple[str, str], Verdict] = {}
        self._follow: dict[WorkloadRef, proto.WorkloadRecord] = {}
        self._next_resync = 0.0
        self._planned: dict[tuple[str, str], float] = {}
        self._replaced: dict[tuple[str, str], float] = {}
        self._told: set[str] = set()  # remediations whose Evicted Event is known written

    # ------------------------------------------------------------------ entry points

    def handle(self, verdicts: Sequence[Verdict]) -> list[Decision]:
        """Starts remediations for flagged, opted-in pods; returns the decisions taken."""
        mark = len(self.decisions)
        if not self.settings.enabled:
            return []
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
        for v in verdicts:
            if v.is_anomaly and not v.stale and v.kind in self.settings.kinds:
                try:
                    for _ in range(3):  # a conflict (another writer) is retried at once
                        if self._start(v, "node" if v.node in sick else "pod"):
                            break
                except PodguardError as e:
                    self.log.warning("remediation of %s/%s not started: %s", v.namespace, v.pod, e)
        return self.decisions[mark:]

    def reconcile(self) -> list[Decision]:
        """Advances every remediation in flight (read from the cluster); returns decisions."""
        mark = len(self.decisions)
        if not self.settings.enabled or self.actuator.dry_run:
            return []
        now = self.clock()
        if now >= self._next_resync:
            records = self.actuator.list_workload_records()
            self.actuator.seed_budgets(records)
            for ref, rec in records:
                if rec.phase in ("evicting", "evicted") or (rec.phase == "done" and rec.avoid):
                    self._follow.setdefault(ref, rec)
                if rec.evicted_at is not None and ref.kind == "StatefulSet":
                    self._replaced[(rec.namespace, rec.pod)] = float(rec.evicted_at)
            self._next_resync = now + self.settings.resync_s
        selector = f"{self.settings.opt_in_label}=true"
        for pod in self.actuator.list_pods(label_selector=selector):
            m = pod.metadata
            if m is None:
                continue
            state = proto.RemediationState.parse((m.annotations or {}).get(proto.STATE))
            if state is None or not state.active or state.uid != m.uid:
                continue
            try:
                self._advance(pod, state)
            except PodguardError as e:
                self.log.warning("remediation %s of %s/%s: %s", state.id, m.namespace, m.name, e)
        for ref, rec in list(self._follow.items()):
            try:
                self._follow_up(ref, rec)
            except PodguardError as e:
                self.log.warning("remediation %s of %s: %s", rec.id, ref, e)
        return self.decisions[mark:]

    def replacements(self) -> dict[tuple[str, str], float]:
        """Pods recreated (same name) by a remediation, with the eviction time (unix seconds).

        The daemon should start such a pod's window afresh from that time: samples before it
        belong to the evicted predecessor (Prometheus series of both carry the same
        namespace/pod/container). Known from this process's evictions and, after a restart,
        from the workloads' records (``reconcile`` re-lists them at start).
        """
        return dict(self._replaced)

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
        ref = ObjectRef.pod(pod)
        if (m.labels or {}).get(self.settings.opt_in_label) != "true":
            self._decide(ref, "RemediationSkipped",
                         f"{v.kind}: alert only, the pod does not opt in "
                         f"({self.settings.opt_in_label}=true)")
            return True
        workload = owner_of(pod)
        if workload is None:
            self._decide(ref, "RemediationSkipped",
                         f"{v.kind}: alert only, the pod is not controlled by a StatefulSet "
                         f"or a Job")
            return True
        state = proto.RemediationState.parse((m.annotations or {}).get(proto.STATE))
        if state is not None and state.uid == m.uid and state.phase != "done":
            return True  # in flight (or evicted, awaiting deletion): one per pod
        node = str(pod.spec.node_name or "") if pod.spec else ""
        rid = "r-" + uuid.uuid4().hex[:10]
        why = (self.actuator.cooldown_refusal(workload, rid)
               or self.actuator.budget_refusal(node=node, namespace=str(m.namespace)))
        if why:
            self._decide(ref, "RemediationSkipped", f"{v.kind}: not remediating now: {why}")
            return True
        now = self.clock()
        reason = v.explanation.text if v.explanation else v.kind
        request = proto.CheckpointRequest(id=f"{rid}.1", ts=now, reason=f"{v.kind}: {reason}")
        state = proto.RemediationState(
            id=rid, phase="checkpointing", kind=v.kind, cause=cause, node=node,
            uid=str(m.uid), workload=str(workload), detected_at=now,
            request_id=request.id, requested_at=now,
            note=f"checkpoint requested ({request.id})")
        if self.actuator.dry_run:
            key = (v.namespace, v.pod)
            if now - self._planned.get(key, -1e18) < self.settings.cooldown_s:
                return True
            self._planned[key] = now
            self.actuator._plan(self._plan_text(v, state, workload))
            return True
        rv = self.actuator.annotate_pod(
            str(m.namespace), str(m.name),
            {proto.REQUEST: request.to_json(), proto.STATE: state.to_json()},
            resource_version=m.resource_version)
        if rv is None:
            return False  # changed under us (e.g. the verdict annotation): read again
        self._decide(ref, "CheckpointRequested",
                     f"{v.kind} (time to OOM {_dur(v.time_to_oom_s)}): {reason}. Remediation "
                     f"{rid} ({cause}-level cause): checkpoint requested ({request.id}); the "
                     f"pod is evicted once it is acknowledged (waiting up to "
                     f"{_dur(self.settings.checkpoint_timeout_s)})",
                     warning=True, remediation_id=rid)
        return True

    def _plan_text(self, v: Verdict, state: proto.RemediationState,
                   workload: WorkloadRef) -> str:
        s = self.settings
        if state.cause == "node" and s.node_action != "none":
            move = (f"cordon node {state.node}" if s.node_action == "cordon"
                    else f"taint node {state.node} {proto.UNHEALTHY}:NoSchedule")
        elif s.avoid_node:
            move = f"taint node {state.node} {proto.RESCHEDULING}:PreferNoSchedule"
        else:
            move = "leave the node as it is"
        return (f"{v.namespace}/{v.pod} ({workload}, node {state.node}): {v.kind}, time to "
                f"OOM {_dur(v.time_to_oom_s)}; would request a checkpoint "
                f"(podguard.io/checkpoint-request), wait up to "
                f"{_dur(s.checkpoint_timeout_s)} for the acknowledgement (evicting without one "
                f"only below {_dur(s.evict_unacknowledged_below_s)} to OOM), then {move} and "
                f"evict through the Eviction API (PodDisruptionBudgets respected)")

    def _write(self, pod: client.V1Pod, state: proto.RemediationState,
               extra: dict[str, str | None] | None = None) -> bool:
        m = pod.metadata
        assert m is not None
        rv = self.actuator.annotate_pod(str(m.namespace), str(m.name),
                                        {proto.STATE: state.to_json(), **(extra or {})},
                                        resource_version=m.resource_version)
        if rv is None:
            return False
        m.resource_version = rv
        ann = dict(m.annotations or {})
        ann[proto.STATE] = state.to_json()
        for k, val in (extra or {}).items():
            if val is None:
                ann.pop(k, None)
            else:
                ann[k] = val
        m.annotations = ann
        return True

    def _advance(self, pod: client.V1Pod, state: proto.RemediationState) -> None:
        m = pod.metadata
        assert m is not None
        ann = m.annotations or {}
        ref = ObjectRef.pod(pod)
        ns, name = str(m.namespace), str(m.name)
        now = self.clock()
        s = self.settings
        latest = self._latest.get((ns, name)) or proto.parse_verdict(ann.get(proto.VERDICT))
        tto = latest.time_to_oom_s if latest is not None and latest.is_anomaly else None
        floor = s.evict_unacknowledged_below_s
        ack = proto.CheckpointAck.parse(ann.get(proto.ACK))
        acked = ack is not None and ack.id == state.request_id

        if state.phase in ("checkpointing", "blocked"):
            if acked and ack is not None:
                waited = ack.ts - (state.requested_at or ack.ts)
                new = replace(state, phase="evicting", acked_at=ack.ts, checkpoint=ack.path,
                              note=f"checkpoint {ack.path} acknowledged")
                if not self._write(pod, new):
                    return
                self._decide(ref, "CheckpointAcknowledged",
                             f"checkpoint {ack.path} (step {ack.step}) saved for request "
                             f"{ack.id} {waited:.1f} s after the request; evicting",
                             remediation_id=state.id)
                state = new
            elif tto is not None and tto < floor:
                new = replace(state, phase="evicting", forced=True,
                              note="evicting without checkpoint: time to OOM below the floor")
                if not self._write(pod, new):
                    return
                self._decide(ref, "EvictingWithoutCheckpoint",
                             f"checkpoint request {state.request_id} not acknowledged; the "
                             f"projected time to OOM ({_dur(tto)}) is below the floor "
                             f"({_dur(floor)}, remediation.evict_unacknowledged_below_s): the "
                             f"pod dies anyway, so it is evicted now without a checkpoint",
                             warning=True, remediation_id=state.id)
                state = new
            elif state.phase == "checkpointing":
                if now - float(state.requested_at or now) < s.checkpoint_timeout_s:
                    return
                why = (f"checkpoint request {state.request_id} not acknowledged within "
                       f"{_dur(s.checkpoint_timeout_s)}; not evicting (time to OOM "
                       f"{_dur(tto)} is not below the floor {_dur(floor)}): the alert is "
                       f"escalated")
                new = replace(state, phase="blocked", escalated=True, note=why)
                if not self._write(pod, new):
                    return
                self._decide(ref, "CheckpointNotAcknowledged", why, warning=True,
                             remediation_id=state.id)
                self._escalate(ns, name, why, latest)
                return
            else:  # blocked, still no ack: keep the escalation alive (idempotent)
                self._escalate(ns, name, state.note, latest)
                return

        if state.phase != "evicting" or now < state.next_try:
            return
        if (not state.forced and state.acked_at is not None
                and now - float(state.acked_at) > s.checkpoint_max_age_s):
            n = int(state.request_id.rsplit(".", 1)[-1]) + 1 if "." in state.request_id else 2
            request = proto.CheckpointRequest(id=f"{state.id}.{n}", ts=now,
                                              reason="the acknowledged checkpoint is stale")
            new = replace(state, phase="checkpointing", request_id=request.id,
                          requested_at=now, acked_at=None, checkpoint=None,
                          note=f"checkpoint requested again ({request.id})")
            if self._write(pod, new, {proto.REQUEST: request.to_json()}):
                self._decide(ref, "CheckpointRequested",
                             f"the acknowledged checkpoint is older than "
                             f"{_dur(s.checkpoint_max_age_s)} and the pod is still here: "
                             f"checkpoint requested again ({request.id})",
                             remediation_id=state.id)
            return
        self._evict(pod, state)

    def _evict(self, pod: client.V1Pod, state: proto.RemediationState) -> None:
        m = pod.metadata
        assert m is not None
        s = self.settings
        ref = ObjectRef.pod(pod)
        workload = owner_of(pod)
        if workload is None:
            return
        node = state.node or (str(pod.spec.node_name or "") if pod.spec else "")
        if state.cause == "node" and s.node_action != "none":
            why = (f"{s.node_action} node {node}: {s.node_cause_min_pods} or more pods flagged "
                   f"on it (remediation {state.id})")
            changed = (self.actuator.cordon(node, by=state.id, reason=why)
                       if s.node_action == "cordon" else
                       self.actuator.taint(node, key=proto.UNHEALTHY, effect="NoSchedule",
                                           by=state.id, reason=why))
            if changed:
                self._decide(ObjectRef.node(node), "NodeCordoned" if s.node_action == "cordon"
                             else "NodeTainted", why, warning=True, pod=str(m.name),
                             remediation_id=state.id)
        avoid = state.cause == "pod" and s.avoid_node
        if avoid:
            self.actuator.hold_rescheduling_taint(node, state.id)
        record = proto.WorkloadRecord(
            id=state.id, namespace=str(m.namespace), pod=str(m.name), uid=str(m.uid),
            node=node, phase="evicting", at=self.clock(), cause=state.cause, avoid=avoid,
            checkpoint=state.checkpoint, forced=state.forced, detected_at=state.detected_at,
            requested_at=state.requested_at, acked_at=state.acked_at)
        result = self.actuator.evict(pod, workload=workload, record=record)
        now = self.clock()
        if result.outcome is Outcome.EVICTED:
            if workload.kind == "StatefulSet":
                self._replaced[(str(m.namespace), str(m.name))] = now
            self._write(pod, replace(state, phase="evicted", note=result.detail))
            self._follow[workload] = replace(record, phase="evicted", at=now, evicted_at=now)
            how = ("without a checkpoint (time to OOM below the floor)" if state.forced
                   else f"after checkpoint {state.checkpoint}")
            away = (f"; node {node} is tainted {proto.RESCHEDULING}:PreferNoSchedule until the "
                    f"replacement runs" if avoid else "")
            self._decide(ref, "Evicted",
                         f"evicted from node {node} through the Eviction API {how}; "
                         f"{workload} recreates it (remediation {state.id}, {state.kind}){away}",
                         warning=True, remediation_id=state.id, once=f"{state.id}.evicted")
            self._told.add(state.id)
            return
        if avoid:
            self.actuator.release_rescheduling_taint(node, state.id)
        if result.outcome is Outcome.GONE:
            self._follow[workload] = replace(record, phase="evicted", at=now, evicted_at=now)
            return
        delay = max(s.retry_s, result.retry_after_s or 0.0)
        new = replace(state, attempts=state.attempts + 1, next_try=now + delay,
                      note=result.detail)
        self._write(pod, new)
        if result.outcome is Outcome.PDB_BLOCKED:
            self._decide(ref, "EvictionBlocked",
                         f"a PodDisruptionBudget forbids the eviction now ({result.detail}); "
                         f"retried every {_dur(delay)}, never forced (remediation {state.id})",
                         warning=True, remediation_id=state.id)
        else:
            self._decide(ref, "EvictionDeferred",
                         f"{result.detail}; retried every {_dur(delay)} "
                         f"(remediation {state.id})", remediation_id=state.id)

    def _escalate(self, namespace: str, pod: str, why: str, latest: Verdict | None) -> None:
        if self.escalate is None:
            return
        try:
            self.escalate(namespace, pod, why, latest)
        except Exception as e:  # a sink's problem must not stop remediation
            self.log.warning("escalation of %s/%s failed: %s", namespace, pod, e)

    # ------------------------------------------------------------------ after the eviction

    def _replacement(self, ref: WorkloadRef, rec: proto.WorkloadRecord
                     ) -> tuple[bool, client.V1Pod | None]:
        """(whether the evicted pod is gone, a running replacement if there is one)."""
        if ref.kind == "StatefulSet":
            pods = [p for p in [self.actuator.read_pod(ref.namespace, rec.pod)] if p is not None]
        else:
            pods = self.actuator.list_pods(
                namespace=ref.namespace,
                label_selector=f"batch.kubernetes.io/controller-uid={ref.uid}")
        old_gone = not any(p.metadata is not None and p.metadata.uid == rec.uid for p in pods)
        for p in pods:
            pm: Any = p.metadata
            if (pm is not None and pm.uid != rec.uid and pm.deletion_timestamp is None
                    and p.status is not None and p.status.phase == "Running"
                    and p.spec is not None and p.spec.node_name):
                return old_gone, p
        return old_gone, None

    def _follow_up(self, ref: WorkloadRef, rec: proto.WorkloadRecord) -> None:
        now = self.clock()
        if rec.phase == "done":
            if rec.avoid:
                self.actuator.release_rescheduling_taint(rec.node, rec.id)
            del self._follow[ref]
            return
        old_gone, new = self._replacement(ref, rec)
        if rec.phase == "evicting":
            if not old_gone:
                return  # not evicted yet: the pod's own state machine is in charge
            rec = replace(rec, phase="evicted", evicted_at=rec.at)
        evicted_at = float(rec.evicted_at if rec.evicted_at is not None else rec.at)
        if rec.id not in self._told:  # a daemon killed right after the eviction never said so
            self._decide(ObjectRef("Pod", rec.pod, ref.namespace, rec.uid), "Evicted",
                         f"evicted from node {rec.node} through the Eviction API "
                         + (f"after checkpoint {rec.checkpoint}" if rec.checkpoint else
                            "without a checkpoint") + f"; {ref} recreates it (remediation "
                         f"{rec.id}, recorded by a restarted daemon)", warning=True,
                         pod=rec.pod, remediation_id=rec.id, once=f"{rec.id}.evicted")
            self._told.add(rec.id)
        if new is None or new.metadata is None or new.spec is None:
            if rec.avoid and now - evicted_at > self.settings.avoid_ttl_s:
                self.actuator.release_rescheduling_taint(rec.node, rec.id)
                rec = replace(rec, avoid=False)
                self._follow[ref] = rec
            if now - evicted_at > max(self.settings.cooldown_s, self.settings.avoid_ttl_s):
                del self._follow[ref]  # never came back: nothing left to release or report
            return
        node = str(new.spec.node_name)
        where = "another node" if node != rec.node else "the same node (no other node fitted)"
        msg = (f"replacement of {rec.pod} (remediation {rec.id}) is running on {node}, "
               f"{where}, {now - evicted_at:.1f} s after the eviction from {rec.node}; "
               + (f"it resumes from checkpoint {rec.checkpoint}" if rec.checkpoint
                  else "no checkpoint was taken"))
        # Events first, then the record (issue 17): "done" written before its Events was
        # final for a daemon killed in between - its successor saw "done" and never told.
        # Named once per remediation, the Events are safe to write again after a crash; an
        # error writing them leaves the record as it is and the next pass redoes the step.
        self._decide(ObjectRef.pod(new), "Rescheduled", msg, remediation_id=rec.id,
                     once=f"{rec.id}.rescheduled", required=True)
        self._decide(ref.object_ref(), "Rescheduled", msg, pod=rec.pod, remediation_id=rec.id,
                     once=f"{rec.id}.rescheduled", required=True)
        done = replace(rec, phase="done", at=now, done_at=now, new_node=node)
        self.actuator.annotate_workload(ref, {proto.WORKLOAD_RECORD: done.to_json()})
        self._follow[ref] = done
        if rec.avoid:
            self.actuator.release_rescheduling_taint(rec.node, rec.id)
        del self._follow[ref]
