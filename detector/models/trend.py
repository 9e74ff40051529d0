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
   are ignored (a restart drops memory; the trend restarts with it). In a pod of several
   containers only the restarts of a container holding a real part of its working set count
   (:meth:`detector.windows.WindowBatch.restarts_of_memory`: a small sidecar restarting every
   few minutes does not cut the main container's history).
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

The fast path (a young incarnation, no settling time) judges the last 5, 10 and 30 min
(:data:`FAST_SUBSPANS`, ``fast_span_s``) and keeps the one that scores highest: a leak that
began after a long flat stretch fills only the recent part of the 30-min span, whose robust
slope it dilutes. Its one threshold is fitted on that maximum.

The leak rate reported is the Theil-Sen slope of the de-stepped block minima of the best
view, or of its recent half when faster (a leak that began inside the view);
the time to OOM is (limit - current peak) / rate (projected geometrically while the growth
slows down, :func:`projected_tto`), its stated range the calibrated band :data:`TTO_BAND`
around it. On the fast path both are stated as true now (:meth:`TrendDetector._pace_now`):
the pace of the span's most recent linear stretch when the span accelerates
(:func:`recent_linear_rate`), the level of the last grid points, and anonymous growth beside
page cache timed by its RSS. :meth:`TrendDetector.explain_features` exposes the nine
inputs of the score (``<channel>.slope``, ``.headroom``, ``.monotonicity``) and
:meth:`TrendDetector.score_from_explain_features` recomputes the score from them exactly,
so Shapley values over those inputs sum to the score.
"""

from __future__ import annotations

import inspect
import json
import math
import time
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.channels import LEAK_CHANNELS, channel_words
from detector.errors import InputError, ModelIntegrityError
from detector.models.attribution import exact_shapley_rows
from detector.models.base import Attribution, Prediction, ThresholdMixin, threshold_at_fpr
from detector.models.history import LevelHistory
from detector.models.spec import (
    NEW_POD_S,
    Decider,
    DetectorSpec,
    Evidence,
    FitContext,
    Fitted,
    Judged,
    Member,
    json_file,
    pod_age_s,
)
from detector.models.state import TrendState, read_state
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

TTO_BAND = (0.55, 1.1)
"""The stated time-to-OOM range, as factors of the estimate: the 10th and 90th percentiles of
(real time to OOM / estimate) at the first alarm on the train split's leaks (seed 11, two pods
per shape, 24 h; the projections run long on fast leaks). Its coverage is measured on the
frozen test split."""

LIFE_BAND = (0.7, 1.3)
"""The stated range of a time to OOM taken from the last OOM-killed life's length (a crash
loop's new life, its own growth not yet measured), as factors of the estimate: about the 10th
and 90th percentiles of (real time to OOM / estimate) at the first alarm of the train split's
crash-loop lives (seeds 1234, 4321, 77, four pods per shape, 48 h: 36 lives, 0.72-1.23).
Wider than :data:`TTO_BAND` because the lives of a crash loop vary (the generator's by
+-35 %; on the real kernel by about 1 %). Its coverage is measured on the frozen test split."""

FAST_MIN_USED = 0.5
"""The fast path judges a pod only once it uses at least this fraction of its limit (real
healthy JVM executors of the Exathlon traces commit GiBs of heap in minutes at 40 % of it:
at 0.35 two of the full set's runs score 0.79 of the fast threshold, at 0.5 none scores)."""

EVIDENCE_SPAN_S = 4 * 3600.0
"""A slow-path view shorter than this counts its monotonicity in proportion to its span."""

FAST_POINTS = 30
"""The fast path judges at most this many points (block minima on a finer grid)."""

FAST_SUBSPANS: tuple[float, ...] = (300.0, 600.0)
"""The recent sub-spans (s) the fast path judges besides ``fast_span_s`` (it keeps the one
that scores highest; its one threshold is fitted on that maximum)."""

MIN_THRESHOLD = 0.05
"""The lowest threshold either path is given (a path that scores 0 on every healthy window
would otherwise fire on any growth at all)."""

STEP_DOMINANCE = 2.0
"""A rise between consecutive blocks larger than this many times all the view's other rises
together is a step, not a trend: it is taken out before the trend is measured."""

EXPLAIN_STATS: tuple[str, ...] = ("slope", "headroom", "monotonicity")
EXPLAIN_NAMES: tuple[str, ...] = tuple(f"{c}.{s}" for c in MEMORY_CHANNELS for s in EXPLAIN_STATS)

STATE_VERSION = 3
"""3 added the imminent path (its keys); a version-2 state loads with that path off."""

PAGE_CACHE_RSS_SHARE = 0.25
"""Working-set growth is page cache (:func:`page_cache_growth`) when the RSS grew by at most
this share of it over the same span."""


def _nanquantile_sorted(xs: np.ndarray, cnt: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of rows already sorted along the last axis (NaN last), ``cnt`` finite."""
    pos = np.clip(np.floor(q * (cnt - 1)).astype(np.int64), 0, max(xs.shape[-1] - 1, 0))
    rows = xs.reshape(-1, xs.shape[-1])
    out = rows[np.arange(rows.shape[0]), pos.reshape(-1)].reshape(pos.shape)
    return np.where(cnt > 0, out, np.nan)


_PAIRS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pairs(nb: int) -> tuple[np.ndarray, np.ndarray]:
    if nb not in _PAIRS:
        i, j = np.triu_indices(nb, k=1)
        _PAIRS[nb] = (i.astype(np.int64), j.astype(np.int64))
    return _PAIRS[nb]


def destep(y: np.ndarray) -> np.ndarray:
    """``y`` (R, m) with its largest rise between consecutive finite points taken out where
    it dominates (more than :data:`STEP_DOMINANCE` times all the other rises together): one
    legitimate step up is then no trend, while growth spread over several rises (a linear
    leak, a staircase of several steps) is kept whole."""
    d = y[..., 1:] - y[..., :-1]  # np.diff's values, without its per-call overhead
    d_f = np.where(np.isfinite(d), d, -np.inf)
    kmax = np.argmax(d_f, axis=-1)
    dmax = np.maximum(d_f.max(axis=-1), 0.0)  # the largest rise (0 for none)
    others = np.maximum(d_f, 0.0).sum(axis=-1) - dmax  # the sum of the other rises
    stepped = np.flatnonzero(dmax > STEP_DOMINANCE * others)
    if stepped.size == 0:
        return y
    out = y.copy()
    after_step = np.arange(y.shape[-1])[None, :] > kmax[stepped, None]
    out[stepped] -= after_step * dmax[stepped, None].astype(y.dtype)
    return out


_HALVES: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _half_medians(slopes: np.ndarray, m: int, early_end: int, recent_start: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Medians (NaN-skipping) of the pairwise ``slopes`` (R, pairs of ``m`` points, in
    :func:`_pairs` order) between points before ``early_end`` and between points from
    ``recent_start`` on; one sort for both when the halves hold as many pairs."""
    key = (m, early_end, recent_start)
    if key not in _HALVES:
        i, j = _pairs(m)
        _HALVES[key] = (np.flatnonzero(j < early_end), np.flatnonzero(i >= recent_start))
    early, recent = _HALVES[key]
    if early.size == recent.size:
        both = nanmedian_last(np.take(slopes, np.stack([early, recent]), axis=1))
        return both[:, 0], both[:, 1]
    return nanmedian_last(slopes[:, early]), nanmedian_last(slopes[:, recent])


def _mann_kendall_s(dy: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Mann-Kendall S of pairwise differences ``dy`` (R, P) over the pairs ``ok`` (finite):
    rises minus falls, float64."""
    rises = np.count_nonzero((dy > 0) & ok, axis=-1)
    return (rises - np.count_nonzero((dy < 0) & ok, axis=-1)).astype(np.float64)


def max_drawdown(x: np.ndarray) -> np.ndarray:
    """(R,) float64: the largest fall of each row of ``x`` (R, L) below its running maximum
    over its finite points (0 for none, NaN points skipped)."""
    filled = np.where(np.isfinite(x), x, -np.inf)
    d = np.maximum.accumulate(filled, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        d -= filled  # the fall below the running maximum; not finite where x is not
    return np.where(np.isfinite(d), d, 0.0).max(axis=-1, initial=0.0).astype(np.float64)


class _Coarse:
    """Rows ``v`` (R, L) of the incarnations the short-horizon paths judge, at coarser grids
    (the minimum of each ``k`` points, aligned to the window end), with the largest drawdown
    of each: the same for every span judged at that grid, so computed once per ``k``."""

    def __init__(self, v: np.ndarray) -> None:
        self.v = v
        self._mins: dict[int, np.ndarray] = {1: v}
        self._dd: dict[int, np.ndarray] = {}

    def mins(self, k: int) -> np.ndarray:
        if k not in self._mins:
            v = self.v
            with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
                self._mins[k] = np.nanmin(v[:, v.shape[-1] % k:].reshape(v.shape[0], -1, k),
                                          axis=-1)
        return self._mins[k]

    def drawdown(self, k: int) -> np.ndarray:
        if k not in self._dd:
            self._dd[k] = max_drawdown(self.mins(k))
        return self._dd[k]

    def rows(self, idx: np.ndarray) -> _Coarse:
        """The same for the rows ``idx`` (what is computed already is kept)."""
        sub = _Coarse(self.v[idx])
        sub._mins.update({k: m[idx] for k, m in self._mins.items() if k != 1})
        sub._dd = {k: d[idx] for k, d in self._dd.items()}
        return sub


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
    view_s: np.ndarray | None = None  # (n,) span (s) of the data that gave the best score
    fast: np.ndarray | None = None  # (n,) bool: the fast path gave it (a young incarnation)


@dataclass(frozen=True)
class Analysis:
    """Both paths' per-channel stats of one batch ((n, 3) arrays), computed once. The fast
    and imminent stats are blank (score 0) where the path cannot score: no limit, or under
    :data:`FAST_MIN_USED` of it (they are read only where the path scores higher)."""

    slow: _ViewStats
    slow_span: np.ndarray
    fast: _ViewStats
    fast_span: np.ndarray
    imminent: _ViewStats  # raw; score 0 where it does not judge (incarnations >= fast_min_s)
    imminent_span: np.ndarray


@dataclass(frozen=True)
class _ViewStats:
    score: np.ndarray  # (n, 3)
    slope: np.ndarray  # (n, 3) de-stepped slope, fraction of limit per hour
    headroom: np.ndarray  # (n, 3) free fraction of the limit
    mono: np.ndarray  # (n, 3)
    rate: np.ndarray  # (n, 3) plain Theil-Sen, bytes/s
    limit: np.ndarray  # (n, 3)
    room: np.ndarray  # (n, 3) limit - peak, bytes
    tto: np.ndarray  # (n, 3) time to OOM, s (inf: not reaching the limit), deceleration-aware
    q: np.ndarray  # (n, 3) growth of the recent half over the earlier half (1 = steady)
    half_s: np.ndarray  # (n, 3) length of a half, seconds
    valid: np.ndarray  # (n, 3) enough blocks to judge


def _fields(st: _ViewStats) -> tuple[np.ndarray, ...]:
    return (st.score, st.slope, st.headroom, st.mono, st.rate, st.limit, st.room, st.tto,
            st.q, st.half_s, st.valid)


def _concat(parts: list[Analysis]) -> Analysis:
    """The analyses of consecutive blocks of windows as one."""

    def cat(stats: list[_ViewStats]) -> _ViewStats:
        return _ViewStats(*(np.concatenate(f) for f in zip(*map(_fields, stats), strict=True)))

    return Analysis(slow=cat([p.slow for p in parts]),
                    slow_span=np.concatenate([p.slow_span for p in parts]),
                    fast=cat([p.fast for p in parts]),
                    fast_span=np.concatenate([p.fast_span for p in parts]),
                    imminent=cat([p.imminent for p in parts]),
                    imminent_span=np.concatenate([p.imminent_span for p in parts]))


ANALYSIS_BLOCK = 1024
"""Windows analysed together (a larger batch is analysed in blocks of this many)."""


LINEAR_Q = 0.9
"""A growth ratio between the recent and the earlier half of a view above this is taken as
linear (a leak); below it the growth is decelerating and projected geometrically."""


def projected_tto(room: np.ndarray, rate: np.ndarray, q: np.ndarray, half_s: np.ndarray | float
                  ) -> np.ndarray:
    """Time (s) until growth fills ``room`` bytes, at ``rate`` bytes/s now, when the growth
    of each coming interval of ``half_s`` seconds is ``q`` times the previous one.

    ``q >= LINEAR_Q``: linear, ``room / rate``. Below: the growth is a geometric series whose
    sum ``g q / (1 - q)`` (``g = rate * half_s``) may stay under ``room`` - a warm-up that
    levels off under the limit never reaches it (inf) - or reach it after
    ``log(1 - room (1 - q) / (g q)) / log(q)`` intervals. inf where nothing grows."""
    room = np.maximum(np.asarray(room, dtype=np.float64), 0.0)
    rate = np.asarray(rate, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    q = np.clip(np.where(np.isnan(q), 1.0, q), 1e-6, 1.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        linear = np.where(rate > 0, room / rate, np.inf)
        g = rate * half_s
        total = g * q / (1.0 - q)
        arg = 1.0 - room * (1.0 - q) / (g * q)
        k = np.log(np.where(arg > 0, arg, 1.0)) / np.log(q)
        geo = np.where((rate > 0) & (room < total) & (arg > 0), k * half_s, np.inf)
    return np.where(q >= LINEAR_Q, linear, geo)


ACCELERATING_Q = 1.5
"""A span whose recent half grows more than this many times faster than its earlier half (or
grows after a flat start) is accelerating: a leak that began inside it. Its pace now is that
of its most recent linear stretch (:func:`recent_linear_rate`)."""

RECENT_FRACTIONS: tuple[float, ...] = (0.75, 0.5, 1 / 3, 0.25)
"""The trailing stretches of an accelerating span that :func:`recent_linear_rate` tries, as
fractions of its valid points, longest first (each at least :data:`RECENT_MIN_POINTS`)."""

RECENT_MIN_POINTS = 4
"""The fewest points a recent stretch is measured on (at the daemon's default 60 s step a
real trainer's leak is alarmed 3-4 min after it began)."""

ANON_RATE_SHARE = 0.9
"""Working-set growth is anonymous memory when the RSS grows at least this share as fast
(:meth:`TrendDetector._pace_now`)."""


def _blocks(points: int) -> tuple[int, int]:
    """(blocks, grid points per block) of a short-horizon judgement of ``points`` grid points:
    at most :data:`FAST_POINTS` blocks (the pairwise statistics cost their square)."""
    k = max(1, math.ceil(points / FAST_POINTS))
    return points // k, k


def recent_linear_rate(y: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """The pace now of rows ``y`` (R, m) on a grid of ``step`` seconds (NaN: no data; a young
    incarnation's leading points are NaN): ``(rate, accelerating)``, (R,) each.

    A span is *accelerating* when the median step-to-step rise of its recent half exceeds
    :data:`ACCELERATING_Q` times that of its earlier half, or when it grows after a flat or
    falling start (a leak that began inside the span: the flat part dilutes the whole span's
    robust slope - on a real kernel a trainer whose leak began 5 min into its life was given
    18.7 min to OOM at 7.3 min, 11.3 real). Its rate is then that of its longest trailing
    stretch (:data:`RECENT_FRACTIONS` of the valid points, at least
    :data:`RECENT_MIN_POINTS`) that is itself not accelerating, else of the shortest: the
    lower of the stretch's Theil-Sen slope and its median step-to-step rise (one allocation
    step inside a short stretch lifts most of its pairwise slopes, not the median rise),
    where robustly higher than the whole span's: the lower quartile of the stretch's
    pairwise slopes above the whole span's median (noise around a slow leak lifts a short
    stretch's median, rarely three in four of its slopes). Elsewhere ``rate`` is the span's
    Theil-Sen slope (units/s; NaN for
    fewer than :data:`RECENT_MIN_POINTS` points)."""
    y = np.asarray(y, dtype=np.float64)
    R, m = y.shape
    rate = np.full(R, np.nan)
    accel = np.zeros(R, dtype=bool)
    if R == 0 or m < RECENT_MIN_POINTS:
        return rate, accel
    ok = np.isfinite(y)
    first = np.where(ok.any(axis=-1), np.argmax(ok, axis=-1), m)
    n_valid = m - first
    i, j = _pairs(m)
    with np.errstate(invalid="ignore"):
        slopes = (y[:, j] - y[:, i]) / ((j - i) * step)
        rises = np.diff(y, axis=-1) / step  # (R, m - 1): rise d[t] from point t to t + 1
    t = np.arange(m - 1)[None, :]

    def stretch(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """From point ``c`` on: Theil-Sen, the lower quartile of the pairwise slopes, the
        median rise, and whether it is linear (its recent half's median rise at most
        ACCELERATING_Q times its earlier half's, that positive). ``c`` (k R,) holds k
        starting points of every row, stacked (all of them judged in one pass: every
        statistic is per row)."""
        reps = c.shape[0] // R
        sl = slopes if reps == 1 else np.tile(slopes, (reps, 1))
        ri = rises if reps == 1 else np.tile(rises, (reps, 1))
        mid = (c + (m - c) // 2)[:, None]
        cc = c[:, None]
        own = np.sort(np.where(i[None, :] >= cc, sl, np.nan), axis=-1)
        cnt = np.count_nonzero(np.isfinite(own), axis=-1)
        ts = _nanquantile_sorted(own, cnt, 0.5)
        low = _nanquantile_sorted(own, cnt, 0.25)
        med = nanmedian_last(np.where(t >= cc, ri, np.nan))
        early = nanmedian_last(np.where((t >= cc) & (t + 1 < mid), ri, np.nan))
        recent = nanmedian_last(np.where(t >= mid, ri, np.nan))
        return ts, low, med, (early > 0) & ~(recent > ACCELERATING_Q * early)

    # the whole span and each trailing stretch of RECENT_FRACTIONS
    starts = [first] + [np.clip(m - np.maximum(RECENT_MIN_POINTS, np.ceil(f * n_valid))
                                .astype(np.int64), first, m) for f in RECENT_FRACTIONS]
    ts_all, low_all, med_all, lin_all = (a.reshape(len(starts), R)
                                         for a in stretch(np.concatenate(starts)))
    rate, linear_whole = ts_all[0], lin_all[0]
    accel = ~linear_whole & (rate > 0) & (n_valid >= 2 * RECENT_MIN_POINTS)
    chosen = np.full(R, np.nan)
    robust = np.zeros(R, dtype=bool)
    open_ = accel.copy()  # rows still looking for their longest linear stretch
    for g, f in enumerate(RECENT_FRACTIONS, start=1):
        ts_f, low_f, med_f, lin_f = ts_all[g], low_all[g], med_all[g], lin_all[g]
        take = open_ & (lin_f | (f == RECENT_FRACTIONS[-1]))
        chosen = np.where(take, np.fmin(ts_f, med_f), chosen)
        # robustly higher: three in four of the stretch's pairwise slopes above the whole
        # span's median (noise around a slow leak lifts a short stretch's median, not that)
        robust = np.where(take, low_f > rate, robust)
        open_ &= ~lin_f
    accel &= robust
    rate = np.where(accel & (chosen > rate), chosen, rate)
    rate = np.where(n_valid >= RECENT_MIN_POINTS, rate, np.nan)
    return rate, accel & (n_valid >= RECENT_MIN_POINTS)


def _borrow_healthy_growth(bg: np.ndarray) -> np.ndarray:
    """``bg`` (k, channels x stats) with every channel that shows no healthy growth (slope or
    monotonicity zero in all k rows) given the working set's healthy monotonicity, its slope
    left at zero.

    A leak's score on a channel is ``f(slope / headroom) * monotonicity``: against a reference
    of zero slope and zero monotonicity, every coalition that lacks either input scores 0, so
    the two get identical Shapley values whatever the window -- tied by construction, and the
    explanation cannot say whether the growth was steep or steady. A reference as steady as
    healthy growth but not growing still scores 0 on that channel (the base value does not
    move, and a GPU or RSS leak's own channel keeps all of its credit), while slope and
    monotonicity get different shares: slope ``f(s) (m + m0) / 2``, monotonicity
    ``f(s) (m - m0) / 2`` against a reference monotonicity ``m0``."""
    nc, ns = len(MEMORY_CHANNELS), len(EXPLAIN_STATS)
    out = np.array(bg, dtype=np.float64, copy=True).reshape(len(bg), nc, ns)
    ws = MEMORY_CHANNELS.index("mem_working_set")
    slope, mono = EXPLAIN_STATS.index("slope"), EXPLAIN_STATS.index("monotonicity")
    grows = np.asarray((out[:, :, slope] > 0).any(axis=0) & (out[:, :, mono] > 0).any(axis=0))
    if bool(grows[ws]):
        for c in np.flatnonzero(~grows):
            out[:, c, slope] = 0.0
            out[:, c, mono] = out[:, ws, mono]
    return out.reshape(len(bg), nc * ns)


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
        u0: float = 0.01,
        min_span_s: float = 5400.0,
        settle_s: float = 1800.0,
        fast_span_s: float = 1800.0,
        fast_min_s: float = 300.0,
        fast_horizon_s: float = 3 * 3600.0,
        imminent_min_s: float = 120.0,
        imminent_horizon_s: float = 300.0,
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
        for name, val in (("fast_span_s", fast_span_s), ("fast_min_s", fast_min_s),
                          ("fast_horizon_s", fast_horizon_s), ("imminent_min_s", imminent_min_s),
                          ("imminent_horizon_s", imminent_horizon_s)):
            if not (math.isfinite(val) and val > 0):
                problems.append(f"{name} must be > 0, got {val!r}")
        if math.isfinite(fast_min_s) and math.isfinite(fast_span_s) and fast_min_s > fast_span_s:
            problems.append("fast_min_s must not exceed fast_span_s")
        if math.isfinite(imminent_min_s) and math.isfinite(fast_min_s) and \
                imminent_min_s > fast_min_s:
            problems.append("imminent_min_s must not exceed fast_min_s")
        if problems:
            raise InputError("TrendDetector: " + "; ".join(problems))
        self.fast_span_s = float(fast_span_s)
        self.fast_min_s = float(fast_min_s)
        self.fast_horizon_s = float(fast_horizon_s)
        self.fast_threshold_: float | None = None
        self.imminent_min_s = float(imminent_min_s)
        self.imminent_horizon_s = float(imminent_horizon_s)
        self.imminent_threshold_: float | None = None
        self.explain_background_: list[list[float]] = []
        self._cache: tuple[WindowBatch, Analysis] | None = None
        self.views = tuple((float(b), int(k)) for b, k in views)
        self.u0 = float(u0)
        self.min_span_s = float(min_span_s)
        self.settle_s = float(settle_s)
        self.threshold_: float | None = None
        self.fitted_ = False
        self.healthy_quantiles_: list[float] = []

    # ------------------------------------------------------------------ core

    def _inputs(self, values: np.ndarray, limits: np.ndarray, step: float,
                restarts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Memory values (n, 3, L) of the current incarnation after its settling time, the
        same without the settling time (for the fast path), limits (n, 3), of windows'
        ``values`` (n, channels, L) and ``limits`` (n, channels) on a grid of ``step``, the
        incarnations starting at ``restarts`` (n, L) (:meth:`WindowBatch.restarts_of_memory`:
        a sidecar's restart does not start one)."""
        mem_idx = [CHANNELS.index(c) for c in MEMORY_CHANNELS]
        v = values[:, mem_idx, :].astype(np.float32, copy=False)
        L = v.shape[-1]
        # a (re)start is followed by a warm-up: judge only what comes after the last restart
        # in the window, and after a pod that starts inside the window, plus a settling time
        idx = np.arange(L)[None, :]
        last_r = last_restart_index(restarts)
        fin = np.asarray(np.isfinite(v).any(axis=1))  # (n, L): any memory channel has data
        first = np.where(np.asarray(fin.any(axis=1)), np.argmax(fin, axis=1), 0)
        start = np.where(first > 0, first, -1)
        begin = np.maximum(last_r, start)
        settle = round(self.settle_s / step)
        inc = np.where(begin >= 0, begin, 0)
        v_inc = v
        if (inc > 0).any():
            v_inc = np.where((idx < inc[:, None])[:, None, :], np.float32(np.nan), v)
        cut = np.where(begin >= 0, begin + settle, 0)
        if (cut > 0).any():
            v = np.where((idx < cut[:, None])[:, None, :], np.float32(np.nan), v)
        lim = limits[:, mem_idx].astype(np.float64)
        return v, v_inc, lim

    def _views(self, v: np.ndarray, lim: np.ndarray, step: float,
               views: list[tuple[float, int]],
               cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[_ViewStats]:
        """Stats of each of ``views`` (of one number of blocks, each within the window) for
        rows ``v`` (R, L) with limits ``lim`` (R,), computed together: the views' rows are
        stacked (view by view; every statistic is per row). ``cache`` keeps what depends on
        the block size only, for the views that share it: the block minima over the window,
        their largest drawdown and the peak of the last block."""
        L, R, G = v.shape[-1], v.shape[0], len(views)
        nb = views[0][1]
        ks = [max(1, round(block_s / step)) for block_s, _ in views]
        for k in ks:
            if k not in cache:
                mins = block_reduce(v, step, k * step, "min")[0]  # (R, NB) over the window
                last = v[:, L - k :]
                top = np.where(np.isfinite(last), last, -np.inf).max(axis=-1)
                cache[k] = (mins, max_drawdown(mins), top.astype(np.float64))

        def stacked(a: list[np.ndarray]) -> np.ndarray:
            return a[0] if G == 1 else np.concatenate(a)

        y = stacked([cache[k][0][:, -nb:] for k in ks])  # (G * R, nb)
        dd = stacked([cache[k][1] for k in ks])
        peak = stacked([cache[k][2] for k in ks])
        lim = np.tile(lim, G)
        blk = np.array([k * step for k in ks])  # block seconds of each view
        blk_s = np.repeat(blk, R)  # of each row
        n_valid = np.count_nonzero(np.isfinite(y), axis=-1)
        i, j = _pairs(nb)
        gap = ((j - i)[None, :] * blk[:, None]).astype(np.float32)  # (G, pairs)
        # De-stepping: the largest rise between consecutive blocks is taken out of the series
        # when it dominates the view's growth (more than STEP_DOMINANCE times all the other
        # rises together): one legitimate step up is then no trend - not in the Mann-Kendall
        # test, the slope or the reported rate - while growth spread over several rises (a
        # linear leak, a staircase of several steps) is kept whole.
        y = destep(y)
        dy = y[:, j] - y[:, i]
        pair_ok = np.isfinite(dy)
        # Mann-Kendall on the trailing blocks
        S = _mann_kendall_s(dy, pair_ok)
        m = n_valid.astype(np.float64)
        tau = S / np.maximum(m * (m - 1) / 2, 1.0)
        Z = S / np.sqrt(np.maximum(m * (m - 1) * (2 * m + 5) / 18.0, 1e-9))
        sig = np.clip((Z - 1.0) / 1.5, 0.0, 1.0)
        # Theil-Sen and the spread of pairwise slopes
        slopes = (dy.reshape(G, R, -1) / gap[:, None, :]).reshape(G * R, -1)
        ss = np.sort(slopes, axis=-1)
        cnt = np.count_nonzero(pair_ok, axis=-1)
        rate = _nanquantile_sorted(ss, cnt, 0.5).astype(np.float64)
        h = nb // 2
        # the medians of the pairwise slopes within the early and within the recent half
        rate_early, rate_recent = (r.astype(np.float64) for r in _half_medians(
            slopes, nb, nb - h, h))
        with np.errstate(invalid="ignore", divide="ignore"):
            # growth must not decelerate: recent-half slope vs early-half slope of the floor
            # (a warm-up approaching its plateau has a ratio near 0, a steady leak near 1)
            ref_rate = np.fmax(rate_early, 0.5 * rate)
            persist = np.where(
                (rate > 0) & (ref_rate > 0),
                np.clip(rate_recent / ref_rate, 0.0, 1.0),
                0.0,
            )
            # earlier drawdown of the floor over the whole window (dd) vs the rise of this view
            rise = np.maximum(rate, 0.0) * nb * blk_s
            calm = np.where(rise > 0, np.clip(1.0 - dd / rise, 0.0, 1.0), 0.0)
            mono = np.maximum(tau, 0.0) * sig * persist * calm
            mono = np.where(n_valid >= math.ceil(0.75 * nb), mono, 0.0)
            # the peak of the last block (else the median floor of the view)
            if not np.isfinite(peak).all():
                peak = np.where(np.isfinite(peak), peak, nanmedian_last(y))
            has_lim = np.isfinite(lim) & (lim > 0)
            ref = np.where(has_lim, lim, peak)
            slope = np.maximum(rate, 0.0) * 3600.0 / ref
            room = lim - peak
            headroom = np.where(has_lim, np.clip(room / lim, 0.005, 1.0), 1.0)
        # the reported rate: the faster of the whole view and its recent half (a leak that
        # began inside the view)
        rate_rep = np.fmax(rate, rate_recent)
        # time to OOM: linear while the growth keeps its pace, geometric while it slows down
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(ref_rate > 0, rate_recent / ref_rate, 1.0)
        half_s = (nb - h) * blk_s
        decel = q < LINEAR_Q
        now = np.where(decel, rate_recent, rate_rep)
        tto = projected_tto(room, now, q, half_s)
        # urgency: the share of the headroom consumed per hour on that projection (= slope /
        # headroom for steady growth; less for growth that slows down, 0 for a warm-up that
        # levels off under the limit)
        with np.errstate(invalid="ignore", divide="ignore"):
            u_proj = np.where(np.isfinite(tto) & (tto > 0), 3600.0 / tto, 0.0)
        slope = np.where(has_lim, np.minimum(slope, u_proj * headroom), slope)
        slope = np.where(np.isfinite(slope), slope, 0.0)
        mono = np.where(np.isfinite(mono), mono, 0.0)
        score = self._combine(slope, headroom, mono)
        valid = n_valid >= math.ceil(0.75 * nb)
        every = _ViewStats(score, slope, headroom, mono, rate_rep, lim, room, tto,
                           np.where(np.isfinite(q), q, 1.0), half_s, valid)
        return [_ViewStats(*(a[g * R:(g + 1) * R] for a in _fields(every))) for g in range(G)]

    def fast_spans(self) -> tuple[float, ...]:
        """The spans the fast path judges: :data:`FAST_SUBSPANS` shorter than ``fast_span_s``,
        then ``fast_span_s`` itself."""
        return (*(s for s in FAST_SUBSPANS if s < self.fast_span_s), self.fast_span_s)

    def _fast(self, inc: _Coarse, lim: np.ndarray, step: float
              ) -> tuple[_ViewStats, np.ndarray]:
        """The fast path on rows ``v`` (R, L) of the current incarnation, no settling time:
        each of :meth:`fast_spans` (the last 5, 10 and 30 min at the grid step, each judged
        from ``min(fast_min_s, span)`` of data and its own minimum of points), the one that
        scores highest per row (a leak that began after a long flat stretch fills only the
        recent part of the long span, whose robust slope it dilutes). Also returns the
        span (s) of data the chosen one judged.

        Only the rows that can score in some span are computed (:meth:`_can_score`); the
        others get blank stats (score 0: the combination never picks them) and span NaN."""
        spans = self.fast_spans()
        rows = np.flatnonzero(np.logical_or.reduce(
            [self._can_score(inc, lim, step, s) for s in spans]))
        out = self._blank(lim.shape[0], lim)
        span = np.full(lim.shape[0], np.nan)
        if rows.size == 0:
            return out, span
        sub, lim_s = inc.rows(rows), lim[rows]
        L = sub.v.shape[-1]
        fin = np.isfinite(sub.v)
        best: _ViewStats | None = None
        judged_best = np.zeros(rows.size)
        for span_s in spans:
            st = self._short(sub, lim_s, step, span_s=span_s, min_s=min(self.fast_min_s, span_s),
                             horizon_s=self.fast_horizon_s, steady_only=False)
            m = min(L, max(6, round(span_s / step)))
            judged = fin[:, L - m:].sum(axis=-1) * step
            if best is None:
                best, judged_best = st, judged
                continue
            better = st.score > best.score
            best = _ViewStats(*(np.where(better, a, b) for a, b in zip(
                _fields(st), _fields(best), strict=True)))
            judged_best = np.where(better, judged, judged_best)
        assert best is not None
        for f_out, f_best in zip(_fields(out), _fields(best), strict=True):
            f_out[rows] = f_best
        span[rows] = judged_best
        return out, span

    def _imminent(self, inc: _Coarse, lim: np.ndarray, step: float) -> _ViewStats:
        """The imminent-OOM judgement of incarnations younger than ``fast_min_s``: their
        last ``fast_min_s`` at the grid step, judged from ``imminent_min_s`` of data, only
        where the growth keeps its pace (a warm-up decelerates from its first minutes) and
        the projected OOM is within ``imminent_horizon_s``. Rows that cannot score
        (:meth:`_can_score`) get blank stats."""
        out = self._blank(lim.shape[0], lim)
        rows = np.flatnonzero(self._can_score(inc, lim, step, self.fast_min_s))
        if rows.size:
            st = self._short(inc.rows(rows), lim[rows], step, span_s=self.fast_min_s,
                             min_s=self.imminent_min_s, horizon_s=self.imminent_horizon_s,
                             steady_only=True)
            for f_out, f_st in zip(_fields(out), _fields(st), strict=True):
                f_out[rows] = f_st
        return out

    @staticmethod
    def _short_grid(L: int, step: float, span_s: float) -> tuple[int, int]:
        """(points, grid points per point) of a short-horizon judgement of the last
        ``span_s``: at most :data:`FAST_POINTS` points (a finer grid is cut into block
        minima: the pairwise statistics cost the square of the points)."""
        return _blocks(min(L, max(6, round(span_s / step))))

    @staticmethod
    def _recent_peak(level: np.ndarray) -> np.ndarray:
        """(R,) float64: the highest of the last 3 points of ``level`` (R, m); -inf for none."""
        last = level[:, level.shape[-1] - min(level.shape[-1], 3):]
        return np.where(np.isfinite(last), last, -np.inf).max(axis=-1).astype(np.float64)

    def _can_score(self, inc: _Coarse, lim: np.ndarray, step: float, span_s: float
                   ) -> np.ndarray:
        """(R,) bool: rows that :meth:`_short` over ``span_s`` does not score 0 from the
        start, having a limit and using at least :data:`FAST_MIN_USED` of it (the same
        ``peak`` and ``used`` as there)."""
        m, k = self._short_grid(inc.v.shape[-1], step, span_s)
        peak = self._recent_peak(inc.mins(k)[:, -m:])
        has_lim = np.isfinite(lim) & (lim > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return has_lim & (peak / np.where(has_lim, lim, 1.0) >= FAST_MIN_USED)

    def _short(self, inc: _Coarse, lim: np.ndarray, step: float, *, span_s: float,
               min_s: float, horizon_s: float, steady_only: bool) -> _ViewStats:
        """A short-horizon judgement of rows ``inc.v`` (R, L): the last ``span_s`` at the grid
        step, judged from ``min_s`` of data (and at least 6 points), scoring only a projected
        OOM within ``horizon_s`` (``steady_only``: and growth that does not slow down).

        Growth must be significant (Mann-Kendall), calm (no drawdown of the incarnation's
        series larger than a small part of the rise: a GC sawtooth or a periodic load has
        them, a leak does not) and not decelerating (a warm-up slows down; its projected
        plateau under the limit gives no time to OOM). Urgency is one over the projected
        time to OOM, so only growth that fills the headroom soon scores."""
        m, k = self._short_grid(inc.v.shape[-1], step, span_s)
        y = inc.mins(k)[:, -m:]  # the last m blocks of k points
        step = step * k
        level = y  # the usage itself: de-stepping is for the trend, not for the headroom
        y = destep(y)
        ok = np.isfinite(y)
        nv = ok.sum(axis=-1)
        need = max(6 if k == 1 else 5, math.ceil(min_s / step))
        first = np.where(ok.any(axis=-1), np.argmax(ok, axis=-1), m)  # first valid position
        i, j = _pairs(m)
        dy = y[:, j] - y[:, i]
        pair_ok = np.isfinite(dy)
        slopes = dy / ((j - i) * step).astype(np.float32)
        S = _mann_kendall_s(dy, pair_ok)
        mf = nv.astype(np.float64)
        Z = S / np.sqrt(np.maximum(mf * (mf - 1) * (2 * mf + 5) / 18.0, 1e-9))
        sig = np.clip((Z - 2.0) / 1.5, 0.0, 1.0)
        ss = np.sort(slopes, axis=-1)
        cnt = np.count_nonzero(pair_ok, axis=-1)
        rate = _nanquantile_sorted(ss, cnt, 0.5).astype(np.float64)
        # halves of the valid span: early [first, mid), recent [mid, m)
        mid = first + (m - first) // 2
        # rows whose data fills the span (most) take their halves' pairs as fixed columns;
        # the others (young incarnations) by mask: the same finite values, the same medians
        r_early = np.empty(y.shape[0])
        r_recent = np.empty(y.shape[0])
        full = first == 0
        if full.any():
            sl = slopes[full]
            r_early[full], r_recent[full] = _half_medians(sl, m, m // 2, m // 2)
        if not full.all():
            part = ~full
            sl, f_, md = slopes[part], first[part], mid[part]
            early = (i[None, :] >= f_[:, None]) & (j[None, :] < md[:, None])
            recent = i[None, :] >= md[:, None]
            both = nanmedian_last(np.stack([np.where(early, sl, np.nan),
                                            np.where(recent, sl, np.nan)], axis=1))
            r_early[part], r_recent[part] = both[:, 0], both[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where((r_early > 0) & np.isfinite(r_recent), r_recent / r_early, 1.0)
            half_s = np.maximum((m - mid) * step, step)
            # the largest drawdown of the incarnation's series (whole window) vs the rise
            dd = inc.drawdown(k)
            rise = np.maximum(rate, 0.0) * np.maximum(nv - 1, 0) * step
            calm = np.where(rise > 0, np.clip(1.0 - 2.0 * dd / rise, 0.0, 1.0), 0.0)
            # the level from the usage itself: with a start-up step taken out (a process
            # scraped once before its framework import), the de-stepped series would sit a
            # whole step below the real usage and overstate the room to the limit
            peak = self._recent_peak(level)
            has_lim = np.isfinite(lim) & (lim > 0)
            room = np.where(has_lim, lim - peak, np.nan)
            decel = q < LINEAR_Q
            # the pace now: for an incarnation that started inside the span, the faster of
            # its whole life and the recent half of it (a leak that began, or sped up, after
            # the start: the median slope, diluted by the flat start, told a kept-loss
            # trainer on a real kernel 9.9 min to OOM at 6.3); a span full of data keeps its
            # median (a short recent half is noisy); the recent half's while it slows down
            now = np.where(decel, r_recent, np.where(full, rate, np.fmax(rate, r_recent)))
            tto = np.where(has_lim, projected_tto(room, now, q, half_s), np.inf)
            headroom = np.where(has_lim, np.clip(room / lim, 0.005, 1.0), 1.0)
            # urgency as the slow path has it: the fraction of the headroom consumed per hour
            u = np.where(np.isfinite(tto) & (tto > 0), 3600.0 / tto, 0.0)
            slope = u * headroom
            mono = np.where(nv >= need, sig * calm, 0.0)
        mono = np.where(np.isfinite(mono), mono, 0.0)
        slope = np.where(np.isfinite(slope), slope, 0.0)
        score = self._combine(slope, headroom, mono)
        # beyond the fast horizon, or with most of the limit still free, the fast path says
        # nothing (the slow path judges): a JVM committing its heap or a cache filling at
        # start-up grows as fast as a leak, but far below its limit
        used = np.where(has_lim, peak / lim, 0.0)
        judged = (tto <= horizon_s) & (used >= FAST_MIN_USED)
        if steady_only:
            judged &= q >= LINEAR_Q
        score = np.where(judged, score, 0.0)
        return _ViewStats(score, slope, headroom, mono, now, lim, room, tto,
                          np.where(np.isfinite(q), q, 1.0),
                          np.broadcast_to(half_s, q.shape).astype(np.float64), nv >= need)

    def _combine(self, slope: np.ndarray, headroom: np.ndarray, mono: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.maximum(slope, 0.0) / np.clip(headroom, 0.005, 1.0)
            s = np.log1p(u / self.u0) * np.maximum(mono, 0.0)
        return np.where(np.isfinite(s), s, 0.0)

    def _analyse(self, batch: WindowBatch) -> Analysis:
        """Both paths of every window and memory channel, computed once per batch (the
        score, the leak report and the explanation all read this one analysis)."""
        if self._cache is not None and self._cache[0] is batch:
            return self._cache[1]
        if tuple(batch.channels) != CHANNELS:
            raise InputError(f"TrendDetector needs channels {CHANNELS}, got {batch.channels}")
        step = batch.step_s
        if not step > 0:
            raise InputError("TrendDetector needs a window grid of at least two points")
        # every window is analysed alone: blocks of windows keep the working arrays (pairwise
        # slopes, R x 435 at the fast path's 30 points) small enough to stay in the cache
        n = len(batch)
        restarts = batch.restarts_of_memory()
        parts = [self._analyse_block(batch.values[s:s + ANALYSIS_BLOCK],
                                     batch.limits[s:s + ANALYSIS_BLOCK], step,
                                     restarts[s:s + ANALYSIS_BLOCK])
                 for s in range(0, max(n, 1), ANALYSIS_BLOCK)]
        an = parts[0] if len(parts) == 1 else _concat(parts)
        self._cache = (batch, an)
        return an

    def _analyse_block(self, values: np.ndarray, limits: np.ndarray, step: float,
                       restarts: np.ndarray) -> Analysis:
        """:meth:`_analyse` of windows' ``values`` (n, channels, L), ``limits`` (n, channels)."""
        v3, vinc3, lim3 = self._inputs(values, limits, step, restarts)
        n, nc, L = v3.shape
        v_all = v3.reshape(n * nc, L)
        vinc_all = vinc3.reshape(n * nc, L)
        lim_all = lim3.reshape(n * nc)
        fin = np.isfinite(v_all)
        active = np.flatnonzero(fin.any(axis=-1))
        v, lim = v_all[active], lim_all[active]
        R = active.size
        best: _ViewStats | None = None
        span = np.full(R, np.nan)
        cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        n_views = 0
        # the views the window is long enough for, computed together by number of blocks
        by_nb: dict[int, list[int]] = {}
        for idx, (block_s, nb) in enumerate(self.views):
            if R and nb * max(1, round(block_s / step)) <= L:
                by_nb.setdefault(nb, []).append(idx)
        stats: dict[int, _ViewStats] = {}
        for idxs in by_nb.values():
            group = self._views(v, lim, step, [self.views[i] for i in idxs], cache)
            stats.update(zip(idxs, group, strict=True))
        computed = [(stats[i], nb * max(1, round(block_s / step)) * step)
                    for i, (block_s, nb) in enumerate(self.views) if i in stats]
        # a short view cannot see a slow warm-up level off: the longest view that can judge
        # the row says whether its growth slows down, and every view's projection uses that
        q_long = np.ones(R)
        half_long = np.ones(R)
        for st, _span in computed:  # views are ordered by span: the last valid one wins
            q_long = np.where(st.valid, st.q, q_long)
            half_long = np.where(st.valid, st.half_s, half_long)
        for st, view_span in computed:
            with np.errstate(invalid="ignore", divide="ignore"):
                tto_long = projected_tto(st.room, st.rate, np.minimum(q_long, 1.0), half_long)
                tto_eff = np.fmax(st.tto, np.where(q_long < LINEAR_Q, tto_long, st.tto))
                u = np.where(np.isfinite(tto_eff) & (tto_eff > 0), 3600.0 / tto_eff, 0.0)
                has_lim = np.isfinite(st.limit) & (st.limit > 0)
                slope = np.where(has_lim, np.minimum(st.slope, u * st.headroom), st.slope)
            slope = np.where(np.isfinite(slope), slope, 0.0)
            # evidence: growth seen over a short view is weaker evidence of a leak than the
            # same growth sustained for hours (a batch window's ramp, a load step); fast
            # leaks are the fast path's, which has its own threshold
            mono = st.mono * min(1.0, view_span / EVIDENCE_SPAN_S)
            st = _ViewStats(self._combine(slope, st.headroom, mono), slope, st.headroom,
                            mono, st.rate, st.limit, st.room, tto_eff, st.q, st.half_s,
                            st.valid)
            n_views += 1
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
        # not enough history to judge on the slow path
        first = np.argmax(fin[active], axis=-1)
        young = (L - first) * step < self.min_span_s
        slow = self._blank(n * nc, lim_all)
        if best is not None:
            for f_full, f_best in zip(_fields(slow), _fields(best), strict=True):
                f_full[active] = f_best
            slow.score[active[young]] = 0.0
            slow.mono[active[young]] = 0.0
        span_full = np.full(n * nc, np.nan)
        span_full[active] = span
        # the fast path: the current incarnation from its first minutes
        fast = self._blank(n * nc, lim_all)
        fast_span = np.full(n * nc, np.nan)
        fin_all = np.isfinite(vinc_all)
        has_inc = fin_all.any(axis=-1)
        act_inc = np.flatnonzero(has_inc)
        inc = _Coarse(vinc_all[act_inc])
        if act_inc.size:
            fs, fspan = self._fast(inc, lim_all[act_inc], step)
            for f_full, f_fast in zip(_fields(fast), _fields(fs), strict=True):
                f_full[act_inc] = f_fast
            fast_span[act_inc] = fspan
        # the imminent path: incarnations younger than the fast path's minimum
        imminent = self._blank(n * nc, lim_all)
        imminent_span = np.full(n * nc, np.nan)
        inc_age = np.where(has_inc, (L - np.argmax(fin_all, axis=-1)) * step, np.inf)
        young_inc = np.flatnonzero(inc_age < self.fast_min_s)
        if young_inc.size:
            # young incarnations are among those the fast path judged: reuse its drawdowns
            pos = np.searchsorted(act_inc, young_inc)
            im = self._imminent(inc.rows(pos), lim_all[young_inc], step)
            for f_full, f_imm in zip(_fields(imminent), _fields(im), strict=True):
                f_full[young_inc] = f_imm
            imminent_span[young_inc] = inc_age[young_inc]

        def shaped(st: _ViewStats) -> _ViewStats:
            return _ViewStats(*(a.reshape(n, nc) for a in _fields(st)))

        an = Analysis(slow=shaped(slow), slow_span=span_full.reshape(n, nc),
                      fast=shaped(fast), fast_span=fast_span.reshape(n, nc),
                      imminent=shaped(imminent),
                      imminent_span=imminent_span.reshape(n, nc))
        return an

    def forget_analysis(self) -> None:
        """Drops the cached analysis of the last batch (it is recomputed on the next call)."""
        self._cache = None

    @staticmethod
    def _blank(size: int, lim: np.ndarray) -> _ViewStats:
        nan = np.full(size, np.nan)
        inf = np.full(size, np.inf)
        return _ViewStats(score=np.zeros(size), slope=np.zeros(size), headroom=np.ones(size),
                          mono=np.zeros(size), rate=nan, limit=lim.copy(), room=nan.copy(),
                          tto=inf, q=np.ones(size), half_s=np.ones(size),
                          valid=np.zeros(size, dtype=bool))

    def _imminent_scale(self) -> float:
        """Imminent-path scores in units of the fast path's threshold; 0 (the path is off)
        until both are fitted."""
        if self.fast_threshold_ and self.imminent_threshold_ and self.imminent_threshold_ > 0:
            return float(self.fast_threshold_) / float(self.imminent_threshold_)
        return 0.0

    def _fast_scale(self) -> float:
        """Fast-path scores in units of the slow path's threshold (1 before both are fitted)."""
        if self.threshold_ and self.fast_threshold_ and self.fast_threshold_ > 0:
            return float(self.threshold_) / float(self.fast_threshold_)
        return 1.0

    def _combined(self, an: Analysis) -> tuple[_ViewStats, np.ndarray, np.ndarray]:
        """Per window and channel the path that scores higher (fast scores scaled to the slow
        threshold): its stats, the span of data it judged, and whether it was the fast one."""
        k = self._fast_scale()
        fast, fast_span = an.fast, an.fast_span
        k_imm = self._imminent_scale()
        if k_imm > 0 and an.imminent.score.any():
            # a young incarnation's imminent OOM, in the fast path's units
            imm = an.imminent.score * k_imm
            use_imm = imm > fast.score
            fast = _ViewStats(*(np.where(use_imm, a, b) for a, b in zip(
                _fields(an.imminent), _fields(fast), strict=True)))
            fast = _ViewStats(np.where(use_imm, imm, fast.score), fast.slope, fast.headroom,
                              np.where(use_imm, an.imminent.mono * k_imm, fast.mono),
                              *_fields(fast)[4:])
            fast_span = np.where(use_imm, an.imminent_span, fast_span)
        fast_score = fast.score * k
        use_fast = fast_score > an.slow.score
        st = _ViewStats(*(np.where(use_fast, f, s_) for f, s_ in zip(
            _fields(fast), _fields(an.slow), strict=True)))
        st = _ViewStats(np.where(use_fast, fast_score, an.slow.score), st.slope, st.headroom,
                        np.where(use_fast, fast.mono * k, an.slow.mono), *_fields(st)[4:])
        return st, np.where(use_fast, fast_span, an.slow_span), use_fast

    # ------------------------------------------------------------------ the contract

    def score(self, batch: WindowBatch) -> np.ndarray:
        """(n,) leak score, higher = more anomalous; 0 = no sustained growth. The fast path's
        score is scaled so that the slow path's threshold applies to both."""
        if len(batch) == 0:
            return np.zeros(0)
        st, _, _ = self._combined(self._analyse(batch))
        return st.score.max(axis=1)

    def path_scores(self, batch: WindowBatch) -> tuple[np.ndarray, np.ndarray]:
        """(n,) raw scores of the slow and of the fast path (each against its own threshold)."""
        if len(batch) == 0:
            return np.zeros(0), np.zeros(0)
        an = self._analyse(batch)
        return an.slow.score.max(axis=1), an.fast.score.max(axis=1)

    def imminent_scores(self, batch: WindowBatch) -> np.ndarray:
        """(n,) raw scores of the imminent path (against its own threshold); NaN for windows
        it does not judge (every memory incarnation has ``fast_min_s`` of data or more)."""
        if len(batch) == 0:
            return np.zeros(0)
        an = self._analyse(batch)
        judged = np.isfinite(an.imminent_span).any(axis=1)
        return np.where(judged, an.imminent.score.max(axis=1), np.nan)

    def fit(self, batch: WindowBatch, fpr: float | None = None) -> TrendDetector:
        """Records the healthy score distribution and the explanation's healthy reference;
        with ``fpr`` also infers both thresholds."""
        slow, _fast = self.path_scores(batch)
        fin = slow[np.isfinite(slow)]
        if fin.size == 0:
            raise InputError("TrendDetector.fit needs at least one window")
        self.healthy_quantiles_ = [
            float(x) for x in np.quantile(fin, [0.5, 0.9, 0.99, 0.999, 1.0])
        ]
        self.fitted_ = True
        if fpr is not None:
            self.infer_threshold(batch, fpr)
        else:
            self._fit_background(batch)
        return self

    def infer_threshold(self, batch: WindowBatch, fpr: float) -> float:
        """Fits both paths' thresholds as the healthy score quantile ``1 - fpr`` (each with
        a floor, so a path that never fires on healthy data is not set off by noise) and
        returns the slow path's."""
        slow, fast = self.path_scores(batch)
        self.threshold_ = max(threshold_at_fpr(slow, fpr), MIN_THRESHOLD)
        self.fast_threshold_ = max(threshold_at_fpr(fast, fpr), MIN_THRESHOLD)
        if not self.fitted_:
            self.fitted_ = True
            self.healthy_quantiles_ = [
                float(x) for x in np.quantile(slow, [0.5, 0.9, 0.99, 0.999, 1.0])
            ]
        self._fit_background(batch)  # in the units of the thresholds just fitted
        return self.threshold_

    def thresholds_from_scores(self, slow: np.ndarray, fast: np.ndarray, fpr: float,
                               background: WindowBatch | None = None) -> float:
        """Sets both thresholds from healthy scores of each path (e.g. as the decision sees
        them, :func:`leak_decision_scores`) and returns the slow one."""
        self.threshold_ = max(threshold_at_fpr(np.asarray(slow), fpr), MIN_THRESHOLD)
        self.fast_threshold_ = max(threshold_at_fpr(np.asarray(fast), fpr), MIN_THRESHOLD)
        self.fitted_ = True
        self.forget_analysis()
        if background is not None:
            self.forget_analysis()
            self._fit_background(background)
        return self.threshold_

    def imminent_threshold_from_scores(self, imminent: np.ndarray, fpr: float) -> float | None:
        """Sets the imminent path's threshold from healthy scores of young incarnations (as
        the decision sees them, at the grid the daemon runs: the path needs at least 6 points
        in ``imminent_min_s``..``fast_min_s``, a grid of 20 s or finer). Without any such
        window the path stays off (``None``): a threshold that no healthy data set is none."""
        sc = np.asarray(imminent, dtype=np.float64)
        judged = sc[np.isfinite(sc)]
        if judged.size == 0:
            self.imminent_threshold_ = None
        else:
            self.imminent_threshold_ = max(threshold_at_fpr(judged, fpr), MIN_THRESHOLD)
        self.forget_analysis()
        return self.imminent_threshold_

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
                              np.zeros((0, len(MEMORY_CHANNELS))), view_s=e,
                              fast=np.zeros(0, dtype=bool))
        an = self._analyse(batch)
        st, span, use_fast = self._combined(an)
        best = np.argmax(st.score, axis=1)
        # the kubelet and the OOM killer act on the working set: prefer it to RSS when both grow
        ws, rss = MEMORY_CHANNELS.index("mem_working_set"), MEMORY_CHANNELS.index("mem_rss")
        rows = np.arange(n)
        best = np.where((best == rss) & (st.score[:, ws] >= 0.5 * st.score[:, rss]), ws, best)
        any_growth = st.score[rows, best] > 0
        names = np.array(MEMORY_CHANNELS, dtype=object)
        channel = np.where(any_growth, names[best], "")
        lim = st.limit[rows, best]

        def known(t: np.ndarray) -> np.ndarray:
            return np.where(np.isfinite(lim) & (lim > 0), t, np.nan)

        rate, tto = st.rate[rows, best], st.tto[rows, best]
        young = np.flatnonzero(use_fast[rows, best] & any_growth & np.isfinite(lim) & (lim > 0))
        if young.size:
            rate, tto = rate.copy(), tto.copy()
            rate[young], tto[young] = self._pace_now(
                batch, young, best[young], rate[young], tto[young], st.q[young, best[young]],
                span[young, best[young]])
        # where the fast path won but the slow path's hours of growth flag the leak too, the
        # earlier of their OOMs is stated: a recent half-hour's pace on a slow, noisy leak
        # can run 2x long
        slow_tto = an.slow.tto[rows, best]
        both = (use_fast[rows, best] & (self.threshold_ is not None)
                & (an.slow.score[rows, best] > (self.threshold_ or np.inf))
                & (slow_tto < tto))
        if both.any():
            rate = np.where(both, an.slow.rate[rows, best], rate)
            tto = np.where(both, slow_tto, tto)
        return LeakReport(
            channel=channel,
            rate_bytes_per_s=rate,
            time_to_oom_s=known(tto),
            time_to_oom_low_s=known(tto * TTO_BAND[0]),
            time_to_oom_high_s=known(tto * TTO_BAND[1]),
            limit_bytes=lim,
            headroom_bytes=st.room[rows, best],
            channel_scores=st.score,
            view_s=span[rows, best],
            fast=use_fast[rows, best],
        )

    def _pace_now(self, batch: WindowBatch, idx: np.ndarray, ch: np.ndarray, rate: np.ndarray,
                  tto: np.ndarray, q: np.ndarray, span_s: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The stated leak rate and time to OOM of windows ``idx`` that the fast path judged
        on channel ``ch`` (their score's ``rate``, ``tto``, growth ratio ``q`` and judged
        ``span_s`` given), as true now:

        - the level is the usage of the last three points of the grid (the fast path's
          coarse grids take block minima, a block behind a steep leak);
        - the rate of a span that accelerates (a leak that began inside it) is that of its
          most recent linear stretch, where faster (:func:`recent_linear_rate`);
        - working-set growth that is all anonymous memory (the RSS grows at least
          :data:`ANON_RATE_SHARE` as fast) while the rest of the working set is page cache
          (working set - RSS within ``container_memory_cache``) is killed when the RSS fills
          the limit: the kernel reclaims those file pages first (a real PyTorch trainer's
          working set held 140 MiB of them over its RSS at the first alarm, 6 MiB at the
          kill). Without the cache series (generated traces) the working set's own figures
          stand; a leak into tmpfs or shared memory, cache to the kernel but not reclaimable,
          is the blind spot.

        Growth that slows down keeps its geometric projection (only its level is the
        score's)."""
        step = batch.step_s
        _v, vinc, lim3 = self._inputs(batch.values[idx], batch.limits[idx], step,
                                      batch.restarts_of_memory()[idx])
        ws, rss = MEMORY_CHANNELS.index("mem_working_set"), MEMORY_CHANNELS.index("mem_rss")
        n, L = len(idx), vinc.shape[-1]
        at = np.arange(n)
        lim = lim3[at, ch].astype(np.float64)
        cache_all = batch.values[idx, CHANNELS.index("mem_cache"), :].astype(np.float64)
        cache = np.where(np.isfinite(vinc[:, ws, :]), cache_all, np.nan)
        with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
            peak = np.nanmax(vinc[:, :, L - 3:], axis=-1).astype(np.float64)  # (n, 3)
            cache_now = np.nanmax(cache[:, L - 3:], axis=-1)
        pts = np.clip(np.round(np.nan_to_num(span_s, nan=0.0) / step).astype(np.int64),
                      min(FAST_POINTS, L), L)
        nch = vinc.shape[1]
        est = np.full((n, nch), np.nan)  # the pace now of each memory channel
        accel = np.zeros((n, nch), dtype=bool)
        for p in np.unique(pts).tolist():
            sel = np.flatnonzero(pts == p)
            m, k = _blocks(p)
            # every memory channel's rows in one call (every statistic is per row); the
            # judged channel's own pace, and the working set's and RSS's for anonymous growth
            y = destep(_Coarse(vinc[sel].reshape(-1, L)).mins(k)[:, -m:])
            rate_p, accel_p = recent_linear_rate(y, step * k)
            est[sel], accel[sel] = rate_p.reshape(-1, nch), accel_p.reshape(-1, nch)
        with np.errstate(invalid="ignore", divide="ignore"):
            now = np.where(accel[at, ch], np.fmax(rate, est[at, ch]), rate)
            room = lim - peak[at, ch]
            out_tto = np.where(q < LINEAR_Q, tto, np.where(now > 0, room / now, np.inf))
            # anonymous growth under reclaimable page cache: the RSS's time to fill the limit
            rss_now = est[:, rss]
            anon = ((ch == ws) & (q >= LINEAR_Q) & (rss_now > 0)
                    & (rss_now >= ANON_RATE_SHARE * est[:, ws])
                    & (peak[:, ws] - peak[:, rss] <= cache_now) & (cache_now > 0))
            anon_tto = (lim - peak[:, rss]) / rss_now
        out_rate = np.where(anon, rss_now, now)
        out_tto = np.where(anon & np.isfinite(anon_tto), np.maximum(anon_tto, 0.0), out_tto)
        return out_rate, out_tto

    # ------------------------------------------------------------------ explanation

    def explain_features(self, batch: WindowBatch) -> tuple[np.ndarray, tuple[str, ...]]:
        """The (n, 9) inputs of the score, named :data:`EXPLAIN_NAMES`.

        ``<ch>.slope``: growth, fraction of the limit per hour (of the current level when
        no limit is known; on the fast path the headroom-filling pace of the projection);
        ``<ch>.headroom``: free fraction of the limit; ``<ch>.monotonicity``: how leak-like
        the growth is (>= 0; the fast path's is scaled to the slow threshold).
        :meth:`score_from_explain_features` maps them back to the score exactly.
        """
        if len(batch) == 0:
            return np.zeros((0, len(EXPLAIN_NAMES))), EXPLAIN_NAMES
        st, _, _ = self._combined(self._analyse(batch))
        cols = []
        for c in range(len(MEMORY_CHANNELS)):
            cols += [st.slope[:, c], st.headroom[:, c], st.mono[:, c]]
        return np.stack(cols, axis=1), EXPLAIN_NAMES

    def explain(self, batch: WindowBatch, rows: Sequence[int] | None = None
                ) -> list[Attribution]:
        """Why each window got its score (the contract's ``explain``): exact Shapley values
        over :meth:`explain_features` against :meth:`explain_background`; each sums to
        ``score - base_value``. ``rows``: only those windows of ``batch`` (in that order),
        still from the batch's one analysis (the pipeline explains its flagged windows so).
        Like :meth:`score` it needs no fit: before one, the background is a window of no
        growth and full headroom."""
        inputs, names = self.explain_features(batch)
        if rows is not None:
            inputs = inputs[np.asarray(rows, dtype=np.intp)]
        if len(inputs) == 0:
            return []
        return exact_shapley_rows(self.score_from_explain_features, inputs,
                                  self.explain_background(names), names,
                                  coalition_fn=(self.coalition_scores if names == EXPLAIN_NAMES
                                                else None))

    def score_from_explain_features(self, X: np.ndarray) -> np.ndarray:
        """The score of rows of :meth:`explain_features` output: (m, 9) -> (m,)."""
        A = np.asarray(X, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != len(EXPLAIN_NAMES):
            raise InputError(f"expected (m, {len(EXPLAIN_NAMES)}) inputs, got {A.shape}")
        A = A.reshape(A.shape[0], len(MEMORY_CHANNELS), len(EXPLAIN_STATS))
        s = self._combine(A[..., 0], A[..., 1], A[..., 2])
        return s.max(axis=1)

    def coalition_scores(self, X: np.ndarray, background: np.ndarray, bits: np.ndarray
                         ) -> np.ndarray:
        """:meth:`score_from_explain_features` of every coalition row of exact Shapley values
        (``bits`` (2^9, 9): the inputs taken from the row of ``X`` (r, 9), the others from a
        ``background`` row (b, 9)) -> (r, 2^9, b), with the same values: the score is a max
        over channels of a function of each channel's three inputs, so each channel's 8
        combinations are computed once and gathered."""
        A = np.asarray(X, dtype=np.float64)
        B = np.atleast_2d(np.asarray(background, dtype=np.float64))
        nc, ns = len(MEMORY_CHANNELS), len(EXPLAIN_STATS)
        if A.ndim != 2 or A.shape[1] != nc * ns or B.shape[1] != nc * ns:
            raise InputError(f"expected (m, {nc * ns}) inputs, got {A.shape} and {B.shape}")
        bits = np.asarray(bits, dtype=bool)
        combos = np.arange(1 << ns)
        take = ((combos[:, None] >> np.arange(ns)[None, :]) & 1).astype(bool)  # (8, 3)
        out: np.ndarray | None = None
        for c in range(nc):
            a = A[:, c * ns:(c + 1) * ns]  # (r, 3)
            bb = B[:, c * ns:(c + 1) * ns]  # (b, 3)
            x = np.where(take[None, :, None, :], a[:, None, None, :], bb[None, None, :, :])
            t = self._combine(x[..., 0], x[..., 1], x[..., 2])  # (r, 8, b)
            idx = (bits[:, c * ns:(c + 1) * ns] * (1 << np.arange(ns))[None, :]).sum(axis=1)
            g = t[:, idx, :]  # (r, 2^9, b)
            out = g if out is None else np.maximum(out, g)
        assert out is not None
        return out

    def explain_background(self, names: tuple[str, ...] = EXPLAIN_NAMES) -> np.ndarray:
        """Reference inputs for Shapley values: the most leak-like healthy windows seen at fit
        time (so attributions say what sets this window apart from healthy growth, and the
        slope and monotonicity of a channel are not tied by construction); a channel those
        windows never grew on (RSS or GPU memory, when the working set led) is referenced as
        steady as the working set's healthy growth, but flat (:func:`_borrow_healthy_growth`).
        Before fitting, one row of no growth and full headroom (score 0)."""
        if self.explain_background_:
            bg = _borrow_healthy_growth(np.asarray(self.explain_background_, dtype=np.float64))
            idx = [EXPLAIN_NAMES.index(n) for n in names]
            return bg[:, idx]
        ref = {"slope": 0.0, "headroom": 1.0, "monotonicity": 0.0}
        return np.array([[ref[n.rsplit(".", 1)[1]] for n in names]], dtype=np.float64)

    def _fit_background(self, batch: WindowBatch, k: int = 8) -> None:
        """The explanations' background: the ``k`` most leak-like distinct healthy windows
        of ``batch`` scored at most the threshold (attributions then say what sets a flagged
        window apart from healthy growth the detector lets pass; the few healthy windows
        above it, by the false-alarm rate, would make a leak's base value a leak's)."""
        X, _ = self.explain_features(batch)
        s = self.score_from_explain_features(X)
        if self.threshold_ is not None:
            keep_rows = ~(s > self.threshold_)
            X, s = X[keep_rows], s[keep_rows]
        order = np.argsort(-s, kind="stable")
        rows = np.unique(np.round(X[order[: 4 * k]], 6), axis=0)
        rs = self.score_from_explain_features(rows)
        if self.threshold_ is not None and (rs <= self.threshold_).any():
            # rounding can lift a row at the threshold just over it
            rows, rs = rows[rs <= self.threshold_], rs[rs <= self.threshold_]
        keep = rows[np.argsort(-rs, kind="stable")[:k]]
        self.explain_background_ = [[float(x) for x in r] for r in keep]

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        """Plain JSON-able state: configuration, fitted threshold and healthy quantiles; its
        keys are the fields of :class:`~detector.models.state.TrendState` (declared there
        only): ``name``, ``version``, each constructor parameter, and each fitted attribute
        (``<key>_``)."""
        state: dict[str, Any] = {"name": self.name, "version": STATE_VERSION}
        state.update({k: _plain(getattr(self, k)) for k in _CONFIG_KEYS})
        state.update({k: _plain(getattr(self, f"{k}_")) for k in _FITTED_KEYS})
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrendDetector:
        """Rebuilds a detector from :meth:`get_state`, checked by
        :class:`~detector.models.state.TrendState` (a new key is a field there, plus the
        constructor parameter or fitted attribute it names); a version-2 state loads with
        the imminent path off (the constructor's defaults)."""
        st = read_state(TrendState, state, "trend state",
                        context={"explain_width": len(EXPLAIN_NAMES)})
        config = {k: getattr(st, k) for k in _CONFIG_KEYS if getattr(st, k) is not None}
        config["views"] = tuple(config["views"])
        try:
            det = cls(**config)
        except (TypeError, ValueError, InputError) as e:
            raise ModelIntegrityError(f"trend state is invalid: {e}") from e
        for k in _FITTED_KEYS:
            setattr(det, f"{k}_", _plain(getattr(st, k)))
        return det


def _plain(value: Any) -> Any:
    """``value`` as plain JSON-able data: tuples and lists as (new) lists, recursively."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _state_keys() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(constructor keys, fitted keys) of the trend state, from :class:`TrendState`'s fields:
    a field that is a constructor parameter is configuration, any other (but ``name`` and
    ``version``) a fitted attribute ``<key>_``. Every constructor parameter must be a field."""
    fields = [k for k in TrendState.model_fields if k not in ("name", "version")]
    params = [k for k in inspect.signature(TrendDetector.__init__).parameters if k != "self"]
    missing = [k for k in params if k not in fields]
    if missing:  # pragma: no cover - a broken schema fails at import, in every test
        raise TypeError(f"TrendState lacks the constructor parameters {missing}")
    return tuple(params), tuple(k for k in fields if k not in params)


_CONFIG_KEYS, _FITTED_KEYS = _state_keys()


def page_cache_growth(batch: WindowBatch, report: LeakReport) -> np.ndarray:
    """(n,) bool: the working-set growth that a window's leak report judges is page cache, not
    a leak, by the memory breakdown real nodes export (``container_memory_rss``,
    ``container_memory_cache``).

    The working set counts the page cache's active file pages: a pod that re-reads files
    under a tight limit sees its working set ramp while its RSS (anonymous memory) stays
    flat - reclaimable memory the kernel never OOM-kills for (seen on a real kernel: the
    page-cache reader of ``data/real``, working set 19 -> 39 MiB, RSS 8 MiB, cache 248 MiB).
    True where the report's channel is the working set and, over the span it judged
    (``view_s``, the last quarter against the first), the RSS grew by at most
    :data:`PAGE_CACHE_RSS_SHARE` of the working set's growth while the non-anonymous part of
    the working set (working set - RSS) stays within the page cache. False wherever the
    breakdown is missing (generated traces, exporters without it): the decision is then the
    trend's alone. A leak of anonymous memory (tensors, Python objects) grows the RSS with
    the working set and is never excused; a leak into tmpfs or shared memory is counted as
    cache by the kernel and would be (cAdvisor does not export shmem apart)."""
    n = len(batch)
    out = np.zeros(n, dtype=bool)
    if n == 0 or report.view_s is None:
        return out
    view = np.asarray(report.view_s, dtype=np.float64)
    rows = np.flatnonzero((np.asarray(report.channel) == "mem_working_set") & np.isfinite(view))
    if rows.size == 0:
        return out
    ix = [CHANNELS.index(c) for c in ("mem_working_set", "mem_rss", "mem_cache")]
    vals = batch.values[rows][:, ix, :].astype(np.float64)
    if not np.isfinite(vals[:, 2, :]).any():
        return out
    L = vals.shape[-1]
    k = np.clip(np.round(view[rows] / batch.step_s).astype(np.int64), 4, L)
    for kk in np.unique(k).tolist():
        sel = np.flatnonzero(k == kk)
        seg = vals[sel][:, :, L - kk:]
        q = max(1, kk // 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN quarters: no verdict
            early = nanmedian_last(seg[..., :q])
            late = nanmedian_last(seg[..., -q:])
        grow_ws = late[:, 0] - early[:, 0]
        grow_rss = late[:, 1] - early[:, 1]
        file_part = late[:, 0] - late[:, 1]
        with np.errstate(invalid="ignore"):
            cached = (np.isfinite(grow_rss) & (grow_ws > 0)
                      & (grow_rss <= PAGE_CACHE_RSS_SHARE * grow_ws)
                      & (file_part <= late[:, 2]) & (late[:, 2] > 0))
        out[rows[sel]] = cached
    return out


# ------------------------------------------------------------------ the scores the decision acts on


def leak_decision_scores(trend: TrendDetector, healthy: WindowBatch, *,
                         horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The slow and fast leak paths' scores on healthy windows as the decision sees them
    (:func:`decision_scores`)."""
    slow, fast, _imminent = decision_scores(trend, healthy, horizon_s=horizon_s)
    return slow, fast


def decision_scores(trend: TrendDetector, healthy: WindowBatch, *, horizon_s: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three leak paths' scores on healthy windows as the decision sees them: replayed in
    time order through a fresh :class:`LevelHistory`, with 0 where a verdict could not be a
    leak anyway (stale, projected OOM beyond ``horizon_s``, a return to a level already held);
    the imminent path's NaN where it does not judge (no incarnation younger than the fast
    path's minimum). Thresholds fitted on these give the target false-alarm rate of the
    verdicts themselves."""
    slow_all = np.zeros(len(healthy))
    fast_all = np.zeros(len(healthy))
    imm_all = np.full(len(healthy), np.nan)
    if len(healthy) == 0:
        return slow_all, fast_all, imm_all
    history = LevelHistory()
    order = np.argsort(healthy.ts, kind="stable")
    ts_sorted = healthy.ts[order]
    cuts = np.flatnonzero(np.diff(ts_sorted)) + 1
    for idx in np.split(order, cuts):
        sub = healthy.subset(idx)
        slots = history.update(sub)
        rep = trend.leak_report(sub)
        slow, fast = trend.path_scores(sub)
        imm = trend.imminent_scores(sub)
        tto = np.asarray(rep.time_to_oom_s, dtype=np.float64)
        # the horizon only, not the decision's young reach (beyond_reach): thresholds fitted
        # with every young pod's far projection at 0 would sink and page the older pods
        far = ~(tto <= horizon_s) & ~np.isnan(tto)
        revisit = (history.revisits(sub, slots, rep.channel, rep.view_s, rep.limit_bytes)
                   | page_cache_growth(sub, rep))
        ok = ~np.asarray(sub.stale, dtype=bool) & ~far & ~revisit
        slow_all[idx] = np.where(ok, slow, 0.0)
        fast_all[idx] = np.where(ok, fast, 0.0)
        # the imminent path gates its own projection (within imminent_horizon_s)
        live = ~np.asarray(sub.stale, dtype=bool) & ~revisit
        imm_all[idx] = np.where(live | np.isnan(imm), imm, 0.0)
    return slow_all, fast_all, imm_all


# ------------------------------------------------------------------ registration (models.registry)

TREND_JSON = "trend.json"


def _encode(trend: TrendDetector) -> dict[str, bytes]:
    try:
        text = json.dumps(trend.get_state(), indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the trend detector's state is not strict JSON: {exc}") from exc
    return {TREND_JSON: text.encode()}


def _read_member(contents: Mapping[str, bytes], card: Mapping[str, Any]) -> TrendDetector:
    state = json_file(contents, TREND_JSON)
    if not isinstance(state, dict):
        raise ModelIntegrityError(f"{TREND_JSON} must hold a JSON object")
    return TrendDetector.from_state(state)


def _fit(ctx: FitContext) -> Fitted:
    """Healthy quantiles from the fitting pods; thresholds as fitted state on every healthy
    window (few parameters; the held-back part alone is too small for a 1e-4 tail), then
    refitted on the scores the decision acts on (:func:`decision_scores`: stale windows,
    projections beyond the leak horizon and returns to a level already held never page);
    the imminent path's on ``ctx.young`` (without it the path stays off)."""
    det, t0 = ctx.detection, time.perf_counter()
    trend = TrendDetector().fit(ctx.fit)
    trend.infer_threshold(ctx.healthy, det.leak_fpr)
    slow, fast = leak_decision_scores(trend, ctx.healthy, horizon_s=det.leak_horizon_s)
    threshold = trend.thresholds_from_scores(slow, fast, det.leak_fpr, background=ctx.healthy)
    n_young = 0
    if ctx.young is not None and len(ctx.young):
        _s, _f, imm = decision_scores(trend, ctx.young, horizon_s=det.leak_horizon_s)
        judged = imm[np.isfinite(imm)]
        n_young = int(judged.size)
        trend.imminent_threshold_from_scores(judged, det.leak_fpr)
    fit_s = round(time.perf_counter() - t0, 2)
    # the held-back windows the drift ensemble is judged on too (pods old enough)
    hold = ctx.holdout.subset(np.flatnonzero(pod_age_s(ctx.holdout) >= NEW_POD_S))
    return Fitted(trend, {
        "trend_threshold": threshold, "trend_fast_threshold": trend.fast_threshold_,
        "trend_imminent_threshold": trend.imminent_threshold_, "windows_young": n_young,
        "trend_fit_s": fit_s,
        "holdout_false_alarm_rate": {"trend": float(np.mean(trend.predict(hold).is_anomaly))},
    })


# ------------------------------------------------------- the pipeline's decision (models.registry)


YOUNG_REACH = 3.0
"""A projected OOM further ahead than this many times the container incarnation's age (and
than :data:`YOUNG_REACH_FLOOR_S`) is not paged yet: a few hours of a young pod's growth say
little about the next day (the first rising half of a multi-hour load cycle is such a growth;
so is a warm-up that has not levelled yet), while a leak that OOMs soon is within reach at
any age (a pod 1 h old is judged up to 4 h ahead, one 3 h old up to 9 h)."""

YOUNG_REACH_FLOOR_S = 4 * 3600.0
"""Projections up to this far ahead are judged at any incarnation age (fast and early leaks,
crash loops)."""


YOUNG_START_REACH = 4.0
"""In its first hour an incarnation's projection is judged only up to this many times its
age (under :data:`YOUNG_REACH_FLOOR_S`): linear growth seen for 9 min says little of the
next hour (the first tooth of a GC sawtooth, a warm-up not yet levelling), while a leak that
OOMs 30 min after its start is within reach from its 6th minute. Train split, seeds 4321 and
77 (8 pods per shape, 48 h), with the fast path judging from 35 % of the limit: false-alarm
episodes 3 -> 2 (two first teeth and a warm-up at 9-18 min, projected 5-6x their age ahead),
warning time captured 0.761/0.761 -> 0.768/0.763."""


def beyond_reach(tto: np.ndarray, age_s: np.ndarray, horizon_s: float) -> np.ndarray:
    """(n,) bool: a projected time to OOM the decision does not page (yet): beyond the leak
    horizon, or further ahead than :data:`YOUNG_REACH` times the incarnation's age (at least
    :data:`YOUNG_REACH_FLOOR_S`, or :data:`YOUNG_START_REACH` times the age where that is
    less). False where there is no projection (NaN)."""
    age = np.asarray(age_s, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reach = np.minimum(horizon_s, np.fmax(YOUNG_REACH * age, np.fmin(
            YOUNG_REACH_FLOOR_S, YOUNG_START_REACH * age)))
        return ~(tto <= reach) & ~np.isnan(tto)


LATCH_FRACTION = 0.5
"""A raised leak stays raised while its score is above this fraction of the threshold (a
leak riding on a load cycle dips under it in every falling half; no resolve and re-fire)."""


LATCH_HORIZON = 2.0
"""A raised leak stays raised while its projected time to OOM is within this many times
``detection.leak_horizon_s`` (it is raised only within the horizon). Without it a slow
growth whose best channel switched between the working set (OOM in 17 h) and the RSS (25 h,
beyond the 24 h horizon) resolved and fired again four times in an hour."""


ENVELOPE_HORIZON_S = 6 * 3600.0
"""A leak read from the working set's lower envelope alone
(:meth:`~detector.models.history.LevelHistory.envelope_leak`) is paged only when its OOM is
projected this close (its span-long evidence is coarser than the trend views'; a multi-hour
load cycle's first rising half projects further)."""

CRASHLOOP_KILLS = 2
"""OOM kills of a pod after which its next incarnations are warned from their start, until
one outlives the last killed one (a crash-looping leak: the kernel kills each incarnation
at about the same age; the verdict names the kills so far). After one kill, an incarnation
is warned as soon as its growth tracks the killed life's
(:meth:`~detector.models.history.LevelHistory.tracks_killed_life`): a one-off OOM followed
by a healthy life is not warned on the kill alone."""


NEAR_LEAK_FRACTION = 0.25
"""A window whose memory grows towards its limit (projected OOM within the horizon, no
revisit) with a leak score above this fraction of its threshold is near a leak
(:attr:`LeakFindings.near_leak`: what the drift decider's rules read)."""


LEAK_KINDS = ("memory_leak", "gpu_memory_leak")

_SUBJECT = {c: channel_words(c) for c in LEAK_CHANNELS}


@dataclass
class _LeakState:
    latched: bool = False  # a raised leak stays raised while its score stays above half
    leak_since: float = math.nan  # estimated start of the growth now judged a leak
    incarnation: float = -math.inf  # start of the container incarnation those refer to


@dataclass(frozen=True)
class LeakFindings:
    """What the leak decider found in a batch, for later deciders (``Evidence.found``)."""

    kinds: np.ndarray
    """(n,) object: the leak kind of each window, by the channel that leaks."""
    near_leak: np.ndarray
    """(n,) bool: memory growing towards its limit (see :data:`NEAR_LEAK_FRACTION`)."""
    kills: np.ndarray
    """(n,) the pod's OOM kills so far."""
    not_yet: np.ndarray | None = None
    """(n,) bool: a projected OOM within the horizon but beyond the young incarnation's reach
    (:func:`beyond_reach`): not paged yet, as a leak nor as the drift it moves."""


@dataclass
class LeakDecider:
    """The pipeline's ``memory_leak`` / ``gpu_memory_leak`` decision (by the channel that
    leaks), with its time to OOM. A window is a leak when its score is above the threshold
    (lowered after each OOM kill, a crash loop judged with that evidence), its OOM is
    projected within ``detection.leak_horizon_s`` and its growth is no return to a level
    already held nor page cache (flat RSS); after :data:`CRASHLOOP_KILLS` kills a young
    incarnation is warned from its start. A raised leak latches (:data:`LATCH_FRACTION`,
    :data:`LATCH_HORIZON`) until its container incarnation ends. Young pods are judged too
    (an imminent OOM). Publishes :class:`LeakFindings` as ``evidence.found["trend"]``."""

    det: TrendDetector
    pods: dict[Hashable, _LeakState] = field(default_factory=dict)
    _near: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    _view: np.ndarray | None = None

    def judge(self, batch: WindowBatch, eligible: np.ndarray, evidence: Evidence, /
              ) -> Judged:
        trend, ev, horizon = self.det, evidence, evidence.settings.leak_horizon_s
        leak = trend.predict(batch)  # the trend analysis runs once per batch
        report = trend.leak_report(batch)
        tto_all = np.asarray(report.time_to_oom_s, dtype=np.float64)
        beyond_horizon = ~(tto_all <= horizon) & ~np.isnan(tto_all)
        age = ev.history.incarnation_age(ev.slots, batch.ts)
        far = beyond_reach(tto_all, age, horizon)
        # a crash loop: after each OOM kill the next incarnation is judged with that evidence
        kills = ev.history.oom_kills(ev.slots)
        leak_thr = leak.threshold / (1.0 + np.minimum(kills, 3))
        # a return to a level already held, or working-set growth that is page cache (flat
        # RSS; the file pages of a reader), is no leak
        revisit = (ev.history.revisits(batch, ev.slots, report.channel, report.view_s,
                                       report.limit_bytes)
                   | page_cache_growth(batch, report))
        leak_score = np.asarray(leak.score, dtype=np.float64)
        by_life = ev.history.time_to_oom_by_last_life(ev.slots, batch.ts)
        # a crash loop named as one: after CRASHLOOP_KILLS OOM kills, an incarnation younger
        # than the last killed one is warned from its start (its time to OOM: that life's);
        # after one kill, once its growth tracks the killed life's
        crash_loop = (((kills >= CRASHLOOP_KILLS) | ev.history.tracks_killed_life(batch, ev.slots))
                      & eligible & (np.nan_to_num(by_life, nan=0.0) > 0))
        # a leak riding on a load cycle longer than the views' blocks: its lower envelope
        below = ~(leak_score > leak_thr) & eligible  # the only rows the envelope can raise
        env_tto = ev.history.envelope_leak(batch, ev.slots, below)
        by_envelope = (below & (env_tto <= ENVELOPE_HORIZON_S)
                       & ~beyond_reach(env_tto, age, horizon))
        raw_leak = (((leak_score > leak_thr) & eligible & ~far & ~revisit) | crash_loop
                    | by_envelope)
        # raised on the kills alone (this life's growth not yet measured): those name them
        by_kills = crash_loop & ~(leak_score > leak_thr)
        # hysteresis: a raised leak stays raised while its OOM is projected within
        # LATCH_HORIZON times the horizon (the window's best channel can switch to one whose
        # projection lies just beyond it)
        near_enough = ~(tto_all > LATCH_HORIZON * horizon)
        held = (leak_score > LATCH_FRACTION * leak_thr) & eligible & near_enough
        near_leak = (leak_score > NEAR_LEAK_FRACTION * leak_thr) & ~beyond_horizon & ~revisit
        latched = np.zeros(len(batch), dtype=bool)
        for i, key in enumerate(batch.keys):
            st = self.pods.setdefault(key, _LeakState())
            if ev.incarnation[i] != st.incarnation:  # a new incarnation starts afresh
                st.incarnation, st.latched, st.leak_since = (float(ev.incarnation[i]), False,
                                                             math.nan)
            latched[i] = st.latched
        kinds = np.array(["gpu_memory_leak" if c == "gpu_fb_used" else "memory_leak"
                          for c in report.channel], dtype=object)
        ev.found["trend"] = LeakFindings(kinds, near_leak, kills, not_yet=far & ~beyond_horizon)
        self._near, self._view = near_leak, report.view_s
        # the time to OOM stated (facts and verdict fields alike): the report's, or, in a
        # crash loop whose life shows no measured growth yet, the last killed life's
        by_last = ~np.isfinite(tto_all) & (kills > 0) & np.isfinite(by_life)
        tto_s = np.where(by_last, by_life, np.where(by_envelope, env_tto, tto_all))
        lo_s = np.where(by_last, by_life * LIFE_BAND[0],
                        np.where(by_envelope, env_tto * TTO_BAND[0],
                                 np.asarray(report.time_to_oom_low_s, dtype=np.float64)))
        hi_s = np.where(by_last, by_life * LIFE_BAND[1],
                        np.where(by_envelope, env_tto * TTO_BAND[1],
                                 np.asarray(report.time_to_oom_high_s, dtype=np.float64)))

        def facts(i: int) -> tuple[str, dict[str, Any]]:
            # the kernel's kills are at the memory limit: a crash loop without a growing
            # channel yet is the working set's
            default = "working set" if kills[i] > 0 else "memory"
            out: dict[str, Any] = {"subject": _SUBJECT.get(str(report.channel[i]), default)}
            rate = float(report.rate_bytes_per_s[i])
            if math.isfinite(rate):
                out["growth_bytes_per_s"] = rate
            since = self.pods[batch.keys[i]].leak_since
            if math.isfinite(since):
                out["growth_duration_s"] = max(float(batch.ts[i]) - since, 0.0)
            if int(kills[i]) > 0:
                out["oom_kills"] = int(kills[i])
            tto = float(tto_s[i])
            if math.isfinite(tto):
                out["time_to_oom_s"] = tto
                lo, hi = float(lo_s[i]), float(hi_s[i])
                if math.isfinite(lo) and math.isfinite(hi):
                    out["time_to_oom_low_s"], out["time_to_oom_high_s"] = lo, hi
            limit = float(report.limit_bytes[i])
            if math.isfinite(limit):
                out["limit_bytes"] = limit
            bound = batch.binding_of(i)  # one container's own limit binds: say whose
            if bound is not None and str(report.channel[i]) != "gpu_fb_used":
                out["container"], out["limit_bytes"] = bound
            return "", out

        def verdict_fields(i: int) -> dict[str, Any]:
            lo, hi = _finite(lo_s[i]), _finite(hi_s[i])
            return {"time_to_oom_s": _finite(tto_s[i]),
                    "time_to_oom_range_s": (lo, hi) if lo is not None and hi is not None
                    else None,
                    "leak_rate_bytes_per_s": _finite(report.rate_bytes_per_s[i])}

        # the rows whose attribution is due, in one pass, from the batch's one analysis
        def attribute(rows: list[int]) -> list[Attribution]:
            return [crash_loop_attribution() if by_kills[i] else a
                    for i, a in zip(rows, trend.explain(batch, rows), strict=True)]

        return Judged("memory_leak", raw_leak | (latched & held), leak_score, leak_thr,
                      kinds=kinds, attribute=attribute, facts=facts,
                      verdict_fields=verdict_fields)

    def settle(self, batch: WindowBatch, kinds: list[str], raised: np.ndarray, /) -> None:
        """A leak verdict dates its growth's start (once) and latches once raised; any other
        drops the latch, and the start unless the memory is still near a leak."""
        for i, key in enumerate(batch.keys):
            st = self.pods[key]
            if kinds[i] in LEAK_KINDS:
                if math.isnan(st.leak_since):
                    view = self._view[i] if self._view is not None else math.nan
                    st.leak_since = float(batch.ts[i]) - (float(view) if math.isfinite(
                        float(view)) else 0.0)
                if raised[i]:
                    st.latched = True
            else:
                st.latched = False
                if not self._near[i]:
                    st.leak_since = math.nan

    def forget(self, key: Hashable, /) -> None:
        self.pods.pop(key, None)

    def adopt(self, previous: Decider, /) -> None:
        """Takes over ``previous``'s latches and growth starts (a hot reload neither drops
        nor repeats a raised leak)."""
        if isinstance(previous, LeakDecider):
            self.pods = previous.pods


def crash_loop_attribution() -> Attribution:
    """The attribution of a verdict raised on the kills alone (a crash loop's new life, its
    growth not yet measured): the decision, 0 -> 1, is the earlier lives' OOM kills at the
    working set's limit (``mem_working_set.oom_kills``). The trend score's Shapley values
    explain a score that did not decide (all of them <= 0 in such a young life)."""
    return Attribution(base_value=0.0, values={CRASH_LOOP_FEATURE: 1.0})


CRASH_LOOP_FEATURE = "mem_working_set.oom_kills"
"""The feature a crash loop's kill-evidence verdict is attributed to (words: channels.py)."""


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


SPEC = DetectorSpec(
    name="trend", cls=TrendDetector, input="window", example=TrendDetector,
    kinds=("memory_leak", "gpu_memory_leak"),
    member=Member("trend", frozenset({TREND_JSON}), _read_member, encode=_encode),
    fit=_fit,
    decider=LeakDecider,
)
"""The leak detector: ``trend.json``, the leak verdicts (:class:`LeakDecider`, judged first),
fitted on every healthy window."""
