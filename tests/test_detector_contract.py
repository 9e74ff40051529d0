"""One contract suite run over every registered detector (river's test_estimators, for podguard).

The suite iterates ``detector.models.registry.REGISTRY``: a detector is picked up by its
registration line, and :func:`test_every_detector_is_under_the_contract` fails when a detector
class of a ``detector.models`` module is not registered. Each spec's ``input`` says which
variant of the contract it meets, and its ``example`` builds a small unfitted instance.

Each array detector (:data:`FACTORIES`) must: return itself from ``fit``; give one finite score per
row; score an obvious outlier above every healthy row; raise NotFittedError before ``fit`` and
ThresholdNotInferredError before ``infer_threshold``; hit the target false-alarm rate on fresh
healthy data; beat chance (ROC-AUC > 0.8) on the collapse fixture; tolerate NaN; explain with
attributions that sum to score - base; and score identically after a save/load round trip.
The detectors on window batches (:data:`WINDOW_FACTORIES`: the leak detector) go through the
same properties on windows (a steady climb to the limit for the anomaly); the streaming
detectors (:data:`STREAM_FACTORIES`: the custom-metric detector) through their variant on
series judged point by point (a level step for the anomaly). Every registered detector with a
bundle member round-trips through the store (the shipped bundle, saved again).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detector import scenarios
from detector.errors import InputError, NotFittedError, ThresholdNotInferredError
from detector.models.base import (
    Attribution,
    Detector,
    Prediction,
    ScoringDetector,
    StreamingDetector,
    WindowDetector,
)
from detector.models.registry import REGISTRY
from detector.models.trend import TrendDetector
from detector.models.univariate import UnivariateDetector
from detector.windows import WindowBatch, collect_windows
from tests.support.drift_data import NAMES, drifted, healthy, healthy_std

torch.set_num_threads(1)

FACTORIES: dict[str, Callable[[], Any]] = {s.name: s.example for s in REGISTRY
                                           if s.input == "array"}
"""The registered detectors on feature arrays (autoencoder, isolation forest, drift fusion)."""


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


# --------------------------------------------------------------------------------------------
# The same contract over the detectors on window batches (the leak detector), and a check that
# the suite covers every detector in detector.models.

WINDOW_FACTORIES: dict[str, Callable[[], Any]] = {s.name: s.example for s in REGISTRY
                                                  if s.input == "window"}
STREAM_FACTORIES: dict[str, Callable[[], Any]] = {s.name: s.example for s in REGISTRY
                                                  if s.input == "stream"}

_static_check: WindowDetector = TrendDetector()  # mypy checks the protocols are met
_static_stream: StreamingDetector = UnivariateDetector()


def _healthy_windows(seed: int) -> WindowBatch:
    trace, _ = scenarios.generate_healthy(n_pods=6, hours=8, seed=seed)
    return collect_windows(trace, every_s=600, drop_stale=True)


def _leaking(batch: WindowBatch) -> WindowBatch:
    """The windows of ``batch`` whose working set instead rises steadily from 30 % to 95 % of
    the memory limit over the window (a leak about to OOM)."""
    ws = batch.channels.index("mem_working_set")
    lim = batch.limits[:, ws]
    rows = np.flatnonzero(np.isfinite(lim))[:12]
    leak = batch.subset(rows)
    ramp = np.linspace(0.3, 0.95, leak.grid.size, dtype=np.float32)
    values = leak.values.copy()
    values[:, ws, :] = leak.limits[:, ws, None] * ramp[None, :]
    return replace(leak, values=values)


@pytest.fixture(scope="module")
def window_data() -> dict[str, WindowBatch]:
    healthy_b = _healthy_windows(seed=31)
    return {"fit": healthy_b, "fresh": _healthy_windows(seed=32), "leak": _leaking(healthy_b)}


@pytest.fixture(scope="module", params=sorted(WINDOW_FACTORIES))
def window_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def detector_classes(modules: list[Any]) -> dict[str, type]:
    """The detector classes the modules define: classes of their own with a string ``name``
    and a ``score`` method."""
    import inspect

    found = {}
    for mod in modules:
        for cls_name, cls in inspect.getmembers(mod, inspect.isclass):
            if (cls.__module__ == mod.__name__ and isinstance(getattr(cls, "name", None), str)
                    and callable(getattr(cls, "score", None))):
                found[f"{mod.__name__}.{cls_name}"] = cls
    return found


def unregistered(modules: list[Any]) -> list[str]:
    """The detector classes of ``modules`` no registered spec names."""
    from detector.models import registry

    registered = {s.cls for s in registry.REGISTRY}
    return sorted(n for n, cls in detector_classes(modules).items() if cls not in registered)


def _model_modules() -> list[Any]:
    import importlib
    import pkgutil

    import detector.models as models

    return [importlib.import_module(f"detector.models.{info.name}")
            for info in pkgutil.iter_modules(models.__path__)]


def test_every_detector_is_under_the_contract() -> None:
    from detector.models import registry

    assert registry.check() == []
    assert unregistered(_model_modules()) == []
    assert len(detector_classes(_model_modules())) >= 5
    for spec in REGISTRY:
        det: Any = spec.example()
        assert det.name == spec.name and type(det) is spec.cls
        assert spec.input in ("array", "window", "stream")
        if spec.input != "stream":
            assert isinstance(det, ScoringDetector)
    # and the check can fail: a module with a detector class nobody registered
    import types

    mod = types.ModuleType("detector.models.scratch")
    exec("class Scratch:\n    name = 'scratch'\n    def score(self, x): return x\n",
         mod.__dict__)
    assert unregistered([mod]) == ["detector.models.scratch.Scratch"]


def test_every_member_round_trips_through_the_store(tmp_path: Path) -> None:
    """The shipped bundle saved again and reloaded: every registered member's files are the
    same bytes, its card entries the same, and its detector rebuilt from them."""
    import json

    from detector.models import store
    from detector.pipeline import default_model_dir

    shipped = store.load_bundle(default_model_dir())
    assert set(shipped.detectors) == {s.name for s in REGISTRY if s.member is not None}
    again = store.load_bundle(store.save_bundle(tmp_path, shipped.detectors, version="again"))
    for spec in REGISTRY:
        if spec.member is None:
            continue
        for fname in spec.member.files:
            assert (again.path / fname).read_bytes() == (shipped.path / fname).read_bytes()
        own = spec.member.card(again.detectors[spec.name])
        assert json.loads(json.dumps(own)) == json.loads(json.dumps(
            spec.member.card(shipped.detectors[spec.name])))
        assert type(again.detectors[spec.name]) is spec.cls


def test_window_detector_implements_the_protocol(window_kind: str) -> None:
    det = WINDOW_FACTORIES[window_kind]()
    assert isinstance(det, WindowDetector) and isinstance(det, ScoringDetector)


def test_window_detector_fit_returns_self_and_thresholds_come_after(
        window_kind: str, window_data: dict[str, WindowBatch]) -> None:
    det = WINDOW_FACTORIES[window_kind]()
    with pytest.raises(NotFittedError):
        det.predict(window_data["fresh"])
    assert det.fit(window_data["fit"]) is det and det.fitted_
    with pytest.raises(ThresholdNotInferredError):
        det.predict(window_data["fresh"])


def test_window_detector_scores_leaks_above_healthy_and_hits_the_fpr(
        window_kind: str, window_data: dict[str, WindowBatch]) -> None:
    det = WINDOW_FACTORIES[window_kind]().fit(window_data["fit"])
    thr = det.infer_threshold(window_data["fit"], 0.05)
    fresh, leak = det.predict(window_data["fresh"]), det.predict(window_data["leak"])
    assert fresh.score.shape == (len(window_data["fresh"]),)
    assert np.all(np.isfinite(fresh.score)) and fresh.threshold == thr
    np.testing.assert_array_equal(fresh.is_anomaly, fresh.score > thr)
    assert fresh.is_anomaly.mean() <= 0.1
    assert leak.is_anomaly.all() and leak.score.min() > fresh.score.max()


def test_window_detector_explanations_sum_to_score_minus_base(
        window_kind: str, window_data: dict[str, WindowBatch]) -> None:
    det = WINDOW_FACTORIES[window_kind]().fit(window_data["fit"])
    batch = WindowBatch.concat([window_data["leak"], window_data["fresh"].subset(slice(0, 4))])
    attributions, scores = det.explain(batch), det.score(batch)
    assert len(attributions) == len(batch)
    for a, s in zip(attributions, scores):
        assert isinstance(a, Attribution)
        assert a.base_value + sum(a.values.values()) == pytest.approx(s, abs=1e-9)
    assert max(attributions[0].values, key=attributions[0].values.__getitem__).startswith(
        "mem_working_set.")  # the leaking channel explains the leak


def test_window_detector_state_round_trip_scores_identically(
        window_kind: str, window_data: dict[str, WindowBatch]) -> None:
    import json

    det = WINDOW_FACTORIES[window_kind]().fit(window_data["fit"])
    det.infer_threshold(window_data["fit"], 0.05)
    state = json.loads(json.dumps(det.get_state(), allow_nan=False))
    back = type(det).from_state(state)
    batch = WindowBatch.concat([window_data["leak"], window_data["fresh"]])
    np.testing.assert_array_equal(back.score(batch), det.score(batch))
    assert back.threshold_ == det.threshold_
    np.testing.assert_array_equal(back.predict(batch).is_anomaly, det.predict(batch).is_anomaly)


# --------------------------------------------------------------------------------------------
# The streaming variant (the custom-metric detector): one series per row, point by point.


def _series(seed: int, n: int = 6, T: int = 400) -> np.ndarray:
    return 0.41 + 0.03 * np.random.default_rng(seed).standard_normal((n, T))


@pytest.fixture(scope="module", params=sorted(STREAM_FACTORIES))
def stream_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_stream_detector_implements_the_protocol(stream_kind: str) -> None:
    assert isinstance(STREAM_FACTORIES[stream_kind](), StreamingDetector)


def test_stream_detector_scores_a_step_above_healthy_and_is_fitted_per_family(
        stream_kind: str) -> None:
    det = STREAM_FACTORIES[stream_kind]()
    with pytest.raises(NotFittedError):
        det.check_fitted("step_seconds")
    healthy = _series(1)
    s = det.score(healthy)
    assert s.shape == healthy.shape and s.dtype == np.float64
    assert np.isnan(s[:, 0]).all() and np.isfinite(s[:, 50:]).all()  # warms up, then scores
    stepped = _series(2)
    stepped[:, 300:] *= 2.3
    hit = det.score(stepped)
    assert (hit[:, 300:305].max(axis=1) > np.nanmax(s[:, 50:])).all()
    thr = det.infer_threshold("step_seconds", [_series(3)], 0.05)
    assert det.check_fitted("step_seconds") == thr == det.threshold_for("step_seconds")
    fresh = det.score(_series(4))[:, 50:]
    assert np.mean(fresh > thr) <= 0.1


def test_stream_detector_explains_a_judged_row_and_round_trips(stream_kind: str) -> None:
    import json

    det = STREAM_FACTORIES[stream_kind]()
    x = _series(5)
    x[:, 300:] *= 2.3
    _score, _flagged, last = det.run(x[:, :305])
    assert last is not None and last.is_anomaly.all()
    text, values = det.explain("step_seconds", last, 0, step_s=15.0)
    assert "step seconds" in text and values
    assert max(values.values()) == pytest.approx(float(np.nanmax(last.scale_scores[0])))
    det.infer_threshold("step_seconds", [_series(6)], 0.05)
    back = type(det).from_state(json.loads(json.dumps(det.get_state(), allow_nan=False)))
    np.testing.assert_array_equal(back.score(x), det.score(x))
    assert back.threshold_for("step_seconds") == det.threshold_for("step_seconds")
