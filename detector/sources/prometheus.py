"""The Prometheus source: backfill each pod's history, then poll incrementally.

Built by :func:`detector.runtime.build.make_source` for ``sources.kind: prometheus`` and polled
by the daemon loop. Range queries (``/api/v1/query_range``) go through the one Prometheus
client, :mod:`detector.transport.prometheus`, with TLS verified and the auth and tenant
headers of ``sources.prometheus.http``:

* **Scope**: series of this node's pods. The node comes from ``node_name`` or ``NODE_NAME``
  (the downward API) and is matched with ``node_matcher`` (default ``node="{node}"``) on the
  cAdvisor and DCGM series; kube-state-metrics series carry no node label, so they are joined
  with ``kube_pod_info{node=...}`` (``* on(namespace, pod) group_left kube_pod_info``).
  ``kube_pod_container_resource_limits`` is read for ``resource="memory"`` only.
  ``kube_pod_container_status_last_terminated_reason`` is read for every reason and becomes
  the ``oom_killed`` channel of its container (1 for ``OOMKilled``, 0 for another reason;
  :func:`detector.channels.oom_killed_flag`), the evidence an OOM kill is counted from.
* **Backfill**: at start, ``backfill_s`` of history at ``query_step_s`` resolution, delivered
  oldest first in slices of at most ``backfill_chunk_s`` (one slice per ``poll``, the next one
  due at once), so a node's 4 h of history never sits in memory at once and the daemon folds
  each slice before the next is fetched. The source is not caught up until the last slice.
  Each slice is fetched in range queries of at most ``max_points`` points per series
  (Prometheus refuses more than 11,000).
* **Polling**: every ``poll_s``, the range from the end of the previous answer to now.
* **Outages**: a failed or slow query (``timeout_s``) marks the source down and not caught up
  (the daemon then marks windows stale: a gap raises no pod alarm), waits along ``backoff_s``
  (stretched to ``Retry-After`` when Prometheus sends one; the last wait repeats; the source
  never gives up; a refused query, e.g. bad credentials, waits the last wait at once and is
  logged as an error once), and on recovery fetches the whole gap
  (up to ``max_gap_backfill_s``), in slices as above, before it reports caught up again. A
  failure in the middle of a backfill resumes at the slice that failed.

The pod uid is not kept: :class:`~detector.sources.base.SampleColumns`, the trace format and
the window engine key pods by (namespace, pod); cAdvisor series carry no ``uid`` label (only
the cgroup path in ``id``) and ``kube_pod_info`` does. Keeping it means a uid column through
all three (the window engine's per-pod state included), not a change to this source alone.

Counters are delivered raw (the window engine computes rates). Each delivery's token is None:
Prometheus keeps the data, so nothing needs acknowledging.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from detector import channels as chan
from detector import traces as tr
from detector.errors import ConfigError, PermanentError
from detector.settings import PrometheusSourceSettings, Settings
from detector.sources.base import Delivery, SampleColumns, SourceSpec, SourceStatus, next_wait
from detector.transport.prometheus import PrometheusClient, chunks
from detector.transport.retry import retry_delay

KSM_PREFIX = "kube_"
KSM_LIMITS = tr.KSM_LIMITS  # the channel table's fallback memory limit
OOM_KILLED = chan.CHANNEL_METRICS[chan.OOM_KILLED_CHANNEL]  # read from LAST_TERMINATED_REASON


class PrometheusSource:
    name = "prometheus"

    def __init__(self, settings: PrometheusSourceSettings, *, logger: logging.Logger,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 environ: dict[str, str] | None = None) -> None:
        if not settings.url:
            raise ConfigError("sources.prometheus.url is empty: give the Prometheus base URL, "
                              "e.g. http://prometheus.monitoring:9090")
        self.settings = settings
        self.log = logger
        self.clock = clock
        self.sleep = sleep
        self.node = settings.node(environ)
        self.queries = build_queries(settings, self.node)
        self._client: Any = None
        self._next_from: float | None = None  # start of the next range to fetch
        self._due = 0.0  # clock time of the next query
        self._failures = 0
        self._up = True
        self._gap = True  # history not yet fetched: not caught up
        self._newest_ts: float | None = None
        self._last_error = ""
        self.backfilled_s = 0.0  # seconds of history fetched beyond plain polling

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._client = PrometheusClient(self.settings.url, self.settings.http,
                                        where="sources.prometheus.http",
                                        timeout_s=self.settings.timeout_s)
        now = self.clock()
        step = self.settings.query_step_s
        self._next_from = _align(now - self.settings.backfill_s, step)
        if not self.node:
            self.log.warning("no node name (sources.prometheus.node_name, NODE_NAME): watching "
                             "every pod Prometheus has")
        self.log.info("prometheus source started",
                      extra={"url": self.settings.url, "node": self.node,
                             "backfill_s": self.settings.backfill_s})

    def close(self, timeout: float = 5.0) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    # ------------------------------------------------------------------ the contract

    def now(self) -> float:
        return self.clock()

    def clock_rate(self) -> float:
        return 1.0  # wall time

    def poll(self, timeout: float) -> Delivery:
        out = Delivery()
        now = self.clock()
        if self._client is None or now < self._due:
            self.sleep(max(0.0, min(timeout, self._due - now)))
            return out
        s = self.settings
        step = s.query_step_s
        end = _align(now, step, down=True)
        start = self._next_from if self._next_from is not None else end
        if end - start > s.max_gap_backfill_s:
            self.log.warning("gap longer than max_gap_backfill_s; its oldest part is skipped",
                             extra={"gap_s": end - start, "kept_s": s.max_gap_backfill_s})
            start = _align(end - s.max_gap_backfill_s, step)
        if start > end:
            self._due = start + 0.01
            return out
        n_points = max(1, math.floor(s.backfill_chunk_s / step))
        last = end
        end = min(end, start + (n_points - 1) * step)  # one slice of a longer range
        try:
            self._fetch(start, end, out.samples)
        except Exception as e:  # no answer, refused, malformed: back off, never exit
            out.samples = SampleColumns()
            self._failures += 1
            # Refused (bad credentials, a certificate that does not verify, a bad query):
            # the same call fails again, so no fast retries, only the slowest wait; a
            # rotated token or fixed server is still picked up then.
            permanent = isinstance(e, PermanentError)
            wait = (s.backoff_s[-1] if permanent
                    else retry_delay(next_wait(s.backoff_s, self._failures - 1), e))
            self._due = now + wait
            self._gap = True
            if permanent and _short(e) != self._last_error:
                self.log.error("prometheus refused the query; windows are stale until it is "
                               "fixed", extra={"error": _short(e), "attempt": self._failures,
                                               "retry_in_s": wait})
            elif self._up or self._failures in (1, len(s.backoff_s)):
                self.log.warning("prometheus query failed; windows are stale until the gap is "
                                 "backfilled", extra={"error": _short(e),
                                                      "attempt": self._failures,
                                                      "retry_in_s": wait})
            self._up = False
            self._last_error = _short(e)
            return out
        future = out.samples.drop_after(now + s.max_future_s)  # a skewed exporter's clock
        if future:
            out.rejected["future_timestamp"] += future
        more = end < last
        if not self._up or self._gap:
            self.backfilled_s += (end - start + step) if more else max(
                0.0, end - start - s.poll_s)
            if not self._up:
                self.log.info("prometheus is back; backfilling the gap",
                              extra={"gap_from": start, "gap_to": last,
                                     "samples": len(out.samples)})
            out.backfill = True
        self._failures = 0
        self._up = True
        self._gap = more  # caught up only once the last slice is delivered
        self._last_error = ""
        self._next_from = end + step
        self._due = now if more else _align(now, s.poll_s, down=True) + s.poll_s
        out.messages = 1
        newest = out.samples.newest()
        if newest is not None:
            self._newest_ts = newest if self._newest_ts is None else max(self._newest_ts, newest)
        return out

    def commit(self, tokens: Sequence[Any]) -> None:
        """Nothing to acknowledge: Prometheus keeps the data."""

    def status(self) -> SourceStatus:
        lag = None if self._newest_ts is None else max(0.0, self.clock() - self._newest_ts)
        return SourceStatus(up=self._up, caught_up=self._up and not self._gap, lag_s=lag,
                            detail=self._last_error,
                            extra={"backfilled_seconds": self.backfilled_s})

    # ------------------------------------------------------------------ queries

    def _fetch(self, start: float, end: float, out: SampleColumns) -> None:
        s = self.settings
        step = s.query_step_s
        for t0, t1 in chunks(start, end, step, s.max_points):
            for name, promql in self.queries:
                _to_columns(self._client.query_range(promql, t0, t1, step), name, out)


def build_queries(settings: PrometheusSourceSettings, node: str) -> list[tuple[str | None, str]]:
    """``(metric name or None, PromQL)``: one regex query for the series that carry the node
    label, one join per kube-state-metrics series (their results lose ``__name__``)."""
    extra = settings.extra_matchers.strip().strip(",")
    node_m = settings.node_matcher.replace("{node}", _escape(node)) if node else ""
    plain = [m for m in settings.metrics if not m.startswith(KSM_PREFIX)]
    ksm = [m for m in settings.metrics if m.startswith(KSM_PREFIX)]
    out: list[tuple[str | None, str]] = []
    if plain:
        names = "|".join(sorted(set(plain)))
        matchers = ",".join(x for x in (f'__name__=~"{names}"', node_m, extra) if x)
        out.append((None, "{" + matchers + "}"))
    for m in ksm:
        sel = ",".join(x for x in ('resource="memory"' if m == KSM_LIMITS else "", extra) if x)
        series = chan.LAST_TERMINATED_REASON if m == OOM_KILLED else m
        base = f"{series}{{{sel}}}" if sel else series
        if node:
            info = f'max by (namespace, pod, node) (kube_pod_info{{node="{_escape(node)}"}})'
            out.append((m, f"{base} * on(namespace, pod) group_left(node) {info}"))
        else:
            out.append((m, base))
    return out


def _to_columns(result: list[dict[str, Any]], name: str | None, out: SampleColumns) -> None:
    for series in result:
        labels = series.get("metric", {})
        metric = name or labels.get("__name__", "")
        if metric == KSM_LIMITS and labels.get("resource", "memory") != "memory":
            continue
        ns = labels.get("namespace") or labels.get("exported_namespace") or ""
        pod = labels.get("pod") or labels.get("exported_pod") or ""
        container = labels.get("container") or labels.get("exported_container") or ""
        node = labels.get("node", "")
        if not ns or not pod:
            continue  # node-level series (no pod): not a pod's telemetry
        reason = labels.get("reason") if metric == OOM_KILLED else None
        for ts, raw in series.get("values", []):
            try:
                v = float(raw)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(v):
                continue
            if metric == OOM_KILLED:  # the reason as a 0/1 flag (a 0 is no current reason)
                flag = chan.oom_killed_flag(reason, v)
                if flag is None:
                    continue
                v = flag
            out.append(float(ts), ns, pod, container, node, metric, v)


def _align(t: float, step: float, *, down: bool = False) -> float:
    k = math.floor(t / step) if down else math.ceil(t / step)
    return k * step


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 300 else text[:300] + "..."


def _build(settings: Settings, logger: logging.Logger, out_dir: Path | None) -> PrometheusSource:
    return PrometheusSource(settings.sources.prometheus, logger=logger)


SOURCE = SourceSpec("prometheus", _build, adopts_node_alerts=True)
"""``sources.kind: prometheus``: this daemon alone judges its node's pods (after a restart it
takes over the node's open alerts)."""
