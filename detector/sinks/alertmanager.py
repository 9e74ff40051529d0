"""Alertmanager sink: verdicts become alerts on Alertmanager's v2 API (``POST /api/v2/alerts``).

Alerts: ``PodMemoryLeak``, ``PodGpuMemoryLeak``, ``PodPreFailureDrift``.

Identity: one incident (a pod flagged, until it is healthy again or gone) keeps one label set
for its whole life: ``alertname, namespace, pod, container, node`` are fixed when it starts,
and ``severity`` is the severity it started with (from the time to OOM: ``critical`` below
``critical_below_s``, ``warning`` below ``warning_below_s`` or when unknown or for drift, else
``info``). What changes while it fires goes to annotations only: ``summary, description,
time_to_oom, time_to_oom_seconds, time_to_oom_low_seconds, time_to_oom_high_seconds,
leak_rate_bytes_per_second, score, threshold, explanation`` (the sentence),
``explanation_json`` (SHAP attribution of each feature), ``runbook_url`` and, when escalated,
``remediation`` (why).

Escalation follows the Alertmanager/kube-prometheus convention: when the time to OOM falls
into a higher severity (or the remediation escalates: ``critical``), a *second* alert fires,
the same labels with the higher ``severity``; the lower one keeps firing unchanged and
Alertmanager's inhibit rule (``deploy/alertmanager/route-example.yml``: critical inhibits
warning/info with equal ``alertname, namespace, pod``) silences it. Escalation is sticky: a
raised severity stays until the incident ends (a time to OOM wobbling around one hour does
not page twice). Nothing resolves or re-fires while an incident escalates; at its end every
alert of it is resolved together. A verdict of another kind on the same pod ends the
incident and starts a new one (another ``alertname``).

Lifecycle, like Prometheus's own: an active alert is re-sent every ``resend_interval_s`` with
``endsAt`` ``resolve_timeout_s`` ahead (alerts of a podguard that died expire by themselves);
it is resolved (``endsAt`` = now) when the pod's verdict is healthy again
(``healthy_to_resolve`` times in a row) or when the pod had no judged verdict for
``gone_after_s`` (gone). After a restart, the first ``send`` adopts the podguard alerts of its
scope Alertmanager still holds (:meth:`AlertmanagerSink.adopt`), labels and severities as they
are, so an incident keeps its identity across the restart and is resolved when its pod is
healthy or gone.

Delivery: every alert goes to each URL (an HA pair of Alertmanagers gets both). Each URL has
its own bounded queue (``queue_max``, coalesced by label set: a newer state of an alert
replaces the queued one) and its own background thread, so one Alertmanager down does not
delay the other. Requests go through :mod:`detector.transport.http` (TLS verified; client
certificate, bearer token or basic auth and extra headers from ``alertmanager_http``). A
failed POST (connection error, 429, 5xx) is retried by the one retry policy
(:mod:`detector.transport.retry`) over the finite ``backoff_s`` list honouring ``Retry-After``
and logging "attempt n/N"; after the last
attempt the alerts stay queued and a new round starts later, so nothing accepted is lost
while the queue has room (overflow drops the oldest and counts them). A 4xx other than 429 is
permanent: those alerts are dropped and counted as rejected. ``flush`` waits until every
queue is empty. Never imports torch. Called by the daemon (``send`` each step) and the
remediation controller (``escalate``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from detector.diagnosis.report import describe
from detector.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    PodguardError,
    TemporaryError,
    TlsError,
)
from detector.explain import format_duration
from detector.kinds import ALERT_NAMES as ALERT_NAMES  # re-exported: the sink's alerts
from detector.kinds import KIND_WORDS
from detector.settings import AlertingSettings
from detector.sinks.base import SinkContext, SinkSpec
from detector.transport.http import LOOPBACK_HOSTS, HttpClient, build_session
from detector.transport.retry import retrying
from detector.verdicts import Verdict

log = logging.getLogger("podguard.sinks.alertmanager")

_WHAT = KIND_WORDS

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
"""Severities in rising order; a higher one inhibits the lower ones of the same pod."""

ContainerOf = Callable[[str, str], str | None]
"""``container_of(namespace, pod)``: the container to name in the alert (None: unknown)."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class _Closing(Exception):
    """Raised out of a backoff wait when the sink is closing."""


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


@dataclass
class _Active:
    """One incident: its fixed labels (no severity) and the alert of each severity raised."""

    labels: dict[str, str]  # fixed for the incident's life, ``severity`` excluded
    annotations: dict[str, str]
    starts_at: dict[str, float]  # severity -> startsAt of that alert, in raising order
    last_sent: float
    last_seen: float
    verdict: Verdict | None  # None: adopted from Alertmanager after a restart
    healthy: int = 0  # consecutive healthy verdicts since the last positive one

    @property
    def severity(self) -> str:
        """The highest severity raised."""
        return max(self.starts_at, key=_rank)

    def raise_to(self, severity: str, now: float) -> bool:
        """Adds the alert of ``severity`` if higher than every one raised; True if added."""
        if _rank(severity) <= max(_rank(s) for s in self.starts_at):
            return False
        self.starts_at[severity] = now
        return True

    def alert_labels(self) -> list[dict[str, str]]:
        return [{**self.labels, "severity": sev} if sev else dict(self.labels)
                for sev in self.starts_at]


@dataclass
class _Target:
    url: str
    client: HttpClient
    pending: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)
    sent: int = 0  # alerts accepted by this Alertmanager
    dropped: int = 0  # alerts dropped because the queue was full
    rejected: int = 0  # alerts refused with a permanent 4xx
    failures: int = 0  # failed POSTs
    thread: threading.Thread | None = None


class AlertmanagerSink:
    """Sends verdicts as alerts to one or more Alertmanagers (see the module docstring)."""

    name = "alertmanager"

    def __init__(self, urls: Sequence[str] | None = None, *, settings: AlertingSettings,
                 container_of: ContainerOf | None = None,
                 session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] | None = None,
                 background: bool = True, generator_url: str = "",
                 adopt_matchers: Sequence[str] | None = None,
                 logger: logging.Logger | None = None) -> None:
        urls = list(settings.alertmanager_urls if urls is None else urls)
        if not urls:
            raise ValueError("AlertmanagerSink needs at least one Alertmanager URL")
        self.log = logger if logger is not None else log
        self.settings = settings
        self.container_of = container_of
        self.clock = clock
        self._sleep = sleep  # injected (fake time in tests); None: real waits, interruptible
        self.generator_url = generator_url
        where = "alerting.alertmanager_http"
        if session is None:  # one session (TLS, auth, headers) shared by every URL
            session = build_session(settings.alertmanager_http, where=where,
                                    url=urls[0] if len(urls) == 1 else "")
            if all((urlsplit(u).hostname or "") in LOOPBACK_HOSTS for u in urls):
                session.trust_env = False  # no proxy between us and a loopback Alertmanager
        self.session = session
        self.targets = [_Target(u.rstrip("/"), HttpClient(
            u, settings.alertmanager_http, where=where, timeout_s=settings.timeout_s,
            session=session)) for u in urls]
        self._active: dict[tuple[str, str], _Active] = {}
        self._escalated: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._closed = False
        self.adopt_matchers = None if adopt_matchers is None else list(adopt_matchers)
        self._adopted = adopt_matchers is None  # nothing to adopt without a scope
        self.background = background
        if background:
            for t in self.targets:
                t.idle.set()
                t.thread = threading.Thread(target=self._run, args=(t,), daemon=True,
                                            name=f"podguard-alertmanager-{t.url}")
                t.thread.start()

    # ------------------------------------------------------------------ Sink

    def send(self, verdicts: Sequence[Verdict]) -> None:
        now = self.clock()
        if not self._adopted:
            self.adopt()
        for v in verdicts:
            key = (v.namespace, v.pod)
            if v.stale:
                continue
            if v.is_anomaly and v.kind in ALERT_NAMES:
                self._fire(key, v, now)
            elif key in self._active:
                a = self._active[key]
                a.healthy += 1
                a.last_seen = now
                if a.healthy >= self.settings.healthy_to_resolve:
                    self._resolve(key, now, "healthy again")
        for key, a in list(self._active.items()):
            if now - a.last_seen > self.settings.gone_after_s:
                silent = format_duration(now - a.last_seen)
                self._resolve(key, now, f"no judged verdict for {silent}")
            elif now - a.last_sent >= self.settings.resend_interval_s:
                self._send_all(a, now)

    def escalate(self, namespace: str, pod: str, reason: str,
                 verdict: Verdict | None = None) -> None:
        """Raise the pod's incident to ``critical`` (its ``critical`` alert fires beside the
        lower one) with ``reason`` in annotation ``remediation`` (idempotent; fires the
        incident from ``verdict`` if none is active yet)."""
        key = (namespace, pod)
        self._escalated[key] = reason
        now = self.clock()
        a = self._active.get(key)
        if verdict is not None and verdict.is_anomaly and verdict.kind in ALERT_NAMES:
            self._fire(key, verdict, now, seen=a is None)
        elif a is not None and a.verdict is not None:
            self._fire(key, a.verdict, now, seen=False)
        elif a is not None:  # adopted, no verdict yet: raise what Alertmanager has
            if a.raise_to("critical", now):
                self.log.info("alert %s %s/%s escalates to critical", a.labels["alertname"],
                              *key)
            a.annotations = {**a.annotations, "remediation": reason}
            self._send_all(a, now)

    def adopt(self) -> int:
        """Takes over the active alerts of a previous podguard run from Alertmanager (the
        first URL that answers), so they are re-sent and resolved like its own: a pod gone
        while podguard was down gets its alert resolved after ``gone_after_s``. Only alerts
        matching ``adopt_matchers`` (this instance's scope, e.g. ``node="n1"`` for a per-node
        daemon; ``[]``: every podguard alert) are taken. Called by the first ``send`` when a
        scope was given; returns how many alerts were adopted."""
        self._adopted = True
        names = "|".join(ALERT_NAMES.values())
        filters = [f'alertname=~"{names}"', *(self.adopt_matchers or [])]
        now = self.clock()
        for t in self.targets:
            try:
                resp = t.client.request(
                    "GET", "/api/v2/alerts",
                    params={"active": "true", "silenced": "true", "inhibited": "true",
                            "filter": filters},
                    timeout_s=min(self.settings.timeout_s, 3.0))
                found = resp.json()
            except (PodguardError, ValueError) as e:
                self.log.info("could not adopt alerts from %s: %s", t.url, e)
                continue
            n = 0
            taken: set[tuple[str, str]] = set()
            for alert in found if isinstance(found, list) else []:
                if not isinstance(alert, dict):
                    continue
                labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
                key = (labels.get("namespace", ""), labels.get("pod", ""))
                severity = labels.pop("severity", "")
                if not all(key) or (key in self._active and key not in taken):
                    continue
                try:
                    starts = datetime.fromisoformat(
                        str(alert["startsAt"]).replace("Z", "+00:00")).timestamp()
                except (KeyError, ValueError):
                    starts = now
                ann = {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()}
                a = self._active.get(key)
                if a is None:
                    self._active[key] = _Active(labels, ann, starts_at={severity: starts},
                                                last_sent=now, last_seen=now, verdict=None)
                    taken.add(key)
                    n += 1
                elif a.labels == labels:  # another severity of the same incident
                    a.starts_at[severity] = starts
                    a.starts_at = dict(sorted(a.starts_at.items(), key=lambda kv: _rank(kv[0])))
            if n:
                self.log.info("adopted %d active alert(s) from %s", n, t.url)
            return n
        return 0

    def tick(self) -> None:
        """Between steps: re-sends due alerts and resolves those whose pods are no longer
        scored (``send`` of no verdicts)."""
        self.send([])

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self.background:
            for t in self.targets:
                self.deliver(t)
            return all(not t.pending for t in self.targets)
        for t in self.targets:
            t.wake.set()
        for t in self.targets:
            while True:
                with t.lock:
                    empty = not t.pending
                if empty and t.idle.is_set():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                t.idle.wait(min(left, 0.05))
                time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._stop.set()
        for t in self.targets:
            t.wake.set()
            if t.thread is not None:
                t.thread.join(timeout=max(0.1, timeout))

    # ------------------------------------------------------------------ state

    def pending(self) -> dict[str, int]:
        """Alerts queued per Alertmanager URL."""
        out = {}
        for t in self.targets:
            with t.lock:
                out[t.url] = len(t.pending)
        return out

    def active(self) -> dict[tuple[str, str], dict[str, str]]:
        """Labels of the highest-severity active alert of each pod."""
        return {k: {**a.labels, "severity": a.severity} for k, a in self._active.items()}

    def alerts(self) -> dict[tuple[str, str], list[dict[str, str]]]:
        """Labels of every active alert of each pod's incident, lowest severity first."""
        return {k: a.alert_labels() for k, a in self._active.items()}

    def severity(self, v: Verdict) -> str:
        if v.kind == "drift" or v.time_to_oom_s is None or not math.isfinite(v.time_to_oom_s):
            return "warning"
        if v.time_to_oom_s < self.settings.critical_below_s:
            return "critical"
        if v.time_to_oom_s < self.settings.warning_below_s:
            return "warning"
        return "info"

    def _labels(self, v: Verdict) -> dict[str, str]:
        """The incident's fixed labels (``severity`` is added per alert)."""
        container = None
        if self.container_of is not None:
            try:
                container = self.container_of(v.namespace, v.pod)
            except Exception as e:  # a lookup problem must not lose the alert
                self.log.warning("container of %s/%s unknown: %s", v.namespace, v.pod, e)
        labels = {
            "alertname": ALERT_NAMES[v.kind], "namespace": v.namespace, "pod": v.pod,
            "container": container or "", "node": v.node,
        }
        return {k: val for k, val in labels.items() if val}

    def _wanted(self, v: Verdict) -> str:
        return "critical" if (v.namespace, v.pod) in self._escalated else self.severity(v)

    def _annotations(self, v: Verdict) -> dict[str, str]:
        alertname = ALERT_NAMES[v.kind]
        what = _WHAT[v.kind]
        ex = v.explanation
        tto = v.time_to_oom_s
        tto_text = "unknown"
        if tto is not None and math.isfinite(tto):
            tto_text = f"~{format_duration(tto)}"
            if v.time_to_oom_range_s is not None:
                lo, hi = v.time_to_oom_range_s
                if math.isfinite(lo) and math.isfinite(hi):
                    tto_text += f" (range {format_duration(lo)} to {format_duration(hi)})"
        summary = f"{what} in {v.namespace}/{v.pod}" + (
            f": OOM in ~{format_duration(tto)}" if tto is not None and math.isfinite(tto)
            else "")
        rate = (f" Leak rate {v.leak_rate_bytes_per_s / 2**20:.2f} MiB/s."
                if v.leak_rate_bytes_per_s is not None
                and math.isfinite(v.leak_rate_bytes_per_s) else "")
        desc = (f"podguard flagged pod {v.namespace}/{v.pod} on node {v.node or 'unknown'}: "
                f"{ex.text if ex else v.kind}. Score {v.score:.3g} over threshold "
                f"{v.threshold:.3g}.{rate} Time to OOM: {tto_text}.")
        ann = {
            "summary": summary,
            "description": desc,
            "time_to_oom": tto_text,
            "explanation": ex.text if ex else "",
            "explanation_json": json.dumps(
                {k: round(float(x), 6) for k, x in sorted(
                    (ex.features if ex else {}).items(), key=lambda kv: -abs(kv[1]))},
                separators=(",", ":")),
            "runbook_url": self.settings.runbook_url.replace("{alertname}", alertname),
        }
        if tto is not None and math.isfinite(tto):
            ann["time_to_oom_seconds"] = f"{tto:.0f}"
            if v.time_to_oom_range_s is not None:
                lo, hi = v.time_to_oom_range_s
                if math.isfinite(lo):
                    ann["time_to_oom_low_seconds"] = f"{lo:.0f}"
                if math.isfinite(hi):
                    ann["time_to_oom_high_seconds"] = f"{hi:.0f}"
        if v.leak_rate_bytes_per_s is not None and math.isfinite(v.leak_rate_bytes_per_s):
            ann["leak_rate_bytes_per_second"] = f"{v.leak_rate_bytes_per_s:.6g}"
        if math.isfinite(v.score):
            ann["score"] = f"{v.score:.6g}"
        if math.isfinite(v.threshold):
            ann["threshold"] = f"{v.threshold:.6g}"
        if v.diagnosis is not None:  # the pod's own answer (detector.diagnosis), bounded
            ann["diagnosis"] = describe(v.diagnosis)
            ann["description"] = f"{ann['description']} {ann['diagnosis']}"
        reason = self._escalated.get((v.namespace, v.pod))
        if reason:
            ann["remediation"] = reason
        return ann

    def _fire(self, key: tuple[str, str], v: Verdict, now: float, *, seen: bool = True) -> None:
        ann = self._annotations(v)
        wanted = self._wanted(v)
        a = self._active.get(key)
        if a is not None and a.labels["alertname"] != ALERT_NAMES[v.kind]:
            reason = self._escalated.get(key)
            self._resolve(key, now, f"the verdict is now {v.kind}: a new incident")
            if reason is not None:
                self._escalated[key] = reason
            a = None
        changed = False
        if a is None:
            labels = self._labels(v)
            a = _Active(labels, ann, starts_at={wanted: min(v.ts, now)}, last_sent=-math.inf,
                        last_seen=now, verdict=v)
            self._active[key] = a
            self.log.info("alert %s %s/%s fires (%s)", labels["alertname"], *key, wanted)
        elif a.raise_to(wanted, now):
            changed = True
            self.log.info("alert %s %s/%s escalates to %s", a.labels["alertname"], *key,
                          wanted)
        changed = changed or a.annotations != ann
        a.annotations, a.verdict = ann, v
        if seen:
            a.last_seen = now
            a.healthy = 0
        if changed or now - a.last_sent >= self.settings.resend_interval_s:
            self._send_all(a, now)

    def _send_all(self, a: _Active, now: float) -> None:
        for payload in self._payloads(a, now, resolved=False):
            self._enqueue(payload)
        a.last_sent = now

    def _resolve(self, key: tuple[str, str], now: float, why: str) -> None:
        a = self._active.pop(key)
        self._escalated.pop(key, None)
        self.log.info("alert %s %s/%s resolved: %s", a.labels["alertname"], *key, why)
        for payload in self._payloads(a, now, resolved=True):
            self._enqueue(payload)

    def _payloads(self, a: _Active, now: float, *, resolved: bool) -> list[dict[str, Any]]:
        """One alert per severity raised: the same labels but ``severity``, the same
        annotations."""
        ends = now if resolved else now + self.settings.resolve_timeout_s
        out = []
        for severity, starts in a.starts_at.items():
            labels = dict(a.labels)
            if severity:
                labels["severity"] = severity
            alert: dict[str, Any] = {"labels": labels, "annotations": dict(a.annotations),
                                     "startsAt": _iso(starts), "endsAt": _iso(ends)}
            if self.generator_url:
                alert["generatorURL"] = self.generator_url
            out.append(alert)
        return out

    # ------------------------------------------------------------------ delivery

    def _enqueue(self, alert: dict[str, Any]) -> None:
        fp = json.dumps(sorted(alert["labels"].items()))
        for t in self.targets:
            with t.lock:
                t.pending.pop(fp, None)
                t.pending[fp] = alert
                while len(t.pending) > self.settings.queue_max:
                    t.pending.popitem(last=False)
                    t.dropped += 1
                    self.log.warning("alert queue of %s full (%d): dropped the oldest alert",
                                t.url, self.settings.queue_max)
                t.idle.clear()
            t.wake.set()

    def _post(self, t: _Target, alerts: list[dict[str, Any]]) -> None:
        """One POST; TemporaryError (no answer, 429, 5xx with Retry-After) or PermanentError
        (other 4xx, bad credentials, a certificate that does not verify)."""
        t.client.request("POST", "/api/v2/alerts", json=alerts)

    def _wait(self, seconds: float) -> bool:
        """Waits (fake time if a sleep was injected); True when the sink is closing."""
        if self._sleep is not None:
            self._sleep(seconds)
            return self._stop.is_set()
        return self._stop.wait(seconds)

    def _backoff_wait(self, seconds: float) -> None:
        if self._wait(seconds):
            raise _Closing

    def deliver(self, t: _Target) -> bool:
        """One delivery round to ``t``: True when its queue is empty afterwards. Each batch
        is retried by the one retry policy (:func:`detector.transport.retry.retrying`) over
        ``backoff_s``; a permanent refusal drops the batch (counted as rejected)."""
        attempts = len(self.settings.backoff_s) + 1
        while True:
            with t.lock:
                batch = list(t.pending.items())[: self.settings.batch_max]
            if not batch:
                return True

            def post(batch: list[tuple[str, dict[str, Any]]] = batch) -> None:
                try:
                    self._post(t, [a for _, a in batch])
                except TemporaryError:
                    t.failures += 1
                    raise

            try:
                retrying(post, delays=self.settings.backoff_s, what=f"alerts to {t.url}",
                         log=self.log, sleep=self._backoff_wait)
            except _Closing:
                return False
            except (AuthError, TlsError, ConfigError) as e:  # our side is wrong, not the alerts
                t.failures += 1
                self.log.error("%s; %d alert(s) stay queued until this is fixed", e,
                               len(t.pending))
                return False
            except PermanentError as e:
                self.log.error("%s; dropping %d alert(s)", e, len(batch))
                self._take(t, batch)
                t.rejected += len(batch)
                continue
            except TemporaryError as e:
                self.log.warning("%s; attempt %d/%d: giving up this round, %d alert(s) stay "
                                 "queued", e, attempts, attempts, len(t.pending))
                return False
            self._take(t, batch)
            t.sent += len(batch)

    @staticmethod
    def _take(t: _Target, batch: list[tuple[str, dict[str, Any]]]) -> None:
        with t.lock:
            for fp, alert in batch:
                if t.pending.get(fp) is alert:
                    del t.pending[fp]

    def _run(self, t: _Target) -> None:
        while not self._stop.is_set():
            t.wake.wait()
            t.wake.clear()
            if self._stop.is_set():
                break
            t.idle.clear()
            try:
                ok = self.deliver(t)
            except Exception:  # never let the thread die: the queue would stop draining
                self.log.exception("delivery to %s failed", t.url)
                ok = False
            if not ok and not self._stop.is_set():
                t.idle.set()
                if not self._wait(self.settings.backoff_s[-1]):
                    t.wake.set()
                continue
            with t.lock:
                if not t.pending:
                    t.idle.set()
                else:
                    t.wake.set()


def _build(ctx: SinkContext) -> AlertmanagerSink | None:
    """Alerts when ``alerting.alertmanager_urls`` are given. Alerts of a previous run are
    adopted only where this daemon judges a node's pods (a source that ``adopts_node_alerts``,
    the Prometheus one): members of a Kafka group own partitions, not nodes, and one adopting
    its node's alerts would resolve those another member judges (a flap). Without adoption
    Alertmanager still keeps an alert's startsAt when it is re-sent."""
    settings = ctx.settings
    if not settings.alerting.alertmanager_urls:
        return None
    container_of = None
    actuator = ctx.actuator()
    if actuator is not None:
        from detector.sinks.k8s_events import PodContainers

        container_of = PodContainers(actuator)
    node = settings.sources.prometheus.node()
    scoped = ctx.adopts_node_alerts and node
    return AlertmanagerSink(settings=settings.alerting, container_of=container_of,
                            adopt_matchers=[f'node="{node}"'] if scoped else None)


SINK = SinkSpec("alertmanager", _build, cluster=True)
