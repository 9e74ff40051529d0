"""The Actuator, the remediation controller's decisions and the checkpoint helper.

Against the real control plane of the ``kube`` fixture (kwok nodes): Events, podguard's
records (Leases, validated on read), evictions through the Eviction API (uid precondition,
PodDisruptionBudget 429), eviction budgets and cooldowns (also after a restart, from
podguard's records), cordons and taints, dry-run, the pod channel (TokenReview of a
pod-bound token) with the checkpoint helper. The controller's timeouts and the API backoff
run on fake time (recorded waits, a clock the test moves); the cluster itself is real. The
PyTorch end-to-end path is in ``tests/stack/test_remediation_e2e.py``.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deploy.local._proc import free_port
from detector.errors import PermanentError, TemporaryError
from detector.remediation import protocol as proto
from detector.remediation import rbac
from detector.remediation.actuator import (
    Actuator,
    ApiUnavailableError,
    ConflictError,
    DisruptionBudgetError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    ObjectRef,
    Outcome,
    WorkloadRef,
    map_api_error,
    owner_of,
)
from detector.remediation.channel import ChannelServer, TokenReviewer
from detector.remediation.checkpoint import (
    ChannelClient,
    CheckpointRequest,
    CheckpointResponder,
    latest_checkpoint,
)
from detector.remediation.controller import Decision, RemediationController
from detector.remediation.store import RecordStore
from detector.settings import AlertingSettings, RemediationSettings
from detector.sinks.k8s_events import KubernetesEventSink, PodContainers, pick_container
from detector.verdicts import Explanation, Verdict
from tests.support.k8s_fixtures import Kube
from tests.support.pod_identity import pod_token
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

OPT_IN = {"podguard.io/remediate": "true"}


@dataclass
class FakeTime:
    """A clock the test moves and a sleep that only records (and advances the clock)."""

    now: float = field(default_factory=time.time)
    waits: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def remediation(**kw: Any) -> RemediationSettings:
    base: dict[str, Any] = {"enabled": True, "api_backoff_s": [0.5, 1, 2, 5, 10],
                            "max_evictions_per_node": 100, "max_evictions_per_namespace": 100}
    return RemediationSettings(**{**base, **kw})


def api_exception(status: int, body: str = "", headers: dict[str, str] | None = None
                  ) -> ApiException:
    e = ApiException(status=status, reason="injected")
    e.body = body
    e.headers = headers
    return e


# =========================================================================== error mapping


@pytest.mark.parametrize(("status", "body", "expected"), [
    (404, "", NotFoundError),
    (409, "", ConflictError),
    (401, "", ForbiddenError),
    (403, "", ForbiddenError),
    (400, "", InvalidRequestError),
    (422, "", InvalidRequestError),
    (429, "Cannot evict pod as it would violate the pod's disruption budget.",
     DisruptionBudgetError),
    (429, "too many requests", ApiUnavailableError),
    (500, "", ApiUnavailableError),
    (503, "", ApiUnavailableError),
])
def test_api_errors_are_mapped_from_the_http_status(status: int, body: str,
                                                    expected: type[Exception]) -> None:
    err = map_api_error("get pod x", api_exception(status, body, {"Retry-After": "4"}))
    assert type(err) is expected
    assert isinstance(err, TemporaryError if status in (409, 429, 500, 503) else PermanentError)
    assert f"HTTP {status}" in str(err)
    if status in (429, 500, 503):
        assert isinstance(err, TemporaryError) and err.delay == 4.0


def _offline_actuator(fake: FakeTime, **kw: Any) -> Actuator:
    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    return Actuator(client.ApiClient(cfg), settings=remediation(**kw), clock=fake.clock,
                    sleep=fake.sleep)


def test_429_and_5xx_are_retried_over_the_backoff_honouring_retry_after(
        caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    act = _offline_actuator(fake)
    answers: list[Any] = [api_exception(503, headers={"Retry-After": "3"}),
                          api_exception(429, "slow down"), "ok"]

    def fn(**kwargs: Any) -> str:
        assert kwargs["_request_timeout"] == 10.0
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return str(a)

    with caplog.at_level(logging.WARNING, logger="podguard.remediation.actuator"):
        assert act.call("get thing", fn) == "ok"
    assert fake.waits == [3.0, 1.0]  # max(0.5, Retry-After 3), then the plain second step
    assert "attempt 1/6, retrying in 3.0 s" in caplog.text
    assert "attempt 2/6, retrying in 1.0 s" in caplog.text


def test_retries_end_after_the_last_attempt_with_the_cause_chained() -> None:
    fake = FakeTime()
    act = _offline_actuator(fake, api_backoff_s=[0.5, 1])
    cause = api_exception(500, "etcd timeout")

    def fn(**kwargs: Any) -> None:
        raise cause

    with pytest.raises(ApiUnavailableError) as err:
        act.call("patch pod x", fn)
    assert err.value.__cause__ is cause
    assert fake.waits == [0.5, 1]


def test_permanent_errors_are_not_retried() -> None:
    fake = FakeTime()
    act = _offline_actuator(fake)

    def fn(**kwargs: Any) -> None:
        raise api_exception(403, "pods is forbidden")

    with pytest.raises(ForbiddenError, match="rbac"):
        act.call("delete pod", fn)
    assert fake.waits == []


def test_an_unreachable_api_server_is_retried_then_reported_as_temporary() -> None:
    fake = FakeTime()
    act = _offline_actuator(fake, api_backoff_s=[0.5, 1])
    with pytest.raises(ApiUnavailableError, match="did not answer") as err:
        act.read_pod("default", "x")
    assert err.value.__cause__ is not None
    assert fake.waits == [0.5, 1]


# =========================================================================== cluster fixtures


@dataclass
class Namespace:
    kube: Kube
    name: str

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.kube.api)

    def statefulset(self, name: str, *, replicas: int = 1, node: str | None = None,
                    labels: dict[str, str] | None = None) -> list[client.V1Pod]:
        """A StatefulSet whose pods kwok runs; returns its Running pods."""
        sel = {"app": name}
        client.AppsV1Api(self.kube.api).create_namespaced_stateful_set(
            self.name, client.V1StatefulSet(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1StatefulSetSpec(
                    replicas=replicas, service_name=name, pod_management_policy="Parallel",
                    selector=client.V1LabelSelector(match_labels=sel),
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels={**sel, **(labels or {})}),
                        spec=client.V1PodSpec(
                            node_selector={"kubernetes.io/hostname": node} if node else None,
                            containers=[client.V1Container(
                                name="main", image="registry.invalid/podguard/x:never")])))))
        return wait_for(lambda: self.running(f"app={name}", replicas), timeout=90,
                        what=f"{replicas} running pod(s) of {name}")

    def running(self, selector: str, n: int) -> list[client.V1Pod] | None:
        pods = [p for p in self.core.list_namespaced_pod(self.name,
                                                         label_selector=selector).items or []
                if p.status is not None and p.status.phase == "Running"
                and p.metadata is not None and p.metadata.deletion_timestamp is None]
        return sorted(pods, key=name_of) if len(pods) >= n else None

    def pod(self, name: str) -> client.V1Pod | None:
        try:
            return self.core.read_namespaced_pod(name, self.name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def events(self, uid: str) -> list[client.CoreV1Event]:
        items = self.core.list_namespaced_event(
            self.name, field_selector=f"involvedObject.uid={uid}").items or []
        return [e for e in items if e.source is not None and e.source.component == "podguard"]

    def reasons(self, uid: str) -> list[str]:
        return [str(e.reason) for e in self.events(uid)]


@pytest.fixture(scope="module")
def ns(kube: Kube) -> Iterator[Namespace]:
    name = f"pg-act-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield Namespace(kube, name)
    finally:
        core.delete_namespace(name)


def uid_of(pod: client.V1Pod) -> str:
    assert pod.metadata is not None
    return str(pod.metadata.uid)


def name_of(pod: client.V1Pod) -> str:
    assert pod.metadata is not None
    return str(pod.metadata.name)


def node_of(pod: client.V1Pod) -> str:
    assert pod.spec is not None
    return str(pod.spec.node_name)


def rem(pod: client.V1Pod, rid: str = "r-0000000001", **kw: Any) -> proto.Remediation:
    """A record about ``pod`` (as the controller writes them)."""
    m = pod.metadata
    assert m is not None
    ref = sts_of(pod)
    base: dict[str, Any] = {
        "id": rid, "phase": "evicting", "kind": "memory_leak", "cause": "pod",
        "namespace": str(m.namespace), "pod": str(m.name), "uid": str(m.uid),
        "node": node_of(pod), "workload_kind": "StatefulSet", "workload": ref.name,
        "workload_uid": ref.uid, "detected_at": time.time(), "at": time.time()}
    return proto.Remediation(**{**base, **kw})


def sts_of(pod: client.V1Pod) -> WorkloadRef:
    ref = owner_of(pod)
    assert ref is not None and ref.kind == "StatefulSet"
    return ref


def store_of(kube: Kube, ns: Namespace, **kw: Any) -> RecordStore:
    return RecordStore(Actuator(kube.api, settings=remediation(**kw)), ns.name)


def record_of(kube: Kube, ns: Namespace, pod: client.V1Pod) -> proto.Remediation | None:
    ref = sts_of(pod)
    return store_of(kube, ns).get("StatefulSet", ns.name, ref.name)[0]


# =========================================================================== actuator


def test_events_are_written_and_repeats_aggregated(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("ev")[0]
    fake = FakeTime()
    act = Actuator(kube.api, settings=remediation(), event_interval_s=60, clock=fake.clock)
    act.event(ObjectRef.pod(pod), "PodguardTest", "something happened", warning=True)
    act.event(ObjectRef.pod(pod), "PodguardTest", "something happened", warning=True)
    [ev] = ns.events(uid_of(pod))
    assert (ev.reason, ev.type, ev.count, ev.message) == (
        "PodguardTest", "Warning", 1, "something happened")
    assert ev.involved_object.kind == "Pod" and ev.involved_object.name == name_of(pod)
    fake.now += 61
    act.event(ObjectRef.pod(pod), "PodguardTest", "something happened", warning=True)
    [ev] = ns.events(uid_of(pod))
    assert ev.count == 2
    act.event(ObjectRef.pod(pod), "PodguardTest", "something else")
    assert sorted(str(e.message) for e in ns.events(uid_of(pod))) == [
        "something else", "something happened"]
    # named once: a second writer (a restarted daemon) finds it and adds nothing
    Actuator(kube.api, settings=remediation()).event(ObjectRef.pod(pod), "Once", "a", once="x1")
    Actuator(kube.api, settings=remediation()).event(ObjectRef.pod(pod), "Once", "b", once="x1")
    assert ns.reasons(uid_of(pod)).count("Once") == 1


def test_records_are_leases_written_only_if_unchanged_and_bad_ones_are_skipped(
        kube: Kube, ns: Namespace, caplog: pytest.LogCaptureFixture) -> None:
    pod = ns.statefulset("rec")[0]
    store = store_of(kube, ns)
    rec = rem(pod, phase="checkpointing")
    rv = store.put(rec, None)
    assert rv
    assert store.put(rec, None) is None  # exists already: a conflict, not an overwrite
    rv2 = store.put(rec.replace(note="second"), rv)
    assert rv2 and rv2 != rv
    assert store.put(rec.replace(note="stale"), rv) is None  # changed since read
    got, got_rv = store.get("StatefulSet", ns.name, sts_of(pod).name)
    assert got is not None and got.note == "second" and got_rv == rv2
    # readable with kubectl get leases: podguard's labels, the record as an annotation
    lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(
        proto.lease_name("StatefulSet", ns.name, sts_of(pod).name), ns.name)
    assert lease.metadata is not None and lease.metadata.labels == proto.MANAGED_BY
    assert proto.parse_remediation((lease.metadata.annotations or {})[proto.REMEDIATION]) == got
    # corrupt records (NaN, garbage, a record under another workload's name) are skipped
    coord = client.CoordinationV1Api(kube.api)
    good = rec.to_json()
    for name, text in (("pg-sts-bad-nan", good.replace('"at":', '"at":NaN,"x":')),
                       ("pg-sts-bad-type", good.replace('"evicted_at":null', '"evicted_at":"x"')),
                       ("pg-sts-misnamed", good)):
        coord.create_namespaced_lease(ns.name, client.V1Lease(metadata=client.V1ObjectMeta(
            name=name, labels=proto.MANAGED_BY, annotations={proto.REMEDIATION: text})))
    with caplog.at_level(logging.WARNING, logger="podguard.remediation.store"):
        listed = store.list()
    assert [s.record for s in listed] == [got]
    assert store.invalid == 3
    assert "pg-sts-bad-nan" in caplog.text and "evicted_at" in caplog.text
    for name in ("pg-sts-bad-nan", "pg-sts-bad-type", "pg-sts-misnamed"):
        coord.delete_namespaced_lease(name, ns.name)


def test_eviction_never_hits_another_pod_with_the_same_name(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("uidpre")[0]
    act = Actuator(kube.api, settings=remediation())
    ghost = client.V1Pod(metadata=client.V1ObjectMeta(
        name=name_of(pod), namespace=ns.name, uid=str(uuid.uuid4())), spec=pod.spec)
    result = act.evict(ghost, remediation_id="r-ghost")
    assert result.outcome is Outcome.GONE
    still = ns.pod(name_of(pod))
    assert still is not None and uid_of(still) == uid_of(pod)
    assert still.metadata is not None and still.metadata.deletion_timestamp is None


def test_budgets_per_node_and_namespace_hold_across_a_restart(kube: Kube,
                                                              ns: Namespace) -> None:
    pods = ns.statefulset("budget", replicas=3, node="kwok-node-1")
    act = Actuator(kube.api, settings=remediation(max_evictions_per_node=1,
                                                  max_evictions_per_namespace=2))
    first = act.evict(pods[0], remediation_id="r-b1")
    assert first.outcome is Outcome.EVICTED, first
    assert act.evict(pods[1], remediation_id="r-b2").outcome is Outcome.BUDGET
    assert "node kwok-node-1" in str(act.budget_refusal(node="kwok-node-1",
                                                        namespace=ns.name))
    # a restarted daemon: podguard's own records count against the budgets again
    store = store_of(kube, ns)
    assert store.put(rem(pods[0], "r-00000000b1", phase="evicted", evicted_at=time.time()),
                     None)
    fresh = Actuator(kube.api, settings=remediation(max_evictions_per_node=5,
                                                    max_evictions_per_namespace=1))
    assert fresh.budget_refusal(node="kwok-node-1", namespace=ns.name) is None
    fresh.seed_budgets(s.record for s in store.list())
    why = fresh.budget_refusal(node="kwok-node-0", namespace=ns.name)
    assert why is not None and f"namespace {ns.name}" in why


def test_cooldown_is_per_workload_and_read_from_its_record(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("cool")[0]
    fake = FakeTime()
    act = Actuator(kube.api, settings=remediation(cooldown_s=600), clock=fake.clock)
    assert act.cooldown_refusal(None, "r-new") is None
    old = rem(pod, "r-00000000aa", phase="done", at=fake.now, evicted_at=fake.now - 100)
    why = act.cooldown_refusal(old, "r-new")
    assert why is not None and "cooldown 10 min" in why and "r-00000000aa" in why
    assert act.cooldown_refusal(old, "r-00000000aa") is None  # its own remediation continues
    assert "being remediated" in str(act.cooldown_refusal(old.replace(phase="evicting"),
                                                          "r-new"))
    fake.now += 501
    assert act.cooldown_refusal(old, "r-new") is None


def _pdb(kube: Kube, ns: Namespace, app: str, min_available: int) -> None:
    policy = client.PolicyV1Api(kube.api)
    policy.create_namespaced_pod_disruption_budget(ns.name, client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name=app),
        spec=client.V1PodDisruptionBudgetSpec(
            min_available=min_available,
            selector=client.V1LabelSelector(match_labels={"app": app}))))

    def settled() -> bool:
        pdb = policy.read_namespaced_pod_disruption_budget(app, ns.name)
        st = pdb.status
        return bool(st is not None and pdb.metadata is not None
                    and st.observed_generation == pdb.metadata.generation
                    and st.disruptions_allowed == 0 and st.current_healthy)

    # The disruption controller's latency is seconds when idle and far more on a loaded
    # machine (CI once took over 60 s); the budget's status says which it was on a timeout.
    wait_for(settled, timeout=150, what="the PodDisruptionBudget's status",
             describe=lambda: policy.read_namespaced_pod_disruption_budget(app, ns.name).status)


def test_a_disruption_budget_refusal_is_reported_not_forced(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("pdb")[0]
    _pdb(kube, ns, "pdb", 1)
    fake = FakeTime()
    act = Actuator(kube.api, settings=remediation(), clock=fake.clock, sleep=fake.sleep)
    result = act.evict(pod, remediation_id="r-pdb")
    assert result.outcome is Outcome.PDB_BLOCKED
    assert "disruption budget" in result.detail
    assert fake.waits == []  # not retried inside the call: the controller retries later
    still = ns.pod(name_of(pod))
    assert still is not None and uid_of(still) == uid_of(pod)
    assert still.metadata is not None and still.metadata.deletion_timestamp is None


def test_dry_run_prints_the_plan_and_changes_nothing(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("dry")[0]
    out = io.StringIO()
    act = Actuator(kube.api, settings=remediation(dry_run=True), plan_stream=out)
    assert act.dry_run
    act.event(ObjectRef.pod(pod), "PodguardTest", "planned only")
    assert RecordStore(act, ns.name).put(rem(pod, "r-00000000dd"), None)
    assert act.cordon(node_of(pod), by="r-dry", reason="test")
    assert act.evict(pod, remediation_id="r-dry").outcome is Outcome.DRY_RUN
    text = out.getvalue()
    for expected in ("DRY-RUN: event PodguardTest", "DRY-RUN: write lease",
                     "DRY-RUN: cordon (node", f"DRY-RUN: evict pod {ns.name}/{name_of(pod)}"):
        assert expected in text, text
    assert len(act.planned) == 4
    still = ns.pod(name_of(pod))
    assert still is not None and still.metadata is not None
    assert still.metadata.deletion_timestamp is None
    assert ns.events(uid_of(pod)) == []
    node = ns.core.read_node(node_of(pod))
    assert node.spec is not None and not node.spec.unschedulable
    assert record_of(kube, ns, pod) is None


def _taints(kube: Kube, node: str) -> list[tuple[str, str]]:
    n = client.CoreV1Api(kube.api).read_node(node)
    return [(str(t.key), str(t.effect)) for t in (n.spec.taints or [] if n.spec else [])]


def test_node_cordon_and_taints_are_recorded_and_released(kube: Kube) -> None:
    node = "kwok-node-2"
    core = client.CoreV1Api(kube.api)
    act = Actuator(kube.api, settings=remediation())
    try:
        assert act.hold_rescheduling_taint(node, "r-1")
        assert act.hold_rescheduling_taint(node, "r-2")
        assert not act.hold_rescheduling_taint(node, "r-2")  # idempotent
        assert _taints(kube, node).count((proto.RESCHEDULING, "PreferNoSchedule")) == 1
        ann = core.read_node(node).metadata.annotations or {}  # type: ignore[union-attr]
        assert set(json.loads(ann[proto.RESCHEDULING])) == {"r-1", "r-2"}
        assert act.release_rescheduling_taint(node, "r-1")
        assert (proto.RESCHEDULING, "PreferNoSchedule") in _taints(kube, node)
        assert act.release_rescheduling_taint(node, "r-2")
        assert (proto.RESCHEDULING, "PreferNoSchedule") not in _taints(kube, node)
        assert proto.RESCHEDULING not in (core.read_node(node).metadata.annotations or {})  # type: ignore[union-attr]
        assert act.taint(node, key=proto.UNHEALTHY, effect="NoSchedule", by="r-3",
                         reason="drift on 3 pods")
        assert not act.taint(node, key=proto.UNHEALTHY, effect="NoSchedule", by="r-3",
                             reason="again")
        assert act.cordon(node, by="r-3", reason="drift on 3 pods")
        assert not act.cordon(node, by="r-3", reason="again")
        n = core.read_node(node)
        assert n.spec is not None and n.spec.unschedulable
        info = json.loads((n.metadata.annotations or {})[proto.CORDONED])  # type: ignore[union-attr]
        assert info["by"] == "r-3" and info["action"] == "cordon"
    finally:
        n = core.read_node(node)
        assert n.spec is not None and n.metadata is not None
        keep = [t for t in n.spec.taints or [] if not str(t.key).startswith("podguard.io/")]
        core.patch_node(node, {"spec": {"unschedulable": False,
                                        "taints": kube.api.sanitize_for_serialization(keep)},
                               "metadata": {"annotations": {proto.CORDONED: None,
                                                            proto.RESCHEDULING: None}}})


def test_owner_is_a_statefulset_or_a_job_only(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("own")[0]
    assert owner_of(pod) == WorkloadRef("StatefulSet", ns.name, "own",
                                        str(pod.metadata.owner_references[0].uid))  # type: ignore[union-attr, index]
    job = client.V1Pod(metadata=client.V1ObjectMeta(name="j", namespace="x", owner_references=[
        client.V1OwnerReference(api_version="batch/v1", kind="Job", name="train", uid="u1",
                                controller=True)]))
    assert owner_of(job) == WorkloadRef("Job", "x", "train", "u1")
    rs = client.V1Pod(metadata=client.V1ObjectMeta(name="r", namespace="x", owner_references=[
        client.V1OwnerReference(api_version="apps/v1", kind="ReplicaSet", name="web",
                                uid="u2", controller=True)]))
    assert owner_of(rs) is None


# =========================================================================== Events sink


def test_events_sink_tells_the_story_on_the_pod(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("story")[0]
    fake = FakeTime()
    act = Actuator(kube.api, settings=remediation(), clock=fake.clock)
    sink = KubernetesEventSink(act, settings=AlertingSettings(event_interval_s=600),
                               background=False)
    v = leak(pod)
    sink.send([v])
    assert sink.flush(10)
    [ev] = ns.events(uid_of(pod))
    assert ev.reason == "MemoryLeakDetected" and ev.type == "Warning"
    assert str(ev.message).startswith("working set +100 MiB/h for 3 h; time to OOM ~5 h")
    fake.now += 60
    sink.send([leak(pod)])  # still flagged, within the interval: nothing new
    assert sink.flush(10) and len(ns.events(uid_of(pod))) == 1
    healthy = dc_replace(v, is_anomaly=False, kind="none", time_to_oom_s=None,
                         explanation=None)
    sink.send([healthy])
    assert sink.flush(10)
    assert sorted(ns.reasons(uid_of(pod))) == ["AnomalyCleared", "MemoryLeakDetected"]
    now = ns.pod(name_of(pod))  # the pod itself is never written
    assert now is not None and now.metadata is not None
    assert not any(k.startswith("podguard.io/") for k in now.metadata.annotations or {})
    sink.send([dc_replace(v, pod="no-such-pod")])  # vanished pods are skipped
    assert sink.flush(10) and sink.errors == 0
    sink.close()
    assert PodContainers(act)(ns.name, name_of(pod)) == "main"
    two = client.V1Pod(spec=client.V1PodSpec(containers=[
        client.V1Container(name="sidecar", resources=client.V1ResourceRequirements(
            limits={"memory": "128Mi"})),
        client.V1Container(name="trainer", resources=client.V1ResourceRequirements(
            limits={"memory": "2Gi"}))]))
    assert pick_container(two) == "trainer"


# =========================================================================== controller


def leak(pod: client.V1Pod, *, tto: float = 5 * 3600.0) -> Verdict:
    m = pod.metadata
    assert m is not None
    return Verdict(ts=time.time(), namespace=str(m.namespace), pod=str(m.name),
                   node=node_of(pod), is_anomaly=True, kind="memory_leak", score=2.0,
                   threshold=1.0, time_to_oom_s=tto, time_to_oom_range_s=(tto / 2, tto * 2),
                   leak_rate_bytes_per_s=1e5,
                   explanation=Explanation("working set +100 MiB/h for 3 h",
                                           {"mem_working_set.slope": 0.5}))


def controller(kube: Kube, ns: Namespace, s: RemediationSettings, *,
               clock: Callable[[], float] = time.time, escalate: Any = None,
               plan_stream: Any = None) -> RemediationController:
    act = Actuator(kube.api, settings=s, clock=clock, plan_stream=plan_stream)
    return RemediationController(act, settings=s, store=RecordStore(act, ns.name),
                                 escalate=escalate)


@dataclass
class Channel:
    """The pod channel of one controller, and the checkpoint helper of one of its pods."""

    server: ChannelServer
    token_file: Path

    def responder(self, directory: Path, **kw: Any) -> CheckpointResponder:
        return CheckpointResponder(directory=directory, channel=ChannelClient(
            self.server.url, self.token_file), **kw)


@pytest.fixture
def channel_for(kube: Kube, tmp_path: Path) -> Iterator[Callable[..., Channel]]:
    made: list[ChannelServer] = []

    def make(ctl: Any, pod: client.V1Pod) -> Channel:
        server = ChannelServer(TokenReviewer(Actuator(kube.api, settings=remediation())),
                               [ctl], host="127.0.0.1", port=0).start()
        made.append(server)
        token = tmp_path / f"token-{uid_of(pod)}"
        token.write_text(pod_token(kube.api, pod))
        return Channel(server, token)

    yield make
    for s in made:
        s.close()


def test_pods_that_do_not_opt_in_or_have_no_owner_are_alert_only(kube: Kube,
                                                                 ns: Namespace) -> None:
    plain = ns.statefulset("plain")[0]
    ns.core.create_namespaced_pod(ns.name, client.V1Pod(
        metadata=client.V1ObjectMeta(name="lonely", labels=OPT_IN),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="main", image="registry.invalid/podguard/x:never")])))
    lonely = wait_for(lambda: ns.running("podguard.io/remediate=true", 1), timeout=60,
                      what="the bare pod running")
    lonely_pod = next(p for p in lonely if name_of(p) == "lonely")
    ctl = controller(kube, ns, remediation())
    decisions = ctl.handle([leak(plain), leak(lonely_pod)])
    assert [d.action for d in decisions] == ["RemediationSkipped", "RemediationSkipped"]
    assert "does not opt in" in decisions[0].message
    assert "not controlled by a StatefulSet or a Job" in decisions[1].message
    for p in (plain, lonely_pod):
        assert ns.reasons(uid_of(p)) == ["RemediationSkipped"]
    assert record_of(kube, ns, plain) is None
    off = controller(kube, ns, remediation(enabled=False))
    assert off.handle([leak(plain)]) == [] and off.reconcile() == []


def test_dry_run_controller_prints_the_plan_once(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("dryplan", labels=OPT_IN)[0]
    out = io.StringIO()
    s = remediation(dry_run=True)
    ctl = controller(kube, ns, s, plan_stream=out)
    ctl.handle([leak(pod)])
    ctl.handle([leak(pod)])
    ctl.reconcile()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "would request a checkpoint" in lines[0] and "evict through the Eviction API" in \
        lines[0] and f"taint node {node_of(pod)} podguard.io/rescheduling:PreferNoSchedule" in \
        lines[0]
    assert record_of(kube, ns, pod) is None


def actions(decisions: list[Decision], pod: client.V1Pod) -> list[str]:
    """The decisions about ``pod``'s workload."""
    m = pod.metadata
    assert m is not None
    return [d.action for d in decisions if (d.namespace, d.pod) == (m.namespace, m.name)]


def test_unacknowledged_request_blocks_and_escalates_until_the_oom_floor_forces_eviction(
        kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("noack", labels=OPT_IN)[0]
    fake = FakeTime()
    s = remediation(checkpoint_timeout_s=120, evict_unacknowledged_below_s=600,
                    avoid_node=False)
    escalated: list[tuple[str, str, str, Verdict | None]] = []
    ctl = controller(kube, ns, s, clock=fake.clock, escalate=lambda *a: escalated.append(a))
    [d] = ctl.handle([leak(pod)])
    assert d.action == "CheckpointRequested"
    state = record_of(kube, ns, pod)
    assert state is not None and state.phase == "checkpointing" and state.uid == uid_of(pod)
    assert proto.REQUEST_ID.match(state.request_id)
    assert state.request_id not in d.message and state.request_id not in str(
        ns.events(uid_of(pod))[0].message)  # the secret id is in no Event
    assert ctl.handle([leak(pod)]) == []  # at most one remediation in flight per pod
    fake.now += 60
    assert actions(ctl.reconcile(), pod) == []
    fake.now += 61
    [d] = actions_full(ctl.reconcile(), pod)
    assert d.action == "CheckpointNotAcknowledged" and "not evicting" in d.message
    assert escalated and escalated[0][:2] == (ns.name, name_of(pod))
    assert "not acknowledged within 2 min" in escalated[0][2]
    fake.now += 30
    assert actions(ctl.reconcile(), pod) == [] and len(escalated) == 2  # idempotent
    ctl.handle([leak(pod, tto=300.0)])  # now it dies anyway within the floor
    decisions = actions_full(ctl.reconcile(), pod)
    assert [d.action for d in decisions][:2] == ["EvictingWithoutCheckpoint", "Evicted"]
    assert "below the floor" in decisions[0].message
    assert ns.reasons(uid_of(pod)).count("Evicted") == 1
    seen = [d.action for d in decisions[2:]]  # the replacement may run at once (kwok)

    def replaced() -> bool:
        fake.now += 1
        seen.extend(actions(ctl.reconcile(), pod))
        return "Rescheduled" in seen

    wait_for(replaced, timeout=60, what="the replacement running")
    assert seen == ["Rescheduled", "Rescheduled"]  # on the new pod and on the StatefulSet
    rec = record_of(kube, ns, pod)
    assert rec is not None and rec.phase == "done" and rec.forced and rec.checkpoint is None


def actions_full(decisions: list[Decision], pod: client.V1Pod) -> list[Decision]:
    m = pod.metadata
    assert m is not None
    return [d for d in decisions if (d.namespace, d.pod) == (m.namespace, m.name)]


def test_eviction_blocked_by_a_pdb_is_retried_and_a_stale_checkpoint_is_asked_again(
        kube: Kube, ns: Namespace, tmp_path: Path, channel_for: Callable[..., Channel]
        ) -> None:
    pod = ns.statefulset("pdbctl", labels=OPT_IN)[0]
    _pdb(kube, ns, "pdbctl", 1)
    fake = FakeTime()
    s = remediation(retry_s=30, checkpoint_max_age_s=300, avoid_node=True)
    ctl = controller(kube, ns, s, clock=fake.clock)
    ctl.handle([leak(pod)])
    responder = channel_for(ctl, pod).responder(tmp_path, clock=fake.clock, min_interval_s=0)
    req = responder.pending()
    assert req is not None
    assert responder.save_and_acknowledge(req, lambda p: p.write_bytes(b"state"), step=41)
    assert actions(ctl.reconcile(), pod) == ["EvictionBlocked"]
    assert ns.reasons(uid_of(pod)).count("CheckpointAcknowledged") == 1
    assert (proto.RESCHEDULING, "PreferNoSchedule") not in _taints(kube, node_of(pod))
    fake.now += 10
    assert actions(ctl.reconcile(), pod) == []  # not before retry_s
    fake.now += 25
    assert actions(ctl.reconcile(), pod) == ["EvictionBlocked"]
    state = record_of(kube, ns, pod)
    assert state is not None and state.attempts == 2 and not state.forced
    assert state.step == 41 and state.request_id == ""  # the answered id is spent
    fake.now += 300  # the acknowledged checkpoint is now stale: ask for a fresh one
    [d] = actions_full(ctl.reconcile(), pod)
    assert d.action == "CheckpointRequested" and "again" in d.message
    again = responder.pending(force=True)
    assert again is not None and again.id != req.id
    still = ns.pod(name_of(pod))
    assert still is not None and uid_of(still) == uid_of(pod)


# =========================================================================== checkpoint helper


def test_checkpoint_helper_saves_atomically_then_acknowledges_over_the_channel(
        kube: Kube, ns: Namespace, tmp_path: Path, channel_for: Callable[..., Channel]
        ) -> None:
    pod = ns.statefulset("helper", labels=OPT_IN)[0]
    ctl = controller(kube, ns, remediation(avoid_node=False))
    ctl.handle([leak(pod)])
    ch = channel_for(ctl, pod)
    responder = ch.responder(tmp_path, poll_interval_s=60)
    assert latest_checkpoint(tmp_path) is None
    assert responder.maybe_checkpoint(lambda p: p.write_bytes(b"weights"), step=7)
    assert responder.pending() is None  # rate limited, and answered
    info = latest_checkpoint(tmp_path)
    assert info is not None and info.step == 7 and proto.REQUEST_ID.match(info.request_id)
    assert info.path.read_bytes() == b"weights"
    assert not list(tmp_path.glob(".*.tmp"))
    rec = record_of(kube, ns, pod)
    assert rec is not None and rec.phase == "evicting" and rec.checkpoint == str(info.path)
    assert rec.step == 7 and rec.acked_at is not None
    # the id is spent: answering it again (a replay) is refused; a restarted helper sees none
    ok, why = ChannelClient(ch.server.url, ch.token_file).answer(
        "checkpoint", info.request_id, {"path": "/elsewhere.pt", "step": 8})
    assert not ok and "no checkpoint request pending" in why
    assert ch.responder(tmp_path).pending() is None
    assert ch.server.stats["accepted"] == 1 and ch.server.stats["refused"] == 1


class _Crafted:
    """A request kind serving crafted requests (what a broken or hostile daemon could say)."""

    kind = "checkpoint"

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.answers: list[str] = []

    def pending(self, pod: Any) -> list[Any]:
        return self.requests

    def answer(self, pod: Any, request_id: str, result: Any) -> Any:
        from detector.remediation.channel import Answer

        self.answers.append(request_id)
        return Answer(True)


def test_checkpoint_helper_validates_requests_prunes_bounds_its_hold_and_never_raises(
        kube: Kube, ns: Namespace, tmp_path: Path, channel_for: Callable[..., Channel]
        ) -> None:
    """Issue 14 item 11, with a real channel serving crafted requests."""
    from detector.remediation.channel import PodRequest

    pod = ns.statefulset("crafted")[0]
    crafted = _Crafted()
    fake = FakeTime()
    ch = channel_for(crafted, pod)
    r = ch.responder(tmp_path / "ck", clock=fake.clock, sleep=fake.sleep, keep=2,
                     min_interval_s=30, max_request_age_s=600, hold_s=10_000)
    good = "A" * 32
    bad = [PodRequest("checkpoint", "../../etc/x", fake.now), PodRequest("checkpoint", "a/b" * 8,
                                                                       fake.now),
           PodRequest("checkpoint", "short", fake.now),
           PodRequest("checkpoint", "B" * 32, fake.now - 601),  # stale
           PodRequest("checkpoint", "C" * 32, float("nan")),
           PodRequest("diagnose", "D" * 32, fake.now)]  # another kind: not the helper's
    crafted.requests = bad
    assert not r.maybe_checkpoint(lambda p: p.write_bytes(b"x"), step=1)
    assert r.ignored == {"malformed id": 3, "stale": 1, "no valid time": 1}
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").iterdir())
    # a save that raises does not reach the training loop
    crafted.requests = [PodRequest("checkpoint", good, fake.now)]

    def broken(path: Path) -> None:
        raise OSError("disk full")

    assert not r.maybe_checkpoint(broken, step=2)
    assert not list((tmp_path / "ck").glob("*.tmp")) and not list((tmp_path / "ck").glob(".*"))
    # good requests: answered once each, rate limited, the last 2 checkpoints kept
    for i in range(4):
        crafted.requests = [PodRequest("checkpoint", f"{i}" * 32, fake.now)]
        fake.now += 31
        assert r.maybe_checkpoint(lambda p: p.write_bytes(b"w"), step=10 + i), i
        fake.now += 3  # past the poll interval, within min_interval_s
        assert not r.maybe_checkpoint(lambda p: p.write_bytes(b"w"), step=10 + i)  # repeated
        crafted.requests.append(PodRequest("checkpoint", "E" * 32, fake.now))
        fake.now += 3
        assert not r.maybe_checkpoint(lambda p: p.write_bytes(b"w"), step=10 + i)  # too soon
    assert crafted.answers == [f"{i}" * 32 for i in range(4)]
    assert r.ignored["rate limited"] == 4
    kept = sorted(p.name for p in (tmp_path / "ck").glob("ckpt-*.pt"))
    assert len(kept) == 2 and kept[-1].startswith("ckpt-000000013-")
    # hold is bounded (hold_s is capped at MAX_HOLD_S) and returns on its own
    crafted.requests = []
    start = fake.now
    r.hold()
    assert 0 < fake.now - start <= 901
    # an unreachable daemon: nothing raises, no request
    ch.server.close()
    assert r.pending(force=True) is None
    assert r.save_and_acknowledge(CheckpointRequest("F" * 32, fake.now), lambda p: None,
                                  step=30) is None


# =========================================================================== RBAC


def test_rbac_rules_are_valid_and_never_delete_or_patch_workloads(kube: Kube) -> None:
    verbs = {(g, r, v) for rule in rbac.CONTROLLER_RULES for g in rule.api_groups
             for r in rule.resources for v in rule.verbs}
    assert ("", "pods/eviction", "create") in verbs
    assert not any(v in ("delete", "deletecollection", "update", "*", "list", "watch")
                   for _, _, v in verbs)
    assert not {("", "pods", "patch"), ("apps", "statefulsets", "patch"),
                ("batch", "jobs", "patch")} & verbs
    assert all(rule.why for rule in (*rbac.CONTROLLER_RULES, *rbac.STORE_RULES))
    assert rbac.WORKLOAD_RULES == ()
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    role = client.V1ClusterRole.from_dict(rbac.cluster_role("podguard-rbac-check"))
    assert role is not None
    rbac_api.create_cluster_role(role, dry_run="All")  # the API server accepts it as is
    store = client.V1Role.from_dict(rbac.store_role("default"))
    assert store is not None
    rbac_api.create_namespaced_role("default", store, dry_run="All")


# =========================================================================== crash safety (#17)


class Crash(BaseException):
    """The daemon process dying at one exact point (nothing after it runs)."""


class CrashingActuator(Actuator):
    """An Actuator whose process "dies" at ``crash_at``: before the Rescheduled Event is
    written ("event") or before the "done" record is written ("record")."""

    crash_at = ""

    def event(self, obj: ObjectRef, reason: str, message: str, **kw: Any) -> None:
        if self.crash_at == "event" and reason == "Rescheduled":
            raise Crash
        super().event(obj, reason, message, **kw)

    def write_lease(self, namespace: str, name: str, **kw: Any) -> str | None:
        rec = proto.parse_remediation(kw["annotations"][proto.REMEDIATION])
        if self.crash_at == "record" and rec.phase == "done":
            raise Crash
        return super().write_lease(namespace, name, **kw)


@pytest.mark.parametrize("crash_at", ["event", "record"])
def test_a_daemon_killed_around_the_rescheduled_step_reports_it_once_after_restart(
        kube: Kube, ns: Namespace, crash_at: str) -> None:
    """Issue 17: the "done" record used to be written before the Rescheduled Events, so a
    daemon killed in between left a record its successor took as finished: no Event ever."""
    app = f"crash-{crash_at}"
    pod = ns.statefulset(app, labels=OPT_IN)[0]
    s = remediation(avoid_node=False, evict_unacknowledged_below_s=600)
    act = CrashingActuator(kube.api, settings=s)
    act.crash_at = crash_at
    ctl = RemediationController(act, settings=s, store=RecordStore(act, ns.name))
    ctl.handle([leak(pod, tto=300.0)])  # below the floor: evicted without a checkpoint

    def crashed() -> bool:
        try:
            ctl.reconcile()
        except Crash:
            return True
        return False

    wait_for(crashed, timeout=60, what="the replacement running (and the crash)")
    assert "Evicted" in ns.reasons(uid_of(pod))
    rec = record_of(kube, ns, pod)
    assert rec is not None and rec.phase == "evicted", rec  # "done" only after the Events
    # the restarted daemon: finishes the step, and its Events exist once
    ctl2 = controller(kube, ns, s)
    seen: list[str] = []

    def rescheduled() -> bool:
        seen.extend(actions(ctl2.reconcile(), pod))
        return "Rescheduled" in seen

    wait_for(rescheduled, timeout=60, what="the restarted controller's Rescheduled")
    ctl2.reconcile()
    rec = record_of(kube, ns, pod)
    assert rec is not None and rec.phase == "done" and rec.new_node
    new = ns.pod(name_of(pod))
    assert new is not None and uid_of(new) != uid_of(pod)
    assert ns.reasons(uid_of(new)) == ["Rescheduled"]
    assert ns.reasons(rec.uid).count("Evicted") == 1
    assert ns.reasons(sts_of(pod).uid) == ["Rescheduled"]
