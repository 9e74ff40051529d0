"""The Actuator, the remediation controller's decisions and the checkpoint helper.

Against the real control plane of the ``kube`` fixture (kwok nodes): Events, annotations,
evictions through the Eviction API (uid precondition, PodDisruptionBudget 429), eviction
budgets and cooldowns (also after a restart, from the workloads' records), cordons and
taints, dry-run. The controller's timeouts and the API backoff run on fake time (recorded
waits, a clock the test moves); the cluster itself is real. The PyTorch end-to-end path is
in ``tests/test_remediation_e2e.py``.
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
from typing import Any, TypeVar

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
from detector.remediation.checkpoint import (
    CheckpointResponder,
    latest_checkpoint,
    parse_downward_annotations,
)
from detector.remediation.controller import Decision, RemediationController
from detector.settings import AlertingSettings, RemediationSettings
from detector.sinks.k8s_events import KubernetesEventSink, PodContainers, pick_container
from detector.verdicts import Explanation, Verdict
from tests.support.k8s_fixtures import Kube

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

T = TypeVar("T")
OPT_IN = {"podguard.io/remediate": "true"}


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


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


def record(act: Actuator, pod: client.V1Pod, rid: str) -> proto.WorkloadRecord:
    m = pod.metadata
    assert m is not None
    return proto.WorkloadRecord(id=rid, namespace=str(m.namespace), pod=str(m.name),
                                uid=str(m.uid), node=node_of(pod), phase="evicting",
                                at=act.clock())


def sts_of(pod: client.V1Pod) -> WorkloadRef:
    ref = owner_of(pod)
    assert ref is not None and ref.kind == "StatefulSet"
    return ref


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


def test_annotations_with_a_stale_resource_version_are_refused(kube: Kube,
                                                               ns: Namespace) -> None:
    pod = ns.statefulset("ann")[0]
    act = Actuator(kube.api, settings=remediation())
    old_rv = pod.metadata.resource_version if pod.metadata else None
    rv = act.annotate_pod(ns.name, name_of(pod), {"podguard.io/test": "1"})
    assert rv and rv != old_rv
    assert act.annotate_pod(ns.name, name_of(pod), {"podguard.io/test": "2"},
                            resource_version=old_rv) is None
    now = ns.pod(name_of(pod))
    assert now is not None and now.metadata is not None
    assert (now.metadata.annotations or {})["podguard.io/test"] == "1"
    assert act.annotate_pod(ns.name, name_of(pod), {"podguard.io/test": None},
                            resource_version=rv)
    assert act.annotate_pod(ns.name, "no-such-pod", {"a": "b"}) is None


def test_eviction_never_hits_another_pod_with_the_same_name(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("uidpre")[0]
    act = Actuator(kube.api, settings=remediation())
    ghost = client.V1Pod(metadata=client.V1ObjectMeta(
        name=name_of(pod), namespace=ns.name, uid=str(uuid.uuid4())), spec=pod.spec)
    result = act.evict(ghost, workload=sts_of(pod), record=record(act, ghost, "r-ghost"))
    assert result.outcome is Outcome.GONE
    still = ns.pod(name_of(pod))
    assert still is not None and uid_of(still) == uid_of(pod)
    assert still.metadata is not None and still.metadata.deletion_timestamp is None


def test_budgets_per_node_and_namespace_hold_across_a_restart(kube: Kube,
                                                              ns: Namespace) -> None:
    pods = ns.statefulset("budget", replicas=3, node="kwok-node-1")
    act = Actuator(kube.api, settings=remediation(max_evictions_per_node=1,
                                                  max_evictions_per_namespace=2))
    first = act.evict(pods[0], workload=sts_of(pods[0]), record=record(act, pods[0], "r-b1"))
    assert first.outcome is Outcome.EVICTED, first
    second = act.evict(pods[1], workload=sts_of(pods[1]), record=record(act, pods[1], "r-b2"))
    assert second.outcome is Outcome.COOLDOWN  # the same StatefulSet, remediated just now
    assert "budget" in str(act.budget_refusal(node="kwok-node-1", namespace="elsewhere"))
    assert "node kwok-node-1" in str(act.budget_refusal(node="kwok-node-1",
                                                        namespace=ns.name))
    # a restarted daemon: the records on the workloads count against the budgets again
    fresh = Actuator(kube.api, settings=remediation(max_evictions_per_node=5,
                                                    max_evictions_per_namespace=1))
    assert fresh.budget_refusal(node="kwok-node-1", namespace=ns.name) is None
    fresh.seed_budgets(fresh.list_workload_records())
    why = fresh.budget_refusal(node="kwok-node-0", namespace=ns.name)
    assert why is not None and f"namespace {ns.name}" in why
    rec = fresh.workload_record(sts_of(pods[0]))
    assert rec is not None and rec.id == "r-b1" and rec.phase == "evicted"
    assert rec.evicted_at is not None and rec.uid == uid_of(pods[0])


def test_cooldown_is_per_workload_and_read_from_its_record(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("cool")[0]
    fake = FakeTime()
    act = Actuator(kube.api, settings=remediation(cooldown_s=600), clock=fake.clock)
    ref = sts_of(pod)
    assert act.cooldown_refusal(ref, "r-new") is None
    act.annotate_workload(ref, {proto.WORKLOAD_RECORD: proto.WorkloadRecord(
        id="r-old", namespace=ns.name, pod=name_of(pod), uid="u", node="n", phase="done",
        at=fake.now, evicted_at=fake.now - 100).to_json()})
    why = act.cooldown_refusal(ref, "r-new")
    assert why is not None and "cooldown 10 min" in why and "r-old" in why
    assert act.cooldown_refusal(ref, "r-old") is None  # its own remediation continues
    fake.now += 501
    assert act.cooldown_refusal(ref, "r-new") is None


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

    wait_for(settled, timeout=60, what="the PodDisruptionBudget's status")


def test_a_disruption_budget_refusal_is_reported_not_forced(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("pdb")[0]
    _pdb(kube, ns, "pdb", 1)
    fake = FakeTime()
    act = Actuator(kube.api, settings=remediation(), clock=fake.clock, sleep=fake.sleep)
    result = act.evict(pod, workload=sts_of(pod), record=record(act, pod, "r-pdb"))
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
    assert act.annotate_pod(ns.name, name_of(pod), {"podguard.io/x": "1"})
    assert act.cordon(node_of(pod), by="r-dry", reason="test")
    assert act.evict(pod, workload=sts_of(pod), record=record(act, pod, "r-dry")).outcome \
        is Outcome.DRY_RUN
    text = out.getvalue()
    for expected in ("DRY-RUN: event PodguardTest", "DRY-RUN: annotate pod",
                     "DRY-RUN: cordon (node", f"DRY-RUN: evict pod {ns.name}/{name_of(pod)}"):
        assert expected in text, text
    assert len(act.planned) == 4
    still = ns.pod(name_of(pod))
    assert still is not None and still.metadata is not None
    assert still.metadata.deletion_timestamp is None
    assert "podguard.io/x" not in (still.metadata.annotations or {})
    assert ns.events(uid_of(pod)) == []
    node = ns.core.read_node(node_of(pod))
    assert node.spec is not None and not node.spec.unschedulable
    assert act.workload_record(sts_of(pod)) is None


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
    now = ns.pod(name_of(pod))
    assert now is not None and now.metadata is not None
    got = proto.parse_verdict((now.metadata.annotations or {})[proto.VERDICT])
    assert got is not None and got.kind == "memory_leak" and got.time_to_oom_s == 5 * 3600.0
    assert got.explanation is not None and got.explanation.features == {
        "mem_working_set.slope": 0.5}
    fake.now += 60
    sink.send([leak(pod)])  # still flagged, within the interval: nothing new
    assert sink.flush(10) and len(ns.events(uid_of(pod))) == 1
    healthy = dc_replace(v, is_anomaly=False, kind="none", time_to_oom_s=None,
                         explanation=None)
    sink.send([healthy])
    assert sink.flush(10)
    assert sorted(ns.reasons(uid_of(pod))) == ["AnomalyCleared", "MemoryLeakDetected"]
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
    ctl = RemediationController(Actuator(kube.api, settings=remediation()),
                                settings=remediation())
    decisions = ctl.handle([leak(plain), leak(lonely_pod)])
    assert [d.action for d in decisions] == ["RemediationSkipped", "RemediationSkipped"]
    assert "does not opt in" in decisions[0].message
    assert "not controlled by a StatefulSet or a Job" in decisions[1].message
    for p in (plain, lonely_pod):
        assert ns.reasons(uid_of(p)) == ["RemediationSkipped"]
        now = ns.pod(name_of(p))
        assert now is not None and now.metadata is not None
        assert proto.REQUEST not in (now.metadata.annotations or {})
    off = RemediationController(Actuator(kube.api, settings=remediation(enabled=False)),
                                settings=remediation(enabled=False))
    assert off.handle([leak(plain)]) == [] and off.reconcile() == []


def test_dry_run_controller_prints_the_plan_once(kube: Kube, ns: Namespace) -> None:
    pod = ns.statefulset("dryplan", labels=OPT_IN)[0]
    out = io.StringIO()
    s = remediation(dry_run=True)
    ctl = RemediationController(Actuator(kube.api, settings=s, plan_stream=out), settings=s)
    ctl.handle([leak(pod)])
    ctl.handle([leak(pod)])
    ctl.reconcile()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "would request a checkpoint" in lines[0] and "evict through the Eviction API" in \
        lines[0] and f"taint node {node_of(pod)} podguard.io/rescheduling:PreferNoSchedule" in \
        lines[0]
    now = ns.pod(name_of(pod))
    assert now is not None and now.metadata is not None
    assert not any(k.startswith("podguard.io/") for k in now.metadata.annotations or {})


def actions(decisions: list[Decision], pod: client.V1Pod) -> list[str]:
    """The decisions about ``pod``'s workload (the controller also follows other tests')."""
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
    ctl = RemediationController(Actuator(kube.api, settings=s, clock=fake.clock), settings=s,
                                escalate=lambda *a: escalated.append(a))
    [d] = ctl.handle([leak(pod)])
    assert d.action == "CheckpointRequested"
    state = proto.RemediationState.parse(
        (ns.pod(name_of(pod)).metadata.annotations or {})[proto.STATE])  # type: ignore[union-attr]
    assert state is not None and state.phase == "checkpointing" and state.uid == uid_of(pod)
    assert ctl.handle([leak(pod)]) == []  # at most one remediation in flight per pod
    fake.now += 60
    assert actions(ctl.reconcile(), pod) == []
    fake.now += 61
    [d] = [d for d in ctl.reconcile() if (d.namespace, d.pod) == (ns.name, name_of(pod))]
    assert d.action == "CheckpointNotAcknowledged" and "not evicting" in d.message
    assert escalated and escalated[0][:2] == (ns.name, name_of(pod))
    assert "not acknowledged within 2 min" in escalated[0][2]
    fake.now += 30
    assert actions(ctl.reconcile(), pod) == [] and len(escalated) == 2  # idempotent
    ctl.handle([leak(pod, tto=300.0)])  # now it dies anyway within the floor
    decisions = [d for d in ctl.reconcile() if (d.namespace, d.pod) == (ns.name, name_of(pod))]
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
    rec = Actuator(kube.api, settings=s).workload_record(sts_of(pod))
    assert rec is not None and rec.phase == "done" and rec.forced and rec.checkpoint is None


def test_eviction_blocked_by_a_pdb_is_retried_and_a_stale_checkpoint_is_asked_again(
        kube: Kube, ns: Namespace, tmp_path: Path) -> None:
    pod = ns.statefulset("pdbctl", labels=OPT_IN)[0]
    _pdb(kube, ns, "pdbctl", 1)
    fake = FakeTime()
    s = remediation(retry_s=30, checkpoint_max_age_s=300, avoid_node=True)
    act = Actuator(kube.api, settings=s, clock=fake.clock)
    ctl = RemediationController(act, settings=s)
    ctl.handle([leak(pod)])
    responder = CheckpointResponder(namespace=ns.name, pod=name_of(pod), directory=tmp_path,
                                    api=kube.api, clock=fake.clock)
    req = responder.pending()
    assert req is not None and req.id.endswith(".1")
    responder.save_and_acknowledge(req, lambda p: p.write_bytes(b"state"), step=41)
    assert actions(ctl.reconcile(), pod) == ["CheckpointAcknowledged", "EvictionBlocked"]
    assert (proto.RESCHEDULING, "PreferNoSchedule") not in _taints(kube, node_of(pod))
    fake.now += 10
    assert actions(ctl.reconcile(), pod) == []  # not before retry_s
    fake.now += 25
    assert actions(ctl.reconcile(), pod) == ["EvictionBlocked"]
    state = proto.RemediationState.parse(
        (ns.pod(name_of(pod)).metadata.annotations or {})[proto.STATE])  # type: ignore[union-attr]
    assert state is not None and state.attempts == 2 and not state.forced
    fake.now += 300  # the acknowledged checkpoint is now stale: ask for a fresh one
    [d] = [d for d in ctl.reconcile() if (d.namespace, d.pod) == (ns.name, name_of(pod))]
    assert d.action == "CheckpointRequested" and "again" in d.message
    again = responder.pending(force=True)
    assert again is not None and again.id == req.id.rsplit(".", 1)[0] + ".2"
    still = ns.pod(name_of(pod))
    assert still is not None and uid_of(still) == uid_of(pod)


# =========================================================================== checkpoint helper


def test_checkpoint_helper_saves_atomically_then_acknowledges(kube: Kube, ns: Namespace,
                                                              tmp_path: Path) -> None:
    pod = ns.statefulset("helper")[0]
    req = proto.CheckpointRequest(id="r-abc.1", ts=time.time(), reason="test")
    ns.core.patch_namespaced_pod(name_of(pod), ns.name, {"metadata": {"annotations": {
        proto.REQUEST: req.to_json()}}})
    responder = CheckpointResponder(namespace=ns.name, pod=name_of(pod), directory=tmp_path,
                                    api=kube.api, poll_interval_s=60)
    assert latest_checkpoint(tmp_path) is None
    assert responder.maybe_checkpoint(lambda p: p.write_bytes(b"weights"), step=7)
    assert responder.pending() is None  # rate limited, and answered
    info = latest_checkpoint(tmp_path)
    assert info is not None and info.step == 7 and info.request_id == "r-abc.1"
    assert info.path.read_bytes() == b"weights"
    assert not list(tmp_path.glob(".*.tmp"))
    ack = proto.CheckpointAck.parse(
        (ns.pod(name_of(pod)).metadata.annotations or {})[proto.ACK])  # type: ignore[union-attr]
    assert ack is not None and ack.id == "r-abc.1" and ack.path == str(info.path)
    assert ack.step == 7
    # a restarted trainer process sees the request as answered already
    again = CheckpointResponder(namespace=ns.name, pod=name_of(pod), directory=tmp_path,
                                api=kube.api)
    assert again.pending() is None


def test_downward_api_annotations_file_is_read(tmp_path: Path) -> None:
    req = proto.CheckpointRequest(id="r-1.1", ts=1.5, reason='a "quoted"\nreason')
    text = ('kubectl.kubernetes.io/last-applied="{\\"a\\":1}"\n'
            f'{proto.REQUEST}={json.dumps(req.to_json())}\n')
    parsed = parse_downward_annotations(text)
    assert proto.CheckpointRequest.parse(parsed[proto.REQUEST]) == req
    assert parsed["kubectl.kubernetes.io/last-applied"] == '{"a":1}'
    f = tmp_path / "annotations"
    f.write_text(text)
    r = CheckpointResponder(namespace="x", pod="y", directory=tmp_path, annotations_file=f)
    assert r.pending() == req
    with pytest.raises(RuntimeError, match="API client"):
        r.acknowledge(proto.CheckpointAck(id=req.id, path="p", ts=2.0))


# =========================================================================== RBAC


def test_rbac_rules_are_valid_and_never_delete(kube: Kube) -> None:
    verbs = {(g, r, v) for rule in rbac.CONTROLLER_RULES for g in rule.api_groups
             for r in rule.resources for v in rule.verbs}
    assert ("", "pods/eviction", "create") in verbs
    assert not any(v in ("delete", "deletecollection", "update", "*") for _, _, v in verbs)
    assert all(rule.why for rule in (*rbac.CONTROLLER_RULES, *rbac.WORKLOAD_RULES))
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    role = client.V1ClusterRole.from_dict(rbac.cluster_role("podguard-rbac-check"))
    assert role is not None
    rbac_api.create_cluster_role(role, dry_run="All")  # the API server accepts it as is
    wl = client.V1Role.from_dict(rbac.workload_role("default"))
    assert wl is not None
    rbac_api.create_namespaced_role("default", wl, dry_run="All")


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

    def annotate_workload(self, ref: WorkloadRef, changes: Any) -> bool:
        rec = proto.WorkloadRecord.parse(changes.get(proto.WORKLOAD_RECORD))
        if self.crash_at == "record" and rec is not None and rec.phase == "done":
            raise Crash
        return super().annotate_workload(ref, changes)


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
    ctl = RemediationController(act, settings=s)
    ctl.handle([leak(pod, tto=300.0)])  # below the floor: evicted without a checkpoint

    def crashed() -> bool:
        try:
            ctl.reconcile()
        except Crash:
            return True
        return False

    wait_for(crashed, timeout=60, what="the replacement running (and the crash)")
    assert "Evicted" in ns.reasons(uid_of(pod))
    rec = Actuator(kube.api, settings=s).workload_record(sts_of(pod))
    assert rec is not None and rec.phase == "evicted", rec  # "done" only after the Events
    # the restarted daemon: finishes the step, and its Events exist once
    ctl2 = RemediationController(Actuator(kube.api, settings=s), settings=s)
    seen: list[str] = []

    def rescheduled() -> bool:
        seen.extend(actions(ctl2.reconcile(), pod))
        return "Rescheduled" in seen

    wait_for(rescheduled, timeout=60, what="the restarted controller's Rescheduled")
    ctl2.reconcile()
    rec = Actuator(kube.api, settings=s).workload_record(sts_of(pod))
    assert rec is not None and rec.phase == "done" and rec.new_node
    new = ns.pod(name_of(pod))
    assert new is not None and uid_of(new) != uid_of(pod)
    assert ns.reasons(uid_of(new)) == ["Rescheduled"]
    assert ns.reasons(rec.uid).count("Evicted") == 1
    sts_uid = sts_of(pod).uid
    assert ns.reasons(sts_uid) == ["Rescheduled"]
