"""Kubernetes sink: an Event on each flagged pod.

So ``kubectl describe pod`` tells the story: a Warning Event ``MemoryLeakDetected`` /
``GpuMemoryLeakDetected`` / ``PreFailureDriftDetected`` with the explanation sentence and the
time to OOM when a pod is flagged (repeated at most every ``event_interval_s`` while it stays
flagged, and at once when the kind changes), a Normal ``AnomalyCleared`` Event when it is
healthy again. Pods are only read (``get``: the Event names the pod's uid), never patched:
no verdict is stored on the pod, where the workload itself could rewrite it (issue 14); the
remediation controller keeps its own verdicts in memory.

Every write goes through the :class:`~detector.remediation.actuator.Actuator` (dry-run,
retries, error mapping). ``send`` only records the newest verdict per pod; a background thread
writes them (coalesced: a pod's newer verdict replaces one not yet written), so the daemon
loop never waits on the API server. Pods that no longer exist are skipped.

Also :class:`PodContainers`: the ``container_of`` lookup for the Alertmanager sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubernetes import client

from detector.diagnosis.report import describe
from detector.errors import PermanentError, PodguardError
from detector.explain import format_duration
from detector.kinds import EVENT_REASONS as EVENT_REASONS  # re-exported
from detector.remediation.actuator import Actuator, ObjectRef
from detector.settings import AlertingSettings
from detector.sinks.base import SinkContext, SinkSpec
from detector.verdicts import Verdict

log = logging.getLogger("podguard.sinks.k8s_events")



def event_message(v: Verdict) -> str:
    tto = (f"; time to OOM ~{format_duration(v.time_to_oom_s)}"
           if v.time_to_oom_s is not None else "")
    why = v.explanation.text if v.explanation else v.kind
    diag = f" {describe(v.diagnosis)}" if v.diagnosis is not None else ""
    return f"{why}{tto} (score {v.score:.3g} > threshold {v.threshold:.3g}){diag}"


@dataclass
class _Shown:
    kind: str
    event_at: float
    annotated_at: float


class KubernetesEventSink:
    """Verdict Events (see the module docstring)."""

    name = "kubernetes-events"

    def __init__(self, actuator: Actuator, *, settings: AlertingSettings,
                 background: bool = True, queue_max: int = 10000,
                 logger: logging.Logger | None = None) -> None:
        self.log = logger if logger is not None else log
        self.actuator = actuator
        self.settings = settings
        self.clock = actuator.clock
        self.queue_max = queue_max
        self._pending: OrderedDict[tuple[str, str], Verdict] = OrderedDict()
        self._shown: dict[tuple[str, str], _Shown] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self.written = 0
        self.errors = 0
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="podguard-k8s-events")
            self._thread.start()

    def send(self, verdicts: Sequence[Verdict]) -> None:
        now = self.clock()
        with self._lock:
            for v in verdicts:
                key = (v.namespace, v.pod)
                shown = self._shown.get(key)
                if v.stale:
                    continue
                if not v.is_anomaly and (shown is None or shown.kind == "none"):
                    continue  # healthy and never flagged: nothing to say
                if v.is_anomaly and shown is not None and shown.kind == v.kind and (
                        now - shown.annotated_at < self.settings.event_interval_s):
                    continue
                self._pending.pop(key, None)
                self._pending[key] = v
                while len(self._pending) > self.queue_max:
                    self._pending.popitem(last=False)
            if self._pending:
                self._idle.clear()
                self._wake.set()

    def tick(self) -> None:
        """Nothing between steps: the writer thread (or ``flush``) writes what is pending."""

    def flush(self, timeout: float) -> bool:
        if self._thread is None:
            self.write_pending()
            return not self._pending
        deadline = time.monotonic() + timeout
        self._wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                empty = not self._pending
            if empty and self._idle.is_set():
                return True
            self._idle.wait(0.05)
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, timeout))

    # ------------------------------------------------------------------ writing

    def write_pending(self) -> None:
        """Writes what is pending (the background thread calls this)."""
        while True:
            with self._lock:
                if not self._pending:
                    return
                key, v = self._pending.popitem(last=False)
            try:
                self._write(key, v)
                self.written += 1
            except PermanentError as e:
                self.errors += 1
                self.log.error("cannot write the verdict of %s/%s: %s", *key, e)
            except PodguardError as e:  # temporary: keep it unless a newer one came
                self.errors += 1
                self.log.warning("verdict of %s/%s not written yet: %s", *key, e)
                with self._lock:
                    self._pending.setdefault(key, v)
                return

    def _write(self, key: tuple[str, str], v: Verdict) -> None:
        pod = self.actuator.read_pod(v.namespace, v.pod)
        if pod is None or pod.metadata is None:
            self._shown.pop(key, None)
            return
        now = self.clock()
        shown = self._shown.get(key)
        ref = ObjectRef.pod(pod)
        if v.is_anomaly:
            if (shown is None or shown.kind != v.kind
                    or now - shown.event_at >= self.settings.event_interval_s):
                self.actuator.event(ref, EVENT_REASONS.get(v.kind, "AnomalyDetected"),
                                    event_message(v), warning=True)
                event_at = now
            else:
                event_at = shown.event_at
            self._shown[key] = _Shown(v.kind, event_at, now)
        else:
            self.actuator.event(ref, "AnomalyCleared",
                                f"no anomaly any more (score {v.score:.3g}, threshold "
                                f"{v.threshold:.3g})")
            self._shown[key] = _Shown("none", now, now)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            try:
                self.write_pending()
            except Exception:  # never let the thread die
                self.log.exception("writing verdicts to Kubernetes failed")
            with self._lock:
                if not self._pending:
                    self._idle.set()
                    continue
            self._stop.wait(1.0)  # a temporary error: try again shortly
            self._wake.set()


class PodContainers:
    """``container_of(namespace, pod)`` for the Alertmanager sink: the pod's container with
    the largest memory limit (the first one if none has a limit), cached ``ttl_s``."""

    def __init__(self, actuator: Actuator, *, ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.actuator = actuator
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}

    def __call__(self, namespace: str, pod: str) -> str | None:
        now = self.clock()
        hit = self._cache.get((namespace, pod))
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        p = self.actuator.read_pod(namespace, pod)
        name = pick_container(p) if p is not None else None
        self._cache[(namespace, pod)] = (now, name)
        return name


def pick_container(pod: client.V1Pod) -> str | None:
    containers = list(pod.spec.containers or []) if pod.spec else []
    if not containers:
        return None

    def limit(c: client.V1Container) -> float:
        raw = ((c.resources.limits or {}) if c.resources else {}).get("memory")
        return _quantity(str(raw)) if raw else -1.0

    return str(max(containers, key=limit).name)


_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
           "T": 1e12}


def _quantity(text: str) -> float:
    for suffix, mult in sorted(_SUFFIX.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * mult
            except ValueError:
                return -1.0
    try:
        return float(text)
    except ValueError:
        return -1.0


def _build(ctx: SinkContext) -> KubernetesEventSink | None:
    """Events when ``alerting.kubernetes_events`` and a cluster is configured."""
    if not ctx.settings.alerting.kubernetes_events:
        return None
    actuator = ctx.actuator()
    return None if actuator is None else KubernetesEventSink(actuator,
                                                             settings=ctx.settings.alerting)


SINK = SinkSpec("kubernetes-events", _build, cluster=True)
