"""The memory-leak detector: a robust trend test on working set, RSS and GPU memory.

Called by ``detector.pipeline`` (one :meth:`TrendDetector.predict` and
:meth:`TrendDetector.leak_report` per batch of windows), by training (``fit`` and
``infer_threshold`` on healthy windows, ``get_state`` to save) and by the evaluation harness.
It works on :class:`detector.windows.WindowBatch` values and limits, vectorised over the batch.

How a window is scored, per memory channel (``mem_working_set``, ``mem_rss``,
``gpu_fb_used``) and per *view* (a block size and a number of trailing blocks, from 40 min
in 5-min blocks to 4 h in 15-min blocks, :data:`DEFAULT_VIEWS`):

1. Values before the last container restart in the window, or before the start of a pod that
   appears inside the window, plus a settling time ``settle_s`` for the warm-up that follows,
   are ignored (a restart drops memory; the trend restarts with it).
2. The series is cut into blocks; each block gives its **minimum**: the floor under a GC
   sawtooth and under checkpoint spikes.
3. The trailing blocks of the view are **de-stepped**: the largest block-to-block rise is
   taken out when it dominates the view's growth (more than :data:`STEP_DOMINANCE` times all
   the other rises together), so one legitimate step up does not look like a trend while a
   linear leak or a staircase of several steps is measured whole. On them: Kendall's tau and
   the Mann-Kendall Z (monotone growth and its significance); the Theil-Sen slope; the same
   slope over the recent half of the view, whose ratio to the whole (``persist``) rejects
   warm-ups that have plateaued; and the largest earlier drawdown of the block minima over
   the whole window, which rejects cyclic growth (epoch ramps, diurnal load) that a leak
   never shows.
4. Urgency: the slope as a fraction of the limit per hour (``slope``) over the
   fraction of the limit still free (``headroom``) = the fraction of the remaining headroom
   consumed per hour.

``score = max over channels and views of log1p(slope / headroom / u0) * monotonicity`` with
``monotonicity = max(tau, 0) * significance(Z) * persist * (1 - drawdown / rise)``: higher =
more anomalous, 0 for no growth. Windows with less than ``min_span_s`` of data score 0.
The decision threshold is fitted on healthy windows with
:func:`detector.models.base.threshold_at_fpr` and kept as state.

The leak rate reported is the Theil-Sen slope of the de-stepped block minima of the best
view, or of its recent half when faster (a leak that began inside the view);
the time to OOM is (limit - current peak) / rate, with low/high estimates from the 80th/20th
percentiles of the pairwise slopes. :meth:`TrendDetector.explain_features` exposes the nine
inputs of the score (``<channel>.slope``, ``.headroom``, ``.monotonicity``) and
:meth:`TrendDetector.score_from_explain_features` recomputes the score from them exactly,
so Shapley values over those inputs sum to the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.errors import InputError, ModelIntegrityError
from detector.models.base import Prediction, ThresholdMixin, threshold_at_fpr
from detector.windows import (
    CHANNELS,
    MEMORY_CHANNELS,
    WindowBatch,
    block_reduce,
    last_restart_index,
    nanmedian_last,
)

DEFAULT_VIEWS: tuple[tuple[float, int], ...] = (
    (300.0, 8),  # 40 min in 5-min blocks: fast leaks
    (300.0, 12),  # 1 h
    (900.0, 8),  # 2 h in 15-min blocks (floor under GC sawtooth up to 15 min)
    (900.0, 12),  # 3 h
    (900.0, 16),  # 4 h
)
"""(block seconds, trailing blocks) of each view."""

STEP_DOMINANCE = 2.0
"""A rise between consecutive blocks larger than this many times all the view's other rises
together is a step, not a trend: it is taken out before the trend is measured."""

EXPLAIN_STATS: tuple[str, ...] = ("slope", "headroom", "monotonicity")
EXPLAIN_NAMES: tuple[str, ...] = tuple(f"{c}.{s}" for c in MEMORY_CHANNELS for s in EXPLAIN_STATS)

_STATE_KEYS = frozenset(
    {
        "name", "version", "views", "u0", "min_span_s", "settle_s", "threshold", "fitted",
        "healthy_quantiles",
    }
)


def _nanquantile_sorted(xs: np.ndarray, cnt: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of rows already sorted along the last axis (NaN last), ``cnt`` finite."""
    pos = np.clip(np.floor(q * (cnt - 1)).astype(np.int64), 0, max(xs.shape[-1] - 1, 0))
    out = np.take_along_axis(xs, pos[..., None], axis=-1)[..., 0]
    return np.where(cnt > 0, out, np.nan)


_PAIRS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pairs(nb: int) -> tuple[np.ndarray, np.ndarray]:
    if nb not in _PAIRS:
        i, j = np.triu_indices(nb, k=1)
        _PAIRS[nb] = (i.astype(np.int64), j.astype(np.int64))
    return _PAIRS[nb]


def _theil_sen(y: np.ndarray, dt_s: float) -> np.ndarray:
    """Median pairwise slope of the last axis (unit/s), NaN with < 2 finite points."""
    i, j = _pairs(y.shape[-1])
    return nanmedian_last((y[..., j] - y[..., i]) / ((j - i) * dt_s).astype(y.dtype))


@dataclass(frozen=True)
class LeakReport:
    """Per-window leak figures (arrays of length n; channel names '' where nothing grows)."""

    channel: np.ndarray  # (n,) str: the channel with the highest sub-score
    rate_bytes_per_s: np.ndarray  # (n,) Theil-Sen slope of that channel's floor
    time_to_oom_s: np.ndarray  # (n,) median estimate; inf = not growing; NaN = no limit
    time_to_oom_low_s: np.ndarray  # (n,) early estimate (fast pairwise slopes)
    time_to_oom_high_s: np.ndarray  # (n,) late estimate (slow pairwise slopes)
    limit_bytes: np.ndarray  # (n,) limit of that channel (NaN unknown)
    headroom_bytes: np.ndarray  # (n,) limit - current peak
    channel_scores: np.ndarray  # (n, 3) sub-score per memory channel
    channels: tuple[str, ...] = MEMORY_CHANNELS
    view_s: np.ndarray | None = None  # (n,) span (s) of the view that gave the best score


@dataclass(frozen=True)
class _ViewStats:
    score: np.ndarray  # (n, 3)
    slope: np.ndarray  # (n, 3) de-stepped slope, fraction of limit per hour
    headroom: np.ndarray  # (n, 3) free fraction of the limit
    mono: np.ndarray  # (n, 3)
    rate: np.ndarray  # (n, 3) plain Theil-Sen, bytes/s
    rate_lo: np.ndarray
    rate_hi: np.ndarray
    limit: np.ndarray  # (n, 3)
    room: np.ndarray  # (n, 3) limit - peak, bytes


def _fields(st: _ViewStats) -> tuple[np.ndarray, ...]:
    return (st.score, st.slope, st.headroom, st.mono, st.rate, st.rate_lo, st.rate_hi,
            st.limit, st.room)


class TrendDetector(ThresholdMixin):
    """Robust memory-growth detector with leak rate and time to OOM (see module docstring).

    ``u0`` is the headroom consumption (fraction per hour) at which urgency reaches
    log1p(1); ``min_span_s`` the data a window needs before it is judged (counted after the
    ``settle_s`` that follows a pod start or restart). The detector has no
    learned parameters besides its threshold: ``fit`` records the healthy score quantiles.
    """

    name = "trend"

    def __init__(
        self,
        *,
        views: tuple[tuple[float, int], ...] = DEFAULT_VIEWS,
        u0: float = 0.05,
        min_span_s: float = 5400.0,
        settle_s: float = 1800.0,
    ) -> None:
        problems = []
        if not views:
            problems.append("views must not be empty")
        for v in views:
            if len(v) != 2 or not v[0] > 0 or int(v[1]) < 4:
                problems.append(f"view {v!r} must be (block_s > 0, n_blocks >= 4)")
        if not (math.isfinite(u0) and u0 > 0):
            problems.append(f"u0 must be > 0, got {u0!r}")
        if not (math.isfinite(min_span_s) and min_span_s >= 0):
            problems.append(f"min_span_s must be >= 0, got {min_span_s!r}")
        if not (math.isfinite(settle_s) and settle_s >= 0):
            problems.append(f"settle_s must be >= 0, got {settle_s!r}")
        if problems:
            raise InputError("TrendDetector: " + "; ".join(problems))
        self.views = tuple((float(b), int(k)) for b, k in views)
        self.u0 = float(u0)
        self.min_span_s = float(min_span_s)
        self.settle_s = float(settle_s)
        self.threshold_: float | None = None
        self.fitted_ = False
        self.healthy_quantiles_: list[float] = []

    # ------------------------------------------------------------------ core

    def _inputs(self, batch: WindowBatch) -> tuple[np.ndarray, np.ndarray, float]:
        """Memory values (n, 3, L) with pre-restart samples masked, limits (n, 3), step."""
        if tuple(batch.channels) != CHANNELS:
            raise InputError(f"TrendDetector needs channels {CHANNELS}, got {batch.channels}")
        step = batch.step_s
        if not step > 0:
            raise InputError("TrendDetector needs a window grid of at least two points")
        mem_idx = [CHANNELS.index(c) for c in MEMORY_CHANNELS]
        v = batch.values[:, mem_idx, :].astype(np.float32, copy=False)
        L = v.shape[-1]
        # a (re)start is followed by a warm-up: judge only what comes after the last restart
        # in the window, and after a pod that starts inside the window, plus a settling time
        idx = np.arange(L)[None, :]
        last_r = last_restart_index(batch.values[:, CHANNELS.index("restarts"), :])
        fin = np.asarray(np.isfinite(v).any(axis=1))  # (n, L): any memory channel has data
        first = np.where(np.asarray(fin.any(axis=1)), np.argmax(fin, axis=1), 0)
        start = np.where(first > 0, first, -1)
        begin = np.maximum(last_r, start)
        settle = round(self.settle_s / step)
        cut = np.where(begin >= 0, begin + settle, 0)
        if (cut > 0).any():
            v = np.where((idx < cut[:, None])[:, None, :], np.float32(np.nan), v)
        lim = batch.limits[:, mem_idx].astype(np.float64)
        return v, lim, step

    def _view(self, v: np.ndarray, lim: np.ndarray, step: float, block_s: float, nb: int,
              cache: dict[int, np.ndarray]) -> _ViewStats | None:
        """Stats of one view for rows ``v`` (R, L) with limits ``lim`` (R,)."""
        L = v.shape[-1]
        k = max(1, round(block_s / step))
        if nb * k > L:
            return None
        blk_s = k * step
        if k not in cache:
            cache[k] = block_reduce(v, step, blk_s, "min")[0]  # (R, NB) over the window
        mins = cache[k]
        y = mins[:, -nb:]
        n_valid = np.count_nonzero(np.isfinite(y), axis=-1)
        i, j = _pairs(nb)
        gap = ((j - i) * blk_s).astype(np.float32)
        # De-stepping: the largest rise between consecutive blocks is taken out of the series
        # when it dominates the view's growth (more than STEP_DOMINANCE times all the other
        # rises together): one legitimate step up is then no trend - not in the Mann-Kendall
        # test, the slope or the reported rate - while growth spread over several rises (a
        # linear leak, a staircase of several steps) is kept whole.
        d = np.diff(y, axis=-1)
        d_f = np.where(np.isfinite(d), d, -np.inf)
        kmax = np.argmax(d_f, axis=-1)
        dmax = d_f[np.arange(d_f.shape[0]), kmax]
        dmax = np.where(np.isfinite(dmax), np.maximum(dmax, 0.0), 0.0)
        others = np.where(np.isfinite(d) & (d > 0), d, 0.0).sum(axis=-1) - dmax
        dmax = np.where(dmax > STEP_DOMINANCE * others, dmax, 0.0).astype(np.float32)
        after_step = np.arange(nb)[None, :] > kmax[:, None]
        y = y - after_step * dmax[:, None]
        dy = y[:, j] - y[:, i]
        pair_ok = np.isfinite(dy)
        # Mann-Kendall on the trailing blocks
        S = np.sign(np.where(pair_ok, dy, 0.0)).sum(axis=-1, dtype=np.float64)
        m = n_valid.astype(np.float64)
        tau = S / np.maximum(m * (m - 1) / 2, 1.0)
        Z = S / np.sqrt(np.maximum(m * (m - 1) * (2 * m + 5) / 18.0, 1e-9))
        sig = np.clip((Z - 1.0) / 1.5, 0.0, 1.0)
        # Theil-Sen and the spread of pairwise slopes
        slopes = dy / gap
        ss = np.sort(slopes, axis=-1)
        cnt = np.count_nonzero(pair_ok, axis=-1)
        rate = _nanquantile_sorted(ss, cnt, 0.5).astype(np.float64)
        rate_lo = _nanquantile_sorted(ss, cnt, 0.2).astype(np.float64)
        rate_hi = _nanquantile_sorted(ss, cnt, 0.8).astype(np.float64)
        h = nb // 2
        rate_recent = _theil_sen(y[:, h:], blk_s).astype(np.float64)
        early = j < nb - h
        rate_early = nanmedian_last(slopes[:, early]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            # growth must not decelerate: recent-half slope vs early-half slope of the floor
            # (a warm-up approaching its plateau has a ratio near 0, a steady leak near 1)
            ref_rate = np.fmax(rate_early, 0.5 * rate)
            persist = np.where(
                (rate > 0) & (ref_rate > 0),
                np.clip(rate_recent / ref_rate, 0.0, 1.0),
                0.0,
            )
            # earlier drawdown of the floor over the whole window vs the rise of this view
            filled = np.where(np.isfinite(mins), mins, -np.inf)
            cummax = np.maximum.accumulate(filled, axis=-1)
            dd = np.where(np.isfinite(mins), cummax - mins, 0.0)
            dd = np.where(np.isfinite(dd), dd, 0.0).max(axis=-1).astype(np.float64)
            rise = np.maximum(rate, 0.0) * nb * blk_s
            calm = np.where(rise > 0, np.clip(1.0 - dd / rise, 0.0, 1.0), 0.0)
            mono = np.maximum(tau, 0.0) * sig * persist * calm
            mono = np.where(n_valid >= math.ceil(0.75 * nb), mono, 0.0)
            last = v[:, L - k :]
            peak = np.where(np.isfinite(last), last, -np.inf).max(axis=-1).astype(np.float64)
            peak = np.where(np.isfinite(peak), peak, nanmedian_last(y))
            has_lim = np.isfinite(lim) & (lim > 0)
            ref = np.where(has_lim, lim, peak)
            slope = np.maximum(rate, 0.0) * 3600.0 / ref
            room = lim - peak
            headroom = np.where(has_lim, np.clip(room / lim, 0.005, 1.0), 1.0)
        slope = np.where(np.isfinite(slope), slope, 0.0)
        mono = np.where(np.isfinite(mono), mono, 0.0)
        score = self._combine(slope, headroom, mono)
        # the reported rate: the faster of the whole view and its recent half (a leak that
        # began inside the view), bracketed by the pairwise-slope spread
        rate_rep = np.fmax(rate, rate_recent)
        rate_lo = np.fmin(rate_lo, rate_rep)
        rate_hi = np.fmax(rate_hi, rate_rep)
        return _ViewStats(score, slope, headroom, mono, rate_rep, rate_lo, rate_hi, lim, room)

    def _combine(self, slope: np.ndarray, headroom: np.ndarray, mono: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.maximum(slope, 0.0) / np.clip(headroom, 0.005, 1.0)
            s = np.log1p(u / self.u0) * np.clip(mono, 0.0, 1.0)
        return np.where(np.isfinite(s), s, 0.0)

    def _analyse(self, batch: WindowBatch) -> tuple[_ViewStats, np.ndarray]:
        """Best view per window and channel: stats (n, 3) and the span of that view (n, 3)."""
        v3, lim3, step = self._inputs(batch)
        n, nc, L = v3.shape
        v_all = v3.reshape(n * nc, L)
        lim_all = lim3.reshape(n * nc)
        fin = np.isfinite(v_all)
        active = np.flatnonzero(fin.any(axis=-1))
        v, lim = v_all[active], lim_all[active]
        R = active.size
        best: _ViewStats | None = None
        span = np.full(R, np.nan)
        cache: dict[int, np.ndarray] = {}
        n_views = 0
        for block_s, nb in self.views:
            if R == 0:
                break
            st = self._view(v, lim, step, block_s, nb, cache)
            if st is None:
                continue
            n_views += 1
            view_span = nb * max(1, round(block_s / step)) * step
            if best is None:
                best, span = st, np.full(R, view_span)
                continue
            better = st.score > best.score
            best = _ViewStats(*(np.where(better, a, b) for a, b in zip(
                _fields(st), _fields(best), strict=True
            )))
            span = np.where(better, view_span, span)
        if R and n_views == 0:
            raise InputError(
                f"TrendDetector: windows of {L} points at {step} s are shorter than "
                f"every view {self.views}"
            )
        # not enough history to judge
        first = np.argmax(fin[active], axis=-1)
        young = (L - first) * step < self.min_span_s
        full = _ViewStats(
            score=np.zeros(n * nc), slope=np.zeros(n * nc), headroom=np.ones(n * nc),
            mono=np.zeros(n * nc), rate=np.full(n * nc, np.nan),
            rate_lo=np.full(n * nc, np.nan), rate_hi=np.full(n * nc, np.nan),
            limit=lim_all.copy(), room=np.full(n * nc, np.nan),
        )
        if best is not None:
            for f_full, f_best in zip(_fields(full), _fields(best), strict=True):
                f_full[active] = f_best
            full.score[active[young]] = 0.0
            full.mono[active[young]] = 0.0
        span_full = np.full(n * nc, np.nan)
        span_full[active] = span
        shaped = _ViewStats(*(a.reshape(n, nc) for a in _fields(full)))
        return shaped, span_full.reshape(n, nc)

    # ------------------------------------------------------------------ the contract

    def score(self, batch: WindowBatch) -> np.ndarray:
        """(n,) leak score, higher = more anomalous; 0 = no sustained growth."""
        if len(batch) == 0:
            return np.zeros(0)
        st, _ = self._analyse(batch)
        return st.score.max(axis=1)

    def fit(self, batch: WindowBatch, fpr: float | None = None) -> TrendDetector:
        """Records the healthy score distribution; with ``fpr`` also infers the threshold."""
        s = self.score(batch)
        fin = s[np.isfinite(s)]
        if fin.size == 0:
            raise InputError("TrendDetector.fit needs at least one window")
        self.healthy_quantiles_ = [
            float(x) for x in np.quantile(fin, [0.5, 0.9, 0.99, 0.999, 1.0])
        ]
        self.fitted_ = True
        if fpr is not None:
            self.threshold_ = threshold_at_fpr(fin, fpr)
        return self

    def infer_threshold(self, batch: WindowBatch, fpr: float) -> float:
        """Fits the threshold as the healthy score quantile ``1 - fpr`` and returns it."""
        s = self.score(batch)
        self.threshold_ = threshold_at_fpr(s, fpr)
        if not self.fitted_:
            self.fitted_ = True
            self.healthy_quantiles_ = [
                float(x) for x in np.quantile(s, [0.5, 0.9, 0.99, 0.999, 1.0])
            ]
        return self.threshold_

    def predict(self, batch: WindowBatch) -> Prediction:
        thr = self._check_threshold()
        s = self.score(batch)
        return Prediction(score=s, threshold=thr, is_anomaly=s > thr)

    def leak_report(self, batch: WindowBatch) -> LeakReport:
        """Leak rate and time to OOM (median/low/high) of each window's best channel."""
        n = len(batch)
        if n == 0:
            e = np.zeros(0)
            return LeakReport(np.zeros(0, dtype=object), e, e, e, e, e, e,
                              np.zeros((0, len(MEMORY_CHANNELS))), view_s=e)
        st, span = self._analyse(batch)
        best = np.argmax(st.score, axis=1)
        # the kubelet and the OOM killer act on the working set: prefer it to RSS when both grow
        ws, rss = MEMORY_CHANNELS.index("mem_working_set"), MEMORY_CHANNELS.index("mem_rss")
        rows = np.arange(n)
        best = np.where((best == rss) & (st.score[:, ws] >= 0.5 * st.score[:, rss]), ws, best)
        any_growth = st.score[rows, best] > 0
        names = np.array(MEMORY_CHANNELS, dtype=object)
        channel = np.where(any_growth, names[best], "")
        rate = st.rate[rows, best]
        room = np.maximum(st.room[rows, best], 0.0)
        lim = st.limit[rows, best]

        def tto(r: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                t = np.where(r > 0, room / r, np.inf)
            return np.where(np.isfinite(lim), t, np.nan)

        return LeakReport(
            channel=channel,
            rate_bytes_per_s=rate,
            time_to_oom_s=tto(rate),
            time_to_oom_low_s=tto(st.rate_hi[rows, best]),
            time_to_oom_high_s=tto(st.rate_lo[rows, best]),
            limit_bytes=lim,
            headroom_bytes=st.room[rows, best],
            channel_scores=st.score,
            view_s=span[rows, best],
        )

    # ------------------------------------------------------------------ explanation

    def explain_features(self, batch: WindowBatch) -> tuple[np.ndarray, tuple[str, ...]]:
        """The (n, 9) inputs of the score, named :data:`EXPLAIN_NAMES`.

        ``<ch>.slope``: growth, fraction of the limit per hour (of the current level when
        no limit is known); ``<ch>.headroom``: free fraction of the limit; ``<ch>.monotonicity``
        in [0, 1]. :meth:`score_from_explain_features` maps them back to the score exactly.
        """
        if len(batch) == 0:
            return np.zeros((0, len(EXPLAIN_NAMES))), EXPLAIN_NAMES
        st, _ = self._analyse(batch)
        cols = []
        for c in range(len(MEMORY_CHANNELS)):
            cols += [st.slope[:, c], st.headroom[:, c], st.mono[:, c]]
        return np.stack(cols, axis=1), EXPLAIN_NAMES

    def score_from_explain_features(self, X: np.ndarray) -> np.ndarray:
        """The score of rows of :meth:`explain_features` output: (m, 9) -> (m,)."""
        A = np.asarray(X, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != len(EXPLAIN_NAMES):
            raise InputError(f"expected (m, {len(EXPLAIN_NAMES)}) inputs, got {A.shape}")
        A = A.reshape(A.shape[0], len(MEMORY_CHANNELS), len(EXPLAIN_STATS))
        s = self._combine(A[..., 0], A[..., 1], A[..., 2])
        return s.max(axis=1)

    def explain_background(self, names: tuple[str, ...] = EXPLAIN_NAMES) -> np.ndarray:
        """A one-row reference input for Shapley values: no growth, full headroom (score 0)."""
        ref = {"slope": 0.0, "headroom": 1.0, "monotonicity": 0.0}
        return np.array([[ref[n.rsplit(".", 1)[1]] for n in names]], dtype=np.float64)

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        """Plain JSON-able state: configuration, fitted threshold and healthy quantiles."""
        return {
            "name": self.name,
            "version": 1,
            "views": [[b, k] for b, k in self.views],
            "u0": self.u0,
            "min_span_s": self.min_span_s,
            "settle_s": self.settle_s,
            "threshold": self.threshold_,
            "fitted": self.fitted_,
            "healthy_quantiles": list(self.healthy_quantiles_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrendDetector:
        """Rebuilds a detector from :meth:`get_state`; unknown or missing keys are errors."""
        if not isinstance(state, dict):
            raise ModelIntegrityError("trend state must be a mapping")
        unknown = set(state) - _STATE_KEYS
        missing = _STATE_KEYS - set(state)
        if unknown or missing:
            raise ModelIntegrityError(
                f"trend state: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
            )
        if state["name"] != cls.name or state["version"] != 1:
            raise ModelIntegrityError(
                f"trend state is for {state['name']!r} version {state['version']!r}"
            )
        try:
            det = cls(
                views=tuple((float(b), int(k)) for b, k in state["views"]),
                u0=float(state["u0"]),
                min_span_s=float(state["min_span_s"]),
                settle_s=float(state["settle_s"]),
            )
            thr = state["threshold"]
            det.threshold_ = None if thr is None else float(thr)
            det.fitted_ = bool(state["fitted"])
            det.healthy_quantiles_ = [float(x) for x in state["healthy_quantiles"]]
        except (TypeError, ValueError, InputError) as e:
            raise ModelIntegrityError(f"trend state is invalid: {e}") from e
        if det.threshold_ is not None and not math.isfinite(det.threshold_):
            raise ModelIntegrityError("trend state: threshold must be finite")
        return det
