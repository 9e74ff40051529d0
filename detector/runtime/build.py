"""``podguard run``: builds the daemon from the settings and runs it.

Called by :mod:`detector.cli` (``run`` sub-command, imported lazily). The source is the one
``sources.kind`` names, built by its module's ``SOURCE`` (a
:class:`detector.sources.base.SourceSpec`, found through its settings section): this module
names no source. With no configuration it is the embedded default: real training loops, one
leaking, sampled in compressed time; verdicts go to the console and a JSON-lines file and
remediation is a printed dry-run plan. A source watching a cluster sends alerts to the
Alertmanager sink and Kubernetes Events when configured, and remediation to the controller
(its own ``dry_run`` honoured) when ``remediation.enabled``.

SIGTERM and SIGINT stop the loop; sinks are flushed and the source closed within
``runtime.grace_period_s``. ``--duration`` stops it after so many seconds and prints a summary:
what was detected, when and why.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

from prometheus_client import CollectorRegistry

from detector.errors import ServiceUnavailableError
from detector.explain import format_duration
from detector.settings import Settings, SourcesSettings, load_settings
from detector.sinks.base import Escalates, Sink, SinkContext, SynchronousSink, sink_specs
from detector.sources.base import Describe, Source, source_spec
from detector.verdicts import Explanation, Verdict
from detector.windows import WindowEngine

from .daemon import Daemon, RunSummary, clock_rate
from .hooks import DryRunPlan, OnChange, RemediationHook
from .logs import setup_logging
from .metrics import DaemonMetrics, StateView
from .models import ModelWatcher
from .server import MetricsServer


def make_engine(settings: Settings) -> WindowEngine:
    w = settings.windows
    return WindowEngine(horizon_s=w.horizon_s, step_s=w.step_s, pod_ttl_s=w.pod_ttl_s)


def make_source(settings: Settings, *, logger: logging.Logger,
                out_dir: Path | None = None) -> Source:
    """The source ``sources.kind`` names, built by its module's ``SOURCE``
    (:func:`detector.sources.base.source_spec`)."""
    return source_spec(settings).build(settings, logger.getChild("source"), out_dir)


def cluster_actuator(settings: Settings, logger: logging.Logger) -> Callable[[], Any]:
    """The cluster's one :class:`detector.remediation.actuator.Actuator` (every Event and
    mutation of this daemon: the sinks', the remediation controller's, the in-pod diagnosis'),
    built on the first call and shared by the later ones; None without a Kubernetes
    configuration."""
    made: list[Any] = []

    def get_actuator() -> Any:
        if not made:
            api = _kube_api(logger)
            if api is None:
                made.append(None)
            else:
                from detector.remediation.actuator import Actuator

                made.append(Actuator(api, settings=settings.remediation,
                                     event_interval_s=settings.alerting.event_interval_s))
        return made[0]

    return get_actuator


def make_outputs(settings: Settings, *, logger: logging.Logger, out_dir: Path | None,
                 stream: IO[str] | None = None, real_seconds: Callable[[float], float] =
                 lambda s: s, diagnosis_channel: Any = None,
                 actuator: Callable[[], Any] | None = None,
                 ) -> tuple[list[Sink], RemediationHook | None]:
    """The sinks the settings ask for (each sink module's ``SINK``, in
    :data:`detector.sinks.base.SINK_MODULES` order) and the remediation hook
    (``diagnosis_channel``: a :class:`detector.diagnosis.requester.ChannelRequests` served on
    the pod channel too; ``actuator``: a :func:`cluster_actuator`, a new one if not given).
    The embedded default gets no cluster sink, its console thinned to one line per
    unchanged alert a real minute, and a printed dry-run plan."""
    spec = source_spec(settings)
    get_actuator = actuator if actuator is not None else cluster_actuator(settings, logger)
    ctx = SinkContext(settings=settings, logger=logger, out_dir=out_dir, stream=stream,
                      adopts_node_alerts=spec.adopts_node_alerts, actuator=get_actuator)
    sinks: list[Sink] = []
    for sink_spec in sink_specs():
        if spec.embedded and sink_spec.cluster:
            continue
        sink = sink_spec.build(ctx)
        if sink is None:
            continue
        if spec.embedded and sink_spec.thinned:
            sink = OnChange(sink, every_s=60.0 * real_seconds_inverse(real_seconds))
        sinks.append(sink)
    hook: RemediationHook | None
    if spec.embedded:
        hook = DryRunPlan(settings.remediation, stream=stream,
                          real_seconds=real_seconds) if settings.runtime.remediation_dry_run \
            else None
        return sinks, hook
    hook = None
    act = get_actuator() if settings.remediation.enabled else None
    am = next((s for s in sinks if isinstance(s, Escalates)), None)
    if act is not None:
        from detector.remediation.channel import ChannelServer, TokenReviewer
        from detector.remediation.controller import RemediationController

        rs = settings.remediation
        node = settings.sources.prometheus.node()
        controller = RemediationController(
            act, settings=rs, node=node, escalate=am.escalate if am is not None else None,
            store=None if rs.namespace else _store(act, logger))
        # the pod channel (checkpoint requests and answers), a daemon thread of this process
        kinds: list[Any] = [controller]
        if diagnosis_channel is not None:  # the in-pod diagnosis rides the same channel
            kinds.append(diagnosis_channel.server_kind())
        ChannelServer(TokenReviewer(act, audience=rs.channel_audience), kinds,
                      host=rs.channel_host, port=rs.channel_port,
                      tls_cert_file=rs.channel_tls_cert_file,
                      tls_key_file=rs.channel_tls_key_file, logger=logger).start()
        hook = controller
    return sinks, hook


def _store(actuator: Any, logger: logging.Logger) -> Any:
    """podguard's record store in POD_NAMESPACE (remediation.namespace unset)."""
    from detector.remediation.store import RecordStore

    return RecordStore(actuator, os.environ.get("POD_NAMESPACE") or "podguard", logger=logger)


def real_seconds_inverse(real_seconds: Callable[[float], float]) -> float:
    """Source-clock seconds per real second, from a real_seconds conversion."""
    one = real_seconds(1.0)
    return 1.0 / one if one > 0 else 1.0


def _kube_api(logger: logging.Logger) -> Any:
    """An API client (in-cluster, else KUBECONFIG/~/.kube/config); None if there is none."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            logger.warning("no Kubernetes configuration: Events and remediation are off",
                           extra={"error": str(e)})
            return None
    return client.ApiClient()


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_RATE = re.compile(r"([+-])(\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB)/h")
_DURATION = re.compile(r"\b(for |in ~|after |over )(\d+(?:\.\d+)?) (s|min|h|d)\b")
_RANGE = re.compile(r"\((\d+(?:\.\d+)?) (s|min|h|d)-(\d+(?:\.\d+)?) (s|min|h|d)\)")
_UNIT_S = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def real_clock_text(text: str, scale: float) -> str:
    """An explanation sentence written in the telemetry's (compressed) clock, in real time:
    durations ("for 3 h", "OOM in ~2.1 h") divided by ``scale``, growth rates ("+410 MiB/h")
    multiplied by it, in the formats of :func:`detector.explain.format_duration` and
    :func:`detector.explain.format_rate` (the only ones the sentences use)."""
    from detector.explain import format_bytes

    def duration(m: re.Match[str]) -> str:
        seconds = float(m.group(2)) * _UNIT_S[m.group(3)] / scale
        return f"{m.group(1)}{format_duration(seconds)}"

    def rate(m: re.Match[str]) -> str:
        per_h = float(m.group(2)) * 1024.0 ** _UNITS.index(m.group(3)) * scale
        return f"{m.group(1)}{format_bytes(per_h)}/h"

    def span(m: re.Match[str]) -> str:  # a time-to-OOM range "(25 min-50 min)"
        lo = float(m.group(1)) * _UNIT_S[m.group(2)] / scale
        hi = float(m.group(3)) * _UNIT_S[m.group(4)] / scale
        return f"({format_duration(lo)}-{format_duration(hi)})"

    return _RATE.sub(rate, _DURATION.sub(duration, _RANGE.sub(span, text)))


class Progress(SynchronousSink):
    """The embedded default's progress line until its first alarm (a console "sink").

    A leak is judged once a pod has ``judge_after_s`` of telemetry (the trend detector's
    fast path: 5 min, five real seconds at 60x; the slow path needs hours), so for the first
    minutes nothing is printed but the start-up lines; every ``every_s`` real seconds this
    says how many pods are being scored, how long the oldest has been watched and how long
    until it can be judged, in real seconds. Silent once anything was flagged.
    """

    name = "progress"

    def __init__(self, stream: IO[str], *, scale: float, judge_after_s: float,
                 every_s: float = 20.0, wall: Callable[[], float] = time.time) -> None:
        self.stream, self.scale, self.every_s, self.wall = stream, scale, every_s, wall
        self.judge_after_real = judge_after_s / scale
        self.t0 = self.last = wall()
        self.first: dict[tuple[str, str], float] = {}
        self.alarmed = False

    def line(self, now: float) -> str:
        pods = len(self.first)
        if not pods:
            return f"podguard run: +{now - self.t0:.0f} s: waiting for the first samples"
        oldest = now - min(self.first.values())
        left = max(0.0, self.judge_after_real - oldest)
        when = f"in ~{left:.0f} s" if left > 0 else "from now on"
        return (f"podguard run: +{now - self.t0:.0f} s: {pods} pods scored every step, no "
                f"alarm yet; a pod is judged for leaks once watched for "
                f"{self.judge_after_real:.0f} s, the oldest for {oldest:.0f} s (judged {when})")

    def send(self, verdicts: Sequence[Verdict]) -> None:
        if self.alarmed:
            return
        now = self.wall()
        for v in verdicts:
            self.first.setdefault((v.namespace, v.pod), now)
        if any(v.is_anomaly for v in verdicts):
            self.alarmed = True
            return
        if now - self.last >= self.every_s:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)


def time_presenter(source: Source) -> Callable[[Verdict], Verdict] | None:
    """For a compressed clock: verdict times, rates and times to OOM in real units."""
    scale = clock_rate(source)
    if scale == 1.0:
        return None
    t0, now_src = time.time(), source.now()

    def present(v: Verdict) -> Verdict:
        def real(x: float | None) -> float | None:
            return None if x is None else x / scale

        rng = v.time_to_oom_range_s
        ex = v.explanation
        if ex is not None:  # one clock in every line a person reads: the real one
            ex = Explanation(text=real_clock_text(ex.text, scale), features=ex.features)
        return replace(
            v, ts=t0 + (v.ts - now_src) / scale,
            time_to_oom_s=real(v.time_to_oom_s),
            time_to_oom_range_s=None if rng is None else (rng[0] / scale, rng[1] / scale),
            leak_rate_bytes_per_s=(None if v.leak_rate_bytes_per_s is None
                                   else v.leak_rate_bytes_per_s * scale),
            explanation=ex)

    return present


def run_command(args: argparse.Namespace, *, stream: IO[str] | None = None) -> int:
    out = stream if stream is not None else sys.stdout
    settings = load_settings(args.config)
    embedded_kind = SourcesSettings.model_fields["kind"].default  # the embedded default
    if args.embedded and settings.sources.kind != embedded_kind:
        settings = settings.model_copy(update={
            "sources": settings.sources.model_copy(update={"kind": embedded_kind})})
    if args.port is not None:
        settings = settings.model_copy(update={
            "server": settings.server.model_copy(update={"port": args.port})})
    spec = source_spec(settings)
    out_dir = args.out if args.out is not None else spec.default_out_dir
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    log = setup_logging(fmt=settings.runtime.log_format, level=settings.runtime.log_level)
    registry = CollectorRegistry()
    view = StateView()
    metrics = DaemonMetrics(registry, view, pod_min_ratio=settings.server.pod_metrics_min_ratio,
                            pod_max=settings.server.pod_metrics_max_pods)
    watcher = ModelWatcher(settings.model.root or None, detection=settings.detection,
                           logger=log.getChild("model"), watch_s=settings.model.watch_s)
    pipeline = watcher.load()
    source = make_source(settings, logger=log, out_dir=out_dir)
    scale = clock_rate(source)
    diag_channel = None
    if settings.diagnosis.enabled and not spec.embedded and settings.remediation.enabled:
        from detector.diagnosis.requester import ChannelRequests

        diag_channel = ChannelRequests()
    actuator = cluster_actuator(settings, log)  # the sinks', remediation's and diagnosis'
    sinks, hook = make_outputs(settings, logger=log, out_dir=out_dir, stream=out,
                               real_seconds=lambda s: s / scale,
                               diagnosis_channel=diag_channel, actuator=actuator)
    daemon = Daemon(settings=settings, source=source, pipeline=pipeline,
                    engine=make_engine(settings), sinks=sinks, metrics=metrics, logger=log,
                    remediation=hook, models=watcher)
    daemon.diagnosis = make_diagnosis(settings, logger=log, out_dir=out_dir,
                                      channel=diag_channel, actuator=actuator)
    server = None
    if settings.server.enabled:
        server = MetricsServer(host=settings.server.host, port=settings.server.port,
                               registry=registry, healthy=daemon.healthy,
                               ready=daemon.ready, timeout_s=settings.server.timeout_s,
                               max_connections=settings.server.max_connections,
                               logger=log.getChild("http")).start()
        log.info("serving /metrics /healthz /readyz", extra={"url": server.url})

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        daemon.stop(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if spec.banner is not None:
            print(spec.banner(source, pipeline.version, scale), file=out, flush=True)
        source.start()
        daemon.present = time_presenter(source)
        if spec.embedded and settings.runtime.console:
            trend = pipeline.trend
            daemon.sinks.append(Progress(out, scale=scale,
                                         judge_after_s=trend.fast_min_s))
        summary = daemon.run(duration_s=args.duration)
    except ServiceUnavailableError:
        daemon.shutdown()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if server is not None:
            server.close()
    if daemon.diagnosis is not None:
        daemon.diagnosis.poll()  # an answer that came during the last seconds
    print_summary(summary, source, out=out,
                  diagnosis=daemon.diagnosis.state if daemon.diagnosis is not None else None,
                  describe=spec.describe)
    return 0


def make_diagnosis(settings: Settings, *, logger: logging.Logger, out_dir: Path | None,
                   channel: Any = None, actuator: Callable[[], Any] | None = None) -> Any:
    """The in-pod diagnosis requester (:mod:`detector.diagnosis.requester`), or None: for the
    embedded default over files next to its training loops (its window shortened to 8 s, the
    wait to 30 s: time runs compressed there); in a cluster over podguard's pod channel
    (``channel``, served with the checkpoint protocol in the remediate mode). Alert-only runs
    no pod channel: leak verdicts then say that no diagnosis can be asked for. Its Events
    go through ``actuator`` (a :func:`cluster_actuator`, a new one if not given)."""
    d = settings.diagnosis
    if not d.enabled:
        return None
    from detector.diagnosis.requester import DiagnosisRequester, FileRequests

    log = logger.getChild("diagnosis")
    if source_spec(settings).embedded:
        if out_dir is None:
            return None
        local = d.model_copy(update={"window_s": min(d.window_s, 8.0),
                                     "timeout_s": min(d.timeout_s, 30.0)})
        return DiagnosisRequester(FileRequests(out_dir / "workloads" / "diagnosis"), local,
                                  logger=log)
    event = None
    if settings.alerting.kubernetes_events:
        act = (actuator if actuator is not None else cluster_actuator(settings, logger))()
    else:
        act = None
    if act is not None:
        from detector.remediation.actuator import ObjectRef

        def event(ns: str, pod: str, reason: str, message: str, warning: bool) -> None:
            act.event(ObjectRef("Pod", pod, ns), reason, message, warning=warning)

    return DiagnosisRequester(channel, d, event=event, logger=log)


def print_summary(summary: RunSummary, source: Source, *, out: IO[str],
                  diagnosis: Callable[[str, str], dict[str, Any] | None] | None = None,
                  describe: Describe | None = None) -> None:
    """What was detected, when and why; ``describe``: the source's own lines (its spec's,
    e.g. the embedded default's per workload) instead of one line per flagged pod."""
    scale = clock_rate(source)
    lines = ["", f"podguard run summary ({summary.stop_reason}): "
                 f"{summary.evaluations} steps scored, {summary.samples:,} samples folded, "
                 f"{sum(summary.rejected.values()):,} refused, "
                 f"{summary.dead_lettered:,} dead-lettered; model "
                 f"{' -> '.join(summary.model_versions)}"]
    t_start = summary.started
    if describe is not None:
        lines += describe(source, summary, scale, diagnosis)
    else:
        for (ns, pod), det in sorted(summary.first.items()):
            v = det.verdict
            tto = (f", OOM in ~{format_duration(v.time_to_oom_s)}"
                   if v.time_to_oom_s is not None else "")
            lines.append(f"  {ns}/{pod}: {v.kind} at +{det.wall_time - t_start:.0f} s{tto}")
            if v.explanation is not None:
                lines.append(f"      why: {v.explanation.text}")
            if diagnosis is not None and (d := diagnosis(ns, pod)) is not None:
                lines.append(f"      what grows: {_diagnosis_line(d)}")
        if not summary.first:
            lines.append("  no pod flagged")
    print("\n".join(lines), file=out, flush=True)


def _diagnosis_line(d: dict[str, Any]) -> str:
    from detector.diagnosis.report import describe

    return describe(d, limit=1000)
