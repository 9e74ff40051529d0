"""The window engine: raw samples in, per-pod fixed-grid windows out.

One engine is shared by the replay (``detector.replay``), the daemon's sources and offline
training (``training/``), so a model sees the same windows everywhere. Callers feed samples
with :meth:`WindowEngine.ingest` (a DataFrame in the trace format of ``detector.traces``) or
:meth:`WindowEngine.ingest_samples` (streaming sources) and ask for a
:class:`WindowBatch` with :meth:`WindowEngine.windows`.

(Interface committed first so that other modules can build on it; the implementation
follows.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True, order=True)
class PodKey:
    """A pod: the unit of detection (containers of a pod are summed)."""

    namespace: str
    pod: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


CHANNELS: tuple[str, ...] = (
    "mem_working_set",  # bytes, container_memory_working_set_bytes summed over containers
    "mem_rss",  # bytes, container_memory_rss
    "gpu_fb_used",  # bytes, DCGM_FI_DEV_FB_USED (MiB in the trace, converted)
    "cpu_rate",  # cores, rate of container_cpu_usage_seconds_total
    "gpu_util",  # 0..1, DCGM_FI_DEV_GPU_UTIL / 100
    "net_rx_rate",  # bytes/s, rate of container_network_receive_bytes_total
    "net_tx_rate",  # bytes/s, rate of container_network_transmit_bytes_total
    "fs_usage",  # bytes, container_fs_usage_bytes
    "restarts",  # restart count increments per grid step, kube_pod_container_status_restarts_total
)
"""The canonical channel order of :attr:`WindowBatch.values`."""

MEMORY_CHANNELS: tuple[str, ...] = ("mem_working_set", "mem_rss", "gpu_fb_used")
THROUGHPUT_CHANNELS: tuple[str, ...] = ("cpu_rate", "gpu_util", "net_rx_rate", "net_tx_rate")


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for ch in CHANNELS:
        if ch == "restarts":
            names.append("restarts.count_1h")
            continue
        names += [f"{ch}.level_z", f"{ch}.slope_30m", f"{ch}.log_vol_ratio"]
    for ch in MEMORY_CHANNELS:
        names += [f"{ch}.frac_limit", f"{ch}.floor_slope"]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _feature_names()
"""Names of :attr:`WindowBatch.features` columns, ``"<channel>.<stat>"``; see
:func:`extract_features` for the definition of each statistic."""


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
    duplicates: int = 0  # rows whose series + timestamp was already seen (absorbed)
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

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def step_s(self) -> float:
        return float(self.grid[1] - self.grid[0]) if self.grid.size > 1 else 0.0

    def channel(self, name: str) -> np.ndarray:
        """The ``(n, L)`` values of one channel."""
        return self.values[:, self.channels.index(name), :]

    def subset(self, idx: Any) -> WindowBatch:
        """The windows selected by ``idx`` (a boolean mask, integer indices or a slice)."""
        raise NotImplementedError

    @staticmethod
    def concat(batches: Sequence[WindowBatch]) -> WindowBatch:
        """One batch holding the windows of ``batches`` in order (same grid and channels)."""
        raise NotImplementedError


class WindowEngine:
    """Bounded per-pod history of every series, resampled to windows on request."""

    def __init__(
        self,
        *,
        horizon_s: float = 4 * 3600,
        step_s: float = 60,
        max_late_s: float = 900,
        max_gap_s: float = 300,
        stale_after_s: float = 300,
        min_history_s: float = 1800,
        pod_ttl_s: float = 900,
        origin_s: float = 0.0,
    ) -> None:
        raise NotImplementedError

    def ingest(self, df: pd.DataFrame | dict[str, Any]) -> IngestReport:
        raise NotImplementedError

    def ingest_samples(self, samples: Iterable[Sample]) -> IngestReport:
        raise NotImplementedError

    def windows(
        self, at: float | None = None, pods: Iterable[PodKey] | None = None
    ) -> WindowBatch:
        raise NotImplementedError

    def pods(self) -> list[PodKey]:
        raise NotImplementedError

    def drop_pod(self, key: PodKey) -> bool:
        raise NotImplementedError

    def state_size(self) -> dict[str, int]:
        raise NotImplementedError


def extract_features(
    values: np.ndarray, limits: np.ndarray, baseline: np.ndarray, step_s: float
) -> np.ndarray:
    """The ``(n, len(FEATURE_NAMES))`` float32 feature matrix of windows (vectorised)."""
    raise NotImplementedError
