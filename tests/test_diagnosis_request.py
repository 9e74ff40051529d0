"""The daemon side of the diagnosis: request, answer, timeout, and where the answer shows.

* a pod without the helper: after window + timeout the diagnosis is "unavailable" and the
  alert says so; answers for another request id, or unreadable ones, are not taken;
The real leaking trainer with a real Alertmanager, and the authenticated pod channel on the
real control plane, are in tests/stack/test_diagnosis_request.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from detector.diagnosis import report as rp
from detector.diagnosis.helper import FileChannel
from detector.diagnosis.requester import ChannelRequests, DiagnosisRequester, FileRequests
from detector.settings import DiagnosisSettings
from detector.verdicts import Explanation, Verdict


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


def test_channel_kind_answers_only_the_pod_asked_for_its_request() -> None:
    """The ``diagnose`` kind of the authenticated pod channel: identities are what the
    channel server's TokenReview returned (namespace and pod of a bound token)."""
    from detector.remediation.channel import PodIdentity

    ch = ChannelRequests()
    kind = ch.server_kind()
    req = DiagnosisRequester(ch, DiagnosisSettings(window_s=5))
    v = req.decorate([leak("ns", "victim")])[0]
    assert v.diagnosis is not None
    rid = v.diagnosis["id"]
    victim = PodIdentity(namespace="ns", pod="victim", uid="u1", service_account="default")
    other = PodIdentity(namespace="ns", pod="attacker", uid="u2", service_account="default")
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
