"""The Actuator: the ONE place where podguard changes anything in a Kubernetes cluster.

Every mutation - Events, podguard's own Leases (its remediation records, in its namespace),
evictions, cordons, taints and their node annotations - goes through an :class:`Actuator`,
which enforces in one place:

* **dry-run**: nothing is written; each planned change is printed (``DRY-RUN: ...``) and kept
  in :attr:`Actuator.planned`;
* **eviction budgets**: at most ``max_evictions_per_node`` / ``max_evictions_per_namespace``
  evictions within ``budget_window_s`` (seeded after a restart from podguard's own records,
  so a restart does not reset them; nothing a workload writes counts);
* **cooldown per workload**: a StatefulSet or Job whose last remediation (podguard's record)
  is younger than ``cooldown_s`` is not remediated again;
* **evictions only through the Eviction subresource**, with the pod's uid as precondition
  (a replacement with the same name is never evicted by mistake); a PodDisruptionBudget's
  429 is returned as :attr:`Outcome.PDB_BLOCKED`, never forced;
* **API errors mapped from the HTTP status** with the cause chained: 404
  :class:`NotFoundError`, 409 :class:`ConflictError`, 401/403 :class:`ForbiddenError`,
  other 4xx :class:`InvalidRequestError` (permanent); 429/5xx and connection errors are
  retried over the finite ``api_backoff_s`` list honouring ``Retry-After``, logging
  "attempt n/N", then raised as :class:`ApiUnavailableError` (temporary).

Pods, StatefulSets and Jobs are only read, never patched. Called by
:mod:`detector.remediation.controller` (decisions), :mod:`detector.remediation.store`
(records), :mod:`detector.remediation.channel` (TokenReviews) and
:mod:`detector.sinks.k8s_events` (verdict Events). Reads go through the same retrying
wrapper. Time (``clock``) and waiting (``sleep``) are injected so tests fake them.
"""

from __future__ import annotations

import email.utils
import enum
import json
import logging
import socket
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from detector.errors import PermanentError, ServiceUnavailableError, TemporaryError
from detector.explain import format_duration
from detector.remediation import protocol as proto
from detector.settings import RemediationSettings

log = logging.getLogger("podguard.remediation.actuator")

T = TypeVar("T")

# --------------------------------------------------------------------------- errors


class NotFoundError(PermanentError):
    """404: the object does not exist (any more)."""


class ForbiddenError(PermanentError):
    """401/403: the credentials may not do this (see detector.remediation.rbac)."""


class InvalidRequestError(PermanentError):
    """Another 4xx: the request itself is wrong; repeating it cannot help."""


class ConflictError(TemporaryError):
    """409: the object changed (resourceVersion or uid precondition); re-read and decide again."""


class DisruptionBudgetError(TemporaryError):
    """429 from the Eviction API: a PodDisruptionBudget forbids the eviction now."""


class ApiUnavailableError(ServiceUnavailableError):
    """429/5xx or no answer from the API server, after every attempt."""


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        when = email.utils.parsedate_to_datetime(raw) if raw else None
        return max(0.0, when.timestamp() - time.time()) if when is not None else None


def map_api_error(what: str, e: ApiException) -> PermanentError | TemporaryError:
    """The podguard error for an API answer (the caller chains ``e`` as the cause)."""
    status = int(e.status or 0)
    body = str(e.body or "")[:500]
    msg = f"{what}: HTTP {status} {e.reason or ''}: {body}".strip()
    delay = _retry_after(e.headers)
    if status == 404:
        return NotFoundError(msg)
    if status == 409:
        return ConflictError(msg)
    if status in (401, 403):
        return ForbiddenError(msg + " (check the ClusterRole generated from "
                                    "detector.remediation.rbac)")
    if status == 429 and "disruption budget" in body.lower():
        return DisruptionBudgetError(msg, delay=delay)
    if status == 429 or status >= 500:
        return ApiUnavailableError(msg, delay=delay)
    return InvalidRequestError(msg)


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ObjectRef:
    """What an Event is about."""

    kind: str
    name: str
    namespace: str = ""  # "" for cluster-scoped objects (nodes)
    uid: str = ""
    api_version: str = "v1"

    @classmethod
    def pod(cls, pod: client.V1Pod) -> ObjectRef:
        m = pod.metadata
        assert m is not None
        return cls("Pod", str(m.name), str(m.namespace), str(m.uid or ""))

    @classmethod
    def node(cls, name: str, uid: str = "") -> ObjectRef:
        return cls("Node", name, "", uid)


@dataclass(frozen=True)
class WorkloadRef:
    """The controller owning a pod that podguard may remediate."""

    kind: Literal["StatefulSet", "Job"]
    namespace: str
    name: str
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    def object_ref(self) -> ObjectRef:
        api = "apps/v1" if self.kind == "StatefulSet" else "batch/v1"
        return ObjectRef(self.kind, self.name, self.namespace, self.uid, api)


def owner_of(pod: client.V1Pod) -> WorkloadRef | None:
    """The StatefulSet or Job controlling ``pod`` (None for anything else: alert only)."""
    m = pod.metadata
    if m is None:
        return None
    for ref in m.owner_references or []:
        if not ref.controller:
            continue
        if ref.kind == "StatefulSet" and str(ref.api_version).startswith("apps/"):
            return WorkloadRef("StatefulSet", str(m.namespace), str(ref.name), str(ref.uid))
        if ref.kind == "Job" and str(ref.api_version).startswith("batch/"):
            return WorkloadRef("Job", str(m.namespace), str(ref.name), str(ref.uid))
    return None


class Outcome(enum.Enum):
    EVICTED = "evicted"
    PDB_BLOCKED = "pdb_blocked"  # a PodDisruptionBudget refused (429): retry later
    BUDGET = "budget"  # podguard's own per-node / per-namespace budget is spent
    COOLDOWN = "cooldown"  # the workload was remediated too recently
    GONE = "gone"  # the pod (with that uid) no longer exists
    DRY_RUN = "dry_run"


@dataclass(frozen=True)
class EvictionResult:
    outcome: Outcome
    detail: str
    retry_after_s: float | None = None


@dataclass
class _EventSeen:
    name: str
    namespace: str
    count: int
    last: float


# --------------------------------------------------------------------------- actuator


class Actuator:
    """Every cluster mutation of podguard (see the module docstring)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        settings: RemediationSettings,
        dry_run: bool | None = None,
        event_interval_s: float = 600.0,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        component: str = "podguard",
        plan_stream: IO[str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.log = logger if logger is not None else log
        self.api = api
        self.settings = settings
        self.dry_run = settings.dry_run if dry_run is None else dry_run
        self.event_interval_s = float(event_interval_s)
        self.request_timeout_s = float(request_timeout_s)
        self.clock = clock
        self.sleep = sleep
        self.component = component
        self.instance = socket.gethostname()
        self.plan_stream = plan_stream if plan_stream is not None else sys.stdout
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.planned: list[str] = []
        self._evictions: list[tuple[float, str, str, str]] = []  # (ts, node, namespace, id)
        self._events: OrderedDict[tuple[str, str, str, str], _EventSeen] = OrderedDict()

    # ------------------------------------------------------------------ the API wrapper

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with 429/5xx/connection errors retried over the backoff."""
        delays = list(self.settings.api_backoff_s)
        attempts = len(delays) + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, _request_timeout=self.request_timeout_s, **kwargs)
            except ApiException as e:
                err = map_api_error(what, e)
                if not isinstance(err, ApiUnavailableError) or attempt == attempts:
                    raise err from e
                cause: Exception = err
            except (urllib3.exceptions.HTTPError, OSError) as e:
                err2 = ApiUnavailableError(f"{what}: the API server did not answer: {e}")
                if attempt == attempts:
                    raise err2 from e
                err, cause = err2, e
            delay = max(delays[attempt - 1], err.delay or 0.0)
            self.log.warning("%s failed (%s); attempt %d/%d, retrying in %.1f s",
                        what, cause, attempt, attempts, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _plan(self, text: str) -> None:
        self.planned.append(text)
        self.log.info("DRY-RUN: %s", text)
        self.plan_stream.write(f"DRY-RUN: {text}\n")
        self.plan_stream.flush()

    # ------------------------------------------------------------------ reads

    def read_pod(self, namespace: str, name: str) -> client.V1Pod | None:
        try:
            return self.call(f"get pod {namespace}/{name}", self.core.read_namespaced_pod,
                             name, namespace)
        except NotFoundError:
            return None

    def read_node(self, name: str) -> client.V1Node | None:
        try:
            return self.call(f"get node {name}", self.core.read_node, name)
        except NotFoundError:
            return None

    def read_workload(self, ref: WorkloadRef) -> Any | None:
        fn = (self.apps.read_namespaced_stateful_set if ref.kind == "StatefulSet"
              else self.batch.read_namespaced_job)
        try:
            return self.call(f"get {ref.kind} {ref.namespace}/{ref.name}", fn, ref.name,
                             ref.namespace)
        except NotFoundError:
            return None

    # ------------------------------------------------------------------ podguard's Leases

    def list_leases(self, namespace: str, *, label_selector: str) -> list[client.V1Lease]:
        got = self.call(f"list leases in {namespace}", self.coordination.list_namespaced_lease,
                        namespace, label_selector=label_selector)
        return list(got.items or [])

    def read_lease(self, namespace: str, name: str) -> client.V1Lease | None:
        try:
            return self.call(f"get lease {namespace}/{name}",
                             self.coordination.read_namespaced_lease, name, namespace)
        except NotFoundError:
            return None

    def write_lease(self, namespace: str, name: str, *, labels: Mapping[str, str],
                    annotations: Mapping[str, str], holder: str,
                    resource_version: str | None) -> str | None:
        """Creates (``resource_version`` None) or replaces the annotations of one of
        podguard's Leases, only if unchanged since read. Returns the new resourceVersion, or
        None on a conflict (someone wrote it meanwhile, or it exists already)."""
        if self.dry_run:
            self._plan(f"write lease {namespace}/{name}: {_show(dict(annotations))}")
            return resource_version or "dry-run"
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels),
                                "annotations": dict(annotations)}
        spec = {"holderIdentity": holder[:253]}
        try:
            if resource_version is None:
                got = self.call(f"create lease {namespace}/{name}",
                                self.coordination.create_namespaced_lease, namespace,
                                {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                 "metadata": meta, "spec": spec})
            else:
                meta["resourceVersion"] = resource_version
                got = self.call(f"patch lease {namespace}/{name}",
                                self.coordination.patch_namespaced_lease, name, namespace,
                                {"metadata": meta, "spec": spec})
        except (ConflictError, NotFoundError) as e:
            self.log.info("write lease %s/%s: %s", namespace, name, e)
            return None
        return str(got.metadata.resource_version) if got.metadata is not None else ""

    def delete_lease(self, namespace: str, name: str, resource_version: str) -> bool:
        if self.dry_run:
            self._plan(f"delete lease {namespace}/{name}")
            return True
        try:
            self.call(f"delete lease {namespace}/{name}",
                      self.coordination.delete_namespaced_lease, name, namespace,
                      body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                          resource_version=resource_version)))
        except (ConflictError, NotFoundError):
            return False
        return True

    # ------------------------------------------------------------------ Events

    def event(self, obj: ObjectRef, reason: str, message: str, *,
              warning: bool = False, once: str | None = None) -> None:
        """An Event on ``obj``; the same (object, reason, message) again within
        ``event_interval_s`` is skipped, later it increments the Event's count.

        ``once`` (e.g. ``"<remediation id>.rescheduled"``) makes the Event's name
        deterministic, ``<object name>.<once>``: writing it again - after a crash, from a
        restarted daemon - finds it there (409) and changes nothing, so a step of a state
        machine can record its Event *before* its state and redo both safely.
        """
        message = message[:1000]
        key = (obj.uid or f"{obj.kind}/{obj.namespace}/{obj.name}", reason,
               once or message, "Warning" if warning else "Normal")
        now = self.clock()
        seen = self._events.get(key)
        if seen is not None and (once or now - seen.last < self.event_interval_s):
            return
        if self.dry_run:
            self._plan(f"event {reason} on {obj.kind} {obj.namespace or '-'}/{obj.name}: "
                       f"{message}")
            self._events[key] = _EventSeen("", "", 1, now)
            return
        stamp = datetime.fromtimestamp(now, UTC)
        ns = obj.namespace or "default"
        if seen is not None and seen.name:
            try:
                self.call(f"patch event {ns}/{seen.name}", self.core.patch_namespaced_event,
                          seen.name, seen.namespace,
                          {"count": seen.count + 1, "lastTimestamp": stamp.isoformat()})
                seen.count += 1
                seen.last = now
                self._events.move_to_end(key)
                return
            except NotFoundError:
                pass  # expired (events live one hour by default): create a new one
        name = (f"{obj.name}.{once}" if once else f"{obj.name}.{uuid.uuid4().hex[:16]}")[:253]
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=name, namespace=ns),
            involved_object=client.V1ObjectReference(
                kind=obj.kind, name=obj.name, namespace=obj.namespace or None,
                uid=obj.uid or None, api_version=obj.api_version),
            reason=reason, message=message, type="Warning" if warning else "Normal",
            first_timestamp=stamp, last_timestamp=stamp, count=1,
            source=client.V1EventSource(component=self.component),
            reporting_component=self.component, reporting_instance=self.instance)
        try:
            self.call(f"create event {reason} on {obj.kind} {obj.name}",
                      self.core.create_namespaced_event, ns, body)
        except ConflictError:
            if not once:
                raise
            self.log.info("event %s/%s exists already (written before a restart)", ns, name)
        self._events[key] = _EventSeen(name, ns, 1, now)
        while len(self._events) > 10000:
            self._events.popitem(last=False)

    # ------------------------------------------------------------------ pod annotations

    def annotate_pod(self, namespace: str, name: str, changes: Mapping[str, str | None], *,
                     resource_version: str | None = None) -> str | None:
        """Set (str) or remove (None) annotations of a pod. Remediation never calls this (its
        state is in podguard's Leases, its requests go over the pod channel); kept for the
        diagnosis requester of issue 16 until it moves to the channel (kind ``diagnose``).
        The ClusterRoles of rbac.py do not grant pods patch. Returns the new
        resourceVersion, or None on a conflict or if the pod is gone."""
        if self.dry_run:
            self._plan(f"annotate pod {namespace}/{name}: {_show(changes)}")
            return resource_version or "dry-run"
        meta: dict[str, Any] = {"annotations": dict(changes)}
        if resource_version:
            meta["resourceVersion"] = resource_version
        try:
            got = self.call(f"annotate pod {namespace}/{name}", self.core.patch_namespaced_pod,
                            name, namespace, {"metadata": meta})
        except (ConflictError, NotFoundError) as e:
            self.log.info("annotate pod %s/%s: %s", namespace, name, e)
            return None
        return str(got.metadata.resource_version) if got.metadata is not None else ""

    # ------------------------------------------------------------------ budgets, cooldown

    def seed_budgets(self, records: Iterable[proto.Remediation]) -> None:
        """Counts the evictions in podguard's own records (after a restart) against the
        budgets."""
        known = {(e[2], e[3]) for e in self._evictions}
        for rec in records:
            if rec.evicted_at is not None and (rec.namespace, rec.id) not in known:
                self._evictions.append((float(rec.evicted_at), rec.node, rec.namespace, rec.id))
                known.add((rec.namespace, rec.id))

    def budget_refusal(self, *, node: str, namespace: str) -> str | None:
        """Why the budgets forbid one more eviction now (None: allowed)."""
        now = self.clock()
        window = self.settings.budget_window_s
        self._evictions = [e for e in self._evictions if now - e[0] < window]
        on_node = sum(1 for e in self._evictions if e[1] == node)
        in_ns = sum(1 for e in self._evictions if e[2] == namespace)
        if on_node >= self.settings.max_evictions_per_node:
            return (f"eviction budget of node {node} spent: {on_node} of "
                    f"{self.settings.max_evictions_per_node} within {_dur(window)}")
        if in_ns >= self.settings.max_evictions_per_namespace:
            return (f"eviction budget of namespace {namespace} spent: {in_ns} of "
                    f"{self.settings.max_evictions_per_namespace} within {_dur(window)}")
        return None

    def cooldown_refusal(self, rec: proto.Remediation | None, remediation_id: str
                         ) -> str | None:
        """Why the workload's latest remediation ``rec`` (podguard's own record) forbids
        remediation ``remediation_id`` now (None: allowed)."""
        if rec is None or rec.id == remediation_id:
            return None
        if rec.active:
            return f"{rec.workload_ref} is being remediated already ({rec.id}, pod {rec.pod})"
        since = rec.evicted_at if rec.evicted_at is not None else rec.at
        age = self.clock() - float(since)
        if age < self.settings.cooldown_s:
            return (f"{rec.workload_ref} was remediated {_dur(age)} ago ({rec.id}); cooldown "
                    f"{_dur(self.settings.cooldown_s)}")
        return None

    # ------------------------------------------------------------------ eviction

    def evict(self, pod: client.V1Pod, *, remediation_id: str,
              cooldown: proto.Remediation | None = None) -> EvictionResult:
        """Evict ``pod`` (uid precondition) if budgets and cooldown allow.

        ``cooldown`` is the workload's latest record other than this remediation's (the
        caller writes its own record before and after the call, so that a daemon that dies
        right after the eviction knows after its restart what it did).
        """
        m = pod.metadata
        assert m is not None and pod.spec is not None
        ns, name, uid = str(m.namespace), str(m.name), str(m.uid)
        node = str(pod.spec.node_name or "")
        why = self.cooldown_refusal(cooldown, remediation_id)
        if why:
            return EvictionResult(Outcome.COOLDOWN, why)
        why = self.budget_refusal(node=node, namespace=ns)
        if why:
            return EvictionResult(Outcome.BUDGET, why)
        if self.dry_run:
            self._plan(f"evict pod {ns}/{name} (uid {uid}) from node {node} via the Eviction "
                       f"API (remediation {remediation_id})")
            return EvictionResult(Outcome.DRY_RUN, "dry run")
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=name, namespace=ns),
            delete_options=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid=uid)))
        try:
            self.call(f"evict pod {ns}/{name}", self.core.create_namespaced_pod_eviction,
                      name, ns, body)
        except DisruptionBudgetError as e:
            return EvictionResult(Outcome.PDB_BLOCKED, _pdb_message(str(e)), e.delay)
        except (NotFoundError, ConflictError) as e:
            return EvictionResult(Outcome.GONE, f"pod {ns}/{name} uid {uid} is gone ({e})")
        self._evictions.append((self.clock(), node, ns, remediation_id))
        return EvictionResult(Outcome.EVICTED, f"evicted {ns}/{name} from node {node}")

    # ------------------------------------------------------------------ nodes

    def _patch_node(self, name: str, what: str,
                    change: Callable[[client.V1Node], dict[str, Any] | None]) -> bool:
        """Read-modify-write of a node with its resourceVersion; retried on conflicts.

        ``change`` returns the patch (without resourceVersion) or None when nothing is to do.
        Returns whether a patch was written.
        """
        for _ in range(5):
            node = self.read_node(name)
            if node is None or node.metadata is None:
                return False
            patch = change(node)
            if patch is None:
                return False
            if self.dry_run:
                self._plan(f"{what} (node {name})")
                return True
            patch.setdefault("metadata", {})["resourceVersion"] = node.metadata.resource_version
            try:
                self.call(f"{what} (node {name})", self.core.patch_node, name, patch)
                return True
            except ConflictError:
                continue
        raise ConflictError(f"{what} (node {name}): the node kept changing; try again")

    def cordon(self, node: str, *, by: str, reason: str) -> bool:
        """Marks ``node`` unschedulable and records who and why; False if it already was."""
        def change(n: client.V1Node) -> dict[str, Any] | None:
            if n.spec is not None and n.spec.unschedulable:
                return None
            return {"spec": {"unschedulable": True}, "metadata": {"annotations": {
                proto.CORDONED: proto.dumps({"by": by, "at": self.clock(), "action": "cordon",
                                             "reason": reason})}}}
        return self._patch_node(node, "cordon", change)

    def taint(self, node: str, *, key: str, effect: str, by: str, reason: str,
              value: str = "") -> bool:
        """Adds taint ``key:effect`` to ``node`` (False if present) and records who and why."""
        def change(n: client.V1Node) -> dict[str, Any] | None:
            taints = self._taints(n)
            if any(t["key"] == key and t["effect"] == effect for t in taints):
                return None
            taints.append({"key": key, "value": value, "effect": effect,
                           "timeAdded": datetime.fromtimestamp(self.clock(), UTC).isoformat()})
            return {"spec": {"taints": taints}, "metadata": {"annotations": {
                proto.CORDONED: proto.dumps({"by": by, "at": self.clock(),
                                             "action": f"taint {key}:{effect}",
                                             "reason": reason})}}}
        return self._patch_node(node, f"taint {key}:{effect}", change)

    def hold_rescheduling_taint(self, node: str, remediation_id: str) -> bool:
        """PreferNoSchedule taint ``podguard.io/rescheduling`` on ``node`` while remediation
        ``remediation_id`` reschedules a pod away from it (holders in the node annotation)."""
        def change(n: client.V1Node) -> dict[str, Any] | None:
            holders = _holders(n)
            taints = self._taints(n)
            tainted = any(t["key"] == proto.RESCHEDULING for t in taints)
            if remediation_id in holders and tainted:
                return None
            holders[remediation_id] = self.clock()
            patch: dict[str, Any] = {"metadata": {"annotations": {
                proto.RESCHEDULING: proto.dumps(holders)}}}
            if not tainted:
                taints.append({"key": proto.RESCHEDULING, "effect": "PreferNoSchedule",
                               "timeAdded": datetime.fromtimestamp(self.clock(),
                                                                   UTC).isoformat()})
                patch["spec"] = {"taints": taints}
            return patch
        return self._patch_node(node, f"hold PreferNoSchedule taint for {remediation_id}",
                                change)

    def release_rescheduling_taint(self, node: str, remediation_id: str | None = None, *,
                                   older_than_s: float | None = None) -> bool:
        """Drops holder ``remediation_id`` (and holders older than ``older_than_s``); removes
        the taint when no holder is left."""
        def change(n: client.V1Node) -> dict[str, Any] | None:
            holders = _holders(n)
            now = self.clock()
            keep = {k: v for k, v in holders.items() if k != remediation_id and not (
                older_than_s is not None and now - v > older_than_s)}
            taints = self._taints(n)
            tainted = any(t["key"] == proto.RESCHEDULING for t in taints)
            if keep == holders and (keep or not tainted):
                return None
            patch: dict[str, Any] = {"metadata": {"annotations": {
                proto.RESCHEDULING: proto.dumps(keep) if keep else None}}}
            if not keep and tainted:
                patch["spec"] = {"taints": [t for t in taints
                                            if t["key"] != proto.RESCHEDULING]}
            return patch
        return self._patch_node(node, "release PreferNoSchedule taint", change)

    def _taints(self, n: client.V1Node) -> list[dict[str, Any]]:
        raw = self.api.sanitize_for_serialization(n.spec.taints or []) if n.spec else []
        return [dict(t) for t in raw]


def _holders(n: client.V1Node) -> dict[str, float]:
    text = ((n.metadata.annotations or {}) if n.metadata else {}).get(proto.RESCHEDULING)
    try:
        raw = json.loads(text) if text and len(text) < 64_000 else {}
    except ValueError:
        raw = {}
    return proto.finite_holders(raw)


def _pdb_message(text: str) -> str:
    low = text.lower()
    i = low.find("cannot evict")
    return text[i:i + 200].split('"')[0].strip() if i >= 0 else text[:200]


def _show(changes: Mapping[str, str | None]) -> str:
    return ", ".join(f"{k}={'<removed>' if v is None else v}" for k, v in changes.items())


def _dur(seconds: float) -> str:
    return format_duration(float(seconds))
