"""A streaming univariate detector for custom metrics (any metric outside the built-in channels).

Used by :mod:`detector.pipeline` on :attr:`WindowBatch.extra` (application metrics such as
training throughput, request counts or step time), with one streaming state per pod and
metric that advances only by the points that are new at each evaluation, and by
``podguard evaluate --nab`` (:mod:`detector.nab_eval`) on the NAB corpus. Vectorised over a
batch of series: one :meth:`UnivariateDetector.step` advances ``n`` series by one point each;
the state of a series is a fixed number of floats (bounded, whatever its length).

How a point is judged (all causal: the verdict at point ``t`` uses points ``<= t`` only)
--------------------------------------------------------------------------------------
* **Per-series baseline**: a robust level ``m`` and scale ``s`` (mean absolute deviation),
  exponentially weighted (half-life :attr:`UnivariateConfig.halflife_points`) and winsorised
  (a point moves them by at most ``clip`` scales). At the start of a series the weights are
  those of a plain running mean. The scale never falls below ``scale_floor`` times its slow
  (long half-life) average. Until the series has ``prior_points`` points its scale is shrunk
  towards a prior relative scale (``prior_rel_scale * |m|``, or the family's own when the
  pipeline knows other series of the metric), so a verdict exists from
  ``warmup_points`` points on (minutes, not hours).
* **Deviations at several time scales**: the newest point, and exponentially weighted means
  of half-life ``scales`` (short bursts, level shifts), each ``z_k = |ewm_k - m| / s``
  against the baseline before the point; optionally (``season_points``, e.g. one day of
  points; off by default, on in ``podguard evaluate --nab``) the change since one season
  ago, in units of its own running mean absolute change.
* **Each deviation against the series' own tail** (peaks over threshold, exponential tail):
  ``u_k``, the series' running ``tail_quantile`` of ``z_k`` (a decayed log-spaced histogram,
  half-life ``tail_halflife_points``), and ``beta_k``, the running mean excess of ``z_k``
  over ``u_k``. The tail probability of ``z`` is then
  ``(1 - tail_quantile) * exp(-(z - u) / beta)``; the score is its ``-log10``, the largest
  over the time scales, less ``log10(number of scales)`` (Bonferroni), floored at 0. A score
  of 5 is "a 1-in-100,000 excursion for this series". Noisy heavy-tailed series (request
  counts) and quiet ones land on one scale, and a noisy real series does not alarm all the
  time. The histogram and mean excess start from ``prior_weight`` pseudo-points of the
  Gaussian case (or of the family's established series, in the pipeline): shrinkage to a
  prior until the series' own statistics exist.
* **Learning from what was not flagged** (river's ``filter`` habit): a flagged point
  updates the baseline with ``flagged_weight`` of its normal weight and does not update the
  tail statistics.
* **An anomaly that persists becomes the new normal**: alone, the rule above would hold a
  lasting change flagged for good (a level shift, or a daily cycle that starts with the
  series and that a level of half-life ``halflife_points`` cannot follow: its points are
  flagged, so they do not teach the baseline, so they stay flagged). An episode that has
  lasted ``relearn_points`` (``relearn_halflives`` baseline half-lives) restarts the
  baseline from its own points (their mean, at least their mean absolute deviation, and
  the seasonal change's scale at least their mean absolute seasonal change),
  and from then until it ends its points teach the baseline and the tail like any other,
  so the episode ends about ``relearn_points`` after it began. A change shorter than that
  is judged as before.
* **Threshold**: one per metric family (the metric name), :data:`DEFAULT_THRESHOLD` unless
  fitted at a target false-alarm rate on healthy series (:meth:`infer_threshold`), kept as
  strict-JSON state (:meth:`get_state` / :meth:`from_state`, no pickle).
* **Alarms** (:meth:`UnivariateDetector.alarms`): the first flagged point of an episode, an
  episode being flagged points with gaps shorter than ``episode_gap_points`` (a refractory
  period: one page per episode, and what NAB scores).

``explain`` gives one readable sentence ("step time 2.3x its usual level for 6 min (usual
0.41 ± 0.03)") and the evidence of each time scale (its tail score).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from detector.errors import NotFittedError
from detector.models.spec import Decider, DetectorSpec, Evidence, Fitted, Judged, Member
from detector.models.state import UnivariateState, read_config, read_state
from detector.windows import WindowBatch

FORMAT = "podguard.univariate/2"
DEFAULT_THRESHOLD = 5.0
"""Threshold of a metric family with no fitted one, chosen a priori (not fitted on any
labelled data): a tail probability of 1e-5 per point and series (at one point a minute,
about one flagged point per 70 days of a healthy series, before debouncing)."""

_SIGMA_PER_MAD = 1.2533  # E|x - mu| = sigma * sqrt(2/pi) for a normal variable
_BINS = 64
_LOG_LO, _LOG_HI = math.log(1e-3), math.log(1e3)
_DLOG = (_LOG_HI - _LOG_LO) / _BINS
_EDGES = np.exp(_LOG_LO + _DLOG * np.arange(_BINS + 1))  # bin b covers [E[b], E[b+1])


@dataclass(frozen=True)
class UnivariateConfig:
    """Generic settings (in points of the series' own grid), chosen a priori; none is fitted
    per family."""

    halflife_points: float = 350.0  # half-life of the baseline level and scale
    long_halflife_points: float = 2000.0  # half-life of the slow scale behind the floor
    scales: tuple[float, ...] = (0.0, 3.0, 30.0)  # EWM half-lives judged (0 = the point)
    clip: float = 3.0  # winsorising of baseline updates, in scales
    scale_floor: float = 0.1  # the scale is at least this fraction of the slow scale
    tail_quantile: float = 0.99  # the level the exponential tail is fitted above
    tail_halflife_points: float = 3000.0  # half-life of the tail statistics
    prior_weight: float = 200.0  # pseudo-points of the prior tail (shrinkage)
    prior_points: int = 30  # points until the scale is the series' own
    prior_rel_scale: float = 0.05  # prior scale as a fraction of |level| (no family prior)
    warmup_points: int = 5  # points before the first score of a series
    flagged_weight: float = 0.1  # baseline weight of a flagged point (1 = like any other)
    episode_gap_points: int = 100  # flagged points closer than this belong to one episode
    season_points: int = 0  # a seasonal time scale: the change since this many points ago
    # (e.g. one day of points; 0 = off); its state is a ring of that many points per series
    relearn_halflives: float = 1.0  # an episode lasting this many baseline half-lives
    # (halflife_points) is the new normal: the baseline restarts from the episode's points
    # and the episode's points teach like any other (0 = never)

    def __post_init__(self) -> None:
        bad = []
        if not self.halflife_points > 0 or not self.long_halflife_points > 0 \
                or not self.tail_halflife_points > 0:
            bad.append("half-lives must be > 0")
        if not self.scales or any(not (h >= 0 and math.isfinite(h)) for h in self.scales):
            bad.append("scales must be a non-empty list of half-lives >= 0")
        if not 0 < self.tail_quantile < 1:
            bad.append("tail_quantile must be in (0, 1)")
        if not self.clip > 0 or not self.scale_floor >= 0 or not 0 <= self.flagged_weight <= 1:
            bad.append("clip > 0, scale_floor >= 0, 0 <= flagged_weight <= 1")
        if self.warmup_points < 2 or self.prior_points < 0 or not self.prior_weight > 0 \
                or not self.prior_rel_scale > 0:
            bad.append("warmup_points >= 2, prior_points >= 0, prior_weight > 0, "
                       "prior_rel_scale > 0")
        if self.episode_gap_points < 0 or self.season_points < 0 \
                or not (self.relearn_halflives >= 0 and math.isfinite(self.relearn_halflives)):
            bad.append("episode_gap_points >= 0, season_points >= 0, relearn_halflives >= 0")
        if bad:
            raise ValueError("invalid UnivariateConfig: " + "; ".join(bad))

    @property
    def alphas(self) -> np.ndarray:
        """EWM weight of the newest point at each time scale (1 = the point itself)."""
        return np.array([1.0 if h == 0 else 1.0 - 0.5 ** (1.0 / h) for h in self.scales])

    @property
    def relearn_points(self) -> int:
        """Points an episode lasts before it is the new normal (0 = never)."""
        return max(1, round(self.relearn_halflives * self.halflife_points)) \
            if self.relearn_halflives > 0 else 0

    @property
    def judged_scales(self) -> tuple[float, ...]:
        """The time scales judged: ``scales``, then ``-season_points`` when that is on."""
        return (*self.scales, *((-float(self.season_points),) if self.season_points else ()))


def gaussian_prior(config: UnivariateConfig) -> tuple[np.ndarray, np.ndarray]:
    """The prior tail of each time scale for Gaussian noise around a steady level:
    ``(hist, beta)``, hist (S, B) summing to 1 per scale, beta (S,) the mean excess over the
    ``tail_quantile``. ``z`` of an EWM with weight ``a`` is ``|N(0, a / (2 - a))| / 0.798``."""
    a = np.concatenate([config.alphas, [1.0] if config.season_points else []])
    sd = np.sqrt(a / (2.0 - a)) * _SIGMA_PER_MAD  # z in units of the MAD (a seasonal
    # change is in units of its own MAD, like a point)
    from math import erf, sqrt

    cdf = np.array([[erf(e / s / sqrt(2.0)) for e in _EDGES] for s in sd])  # P(|N| s < e)
    hist = np.diff(cdf, axis=1)
    hist[:, 0] += cdf[:, 0]
    hist[:, -1] += 1.0 - cdf[:, -1]
    hist /= hist.sum(axis=1, keepdims=True)
    u = _hist_quantile(hist[None], config.tail_quantile)[0]
    beta = np.empty(len(sd))
    rng = np.random.default_rng(0)  # mean excess of |N| s over u, by a fixed sample
    g = np.abs(rng.standard_normal(200_000))
    for k, s in enumerate(sd):
        z = g * s
        ex = z[z > u[k]] - u[k]
        beta[k] = float(ex.mean()) if ex.size else float(s)
    return hist, beta


@dataclass
class SeriesState:
    """The running state of ``n`` series (one row each); plain arrays, a fixed size per
    series (``8 + 2 S + S B + S`` floats and seven counters, S scales, B bins)."""

    level: np.ndarray  # (n,) baseline level
    scale: np.ndarray  # (n,) baseline mean absolute deviation
    slow_scale: np.ndarray  # (n,) long half-life mean absolute deviation
    prior_scale: np.ndarray  # (n,) relative prior scale (fraction of |level|)
    ewm: np.ndarray  # (n, S) EW means of the series at each time scale
    hist: np.ndarray  # (n, S, B) decayed histogram of z per time scale (sums to 1)
    beta: np.ndarray  # (n, S) mean excess of z over the tail quantile
    count: np.ndarray  # (n,) int64, points seen
    run: np.ndarray  # (n,) int64, consecutive flagged points up to now
    last: np.ndarray  # (n,) the newest point
    ring: np.ndarray  # (n, season_points) the last season of points (NaN: none)
    season_scale: np.ndarray  # (n,) mean absolute seasonal change
    season_count: np.ndarray  # (n,) int64, seasonal changes seen
    ep_age: np.ndarray  # (n,) int64, points since the open episode's first flagged point
    # (0 = no episode open)
    ep_quiet: np.ndarray  # (n,) int64, points since the newest flagged point
    ep_n: np.ndarray  # (n,) int64, points of the episode since it began or last relearned
    ep_mean: np.ndarray  # (n,) their running mean
    ep_mad: np.ndarray  # (n,) their running mean absolute deviation
    ep_season_n: np.ndarray  # (n,) int64, how many of them had a seasonal change
    ep_season_mad: np.ndarray  # (n,) the running mean of those changes' absolute values

    @classmethod
    def empty(cls, n: int, config: UnivariateConfig,
              prior: tuple[np.ndarray, np.ndarray] | None = None) -> SeriesState:
        hist, beta = gaussian_prior(config) if prior is None else prior
        S = len(config.judged_scales)
        z = np.zeros(n, dtype=np.float64)
        return cls(level=z.copy(), scale=z.copy(), slow_scale=z.copy(),
                   prior_scale=np.full(n, config.prior_rel_scale),
                   ewm=np.zeros((n, len(config.scales))),
                   hist=np.broadcast_to(hist, (n, *hist.shape)).copy(),
                   beta=np.broadcast_to(beta, (n, S)).copy(),
                   count=np.zeros(n, dtype=np.int64), run=np.zeros(n, dtype=np.int64),
                   last=np.full(n, np.nan), ring=np.full((n, config.season_points), np.nan),
                   season_scale=z.copy(), season_count=np.zeros(n, dtype=np.int64),
                   ep_age=np.zeros(n, dtype=np.int64), ep_quiet=np.zeros(n, dtype=np.int64),
                   ep_n=np.zeros(n, dtype=np.int64), ep_mean=z.copy(), ep_mad=z.copy(),
                   ep_season_n=np.zeros(n, dtype=np.int64), ep_season_mad=z.copy())

    def take(self, rows: np.ndarray) -> SeriesState:
        """A copy of the rows ``rows``."""
        return SeriesState(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def put(self, rows: np.ndarray, other: SeriesState) -> None:
        """Writes ``other``'s rows into rows ``rows``."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(other, f.name)

    def resize(self, n: int, config: UnivariateConfig) -> SeriesState:
        """This state with ``n`` rows (new rows empty, extra rows dropped)."""
        fresh = SeriesState.empty(n, config)
        m = min(n, len(self.level))
        for f in fields(self):
            getattr(fresh, f.name)[:m] = getattr(self, f.name)[:m]
        return fresh


@dataclass(frozen=True)
class Judgement:
    """The detector's view of the newest point of each series."""

    score: np.ndarray  # (n,) -log10 tail probability; NaN while warming up or without data
    threshold: np.ndarray  # (n,) the family threshold of each series
    is_anomaly: np.ndarray  # (n,) score >= threshold
    value: np.ndarray  # (n,) the judged value (the EWM of the winning time scale)
    level: np.ndarray  # (n,) the baseline level it was judged against
    sigma: np.ndarray  # (n,) the baseline scale as a standard deviation
    run_points: np.ndarray  # (n,) consecutive flagged points up to and including this one
    scale_scores: np.ndarray  # (n, S) the score of each time scale
    scales: tuple[float, ...] = ()  # the half-lives of the time scales


def _hist_quantile(hist: np.ndarray, p: float) -> np.ndarray:
    """The ``p``-quantile of each histogram (..., B) (geometric interpolation in a bin)."""
    cum = np.cumsum(hist, axis=-1)
    tot = cum[..., -1:]
    target = p * tot
    b = np.minimum((cum < target).sum(axis=-1), _BINS - 1)
    below = np.take_along_axis(cum, b[..., None], -1)[..., 0] - np.take_along_axis(
        hist, b[..., None], -1)[..., 0]
    inbin = np.take_along_axis(hist, b[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip(np.where(inbin > 0, (target[..., 0] - below) / inbin, 0.5), 0.0, 1.0)
    return np.exp(_LOG_LO + _DLOG * (b + frac))


def _hist_survival(hist: np.ndarray, z: np.ndarray) -> np.ndarray:
    """P(Z >= z) by each histogram (..., B) (the bins above z's, half of z's own)."""
    b = np.clip(((np.log(np.maximum(z, 1e-300)) - _LOG_LO) / _DLOG).astype(np.int64), 0,
                _BINS - 1)
    above = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]  # mass of bins >= b
    own = np.take_along_axis(hist, b[..., None], -1)[..., 0]
    return np.take_along_axis(above, b[..., None], -1)[..., 0] - 0.5 * own


@dataclass
class UnivariateDetector:
    """See the module docstring. ``thresholds``: metric family -> fitted threshold."""

    config: UnivariateConfig = field(default_factory=UnivariateConfig)
    thresholds: dict[str, float] = field(default_factory=dict)
    default_threshold: float = DEFAULT_THRESHOLD
    fit_info: dict[str, Any] = field(default_factory=dict)
    name: str = "univariate"

    # -- the streaming core ---------------------------------------------------------------
    def threshold_for(self, family: str | None) -> float:
        if family is not None and family in self.thresholds:
            return self.thresholds[family]
        return self.default_threshold

    def new_state(self, n: int, points: int | None = None,
                  prior: tuple[np.ndarray, np.ndarray] | None = None) -> SeriesState:
        """A fresh state for ``n`` series (``points`` is accepted for compatibility; the
        state's size does not depend on the series' length); ``prior``: the tail prior
        ``(hist (S, B), beta (S,))``, the Gaussian one by default."""
        return SeriesState.empty(n, self.config, prior)

    def step(self, state: SeriesState, x: np.ndarray, threshold: np.ndarray | float
             ) -> Judgement:
        """Advances every series by one point ``x`` ((n,), NaN = no data: state unchanged,
        no score) and judges it against ``threshold`` (scalar or (n,))."""
        c = self.config
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n,))
        ok = np.isfinite(x)
        first = ok & (state.count == 0)
        if first.any():
            state.level[first] = x[first]
            state.ewm[first] = x[first, None]
        cnt = state.count.astype(np.float64)
        xf = np.where(ok, x, state.level)
        al = np.maximum(c.alphas[None, :], 1.0 / (cnt[:, None] + 1.0))  # a running mean first
        ewm = np.where(ok[:, None], state.ewm + al * (xf[:, None] - state.ewm), state.ewm)
        with np.errstate(invalid="ignore", divide="ignore"):
            floor = np.maximum(c.scale_floor * state.slow_scale,
                               1e-9 * (np.abs(state.level) + 1e-12))
            own = np.maximum(state.scale, floor)
            # shrinkage of the scale to the prior until the series has prior_points points
            wp = np.maximum(c.prior_points - (cnt - 1.0), 0.0)
            prior_s = state.prior_scale * np.abs(state.level)
            sc = np.where(wp > 0, np.maximum(own, ((cnt - 1.0).clip(0) * own + wp * prior_s)
                                             / np.maximum(cnt - 1.0 + wp, 1.0)), own)
            sc = np.maximum(sc, 1e-12 * (np.abs(state.level) + 1e-12))
            z = np.abs(ewm - state.level[:, None]) / sc[:, None]  # (n, S)
            zvalid = np.ones(z.shape, dtype=bool)
            if c.season_points:
                slot = state.count % c.season_points
                prev = state.ring[np.arange(n), slot]
                d = xf - prev
                has = ok & np.isfinite(d)
                ss = np.maximum(state.season_scale, 1e-9 * (np.abs(state.level) + 1e-12))
                live = has & (state.season_count >= c.warmup_points)
                zs = np.where(live, np.abs(d) / ss, 0.0)
                z = np.concatenate([z, zs[:, None]], axis=1)
                zvalid = np.concatenate([zvalid, live[:, None]], axis=1)
            u = _hist_quantile(state.hist, c.tail_quantile)  # (n, S)
            ls = (-math.log10(1.0 - c.tail_quantile)
                  + (z - u) / (state.beta * math.log(10.0)))
            # what the series itself has shown is not rarer than its own frequency (a jump
            # that recurs every day is not a 1-in-a-million event however large it is)
            ls = np.maximum(np.minimum(ls, -np.log10(np.maximum(_hist_survival(state.hist, z),
                                                                1e-300))), 0.0)
            scored = ok & (state.count >= c.warmup_points - 1) & np.isfinite(z).all(axis=1)
            ls = np.where(zvalid, ls, 0.0)
            best = ls.max(axis=1) - math.log10(len(c.judged_scales))
            score = np.where(scored, np.maximum(best, 0.0), np.nan)
        flagged = scored & (score >= thr)
        accepted = self._episodes(state, ok, flagged, xf,
                                  np.where(has, np.abs(d), np.nan) if c.season_points else None)
        # -- learn: baseline from the newest point (winsorised), less from flagged points
        a = np.maximum(1.0 - 0.5 ** (1.0 / c.halflife_points), 1.0 / (cnt + 1.0))
        a_slow = np.maximum(1.0 - 0.5 ** (1.0 / c.long_halflife_points), 1.0 / (cnt + 1.0))
        # (no gating before prior_points: there is no baseline of its own to protect yet)
        w = np.where(flagged & (cnt >= c.prior_points) & ~accepted, c.flagged_weight, 1.0)
        r = np.where(ok, xf - state.level, 0.0)
        lim = c.clip * sc
        learn = ok & ~first
        rc = np.clip(r, -lim, lim)
        ar = np.where(state.count <= 1, np.abs(r), np.minimum(np.abs(r), lim))
        level_before = state.level
        state.level = np.where(learn, state.level + a * w * rc, state.level)
        state.scale = np.where(learn, state.scale + a * w * (ar - state.scale), state.scale)
        state.slow_scale = np.where(learn, state.slow_scale + a_slow * w * (ar - state.slow_scale),
                                    state.slow_scale)
        state.ewm = ewm
        if c.season_points:
            # the seasonal change's scale: a running mean at first, then EW (baseline
            # half-life), winsorised and gated like the baseline
            sa = np.maximum(1.0 - 0.5 ** (1.0 / c.halflife_points),
                            1.0 / (state.season_count + 1.0))
            ad = np.abs(np.where(has, d, 0.0))
            ad = np.where(state.season_count >= c.warmup_points, np.minimum(ad, c.clip * ss), ad)
            state.season_scale = np.where(
                has, state.season_scale + sa * w * (ad - state.season_scale), state.season_scale)
            state.season_count = state.season_count + has
            state.ring[ok, slot[ok]] = x[ok]
        # -- the tail statistics
        # (the histogram from every scored point that was not flagged and from the first
        # point of each flagged run: how often the series goes that far is a fact about the
        # series, and a jump that recurs every day becomes usual, while a lasting anomaly
        # counts once; the mean excess of the exponential tail only from points that were
        # not flagged)
        rows = np.flatnonzero(scored & (~flagged | (state.run == 0) | accepted))
        if rows.size:
            # weight of the point: as one of prior_weight + count points at first, then
            # exponentially decayed (half-life tail_halflife_points)
            aq = np.maximum(1.0 - 0.5 ** (1.0 / c.tail_halflife_points),
                            1.0 / (c.prior_weight + cnt[rows]))[:, None]
            zk = z[rows]
            b = np.clip(((np.log(np.maximum(zk, 1e-300)) - _LOG_LO) / _DLOG).astype(np.int64),
                        0, _BINS - 1)
            aq = aq * zvalid[rows]  # (a scale with no value yet learns nothing)
            h = state.hist[rows] * (1.0 - aq)[..., None]
            np.put_along_axis(h, b[..., None],
                              np.take_along_axis(h, b[..., None], -1) + aq[..., None], -1)
            state.hist[rows] = h
            uk = u[rows]
            over = (zk > uk) & (~flagged | accepted)[rows, None] & zvalid[rows]
            # mean excess: EW over exceedances, weight 1/(1 - q) of a point's (they are rare)
            ab = np.minimum(1.0, aq / (1.0 - c.tail_quantile))
            state.beta[rows] = np.where(over, state.beta[rows] + ab * (zk - uk - state.beta[rows]),
                                        state.beta[rows])
        state.count = state.count + ok
        state.run = np.where(flagged, state.run + 1, np.where(ok, 0, state.run))
        state.last = np.where(ok, x, state.last)
        win = np.argmax(ls, axis=1)
        judged = ewm if not c.season_points else np.concatenate([ewm, xf[:, None]], axis=1)
        value = np.take_along_axis(judged, win[:, None], 1)[:, 0]
        return Judgement(score=score, threshold=np.array(thr), is_anomaly=flagged,
                         value=np.where(ok, value, np.nan), level=level_before,
                         sigma=sc * _SIGMA_PER_MAD, run_points=state.run,
                         scale_scores=np.where(scored[:, None], ls, np.nan),
                         scales=c.judged_scales)

    def _episodes(self, state: SeriesState, ok: np.ndarray, flagged: np.ndarray,
                  x: np.ndarray, season_dev: np.ndarray | None) -> np.ndarray:
        """Advances each series' episode (flagged points closer than ``episode_gap_points``,
        as :func:`episode_starts` counts them, except that a point without data neither
        counts towards the gap nor ends the episode: a scrape outage does not start a new
        normal) by its newest point and returns, per series,
        whether that point belongs to an episode that has lasted more than ``relearn_points``:
        the new normal. When the points since the episode began (or since its last relearning)
        number ``relearn_points``, the baseline restarts from them (level their mean, scale
        at least their mean absolute deviation, the seasonal change's scale at least their
        mean absolute seasonal change ``season_dev``, NaN where none: every part of the
        baseline that the flagged points' gating kept from learning); from then on until
        the episode ends its points teach the baseline and the tail like any other, so a
        level or cycle the series stays in stops being an anomaly instead of holding one
        episode open for good (a flagged point otherwise barely teaches the baseline and
        not the tail)."""
        c, N = self.config, self.config.relearn_points
        gap = c.episode_gap_points
        was_open = state.ep_age > 0
        new_ep = ok & flagged & ~(was_open & (state.ep_quiet < gap))
        quiet = np.where(ok, np.where(flagged, 0, state.ep_quiet + 1), state.ep_quiet)
        is_open = ok & (flagged | (was_open & (quiet < gap)))
        state.ep_quiet = quiet
        state.ep_age = np.where(new_ep, 1, np.where(is_open, state.ep_age + 1,
                                                    np.where(ok, 0, state.ep_age)))
        fresh = new_ep | (ok & ~is_open)
        state.ep_n = np.where(fresh, 0, state.ep_n)
        state.ep_mean = np.where(fresh, 0.0, state.ep_mean)
        state.ep_mad = np.where(fresh, 0.0, state.ep_mad)
        state.ep_season_n = np.where(fresh, 0, state.ep_season_n)
        state.ep_season_mad = np.where(fresh, 0.0, state.ep_season_mad)
        if season_dev is not None:
            sd = is_open & np.isfinite(season_dev)
            ks = (state.ep_season_n + 1).astype(np.float64)
            state.ep_season_mad = np.where(
                sd, state.ep_season_mad + (season_dev - state.ep_season_mad) / ks,
                state.ep_season_mad)
            state.ep_season_n = state.ep_season_n + sd
        k = (state.ep_n + 1).astype(np.float64)
        mean = np.where(is_open, state.ep_mean + (x - state.ep_mean) / k, state.ep_mean)
        state.ep_mad = np.where(is_open, state.ep_mad + (np.abs(x - mean) - state.ep_mad) / k,
                                state.ep_mad)
        state.ep_mean = mean
        state.ep_n = state.ep_n + is_open
        if not N:
            return np.zeros_like(ok)
        relearn = is_open & (state.ep_n >= N)
        if relearn.any():
            state.level = np.where(relearn, state.ep_mean, state.level)
            state.scale = np.where(relearn, np.maximum(state.scale, state.ep_mad), state.scale)
            rs = relearn & (state.ep_season_n > 0)
            state.season_scale = np.where(rs, np.maximum(state.season_scale,
                                                         state.ep_season_mad),
                                          state.season_scale)
            state.ep_n = np.where(relearn, 0, state.ep_n)
            state.ep_season_n = np.where(relearn, 0, state.ep_season_n)
            state.ep_season_mad = np.where(relearn, 0.0, state.ep_season_mad)
        # (the point that relearns was judged against the old baseline: it teaches nothing)
        return is_open & (state.ep_age > N)

    def run(self, x: np.ndarray, threshold: np.ndarray | float | None = None
            ) -> tuple[np.ndarray, np.ndarray, Judgement | None]:
        """Scores every point of ``x`` ((n, T), one series per row) from a fresh state.

        Returns ``(score, flagged)``, both (n, T), and the judgement of the last point."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        n, T = x.shape
        thr = self.default_threshold if threshold is None else threshold
        st = self.new_state(n, T)
        score = np.full((n, T), np.nan)
        flagged = np.zeros((n, T), dtype=bool)
        last = None
        for t in range(T):
            last = self.step(st, x[:, t], thr)
            score[:, t] = last.score
            flagged[:, t] = last.is_anomaly
        return score, flagged, last

    def alarms(self, x: np.ndarray, family: str | None = None) -> np.ndarray:
        """(n, T) bool: the first point of each episode of flagged points (see the module
        docstring), with the threshold of ``family``."""
        _, flagged, _ = self.run(x, self.threshold_for(family))
        return episode_starts(flagged, self.config.episode_gap_points)

    # -- the detector contract ------------------------------------------------------------
    def score(self, x: np.ndarray) -> np.ndarray:
        """(n, T) scores of ``x`` (one series per row), higher = more anomalous."""
        return self.run(x)[0]

    def infer_threshold(self, family: str, healthy: Sequence[np.ndarray], fpr: float, *,
                        minimum: float = 1.0) -> float:
        """Fits the threshold of ``family`` on healthy series (each (T,) or (n, T)) so that a
        fraction ``fpr`` of their scored points lie above it (at least ``minimum``, the
        series' usual high excursion itself); stores and returns it.

        Thresholds gate what the baseline learns (a flagged point teaches less, so the points
        after it score higher), so this iterates: the first pass scores without gating, each
        later pass with the threshold so far, and the threshold only rises, until the
        fraction above it on its own gated run is at most ``fpr`` (at most 10 passes)."""
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
        rows = [np.atleast_2d(np.asarray(h, dtype=np.float64)) for h in healthy]
        if not rows:
            raise ValueError(f"no healthy series to fit family {family!r} on")
        thr = math.inf
        for _ in range(10):
            scores = np.concatenate([self.run(r, thr)[0].ravel() for r in rows])
            scores = scores[np.isfinite(scores)]
            if scores.size == 0:
                raise ValueError(f"family {family!r}: no scored point (series shorter than "
                                 f"{self.config.warmup_points} "
                                 "points?)")
            if math.isfinite(thr) and np.mean(scores > thr) <= fpr:
                break
            new = max(float(np.quantile(scores, 1.0 - fpr, method="higher")), minimum)
            thr = new if not math.isfinite(thr) else max(new, thr * (1 + 1e-9))
        self.thresholds[family] = thr
        self.fit_info[family] = {"fpr": fpr, "points": int(scores.size),
                                 "series": int(sum(r.shape[0] for r in rows))}
        return thr

    def explain(self, metric: str, j: Judgement, i: int, *, step_s: float | None = None,
                unit: str = "") -> tuple[str, dict[str, float]]:
        """One sentence and the Shapley values of row ``i`` of judgement ``j``."""
        return describe(metric, j, i, step_s=step_s, unit=unit)

    # -- persisted state ------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Strict-JSON state: format, config, thresholds per family, default threshold."""
        return {"format": FORMAT, "config": asdict(self.config),
                "thresholds": {k: float(v) for k, v in sorted(self.thresholds.items())},
                "default_threshold": float(self.default_threshold),
                "fit_info": self.fit_info}

    @classmethod
    def from_state(cls, state: object) -> UnivariateDetector:
        st = read_state(UnivariateState, state, "univariate state", fmt=FORMAT)
        config = read_config(UnivariateConfig, st.config, "univariate config")
        return cls(config=config, thresholds=dict(st.thresholds),
                   default_threshold=st.default_threshold, fit_info=dict(st.fit_info))

    def check_fitted(self, family: str) -> float:
        if family not in self.thresholds:
            raise NotFittedError(f"no threshold fitted for metric family {family!r}")
        return self.thresholds[family]


def episode_starts(flagged: np.ndarray, gap: int) -> np.ndarray:
    """(n, T) bool: flagged points with no flagged point in the ``gap`` points before."""
    f = np.atleast_2d(np.asarray(flagged, dtype=bool))
    out = np.zeros_like(f)
    for i in range(f.shape[0]):
        idx = np.flatnonzero(f[i])
        if idx.size:
            keep = np.concatenate(([True], np.diff(idx) > gap))
            out[i, idx[keep]] = True
    return out


def _human(v: float, unit: str) -> str:
    a = abs(v)
    if a == 0 or not math.isfinite(v):
        s = f"{v:g}"
    elif a >= 1e4 or a < 1e-3:
        s = f"{v:.3g}"
    elif a >= 100:
        s = f"{v:.0f}"
    else:
        s = f"{v:.3g}" if a < 1 else f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{s} {unit}".rstrip() if unit else s


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def scale_name(h: float) -> str:
    """``point`` for the newest point, ``ewm<h>`` for an EWM of half-life ``h`` points,
    ``season<P>`` for the change since ``P`` points ago (``h = -P``)."""
    return "point" if h == 0 else f"season{-h:g}" if h < 0 else f"ewm{h:g}"


def describe(metric: str, j: Judgement, i: int, *, step_s: float | None = None,
             unit: str = "") -> tuple[str, dict[str, float]]:
    """The sentence and the evidence of series ``i`` of ``j`` (see :class:`UnivariateDetector`).

    Evidence: the score of each time scale (``-log10`` of its tail probability, before the
    correction for the number of scales), named ``"<metric>@<scale>"`` (``@point`` the
    newest point, ``@ewm3`` its EWM of half-life 3 points...); the verdict's score is the
    largest of them less ``log10(number of scales)``."""
    subject = metric.replace("_", " ")
    value, level, sigma = float(j.value[i]), float(j.level[i]), float(j.sigma[i])
    score, thr = float(j.score[i]), float(j.threshold[i])
    if math.isfinite(level) and level != 0 and value / level > 0:
        ratio = value / level
        how = (f"{ratio:.1f}x its usual level" if ratio >= 1
               else f"{ratio:.2f}x its usual level" if ratio >= 0.1
               else f"down to {100 * ratio:.1f} % of its usual level")
    else:
        how = f"at {_human(value, unit)}, {'above' if value > level else 'below'} its usual level"
    run = int(j.run_points[i])
    dur = f" for {_duration(run * step_s)}" if step_s and run > 0 else ""
    sentence = (f"{subject} {how}{dur} (usual {_human(level, unit)} ± {_human(sigma, unit)}; "
                f"now {_human(value, unit)}, score {score:.1f} vs threshold {thr:.1f})")
    attr: dict[str, float] = {}
    for k, h in enumerate(j.scales):
        v = float(j.scale_scores[i, k])
        if math.isfinite(v):
            attr[f"{metric}@{scale_name(h)}"] = v
    return sentence, attr


_JUDGED = ("score", "threshold", "value", "level", "sigma")


class StreamBank:
    """The streaming state of one metric family over many keyed series (pods): each call to
    :meth:`advance` consumes only the points of each series newer than those it already
    consumed, so the per-step cost is O(new points), and the judgement is the one a full
    causal replay of the series' points would give (same state, point by point). Rows of
    keys that :meth:`forget` drops are reused; the state of one series is a fixed number of
    floats. A new series starts from the family's prior: the mean tail of the family's
    established series (``count >= prior_weight``) and their median relative scale, or the
    detector's Gaussian prior when there are none."""

    def __init__(self, det: UnivariateDetector) -> None:
        self.det = det
        self._rows: dict[Any, int] = {}
        self._free: list[int] = []
        self._cap = 0
        self._state = det.new_state(0)
        self._last_t = np.zeros(0)
        self._judged = {k: np.zeros(0) for k in _JUDGED}
        self._flag = np.zeros(0, dtype=bool)
        self._scale_scores = np.zeros((0, len(det.config.judged_scales)))

    def __len__(self) -> int:
        return len(self._rows)

    def tracked(self) -> list[Any]:
        return list(self._rows)

    def forget(self, key: Any) -> None:
        """Drops the state of ``key`` (a pod that went away); its row is reused."""
        row = self._rows.pop(key, None)
        if row is not None:
            self._free.append(row)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self._cap, 16)
        self._state = self._state.resize(cap, self.det.config)
        old = self._cap
        self._last_t = np.concatenate([self._last_t, np.full(cap - old, -np.inf)])
        self._judged = {k: np.concatenate([v, np.full(cap - old, np.nan)])
                        for k, v in self._judged.items()}
        self._flag = np.concatenate([self._flag, np.zeros(cap - old, dtype=bool)])
        self._scale_scores = np.concatenate(
            [self._scale_scores, np.full((cap - old, self._scale_scores.shape[1]), np.nan)])
        self._free.extend(range(cap - 1, old - 1, -1))
        self._cap = cap

    def _rows_of(self, keys: Sequence[Any]) -> np.ndarray:
        new = [k for k in dict.fromkeys(keys) if k not in self._rows]
        if new:
            if len(self._free) < len(new):
                self._grow(self._cap + len(new) - len(self._free))
            live = np.fromiter(self._rows.values(), dtype=np.int64, count=len(self._rows))
            st, c = self._state, self.det.config
            est = live[st.count[live] >= c.prior_weight] if live.size else live
            fresh = SeriesState.empty(
                len(new), c, None if est.size == 0 else (st.hist[est].mean(axis=0),
                                                         st.beta[est].mean(axis=0)))
            if est.size:
                with np.errstate(invalid="ignore", divide="ignore"):
                    rel = st.scale[est] / np.abs(st.level[est])
                rel = rel[np.isfinite(rel) & (rel > 0)]
                if rel.size:
                    fresh.prior_scale[:] = float(np.median(rel))
            rows = np.array([self._free.pop() for _ in new], dtype=np.int64)
            st.put(rows, fresh)
            self._last_t[rows] = -np.inf
            for v in self._judged.values():
                v[rows] = np.nan
            self._flag[rows] = False
            self._scale_scores[rows] = np.nan
            self._rows.update(zip(new, rows.tolist()))
        return np.array([self._rows[k] for k in keys], dtype=np.int64)

    def advance(self, keys: Sequence[Any], times: np.ndarray, x: np.ndarray,
                threshold: float) -> Judgement:
        """Consumes the new points of each series and judges its newest one.

        ``keys`` (n,) distinct; ``times`` (n, L) the points' times (rising along each row);
        ``x`` (n, L) their values (NaN: no data). A point is new when it is later than the
        last one consumed for its key and not after the row's newest finite point (trailing
        NaNs are left for a later call, when their data may have arrived). A point already
        consumed is not consumed again (a late revision of it is ignored). A series with no
        new point keeps its previous judgement."""
        x = np.asarray(x, dtype=np.float64)
        times = np.asarray(times, dtype=np.float64)
        n, L = x.shape
        rows = self._rows_of(keys)
        fin = np.isfinite(x)
        idx = np.arange(L)[None, :]
        newest = np.where(fin.any(axis=1), np.where(fin, idx, -1).max(axis=1), -1)
        new = (times > self._last_t[rows, None]) & (idx <= newest[:, None])
        k = new.sum(axis=1)
        for kk in np.unique(k[k > 0]).tolist():
            sel = np.flatnonzero(k == kk)
            r = rows[sel]
            pts = x[sel][new[sel]].reshape(sel.size, kk)  # row-major: each row's new points
            sub = self._state.take(r)
            j = None
            for t in range(kk):
                j = self.det.step(sub, pts[:, t], threshold)
            assert j is not None
            self._state.put(r, sub)
            self._last_t[r] = times[sel, newest[sel]]
            for name in _JUDGED:
                self._judged[name][r] = getattr(j, name)
            self._flag[r] = j.is_anomaly
            self._scale_scores[r] = j.scale_scores
        st = self._state
        return Judgement(score=self._judged["score"][rows].copy(),
                         threshold=np.full(n, float(threshold)),
                         is_anomaly=self._flag[rows].copy(),
                         value=self._judged["value"][rows].copy(),
                         level=self._judged["level"][rows].copy(),
                         sigma=self._judged["sigma"][rows].copy(),
                         run_points=st.run[rows].copy(),
                         scale_scores=self._scale_scores[rows].copy(),
                         scales=self.det.config.judged_scales)

    def state_floats(self) -> int:
        """Floats held per series (the state is bounded: this does not grow with time)."""
        st = self._state
        return sum(int(np.prod(getattr(st, f.name).shape[1:])) for f in fields(st)) + 1 + \
            len(self._judged) + 1 + self._scale_scores.shape[1]


# ------------------------------------------------------------------ registration (models.registry)


def from_card(card: Mapping[str, Any]) -> UnivariateDetector:
    """The custom-metric detector a bundle's card carries (key ``univariate``, the JSON state
    of :class:`UnivariateDetector`); a bundle without one gets the defaults (every family
    at :data:`DEFAULT_THRESHOLD`)."""
    state = card.get("univariate")
    return UnivariateDetector() if state is None else UnivariateDetector.from_state(state)


class MetricDecider:
    """The pipeline's ``metric_anomaly`` decision: each custom metric of ``batch.extra`` (an
    application's, outside the built-in channels) through the detector, streaming: one state
    per pod and metric (a :class:`StreamBank` each, kept across evaluations) advanced by the
    window's points that are new since the last evaluation, so a step costs O(new points)
    and the verdict is the one a causal replay of the pod's whole series gives. Every window
    with data advances its state; per eligible window the metric furthest above its family's
    threshold is reported."""

    def __init__(self, det: UnivariateDetector) -> None:
        self.det = det
        self.banks: dict[str, StreamBank] = {}

    def judge(self, batch: WindowBatch, eligible: np.ndarray, evidence: Evidence, /
              ) -> Judged | None:
        """None without custom metrics; a pod younger than ``NEW_POD_S`` has no baseline."""
        if not batch.extra:
            return None
        eligible = eligible & ~evidence.new_pod
        det, n = self.det, len(batch)
        best = np.full(n, -np.inf)
        flagged, score = np.zeros(n, bool), np.full(n, np.nan)
        threshold = np.full(n, det.default_threshold)
        metric: list[str | None] = [None] * n
        judgements: dict[str, Judgement] = {}
        times = (np.asarray(batch.ts, dtype=np.float64)[:, None]
                 + np.asarray(batch.grid)[None, :])
        for name in sorted(batch.extra):
            x = np.asarray(batch.extra[name], dtype=np.float64)
            rows = np.flatnonzero(np.isfinite(x).any(axis=1))
            if rows.size == 0:
                continue
            thr = det.threshold_for(name)
            bank = self.banks.setdefault(name, StreamBank(det))
            j = bank.advance([batch.keys[i] for i in rows.tolist()], times[rows], x[rows], thr)
            spread: dict[str, np.ndarray] = {f: _scatter(getattr(j, f), rows, n)
                                             for f in j.__dataclass_fields__ if f != "scales"}
            full = replace(j, **spread)  # type: ignore[arg-type]
            judgements[name] = full
            ratio = np.where(np.isfinite(full.score) & eligible, full.score / thr, -np.inf)
            better = ratio > best
            best = np.where(better, ratio, best)
            score[better] = full.score[better]
            threshold[better] = thr
            flagged[:] = np.where(better, full.is_anomaly, flagged)
            for i in np.flatnonzero(better).tolist():
                metric[i] = name

        def explain(i: int, step_s: float) -> tuple[str, dict[str, float]]:
            name = metric[i]
            assert name is not None
            text, values = det.explain(name, judgements[name], i, step_s=step_s)
            return "custom metric anomaly: " + text, values

        return Judged("metric_anomaly", flagged, score, threshold, explain)

    def settle(self, batch: WindowBatch, kinds: list[str], raised: np.ndarray, /) -> None:
        pass

    def forget(self, key: Hashable, /) -> None:
        for name, bank in list(self.banks.items()):
            bank.forget(key)
            if not len(bank):  # no pod left with this custom metric
                del self.banks[name]

    def adopt(self, previous: Decider, /) -> None:
        """Takes over ``previous``'s streams when its detector has the same configuration
        (same streams, same meaning)."""
        if isinstance(previous, MetricDecider) and previous.det.config == self.det.config:
            self.banks = previous.banks
            for bank in self.banks.values():
                bank.det = self.det


def _scatter(a: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n, *a.shape[1:]), False if a.dtype == bool else np.nan,
                  dtype=a.dtype if a.dtype == bool else np.float64)
    out[rows] = a
    return out


SPEC = DetectorSpec(
    name="univariate", cls=UnivariateDetector, input="stream", example=UnivariateDetector,
    kinds=("metric_anomaly",),
    member=Member("univariate", frozenset(), lambda contents, card: from_card(card),
                  card=lambda det: {"univariate": det.get_state()}),
    # custom metrics: the healthy training windows carry no family, so the documented
    # defaults (a family is fitted by infer_threshold where its healthy series exist)
    fit=lambda ctx: Fitted(UnivariateDetector()),
    decider=MetricDecider,
)
"""The custom-metric detector: its state in the card (key ``univariate``), ``metric_anomaly``
verdicts after the leak and drift decisions."""
