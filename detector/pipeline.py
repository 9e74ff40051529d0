"""From windows to verdicts: the registered detectors' decisions, debouncing, explanations.

Called by the replay (``detector.replay``), the evaluation harness and the daemon. It owns
no I/O: a :class:`WindowBatch` goes in, one :class:`Verdict` per window comes out.

Each registered detector with a decider (``detector.models.registry``, in its order) judges
the windows that are not stale and that no earlier one flagged, given the batch's shared
:class:`~detector.models.spec.Evidence` (the pods' level history, pod ages, incarnations,
and what earlier deciders found). Today:

1. the leak detector (robust trend on memory, :class:`detector.models.trend.LeakDecider`)
   -> ``memory_leak`` or ``gpu_memory_leak`` (by the channel that leaks), with the leak rate
   and time to OOM; a raised leak latches, a crash loop is warned from its start;
2. the drift detector (autoencoder + isolation forest,
   :class:`detector.models.drift.DriftDecider`) -> ``drift``; it holds podguard's only
   rules across detectors (drift on growing memory is the leak it is; a throughput revisit
   is no drift unless the memory grows);
3. the custom-metric detector (a custom metric of the pod, ``batch.extra``, outside the
   built-in channels, far from its own baseline, :mod:`detector.models.univariate`) ->
   ``metric_anomaly``;
4. else ``none``.

A verdict is reported (score, threshold, time to OOM, explanation) by the judgement of the
detector that decides its kind. A pod must be flagged on ``confirm_steps`` consecutive
evaluations before ``is_anomaly`` turns true (one noisy window does not page anybody),
unless its projected OOM comes before one step after that confirmation (a page after the
kill is worth nothing).
Positive verdicts carry SHAP attributions (exact Shapley values over the leak score's
inputs, TreeExplainer + GradientExplainer for the drift score) and one readable sentence.
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
from detector.models import registry
from detector.models.drift import DriftDetector
from detector.models.history import LevelHistory
from detector.models.spec import (
    NEW_POD_S,
    Decider,
    Evidence,
    Judged,
    pod_age_s,
    select_features,
)
from detector.models.trend import TrendDetector, decision_scores, leak_decision_scores
from detector.models.univariate import UnivariateDetector
from detector.settings import DetectionSettings
from detector.verdicts import Explanation, Kind, Verdict
from detector.windows import PodKey, WindowBatch

__all__ = ["NEW_POD_S", "Pipeline", "decision_scores", "default_model_dir",
           "leak_decision_scores", "pod_age_s", "select_features"]


@dataclass
class _PodState:
    streak: int = 0
    kind: Kind = "none"
    incarnation: float = -math.inf  # start of the container incarnation the attribution is of
    attribution: xp.Attribution | None = None  # the last explanation's attribution, its kind
    attribution_kind: Kind = "none"  # and when it was computed (reused for EXPLAIN_EVERY_S)
    attribution_ts: float = -math.inf


EXPLAIN_EVERY_S = 300.0
"""A raised verdict's attributions (of a detector whose judgement attributes in one costly
pass, ``Judged.attribute``) are recomputed at most this often (and whenever its kind
changes); in between, the sentence is rewritten with the current figures over the last
attribution. Explaining every positive pod at every step cost more than scoring them."""


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
            if spec.decider is None:
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
        stale = np.asarray(batch.stale, dtype=bool)
        inc_start = self._history.incarnation_start(slots)
        evidence = Evidence(settings=self.settings, history=self._history, slots=slots,
                            stale=stale, new_pod=pod_age_s(batch) < NEW_POD_S,
                            incarnation=inc_start)
        deciders = self.deciders()
        kinds_of = {s.name: s.kinds for s in registry.REGISTRY}
        eligible = ~stale
        judged: list[Judged] = []
        reporter: dict[str, Judged] = {}  # kind -> the judgement of the detector deciding it
        for name, dec in deciders:  # each judges what no earlier one flagged
            j = dec.judge(batch, eligible, evidence)
            if j is not None:
                judged.append(j)
                eligible = eligible & ~j.flagged
                reporter.update(dict.fromkeys(kinds_of[name], j))

        verdicts: list[Verdict] = []
        kinds: list[str] = []
        raised = np.zeros(n, dtype=bool)
        attribute: dict[int, tuple[Judged, list[int]]] = {}  # rows explained in one pass
        for i, key in enumerate(batch.keys):
            st = self._pods.setdefault(key, _PodState())
            if inc_start[i] != st.incarnation:  # a new container incarnation starts afresh
                st.incarnation, st.attribution = float(inc_start[i]), None
            owner = next((j for j in judged if j.flagged[i]), None)
            kind = cast(Kind, owner.kind_at(i)) if owner is not None else "none"
            rep = reporter.get(kind, owner) if owner is not None else None
            kinds.append(kind)
            if kind == "none":
                st.streak, st.kind = 0, "none"
            elif kind == st.kind:
                st.streak += 1
            else:
                st.streak, st.kind = 1, kind
            positive = kind != "none" and st.streak >= self.settings.confirm_steps
            fields = (rep.verdict_fields(i) if rep is not None and rep.verdict_fields is not None
                      else None)  # a flagged row's time to OOM, raised or not
            if not positive and fields is not None:
                positive = self._too_late_to_confirm(fields, st.streak, batch.step_s)
            raised[i] = positive
            if rep is not None:
                score, thr = float(rep.score[i]), float(rep.threshold[i])
            else:  # report whichever detector is closest to its threshold
                score, thr, best = math.nan, math.nan, -math.inf
                for k, j in enumerate(judged):
                    r = _ratio(float(j.score[i]), float(j.threshold[i]))
                    if k == 0 or r > best:
                        score, thr, best = float(j.score[i]), float(j.threshold[i]), r
            extra: dict[str, Any] = fields if positive and fields is not None else {}
            verdicts.append(Verdict(
                ts=float(batch.ts[i]), namespace=key.namespace, pod=key.pod,
                node=batch.nodes[i], is_anomaly=bool(positive), kind=kind if positive else "none",
                score=score, threshold=float(thr), time_to_oom_s=extra.get("time_to_oom_s"),
                time_to_oom_range_s=extra.get("time_to_oom_range_s"),
                leak_rate_bytes_per_s=extra.get("leak_rate_bytes_per_s"), stale=bool(stale[i]),
                model_version=self.version,
            ))
            if positive and self.settings.explain and rep is not None:
                if rep.attribute is not None:
                    attribute.setdefault(id(rep), (rep, []))[1].append(i)
                else:
                    assert rep.explain is not None
                    text, values = rep.explain(i, batch.step_s)
                    verdicts[i] = _with_explanation(verdicts[i], text, values)

        for _name, dec in deciders:  # the final kinds, before the explanations state facts
            dec.settle(batch, kinds, raised)
        for rep, rows in attribute.values():
            for i, text, values in self._explain(batch, rep, rows):
                verdicts[i] = _with_explanation(verdicts[i], text, values)
        return verdicts

    def _too_late_to_confirm(self, fields: dict[str, Any], streak: int, step_s: float
                             ) -> bool:
        """A flagged pod whose projected OOM comes before one step after its confirmation
        (``confirm_steps``) is raised now: a page confirmed after the kill, or with less
        than a step left to checkpoint, is worth nothing (at a 60 s step a leak killed 9.5
        min after its start was flagged at 8.6 min and killed before the confirming step)."""
        tto = fields.get("time_to_oom_s")
        wait = max(self.settings.confirm_steps - streak, 0) + 1
        return tto is not None and math.isfinite(tto) and 0 <= tto <= wait * step_s

    def _cached(self, key: PodKey, kind: Kind, ts: float) -> xp.Attribution | None:
        st = self._pods[key]
        if (st.attribution is not None and st.attribution_kind == kind
                and ts - st.attribution_ts < EXPLAIN_EVERY_S):
            return st.attribution
        return None

    def _remember(self, key: PodKey, kind: Kind, ts: float, attr: xp.Attribution) -> None:
        st = self._pods[key]
        st.attribution, st.attribution_kind, st.attribution_ts = attr, kind, ts

    def _explain(self, batch: WindowBatch, rep: Judged, rows: list[int]
                 ) -> Iterator[tuple[int, str, dict[str, float]]]:
        """The sentences of ``rows`` raised by ``rep``: its attributions (recomputed in one
        pass for the rows whose last one is due) and the facts it states."""
        assert rep.attribute is not None and rep.facts is not None
        due = [i for i in rows if self._cached(
            batch.keys[i], self._pods[batch.keys[i]].kind, float(batch.ts[i])) is None]
        if due:
            for i, a in zip(due, rep.attribute(due), strict=True):
                self._remember(batch.keys[i], self._pods[batch.keys[i]].kind,
                               float(batch.ts[i]), a)
        for i in rows:
            attr = self._pods[batch.keys[i]].attribution
            assert attr is not None
            opening, facts = rep.facts(i)
            yield i, opening + xp.describe(attr, cast(xp.Facts, facts)), attr.values


def default_model_dir() -> Path:
    """The shipped default model (``data/model``), or ``PODGUARD_DEFAULT_MODEL``."""
    env = os.environ.get("PODGUARD_DEFAULT_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data" / "model"


def _with_explanation(v: Verdict, text: str, values: dict[str, float]) -> Verdict:
    return replace(v, explanation=Explanation(text=text, features=dict(values)))


def _ratio(score: float, thr: float) -> float:
    if not math.isfinite(score):
        return -math.inf
    return score / thr if thr > 0 else score - thr
