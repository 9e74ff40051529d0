"""The detector contract shared by every model in podguard.

Modelled on alibi-detect and pyod: ``fit`` learns what normal looks like and returns
``self``; ``score`` returns one number per row, **higher = more anomalous**;
``infer_threshold`` fits the decision threshold as state from healthy data at a target
false-positive rate; ``predict`` returns scores, the threshold and the verdicts;
``explain`` attributes a score to named features.

Detectors that work on a fixed feature vector take ``X`` as a float32 array of shape
``(n, d)`` whose columns are named by ``feature_names`` (given at ``fit``). NaN marks a
missing feature and must be tolerated (imputed), not raised on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from detector.errors import NotFittedError, ThresholdNotInferredError
from detector.models.state import ArrayDetectorState, read_state
from detector.windows.batch import WindowBatch


@dataclass(frozen=True)
class Prediction:
    """Output of :meth:`Detector.predict`."""

    score: np.ndarray  # (n,) float, higher = more anomalous
    threshold: float
    is_anomaly: np.ndarray  # (n,) bool, score > threshold


@dataclass(frozen=True)
class Attribution:
    """Why one row got its score: SHAP value per feature (sums to score - base_value)."""

    base_value: float
    values: dict[str, float] = field(default_factory=dict)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` features that pushed the score up the most, largest first."""
        ranked = sorted(self.values.items(), key=lambda kv: kv[1], reverse=True)
        return ranked[:k]


In = TypeVar("In", contravariant=True)


@runtime_checkable
class ScoringDetector(Protocol[In]):
    """What every detector does with its input ``In`` once fitted: score / infer_threshold /
    predict / explain (higher = more anomalous; ``explain`` gives one :class:`Attribution`
    per row, summing to its score minus ``base_value``). How it is fitted depends on its
    input: :class:`Detector` (feature arrays) or :class:`WindowDetector` (window batches).
    The contract suite (``tests/test_detector_contract.py``) runs over every registered
    detector (``detector.models.registry``); :class:`StreamingDetector` is the variant for
    series judged point by point."""

    name: str

    def score(self, data: In, /) -> np.ndarray: ...

    def infer_threshold(self, data: In, fpr: float, /) -> float: ...

    def predict(self, data: In, /) -> Prediction: ...

    def explain(self, data: In, /) -> list[Attribution]: ...


@runtime_checkable
class Detector(ScoringDetector[np.ndarray], Protocol):
    """A detector on feature arrays ``X`` ``(n, d)``: fit / score / infer_threshold /
    predict / explain (the autoencoder, the isolation forest, the drift fusion)."""

    def fit(self, X: np.ndarray, feature_names: tuple[str, ...]) -> Detector: ...


@runtime_checkable
class WindowDetector(ScoringDetector[WindowBatch], Protocol):
    """A detector on window batches (:class:`detector.windows.WindowBatch`): the leak
    detector (``detector.models.trend``). ``fit`` learns from healthy windows."""

    def fit(self, batch: WindowBatch, /) -> WindowDetector: ...


@runtime_checkable
class StreamingDetector(Protocol):
    """A detector of one series per row, judged point by point (the custom-metric detector,
    ``detector.models.univariate``): ``score`` of ``x`` (n, T) is (n, T), higher = more
    anomalous, NaN while a series warms up; thresholds are fitted state per metric family
    (``infer_threshold`` on healthy series at a false-alarm rate, ``check_fitted`` raises
    NotFittedError before; ``threshold_for`` falls back to a default); ``explain`` gives the
    sentence and evidence of one judged row."""

    name: str

    def score(self, x: np.ndarray, /) -> np.ndarray: ...

    def infer_threshold(self, family: str, healthy: Sequence[np.ndarray], fpr: float
                        ) -> float: ...

    def threshold_for(self, family: str | None) -> float: ...

    def check_fitted(self, family: str) -> float: ...

    def explain(self, metric: str, j: Any, i: int, *, step_s: float | None = None,
                unit: str = "") -> tuple[str, dict[str, float]]: ...


def attributions(phi: np.ndarray, base: float | np.ndarray,
                 names: tuple[str, ...]) -> list[Attribution]:
    """One :class:`Attribution` per row of ``phi`` (n, d); ``base`` scalar or per row."""
    bases = np.broadcast_to(np.asarray(base, dtype=np.float64), (len(phi),))
    return [Attribution(base_value=float(b), values=dict(zip(names, map(float, row))))
            for b, row in zip(bases, phi)]


def threshold_at_fpr(healthy_scores: np.ndarray, fpr: float) -> float:
    """The score above which a fraction ``fpr`` of healthy scores lie.

    Raises ValueError on an empty sample or an ``fpr`` outside (0, 1).
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    s = np.asarray(healthy_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("cannot infer a threshold from zero finite healthy scores")
    return float(np.quantile(s, 1.0 - fpr, method="higher"))


class ThresholdMixin:
    """Holds the fitted state checks shared by the array detectors."""

    threshold_: float | None = None
    fitted_: bool = False

    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def _check_threshold(self) -> float:
        self._check_fitted()
        if self.threshold_ is None:
            raise ThresholdNotInferredError(
                f"{type(self).__name__} has no threshold; call infer_threshold() first"
            )
        return self.threshold_


# --------------------------------------------------------------- persisted state of array detectors

#: The keys of the JSON state of a scaled-array detector (autoencoder, forest); the arrays
#: themselves (weights, trees) live in a sidecar file.
ARRAY_STATE_KEYS: frozenset[str] = frozenset(ArrayDetectorState.model_fields)


class _ToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def array_state(fmt: str, *, config: Any, feature_names: tuple[str, ...], scaler: _ToDict,
                threshold: float | None) -> dict[str, Any]:
    """The JSON-able state of a scaled-array detector: exactly :data:`ARRAY_STATE_KEYS`.

    ``config`` is the detector's config dataclass, ``scaler`` anything with ``to_dict()``.
    """
    return {
        "format": fmt,
        "config": dataclasses.asdict(config),
        "feature_names": list(feature_names),
        "scaler": scaler.to_dict(),
        "threshold": threshold,
    }


@dataclass(frozen=True)
class ArrayState:
    """What :func:`read_array_state` checked; ``config`` and ``scaler`` are still raw dicts."""

    config: Mapping[str, Any]
    scaler: Mapping[str, Any]
    feature_names: tuple[str, ...]
    threshold: float | None


def read_array_state(state: object, fmt: str, what: str) -> ArrayState:
    """Check the output of :func:`array_state` read back from disk.

    ``state`` must be a mapping with format ``fmt`` and exactly :data:`ARRAY_STATE_KEYS`,
    a list of string feature names and a finite or null threshold; anything else is a
    :class:`ModelIntegrityError` naming ``what`` (e.g. ``"forest"``).
    """
    st = read_state(ArrayDetectorState, state, f"{what} state", fmt=fmt)
    return ArrayState(config=st.config, scaler=st.scaler, feature_names=tuple(st.feature_names),
                      threshold=st.threshold)
