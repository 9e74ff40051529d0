"""One polling wait for the stack tests: poll until truthy, fail with what was last seen.

Every test that waits on a real server (the control plane's controllers, a daemon, kwok) polls
the same way. On a loaded machine a controller can take many times its idle latency, so a wait
that times out says what it saw last (``describe``) and the last transient error, which tells a
slow controller from a wrong expectation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import requests
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")

#: errors a poll treats as "not yet": the API server or a daemon briefly unreachable or busy
TRANSIENT: tuple[type[BaseException], ...] = (ApiException, requests.RequestException, OSError)


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str,
             interval: float = 0.5, guard: Callable[[], None] | None = None,
             describe: Callable[[], object] | None = None) -> T:
    """Poll ``check`` until it returns something truthy and return that.

    ``guard`` runs before each poll and may fail the wait early (a daemon that died).
    ``describe`` is called once on timeout; its answer goes into the failure message.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if guard is not None:
            guard()
        try:
            got = check()
        except TRANSIENT as e:
            got, last = None, e
        if got:
            return got
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    seen = ""
    if describe is not None:
        try:
            seen = f"; last seen: {describe()}"
        except TRANSIENT as e:
            seen = f"; describing it failed: {_one_line(e)}"
    error = f"; last error: {_one_line(last)}" if last is not None else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{seen}{error}")


def _one_line(e: BaseException) -> str:
    """``ApiException``'s repr drops its status and reason; its str spans lines."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"
