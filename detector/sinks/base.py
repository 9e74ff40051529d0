"""The sink contract: the daemon hands every evaluation's verdicts to each sink.

``send`` must not block on the network for long and must not lose what it accepted: a sink
that talks to a remote service queues (bounded) and retries in the background; ``tick`` is
called every few seconds between scoring steps (re-sends, resolutions of alerts whose pods are
no longer scored; a sink with nothing to do there does nothing); ``flush`` waits (up to
``timeout`` seconds) until what was accepted is delivered, and returns whether it was;
``close`` flushes and releases resources. The daemon commits source offsets only after
``send`` returned, so accepted = handed over.

A verdict carries text from the cluster or the network (pod names, labels): a sink never lets
one verdict it cannot encode cost the others of the batch (see
:mod:`detector.sinks.console` and :mod:`detector.sinks.jsonl`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from detector.verdicts import Verdict


@runtime_checkable
class Sink(Protocol):
    name: str

    def send(self, verdicts: Sequence[Verdict]) -> None: ...

    def tick(self) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def close(self, timeout: float = 5.0) -> None: ...


class SynchronousSink:
    """A base for sinks that deliver within ``send`` (nothing queued): ``tick``, ``flush`` and
    ``close`` have nothing to do. Subclasses set ``name`` and implement ``send``."""

    name = "synchronous"

    def send(self, verdicts: Sequence[Verdict]) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Nothing pending between steps."""

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Nothing to release."""
