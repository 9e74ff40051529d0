"""The daemon's own metrics, registered on an injected registry.

Names follow ``podguard_<subsystem>_<name>_<unit>``. Counters and the scoring histogram are
updated by :class:`detector.runtime.daemon.Daemon`; everything that describes current state
(model version and creation time, source health and lag, pods watched, pods flagged now)
comes from a collector that reads the daemon at scrape time, so a pod that is gone or a model
that was replaced does not linger as a stale series.

Per-pod gauges (labels ``namespace, pod``; the workload's, so the ServiceMonitor scrapes with
``honorLabels: true`` as kube-state-metrics does), from the latest judged verdict of each
pod, built at scrape time: ``podguard_pod_score``, ``podguard_pod_threshold``,
``podguard_pod_time_to_oom_seconds`` with ``_low_seconds``/``_high_seconds`` (its range),
``podguard_pod_leak_rate_bytes_per_second`` (only where known) and
``podguard_pod_verdict{kind}`` (1; ``kind="none"`` for a pod near its threshold). Cardinality
is bounded: only pods with a positive verdict or a score of at least ``pod_min_ratio`` of the
threshold, at most ``pod_max`` of them (the highest score / threshold first; the others are
counted in ``podguard_pod_metrics_omitted``); a pod no longer scored (deleted, gone from
the source) has no verdict at the next step, so its series vanish.

Process metrics keep their standard names (``process_*``, ``python_info``, ``python_gc_*``):
client_python's own collectors, as every stock dashboard expects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from detector.sources.base import SourceStatus
from detector.verdicts import Verdict


@dataclass
class StateView:
    """What the scrape-time collector reads (kept current by the daemon)."""

    model_version: str = ""
    model_created_ts: float | None = None  # the model card's creation time, unix seconds
    source: str = ""
    source_status: Callable[[], SourceStatus] | None = None
    pods_watched: int = 0
    flagged: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, pod) -> kind
    verdicts: dict[tuple[str, str], Verdict] = field(default_factory=dict)  # latest judged
    ready: bool = False
    last_evaluation_ts: float = 0.0
    engine_bytes: int = 0


def _ratio(v: Verdict) -> float:
    """score / threshold (inf for a positive verdict without a usable threshold)."""
    if not (math.isfinite(v.score) and math.isfinite(v.threshold)) or v.threshold <= 0:
        return math.inf if v.is_anomaly else -math.inf
    return v.score / v.threshold


def exported_pods(verdicts: dict[tuple[str, str], Verdict], *, min_ratio: float,
                  max_pods: int) -> tuple[list[Verdict], int]:
    """The verdicts that get per-pod gauges (positive, or ``score >= min_ratio *
    threshold``), most anomalous first, at most ``max_pods``; and how many were left out by
    the cap."""
    wanted = [v for v in verdicts.values() if v.is_anomaly or _ratio(v) >= min_ratio]
    wanted.sort(key=lambda v: (not v.is_anomaly, -_ratio(v), v.namespace, v.pod))
    return wanted[:max_pods], max(0, len(wanted) - max_pods)


class _StateCollector(Collector):
    def __init__(self, view: StateView, *, pod_min_ratio: float = 0.8,
                 pod_max: int = 200) -> None:
        self.view = view
        self.pod_min_ratio = pod_min_ratio
        self.pod_max = pod_max

    def _pods(self) -> Iterator[Metric]:
        pods, omitted = exported_pods(dict(self.view.verdicts), min_ratio=self.pod_min_ratio,
                                      max_pods=self.pod_max)
        labels = ["namespace", "pod"]
        fams = {
            "score": GaugeMetricFamily(
                "podguard_pod_score", "Score of the deciding detector in the pod's latest "
                "verdict (higher = more anomalous).", labels=labels),
            "threshold": GaugeMetricFamily(
                "podguard_pod_threshold", "That detector's threshold (score above it: "
                "anomalous).", labels=labels),
            "tto": GaugeMetricFamily(
                "podguard_pod_time_to_oom_seconds", "Median estimate of the time until the "
                "pod's memory reaches its limit (leaks with a known limit only).",
                labels=labels),
            "lo": GaugeMetricFamily(
                "podguard_pod_time_to_oom_low_seconds", "Low end of the time-to-OOM range.",
                labels=labels),
            "hi": GaugeMetricFamily(
                "podguard_pod_time_to_oom_high_seconds", "High end of the time-to-OOM range.",
                labels=labels),
            "rate": GaugeMetricFamily(
                "podguard_pod_leak_rate_bytes_per_second", "Fitted growth rate of the leaking "
                "memory.", labels=labels),
        }
        kind = GaugeMetricFamily(
            "podguard_pod_verdict", "1 for the kind of the pod's latest verdict (none: below "
            "the threshold but near it).", labels=[*labels, "kind"])
        for v in pods:
            key = [v.namespace, v.pod]
            if math.isfinite(v.score):
                fams["score"].add_metric(key, v.score)
            if math.isfinite(v.threshold):
                fams["threshold"].add_metric(key, v.threshold)
            tto, rate = v.time_to_oom_s, v.leak_rate_bytes_per_s
            if tto is not None and math.isfinite(tto):
                fams["tto"].add_metric(key, tto)
            if v.time_to_oom_range_s is not None:
                lo, hi = v.time_to_oom_range_s
                if math.isfinite(lo):
                    fams["lo"].add_metric(key, lo)
                if math.isfinite(hi):
                    fams["hi"].add_metric(key, hi)
            if rate is not None and math.isfinite(rate):
                fams["rate"].add_metric(key, rate)
            kind.add_metric([*key, v.kind], 1.0)
        yield from fams.values()
        yield kind
        yield GaugeMetricFamily(
            "podguard_pod_metrics_omitted", "Pods that qualified for per-pod gauges but were "
            "left out by the cap (server.pod_metrics_max_pods).", value=float(omitted))

    def collect(self) -> Iterator[Metric]:
        v = self.view
        info = GaugeMetricFamily("podguard_model_info", "The model version scoring now (1).",
                                 labels=["version"])
        info.add_metric([v.model_version or "none"], 1.0)
        yield info
        created = GaugeMetricFamily("podguard_model_created_timestamp_seconds",
                                    "Creation time of the model scoring now (its model card); "
                                    "no sample when the card does not say.")
        if v.model_created_ts is not None:
            created.add_metric([], v.model_created_ts)
        yield created
        yield GaugeMetricFamily("podguard_ready", "1 once the model is loaded and the source "
                                "delivered data.", value=1.0 if v.ready else 0.0)
        yield GaugeMetricFamily("podguard_pods_watched", "Pods held in the window engine.",
                                value=float(v.pods_watched))
        yield GaugeMetricFamily("podguard_windows_state_bytes",
                                "Bytes of the window engine's ring buffers.",
                                value=float(v.engine_bytes))
        yield GaugeMetricFamily("podguard_evaluation_last_timestamp_seconds",
                                "Source-clock end of the last window scored.",
                                value=v.last_evaluation_ts)
        flagged = GaugeMetricFamily("podguard_pod_anomalous",
                                    "1 for each pod with a positive verdict now.",
                                    labels=["namespace", "pod", "kind"])
        for (ns, pod), kind in sorted(v.flagged.items()):
            flagged.add_metric([ns, pod, kind], 1.0)
        yield flagged
        yield from self._pods()
        if v.source_status is not None:
            st = v.source_status()
            labels = ["source"]
            up = GaugeMetricFamily("podguard_source_up", "1 if the source's service answered.",
                                   labels=labels)
            up.add_metric([v.source], 1.0 if st.up else 0.0)
            yield up
            cu = GaugeMetricFamily("podguard_source_caught_up",
                                   "0 while a gap is pending (windows stale).", labels=labels)
            cu.add_metric([v.source], 1.0 if st.caught_up else 0.0)
            yield cu
            if st.lag_s is not None:
                lag = GaugeMetricFamily("podguard_source_lag_seconds",
                                        "Source clock minus the newest sample delivered.",
                                        labels=labels)
                lag.add_metric([v.source], st.lag_s)
                yield lag
            if "lag_records" in st.extra:
                lr = GaugeMetricFamily("podguard_source_lag_records",
                                       "Records behind the partitions' high watermarks.",
                                       labels=labels)
                lr.add_metric([v.source], st.extra["lag_records"])
                yield lr


class DaemonMetrics:
    """The counters and histogram of the daemon, and the scrape-time collector."""

    def __init__(self, registry: CollectorRegistry, view: StateView, *,
                 process: bool = True, pod_min_ratio: float = 0.8,
                 pod_max: int = 200) -> None:
        self.registry = registry
        self.view = view
        self.samples = Counter("podguard_samples_ingested_total",
                               "Samples folded into windows (duplicates included).",
                               ["source"], registry=registry)
        self.duplicates = Counter("podguard_samples_duplicate_total",
                                  "Samples that repeated a series and timestamp (absorbed).",
                                  ["source"], registry=registry)
        self.rejected = Counter("podguard_samples_rejected_total",
                                "Samples refused by the decoder or the window engine, by "
                                "reason.", ["source", "reason"], registry=registry)
        self.messages = Counter("podguard_source_messages_total",
                                "Messages or query answers read.", ["source"], registry=registry)
        self.dead_letter = Counter("podguard_dead_letter_messages_total",
                                   "Messages copied to the dead-letter destination.",
                                   ["source"], registry=registry)
        self.commits = Counter("podguard_source_commits_total",
                               "Commit calls after a scored step.", ["source"],
                               registry=registry)
        self.windows = Counter("podguard_windows_scored_total", "Pod windows scored.",
                               registry=registry)
        self.verdicts = Counter("podguard_verdicts_total",
                                "Verdicts by kind ('none' for negatives, 'stale' for windows "
                                "not judged).", ["kind"], registry=registry)
        self.evaluations = Counter("podguard_evaluations_total", "Scoring steps, by outcome.",
                                   ["outcome"], registry=registry)
        self.skipped_steps = Counter("podguard_evaluation_skipped_steps_total",
                                     "Steps not scored because the daemon fell behind.",
                                     registry=registry)
        self.scoring = Histogram("podguard_scoring_duration_seconds",
                                 "Wall time to score one step (all pods, explanations "
                                 "included).", registry=registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                          10))
        self.sink_errors = Counter("podguard_sink_errors_total", "Sink calls that raised.",
                                   ["sink"], registry=registry)
        self.reloads = Counter("podguard_model_reloads_total",
                               "Model reload attempts, by outcome.", ["outcome"],
                               registry=registry)
        registry.register(_StateCollector(view, pod_min_ratio=pod_min_ratio, pod_max=pod_max))
        if process:  # the standard names: process_*, python_info, python_gc_*
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
