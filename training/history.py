"""History for retraining: range queries against Prometheus, turned into a trace.

Who calls it: ``training.job`` (``podguard train --prometheus URL --since 7d``). Each metric
the window engine reads is fetched with ``query_range`` in time chunks small enough that no
series exceeds Prometheus's 11,000 points per query, through the one Prometheus client
(:mod:`detector.transport.prometheus`: TLS, auth, tenant headers); each chunk is retried on
connection errors and 5xx/429 answers by the one retry policy
(:mod:`detector.transport.retry`, ``Retry-After`` honoured), then the result is a DataFrame in
the trace format of :mod:`detector.traces`, so training builds windows with the same engine as
the daemon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from detector import traces as tr
from detector.channels import read_metrics
from detector.errors import InputError
from detector.settings import HttpClientSettings
from detector.transport.prometheus import MAX_POINTS, PrometheusClient
from detector.transport.prometheus import chunks as prom_chunks
from detector.transport.retry import retrying

log = logging.getLogger(__name__)

MAX_POINTS_PER_SERIES = MAX_POINTS
OOM_KILLED = tr.OOM_KILLED  # ..._last_terminated_reason_oomkilled
#: The series training reads (the window engine's inputs), with the labels that name a pod.
#: Every series of the channel and limit tables but kube-state-metrics' limits, whose rows
#: need ``resource="memory"`` (a caller that wants them pulls them with that matcher), and
#: the OOM-kill flag, an incident query (no Prometheus series has its trace name).
HISTORY_METRICS: tuple[str, ...] = tuple(m for m in read_metrics()
                                         if m not in (tr.KSM_LIMITS, OOM_KILLED))
ALERTS = "ALERTS"
#: Incident series, pulled beside the metrics so training can leave those pods out:
#: trace metric name -> PromQL.
INCIDENT_QUERIES: dict[str, str] = {
    OOM_KILLED: 'kube_pod_container_status_last_terminated_reason{reason="OOMKilled"}',
    ALERTS: 'ALERTS{alertstate="firing",'
            'alertname=~"Pod(MemoryLeak|GpuMemoryLeak|PreFailureDrift)"}',
}
BACKOFF_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"7d"``, ``"2w"``, ``"1h30m"`` -> seconds, > 0, read
    by the settings' one duration parser. InputError otherwise."""
    from detector.settings import parse_duration as parse

    value = parse(text)
    if not value > 0:
        raise InputError(f"duration must be > 0, got {text!r}")
    return value


def chunks(start: float, end: float, step: float,
           max_points: int = MAX_POINTS_PER_SERIES) -> list[tuple[float, float]]:
    """``[start, end]`` cut into ranges of at most ``max_points`` samples at ``step``
    (:func:`detector.transport.prometheus.chunks`); InputError for an empty range."""
    if not end > start:
        raise InputError(f"empty time range: start {start} >= end {end}")
    return prom_chunks(start, end, step, max_points)


def pull_history(url: str, *, start: float, end: float, step: float = 15.0,
                 metrics: Sequence[str] = HISTORY_METRICS, matcher: str = "",
                 progress: bool = False, sleep: Callable[[float], None] = time.sleep,
                 max_points: int = MAX_POINTS_PER_SERIES, incidents: bool = True,
                 http: HttpClientSettings | None = None,
                 where: str = "sources.prometheus.http", timeout_s: float = 60.0
                 ) -> pd.DataFrame:
    """Every sample of ``metrics`` between ``start`` and ``end`` (unix s) at ``step``.

    ``matcher`` is extra label matchers, e.g. ``node="gpu-1"``. Series without ``namespace``
    and ``pod`` labels are ignored (they do not belong to a pod). With ``incidents`` the OOM
    kills and podguard alerts that fired come along as the metrics :data:`OOM_KILLED` and
    :data:`ALERTS`, for :func:`incident_pods`. ``http`` gives TLS and auth (the daemon's
    ``sources.prometheus.http``; ``where`` names it in errors). A query answered 429/5xx or
    not at all is retried along :data:`BACKOFF_S`; a refused one (bad query, 401/403, a
    certificate that does not verify) raises a PermanentError at once.
    """
    client = PrometheusClient(url, http, where=where, timeout_s=timeout_s)
    pieces = chunks(start, end, step, max_points)
    frames: list[pd.DataFrame] = []
    queries = [(m, f"{m}{{{matcher}}}" if matcher else m) for m in metrics]
    if incidents:
        for name, q in INCIDENT_QUERIES.items():
            queries.append((name, q[:-1] + f",{matcher}}}" if matcher else q))
    bar = tqdm(total=len(pieces) * len(queries), desc="history", unit="query",
               disable=not progress, leave=False)
    for metric, sel in queries:
        for lo, hi in pieces:
            def query(sel: str = sel, lo: float = lo, hi: float = hi) -> Any:
                return client.query_range(sel, lo, hi, step)

            result = retrying(query, delays=BACKOFF_S, what=f"query_range {sel} "
                              f"[{lo:.0f}, {hi:.0f}] at {client.url}", log=log, sleep=sleep)
            frames += _to_frames(metric, result)
            bar.update(1)
    bar.close()
    client.close()
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("timestamp", "value")
                                          else "object") for c in tr.TRACE_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(["timestamp", "namespace", "pod", "container", "metric"])
    return tr.validate_trace(df, source=f"prometheus {url}")


def _to_frames(metric: str, result: list[dict[str, Any]]) -> list[pd.DataFrame]:
    out = []
    for series in result:
        labels = series.get("metric", {})
        ns, pod = labels.get("namespace"), labels.get("pod")
        if not ns or not pod:
            continue
        values = np.asarray(series.get("values", []), dtype=object)
        if values.size == 0:
            continue
        out.append(pd.DataFrame({
            "timestamp": values[:, 0].astype(np.float64),
            "namespace": ns, "pod": pod, "container": labels.get("container", ""),
            "node": labels.get("node", labels.get("Hostname", "")),
            "metric": metric, "value": values[:, 1].astype(np.float64),
        }))
    return out


def incident_pods(trace: pd.DataFrame) -> set[tuple[str, str]]:
    """Pods whose history holds an incident: a container restart (the restart counter rose)
    or an OOM kill (``kube_pod_container_status_last_terminated_reason`` with reason OOMKilled
    is exported as its own metric name in traces, ``..._oomkilled``) or a podguard alert that
    fired (``ALERTS`` rows in the trace)."""
    bad: set[tuple[str, str]] = set()
    rs = trace[trace["metric"] == tr.RESTARTS]
    if len(rs):
        g = rs.sort_values("timestamp").groupby(["namespace", "pod", "container"],
                                                observed=True)["value"]
        rose = g.agg(lambda v: float(np.nanmax(v) - np.nanmin(v)) if len(v) else 0.0)
        for key, inc in rose.items():
            if inc > 0:
                parts: tuple[Any, ...] = tuple(key)  # type: ignore[arg-type]
                bad.add((str(parts[0]), str(parts[1])))
    other = trace[trace["metric"].astype(str).isin([OOM_KILLED, ALERTS])]
    hits = other[other["value"] > 0][["namespace", "pod"]].drop_duplicates().to_numpy()
    bad.update((str(ns), str(pod)) for ns, pod in hits)
    return bad


def without_pods(trace: pd.DataFrame, pods: set[tuple[str, str]]) -> pd.DataFrame:
    if not pods:
        return trace
    key = list(zip(trace["namespace"].astype(str), trace["pod"].astype(str)))
    mask = np.array([k not in pods for k in key], dtype=bool)
    return trace[mask].reset_index(drop=True)
