"""From windows to verdicts: the leak detector, the drift detector, debouncing, explanations.

Called by the replay (``detector.replay``), the evaluation harness and the daemon. It owns
no I/O: a :class:`WindowBatch` goes in, one :class:`Verdict` per window comes out.

Decision order for a window that is not stale:

1. the leak detector (robust trend on memory) flags it -> ``memory_leak`` or
   ``gpu_memory_leak`` (by the channel that leaks), with the leak rate and time to OOM;
2. else the drift detector (autoencoder + isolation forest) flags it -> ``drift``;
3. else each registered detector with a decider (``detector.models.registry``, in its
   order; the leak and drift detectors are :data:`BUILT_IN`, decided above), each judging the
   windows no earlier one flagged: today the custom-metric detector (a custom metric of the
   pod, ``batch.extra``, outside the built-in channels, far from its own baseline,
   :mod:`detector.models.univariate`) -> ``metric_anomaly``;
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
from typing import Any, cast

import numpy as np

from detector import explain as xp
from detector.channels import LEAK_CHANNELS, channel_words
from detector.errors import ModelIntegrityError
from detector.models import registry
from detector.models.drift import DriftDetector
from detector.models.history import LevelHistory
from detector.models.spec import NEW_POD_S, Decider, Judged, pod_age_s
from detector.models.trend import (
    TTO_BAND,
    LeakReport,
    TrendDetector,
    decision_scores,
    leak_decision_scores,
    page_cache_growth,
)
from detector.models.univariate import UnivariateDetector
from detector.settings import DetectionSettings
from detector.verdicts import Explanation, Kind, Verdict
from detector.windows import PodKey, WindowBatch

__all__ = ["BUILT_IN", "NEW_POD_S", "Pipeline", "decision_scores", "default_model_dir",
           "leak_decision_scores", "pod_age_s", "select_features"]

BUILT_IN: tuple[str, ...] = ("trend", "drift")
"""The registered detectors this module decides itself (a leak latches, a crash loop is
warned from its start, drift on growing memory is the leak it is); every other registered
detector with kinds is decided by its spec's decider."""


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


@dataclass
class Pipeline:
    trend: TrendDetector
    drift: DriftDetector
    settings: DetectionSettings = field(default_factory=DetectionSettings)
    version: str = "unversioned"
    univariate: UnivariateDetector = field(default_factory=UnivariateDetector)
    others: dict[str, Any] = field(default_factory=dict)
    """Any other registered detector (by name), as a bundle gives it."""
    _pods: dict[PodKey, _PodState] = field(default_factory=dict, repr=False)
    _history: LevelHistory = field(default_factory=LevelHistory, repr=False)
    _deciders: dict[str, tuple[Any, Decider]] = field(default_factory=dict, repr=False)

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
            univariate=bundle.univariate,
            others={n: d for n, d in bundle.detectors.items()
                    if n not in ("trend", "drift", "univariate")},
        )

    def detector(self, name: str) -> Any:
        """The registered detector ``name`` of this pipeline."""
        own = {"trend": self.trend, "drift": self.drift, "univariate": self.univariate}
        return own[name] if name in own else self.others[name]

    def deciders(self) -> list[tuple[str, Decider]]:
        """The deciders of the registered detectors that have one, in registry order (each
        built from this pipeline's detector, again when the detector was replaced)."""
        out = []
        for spec in registry.REGISTRY:
            if spec.decider is None or spec.name in BUILT_IN:
                continue
            det = self.detector(spec.name)
            held = self._deciders.get(spec.name)
            if held is None or held[0] is not det:
                dec = spec.decider(det)
                if held is not None:
                    dec.adopt(held[1])
                held = self._deciders[spec.name] = (det, dec)
            out.append((spec.name, held[1]))
        return out

    def drift_features(self, batch: WindowBatch) -> np.ndarray:
        """The columns of ``batch.features`` the drift ensemble was fitted on, in its order."""
        return select_features(batch, self.drift.feature_names)

    def forget(self, key: PodKey) -> None:
        """Drops the debouncing state and the history of a pod that vanished."""
        self._pods.pop(key, None)
        self._history.forget(key)
        for _name, dec in self.deciders():
            dec.forget(key)

    def adopt_state(self, previous: Pipeline) -> None:
        """Carries ``previous``'s per-pod debouncing state over (a hot-reloaded model keeps
        the streaks and the pods' history, so a reload neither re-delays nor repeats a
        verdict)."""
        self._pods = previous._pods
        self._history = previous._history
        before = dict(previous.deciders())
        for name, dec in self.deciders():  # each keeps its state where it means the same
            if name in before:
                dec.adopt(before[name])

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
        # throughput back at levels this incarnation already held (a periodic or daily load
        # coming round again) is no drift, unless the memory grows towards its limit (the
        # leak the drift features saw first) or the kernel OOM-killed the pod before
        cycle = self._history.throughput_revisits(batch, slots) & ~near_leak & (kills == 0)
        raw_drift = drift.is_anomaly & ~stale & ~new_pod & ~raw_leak & ~cycle
        inc_start = self._history.incarnation_start(slots)
        eligible = ~stale & ~new_pod & ~raw_leak & ~raw_drift
        judged: list[Judged] = []
        for _name, dec in self.deciders():  # each judges what no earlier one flagged
            j = dec.judge(batch, eligible)
            if j is not None:
                judged.append(j)
                eligible = eligible & ~j.flagged

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
            owner: Judged | None = None
            if raw_leak[i] or (st.latched and held[i]):
                kind = leak_kind
            elif raw_drift[i]:
                # growing memory that also moves the drift features is the leak it is, and so
                # is the restart storm of a pod its kernel OOM-killed (a crash-looping leak)
                kind = leak_kind if (near_leak[i] or kills[i] > 0) else "drift"
            else:
                owner = next((j for j in judged if j.flagged[i]), None)
                if owner is not None:
                    kind = cast(Kind, owner.kind)
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
            elif owner is not None:
                score, thr = float(owner.score[i]), float(owner.threshold[i])
            else:  # report whichever detector is closest to its threshold
                lr = _ratio(float(leak.score[i]), float(leak_thr[i]))
                dr = _ratio(float(drift.score[i]), drift.threshold)
                score, thr = ((float(leak.score[i]), float(leak_thr[i])) if lr >= dr
                              else (float(drift.score[i]), drift.threshold))
                best = max(lr, dr)
                for j in judged:
                    r = _ratio(float(j.score[i]), float(j.threshold[i]))
                    if r > best:
                        score, thr, best = float(j.score[i]), float(j.threshold[i]), r
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
            if positive and self.settings.explain and owner is not None:
                text, values = owner.explain(i, batch.step_s)
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
