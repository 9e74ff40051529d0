"""Isolation forest: equality with PyOD/scikit-learn, seeding, scaling, TreeSHAP, and its
trees saved as safetensors arrays (loaded without scikit-learn, validated as untrusted)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pyod.models.iforest import IForest
from safetensors.numpy import load_file, save_file
from sklearn.ensemble._iforest import _average_path_length as sklearn_average_path_length
from threadpoolctl import threadpool_limits

from detector.errors import ModelIntegrityError
from detector.models import forest as forest_module
from detector.models.forest import (
    FOREST_WEIGHTS,
    ForestConfig,
    IsolationForestDetector,
    RobustScaler,
)
from tests.support.drift_data import NAMES, drifted, healthy, healthy_std


@pytest.fixture(scope="module")
def forest() -> IsolationForestDetector:
    return IsolationForestDetector(ForestConfig(seed=3)).fit(healthy(3000, seed=1), NAMES)


def test_score_equals_pyod_decision_function(forest: IsolationForestDetector) -> None:
    x = np.vstack([healthy(500, seed=2), drifted(50, seed=3)])
    x[0, :] = np.nan
    z = forest.transform(x)
    reference = IForest(n_estimators=200, max_samples=256, random_state=3, n_jobs=1)
    reference.fit(forest.transform(healthy(3000, seed=1)))
    np.testing.assert_allclose(forest.score(x), reference.decision_function(z), rtol=0, atol=1e-12)


def test_vectorised_traversal_equals_sklearn(forest: IsolationForestDetector) -> None:
    for n in (1, 7, 5000):  # one row, a small batch, several chunks
        x = healthy(n, seed=4 + n)
        expected = -forest.estimator_.decision_function(forest.transform(x))
        np.testing.assert_allclose(forest.score(x), expected, rtol=0, atol=1e-12)


def test_seeded_and_reproducible() -> None:
    x = healthy(1000, seed=5)
    probe = healthy(100, seed=6)
    a = IsolationForestDetector(ForestConfig(seed=1)).fit(x, NAMES).score(probe)
    b = IsolationForestDetector(ForestConfig(seed=1)).fit(x, NAMES).score(probe)
    c = IsolationForestDetector(ForestConfig(seed=2)).fit(x, NAMES).score(probe)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_robust_scaler_median_iqr_and_imputation() -> None:
    x = np.array([[1.0, 10.0], [2.0, np.nan], [3.0, 30.0], [4.0, 40.0], [100.0, 50.0]])
    scaler = RobustScaler(clip=5.0).fit(x)
    np.testing.assert_allclose(scaler.center, [3.0, 35.0])
    # IQR / 1.349 with linear percentiles: [2, 3, 4] -> 2.0; [10, 30, 40, 50] -> 42.5 - 25
    np.testing.assert_allclose(scaler.scale, [2.0 / 1.349, 17.5 / 1.349])
    z, missing = scaler.transform(np.array([[3.0, np.nan], [1e9, -np.inf]]))
    np.testing.assert_array_equal(missing, [[False, True], [False, True]])
    np.testing.assert_allclose(z, [[0.0, 0.0], [5.0, 0.0]])  # imputed to the median, clipped
    constant = RobustScaler().fit(np.ones((10, 1)))
    assert constant.scale[0] == 1.0  # no division by zero


def test_path_length_treeshap_is_additive(forest: IsolationForestDetector) -> None:
    x = np.vstack([healthy(20, seed=7), drifted(20, seed=8)])
    phi, base, h = forest.path_length_shap(x)
    np.testing.assert_allclose(phi.sum(axis=1) + base, h, atol=1e-6)
    # and the path length is the one scikit-learn's score_samples is built from
    c = forest._c
    np.testing.assert_allclose(
        -np.power(2.0, -h / c), forest.estimator_.score_samples(forest.transform(x)), atol=1e-9
    )


def test_score_shap_is_additive_and_signed_towards_anomalous(
    forest: IsolationForestDetector,
) -> None:
    x = healthy(30, seed=9)
    j = NAMES.index("gpu_util.level_z")
    x[:, j] -= 8.0 * healthy_std()[j]
    phi, base, s = forest.score_shap(x)
    np.testing.assert_array_equal(s, forest.score(x))
    np.testing.assert_allclose(phi.sum(axis=1) + base, s, atol=1e-9)
    assert np.all(phi[:, j] > 0)  # the collapsed feature pushes towards anomalous
    assert np.mean(phi.argmax(axis=1) == j) >= 0.9


def test_average_path_length_equals_sklearn() -> None:
    n = np.array([0, 1, 2, 3, 4, 7, 100, 256, 12345], dtype=np.float64)
    np.testing.assert_array_equal(forest_module._average_path_length(n),
                                  sklearn_average_path_length(n))


def test_saved_arrays_score_and_explain_as_the_fitted_forest(
    forest: IsolationForestDetector, tmp_path: Path
) -> None:
    """The loaded forest has no scikit-learn estimator, only the arrays; same scores (to the
    bit) and the same TreeSHAP values as the forest just fitted."""
    forest.infer_threshold(healthy(500, seed=11), 0.05)
    forest.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forest.json", FOREST_WEIGHTS]
    loaded = IsolationForestDetector.load(tmp_path)
    assert loaded.estimator_ is None and loaded.threshold_ == forest.threshold_
    x = np.vstack([healthy(300, seed=12), drifted(30, seed=13)])
    x[0, ::2] = np.nan
    np.testing.assert_array_equal(loaded.score(x), forest.score(x))
    np.testing.assert_array_equal(loaded.predict(x).is_anomaly, forest.predict(x).is_anomaly)
    phi_a, base_a, s_a = loaded.score_shap(x[:20])
    phi_b, base_b, s_b = forest.score_shap(x[:20])
    np.testing.assert_array_equal(phi_a, phi_b)
    assert base_a == base_b
    np.testing.assert_array_equal(s_a, s_b)


def _corrupt(name: str) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(t: dict[str, np.ndarray]) -> None:
        split = np.flatnonzero(t["children_left"] != -1)
        if name == "child outside its tree":
            t["children_right"][split[0]] = t["node_count"][0] + 5
        elif name == "child before its parent (a loop)":
            t["children_left"][split[3]] = split[3]
        elif name == "a leaf with one child":
            leaf = int(np.flatnonzero(t["children_left"] == -1)[0])
            t["children_left"][leaf] = leaf + 1
        elif name == "feature out of range":
            t["feature"][split[0]] = len(NAMES)
        elif name == "negative feature":
            t["feature"][split[0]] = -1
        elif name == "NaN threshold":
            t["threshold"][split[0]] = np.nan
        elif name == "zero cover":
            t["cover"][0] = 0.0
        elif name == "node arrays of different lengths":
            t["value"] = t["value"][:-1]
        elif name == "float indices":
            t["feature"] = t["feature"].astype(np.float64)
        elif name == "a tree too few":
            t["node_count"] = t["node_count"][:-1]
        elif name == "c is zero":
            t["c"] = np.zeros(1)
        elif name == "an extra array":
            t["payload"] = np.zeros(3)
        elif name == "an array missing":
            del t["offset"]
        else:
            raise AssertionError(name)
    return edit


_CORRUPTIONS = ["child outside its tree", "child before its parent (a loop)",
                "a leaf with one child", "feature out of range", "negative feature",
                "NaN threshold", "zero cover", "node arrays of different lengths",
                "float indices", "a tree too few", "c is zero", "an extra array",
                "an array missing"]


@pytest.mark.parametrize("corruption", _CORRUPTIONS)
def test_corrupt_tree_arrays_are_refused(
    forest: IsolationForestDetector, tmp_path: Path, corruption: str
) -> None:
    forest.save(tmp_path)
    tensors = {k: v.copy() for k, v in load_file(str(tmp_path / FOREST_WEIGHTS)).items()}
    _corrupt(corruption)(tensors)
    save_file(tensors, str(tmp_path / FOREST_WEIGHTS))
    with pytest.raises(ModelIntegrityError, match="forest"):
        IsolationForestDetector.load(tmp_path)


def test_garbage_in_place_of_the_trees_is_refused(tmp_path: Path,
                                                   forest: IsolationForestDetector) -> None:
    forest.save(tmp_path)
    (tmp_path / FOREST_WEIGHTS).write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelIntegrityError, match="safetensors"):
        IsolationForestDetector.load(tmp_path)
    (tmp_path / FOREST_WEIGHTS).unlink()
    with pytest.raises(ModelIntegrityError, match="cannot read"):
        IsolationForestDetector.load(tmp_path)


def test_state_with_unknown_key_is_refused(forest: IsolationForestDetector) -> None:
    assert forest.arrays_ is not None
    tensors = forest.arrays_.to_tensors()
    state = forest.state_dict()
    state["extra"] = 1
    with pytest.raises(ModelIntegrityError):
        IsolationForestDetector.from_state(state, tensors)
    state = forest.state_dict()
    state["config"] = {**state["config"], "n_estimator": 10}  # misspelled
    with pytest.raises(ModelIntegrityError):
        IsolationForestDetector.from_state(state, tensors)
    state = forest.state_dict()
    state["config"] = {**state["config"], "n_estimators": 10}  # not the trees saved
    with pytest.raises(ModelIntegrityError, match="trees saved"):
        IsolationForestDetector.from_state(state, tensors)


def test_scoring_a_large_batch_one_core(forest: IsolationForestDetector) -> None:
    """Prints windows/s (the speed targets are `podguard bench`'s figures, not timed asserts);
    a large batch scores each window as it would alone."""
    x = healthy(10_000, seed=10)
    with threadpool_limits(1):
        forest.score(x[:10])
        best = min(_timed(forest.score, x) for _ in range(3))
    print(f"forest scoring: {len(x) / best:,.0f} windows/s on one core")
    whole = forest.score(x)
    assert whole.shape == (len(x),) and np.isfinite(whole).all()
    # a slice across the 256-row scoring blocks, aligned differently from the whole batch
    np.testing.assert_allclose(forest.score(x[200:700]), whole[200:700], rtol=1e-6)


def _timed(fn: object, x: np.ndarray) -> float:
    assert callable(fn)
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start
