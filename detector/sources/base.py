"""The source contract: samples in columns, an acknowledgement token, and a clock.

The daemon (:mod:`detector.runtime.daemon`) drives every source the same way::

    source.start()
    while running:
        delivery = source.poll(timeout)        # samples (maybe none) + a token
        engine.ingest(delivery.samples.columns())
        ... at each step: score, hand verdicts to the sinks, then
        source.commit(tokens of the deliveries scored)
    source.close(timeout)

* ``poll`` never raises for bad input: malformed data is counted in ``Delivery.rejected``
  (samples, by reason) and ``Delivery.dead_lettered`` (messages); an unreachable service is
  reported by ``status`` (``up`` False, ``caught_up`` False) while the source backs off on
  its own, finite schedule. Only a :class:`~detector.errors.PermanentError` (bad
  configuration) escapes.
* ``commit`` acknowledges the tokens of deliveries whose samples were folded and whose
  verdicts were handed to the sinks (at-least-once: a crash before it replays them; the window
  engine absorbs the duplicates).
* ``now`` is the source's clock in unix seconds: wall time for Prometheus and Kafka, the
  compressed clock of the embedded default. The daemon scores a window when ``now`` passes its
  end (plus ``runtime.lateness_s``). ``clock_rate`` is how many source-clock seconds pass per
  real second (1, or the embedded default's ``time_scale``): the daemon sleeps and presents
  durations with it, instead of reading a source's settings.
* ``caught_up`` is False while the source knows windows are missing data it will fetch
  (Prometheus down, a gap being backfilled): the daemon marks windows stale meanwhile, so a
  gap never raises a pod alarm.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from detector.settings import Settings


class SampleColumns:
    """Samples as parallel lists (the trace columns), cheap to append and to ingest."""

    __slots__ = ("container", "metric", "namespace", "node", "pod", "timestamp", "value")

    def __init__(self) -> None:
        self.timestamp: list[float] = []
        self.namespace: list[str] = []
        self.pod: list[str] = []
        self.container: list[str] = []
        self.node: list[str] = []
        self.metric: list[str] = []
        self.value: list[float] = []

    def __len__(self) -> int:
        return len(self.timestamp)

    def append(self, timestamp: float, namespace: str, pod: str, container: str, node: str,
               metric: str, value: float) -> None:
        self.timestamp.append(timestamp)
        self.namespace.append(namespace)
        self.pod.append(pod)
        self.container.append(container)
        self.node.append(node)
        self.metric.append(metric)
        self.value.append(value)

    def extend(self, other: SampleColumns) -> None:
        for name in self.__slots__:
            getattr(self, name).extend(getattr(other, name))

    def truncate(self, n: int) -> None:
        """Drops every sample after the first ``n`` (undo a partial append)."""
        for name in self.__slots__:
            del getattr(self, name)[n:]

    def columns(self) -> dict[str, list[Any]]:
        """The mapping :meth:`detector.windows.WindowEngine.ingest` takes."""
        return {
            "timestamp": self.timestamp, "namespace": self.namespace, "pod": self.pod,
            "container": self.container, "node": self.node, "metric": self.metric,
            "value": self.value,
        }

    def newest(self) -> float | None:
        return max(self.timestamp) if self.timestamp else None

    def drop_after(self, cutoff: float) -> int:
        """Drops every sample stamped after ``cutoff`` (unix seconds); returns how many.

        A source calls it with ``now + max_future_s``: one sample from a skewed clock (the
        year 5100) would otherwise move the window engine's clock, and every other pod would
        then look vanished."""
        if not self.timestamp or max(self.timestamp) <= cutoff:
            return 0
        keep = [i for i, t in enumerate(self.timestamp) if t <= cutoff]
        dropped = len(self.timestamp) - len(keep)
        for name in self.__slots__:
            col = getattr(self, name)
            col[:] = [col[i] for i in keep]
        return dropped


@dataclass
class Delivery:
    """What one ``poll`` returned."""

    samples: SampleColumns = field(default_factory=SampleColumns)
    token: Any = None  # handed back to ``commit`` once the samples were scored; None: nothing
    rejected: Counter[str] = field(default_factory=Counter)  # samples refused, by reason
    dead_lettered: int = 0  # messages sent to the dead-letter destination
    messages: int = 0  # messages (Kafka records, query answers) this delivery read
    backfill: bool = False  # history fetched to fill windows (start, or a gap)


@dataclass
class SourceStatus:
    """How a source is doing (for /readyz, /metrics and logs)."""

    up: bool  # the last call to the service answered
    caught_up: bool  # no known gap pending: windows are complete up to now
    lag_s: float | None = None  # now - newest sample delivered, seconds (None: nothing yet)
    detail: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # source-specific gauges


@runtime_checkable
class Source(Protocol):
    name: str

    def start(self) -> None: ...

    def poll(self, timeout: float) -> Delivery: ...

    def commit(self, tokens: Sequence[Any]) -> None: ...

    def now(self) -> float: ...

    def clock_rate(self) -> float: ...

    def status(self) -> SourceStatus: ...

    def close(self, timeout: float = 5.0) -> None: ...


def next_wait(backoff: Sequence[float], attempt: int) -> float:
    """The wait before attempt ``attempt + 1`` (0-based) of a finite backoff list whose last
    entry repeats."""
    if not backoff:
        return 1.0
    return float(backoff[min(attempt, len(backoff) - 1)])


# ------------------------------------------------------------------ registration


Describe = Callable[[Any, Any, float, Any], list[str]]
"""``describe(source, summary, scale, diagnosis)``: a source's lines of the run summary
(``summary``: the daemon's ``RunSummary``; ``scale``: its clock rate, source seconds per real
second; ``diagnosis(namespace, pod)``: the in-pod diagnosis' answer or None, or itself None)."""


@dataclass(frozen=True)
class SourceSpec:
    """How the runtime builds and presents one source (``SOURCE`` at the end of its module).

    A source is its module and its settings class (``detector.settings``: a section of
    ``sources``, whose ``module`` names the source's module and whose ``incomplete`` says
    what the chosen source lacks); :func:`source_spec` finds the spec from the settings, so
    ``detector.runtime.build`` names no source.

    ``build(settings, logger, out_dir)`` makes the source. ``adopts_node_alerts``: this
    daemon alone judges the pods of its node (the Prometheus source), so after a restart it
    takes over the node's open alerts. ``embedded``: the embedded default (real loops on this
    host, in compressed time): console lines repeat an alert once a real minute, remediation
    is a printed dry-run plan, a progress line until the first alarm, no cluster clients, the
    in-pod diagnosis over files in ``out_dir``. ``default_out_dir``: where its files go when
    ``--out`` is not given. ``banner(source, model_version, scale)``: the line printed at
    start; ``describe`` (a :data:`Describe`): the run summary's lines."""

    kind: str
    build: Callable[[Settings, logging.Logger, Path | None], Source]
    adopts_node_alerts: bool = False
    embedded: bool = False
    default_out_dir: Path | None = None
    banner: Callable[[Any, str, float], str] | None = None
    describe: Describe | None = None


def source_spec(settings: Settings) -> SourceSpec:
    """The spec of the source ``settings.sources.kind`` names (its settings class's
    ``module``, imported only now: a source's client libraries load only when it is used)."""
    section = getattr(settings.sources, settings.sources.kind)
    spec: SourceSpec = importlib.import_module(type(section).module).SOURCE
    if spec.kind != settings.sources.kind:  # pragma: no cover - a wrong module name
        raise TypeError(f"{type(section).module}.SOURCE is the {spec.kind!r} source, not "
                        f"{settings.sources.kind!r}")
    return spec
