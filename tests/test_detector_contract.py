"""One contract suite run over every array detector (river's test_estimators, for podguard).

Each detector in :data:`FACTORIES` must: return itself from ``fit``; give one finite score per
row; score an obvious outlier above every healthy row; raise NotFittedError before ``fit`` and
ThresholdNotInferredError before ``infer_threshold``; hit the target false-alarm rate on fresh
healthy data; beat chance (ROC-AUC > 0.8) on the collapse fixture; tolerate NaN; explain with
attributions that sum to score - base; and score identically after a save/load round trip.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detector.errors import InputError, NotFittedError, ThresholdNotInferredError
from detector.models.autoencoder import AutoencoderConfig, AutoencoderDetector
from detector.models.base import Attribution, Detector, Prediction
from detector.models.drift import DriftConfig, DriftDetector
from detector.models.forest import ForestConfig, IsolationForestDetector
from tests.support.drift_data import NAMES, drifted, healthy, healthy_std

torch.set_num_threads(1)

_AE = AutoencoderConfig(max_epochs=60, patience=6)


def _drift() -> DriftDetector:
    return DriftDetector(DriftConfig(), AutoencoderDetector(_AE), IsolationForestDetector())


FACTORIES: dict[str, Callable[[], Any]] = {
    "autoencoder": lambda: AutoencoderDetector(_AE),
    "forest": lambda: IsolationForestDetector(ForestConfig(n_estimators=100)),
    "drift": _drift,
}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_TRAINED: dict[str, Any] = {}


@pytest.fixture
def trained(kind: str) -> Any:
    """A detector fitted on 3000 healthy rows, no threshold yet (a fresh copy per test)."""
    if kind not in _TRAINED:
        _TRAINED[kind] = FACTORIES[kind]().fit(healthy(3000, seed=1), NAMES)
    return copy.deepcopy(_TRAINED[kind])


def test_implements_the_protocol(kind: str) -> None:
    assert isinstance(FACTORIES[kind](), Detector)


def test_fit_returns_self(kind: str) -> None:
    det = FACTORIES[kind]()
    assert det.fit(healthy(400, seed=2), NAMES) is det
    assert det.fitted_


def test_not_fitted_before_fit(kind: str) -> None:
    det = FACTORIES[kind]()
    x = healthy(5, seed=3)
    for call in (det.score, det.predict, det.explain, lambda a: det.infer_threshold(a, 0.1)):
        with pytest.raises(NotFittedError):
            call(x)


def test_threshold_not_inferred_before_infer_threshold(trained: Any) -> None:
    with pytest.raises(ThresholdNotInferredError):
        trained.predict(healthy(5, seed=4))


def test_score_shape_and_dtype(trained: Any) -> None:
    s = trained.score(healthy(37, seed=5))
    assert s.shape == (37,)
    assert s.dtype == np.float64
    assert np.all(np.isfinite(s))
    assert trained.score(healthy(1, seed=5)[0]).shape == (1,)  # one row as a 1-D vector


def test_wrong_width_is_an_input_error(trained: Any) -> None:
    with pytest.raises(InputError):
        trained.score(np.zeros((3, len(NAMES) + 1), dtype=np.float32))


def test_obvious_outlier_scores_higher(trained: Any) -> None:
    normal = healthy(500, seed=6)
    outlier = healthy(1, seed=7)
    outlier[0, :] += 10.0 * healthy_std()  # far from everything (a forest saturates beyond)
    assert trained.score(outlier)[0] > trained.score(normal).max()


def test_threshold_hits_target_fpr_on_fresh_healthy(trained: Any) -> None:
    threshold = trained.infer_threshold(healthy(3000, seed=8), fpr=0.05)
    assert trained.threshold_ == threshold
    fresh = trained.predict(healthy(4000, seed=9))
    assert isinstance(fresh, Prediction)
    assert fresh.threshold == threshold
    np.testing.assert_array_equal(fresh.is_anomaly, fresh.score > threshold)
    assert 0.03 <= fresh.is_anomaly.mean() <= 0.075


def test_beats_chance_on_the_collapse_fixture(trained: Any) -> None:
    x = np.vstack([healthy(1500, seed=10), drifted(300, seed=11, shift_sd=-3.0)])
    y = np.r_[np.zeros(1500), np.ones(300)]
    assert roc_auc_score(y, trained.score(x)) > 0.8


def test_nan_tolerated(trained: Any) -> None:
    x = healthy(20, seed=12)
    x[0, :] = np.nan
    x[1, ::2] = np.nan
    x[2, 3] = np.inf
    s = trained.score(x)
    assert np.all(np.isfinite(s))
    attributions = trained.explain(x[:3])
    assert all(np.isfinite(list(a.values.values())).all() for a in attributions)


def test_explanations_sum_to_score_minus_base(trained: Any) -> None:
    x = np.vstack([drifted(4, seed=13), healthy(2, seed=14)])
    attributions = trained.explain(x)
    scores = trained.score(x)
    assert len(attributions) == len(x)
    for a, s in zip(attributions, scores):
        assert isinstance(a, Attribution)
        assert tuple(a.values) == NAMES
        total = a.base_value + sum(a.values.values())
        assert total == pytest.approx(s, rel=0.02, abs=1e-3 * max(1.0, abs(s)))


def test_save_load_round_trip_scores_identically(trained: Any, tmp_path: Path) -> None:
    trained.infer_threshold(healthy(1000, seed=15), fpr=0.05)
    paths = trained.save(tmp_path)
    assert paths and all(Path(p).exists() for p in paths)
    loaded = type(trained).load(tmp_path)
    x = np.vstack([healthy(300, seed=16), drifted(50, seed=17)])
    np.testing.assert_array_equal(loaded.score(x), trained.score(x))
    assert loaded.threshold_ == trained.threshold_
    assert loaded.feature_names == trained.feature_names
    np.testing.assert_array_equal(loaded.predict(x).is_anomaly, trained.predict(x).is_anomaly)
    a, b = loaded.explain(x[-2:]), trained.explain(x[-2:])
    for ea, eb in zip(a, b):
        assert ea.base_value == pytest.approx(eb.base_value)
        np.testing.assert_allclose(list(ea.values.values()), list(eb.values.values()), atol=1e-6)
