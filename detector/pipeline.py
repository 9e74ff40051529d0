"""From windows to verdicts: the leak detector, the drift detector, debouncing, explanations.

Called by the replay (``detector.replay``), the evaluation harness and the daemon. It owns
no I/O: a :class:`WindowBatch` goes in, one :class:`Verdict` per window comes out.

Decision order for a window that is not stale:

1. the leak detector (robust trend on memory) flags it -> ``memory_leak`` or
   ``gpu_memory_leak`` (by the channel that leaks), with the leak rate and time to OOM;
2. else the drift detector (autoencoder + isolation forest) flags it -> ``drift``;
3. else a custom metric of the pod (``batch.extra``, outside the built-in channels) is far
   from its own baseline (:mod:`detector.models.univariate`) -> ``metric_anomaly``;
4. else ``none``.

A pod must be flagged on ``confirm_steps`` consecutive evaluations before ``is_anomaly``
turns true (one noisy window does not page anybody). Positive verdicts carry SHAP
attributions (exact Shapley values over the leak score's inputs, TreeExplainer +
GradientExplainer for the drift score) and one readable sentence.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from detector import explain as xp
from detector.channels import LEAK_CHANNELS, channel_words
from detector.errors import ModelIntegrityError
from detector.models.drift import DriftDetector
from detector.models.history import LevelHistory
from detector.models.trend import TTO_BAND, LeakReport, TrendDetector, page_cache_growth
from detector.models.univariate import Judgement, StreamBank, UnivariateDetector
from detector.settings import DetectionSettings
from detector.verdicts import Explanation, Kind, Verdict
from detector.windows import CHANNELS, PodKey, WindowBatch


@dataclass
class _PodState:
    streak: int = 0
    kind: Kind = "none"
    latched: bool = False  # a raised leak stays raised while its score stays above half
    leak_since: float = math.nan  # estimated start of the growth now judged a leak
    incarnation: float = -math.inf  # start of the container incarnation those refer to
    attribution: xp.Attribution | None = None  # the last explanation's attribution, its kind
    attribution_kind: Kind = "none"  # and when it was computed (reused for EXPLAIN_EVERY_S)
    attribution_ts: float = -math.inf


EXPLAIN_EVERY_S = 300.0
"""A raised verdict's attributions are recomputed at most this often (and whenever its kind
changes); in between, the sentence is rewritten with the current figures over the last
attribution. Explaining every positive pod at every step cost more than scoring them."""


LATCH_FRACTION = 0.5
"""A raised leak stays raised while its score is above this fraction of the threshold (a
leak riding on a load cycle dips under it in every falling half; no resolve and re-fire)."""



CRASHLOOP_KILLS = 2
"""OOM kills of a pod after which its next incarnations are warned from their start, until
one outlives the last killed one (a crash-looping leak: the kernel kills each incarnation
at about the same age; the verdict names the kills so far)."""


NEAR_LEAK_FRACTION = 0.25
"""When the drift detector fires on a pod whose memory grows towards its limit (projected
OOM within the horizon, leak score above this fraction of its threshold), the verdict is the
leak it is, with its time to OOM (GPU memory creep moves the drift features first)."""


NEW_POD_S = 300.0
"""A pod whose data in its window spans less than this (it started inside the window) is
judged for leaks only; the window engine marks windows stale only for their first
``min_history_s`` (2 min), so a crash loop's incarnations that the kernel kills within
minutes can be warned of."""


def pod_age_s(batch: WindowBatch) -> np.ndarray:
    """(n,) seconds of data in each window since its pod's first working-set point (inf for
    a pod older than the window or without memory data)."""
    ws = batch.values[:, CHANNELS.index("mem_working_set"), :]  # a view, no copy
    fin = np.isfinite(ws)
    L = ws.shape[-1]
    first = np.argmax(fin, axis=-1)
    return np.where(fin.any(axis=-1) & (first > 0), (L - first) * batch.step_s, np.inf)


@dataclass
class Pipeline:
    trend: TrendDetector
    drift: DriftDetector
    settings: DetectionSettings = field(default_factory=DetectionSettings)
    version: str = "unversioned"
    univariate: UnivariateDetector = field(default_factory=UnivariateDetector)
    _pods: dict[PodKey, _PodState] = field(default_factory=dict, repr=False)
    _history: LevelHistory = field(default_factory=LevelHistory, repr=False)
    _extra: dict[str, StreamBank] = field(default_factory=dict, repr=False)  # custom metrics

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path | None = None, *,
             settings: DetectionSettings | None = None) -> Pipeline:
        """The pipeline of a saved model bundle (``None``: the default model in ``data/``)."""
        from detector.models import store

        bundle = store.load_bundle(default_model_dir() if model_dir is None else model_dir)
        return cls(
            trend=TrendDetector.from_state(bundle.trend_state),
            drift=bundle.drift,
            settings=settings or DetectionSettings(),
            version=str(bundle.card.get("version", "unknown")),
            univariate=_univariate_of(bundle.card),
        )

    def drift_features(self, batch: WindowBatch) -> np.ndarray:
        """The columns of ``batch.features`` the drift ensemble was fitted on, in its order."""
        return select_features(batch, self.drift.feature_names)

    def forget(self, key: PodKey) -> None:
        """Drops the debouncing state and the history of a pod that vanished."""
        self._pods.pop(key, None)
        self._history.forget(key)
        for name, bank in list(self._extra.items()):
            bank.forget(key)
            if not len(bank):  # no pod left with this custom metric
                del self._extra[name]

    def adopt_state(self, previous: Pipeline) -> None:
        """Carries ``previous``'s per-pod debouncing state over (a hot-reloaded model keeps
        the streaks and the pods' history, so a reload neither re-delays nor repeats a
        verdict)."""
        self._pods = previous._pods
        self._history = previous._history
        if previous.univariate.config == self.univariate.config:  # same streams, same meaning
            self._extra = previous._extra
            for bank in self._extra.values():
                bank.det = self.univariate

    def known_pods(self) -> list[PodKey]:
        return list(self._pods)

    # -- scoring ------------------------------------------------------------------------
    def evaluate(self, batch: WindowBatch) -> list[Verdict]:
        n = len(batch)
        if n == 0:
            return []
        slots = self._history.update(batch)
        leak = self.trend.predict(batch)  # the trend analysis runs once per batch
        report = self.trend.leak_report(batch)
        drift_x = self.drift_features(batch)
        drift = self.drift.predict(drift_x)
        stale = np.asarray(batch.stale, dtype=bool)

        tto_all = np.asarray(report.time_to_oom_s, dtype=np.float64)
        far = ~(tto_all <= self.settings.leak_horizon_s) & ~np.isnan(tto_all)
        # a crash loop: after each OOM kill the next incarnation is judged with that evidence
        kills = self._history.oom_kills(slots)
        leak_thr = leak.threshold / (1.0 + np.minimum(kills, 3))
        # a return to a level already held, or working-set growth that is page cache (flat
        # RSS; the file pages of a reader), is no leak
        revisit = (self._history.revisits(batch, slots, report.channel, report.view_s,
                                          report.limit_bytes)
                   | page_cache_growth(batch, report))
        leak_score = np.asarray(leak.score, dtype=np.float64)
        by_life = self._history.time_to_oom_by_last_life(slots, batch.ts)
        # a crash loop named as one: after CRASHLOOP_KILLS OOM kills, an incarnation younger
        # than the last killed one is warned from its start (its time to OOM: that life's)
        crash_loop = ((kills >= CRASHLOOP_KILLS) & ~stale
                      & (np.nan_to_num(by_life, nan=0.0) > 0))
        raw_leak = ((leak_score > leak_thr) & ~stale & ~far & ~revisit) | crash_loop
        held = (leak_score > LATCH_FRACTION * leak_thr) & ~stale & ~far
        near_leak = (leak_score > NEAR_LEAK_FRACTION * leak_thr) & ~far & ~revisit
        # a pod seen for less than NEW_POD_S is judged only for a leak (its imminent OOM):
        # its drift features and custom metrics have no baseline yet
        new_pod = pod_age_s(batch) < NEW_POD_S
        raw_drift = drift.is_anomaly & ~stale & ~new_pod & ~raw_leak
        inc_start = self._history.incarnation_start(slots)
        metric = _judge_extra(self.univariate, self._extra, batch,
                              ~stale & ~new_pod & ~raw_leak & ~raw_drift)

        verdicts: list[Verdict] = []
        explain_leak: list[int] = []
        explain_drift: list[int] = []
        for i, key in enumerate(batch.keys):
            st = self._pods.setdefault(key, _PodState())
            if inc_start[i] != st.incarnation:  # a new container incarnation starts afresh
                st.incarnation, st.latched, st.leak_since = float(inc_start[i]), False, math.nan
                st.attribution = None
            leak_kind: Kind = ("gpu_memory_leak" if report.channel[i] == "gpu_fb_used"
                               else "memory_leak")
            kind: Kind = "none"
            if raw_leak[i] or (st.latched and held[i]):
                kind = leak_kind
            elif raw_drift[i]:
                # growing memory that also moves the drift features is the leak it is, and so
                # is the restart storm of a pod its kernel OOM-killed (a crash-looping leak)
                kind = leak_kind if (near_leak[i] or kills[i] > 0) else "drift"
            elif metric is not None and metric.flagged[i]:
                kind = "metric_anomaly"
            if kind in ("memory_leak", "gpu_memory_leak"):
                if math.isnan(st.leak_since):
                    view = report.view_s[i] if report.view_s is not None else math.nan
                    st.leak_since = float(batch.ts[i]) - (float(view) if math.isfinite(
                        float(view)) else 0.0)
            else:
                st.latched = False
                if not near_leak[i]:
                    st.leak_since = math.nan
            if kind == "none":
                st.streak, st.kind = 0, "none"
            elif kind == st.kind:
                st.streak += 1
            else:
                st.streak, st.kind = 1, kind
            positive = kind != "none" and st.streak >= self.settings.confirm_steps
            if positive and kind in ("memory_leak", "gpu_memory_leak"):
                st.latched = True
            if kind in ("memory_leak", "gpu_memory_leak"):
                score, thr = float(leak.score[i]), float(leak_thr[i])
            elif kind == "drift":
                score, thr = float(drift.score[i]), drift.threshold
            elif kind == "metric_anomaly" and metric is not None:
                score, thr = float(metric.score[i]), float(metric.threshold[i])
            else:  # report whichever detector is closest to its threshold
                lr = _ratio(float(leak.score[i]), float(leak_thr[i]))
                dr = _ratio(float(drift.score[i]), drift.threshold)
                score, thr = ((float(leak.score[i]), float(leak_thr[i])) if lr >= dr
                              else (float(drift.score[i]), drift.threshold))
                if metric is not None and _ratio(float(metric.score[i]), float(
                        metric.threshold[i])) > max(lr, dr):
                    score, thr = float(metric.score[i]), float(metric.threshold[i])
            tto = rng = rate = None
            if kind in ("memory_leak", "gpu_memory_leak"):
                tto = _finite(report.time_to_oom_s[i])
                lo, hi = _finite(report.time_to_oom_low_s[i]), _finite(report.time_to_oom_high_s[i])
                rng = (lo, hi) if lo is not None and hi is not None else None
                rate = _finite(report.rate_bytes_per_s[i])
                if tto is None and kills[i] > 0:  # no growth measured yet: the last life's
                    tto = _finite(by_life[i])
                    if tto is not None:
                        rng = (tto * TTO_BAND[0], tto * TTO_BAND[1])
            verdicts.append(Verdict(
                ts=float(batch.ts[i]), namespace=key.namespace, pod=key.pod,
                node=batch.nodes[i], is_anomaly=bool(positive), kind=kind if positive else "none",
                score=score, threshold=float(thr), time_to_oom_s=tto if positive else None,
                time_to_oom_range_s=rng if positive else None,
                leak_rate_bytes_per_s=rate if positive else None, stale=bool(stale[i]),
                model_version=self.version,
            ))
            if positive and self.settings.explain and kind == "metric_anomaly" and metric:
                text, values = metric.explain(self.univariate, i, batch.step_s)
                verdicts[i] = _with_explanation(verdicts[i], text, values)
            elif positive and self.settings.explain:
                (explain_leak if kind != "drift" else explain_drift).append(i)

        if explain_leak:
            for i, text, values in self._explain_leak(batch, explain_leak, report, kills):
                verdicts[i] = _with_explanation(verdicts[i], text, values)
        if explain_drift:
            stale_rows = [i for i in explain_drift
                          if self._cached(batch.keys[i], "drift", float(batch.ts[i])) is None]
            if stale_rows:
                fresh = self.drift.explain(drift_x[np.asarray(stale_rows)])
                for i, a in zip(stale_rows, fresh, strict=True):
                    self._remember(batch.keys[i], "drift", float(batch.ts[i]), a)
            for i in explain_drift:
                attr = self._pods[batch.keys[i]].attribution
                assert attr is not None
                facts: xp.Facts = {"score": float(drift.score[i]), "threshold": drift.threshold}
                text = "pre-failure drift, " + xp.describe(attr, facts)
                verdicts[i] = _with_explanation(verdicts[i], text, attr.values)
        return verdicts

    def _cached(self, key: PodKey, kind: Kind, ts: float) -> xp.Attribution | None:
        st = self._pods[key]
        if (st.attribution is not None and st.attribution_kind == kind
                and ts - st.attribution_ts < EXPLAIN_EVERY_S):
            return st.attribution
        return None

    def _remember(self, key: PodKey, kind: Kind, ts: float, attr: xp.Attribution) -> None:
        st = self._pods[key]
        st.attribution, st.attribution_kind, st.attribution_ts = attr, kind, ts

    def _explain_leak(self, batch: WindowBatch, rows: list[int], report: LeakReport,
                      kills: np.ndarray) -> Iterator[tuple[int, str, dict[str, float]]]:
        """Exact Shapley values over the leak score's inputs, plus the leak's facts."""
        stale_rows = [i for i in rows if self._cached(
            batch.keys[i], self._pods[batch.keys[i]].kind, float(batch.ts[i])) is None]
        if stale_rows:  # the rows whose attribution is due, in one pass, from the batch's one
            fresh = self.trend.explain(batch, stale_rows)  # analysis
            for i, a in zip(stale_rows, fresh, strict=True):
                self._remember(batch.keys[i], self._pods[batch.keys[i]].kind,
                               float(batch.ts[i]), a)
        for i in rows:
            attr = self._pods[batch.keys[i]].attribution
            assert attr is not None
            facts: xp.Facts = {"subject": _SUBJECT.get(str(report.channel[i]), "memory")}
            rate = float(report.rate_bytes_per_s[i])
            if math.isfinite(rate):
                facts["growth_bytes_per_s"] = rate
            since = self._pods[batch.keys[i]].leak_since
            if math.isfinite(since):
                facts["growth_duration_s"] = max(float(batch.ts[i]) - since, 0.0)
            if int(kills[i]) > 0:
                facts["oom_kills"] = int(kills[i])
            tto = float(report.time_to_oom_s[i])
            if math.isfinite(tto):
                facts["time_to_oom_s"] = tto
                lo, hi = float(report.time_to_oom_low_s[i]), float(report.time_to_oom_high_s[i])
                if math.isfinite(lo) and math.isfinite(hi):
                    facts["time_to_oom_low_s"], facts["time_to_oom_high_s"] = lo, hi
            limit = float(report.limit_bytes[i])
            if math.isfinite(limit):
                facts["limit_bytes"] = limit
            yield i, xp.describe(attr, facts), attr.values


_SUBJECT = {c: channel_words(c) for c in LEAK_CHANNELS}


@dataclass(frozen=True)
class _ExtraVerdicts:
    """The custom metrics' judgement of each window: the most anomalous metric of each."""

    flagged: np.ndarray  # (n,) bool
    score: np.ndarray  # (n,) of the chosen metric (NaN: none judged)
    threshold: np.ndarray  # (n,)
    metric: list[str | None]  # the chosen metric of each window
    judgements: dict[str, Judgement]

    def explain(self, det: UnivariateDetector, i: int, step_s: float
                ) -> tuple[str, dict[str, float]]:
        name = self.metric[i]
        assert name is not None
        text, values = det.explain(name, self.judgements[name], i, step_s=step_s)
        return "custom metric anomaly: " + text, values


def _judge_extra(det: UnivariateDetector, banks: dict[str, StreamBank], batch: WindowBatch,
                 eligible: np.ndarray) -> _ExtraVerdicts | None:
    """Each custom metric of ``batch.extra`` through ``det``, streaming: one state per pod
    and metric (``banks``, kept across evaluations) advanced by the window's points that are
    new since the last evaluation, so a step costs O(new points) and the verdict is the one a
    causal replay of the pod's whole series gives. Every window with data advances its
    state; per ``eligible`` window the metric furthest above its family's threshold is
    reported. ``None`` without custom metrics."""
    if not batch.extra:
        return None
    n = len(batch)
    best = np.full(n, -np.inf)
    out = _ExtraVerdicts(flagged=np.zeros(n, bool), score=np.full(n, np.nan),
                         threshold=np.full(n, det.default_threshold), metric=[None] * n,
                         judgements={})
    times = np.asarray(batch.ts, dtype=np.float64)[:, None] + np.asarray(batch.grid)[None, :]
    for name in sorted(batch.extra):
        x = np.asarray(batch.extra[name], dtype=np.float64)
        rows = np.flatnonzero(np.isfinite(x).any(axis=1))
        if rows.size == 0:
            continue
        thr = det.threshold_for(name)
        bank = banks.setdefault(name, StreamBank(det))
        j = bank.advance([batch.keys[i] for i in rows.tolist()], times[rows], x[rows], thr)
        spread: dict[str, np.ndarray] = {f: _scatter(getattr(j, f), rows, n)
                                         for f in j.__dataclass_fields__ if f != "scales"}
        full = replace(j, **spread)  # type: ignore[arg-type]
        out.judgements[name] = full
        ratio = np.where(np.isfinite(full.score) & eligible, full.score / thr, -np.inf)
        better = ratio > best
        best = np.where(better, ratio, best)
        out.score[better] = full.score[better]
        out.threshold[better] = thr
        out.flagged[:] = np.where(better, full.is_anomaly, out.flagged)
        for i in np.flatnonzero(better).tolist():
            out.metric[i] = name
    return out


def _scatter(a: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n, *a.shape[1:]), False if a.dtype == bool else np.nan,
                  dtype=a.dtype if a.dtype == bool else np.float64)
    out[rows] = a
    return out


def _univariate_of(card: dict) -> UnivariateDetector:
    """The custom-metric detector a bundle's card carries (key ``univariate``, the JSON state
    of :class:`UnivariateDetector`); a bundle without one gets the defaults (every family
    at :data:`detector.models.univariate.DEFAULT_THRESHOLD`)."""
    state = card.get("univariate")
    return UnivariateDetector() if state is None else UnivariateDetector.from_state(state)


def select_features(batch: WindowBatch, names: tuple[str, ...]) -> np.ndarray:
    """The columns ``names`` of ``batch.features`` (ModelIntegrityError if one is missing)."""
    if tuple(batch.feature_names) == tuple(names):
        return batch.features
    try:
        cols = [batch.feature_names.index(n) for n in names]
    except ValueError as e:
        raise ModelIntegrityError(
            f"the model needs a feature the window engine does not produce ({e}): "
            "retrain the model for this version of podguard") from e
    return batch.features[:, cols]


def default_model_dir() -> Path:
    """The shipped default model (``data/model``), or ``PODGUARD_DEFAULT_MODEL``."""
    env = os.environ.get("PODGUARD_DEFAULT_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data" / "model"


def _with_explanation(v: Verdict, text: str, values: dict[str, float]) -> Verdict:
    return replace(v, explanation=Explanation(text=text, features=dict(values)))


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _ratio(score: float, thr: float) -> float:
    if not math.isfinite(score):
        return -math.inf
    return score / thr if thr > 0 else score - thr


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
