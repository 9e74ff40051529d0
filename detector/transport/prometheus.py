"""The one Prometheus client of podguard: range queries, chunked, over :mod:`.http`.

Used by the Prometheus source (:mod:`detector.sources.prometheus`, polling and backfill) and
by retraining (:mod:`training.history`). Speaks the HTTP API directly
(``POST /api/v1/query_range``, form-encoded, so long regex selectors never hit URL limits);
works with Prometheus and with the Prometheus-compatible APIs of Mimir, Cortex and Thanos
(tenant header and auth from :class:`~detector.settings.HttpClientSettings`).

Errors follow :mod:`detector.transport.http`; in addition an answer of Prometheus's
``{"status": "error"}`` is mapped by its HTTP status (400/422: a bad query, permanent;
503: temporary) with Prometheus's own ``errorType`` and ``error`` in the message, and an
answer that is not the API's JSON (an HTML login page of a proxy, say) is permanent.
The answer is untrusted: only the documented shape is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import requests

from detector.errors import PermanentError, ServiceUnavailableError
from detector.settings import HttpClientSettings
from detector.transport.http import HttpClient
from detector.transport.retry import parse_retry_after

MAX_POINTS = 11_000
"""Prometheus refuses a range query with more points per series than this."""


def chunks(start: float, end: float, step: float,
           max_points: int = MAX_POINTS) -> list[tuple[float, float]]:
    """``[start, end]`` (both included) cut into ranges of at most ``max_points`` points at
    ``step``; consecutive ranges are one ``step`` apart, so no point is fetched twice or
    lost. Empty when ``start > end``."""
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step must be a positive number of seconds, got {step!r}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    span = step * (max_points - 1)
    out: list[tuple[float, float]] = []
    t = start
    while t <= end:
        hi = min(end, t + span)
        out.append((t, hi))
        t = hi + step
    return out


class PrometheusClient:
    """Range queries against one Prometheus (or compatible) base URL."""

    def __init__(self, url: str, settings: HttpClientSettings | None = None, *,
                 where: str, timeout_s: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.http = HttpClient(url, settings, where=where, timeout_s=timeout_s,
                               session=session)
        self.url = self.http.base_url
        self.timeout_s = timeout_s

    def query_range(self, promql: str, start: float, end: float, step: float
                    ) -> list[dict[str, Any]]:
        """One ``query_range``: the ``result`` list of the matrix answer."""
        what = f"query_range {promql[:120]} [{start:.0f}, {end:.0f}]"
        data = {"query": promql, "start": _num(start), "end": _num(end), "step": _num(step),
                "timeout": f"{self.timeout_s:g}s"}
        resp = self.http.request("POST", "/api/v1/query_range", data=data,
                                 ok=(200, 400, 422, 503))
        try:
            body = resp.json()
        except ValueError:
            raise PermanentError(f"{what} at {self.url}: the answer is not Prometheus API JSON "
                                 f"(HTTP {resp.status_code}, {resp.headers.get('Content-Type')}"
                                 f"): {resp.text[:200]!r}") from None
        if not isinstance(body, dict):
            raise PermanentError(f"{what} at {self.url}: the answer is not a JSON object")
        if body.get("status") != "success":
            detail = f"{body.get('errorType', '?')}: {str(body.get('error', ''))[:300]}"
            if resp.status_code == 503:
                raise ServiceUnavailableError(
                    f"{what} at {self.url}: HTTP 503: {detail}",
                    delay=parse_retry_after(resp.headers.get("Retry-After")))
            raise PermanentError(f"{what} at {self.url}: HTTP {resp.status_code}: {detail}")
        result = (body.get("data") or {}).get("result") if isinstance(body.get("data"),
                                                                         dict) else None
        if not isinstance(result, list):
            raise PermanentError(f"{what} at {self.url}: the answer has no result list")
        return [r for r in result if isinstance(r, dict)]

    def query_range_chunked(self, promql: str, start: float, end: float, step: float,
                            max_points: int = MAX_POINTS) -> Iterator[list[dict[str, Any]]]:
        """``query_range`` over :func:`chunks` of ``[start, end]``, one answer per chunk,
        oldest first."""
        for lo, hi in chunks(start, end, step, max_points):
            yield self.query_range(promql, lo, hi, step)

    def close(self) -> None:
        self.http.close()


def _num(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")
