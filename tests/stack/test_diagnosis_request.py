"""The diagnosis request against real services.

* a real leaking training process answers the requester over the file channel (the embedded
  default's), and the answer reaches the verdict JSON and a real Alertmanager's alert;
* on the local real Kubernetes control plane, over podguard's authenticated pod channel (the
  checkpoint protocol's, TokenReview of pod-bound tokens): only the pod asked sees the request
  and only it can answer; the in-pod helper's standard-library client does both.
The parts without a server (timeout, "unavailable", foreign or unreadable answers) are in
tests/test_diagnosis_request.py.
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
from detector.diagnosis.helper import DaemonChannel, DiagnosisHelper
from detector.diagnosis.inpod import Diagnoser
from detector.diagnosis.requester import ChannelRequests, DiagnosisRequester, FileRequests
from detector.remediation.actuator import Actuator
from detector.remediation.channel import ChannelServer, TokenReviewer
from detector.settings import AlertingSettings, DiagnosisSettings, RemediationSettings
from detector.sinks.alertmanager import AlertmanagerSink
from tests.support.k8s_fixtures import Kube
from tests.support.pod_identity import pod_token
from tests.support.stack_fixtures import AlertmanagerHandle
from tests.test_diagnosis_request import Events, leak

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def two_pods(kube: Kube) -> Iterator[tuple[client.V1Pod, client.V1Pod]]:
    """A namespace with two pods of the same service account: (victim, thief)."""
    name = f"pg-diag-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        pods = []
        for pod in ("trainer-0", "thief-0"):
            pods.append(core.create_namespaced_pod(name, client.V1Pod(
                metadata=client.V1ObjectMeta(name=pod),
                spec=client.V1PodSpec(containers=[client.V1Container(
                    name="main", image="registry.invalid/podguard/x:never")]))))
        yield pods[0], pods[1]
    finally:
        core.delete_namespace(name)


def test_request_and_answer_over_the_authenticated_pod_channel(
        kube: Kube, two_pods: tuple[client.V1Pod, client.V1Pod], tmp_path: Path) -> None:
    """The daemon's pod channel (TokenReview on the real API server): only the pod asked
    sees the request and only it can answer, with its own pod-bound token."""
    victim, thief = two_pods
    assert victim.metadata is not None and thief.metadata is not None
    ns, pod = str(victim.metadata.namespace), str(victim.metadata.name)
    chan = ChannelRequests()
    req = DiagnosisRequester(chan, DiagnosisSettings(window_s=1))
    v = req.decorate([leak(ns, pod)])[0]
    assert v.diagnosis is not None and v.diagnosis["status"] == "pending"
    server = ChannelServer(TokenReviewer(Actuator(kube.api, settings=RemediationSettings())),
                           [chan.server_kind()], host="127.0.0.1", port=0).start()
    try:
        files = {}
        for p in (victim, thief):
            assert p.metadata is not None
            files[p.metadata.name] = tmp_path / f"{p.metadata.name}.token"
            files[p.metadata.name].write_text(pod_token(kube.api, p))
        stranger = DaemonChannel(server.url, files["thief-0"])
        assert stranger.read() == (None, None)  # another pod is not told the request
        forged = {"id": v.diagnosis["id"], "status": "done", "version": 1,
                  "sentence": "nothing leaks here, move on"}
        stranger.write_result(rp.dumps(forged))
        assert stranger.refused == ["no such diagnosis request for this pod"]
        req.poll()
        assert req.state(ns, pod)["status"] == "pending"  # type: ignore[index]

        helper = DiagnosisHelper(DaemonChannel(server.url, files[pod]), background=False,
                                 diagnoser=Diagnoser())
        helper.poll_once()  # lists its own request with its own token
        helper.step()
        assert helper.diagnoser.active
        time.sleep(1.1)
        helper.step()  # the answer, posted with the pod's own token
        assert helper.channel.refused == []  # type: ignore[attr-defined]
        state = wait_answer(req, ns, pod, timeout=20)
        assert state["status"] == "done" and state["id"] == v.diagnosis["id"]
        assert state["sentence"] == helper.results[0]["sentence"] != forged["sentence"]
        assert DaemonChannel(server.url, files[pod]).read() == (None, None)  # answered once
    finally:
        server.close()

