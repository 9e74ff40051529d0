"""The pod side of the diagnosis request: a per-step hook that answers podguard's requests.

In the training loop (standard library and torch only; nothing else of podguard is needed)::

    from detector.diagnosis.helper import DiagnosisHelper

    diagnosis = DiagnosisHelper.from_env()   # in a pod: podguard's authenticated pod channel
    for step in range(steps):
        train_one_step(step)
        diagnosis.step()                     # a safe point: between two steps

A background thread polls the channel every ``poll_s`` seconds for a request
(:class:`~detector.diagnosis.report.DiagnosisRequest`, written by podguard when it flags the
pod) and writes the answer; the training thread only checks two attributes per step while no
request is pending, so an idle helper costs nothing measurable. When a request arrives, the
next ``step()`` takes snapshot A (and starts tracemalloc), the first ``step()`` after
``window_s`` takes snapshot B, stops tracemalloc and hands the result to the thread. Each of the
two pauses is bounded (see :class:`~detector.diagnosis.inpod.Diagnoser`) and reported in the
answer (``cost.pause_s``). ``step()`` never raises into the training loop.

Channels:

* :class:`DaemonChannel`: podguard's authenticated pod channel
  (:mod:`detector.remediation.channel`, through the in-pod client shared with the checkpoint
  helper, :mod:`detector.podclient`): the node's daemon over HTTP or HTTPS, the pod's
  projected service-account token (audience ``podguard``) checked with a TokenReview;
  requests of kind ``diagnose``; the pod needs no RBAC of its own;
* :class:`FileChannel`: ``request.json`` / ``result.json`` in a directory (the embedded
  default's training loops, tests).

A request is answered once (its id is remembered, and an answer already in the channel with the
same id counts), only when fresh (``ts`` within 15 min of the pod's clock), with the window
clamped to 1 s - 10 min.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from detector.diagnosis import report as rp
from detector.diagnosis.inpod import Diagnoser
from detector.podclient import DEFAULT_TOKEN_FILE, PodChannelClient

log = logging.getLogger("podguard.diagnosis.helper")

_SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class Channel(Protocol):
    def read(self) -> tuple[str | None, str | None]:
        """(the request's text, the current answer's text), either None when absent."""

    def write_result(self, text: str) -> None: ...


class FileChannel:
    """``request.json`` and ``result.json`` in ``directory`` (written atomically)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _read(self, name: str) -> str | None:
        try:
            return (self.directory / name).read_text()
        except OSError:
            return None

    def read(self) -> tuple[str | None, str | None]:
        return self._read("request.json"), self._read("result.json")

    def write_result(self, text: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / ".result.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.directory / "result.json")

    def write_request(self, text: str) -> None:
        """The daemon side (the embedded default): a new request replaces the old one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / ".request.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.directory / "request.json")


class DaemonChannel:
    """podguard's authenticated pod channel (``detector.remediation.channel``) through the
    one in-pod client, :class:`detector.podclient.PodChannelClient`: the node's daemon at
    ``endpoint`` (``https://`` verified with ``ca_file``), the pod's projected
    service-account token (audience ``podguard``) re-read from ``token_file`` on every
    call. Requests of kind ``diagnose`` come from ``POST /v1/requests``; the answer goes to
    ``POST /v1/answers``."""

    kind = "diagnose"

    def __init__(self, endpoint: str, token_file: str | Path, *,
                 ca_file: str | Path | None = None, timeout_s: float = 5.0) -> None:
        self.client = PodChannelClient(endpoint, token_file, ca_file=ca_file,
                                       timeout_s=timeout_s)
        self.endpoint = self.client.endpoint
        self.refused: list[str] = []  # reasons the daemon gave for refusing an answer

    def read(self) -> tuple[str | None, str | None]:
        for r in self.client.requests():
            if r.get("kind") == self.kind:
                return rp.dumps({k: r.get(k) for k in ("id", "ts", "window_s", "reason")}), None
        return None, None

    def write_result(self, text: str) -> None:
        result = json.loads(text)
        accepted, why = self.client.answer(self.kind, result.get("id"), result)
        if not accepted:
            self.refused.append(why)  # stale or unknown: not retried


class DiagnosisHelper:
    """Answers diagnosis requests at the training loop's safe points (module docstring)."""

    def __init__(self, channel: Channel, *, poll_s: float = 5.0,
                 diagnoser: Diagnoser | None = None, background: bool = True,
                 clock: Callable[[], float] = time.time,
                 logger: logging.Logger | None = None) -> None:
        self.channel = channel
        self.poll_s = poll_s
        self.diagnoser = diagnoser if diagnoser is not None else Diagnoser()
        self.clock = clock
        self.log = logger if logger is not None else log
        self._armed: rp.DiagnosisRequest | None = None  # set by the thread
        self._due: float | None = None  # monotonic end of the window in progress
        self._current: rp.DiagnosisRequest | None = None
        self._answered: set[str] = set()
        self._outbox: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.results: list[dict[str, Any]] = []  # every answer given (newest last)
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="podguard-diagnosis")
            self._thread.start()

    @classmethod
    def from_env(cls, **kwargs: Any) -> DiagnosisHelper:
        """A helper on :class:`DaemonChannel` when ``PODGUARD_ENDPOINT`` is set (token from
        ``PODGUARD_TOKEN_FILE``, CA from ``PODGUARD_CA_FILE``, as for the checkpoint helper),
        on :class:`FileChannel` when ``PODGUARD_DIAGNOSIS_DIR`` is."""
        endpoint = os.environ.get("PODGUARD_ENDPOINT")
        if endpoint:
            return cls(DaemonChannel(
                endpoint, os.environ.get("PODGUARD_TOKEN_FILE", DEFAULT_TOKEN_FILE),
                ca_file=os.environ.get("PODGUARD_CA_FILE") or None), **kwargs)
        d = os.environ.get("PODGUARD_DIAGNOSIS_DIR")
        if not d:
            raise RuntimeError("set PODGUARD_ENDPOINT (podguard's pod channel, with "
                               "PODGUARD_TOKEN_FILE) or PODGUARD_DIAGNOSIS_DIR")
        return cls(FileChannel(d), **kwargs)

    # ------------------------------------------------------------------ training thread

    def step(self) -> None:
        """Call once per training step, between steps. Never raises."""
        if self._armed is None and self._due is None:
            return
        try:
            self._step()
        except Exception as e:  # never into the training loop
            self.log.warning("diagnosis failed: %r", e)
            req = self._current
            self.diagnoser.abort()
            self._due, self._current = None, None
            if req is not None:
                self._answer({"id": req.id, "status": "failed", "version": rp.VERSION,
                              "sentence": f"the diagnosis failed in the pod: {e!r}"})

    def _step(self) -> None:
        now = time.monotonic()
        if self._due is None:
            with self._lock:
                req, self._armed = self._armed, None
            if req is None:
                return
            self._current = req
            pause = self.diagnoser.begin()
            self._due = time.monotonic() + req.window_s
            self.log.info("diagnosis %s: first snapshot (%.3f s), second in %.0f s", req.id,
                          pause, req.window_s)
            return
        if now < self._due:
            return
        req = self._current
        assert req is not None
        result = self.diagnoser.finish()
        self._due, self._current = None, None
        result["id"] = req.id
        self.log.info("diagnosis %s: %s", req.id, result.get("sentence"))
        self._answer(result)

    def _answer(self, result: dict[str, Any]) -> None:
        bounded = rp.bound(result)
        with self._lock:
            self._answered.add(str(result["id"]))
            self.results.append(bounded)
            self._outbox.append(rp.dumps(bounded))
        self._wake.set()
        if self._thread is None:
            self.poll_once()

    # ------------------------------------------------------------------ background thread

    def poll_once(self) -> None:
        """Writes pending answers, then reads the channel for a new request."""
        with self._lock:
            out, self._outbox = self._outbox, []
        for i, text in enumerate(out):
            try:
                self.channel.write_result(text)
            except Exception as e:
                self.log.warning("cannot write the diagnosis: %r (retried)", e)
                with self._lock:
                    self._outbox[:0] = out[i:]
                return
        try:
            req_text, res_text = self.channel.read()
        except Exception as e:
            self.log.warning("cannot read diagnosis requests: %r", e)
            return
        req = rp.DiagnosisRequest.parse(req_text)
        if req is None:
            return
        with self._lock:
            if (req.id in self._answered or self._armed is not None
                    or (self._current is not None and self._current.id == req.id)):
                return
            if res_text and rp.parse_result(res_text, expect_id=req.id) is not None:
                self._answered.add(req.id)  # answered before this process restarted
                return
            if abs(self.clock() - req.ts) > rp.MAX_REQUEST_AGE_S:
                self._answered.add(req.id)
                self.log.warning("diagnosis request %s ignored: too old", req.id)
                return
            self._armed = req
        self.log.info("diagnosis request %s (%s): window %.0f s", req.id, req.reason,
                      req.window_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Stops the thread after writing what is pending (an unfinished window is dropped)."""
        if self._due is not None:
            self.diagnoser.abort()
            self._due = None
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            pending = bool(self._outbox)
        if pending:
            self.poll_once()
