"""Backfill of the Kafka source from Prometheus: full windows at start, before Kafka is read.

Built by :func:`detector.runtime.build.make_source` when ``sources.kafka.backfill_prometheus``
is on, and driven by :class:`detector.sources.kafka.KafkaSource`: at start, before the first
Kafka record is consumed, each of this scope's pods gets ``windows.horizon_s`` of history from
the Prometheus that ``sources.prometheus`` names (its URL, TLS and auth, node scope, metrics
and query step), through the Prometheus source's own range queries and the one Prometheus
client (:mod:`detector.transport.prometheus`), delivered oldest first in slices of
``backfill_chunk_s`` (one per poll, so memory stays bounded). The daemon is then judging at
once instead of after re-reading a window from Kafka.

Overlap: Prometheus and Kafka carry the same series (a remote-write adapter feeds Kafka from
the scrapes), but Prometheus answers on its query grid, not at the scrape times, so the two
copies of one sample do not share a timestamp. Per series (namespace, pod, container, metric)
the newest backfilled timestamp is the cut-off: a Kafka sample at or before it is dropped
(counted, ``backfill_overlap_samples``), later ones are folded. The cut-offs are forgotten
once every backfilled sample has left the window.

A Prometheus that does not answer (or refuses) is a temporary problem of the start, not of
the daemon: it is logged once as a warning and the Kafka source falls back to re-reading the
window from Kafka (``sources.kafka.rewind_s``). Whatever slices arrived before the failure
stay folded (their cut-offs still apply).

Scope: the Prometheus source's scope (``node_name`` / ``NODE_NAME`` with ``node_matcher``,
``extra_matchers``). With several daemons in one consumer group, each holding some
partitions, scope each one's backfill to its own pods or leave it off: a pod backfilled here
whose partition another member reads would be judged twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from detector.settings import PrometheusSourceSettings
from detector.sources.base import Delivery, SampleColumns
from detector.sources.prometheus import PrometheusSource

SeriesKey = tuple[str, str, str, str]  # namespace, pod, container, metric


class PrometheusBackfill:
    """Fills the windows from Prometheus once, at start (see the module docstring)."""

    def __init__(self, settings: PrometheusSourceSettings, *, window_s: float,
                 logger: logging.Logger, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings.model_copy(update={
            "backfill_s": window_s, "max_gap_backfill_s": window_s})
        self.window_s = window_s
        self.log = logger
        self.clock = clock
        self._source: PrometheusSource | None = None
        self.state = "pending"  # pending -> running -> done | failed
        self.cutoff: dict[SeriesKey, float] = {}
        self._newest_cutoff = float("-inf")
        self.samples = 0  # samples delivered from Prometheus
        self.overlap = 0  # Kafka samples dropped as already backfilled
        self.error = ""

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def succeeded(self) -> bool:
        return self.state == "done"

    def step(self) -> Delivery:
        """One slice of history (the first call starts the client); after the last slice
        or a failure, :attr:`finished` is True."""
        if self._source is None:
            self._source = PrometheusSource(self.settings, logger=self.log, clock=self.clock,
                                            sleep=lambda _s: None)
            self._source.start()
            self.state = "running"
            self.log.info("backfilling the windows from prometheus before reading kafka",
                          extra={"url": self.settings.url, "window_s": self.window_s})
        d = self._source.poll(0.0)
        status = self._source.status()
        if not status.up:
            self.state = "failed"
            self.error = status.detail
            self.log.warning("prometheus backfill failed (temporary: this start only); the "
                             "windows are refilled from kafka instead",
                             extra={"url": self.settings.url, "error": status.detail,
                                    "samples": self.samples})
            self._close()
            return Delivery(rejected=d.rejected)
        self._note(d.samples)
        self.samples += len(d.samples)
        d.backfill = True
        d.messages = 0  # query answers, not Kafka records
        if status.caught_up:
            self.state = "done"
            self.log.info("prometheus backfill done",
                          extra={"samples": self.samples, "series": len(self.cutoff)})
            self._close()
        return d

    def _note(self, cols: SampleColumns) -> None:
        cut = self.cutoff
        for ts, ns, pod, ctr, metric in zip(cols.timestamp, cols.namespace, cols.pod,
                                            cols.container, cols.metric, strict=True):
            key = (ns, pod, ctr, metric)
            if ts > cut.get(key, float("-inf")):
                cut[key] = ts
        if cut:
            self._newest_cutoff = max(cut.values())

    def drop_overlap(self, cols: SampleColumns) -> int:
        """Drops from ``cols`` the Kafka samples at or before their series' cut-off; returns
        how many."""
        if not self.cutoff or not len(cols):
            return 0
        if self.clock() > self._newest_cutoff + self.window_s:
            self.cutoff.clear()  # every backfilled sample has left the window
            return 0
        if min(cols.timestamp) > self._newest_cutoff:
            return 0  # (partitions are not ordered among themselves: keep the cut-offs)
        cut = self.cutoff
        keep = [i for i, key in enumerate(zip(cols.namespace, cols.pod, cols.container,
                                              cols.metric, strict=True))
                if cols.timestamp[i] > cut.get(key, float("-inf"))]
        dropped = len(cols) - len(keep)
        if dropped:
            for name in SampleColumns.__slots__:
                col = getattr(cols, name)
                col[:] = [col[i] for i in keep]
            self.overlap += dropped
        return dropped

    def _close(self) -> None:
        if self._source is not None:
            self._source.close()

    def close(self) -> None:
        self._close()
