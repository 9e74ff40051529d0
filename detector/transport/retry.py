"""The one retry policy of podguard, on tenacity.

Whether a call is retried is decided by the exception tree (:mod:`detector.errors`), never by
an error's text: a :class:`~detector.errors.TemporaryError` (no answer, HTTP 429/5xx, a broker
away) is retried over a finite list of waits, each stretched to the error's ``delay`` hint
(``Retry-After``) when that is longer; anything else, a
:class:`~detector.errors.PermanentError` included (bad credentials, a refused query), is
raised at once. Every retry logs "attempt n/N, retrying in s"; when the list is used up a
:class:`~detector.errors.ServiceUnavailableError` saying "gave up after N attempts" is raised,
chained to the last failure. Waiting is injected (``sleep``), so tests fake it.

Callers: :mod:`detector.transport.prometheus` users (retraining history), the Alertmanager
sink (one delivery round), the Kafka source (connecting). Loops that must not block (the
Prometheus source's outage handling, the Kafka commit) keep a schedule with
:func:`detector.sources.base.next_wait` and :func:`retry_delay` instead.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import tenacity

from detector.errors import ServiceUnavailableError, TemporaryError

T = TypeVar("T")

MAX_RETRY_AFTER_S = 600.0
"""A server's ``Retry-After`` is honoured up to this, seconds: the header is untrusted input,
and a wait of days would stall a daemon."""


def parse_retry_after(raw: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` (seconds, or an HTTP date) as seconds from now, within
    ``[0, MAX_RETRY_AFTER_S]``; None when absent or not understood."""
    if raw is None:
        return None
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def retry_delay(planned: float, error: BaseException) -> float:
    """``planned``, or the error's own hint (``Retry-After``) when that is longer."""
    hint = getattr(error, "delay", None)
    if isinstance(hint, (int, float)) and math.isfinite(hint):
        return max(planned, min(float(hint), MAX_RETRY_AFTER_S))
    return planned


def retrying(call: Callable[[], T], *, delays: Sequence[float], what: str,
             log: logging.Logger, sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried on :class:`TemporaryError` after each of ``delays`` (so at most
    ``len(delays) + 1`` attempts); see the module docstring."""
    waits = [float(d) for d in delays]
    attempts = len(waits) + 1

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        planned = waits[min(state.attempt_number, len(waits)) - 1] if waits else 0.0
        return retry_delay(planned, error) if error is not None else planned

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        seconds = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s; attempt %d/%d, retrying in %.1f s", error or what,
                    state.attempt_number, attempts, seconds)

    policy = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait,
        retry=tenacity.retry_if_exception_type(TemporaryError),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    try:
        return policy(call)
    except TemporaryError as e:
        raise ServiceUnavailableError(f"{what}: gave up after {attempts} attempts: {e}",
                                      delay=e.delay) from e


def http_date(ts: float) -> str:
    """``ts`` as an HTTP date (for tests and fault injection)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
