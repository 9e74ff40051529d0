"""The window engine: raw samples in, per-pod fixed-grid windows out.

One engine is shared by the replay (``detector.replay``), the daemon's sources and offline
training (``training/``), so a model sees the same windows everywhere. Callers feed samples
with :meth:`WindowEngine.ingest` (a DataFrame in the trace format of ``detector.traces``) or
:meth:`WindowEngine.ingest_samples` (streaming sources) and ask for a :class:`WindowBatch` with
:meth:`WindowEngine.windows`; models in ``detector.models`` consume the batch.

How samples become windows
--------------------------
* Time is cut into bins of ``step_s`` seconds: bin ``b`` holds the samples with
  ``origin + (b-1)*step < t <= origin + b*step``. Each series (namespace, pod, container,
  metric) keeps a ring of the last ``(horizon_s + max_late_s) / step_s`` bins; per bin it keeps
  the newest sample (timestamp and value) and, for counters, the largest raw value seen in the
  bin. Memory per series is therefore bounded and independent of the sample rate.
* Duplicates (same series and timestamp) are absorbed: the later arrival replaces the value.
  Late samples (older than the newest of their series, within ``max_late_s``) are merged into
  their bin; older ones are rejected as ``too_old``. NaN/inf values, bad timestamps, negative
  counters and rows without namespace/pod/metric are rejected and counted by reason in the
  :class:`IngestReport`; a bad row never raises and never disturbs accepted data.
* Counters (``*_total``) become per-second rates (``cpu_rate``, ``net_*_rate``, custom
  ``*_total`` metrics) or per-step increments (``restarts``) between consecutive non-empty
  bins, Prometheus-style: a decrease is a reset and the new value counts from 0 (a reset
  inside one bin is seen through the bin's maximum).
* Gauges take the newest value of each bin. Rates and gauges are forward-filled over gaps of
  up to ``max_gap_s``; beyond that the grid holds NaN.
* Containers of a pod are summed (the pod is the unit); a pod-level series with an empty
  ``container`` label is used only when the pod has no per-container series for that metric;
  the pause container ``POD`` is ignored. Memory limits are summed over containers; a limit of
  0 (unlimited) on any container makes the pod's limit unknown (NaN).
* A window ends at the last bin boundary ``<= at`` (its ``ts``) and only ever uses samples with
  timestamps ``<= ts``: windows are causal.
* A pod with no sample for ``pod_ttl_s`` (engine clock = newest timestamp ingested) is
  forgotten, so memory stays bounded as pods come and go.
* The engine holds only ``horizon_s + max_late_s`` of history per series (about 8 KiB per
  series at the defaults). Feed a long trace in time order, a step at a time, and ask for
  windows as you go (:func:`iter_windows` / :func:`collect_windows` do exactly that; the
  replay, evaluation and training all go through them); ingesting a whole day at once
  keeps only its last hours. ``windows(at)`` for an ``at`` older than the retained history
  is still causal but incomplete (NaN).

Baseline and features
---------------------
``baseline`` is the pod's own robust level and scale, (median, MAD), of each channel over the
part of the window older than ``baseline_exclude_s`` (default: all but the last hour), so a
new workload is judged against itself; NaN until ``min_baseline_s`` of data exist there.
Only bins after the window's last container restart count (a restarted container is a new
incarnation, judged against itself again), and features relative to the baseline are NaN
while it is missing.
``features`` (:data:`FEATURE_NAMES`, see :func:`extract_features`) summarise each window for
the drift models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from detector import channels as chan
from detector import traces as tr
from detector.errors import InputError


@dataclass(frozen=True, order=True)
class PodKey:
    """A pod: the unit of detection (containers of a pod are summed)."""

    namespace: str
    pod: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


CHANNELS: tuple[str, ...] = chan.CHANNELS
"""The canonical channel order of :attr:`WindowBatch.values` (the rows of
:data:`detector.channels.CHANNEL_TABLE`)."""

CHANNEL_METRICS: Mapping[str, str] = chan.CHANNEL_METRICS
"""The trace metric each channel is computed from (to name it in explanations)."""

MEMORY_CHANNELS: tuple[str, ...] = chan.LEAK_CHANNELS
"""The channels the leak detector watches."""
THROUGHPUT_CHANNELS: tuple[str, ...] = chan.THROUGHPUT_CHANNELS

FEATURE_NAMES: tuple[str, ...] = chan.feature_names()
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

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def step_s(self) -> float:
        """Grid step, seconds."""
        return float(self.grid[1] - self.grid[0]) if self.grid.size > 1 else 0.0

    def channel(self, name: str) -> np.ndarray:
        """The ``(n, L)`` values of one channel."""
        return self.values[:, self.channels.index(name), :]

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
        )

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
        )


# ---------------------------------------------------------------------------------------------
# NaN-aware robust statistics along the last axis (vectorised; np.nanmedian is slow on 3-D).


def nanmedian_last(x: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where a row has no finite value."""
    xs = np.sort(x, axis=-1)  # NaN sorts last
    cnt = np.count_nonzero(np.isfinite(xs), axis=-1)
    lo = np.maximum((cnt - 1) // 2, 0)[..., None]
    hi = np.maximum(cnt // 2, 0)[..., None]
    hi = np.minimum(hi, max(xs.shape[-1] - 1, 0))
    med = 0.5 * (
        np.take_along_axis(xs, lo, axis=-1)[..., 0] + np.take_along_axis(xs, hi, axis=-1)[..., 0]
    )
    return np.where(cnt > 0, med, np.nan).astype(x.dtype, copy=False)


def nanmedian_mad_last(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, MAD) over the last axis ignoring NaN; MAD is raw (not scaled by 1.4826)."""
    med = nanmedian_last(x)
    mad = nanmedian_last(np.abs(x - med[..., None]))
    return med, mad


def last_restart_index(restarts: np.ndarray) -> np.ndarray:
    """``(n,)`` int: the bin of the last restart increment of each window, -1 for none.
    ``restarts`` ``(n, L)`` holds increments per bin, NaN for no data."""
    L = restarts.shape[-1]
    hit = np.nan_to_num(restarts) > 0
    return np.where(hit.any(axis=-1), L - 1 - np.argmax(hit[..., ::-1], axis=-1), -1)


def after_last_restart(restarts: np.ndarray) -> np.ndarray:
    """``(n, L)`` bool: bins after the last restart increment of each window (all True
    for windows without a restart)."""
    return np.arange(restarts.shape[-1])[None, :] > last_restart_index(restarts)[:, None]


def nancount_last(x: np.ndarray) -> np.ndarray:
    return np.count_nonzero(np.isfinite(x), axis=-1)


# ---------------------------------------------------------------------------------------------
# Features

# Absolute scale floors per channel (unit of the channel; the table's ``floor``): a flat
# healthy series has MAD 0, so scales are floored by these and by 5 % of the baseline level.
_SCALE_FLOOR = np.array([c.floor for c in chan.CHANNEL_TABLE], dtype=np.float64)
_RESTART_IDX = CHANNELS.index(chan.RESTART_CHANNEL)
_LEAK_IDX = [CHANNELS.index(c) for c in MEMORY_CHANNELS]
_INCREASE_IDX = [i for i, c in enumerate(chan.CHANNEL_TABLE) if c.kind == "increase"]
_REL_FLOOR = 0.05
_Z_CLIP = 50.0


def _tail(values: np.ndarray, seconds: float, step_s: float) -> np.ndarray:
    k = max(1, min(values.shape[-1], round(seconds / step_s)))
    return values[..., -k:]


def extract_features(
    values: np.ndarray, limits: np.ndarray, baseline: np.ndarray, step_s: float
) -> np.ndarray:
    """The ``(n, len(FEATURE_NAMES))`` float32 feature matrix of windows (vectorised).

    ``values`` is ``(n, C, L)`` in :data:`CHANNELS` order, ``limits`` ``(n, C)``, ``baseline``
    ``(n, C, 2)`` (median, MAD). For each gauge and rate channel, with
    ``scale = max(1.4826*MAD, 5 % of |median|, a per-channel floor)`` of the baseline:

    * ``<ch>.level_z`` - (median of the last 10 min - baseline median) / scale, clipped to
      +-50: the level relative to the pod's own history (a throughput collapse is strongly
      negative on ``cpu_rate``/``gpu_util``/``net_*``);
    * ``<ch>.slope_30m`` - (median of the last 10 min - median of minutes -30..-20) / scale,
      clipped to +-50: how far the channel moved over the last half hour;
    * ``<ch>.log_vol_ratio`` - log2 of (recent 30 min robust spread + floor) / (baseline
      spread + floor), clipped to +-10;

    for an increase channel (``restarts``) only ``<ch>.count_1h`` (increments over the last
    hour); and, for the leak channels (``leak`` in the channel table), ``<ch>.frac_limit``
    (last-10-min median / limit; NaN without a limit) and ``<ch>.floor_slope`` (Theil-Sen
    slope of 30-min block minima over the window - the rising floor under a GC sawtooth - in
    fractions of the limit per hour, or of the baseline level per hour when no limit is
    known). NaN wherever the inputs are missing.
    """
    _n, n_ch, L = values.shape
    if n_ch != len(CHANNELS):
        raise InputError(f"extract_features: expected {len(CHANNELS)} channels, got {n_ch}")
    v = values.astype(np.float64, copy=False)
    med_b = baseline[..., 0].astype(np.float64)
    mad_b = baseline[..., 1].astype(np.float64)
    floor = _SCALE_FLOOR[None, :]
    scale = np.fmax(np.fmax(1.4826 * mad_b, _REL_FLOOR * np.abs(med_b)), floor)
    # no baseline (a new pod or a fresh restart): nothing to scale against, so the
    # baseline-relative features are NaN (imputed by the models), not divided by the floor
    scale = np.where(np.isfinite(med_b), scale, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        recent10 = nanmedian_last(_tail(v, 600, step_s))
        k30 = max(2, min(L, round(1800 / step_s)))
        k10 = max(1, min(k30 // 2, round(600 / step_s)))
        early = nanmedian_last(v[..., L - k30 : L - k30 + k10])
        r30 = v[..., L - k30 :]
        _, mad_r = nanmedian_mad_last(r30)
        level_z = np.clip((recent10 - med_b) / scale, -_Z_CLIP, _Z_CLIP)
        slope = np.clip((recent10 - early) / scale, -_Z_CLIP, _Z_CLIP)
        volr = np.clip(
            np.log2((1.4826 * mad_r + floor) / (1.4826 * mad_b + floor)), -10.0, 10.0
        )
        inc_1h = _tail(v[:, _INCREASE_IDX, :], 3600, step_s)
        count_1h = np.full(v.shape[:2], np.nan)
        count_1h[:, _INCREASE_IDX] = np.where(
            nancount_last(inc_1h) > 0, np.nansum(np.nan_to_num(inc_1h), axis=-1), np.nan
        )
        mem_idx = _LEAK_IDX
        lim = limits[:, mem_idx].astype(np.float64)
        frac = recent10[:, mem_idx] / lim
        floor_rate = theil_sen_block_minima(v[:, mem_idx, :], step_s, block_s=1800)  # unit/s
        denom = np.where(np.isfinite(lim), lim, np.fmax(med_b[:, mem_idx], floor[:, mem_idx]))
        floor_slope = floor_rate * 3600.0 / denom
    by_stat = {"level_z": level_z, "slope_30m": slope, "log_vol_ratio": volr,
               "count_1h": count_1h}
    cols: list[np.ndarray] = []
    for ci, row in enumerate(chan.CHANNEL_TABLE):
        cols += [by_stat[stat][:, ci] for stat in row.stats()]
    leak_stat = {"frac_limit": frac, "floor_slope": floor_slope}
    for j in range(len(MEMORY_CHANNELS)):
        cols += [leak_stat[stat][:, j] for stat in chan.LEAK_STATS]
    out = np.stack(cols, axis=1).astype(np.float32)
    out[~np.isfinite(out)] = np.nan
    return out


def block_reduce(
    values: np.ndarray, step_s: float, block_s: float, how: str = "min", min_frac: float = 0.5
) -> tuple[np.ndarray, int]:
    """Reduces the last axis into blocks of ``block_s`` (aligned to the window end).

    Returns ``(blocks, bins_per_block)``: ``blocks`` is ``(..., nb)`` with ``how`` in
    {"min", "median", "max"} of each block, NaN where fewer than ``min_frac`` of a block's
    bins hold data. Leading bins that do not fill a whole block are dropped.
    """
    L = values.shape[-1]
    k = max(1, round(block_s / step_s))
    nb = L // k
    if nb == 0:
        return np.full((*values.shape[:-1], 0), np.nan), k
    x = values[..., L - nb * k :].reshape(*values.shape[:-1], nb, k)
    fin = np.isfinite(x)
    if how in ("min", "max"):
        # a loop over the k bins of a block: numpy reduces short last axes slowly
        fill = np.inf if how == "min" else -np.inf
        op = np.minimum if how == "min" else np.maximum
        xf = np.where(fin, x, fill)
        r = xf[..., 0].copy()
        cnt = fin[..., 0].astype(np.int32)
        for q in range(1, k):
            op(r, xf[..., q], out=r)
            cnt += fin[..., q]
    elif how == "median":
        r = nanmedian_last(x)
        cnt = np.count_nonzero(fin, axis=-1)
    else:
        raise ValueError(f"block_reduce: unknown reduction {how!r}")
    return np.where(cnt >= max(1, int(np.ceil(min_frac * k))), r, np.nan), k


def pairwise_slopes(blocks: np.ndarray, dt_s: float) -> np.ndarray:
    """All pairwise slopes ``(y_j - y_i) / ((j - i) * dt_s)`` for i < j: ``(..., P)``."""
    nb = blocks.shape[-1]
    i, j = np.triu_indices(nb, k=1)
    return (blocks[..., j] - blocks[..., i]) / ((j - i) * dt_s)


def theil_sen_block_minima(values: np.ndarray, step_s: float, block_s: float) -> np.ndarray:
    """Theil-Sen slope (unit/s) of block minima over the last axis; NaN with < 3 blocks."""
    blocks, k = block_reduce(values, step_s, block_s, "min")
    if blocks.shape[-1] < 3:
        return np.full(values.shape[:-1], np.nan)
    sl = pairwise_slopes(blocks, k * step_s)
    ok = nancount_last(blocks) >= 3
    return np.where(ok, nanmedian_last(sl), np.nan)


# ---------------------------------------------------------------------------------------------
# The engine

_GAUGE, _RATE, _INCREASE = 0, 1, 2
_KIND_CODE = {"gauge": _GAUGE, "rate": _RATE, "increase": _INCREASE}

# Targets a series feeds: the channels in CHANNELS order, then each limit metric of the limit
# table in order, then "any other metric" (-> WindowBatch.extra).
_LIMIT_TARGETS: dict[tuple[str, int], int] = {}  # (limit name, metric position) -> target
_KNOWN: dict[str, tuple[int, int, float]] = {  # metric -> (target, kind, unit scale)
    c.metric: (i, _KIND_CODE[c.kind], c.scale) for i, c in enumerate(chan.CHANNEL_TABLE)
}
for _lim in chan.LIMIT_TABLE:
    for _j, _m in enumerate(_lim.metrics):
        _LIMIT_TARGETS[(_lim.name, _j)] = len(_KNOWN)
        _KNOWN[_m.metric] = (len(_KNOWN), _GAUGE, _m.scale)
_T_EXTRA = len(_KNOWN)
_N_TARGETS = _T_EXTRA + 1

_PAUSE_CONTAINER = "POD"
_MAX_TIMESTAMP = 1e11  # year ~5138: larger values are milliseconds or garbage


INFRASTRUCTURE_PREFIXES: tuple[str, ...] = chan.INFRASTRUCTURE_PREFIXES


def _unused_infrastructure(metric: str) -> bool:
    return metric not in _KNOWN and metric.startswith(INFRASTRUCTURE_PREFIXES)


def _classify(metric: str) -> tuple[int, int, float]:
    known = _KNOWN.get(metric)
    if known is not None:
        return known
    return (_T_EXTRA, _RATE if tr.is_counter(metric) else _GAUGE, 1.0)


def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 = missing) and the string of each code."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy().astype(np.int64)
        cats = [str(c) for c in col.cat.categories]
        return codes, cats
    codes_, uniq = pd.factorize(col, use_na_sentinel=True)
    return codes_.astype(np.int64), [str(u) for u in uniq]


class WindowEngine:
    """Bounded per-pod history of every series, resampled to windows on request.

    Parameters (all keyword-only, all in seconds):

    * ``horizon_s`` - window length (the grid has ``horizon_s / step_s`` points);
    * ``step_s`` - grid step and bin width;
    * ``max_late_s`` - a late sample is merged if it is at most ``horizon_s + max_late_s``
      behind its series' newest sample (older ones are rejected as ``too_old``);
    * ``max_gap_s`` - gaps up to this long are forward-filled on the grid, longer ones are NaN;
    * ``stale_after_s`` - a window whose newest data is older than this is ``stale``;
    * ``min_history_s`` - a pod seen for less than this is ``stale`` (new pod);
    * ``baseline_exclude_s`` - the most recent part of a window left out of its baseline
      (default: one hour, at most a quarter of the horizon);
    * ``min_baseline_s`` - data needed in the baseline part before a baseline is given;
    * ``pod_ttl_s`` - a pod with no sample for this long is forgotten;
    * ``origin_s`` - bins end at ``origin_s + k * step_s``.
    """

    def __init__(
        self,
        *,
        horizon_s: float = 4 * 3600,
        step_s: float = 60,
        max_late_s: float = 900,
        max_gap_s: float = 300,
        stale_after_s: float = 300,
        min_history_s: float = 300,
        baseline_exclude_s: float | None = None,
        min_baseline_s: float = 1800,
        pod_ttl_s: float = 900,
        origin_s: float = 0.0,
    ) -> None:
        if baseline_exclude_s is None:
            baseline_exclude_s = min(3600.0, horizon_s / 4)
        problems = [
            f"{name} must be > 0 (got {val!r})"
            for name, val in (
                ("horizon_s", horizon_s),
                ("step_s", step_s),
                ("stale_after_s", stale_after_s),
                ("min_history_s", min_history_s),
                ("pod_ttl_s", pod_ttl_s),
            )
            if not (isinstance(val, int | float) and math.isfinite(val) and val > 0)
        ]
        problems += [
            f"{name} must be >= 0 (got {val!r})"
            for name, val in (
                ("max_late_s", max_late_s),
                ("max_gap_s", max_gap_s),
                ("baseline_exclude_s", baseline_exclude_s),
                ("min_baseline_s", min_baseline_s),
            )
            if not (isinstance(val, int | float) and math.isfinite(val) and val >= 0)
        ]
        if not problems and horizon_s < 4 * step_s:
            problems.append(f"horizon_s ({horizon_s}) must be at least 4 steps ({4 * step_s})")
        if not problems and baseline_exclude_s >= horizon_s:
            problems.append("baseline_exclude_s must be shorter than horizon_s")
        if problems:
            raise InputError("WindowEngine: " + "; ".join(problems))
        self.horizon_s = float(horizon_s)
        self.step_s = float(step_s)
        self.max_late_s = float(max_late_s)
        self.max_gap_s = float(max_gap_s)
        self.stale_after_s = float(stale_after_s)
        self.min_history_s = float(min_history_s)
        self.baseline_exclude_s = float(baseline_exclude_s)
        self.min_baseline_s = float(min_baseline_s)
        self.pod_ttl_s = float(pod_ttl_s)
        self.origin_s = float(origin_s)

        self.n_bins = max(4, round(self.horizon_s / self.step_s))  # L
        self._gap_bins = int(self.max_gap_s // self.step_s)
        self._lead = self._gap_bins + 1  # bins gathered before the window (rates, fill)
        self._ring = self.n_bins + self._lead + int(np.ceil(self.max_late_s / self.step_s)) + 1
        self.grid = (np.arange(-(self.n_bins - 1), 1, dtype=np.float64)) * self.step_s

        # series registry
        self._series_index: dict[tuple[str, str, str, str], int] = {}
        self._series_name: list[tuple[str, str, str, str] | None] = []
        self._free_series: list[int] = []
        cap = 64
        self._s_alive = np.zeros(cap, dtype=bool)
        self._s_pod = np.full(cap, -1, dtype=np.int64)
        self._s_target = np.zeros(cap, dtype=np.int64)
        self._s_kind = np.zeros(cap, dtype=np.int64)
        self._s_scale = np.ones(cap, dtype=np.float64)
        self._s_agg = np.zeros(cap, dtype=bool)  # container == "" (pod-level series)
        self._s_extra = np.full(cap, -1, dtype=np.int64)  # index into _extra_names
        self._s_newest_t = np.full(cap, -np.inf, dtype=np.float64)
        self._s_newest_b = np.full(cap, np.iinfo(np.int64).min // 2, dtype=np.int64)
        R = self._ring
        self._bt = np.full((cap, R), np.nan, dtype=np.float64)  # newest timestamp in bin
        self._bv = np.full((cap, R), np.nan, dtype=np.float64)  # value of that sample
        self._bm = np.full((cap, R), np.nan, dtype=np.float64)  # largest value in bin
        self._bid = np.full((cap, R), -1, dtype=np.int64)  # absolute bin id held by the slot
        self._extra_names: list[str] = []
        self._extra_index: dict[str, int] = {}

        # pod registry
        self._pod_index: dict[PodKey, int] = {}
        self._pod_keys: list[PodKey | None] = []
        self._pod_node: list[str] = []
        self._free_pods: list[int] = []
        self._p_first = np.zeros(0, dtype=np.float64)
        self._p_last = np.zeros(0, dtype=np.float64)
        self.clock = -np.inf  # newest timestamp ingested

    # ---------------------------------------------------------------- registry helpers

    def _grow_series(self, need: int) -> None:
        cap = self._s_alive.size
        if need <= cap:
            return
        new = max(need, 2 * cap)

        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            shape = (new, *a.shape[1:])
            b = np.full(shape, fill, dtype=a.dtype)
            b[:cap] = a
            return b

        self._s_alive = grow(self._s_alive, False)
        self._s_pod = grow(self._s_pod, -1)
        self._s_target = grow(self._s_target, 0)
        self._s_kind = grow(self._s_kind, 0)
        self._s_scale = grow(self._s_scale, 1.0)
        self._s_agg = grow(self._s_agg, False)
        self._s_extra = grow(self._s_extra, -1)
        self._s_newest_t = grow(self._s_newest_t, -np.inf)
        self._s_newest_b = grow(self._s_newest_b, np.iinfo(np.int64).min // 2)
        self._bt = grow(self._bt, np.nan)
        self._bv = grow(self._bv, np.nan)
        self._bm = grow(self._bm, np.nan)
        self._bid = grow(self._bid, -1)

    def _pod_slot(self, key: PodKey) -> int:
        p = self._pod_index.get(key)
        if p is not None:
            return p
        if self._free_pods:
            p = self._free_pods.pop()
            self._pod_keys[p] = key
            self._pod_node[p] = ""
        else:
            p = len(self._pod_keys)
            self._pod_keys.append(key)
            self._pod_node.append("")
            if p >= self._p_first.size:
                new = max(16, 2 * self._p_first.size)
                self._p_first = np.concatenate(
                    [self._p_first, np.full(new - self._p_first.size, np.inf)]
                )
                self._p_last = np.concatenate(
                    [self._p_last, np.full(new - self._p_last.size, -np.inf)]
                )
        self._p_first[p] = np.inf
        self._p_last[p] = -np.inf
        self._pod_index[key] = p
        return p

    def _series_slot(self, name: tuple[str, str, str, str]) -> int:
        s = self._series_index.get(name)
        if s is not None:
            return s
        ns, pod, container, metric = name
        p = self._pod_slot(PodKey(ns, pod))
        if self._free_series:
            s = self._free_series.pop()
        else:
            s = len(self._series_name)
            self._series_name.append(None)
            self._grow_series(s + 1)
        target, kind, scale = _classify(metric)
        self._series_name[s] = name
        self._series_index[name] = s
        self._s_alive[s] = True
        self._s_pod[s] = p
        self._s_target[s] = target
        self._s_kind[s] = kind
        self._s_scale[s] = scale
        self._s_agg[s] = container == ""
        if target == _T_EXTRA:
            e = self._extra_index.get(metric)
            if e is None:
                e = len(self._extra_names)
                self._extra_names.append(metric)
                self._extra_index[metric] = e
            self._s_extra[s] = e
        else:
            self._s_extra[s] = -1
        self._s_newest_t[s] = -np.inf
        self._s_newest_b[s] = np.iinfo(np.int64).min // 2
        self._bid[s] = -1
        self._bt[s] = np.nan
        self._bv[s] = np.nan
        self._bm[s] = np.nan
        return s

    # ---------------------------------------------------------------- public registry API

    def pods(self) -> list[PodKey]:
        """The pods currently held, in registration order."""
        return [k for k in self._pod_keys if k is not None]

    def drop_pod(self, key: PodKey) -> bool:
        """Forgets a pod and all its series; returns whether it was held."""
        p = self._pod_index.pop(key, None)
        if p is None:
            return False
        sids = np.flatnonzero(self._s_alive & (self._s_pod == p))
        for s in sids.tolist():
            name = self._series_name[s]
            if name is not None:
                self._series_index.pop(name, None)
            self._series_name[s] = None
            self._free_series.append(s)
        self._s_alive[sids] = False
        self._s_pod[sids] = -1
        self._bid[sids] = -1
        self._bt[sids] = np.nan
        self._bv[sids] = np.nan
        self._bm[sids] = np.nan
        self._pod_keys[p] = None
        self._pod_node[p] = ""
        self._p_first[p] = np.inf
        self._p_last[p] = -np.inf
        self._free_pods.append(p)
        return True

    def forget_vanished(self, now: float | None = None) -> list[PodKey]:
        """Drops pods with no sample in the last ``pod_ttl_s`` before ``now`` (default: clock)."""
        t = self.clock if now is None else float(now)
        if not np.isfinite(t):
            return []
        gone = [
            k
            for k, p in self._pod_index.items()
            if self._p_last[p] < t - self.pod_ttl_s
        ]
        for k in gone:
            self.drop_pod(k)
        return gone

    def state_size(self) -> dict[str, int]:
        """Pods and series held and the bytes of the per-series ring buffers."""
        ring_bytes = sum(a.nbytes for a in (self._bt, self._bv, self._bm, self._bid))
        meta = sum(
            a.nbytes
            for a in (
                self._s_alive, self._s_pod, self._s_target, self._s_kind, self._s_scale,
                self._s_agg, self._s_extra, self._s_newest_t, self._s_newest_b,
            )
        )
        return {
            "pods": len(self._pod_index),
            "series": len(self._series_index),
            "series_capacity": int(self._s_alive.size),
            "ring_bins": self._ring,
            "bytes": int(ring_bytes + meta),
        }

    # ---------------------------------------------------------------- ingestion

    def ingest_samples(self, samples: Iterable[Sample]) -> IngestReport:
        """Ingests samples from a streaming source (see :meth:`ingest`)."""
        rows = list(samples)
        cols: dict[str, Any] = {
            "timestamp": np.array([r.timestamp for r in rows], dtype=object),
            "namespace": [r.namespace for r in rows],
            "pod": [r.pod for r in rows],
            "container": [r.container for r in rows],
            "node": [r.node for r in rows],
            "metric": [r.metric for r in rows],
            "value": np.array([r.value for r in rows], dtype=object),
        }
        return self.ingest(cols)

    def ingest(self, df: pd.DataFrame | Mapping[str, Any]) -> IngestReport:
        """Ingests rows in the trace format (a DataFrame or a mapping of equal-length columns).

        Vectorised over the rows. Bad rows are rejected and counted by reason in the returned
        report (``bad_timestamp``, ``missing_label``, ``nan_value``, ``inf_value``,
        ``negative_counter``, ``negative_value``, ``too_old``, ``pause_container``); only a
        frame without the required columns raises :class:`InputError` (before anything is
        stored). Pods silent for ``pod_ttl_s`` are forgotten afterwards.
        """
        frame = df if isinstance(df, pd.DataFrame) else pd.DataFrame(dict(df))
        missing = [c for c in tr.REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(
                f"WindowEngine.ingest: missing required column(s) {', '.join(missing)}"
            )
        rep = IngestReport(rows=len(frame))
        if len(frame) == 0:
            return rep
        ts = _as_float(frame["timestamp"])
        val = _as_float(frame["value"])
        ok = np.isfinite(ts) & (ts > 0) & (ts < _MAX_TIMESTAMP)
        rep.add("bad_timestamp", int((~ok).sum()))

        ns_c, ns_u = _codes(frame["namespace"])
        pod_c, pod_u = _codes(frame["pod"])
        met_c, met_u = _codes(frame["metric"])
        if "container" in frame.columns:
            con_c, con_u = _codes(frame["container"])
        else:
            con_c, con_u = np.full(len(frame), -1, dtype=np.int64), []
        con_c = con_c + 1  # 0 = missing/""
        con_u = ["", *con_u]
        empty_ns = np.array([u == "" for u in ns_u] + [True])
        empty_pod = np.array([u == "" for u in pod_u] + [True])
        empty_met = np.array([u == "" for u in met_u] + [True])
        labelled = ~(empty_ns[ns_c] | empty_pod[pod_c] | empty_met[met_c])
        rep.add("missing_label", int((ok & ~labelled).sum()))
        ok &= labelled
        pause = np.array([False] + [u == _PAUSE_CONTAINER for u in con_u[1:]])
        rep.add("pause_container", int((ok & pause[con_c]).sum()))
        ok &= ~pause[con_c]
        # the node's own series that no channel reads (cAdvisor's memory breakdown, other
        # kube-state-metrics) are not an application's custom metrics
        unused = np.array([_unused_infrastructure(u) for u in met_u] + [False])
        rep.add("unused_metric", int((ok & unused[met_c]).sum()))
        ok &= ~unused[met_c]
        nan_v = np.isnan(val)
        inf_v = np.isinf(val)
        rep.add("nan_value", int((ok & nan_v).sum()))
        rep.add("inf_value", int((ok & inf_v).sum()))
        ok &= ~(nan_v | inf_v)
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            return rep

        # one integer key per (namespace, pod, container, metric)
        sizes = [len(ns_u), len(pod_u), len(con_u), len(met_u)]
        if float(np.prod([max(1, z) for z in sizes], dtype=np.float64)) < 2**62:
            key = ns_c[rows]
            key = key * sizes[1] + pod_c[rows]
            key = key * sizes[2] + con_c[rows]
            key = key * sizes[3] + met_c[rows]
            uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
        else:  # pragma: no cover - astronomically many label values in one chunk
            stacked = np.stack([ns_c[rows], pod_c[rows], con_c[rows], met_c[rows]], axis=1)
            uniq, first, inv = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        node_c, node_u = (
            _codes(frame["node"]) if "node" in frame.columns else (None, [])
        )
        sid_of = np.empty(len(uniq), dtype=np.int64)
        for u, r0 in enumerate(first.tolist()):
            r = int(rows[r0])
            name = (ns_u[ns_c[r]], pod_u[pod_c[r]], con_u[con_c[r]], met_u[met_c[r]])
            s = self._series_slot(name)
            sid_of[u] = s
            if node_c is not None and node_c[r] >= 0:
                node = node_u[node_c[r]]
                if node:
                    self._pod_node[int(self._s_pod[s])] = node
        sid = sid_of[inv.reshape(-1)]
        t = ts[rows]
        v = val[rows] * self._s_scale[sid]
        kind = self._s_kind[sid]
        counter = kind != _GAUGE
        neg = v < 0
        bad_neg_counter = neg & counter
        bad_neg_known = neg & ~counter & (self._s_target[sid] != _T_EXTRA)
        rep.add("negative_counter", int(bad_neg_counter.sum()))
        rep.add("negative_value", int(bad_neg_known.sum()))
        keep = ~(bad_neg_counter | bad_neg_known)
        sid, t, v = sid[keep], t[keep], v[keep]
        if sid.size == 0:
            return rep
        b = np.ceil((t - self.origin_s) / self.step_s).astype(np.int64)

        # too old: behind the newest bin of the series by more than the ring holds
        order = np.lexsort((t, b, sid))
        sid, t, v, b = sid[order], t[order], v[order], b[order]
        s_start = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        chunk_newest_b = np.maximum.reduceat(b, s_start)
        chunk_newest_t = np.maximum.reduceat(t, s_start)
        us = sid[s_start]
        newest_b = np.maximum(self._s_newest_b[us], chunk_newest_b)
        seg = np.repeat(np.arange(us.size), np.diff(np.r_[s_start, sid.size]))
        fresh = b > newest_b[seg] - (self._ring - self._lead)
        rep.add("too_old", int((~fresh).sum()))
        late = t < self._s_newest_t[sid]
        dup_in_chunk = np.r_[False, (sid[1:] == sid[:-1]) & (t[1:] == t[:-1])]
        sid, t, v, b = sid[fresh], t[fresh], v[fresh], b[fresh]
        late, dup_in_chunk = late[fresh], dup_in_chunk[fresh]
        self._s_newest_b[us] = newest_b
        self._s_newest_t[us] = np.maximum(self._s_newest_t[us], chunk_newest_t)
        if sid.size == 0:
            return rep

        # one group per (series, bin): the newest sample and the largest value
        g_start = np.flatnonzero(np.r_[True, (sid[1:] != sid[:-1]) | (b[1:] != b[:-1])])
        g_last = np.r_[g_start[1:], sid.size] - 1
        g_sid, g_b = sid[g_start], b[g_start]
        g_t, g_v = t[g_last], v[g_last]
        g_max = np.maximum.reduceat(v, g_start)
        slot = g_b % self._ring
        cur = self._bid[g_sid, slot]
        newer = cur < g_b
        same = cur == g_b
        older = cur > g_b  # cannot happen after the too_old filter; kept for safety
        cur_t = self._bt[g_sid, slot]
        dup_stored = same & (g_t == cur_t)
        # newer bin: overwrite the slot
        ns_, nb_ = g_sid[newer], slot[newer]
        self._bid[ns_, nb_] = g_b[newer]
        self._bt[ns_, nb_] = g_t[newer]
        self._bv[ns_, nb_] = g_v[newer]
        self._bm[ns_, nb_] = g_max[newer]
        # same bin: merge
        ss_, sb_ = g_sid[same], slot[same]
        replace = g_t[same] >= cur_t[same]
        self._bt[ss_[replace], sb_[replace]] = g_t[same][replace]
        self._bv[ss_[replace], sb_[replace]] = g_v[same][replace]
        self._bm[ss_, sb_] = np.fmax(self._bm[ss_, sb_], g_max[same])
        n_older = int(np.diff(np.r_[g_start, sid.size])[older].sum())
        rep.add("too_old", n_older)
        rep.accepted = int(sid.size) - n_older
        dup = dup_in_chunk.copy()
        dup[g_last[dup_stored]] = True
        rep.duplicates = int(dup.sum())
        rep.late = int((late & ~dup).sum())

        # pod first/last seen
        pods = self._s_pod[sid]
        np.minimum.at(self._p_first, pods, t)
        np.maximum.at(self._p_last, pods, t)
        self.clock = max(self.clock, float(t.max()))
        self.forget_vanished()
        return rep

    # ---------------------------------------------------------------- windows

    def window_end(self, at: float) -> float:
        """The end (grid point 0) of the window evaluated at ``at``: a bin boundary <= at."""
        return self.origin_s + math.floor((at - self.origin_s) / self.step_s) * self.step_s

    def windows(
        self, at: float | None = None, pods: Iterable[PodKey] | None = None
    ) -> WindowBatch:
        """The windows of all held pods (or of ``pods``) ending at the last bin boundary <= at.

        ``at`` defaults to the engine clock. Pods with no data in the window, or silent for
        ``pod_ttl_s`` before its end, are left out; so are requested pods that are not held.
        Only samples with timestamps <= the window end are used.
        """
        L = self.n_bins
        C = len(CHANNELS)
        if at is None:
            at = self.clock
        if at is None or not np.isfinite(at):
            return self.empty_batch()
        B = math.floor((float(at) - self.origin_s) / self.step_s)
        t_end = self.origin_s + B * self.step_s
        if pods is None:
            cand = sorted(self._pod_index.values())
        else:
            cand = sorted({self._pod_index[k] for k in pods if k in self._pod_index})
        if not cand:
            return self.empty_batch()
        cand_arr = np.asarray(cand, dtype=np.int64)
        cand_arr = cand_arr[self._p_first[cand_arr] <= t_end]
        if cand_arr.size == 0:
            return self.empty_batch()
        pod_pos = np.full(len(self._pod_keys), -1, dtype=np.int64)
        pod_pos[cand_arr] = np.arange(cand_arr.size)
        n_cap = self._s_alive.size
        s_pod = self._s_pod[:n_cap]
        sel = np.flatnonzero(self._s_alive & (s_pod >= 0))
        sel = sel[pod_pos[s_pod[sel]] >= 0]

        G = L + self._lead
        bins = np.arange(B - G + 1, B + 1, dtype=np.int64)
        slots = bins % self._ring
        s0 = int(slots[0])

        def gather(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
            sub = arr[rows]  # the slots of the window are contiguous modulo the ring
            if s0 + G <= self._ring:
                return sub[:, s0 : s0 + G]
            return np.concatenate([sub[:, s0:], sub[:, : s0 + G - self._ring]], axis=1)

        kind = self._s_kind[sel]
        valid = gather(self._bid, sel) == bins[None, :]
        bv = np.where(valid, gather(self._bv, sel), np.nan)
        c_rows = np.flatnonzero(kind != _GAUGE)  # times and maxima matter for counters only
        bt = np.full_like(bv, np.nan)
        bm = np.full_like(bv, np.nan)
        if c_rows.size:
            cv = valid[c_rows]
            bt[c_rows] = np.where(cv, gather(self._bt, sel[c_rows]), np.nan)
            bm[c_rows] = np.where(cv, gather(self._bm, sel[c_rows]), np.nan)
        series_vals = _series_to_grid(bt, bv, bm, valid, kind, self._gap_bins)[:, -L:]
        has_data = valid[:, -L:]

        # per pod: newest data bin in the window; drop pods without any or silent too long
        p_of = pod_pos[s_pod[sel]]
        n_c = cand_arr.size
        last_bin = np.full(n_c, -1, dtype=np.int64)
        idx_last = np.where(has_data, np.arange(L)[None, :], -1).max(axis=1)
        np.maximum.at(last_bin, p_of, idx_last)
        age = (L - 1 - last_bin) * self.step_s
        keep_pod = (last_bin >= 0) & (age <= self.pod_ttl_s)
        if not keep_pod.any():
            return self.empty_batch()
        new_pos = np.cumsum(keep_pod) - 1
        keep_series = keep_pod[p_of]
        sel, p_of = sel[keep_series], new_pos[p_of[keep_series]]
        series_vals, has_data = series_vals[keep_series], has_data[keep_series]
        idx_last = idx_last[keep_series]
        cand_arr, last_bin = cand_arr[keep_pod], last_bin[keep_pod]
        n = cand_arr.size

        target = self._s_target[sel]
        agg = self._s_agg[sel]
        # a pod-level ("" container) series only counts where the pod has no named one
        gid = p_of * _N_TARGETS + target
        extra_id = self._s_extra[sel]
        n_ex = max(1, len(self._extra_names))
        gid = np.where(target == _T_EXTRA, n * _N_TARGETS + p_of * n_ex + extra_id, gid)
        named = np.zeros(gid.max() + 1 if gid.size else 1, dtype=bool)
        named[gid[~agg]] = True
        use = ~agg | ~named[gid]
        sel, p_of, target, gid = sel[use], p_of[use], target[use], gid[use]
        series_vals, has_data, idx_last = series_vals[use], has_data[use], idx_last[use]
        extra_id = extra_id[use]

        # sum containers: sort by group and reduce
        order = np.argsort(gid, kind="stable")
        gid_s = gid[order]
        starts = np.flatnonzero(np.r_[True, gid_s[1:] != gid_s[:-1]])
        vals_s = series_vals[order]
        fin = np.isfinite(vals_s)
        sums = np.add.reduceat(np.where(fin, vals_s, 0.0), starts, axis=0)
        cnts = np.add.reduceat(fin.astype(np.int32), starts, axis=0)
        gsum = np.where(cnts > 0, sums, np.nan)
        g_pod = p_of[order][starts]
        g_tgt = target[order][starts]
        g_extra = extra_id[order][starts]
        # the last valid value of each series (limits are taken as of the newest sample)
        last_val = np.where(
            idx_last >= 0,
            series_vals[np.arange(series_vals.shape[0]), np.maximum(idx_last, 0)],
            np.nan,
        )
        lv_s = last_val[order]
        lv_fin = np.isfinite(lv_s)
        lv_sum = np.add.reduceat(np.where(lv_fin, lv_s, 0.0), starts)
        lv_cnt = np.add.reduceat(lv_fin.astype(np.int32), starts)
        lv_zero = np.add.reduceat((lv_fin & (lv_s <= 0)).astype(np.int32), starts)
        g_last = np.where(lv_cnt > 0, lv_sum, np.nan)

        values = np.full((n, C, L), np.nan, dtype=np.float32)
        is_ch = g_tgt < C
        values[g_pod[is_ch], g_tgt[is_ch]] = gsum[is_ch]

        def per_pod(tgt: int, arr: np.ndarray, bad: np.ndarray | None = None) -> np.ndarray:
            out = np.full(n, np.nan)
            m = g_tgt == tgt
            a = arr[m]
            if bad is not None:
                a = np.where(bad[m], np.nan, a)
            out[g_pod[m]] = a
            return out

        limits = np.full((n, C), np.nan, dtype=np.float32)
        for lim in chan.LIMIT_TABLE:
            value = np.full(n, np.nan)
            for j, m in enumerate(lim.metrics):  # the first known metric, then fallbacks
                tgt = _LIMIT_TARGETS[(lim.name, j)]
                got = per_pod(tgt, g_last, lv_zero > 0 if m.zero_unknown else None)
                value = got if j == 0 else np.where(np.isfinite(value), value, got)
            for ci, row in enumerate(chan.CHANNEL_TABLE):
                if row.limit != lim.name:
                    continue
                if lim.plus_used:  # the metric is the free part: limit = used + free
                    total = per_pod(ci, g_last) + value
                    limits[:, ci] = np.where(total > 0, total, np.nan)
                else:
                    limits[:, ci] = value

        extra: dict[str, np.ndarray] = {}
        is_ex = g_tgt == _T_EXTRA
        for e in np.unique(g_extra[is_ex]).tolist():
            m = is_ex & (g_extra == e)
            arr = np.full((n, L), np.nan, dtype=np.float32)
            arr[g_pod[m]] = gsum[m]
            extra[self._extra_names[e]] = arr

        baseline = self._baseline(values)
        features = extract_features(values, limits, baseline, self.step_s)
        newest_age = (L - 1 - last_bin) * self.step_s
        first = self._p_first[cand_arr]
        stale = (newest_age > self.stale_after_s) | (first > t_end - self.min_history_s)
        keys = [self._pod_keys[p] for p in cand_arr.tolist()]
        return WindowBatch(
            keys=[k for k in keys if k is not None],
            nodes=[self._pod_node[p] for p in cand_arr.tolist()],
            ts=np.full(n, t_end, dtype=np.float64),
            grid=self.grid.copy(),
            channels=CHANNELS,
            values=values,
            limits=limits,
            baseline=baseline,
            features=features,
            feature_names=FEATURE_NAMES,
            stale=stale,
            extra=extra,
        )

    def _baseline(self, values: np.ndarray) -> np.ndarray:
        L = values.shape[-1]
        k_ex = round(self.baseline_exclude_s / self.step_s)
        part = values[..., : max(0, L - k_ex)]
        out = np.full((*values.shape[:2], 2), np.nan, dtype=np.float32)
        if part.shape[-1] == 0:
            return out
        # A container restart starts a new incarnation: its baseline holds only what came
        # after the last restart in the window (the counters, memory and throughput before it
        # belong to another process), so a restarted pod is judged against itself again once
        # ``min_baseline_s`` of post-restart history lies in the baseline part.
        after = after_last_restart(values[:, _RESTART_IDX, :])
        if not after.all():
            part = np.where(after[:, None, : part.shape[-1]], part, np.nan)
        med, mad = nanmedian_mad_last(part)
        enough = nancount_last(part) >= max(1, round(self.min_baseline_s / self.step_s))
        out[..., 0] = np.where(enough, med, np.nan)
        out[..., 1] = np.where(enough, mad, np.nan)
        return out

    def empty_batch(self) -> WindowBatch:
        """A batch of zero windows with this engine's grid, channels and features."""
        C, L = len(CHANNELS), self.n_bins
        return WindowBatch(
            keys=[],
            nodes=[],
            ts=np.zeros(0),
            grid=self.grid.copy(),
            channels=CHANNELS,
            values=np.zeros((0, C, L), np.float32),
            limits=np.zeros((0, C), np.float32),
            baseline=np.zeros((0, C, 2), np.float32),
            features=np.zeros((0, len(FEATURE_NAMES)), np.float32),
            feature_names=FEATURE_NAMES,
            stale=np.zeros(0, bool),
            extra={},
        )


def _as_float(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_float_dtype(col.dtype) or pd.api.types.is_integer_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _ffill_index(valid: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """For each column, the index of the last valid column at or before it and whether it is
    within ``max_gap`` columns."""
    G = valid.shape[1]
    idx = np.where(valid, np.arange(G)[None, :], -1)
    last = np.maximum.accumulate(idx, axis=1)
    ok = (last >= 0) & (np.arange(G)[None, :] - last <= max_gap)
    return last, ok


def _series_to_grid(
    bt: np.ndarray, bv: np.ndarray, bm: np.ndarray, valid: np.ndarray, kind: np.ndarray,
    gap_bins: int,
) -> np.ndarray:
    """Per-series grid values: gauges as is, counters as rates/increments; then forward fill."""
    S, G = bv.shape
    out = bv.copy()
    counter = kind != _GAUGE
    if counter.any():
        c = np.flatnonzero(counter)
        cv, cm, ct, cval = bv[c], bm[c], bt[c], valid[c]
        last, _ = _ffill_index(cval, G)
        prev = np.full_like(last, -1)
        prev[:, 1:] = last[:, :-1]
        has_prev = cval & (prev >= 0) & (np.arange(G)[None, :] - prev <= gap_bins + 1)
        pidx = np.maximum(prev, 0)
        rows = np.arange(c.size)[:, None]
        pv = cv[rows, pidx]
        pt = ct[rows, pidx]
        reset_inside = cm > cv  # the bin's maximum exceeds its newest value
        inc = np.where(
            reset_inside,
            np.maximum(cm - pv, 0.0) + cv,
            np.where(cv < pv, cv, cv - pv),
        )
        dt = ct - pt
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(kind[c][:, None] == _RATE, inc / dt, inc)
        rate = np.where(has_prev & (dt > 0), rate, np.nan)
        out[c] = rate
    fin = np.isfinite(out)
    last, ok = _ffill_index(fin, gap_bins)
    filled = out[np.arange(S)[:, None], np.maximum(last, 0)]
    res = np.where(ok, filled, np.nan)
    # increments (restarts) are counts per step: never forward-filled
    inc_rows = kind == _INCREASE
    if inc_rows.any():
        res[inc_rows] = out[inc_rows]
    return res


# ---------------------------------------------------------------------------------------------
# Replaying a whole trace (training, evaluation, tests)


def iter_windows(
    trace: pd.DataFrame,
    *,
    every_s: float = 600.0,
    engine: WindowEngine | None = None,
    start: float | None = None,
    keep_empty: bool = False,
    drop_stale: bool = False,
    progress: bool = False,
    desc: str = "windows",
) -> Iterator[tuple[float, WindowBatch, IngestReport]]:
    """Feeds ``trace`` to ``engine`` in time order, one ``engine.step_s`` slice at a time, and
    yields ``(t, windows at t, ingest report since the previous yield)`` every ``every_s``
    seconds of trace time (at multiples of ``every_s``; ``every_s`` must be a multiple of the
    engine step, :class:`InputError` otherwise).

    The one causal replay loop (the replay, evaluation and training all use it): a window at
    ``t`` has seen only samples <= t. Slices ending before ``start`` are ingested but yield
    nothing. ``drop_stale`` leaves stale windows out; a batch left empty is skipped unless
    ``keep_empty``. ``progress`` shows a bar of slices labelled ``desc`` (stderr).
    """
    eng = WindowEngine() if engine is None else engine
    ratio = every_s / eng.step_s
    if not every_s > 0 or abs(ratio - round(ratio)) > 1e-9:
        raise InputError(
            f"every_s ({every_s}) must be a positive multiple of the step ({eng.step_s})"
        )
    frame = tr.sort_by_time(trace)
    bar = _progress_bar(frame, eng.step_s, desc) if progress else None
    rep = IngestReport()
    try:
        for t_end, chunk in tr.iter_time_chunks(frame, eng.step_s):
            rep.merge(eng.ingest(chunk))
            if bar is not None:
                bar.update(1)
            if start is not None and t_end < start:
                continue
            k = (t_end - eng.origin_s) / every_s
            if abs(k - round(k)) > 1e-6:
                continue
            batch = eng.windows(at=t_end)
            if drop_stale and len(batch):
                stale = np.asarray(batch.stale, dtype=bool)
                if stale.any():
                    batch = batch.subset(np.flatnonzero(~stale))
            if len(batch) or keep_empty:
                yield t_end, batch, rep
                rep = IngestReport()
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(frame: pd.DataFrame, step_s: float, desc: str) -> Any:
    """A tqdm bar over the slices :func:`detector.traces.iter_time_chunks` will yield (tqdm is
    imported only here, so the daemon never loads it)."""
    from tqdm import tqdm

    total = None
    if len(frame):
        ts = frame["timestamp"]
        t0, t1 = float(ts.iloc[0]), float(ts.iloc[-1])
        total = math.ceil(t1 / step_s) - math.ceil(t0 / step_s) + 1
    return tqdm(total=total, unit="step", desc=desc, leave=False)


def collect_windows(
    trace: pd.DataFrame,
    *,
    every_s: float = 600.0,
    engine: WindowEngine | None = None,
    start: float | None = None,
    drop_stale: bool = False,
    progress: bool = False,
    desc: str = "windows",
) -> WindowBatch:
    """All windows of :func:`iter_windows` in one batch (empty batch if there are none)."""
    eng = WindowEngine() if engine is None else engine
    batches = [
        b
        for _, b, _ in iter_windows(
            trace, every_s=every_s, engine=eng, start=start, drop_stale=drop_stale,
            progress=progress, desc=desc,
        )
    ]
    return WindowBatch.concat(batches) if batches else eng.empty_batch()
