"""What goes into the window engine and what comes out: :class:`Sample` (one raw sample from a
streaming source), :class:`IngestReport` (what an ``ingest`` call did with its rows),
:class:`PodKey` and :class:`WindowBatch` (``n`` pod windows on one grid, with limits,
baselines and features), which the detectors consume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.channels import RESTART_CHANNEL
from detector.errors import InputError


@dataclass(frozen=True, order=True)
class PodKey:
    """A pod: the unit of detection (containers of a pod are summed)."""

    namespace: str
    pod: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True)
class Sample:
    """One raw sample, as a streaming source delivers it (fields as in the trace format)."""

    timestamp: float  # unix seconds
    namespace: str
    pod: str
    container: str
    metric: str
    value: float
    node: str = ""


@dataclass
class IngestReport:
    """What one ``ingest`` call did with its rows. Bad rows are counted here, never raised."""

    rows: int = 0  # rows offered
    accepted: int = 0  # rows stored (including duplicates and late rows that were absorbed)
    duplicates: int = 0  # rows repeating a row of this call or the newest stored sample of
    # their bin (same series and timestamp); absorbed. Older repeats count as late.
    late: int = 0  # accepted rows older than the newest sample of their series
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def merge(self, other: IngestReport) -> IngestReport:
        """Adds ``other``'s counts to this report in place and returns it."""
        self.rows += other.rows
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.late += other.late
        for k, v in other.rejected.items():
            self.rejected[k] = self.rejected.get(k, 0) + v
        return self



    def add(self, reason: str, count: int) -> None:
        if count:
            self.rejected[reason] = self.rejected.get(reason, 0) + int(count)


@dataclass(frozen=True)
class WindowBatch:
    """``n`` pod windows on one regular grid, with limits, baselines and features."""

    keys: list[PodKey]
    nodes: list[str]
    ts: np.ndarray  # (n,) float64: end of each window (grid point 0), unix seconds
    grid: np.ndarray  # (L,) float64: seconds relative to ts, ending at 0
    channels: tuple[str, ...]
    values: np.ndarray  # (n, C, L) float32, NaN where no data
    limits: np.ndarray  # (n, C) float32, NaN where unknown
    baseline: np.ndarray  # (n, C, 2) float32: (median, MAD) of the pod's own history
    features: np.ndarray  # (n, F) float32, NaN = missing
    feature_names: tuple[str, ...]
    stale: np.ndarray  # (n,) bool: too little recent data to judge
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (n, L) float32
    memory_restarts: np.ndarray | None = None
    """(n, L) float32: the restart increments that start a new *memory* incarnation of the
    pod - those of containers that held a real part of its working set
    (:meth:`detector.windows.assemble.WindowAssembler._align_restarts`); None: every
    restart does (the ``restarts`` channel, :meth:`restarts_of_memory`)."""

    memory_container: np.ndarray | None = None
    """(n,) object: where one container's own memory limit binds, its name ("" elsewhere);
    the memory channels' ``limits`` there are its own limit plus the other containers'
    newest use (:meth:`detector.windows.assemble.WindowAssembler._binding`). None: nowhere."""
    memory_container_limit: np.ndarray | None = None
    """(n,) float64: that container's own memory limit, bytes (NaN elsewhere)."""

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def step_s(self) -> float:
        """Grid step, seconds."""
        return float(self.grid[1] - self.grid[0]) if self.grid.size > 1 else 0.0

    def channel(self, name: str) -> np.ndarray:
        """The ``(n, L)`` values of one channel."""
        return self.values[:, self.channels.index(name), :]

    def restarts_of_memory(self) -> np.ndarray:
        """(n, L): the restart increments the memory detectors start an incarnation at
        (:attr:`memory_restarts`, else the ``restarts`` channel)."""
        if self.memory_restarts is not None:
            return self.memory_restarts
        return self.channel(RESTART_CHANNEL)

    def subset(self, idx: Any) -> WindowBatch:
        """The windows selected by ``idx`` (a boolean mask, integer indices or a slice)."""
        pos = np.arange(len(self.keys))[idx]
        pos = np.atleast_1d(pos)
        return WindowBatch(
            keys=[self.keys[i] for i in pos.tolist()],
            nodes=[self.nodes[i] for i in pos.tolist()],
            ts=self.ts[pos],
            grid=self.grid,
            channels=self.channels,
            values=self.values[pos],
            limits=self.limits[pos],
            baseline=self.baseline[pos],
            features=self.features[pos],
            feature_names=self.feature_names,
            stale=self.stale[pos],
            extra={k: v[pos] for k, v in self.extra.items()},
            memory_restarts=None if self.memory_restarts is None else self.memory_restarts[pos],
            memory_container=(None if self.memory_container is None
                              else self.memory_container[pos]),
            memory_container_limit=(None if self.memory_container_limit is None
                                    else self.memory_container_limit[pos]),
        )

    def binding_of(self, i: int) -> tuple[str, float] | None:
        """(container, its own memory limit) where one container's limit binds window ``i``."""
        if self.memory_container is None or self.memory_container_limit is None:
            return None
        name = str(self.memory_container[i])
        return (name, float(self.memory_container_limit[i])) if name else None

    @staticmethod
    def concat(batches: Sequence[WindowBatch]) -> WindowBatch:
        """One batch holding the windows of ``batches`` in order.

        All batches must share grid, channels and feature names (:class:`InputError`
        otherwise). An extra metric missing from some batches is NaN for their windows.
        """
        if not batches:
            raise InputError("WindowBatch.concat needs at least one batch")
        first = batches[0]
        for b in batches[1:]:
            if (
                b.grid.shape != first.grid.shape
                or not np.allclose(b.grid, first.grid)
                or b.channels != first.channels
                or b.feature_names != first.feature_names
            ):
                raise InputError("WindowBatch.concat: batches differ in grid, channels or features")
        L = first.grid.size
        names = sorted({k for b in batches for k in b.extra})
        extra = {
            k: np.concatenate(
                [
                    b.extra[k] if k in b.extra else np.full((len(b), L), np.nan, np.float32)
                    for b in batches
                ]
            )
            for k in names
        }
        return WindowBatch(
            keys=[k for b in batches for k in b.keys],
            nodes=[n for b in batches for n in b.nodes],
            ts=np.concatenate([b.ts for b in batches]),
            grid=first.grid,
            channels=first.channels,
            values=np.concatenate([b.values for b in batches]),
            limits=np.concatenate([b.limits for b in batches]),
            baseline=np.concatenate([b.baseline for b in batches]),
            features=np.concatenate([b.features for b in batches]),
            feature_names=first.feature_names,
            stale=np.concatenate([b.stale for b in batches]),
            extra=extra,
            memory_restarts=(None if all(b.memory_restarts is None for b in batches) else
                             np.concatenate([b.restarts_of_memory() for b in batches])),
            memory_container=(None if all(b.memory_container is None for b in batches) else
                              np.concatenate([np.full(len(b), "", dtype=object)
                                              if b.memory_container is None
                                              else b.memory_container for b in batches])),
            memory_container_limit=(
                None if all(b.memory_container_limit is None for b in batches) else
                np.concatenate([np.full(len(b), np.nan) if b.memory_container_limit is None
                                else b.memory_container_limit for b in batches])),
        )
