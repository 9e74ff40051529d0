"""The daemon's own metrics, registered on an injected registry.

Names follow ``podguard_<subsystem>_<name>_<unit>``. Counters and the scoring histogram are
updated by :class:`detector.runtime.daemon.Daemon`; everything that describes current state
(model version and creation time, source health and lag, pods watched, pods flagged now)
comes from a collector that reads the daemon at scrape time, so a pod that is gone or a model
that was replaced does not linger as a stale series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from detector.sources.base import SourceStatus


@dataclass
class StateView:
    """What the scrape-time collector reads (kept current by the daemon)."""

    model_version: str = ""
    model_created_ts: float | None = None  # the model card's creation time, unix seconds
    source: str = ""
    source_status: Callable[[], SourceStatus] | None = None
    pods_watched: int = 0
    flagged: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, pod) -> kind
    ready: bool = False
    last_evaluation_ts: float = 0.0
    engine_bytes: int = 0


class _StateCollector(Collector):
    def __init__(self, view: StateView) -> None:
        self.view = view

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
                 process: bool = True) -> None:
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
        registry.register(_StateCollector(view))
        if process:
            ProcessCollector(namespace="podguard", registry=registry)
