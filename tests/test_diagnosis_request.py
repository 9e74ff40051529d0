"""The daemon side of the diagnosis: request, answer, timeout, and where the answer shows.

* a real leaking training process answers the requester over the file channel (the embedded
  default's), and the answer reaches the verdict JSON and a real Alertmanager's alert;
* a pod without the helper: after window + timeout the diagnosis is "unavailable" and the
  alert says so; answers for another request id, or unreadable ones, are not taken;
* on the local real Kubernetes control plane: the request goes out as the pod annotation, the
  in-pod helper reads it and answers with the pod's own service-account token over the
  standard-library channel (get + patch on its own pod only), and the requester takes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client

from detector.diagnosis import report as rp
from detector.diagnosis.helper import DiagnosisHelper, FileChannel, PodChannel
from detector.diagnosis.inpod import Diagnoser
from detector.diagnosis.requester import AnnotationRequests, DiagnosisRequester, FileRequests
from detector.remediation.actuator import Actuator
from detector.settings import AlertingSettings, DiagnosisSettings, RemediationSettings
from detector.sinks.alertmanager import AlertmanagerSink
from detector.verdicts import Explanation, Verdict
from tests.support.k8s_fixtures import Kube
from tests.support.stack_fixtures import AlertmanagerHandle

ROOT = Path(__file__).resolve().parent.parent


def leak(ns: str, pod: str = "trainer-0") -> Verdict:
    return Verdict(ts=time.time(), namespace=ns, pod=pod, node="node-a", is_anomaly=True,
                   kind="memory_leak", score=2.5, threshold=1.0, time_to_oom_s=3 * 3600.0,
                   leak_rate_bytes_per_s=30_000.0,
                   explanation=Explanation("working set +100 MiB/h for 3 h", {"slope": 1.0}))


class Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, str, str, bool]] = []

    def __call__(self, ns: str, pod: str, reason: str, message: str, warning: bool) -> None:
        self.got.append((ns, pod, reason, message, warning))


def wait_answer(req: DiagnosisRequester, ns: str, pod: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req.poll()
        state = req.state(ns, pod)
        assert state is not None
        if state["status"] != "pending":
            return state
        time.sleep(0.3)
    raise AssertionError(f"no answer from {ns}/{pod} within {timeout} s")


def test_a_leaking_trainer_answers_and_the_alert_carries_it(
        tmp_path: Path, local_alertmanager: AlertmanagerHandle) -> None:
    ns = f"pg-diag-{uuid.uuid4().hex[:8]}"
    events = Events()
    req = DiagnosisRequester(FileRequests(tmp_path), DiagnosisSettings(window_s=2, timeout_s=60),
                             event=events)
    first = req.decorate([leak(ns)])[0]
    assert first.diagnosis is not None and first.diagnosis["status"] == "pending"
    assert list(json.loads(first.to_json()))[-1] == "diagnosis"  # the last field
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "tests.support.leaks", "kept-loss", "--dir",
         str(tmp_path / "trainer-0"), "--warmup-s", "0.5", "--max-s", "80"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        state = wait_answer(req, ns, "trainer-0")
    finally:
        _, err = proc.communicate(timeout=60)
    assert state["status"] == "done", (state, err[-2000:])
    assert "held by list `losses`" in state["sentence"]
    v = req.decorate([leak(ns)])[0]
    assert v.diagnosis is not None and v.diagnosis["sentence"] == state["sentence"]
    assert json.loads(v.to_json())["diagnosis"]["report"]["growing"][0]["kind"] == "tensors"
    assert [e[2] for e in events.got] == ["LeakDiagnosed"]
    assert "held by list `losses`" in events.got[0][3]
    again = req.decorate([leak(ns)])[0].diagnosis
    assert again is not None and again["id"] == state["id"]  # asked once

    sink = AlertmanagerSink([local_alertmanager.url], settings=AlertingSettings(),
                            container_of=lambda n, p: "main")
    try:
        sink.send([v])
        assert sink.flush(15)
    finally:
        sink.close()
    s = requests.Session()
    s.trust_env = False
    got = s.get(f"{local_alertmanager.url}/api/v2/alerts",
                params={"filter": f'namespace="{ns}"'}, timeout=10).json()
    assert len(got) == 1
    ann = got[0]["annotations"]
    assert ann["diagnosis"].startswith("In-pod diagnosis: ")
    assert "held by list `losses`" in ann["diagnosis"]
    assert ann["description"].endswith(ann["diagnosis"])
    assert len(ann["diagnosis"]) <= rp.ALERT_CHARS


def test_a_pod_without_the_helper_gets_no_diagnosis_and_the_alert_says_so(
        tmp_path: Path) -> None:
    events = Events()
    req = DiagnosisRequester(FileRequests(tmp_path), DiagnosisSettings(window_s=1, timeout_s=1),
                             event=events)
    v = req.decorate([leak("ns")])[0]
    assert v.diagnosis is not None
    rid = v.diagnosis["id"]
    assert rp.DiagnosisRequest.parse((tmp_path / "trainer-0" / "request.json").read_text())
    ch = FileChannel(tmp_path / "trainer-0")
    # answers the requester must not take: another request's, unreadable, no sentence
    for bad in (json.dumps({"id": "d-" + "0" * 24, "status": "done", "sentence": "forged"}),
                "{not json", json.dumps({"id": rid, "status": "done"})):
        ch.write_result(bad)
        req.poll()
        assert req.state("ns", "trainer-0")["status"] == "pending"  # type: ignore[index]
    time.sleep(2.1)
    req.poll()
    d = req.decorate([leak("ns")])[0].diagnosis
    assert d is not None and d["status"] == "unavailable"
    assert "diagnosis helper" in d["reason"]
    assert rp.describe(d).startswith("No in-pod diagnosis: the pod did not answer")
    assert [e[2] for e in events.got] == ["DiagnosisUnavailable"]
    assert req.decorate([leak("ns")])[0].diagnosis["id"] == rid  # type: ignore[index]
    healthy = Verdict(ts=1.0, namespace="ns", pod="p", node="", is_anomaly=False, kind="none",
                      score=0.1, threshold=1.0)
    assert req.decorate([healthy])[0].diagnosis is None
    assert "diagnosis" not in healthy.to_json()  # verdicts without one serialise as before


# ---------------------------------------------------------------------- real API server


@pytest.fixture
def pod_identity(kube: Kube) -> Iterator[tuple[str, str, str]]:
    """A namespace with a pod and its service account (get + patch on pods only), and a
    token for that account: (namespace, pod, token)."""
    name = f"pg-diag-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube.api)
    rbac = client.RbacAuthorizationV1Api(kube.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        core.create_namespaced_service_account(name, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name="trainer")))
        rbac.create_namespaced_role(name, client.V1Role(
            metadata=client.V1ObjectMeta(name="self"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"],
                                       verbs=["get", "patch"])]))
        rbac.create_namespaced_role_binding(name, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="self"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                      name="self"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="trainer",
                                           namespace=name)]))
        core.create_namespaced_pod(name, client.V1Pod(
            metadata=client.V1ObjectMeta(name="trainer-0"),
            spec=client.V1PodSpec(service_account_name="trainer", containers=[
                client.V1Container(name="main", image="registry.invalid/podguard/x:never")])))
        tok = core.create_namespaced_service_account_token(
            "trainer", name, client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)))
        assert tok.status is not None
        yield name, "trainer-0", str(tok.status.token)
    finally:
        core.delete_namespace(name)


def test_request_and_answer_through_the_pods_annotations(kube: Kube,
                                                         pod_identity: tuple[str, str, str]
                                                         ) -> None:
    ns, pod, token = pod_identity
    actuator = Actuator(kube.api, settings=RemediationSettings())
    req = DiagnosisRequester(AnnotationRequests(actuator), DiagnosisSettings(window_s=1))
    v = req.decorate([leak(ns, pod)])[0]
    assert v.diagnosis is not None and v.diagnosis["status"] == "pending"
    channel = PodChannel(namespace=ns, pod=pod, api_url=kube.endpoints.apiserver,
                         token=lambda: token, ca_file=kube.api.configuration.ssl_ca_cert)
    helper = DiagnosisHelper(channel, background=False, diagnoser=Diagnoser())
    helper.poll_once()  # reads the request with the pod's own token
    helper.step()
    assert helper.diagnoser.active
    time.sleep(1.1)
    helper.step()  # the answer, patched onto the pod with the pod's own token
    state = wait_answer(req, ns, pod, timeout=20)
    assert state["status"] == "done" and state["id"] == v.diagnosis["id"]
    assert state["sentence"] == helper.results[0]["sentence"]
    meta = client.CoreV1Api(kube.api).read_namespaced_pod(pod, ns).metadata
    assert meta is not None and meta.annotations is not None
    assert rp.parse_result(meta.annotations[rp.RESULT_KEY], expect_id=state["id"]) is not None


def test_channel_kind_answers_only_the_pod_asked_for_its_request() -> None:
    """The ``diagnose`` kind of the authenticated pod channel: identities are what the
    channel server's TokenReview returned (namespace and pod of a bound token)."""
    from types import SimpleNamespace

    from detector.diagnosis.requester import ChannelRequests

    ch = ChannelRequests()
    kind = ch.server_kind()
    req = DiagnosisRequester(ch, DiagnosisSettings(window_s=5))
    v = req.decorate([leak("ns", "victim")])[0]
    assert v.diagnosis is not None
    rid = v.diagnosis["id"]
    victim, other = SimpleNamespace(namespace="ns", pod="victim"), SimpleNamespace(
        namespace="ns", pod="attacker")
    assert [r.as_json()["window_s"] for r in kind.pending(victim)] == [5.0]
    assert kind.pending(other) == []  # a pod sees only its own requests
    answer = {"status": "done", "sentence": "+1 MiB in 5 s: something", "version": 1}
    assert not kind.answer(other, rid, answer).accepted  # another pod cannot answer it
    assert not kind.answer(victim, "d-" + "0" * 24, answer).accepted  # nor another id
    assert not kind.answer(victim, rid, {"status": "done"}).accepted  # nor an unreadable one
    req.poll()
    assert req.state("ns", "victim")["status"] == "pending"  # type: ignore[index]
    assert kind.answer(victim, rid, answer).accepted
    assert not kind.answer(victim, rid, answer).accepted  # once
    req.poll()
    state = req.state("ns", "victim")
    assert state is not None and state["status"] == "done"
    assert state["sentence"] == answer["sentence"]
