"""The daemon side of the diagnosis: ask a pod flagged with a leak, wait, attach the answer.

The daemon calls :meth:`DiagnosisRequester.decorate` with each step's verdicts before they
reach the sinks and :meth:`DiagnosisRequester.poll` from its housekeeping (every few seconds).
For a pod flagged ``memory_leak`` or ``gpu_memory_leak`` (``diagnosis.kinds``) it offers a
fresh request (:class:`~detector.diagnosis.report.DiagnosisRequest`, an unguessable id) that
the pod's helper (:mod:`detector.diagnosis.helper`) reads, then attaches the pod's state to
every later verdict of that pod as ``Verdict.diagnosis``:

* ``{"status": "pending", "id", "requested_at", "window_s", "expect_s"}`` until the answer;
* ``{"status": "done" | "failed", "id", "sentence", "answered_at", "report": {...}}`` once the
  answer with that id arrived (validated and bounded by
  :func:`~detector.diagnosis.report.parse_result`: it comes from the workload);
* ``{"status": "unavailable", "id", "reason"}`` when no answer came within ``window_s`` +
  ``timeout_s``: the pod does not run the helper (or its loop is stuck) - the alert says so.

A pod is asked again after ``repeat_s``. An answer is written as an Event on the pod
(``LeakDiagnosed`` / ``DiagnosisUnavailable``) by the ``event`` callback when one is given.

Channels (the request's transport): :class:`ChannelRequests`, the ``diagnose`` kind of
podguard's authenticated pod channel (:mod:`detector.remediation.channel`, the checkpoint
protocol's transport: a request is listed only to the pod it was made for and answered only
by it, as the API server vouches with a TokenReview of the pod's bound token; nothing is
written on the pod), and :class:`FileRequests` for the embedded default's local training
loops. Without a channel (``channel=None``: the daemon runs alert-only, without the pod
channel) every leak verdict says at once why there is no diagnosis.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from detector.diagnosis import report as rp
from detector.diagnosis.helper import FileChannel
from detector.remediation.channel import Answer, PodIdentity, PodRequest
from detector.settings import DiagnosisSettings
from detector.verdicts import Verdict

log = logging.getLogger("podguard.diagnosis")

Event = Callable[[str, str, str, str, bool], None]
"""``event(namespace, pod, reason, message, warning)``."""


class RequestChannel(Protocol):
    def send(self, namespace: str, pod: str, request: rp.DiagnosisRequest) -> bool:
        """Writes the request; False when the pod is gone."""

    def answer(self, namespace: str, pod: str) -> str | None:
        """The pod's current answer text (any request's), None when there is none."""


class FileRequests:
    """``<root>/<pod>/request.json`` and ``result.json`` (the embedded default)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def send(self, namespace: str, pod: str, request: rp.DiagnosisRequest) -> bool:
        FileChannel(self.root / pod).write_request(request.to_json())
        return True

    def answer(self, namespace: str, pod: str) -> str | None:
        return FileChannel(self.root / pod).read()[1]


@dataclass(frozen=True)
class _ChannelRequest(PodRequest):
    """A ``diagnose`` request as the pod channel lists it (``/v1/requests``)."""

    window_s: float = 60.0

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), "window_s": self.window_s}


class ChannelRequests:
    """The ``diagnose`` kind of podguard's authenticated pod channel
    (``detector.remediation.channel.ChannelServer(kinds=[...])``): a request waits in memory
    until the pod it was made for - as the API server vouched for its token - lists it, and an
    answer is taken only from that pod, for that request's id, and only once."""

    kind = "diagnose"

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], rp.DiagnosisRequest] = {}
        self._answers: dict[tuple[str, str], str] = {}

    def send(self, namespace: str, pod: str, request: rp.DiagnosisRequest) -> bool:
        self._pending[(namespace, pod)] = request
        return True

    def answer(self, namespace: str, pod: str) -> str | None:
        return self._answers.get((namespace, pod))

    def server_kind(self) -> _DiagnoseKind:
        """What to register with the channel server (``kinds=[..., this]``)."""
        return _DiagnoseKind(self)

    # the RequestKind side, called by the channel server with an authenticated identity
    def pending(self, pod: PodIdentity) -> list[PodRequest]:
        r = self._pending.get((pod.namespace, pod.pod))
        return [] if r is None else [_ChannelRequest(self.kind, r.id, r.ts, r.reason,
                                                     r.window_s)]

    def take(self, pod: PodIdentity, request_id: str, result: dict[str, Any]) -> Answer:
        key = (pod.namespace, pod.pod)
        r = self._pending.get(key)
        if r is None or r.id != request_id:
            return Answer(False, "no such diagnosis request for this pod")
        try:
            text = rp.dumps({**result, "id": request_id})
        except (TypeError, ValueError):
            text = ""
        if rp.parse_result(text, expect_id=r.id) is None:
            return Answer(False, "not a readable diagnosis")
        self._answers[key] = text
        del self._pending[key]
        return Answer(True)


class _DiagnoseKind:
    """``ChannelRequests`` as a request kind of the channel server."""

    kind = "diagnose"

    def __init__(self, requests: ChannelRequests) -> None:
        self.requests = requests

    def pending(self, pod: PodIdentity) -> list[PodRequest]:
        return self.requests.pending(pod)

    def answer(self, pod: PodIdentity, request_id: str, result: Mapping[str, Any]) -> Answer:
        return self.requests.take(pod, request_id, dict(result))


@dataclass
class PodDiagnosis:
    id: str
    requested_at: float  # unix seconds
    window_s: float
    status: str = "pending"  # pending, done, failed, unavailable
    answered_at: float | None = None
    result: dict[str, Any] | None = None
    reason: str = ""

    def as_dict(self, timeout_s: float) -> dict[str, Any]:
        if self.status == "pending":
            return {"status": "pending", "id": self.id, "requested_at": self.requested_at,
                    "window_s": self.window_s, "expect_s": self.window_s + timeout_s}
        if self.status == "unavailable":
            return {"status": "unavailable", "id": self.id, "reason": self.reason}
        r = self.result or {}
        return {"status": self.status, "id": self.id, "sentence": r.get("sentence", ""),
                "answered_at": self.answered_at, "report": r}


class DiagnosisRequester:
    """Requests, waits for and attaches in-pod diagnoses (see the module docstring)."""

    def __init__(self, channel: RequestChannel | None, settings: DiagnosisSettings, *,
                 event: Event | None = None, clock: Callable[[], float] = time.time,
                 logger: logging.Logger | None = None,
                 no_channel: str = "the daemon runs without podguard's pod channel "
                                   "(alert-only mode): no diagnosis can be asked for") -> None:
        self.no_channel = no_channel
        self.channel = channel
        self.settings = settings
        self.event = event
        self.clock = clock
        self.log = logger if logger is not None else log
        self.pods: dict[tuple[str, str], PodDiagnosis] = {}

    def decorate(self, verdicts: Sequence[Verdict]) -> list[Verdict]:
        """``verdicts`` with the diagnosis of each flagged leak attached (requests sent)."""
        if not self.settings.enabled:
            return list(verdicts)
        out = []
        for v in verdicts:
            if v.is_anomaly and not v.stale and v.kind in self.settings.kinds:
                if self.channel is None:
                    out.append(replace(v, diagnosis={"status": "unavailable", "id": "",
                                                     "reason": self.no_channel}))
                    continue
                d = self._ensure(v)
                if d is not None:
                    v = replace(v, diagnosis=d.as_dict(self.settings.timeout_s))
            out.append(v)
        return out

    def _ensure(self, v: Verdict) -> PodDiagnosis | None:
        key = (v.namespace, v.pod)
        now = self.clock()
        d = self.pods.get(key)
        if d is not None and now - d.requested_at < self.settings.repeat_s:
            return d
        assert self.channel is not None
        req = rp.DiagnosisRequest(
            id="d-" + secrets.token_hex(12), ts=now, window_s=self.settings.window_s,
            reason=rp.clean_text(f"{v.kind}: {v.explanation.text if v.explanation else ''}"))
        try:
            sent = self.channel.send(v.namespace, v.pod, req)
        except Exception as e:  # the alert goes out regardless; asked again next step
            self.log.warning("diagnosis request to %s/%s failed: %s", v.namespace, v.pod, e)
            return d
        if not sent:
            return d
        d = PodDiagnosis(id=req.id, requested_at=now, window_s=req.window_s)
        self.pods[key] = d
        self.log.info("diagnosis %s requested from %s/%s (window %.0f s)", req.id, *key,
                      req.window_s)
        return d

    def poll(self) -> None:
        """Reads the answers of pending requests; marks those past their deadline."""
        now = self.clock()
        for (ns, pod), d in list(self.pods.items()):
            if d.status != "pending":
                continue
            try:
                text = self.channel.answer(ns, pod) if self.channel is not None else None
            except Exception as e:
                self.log.warning("reading the diagnosis of %s/%s failed: %s", ns, pod, e)
                text = None
            res = rp.parse_result(text, expect_id=d.id)
            if res is not None:
                d.status, d.result, d.answered_at = str(res["status"]), res, now
                self.log.info("diagnosis %s of %s/%s: %s", d.id, ns, pod, res["sentence"])
                self._event(ns, pod, "LeakDiagnosed" if d.status == "done"
                            else "DiagnosisFailed", rp.describe(
                                d.as_dict(self.settings.timeout_s)), True)
                continue
            deadline = d.requested_at + d.window_s + self.settings.timeout_s
            if now >= deadline:
                d.status = "unavailable"
                d.reason = (f"the pod did not answer diagnosis request {d.id} within "
                            f"{rp.human_duration(deadline - d.requested_at)}: it does not run "
                            f"the podguard diagnosis helper (detector.diagnosis.helper), or "
                            f"its training loop has not completed a step since")
                self.log.info("diagnosis %s of %s/%s unavailable", d.id, ns, pod)
                self._event(ns, pod, "DiagnosisUnavailable", rp.describe(
                    d.as_dict(self.settings.timeout_s)), False)

    def state(self, namespace: str, pod: str) -> dict[str, Any] | None:
        d = self.pods.get((namespace, pod))
        return None if d is None else d.as_dict(self.settings.timeout_s)

    def _event(self, ns: str, pod: str, reason: str, message: str, warning: bool) -> None:
        if self.event is None:
            return
        try:
            self.event(ns, pod, reason, message, warning)
        except Exception as e:
            self.log.warning("could not record Event %s on %s/%s: %s", reason, ns, pod, e)
