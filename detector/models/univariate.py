"""A streaming univariate detector for custom metrics (any metric outside the built-in channels).

Used by :mod:`detector.pipeline` on :attr:`WindowBatch.extra` (application metrics such as
training throughput, request counts or step time) and by ``podguard evaluate --nab``
(:mod:`detector.nab_eval`) on the NAB corpus. Vectorised over a batch of series: one
:meth:`UnivariateDetector.step` advances ``n`` series (pods) by one point each.

How a point is judged (all causal: the verdict at point ``t`` uses points ``<= t`` only)
--------------------------------------------------------------------------------------
* **Per-series baseline**: a robust level ``m`` and scale ``s`` of the series, exponentially
  weighted (half-life :attr:`UnivariateConfig.halflife_points`) and winsorised: a point
  moves them by at most ``clip`` scales, so one spike barely shifts the baseline. At the
  start of a series the weights are those of a plain running mean, so the baseline is usable
  after :attr:`~UnivariateConfig.warmup_points` points. The scale never falls below
  ``scale_floor`` times its slow (long half-life) average, so a series that sits perfectly
  still for a while is not judged at a vanishing scale.
* **Deviation**: the mean of the last ``short_points`` points against the baseline,
  ``z = |mean - m| / s`` (``s`` the baseline before these points arrived).
* **Score** ``= z / q``: ``q`` is the series' own ``quantile``-th percentile of ``z`` over
  its last ``quantile_window`` judged points (a ring buffer per series; no score before
  ``quantile_min`` of them), so the score says how far beyond the
  series' usual high excursions the point is; heavy-tailed series (request counts) and
  quiet ones (a flat line with a little noise) land on one scale. Higher = more anomalous.
* **Learning from what was not flagged** (river's ``filter`` habit): a point scored at or
  above the threshold updates the baseline with ``flagged_weight`` of its normal weight and
  does not update ``q``, so an anomaly does not teach the detector that it is normal, while
  a lasting change of level is still absorbed eventually.
* **Threshold**: one per metric family (the metric name), fitted at a target false-alarm
  rate on healthy series (:meth:`UnivariateDetector.infer_threshold`) and kept as fitted
  state (:meth:`get_state` / :meth:`from_state`, strict JSON, no pickle); families never
  fitted use :data:`DEFAULT_THRESHOLD`.
* **Alarms** (:meth:`UnivariateDetector.alarms`): the first point of an episode, an episode
  being a run of flagged points with gaps shorter than ``episode_gap_points``; this is what
  pages somebody once, and what NAB scores.

``explain`` gives one readable sentence ("step time 2.3x its usual level for 6 min (usual
0.41 ± 0.03)") and exact Shapley values of the score over the points of the short mean (the
deviation is linear in them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from detector.errors import ModelIntegrityError, NotFittedError

FORMAT = "podguard.univariate/1"
DEFAULT_THRESHOLD = 1.2
"""Threshold of a metric family with no fitted one: :meth:`UnivariateDetector.infer_threshold`
on the five healthy series of NAB's ``artificialNoAnomaly`` at a false-alarm rate of 1e-4 per
point gives 1.18 with the default config; rounded up to 1.2. Nothing else was fitted."""

_SIGMA_PER_MAD = 1.2533  # E|x - mu| = sigma * sqrt(2/pi) for a normal variable


@dataclass(frozen=True)
class UnivariateConfig:
    """Generic settings (in points of the series' own grid); none is fitted per family."""

    halflife_points: float = 350.0  # half-life of the baseline level and scale
    long_halflife_points: float = 2000.0  # half-life of the slow scale behind the floor
    short_points: int = 3  # points averaged into the judged value
    clip: float = 3.0  # winsorising of baseline updates, in scales
    scale_floor: float = 0.1  # the scale is at least this fraction of the slow scale
    quantile: float = 0.99  # the usual high excursion that the score is relative to
    quantile_window: int = 2000  # judged points the quantile is taken over
    quantile_min: int = 100  # judged points needed before the first score
    warmup_points: int = 30  # points before the first score of a series
    flagged_weight: float = 0.1  # baseline weight of a flagged point (1 = like any other)
    episode_gap_points: int = 100  # flagged points closer than this belong to one episode

    def __post_init__(self) -> None:
        bad = []
        if not self.halflife_points > 0 or not self.long_halflife_points > 0:
            bad.append("half-lives must be > 0")
        if self.short_points < 1 or self.warmup_points < self.short_points:
            bad.append("short_points must be >= 1 and <= warmup_points")
        if not 0 < self.quantile < 1:
            bad.append("quantile must be in (0, 1)")
        if not self.clip > 0 or not self.scale_floor >= 0 or not 0 <= self.flagged_weight <= 1:
            bad.append("clip > 0, scale_floor >= 0, 0 <= flagged_weight <= 1")
        if not 1 <= self.quantile_min <= self.quantile_window or self.episode_gap_points < 0:
            bad.append("1 <= quantile_min <= quantile_window, episode_gap_points >= 0")
        if bad:
            raise ValueError("invalid UnivariateConfig: " + "; ".join(bad))


@dataclass
class SeriesState:
    """The running state of ``n`` series (one row each); plain arrays."""

    level: np.ndarray  # (n,) baseline level
    scale: np.ndarray  # (n,) baseline mean absolute deviation
    slow_scale: np.ndarray  # (n,) long half-life mean absolute deviation
    zs: np.ndarray  # (n, quantile_window) the last judged z of each series (-inf: none)
    zs_count: np.ndarray  # (n,) int64, z values written to ``zs`` so far
    count: np.ndarray  # (n,) int64, points seen
    recent: np.ndarray  # (n, short_points) the last points, newest last
    run: np.ndarray  # (n,) int64, consecutive flagged points up to now
    since_flag: np.ndarray  # (n,) int64, points since the last flagged one

    @classmethod
    def empty(cls, n: int, short_points: int, quantile_window: int) -> SeriesState:
        z = np.zeros(n, dtype=np.float64)
        return cls(level=z.copy(), scale=z.copy(), slow_scale=z.copy(),
                   zs=np.full((n, quantile_window), -np.inf),
                   zs_count=np.zeros(n, dtype=np.int64), count=np.zeros(n, dtype=np.int64),
                   recent=np.full((n, short_points), np.nan),
                   run=np.zeros(n, dtype=np.int64),
                   since_flag=np.full(n, np.iinfo(np.int64).max // 2, dtype=np.int64))


@dataclass(frozen=True)
class Judgement:
    """The detector's view of the newest point of each series."""

    score: np.ndarray  # (n,) z / q; NaN while warming up or without data
    threshold: np.ndarray  # (n,) the family threshold of each series
    is_anomaly: np.ndarray  # (n,) score >= threshold
    value: np.ndarray  # (n,) the judged value (mean of the last short_points points)
    level: np.ndarray  # (n,) the baseline level it was judged against
    sigma: np.ndarray  # (n,) the baseline scale as a standard deviation
    run_points: np.ndarray  # (n,) consecutive flagged points up to and including this one
    recent: np.ndarray  # (n, short_points) the points averaged into ``value``
    q: np.ndarray  # (n,) the series' usual high excursion z


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

    def new_state(self, n: int, points: int | None = None) -> SeriesState:
        """A fresh state for ``n`` series; ``points``: how many points it will see at most
        (a shorter quantile buffer, same results, when that is below ``quantile_window``)."""
        w = self.config.quantile_window if points is None else min(points,
                                                                     self.config.quantile_window)
        return SeriesState.empty(n, self.config.short_points, max(w, 1))

    def step(self, state: SeriesState, x: np.ndarray, threshold: np.ndarray | float
             ) -> Judgement:
        """Advances every series by one point ``x`` ((n,), NaN = no data: state unchanged)
        and judges it against ``threshold`` (scalar or (n,))."""
        c = self.config
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n,))
        ok = np.isfinite(x)
        first = ok & (state.count == 0)
        state.level[first] = x[first]
        recent = state.recent
        recent[ok, :-1] = recent[ok, 1:]
        recent[ok, -1] = x[ok]
        with np.errstate(invalid="ignore", divide="ignore"):
            have = np.isfinite(recent)
            value = np.where(have, recent, 0.0).sum(axis=1) / have.sum(axis=1)
            floor = np.maximum(c.scale_floor * state.slow_scale, 1e-12 * (np.abs(state.level)
                                                                          + 1e-12))
            sc = np.maximum(state.scale, floor)
            dev = value - state.level
            z = np.abs(dev) / sc
            scored = ok & (state.count >= c.warmup_points)
            q = _buffer_quantile(state.zs, state.zs_count, c.quantile)
            scored &= state.zs_count >= c.quantile_min
            score = np.where(scored & np.isfinite(q) & (q > 0), z / q, np.nan)
        flagged = scored & (score >= thr)
        # -- learn: baseline from the newest point (winsorised), less from flagged points
        cnt = state.count.astype(np.float64)
        a = np.maximum(1.0 - 0.5 ** (1.0 / c.halflife_points), 1.0 / (cnt + 1.0))
        a_slow = np.maximum(1.0 - 0.5 ** (1.0 / c.long_halflife_points), 1.0 / (cnt + 1.0))
        w = np.where(flagged, c.flagged_weight, 1.0)
        r = np.where(ok, x - state.level, 0.0)
        lim = c.clip * sc
        learn = ok & ~first
        rc = np.clip(r, -lim, lim)
        ar = np.minimum(np.abs(r), lim) if c.clip else np.abs(r)
        upd = learn & (state.count >= 1)
        state.level = np.where(learn, state.level + a * w * rc, state.level)
        # the scale starts from the first deviations unclipped (no scale to clip against yet)
        ar = np.where(state.count <= 1, np.abs(r), ar)
        state.scale = np.where(upd, state.scale + a * w * (ar - state.scale), state.scale)
        state.slow_scale = np.where(upd, state.slow_scale + a_slow * w * (ar - state.slow_scale),
                                    state.slow_scale)
        # -- the z of every judgeable point that was not flagged joins the quantile's buffer
        keep = ok & (state.count >= c.warmup_points) & ~flagged & np.isfinite(z)
        rows = np.flatnonzero(keep)
        if rows.size:
            state.zs[rows, state.zs_count[rows] % state.zs.shape[1]] = z[rows]
            state.zs_count[rows] += 1
        state.count = state.count + ok
        state.run = np.where(flagged, state.run + 1, np.where(ok, 0, state.run))
        state.since_flag = np.where(flagged, 0, state.since_flag + ok)
        # (state.level and state.run were rebound above, so only ``recent`` needs a copy)
        return Judgement(score=score, threshold=np.array(thr), is_anomaly=flagged, value=value,
                         level=state.level - np.where(learn, a * w * rc, 0.0),
                         sigma=sc * _SIGMA_PER_MAD, run_points=state.run,
                         recent=recent.copy(), q=q)

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
                                 f"{self.config.warmup_points + self.config.quantile_min} "
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
        return describe(metric, j, i, step_s=step_s, unit=unit,
                        short_points=self.config.short_points)

    # -- persisted state ------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Strict-JSON state: format, config, thresholds per family, default threshold."""
        return {"format": FORMAT, "config": asdict(self.config),
                "thresholds": {k: float(v) for k, v in sorted(self.thresholds.items())},
                "default_threshold": float(self.default_threshold),
                "fit_info": self.fit_info}

    @classmethod
    def from_state(cls, state: object) -> UnivariateDetector:
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise ModelIntegrityError(f"not a podguard univariate state (format != {FORMAT})")
        keys = {"format", "config", "thresholds", "default_threshold", "fit_info"}
        if set(state) != keys:
            raise ModelIntegrityError(f"univariate state keys {sorted(state)} != {sorted(keys)}")
        cfg, thr, dflt = state["config"], state["thresholds"], state["default_threshold"]
        names = {f.name for f in fields(UnivariateConfig)}
        if not isinstance(cfg, Mapping) or set(cfg) - names:
            raise ModelIntegrityError(f"univariate config: unknown keys {sorted(set(cfg) - names)}"
                                      if isinstance(cfg, Mapping) else
                                      "univariate config must be an object")
        if not isinstance(thr, Mapping) or not all(
                isinstance(k, str) and _is_number(v) and v > 0 for k, v in thr.items()):
            raise ModelIntegrityError("univariate thresholds must map family -> number > 0")
        if not _is_number(dflt) or dflt <= 0:
            raise ModelIntegrityError(f"univariate default_threshold {dflt!r} is not > 0")
        try:
            config = UnivariateConfig(**cfg)
        except (TypeError, ValueError) as e:
            raise ModelIntegrityError(f"univariate config: {e}") from e
        info = state["fit_info"]
        return cls(config=config, thresholds={k: float(v) for k, v in thr.items()},
                   default_threshold=float(dflt),
                   fit_info=dict(info) if isinstance(info, Mapping) else {})

    def check_fitted(self, family: str) -> float:
        if family not in self.thresholds:
            raise NotFittedError(f"no threshold fitted for metric family {family!r}")
        return self.thresholds[family]


def _buffer_quantile(zs: np.ndarray, count: np.ndarray, p: float) -> np.ndarray:
    """The ``p``-quantile ('higher') of the filled part of each row of ``zs`` (NaN if none)."""
    n, w = zs.shape
    filled = np.minimum(count, w)
    out = np.full(n, np.nan)
    # per distinct fill count (usually one: series of a batch advance together), the element
    # of rank w - filled + k, k = ceil(p (filled - 1)), among the row's values in rising order
    # (-inf, i.e. unfilled, first)
    for f in np.unique(filled[filled > 0]).tolist():
        rows = np.flatnonzero(filled == f)
        rank = w - f + math.ceil(p * (f - 1))
        out[rows] = np.partition(zs[rows], rank, axis=1)[:, rank]
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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


def describe(metric: str, j: Judgement, i: int, *, step_s: float | None = None,
             unit: str = "", short_points: int = 1) -> tuple[str, dict[str, float]]:
    """The sentence and attributions of series ``i`` of ``j`` (see :class:`UnivariateDetector`).

    Attributions: the score is ``|mean(recent) - level| / (sigma_mad * q)``, linear in each
    recent point for a fixed sign, so each point's exact Shapley value (against the baseline
    level as the reference) is ``sign * (x_k - level) / (k * sigma_mad * q)``; they sum to the
    score. Named ``"<metric>@-<age>"`` (``@-0`` the newest point)."""
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
    recent = np.asarray(j.recent[i], dtype=np.float64)
    finite = np.isfinite(recent)
    k = max(int(finite.sum()), 1)
    denom = sigma / _SIGMA_PER_MAD * float(j.q[i])
    sign = 1.0 if value >= level else -1.0
    attr: dict[str, float] = {}
    if denom > 0 and math.isfinite(denom):
        for age, xk in enumerate(recent[::-1][:max(short_points, 1)]):
            if math.isfinite(xk):
                attr[f"{metric}@-{age}"] = float(sign * (xk - level) / (k * denom))
    return sentence, attr
