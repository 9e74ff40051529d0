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

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from detector.settings import Settings
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


# ------------------------------------------------------------------ registration

SINK_MODULES: tuple[str, ...] = (
    "detector.sinks.jsonl",
    "detector.sinks.console",
    "detector.sinks.alertmanager",
    "detector.sinks.k8s_events",
)
"""Every sink module (each ends with ``SINK = SinkSpec(...)``), in the order verdicts are
handed to them; a new sink is its module and one line here (and the settings it reads)."""


@dataclass(frozen=True)
class SinkContext:
    """What a sink's builder is given by the runtime (``detector.runtime.build``)."""

    settings: Settings
    logger: logging.Logger
    out_dir: Path | None
    """Where relative output paths go (None: the working directory)."""
    stream: IO[str] | None
    """The console's stream (None: standard output)."""
    adopts_node_alerts: bool
    """The source judges its node's pods alone (its spec's ``adopts_node_alerts``)."""
    actuator: Callable[[], Any]
    """The cluster's :class:`detector.remediation.actuator.Actuator`, built on the first
    call and shared (None: no Kubernetes configuration)."""


@dataclass(frozen=True)
class SinkSpec:
    """How the runtime builds one sink: ``build`` gives the sink the settings ask for, or
    None where they do not; ``cluster``: it talks to the cluster (never built for the
    embedded default); ``thinned``: on the embedded default (which scores every real second)
    a pod's unchanged alert is passed on once a real minute only."""

    name: str
    build: Callable[[SinkContext], Sink | None]
    cluster: bool = False
    thinned: bool = False


def sink_specs() -> list[SinkSpec]:
    """The spec of every sink of :data:`SINK_MODULES`, in order."""
    return [importlib.import_module(m).SINK for m in SINK_MODULES]


@runtime_checkable
class Escalates(Protocol):
    """A sink that can raise a pod's incident (the Alertmanager sink's ``critical`` alert);
    the remediation controller escalates through it."""

    def escalate(self, namespace: str, pod: str, reason: str,
                 verdict: Verdict | None = None) -> None: ...
