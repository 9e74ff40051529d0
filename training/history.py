"""History for retraining: range queries against Prometheus, turned into a trace.

Who calls it: ``training.job`` (``podguard train --prometheus URL --since 7d``). Each metric
the window engine reads is fetched with ``query_range`` in time chunks small enough that no
series exceeds Prometheus's 11,000 points per query; each chunk is retried on connection
errors and 5xx/429 answers over a finite backoff, then the result is a DataFrame in the trace
format of :mod:`detector.traces`, so training builds windows with the same engine as the
daemon.
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
from detector.errors import InputError, PermanentError, ServiceUnavailableError

log = logging.getLogger(__name__)

MAX_POINTS_PER_SERIES = 11_000
#: The series training reads (the window engine's inputs), with the labels that name a pod.
HISTORY_METRICS: tuple[str, ...] = (
    tr.WORKING_SET, tr.RSS, tr.CPU_SECONDS, tr.MEMORY_LIMIT, tr.FS_USAGE, tr.NET_RX, tr.NET_TX,
    tr.RESTARTS, tr.GPU_FB_USED, tr.GPU_FB_FREE, tr.GPU_UTIL,
)
OOM_KILLED = "kube_pod_container_status_last_terminated_reason_oomkilled"
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
    """``[start, end]`` cut into ranges of at most ``max_points`` samples at ``step``."""
    if not end > start:
        raise InputError(f"empty time range: start {start} >= end {end}")
    span = step * (max_points - 1)
    out = []
    t = start
    while t < end:
        hi = min(end, t + span)
        out.append((t, hi))
        t = hi + step
    return out


def _with_retries(call: Callable[[], Any], what: str, sleep: Callable[[float], None]) -> Any:
    from prometheus_api_client.exceptions import PrometheusApiClientException
    from requests import RequestException

    attempts = len(BACKOFF_S) + 1
    for n in range(1, attempts + 1):
        try:
            return call()
        except PrometheusApiClientException as e:
            status = getattr(e, "status_code", None) or _status_in(str(e))
            if status is not None and status < 500 and status != 429:
                raise PermanentError(f"{what}: Prometheus refused the query: {e}") from e
            err: Exception = e
        except RequestException as e:
            err = e
        if n == attempts:
            raise ServiceUnavailableError(f"{what}: gave up after {attempts} attempts: {err}"
                                          ) from err
        delay = BACKOFF_S[n - 1]
        log.warning("%s failed (attempt %d/%d), retrying in %.1fs: %s", what, n, attempts,
                    delay, err)
        sleep(delay)
    raise AssertionError("unreachable")


def _status_in(text: str) -> int | None:
    for token in text.replace(":", " ").split():
        if token.isdigit() and len(token) == 3:
            return int(token)
    return None


def pull_history(url: str, *, start: float, end: float, step: float = 15.0,
                 metrics: Sequence[str] = HISTORY_METRICS, matcher: str = "",
                 progress: bool = False, sleep: Callable[[float], None] = time.sleep,
                 max_points: int = MAX_POINTS_PER_SERIES, incidents: bool = True
                 ) -> pd.DataFrame:
    """Every sample of ``metrics`` between ``start`` and ``end`` (unix s) at ``step``.

    ``matcher`` is extra label matchers, e.g. ``node="gpu-1"``. Series without ``namespace``
    and ``pod`` labels are ignored (they do not belong to a pod). With ``incidents`` the OOM
    kills and podguard alerts that fired come along as the metrics :data:`OOM_KILLED` and
    :data:`ALERTS`, for :func:`incident_pods`.
    """
    from prometheus_api_client import PrometheusConnect

    prom = PrometheusConnect(url=url, disable_ssl=True)
    prom._session.trust_env = False
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
                return prom.custom_query_range(
                    sel, start_time=pd.Timestamp(lo, unit="s").to_pydatetime(),
                    end_time=pd.Timestamp(hi, unit="s").to_pydatetime(), step=f"{step:g}s")

            result = _with_retries(query, f"query_range {sel} [{lo:.0f}, {hi:.0f}]", sleep)
            frames += _to_frames(metric, result)
            bar.update(1)
    bar.close()
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
