"""The channel table: every metric podguard reads, declared once.

A *channel* is one per-pod series of the window engine (:class:`detector.windows.WindowBatch`
``values``), computed from one exporter metric. Each row of :data:`CHANNEL_TABLE` says which
metric feeds it, how the raw series becomes the channel (a gauge as is, a counter as a rate or
as increments per step), the unit scale, the smallest robust scale the features divide by,
the words a person reads, whether the leak detector watches it, which drift features the
drift ensemble learns from it, and which limit (:data:`LIMIT_TABLE`) bounds it. A limit row
names the metric(s) a channel's limit is read from.

Everything else is derived from these two tables: the engine's channel order and known
metrics (``detector.windows``), the trace-format metric names (``detector.traces``), the
series the Prometheus source and the retraining history read (``detector.settings``,
``training.history``), the feature names and their words (``detector.explain``), the
evaluation's metric-to-channel map (``detector.evaluate``) and the drift ensemble's feature
selection (``training.fit``). Adding a metric is one row here.

Changing the order of :data:`CHANNEL_TABLE` changes the layout of ``WindowBatch.values``;
new channels go at the end. A new channel's features are new names: the shipped drift model
selects its features by name, so it keeps working and ignores them until it is retrained.

This module imports nothing of podguard's: it is the bottom of the layering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Exporter = Literal["cadvisor", "kube-state-metrics", "dcgm"]
"""Who exports a metric (the Prometheus source reads kube-state-metrics series differently)."""

Kind = Literal["gauge", "rate", "increase"]
"""How a raw series becomes a channel: a gauge's newest value per bin; a counter's per-second
rate; a counter's increments per grid step (never forward-filled)."""

MIB = float(1 << 20)

STAT_WORDS: Mapping[str, str] = {
    "level_z": "level vs baseline",
    "slope_30m": "trend (30 min)",
    "log_vol_ratio": "volatility change",
    "frac_limit": "fraction of limit",
    "floor_slope": "floor growth",
    "count_1h": "in the last hour",
}
"""The window features' statistics (see :func:`detector.windows.extract_features`) and the
words a person reads for each."""

PER_CHANNEL_STATS: tuple[str, ...] = ("level_z", "slope_30m", "log_vol_ratio")
"""The statistics of every gauge and rate channel."""
INCREASE_STATS: tuple[str, ...] = ("count_1h",)
"""The statistics of an increase channel (restarts)."""
LEAK_STATS: tuple[str, ...] = ("frac_limit", "floor_slope")
"""The statistics added for each leak channel (after every channel's own)."""


@dataclass(frozen=True)
class Channel:
    """One channel: a per-pod series of the window engine."""

    name: str
    """Channel name in ``WindowBatch.channels`` and feature names (``"<name>.<stat>"``)."""
    metric: str
    """The exporter metric it is computed from (containers of a pod are summed)."""
    exporter: Exporter
    kind: Kind
    unit: str
    """Unit of the channel's values (after ``scale``)."""
    floor: float
    """Smallest robust scale, in ``unit``: a flat healthy series has MAD 0, so the features'
    scales are floored by this (and by 5 % of the baseline level)."""
    words: str
    """What a person reads for it ("working set")."""
    scale: float = 1.0
    """Trace unit -> channel unit (DCGM reports MiB and percent)."""
    leak: bool = False
    """Watched by the leak detector (the trend detector, the level history); gets the
    ``frac_limit`` and ``floor_slope`` features."""
    throughput: bool = False
    """A throughput channel: its collapse is a drift symptom."""
    drift_stats: tuple[str, ...] = ()
    """The statistics of this channel the drift ensemble learns (``training.fit``)."""
    limit: str | None = None
    """The :data:`LIMIT_TABLE` row bounding it (``limits`` in the batch), or None."""
    feature_words: tuple[tuple[str, str], ...] = ()
    """(stat, words) for features whose whole name reads better than "<words> <stat words>"."""
    fact: bool = False
    """A fact the decisions read (a 0/1 flag), not a feature: no window statistics, so the
    feature names, and the models fitted on them, do not change with it."""

    def stats(self) -> tuple[str, ...]:
        """The window-feature statistics of this channel, in feature order."""
        if self.fact:
            return ()
        return INCREASE_STATS if self.kind == "increase" else PER_CHANNEL_STATS


@dataclass(frozen=True)
class LimitMetric:
    """One metric a limit is read from (taken as of its newest sample, summed over containers)."""

    metric: str
    exporter: Exporter
    scale: float = 1.0
    zero_unknown: bool = True
    """A 0 on any container means "unlimited": the pod's limit is unknown (NaN)."""


@dataclass(frozen=True)
class Limit:
    """A limit: what a channel's values can grow to before the pod fails."""

    name: str
    metrics: tuple[LimitMetric, ...]
    """The first metric with a value gives the limit; the others are fallbacks."""
    plus_used: bool = False
    """The metric is the *free* capacity: the limit is the channel's newest value plus it
    (DCGM reports used and free frame buffer, not the card size)."""


CHANNEL_TABLE: tuple[Channel, ...] = (
    Channel("mem_working_set", "container_memory_working_set_bytes", "cadvisor", "gauge",
            "bytes", 16 * MIB, "working set", leak=True, limit="memory",
            drift_stats=("log_vol_ratio",),
            feature_words=(("slope_30m", "memory slope"),
                           # a crash loop's kill evidence (detector.models.trend)
                           ("oom_kills", "working set OOM kills of the earlier lives"))),
    Channel("mem_rss", "container_memory_rss", "cadvisor", "gauge",
            "bytes", 16 * MIB, "RSS", leak=True, limit="memory",
            drift_stats=("log_vol_ratio",),
            feature_words=(("slope_30m", "RSS growth"),)),
    Channel("gpu_fb_used", "DCGM_FI_DEV_FB_USED", "dcgm", "gauge",
            "bytes", 16 * MIB, "GPU memory", scale=MIB, leak=True, limit="gpu_memory",
            drift_stats=("log_vol_ratio",)),
    Channel("cpu_rate", "container_cpu_usage_seconds_total", "cadvisor", "rate",
            "cores", 0.01, "CPU", throughput=True, drift_stats=PER_CHANNEL_STATS),
    Channel("gpu_util", "DCGM_FI_DEV_GPU_UTIL", "dcgm", "gauge",
            "fraction", 0.01, "GPU utilisation", scale=0.01, throughput=True,
            drift_stats=PER_CHANNEL_STATS),
    Channel("net_rx_rate", "container_network_receive_bytes_total", "cadvisor", "rate",
            "bytes/s", 1024.0, "network receive", throughput=True,
            drift_stats=PER_CHANNEL_STATS),
    Channel("net_tx_rate", "container_network_transmit_bytes_total", "cadvisor", "rate",
            "bytes/s", 1024.0, "network transmit", throughput=True,
            drift_stats=PER_CHANNEL_STATS),
    Channel("fs_usage", "container_fs_usage_bytes", "cadvisor", "gauge",
            "bytes", 16 * MIB, "disk usage", limit="filesystem",
            drift_stats=("log_vol_ratio",)),
    Channel("restarts", "kube_pod_container_status_restarts_total", "kube-state-metrics",
            "increase", "restarts per step", 1.0, "restarts", drift_stats=INCREASE_STATS,
            feature_words=(("count_1h", "restarts in the last hour"),)),
    # page cache (reclaimable; counted in the working set while active): beside the RSS it
    # tells anonymous growth from a file reader's cache
    Channel("mem_cache", "container_memory_cache", "cadvisor", "gauge",
            "bytes", 16 * MIB, "page cache", limit="memory"),
    # kube-state-metrics' last terminated reason as a flag (see OOM_KILLED_CHANNEL): what
    # the level history counts a restart as an OOM kill from
    Channel("oom_killed", "kube_pod_container_status_last_terminated_reason_oomkilled",
            "kube-state-metrics", "gauge", "flag", 1.0, "last termination OOMKilled",
            fact=True),
)
"""Every channel, in the order of ``WindowBatch.values`` (append new ones at the end)."""

LIMIT_TABLE: tuple[Limit, ...] = (
    Limit("memory", (LimitMetric("container_spec_memory_limit_bytes", "cadvisor"),
                     LimitMetric("kube_pod_container_resource_limits", "kube-state-metrics"))),
    Limit("gpu_memory", (LimitMetric("DCGM_FI_DEV_FB_FREE", "dcgm", scale=MIB,
                                     zero_unknown=False),), plus_used=True),
    Limit("filesystem", (LimitMetric("container_fs_limit_bytes", "cadvisor"),)),
)
"""Every limit a channel can name."""

RESTART_CHANNEL = "restarts"
"""The channel whose increments mark a new incarnation (baselines start again after one)."""

OOM_KILLED_CHANNEL = "oom_killed"
"""The channel saying whether a container's last termination was an OOM kill: 1 when
kube-state-metrics' reason is ``OOMKilled``, 0 for another reason, no data before a first
termination (kube-state-metrics exports no reason then) or where the series is not scraped.
Its trace metric is ``..._reason_oomkilled``; the sources map the exporter's series
:data:`LAST_TERMINATED_REASON` to it with :func:`oom_killed_flag`. Summed over a pod's
containers like every channel, each container's flag counting only while it is the latest
to have started a memory incarnation of the pod (the reason of that restart; NaN where that
container exports none; see ``WindowBatch.memory_restarts``)."""

LAST_TERMINATED_REASON = "kube_pod_container_status_last_terminated_reason"
"""kube-state-metrics' series ``{namespace, pod, container, reason} 1``, one per container
that has terminated at least once, labelled with the reason of its last termination."""


def oom_killed_flag(reason: object, value: float) -> float | None:
    """The :data:`OOM_KILLED_CHANNEL` value of one sample of :data:`LAST_TERMINATED_REASON`
    (untrusted labels and value): 1.0 for ``reason="OOMKilled"``, 0.0 for any other reason;
    None (drop the sample) for a value below 0.5 or not finite - not the current reason (some
    exporters write 0 for the reasons a container's last termination did not have)."""
    if not value >= 0.5 or value == float("inf"):
        return None
    return 1.0 if reason == "OOMKilled" else 0.0


INFRASTRUCTURE_PREFIXES: tuple[str, ...] = ("container_", "kube_", "DCGM_", "node_", "machine_")
"""Metric families of the node's own exporters (cAdvisor, kube-state-metrics, DCGM, node
exporter): the ones in the tables are read, the others ignored - a custom metric is an
application's, judged by the univariate detector."""


def _check() -> None:
    names = [c.name for c in CHANNEL_TABLE]
    metrics = [c.metric for c in CHANNEL_TABLE] + [
        m.metric for lim in LIMIT_TABLE for m in lim.metrics]
    limits = {lim.name for lim in LIMIT_TABLE}
    problems = [f"duplicate channel {n!r}" for n in set(names) if names.count(n) > 1]
    problems += [f"metric {m!r} read twice" for m in set(metrics) if metrics.count(m) > 1]
    problems += [f"channel {c.name!r} names unknown limit {c.limit!r}"
                 for c in CHANNEL_TABLE if c.limit is not None and c.limit not in limits]
    problems += [f"channel {c.name!r}: drift stat {s!r} is not one of its stats"
                 for c in CHANNEL_TABLE for s in c.drift_stats if s not in c.stats()]
    problems += [f"channel {c.name!r}: a counter's metric must end in _total"
                 for c in CHANNEL_TABLE if (c.kind != "gauge") != c.metric.endswith("_total")]
    problems += [f"channel {c.name!r}: a fact is a gauge" for c in CHANNEL_TABLE
                 if c.fact and (c.kind != "gauge" or c.leak or c.throughput or c.drift_stats)]
    problems += [f"no {c!r} channel" for c in (RESTART_CHANNEL, OOM_KILLED_CHANNEL)
                 if c not in names]
    if problems:  # pragma: no cover - a broken table fails at import, in every test
        raise ValueError("channel table: " + "; ".join(problems))


_check()

CHANNELS: tuple[str, ...] = tuple(c.name for c in CHANNEL_TABLE)
"""Channel names in ``WindowBatch.values`` order."""

BY_NAME: Mapping[str, Channel] = {c.name: c for c in CHANNEL_TABLE}
LIMITS: Mapping[str, Limit] = {lim.name: lim for lim in LIMIT_TABLE}

LEAK_CHANNELS: tuple[str, ...] = tuple(c.name for c in CHANNEL_TABLE if c.leak)
THROUGHPUT_CHANNELS: tuple[str, ...] = tuple(c.name for c in CHANNEL_TABLE if c.throughput)

CHANNEL_METRICS: Mapping[str, str] = {c.name: c.metric for c in CHANNEL_TABLE}
"""Channel -> the metric it is computed from (to name it in explanations)."""
METRIC_CHANNEL: Mapping[str, str] = {c.metric: c.name for c in CHANNEL_TABLE}
"""Metric -> the channel computed from it."""


def channel(name: str) -> Channel:
    """The row of channel ``name`` (KeyError naming the known ones otherwise)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown channel {name!r} (known: {', '.join(CHANNELS)})") from None


def read_metrics(exporter: Exporter | None = None) -> tuple[str, ...]:
    """Every metric the tables read (channels, then limits), optionally of one exporter."""
    out = [c.metric for c in CHANNEL_TABLE if exporter in (None, c.exporter)]
    out += [m.metric for lim in LIMIT_TABLE for m in lim.metrics if exporter in (None, m.exporter)]
    return tuple(out)


def is_read(metric: str) -> bool:
    """Whether ``metric`` is in the tables."""
    return metric in _READ


_READ = frozenset(read_metrics())


def feature_names() -> tuple[str, ...]:
    """Window feature names in column order: each channel's stats in table order, then each
    leak channel's :data:`LEAK_STATS`."""
    names = [f"{c.name}.{s}" for c in CHANNEL_TABLE for s in c.stats()]
    names += [f"{c.name}.{s}" for c in CHANNEL_TABLE if c.leak for s in LEAK_STATS]
    return tuple(names)


def drift_feature_names(all_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The names among ``all_names`` the drift ensemble learns (each channel's
    ``drift_stats``; names of unknown channels are left out)."""
    keep = []
    for name in all_names:
        ch, _, stat = name.partition(".")
        row = BY_NAME.get(ch)
        if row is not None and stat in row.drift_stats:
            keep.append(name)
    return tuple(keep)


def channel_words(name: str, default: str | None = None) -> str:
    """The words for channel ``name`` ("working set"); ``default`` (or the name with spaces)
    for one outside the table."""
    row = BY_NAME.get(name)
    if row is not None:
        return row.words
    return name.replace("_", " ") if default is None else default


def feature_words(feature: str) -> str:
    """Words for a feature name like ``"cpu_rate.level_z"`` (-> "CPU level vs baseline");
    names outside the tables read as their parts with spaces."""
    ch, _, stat = feature.partition(".")
    row = BY_NAME.get(ch)
    if row is not None:
        for s, words in row.feature_words:
            if s == stat:
                return words
    text = channel_words(ch)
    if stat:
        text += " " + STAT_WORDS.get(stat, stat.replace("_", " "))
    return text
