"""Fused drift detector: tail calibration, fusion rules, attribution, throughput."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from detector.errors import ConfigError, InputError, ModelIntegrityError
from detector.models.autoencoder import AutoencoderConfig, AutoencoderDetector
from detector.models.drift import DriftConfig, DriftDetector, TailCalibrator
from detector.models.forest import config_from_dict
from tests.support.drift_data import NAMES, drifted, healthy

torch.set_num_threads(1)

_AE = AutoencoderConfig(max_epochs=60, patience=6)


@pytest.fixture(scope="module")
def drift() -> DriftDetector:
    det = DriftDetector(DriftConfig(), AutoencoderDetector(_AE)).fit(healthy(4000, seed=1), NAMES)
    det.infer_threshold(healthy(2000, seed=2), fpr=0.01)
    return det


# --------------------------------------------------------------------------- calibration


def test_tail_score_is_minus_log10_exceedance_on_healthy_scores() -> None:
    rng = np.random.default_rng(0)
    cal = TailCalibrator.fit(rng.gamma(2.0, size=20_000), u=0.9)
    fresh = rng.gamma(2.0, size=200_000)
    t = cal.transform(fresh)
    for level in (0.5, 1.0, 2.0, 3.0):  # t >= level should happen with probability 10^-level
        assert np.mean(t >= level) == pytest.approx(10.0**-level, rel=0.25)


def test_tail_score_is_monotone_continuous_and_unbounded() -> None:
    rng = np.random.default_rng(1)
    cal = TailCalibrator.fit(rng.normal(size=500), u=0.9)
    grid = np.linspace(-10, 50, 20_001)
    t = cal.transform(grid)
    assert np.all(np.diff(t) >= 0)
    assert np.max(np.abs(np.diff(t))) < 0.05  # no jumps, including at the body/tail seam
    assert t[0] == 0.0 and t[-1] > 20.0  # keeps growing past the calibration sample
    q_u = cal.knots[-1]
    assert cal.transform(np.array([q_u]))[0] == pytest.approx(1.0)  # -log10(1 - 0.9)


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=2, max_size=300
    ),
    u=st.floats(0.5, 0.99),
)
def test_tail_score_is_monotone_and_finite_for_any_sample(scores: list[float], u: float) -> None:
    cal = TailCalibrator.fit(np.asarray(scores), u=u)
    grid = np.sort(np.r_[np.asarray(scores), np.linspace(-2e6, 2e6, 101)])
    t = cal.transform(grid)
    assert np.all(np.isfinite(t)) and np.all(t >= 0.0)
    assert np.all(np.diff(t) >= -1e-9)
    TailCalibrator.from_dict(cal.to_dict())  # what fit produces is always loadable


def test_tail_derivative_matches_finite_differences() -> None:
    cal = TailCalibrator.fit(np.random.default_rng(2).normal(size=2000), u=0.9)
    s = np.array([-0.5, 0.3, 1.0, 2.5, 4.0])
    h = 1e-6
    numeric = (cal.transform(s + h) - cal.transform(s - h)) / (2 * h)
    np.testing.assert_allclose(cal.derivative(s), numeric, rtol=1e-3)


def test_calibrator_round_trips_and_validates() -> None:
    cal = TailCalibrator.fit(np.arange(100.0), u=0.9)
    again = TailCalibrator.from_dict(cal.to_dict())
    np.testing.assert_array_equal(
        again.transform(np.arange(-5.0, 200.0)), cal.transform(np.arange(-5.0, 200.0))
    )
    broken = cal.to_dict()
    broken["knots"] = broken["knots"][::-1]
    with pytest.raises(ConfigError):
        TailCalibrator.from_dict(broken)


def test_ties_in_calibration_scores_do_not_break_it() -> None:
    cal = TailCalibrator.fit(np.r_[np.zeros(900), np.arange(100.0)], u=0.9)
    t = cal.transform(np.array([-1.0, 0.0, 50.0, 1000.0]))
    assert np.all(np.isfinite(t)) and np.all(np.diff(t) >= 0)


# --------------------------------------------------------------------------- fusion


def test_fused_score_is_the_weighted_mean_of_tail_scores(drift: DriftDetector) -> None:
    x = np.vstack([healthy(50, seed=3), drifted(10, seed=4)])
    c = drift.score_components(x)
    np.testing.assert_allclose(
        drift.score(x), 0.5 * c["autoencoder.tail"] + 0.5 * c["forest.tail"], rtol=1e-12
    )
    for member in ("autoencoder", "forest"):
        np.testing.assert_array_equal(c[f"{member}.raw"], drift.members[member].score(x))


def test_weights_and_max_fusion(drift: DriftDetector) -> None:
    x = np.vstack([healthy(50, seed=5), drifted(10, seed=6)])
    c = drift.score_components(x)
    ae_only = DriftDetector.from_state(
        {**drift.state_dict(), "config": {**drift.state_dict()["config"], "weight_forest": 0.0}},
        drift.autoencoder,
        drift.forest,
    )
    np.testing.assert_allclose(ae_only.score(x), c["autoencoder.tail"])
    fused_max = DriftDetector.from_state(
        {**drift.state_dict(), "config": {**drift.state_dict()["config"], "fusion": "max"}},
        drift.autoencoder,
        drift.forest,
    )
    np.testing.assert_allclose(
        fused_max.score(x), np.maximum(c["autoencoder.tail"], c["forest.tail"])
    )
    for a, s in zip(fused_max.explain(x[-3:]), fused_max.score(x[-3:])):
        assert a.base_value + sum(a.values.values()) == pytest.approx(s, rel=0.02)


def test_detects_the_collapse_at_the_fitted_false_alarm_rate(drift: DriftDetector) -> None:
    assert drift.threshold_ is not None
    false_alarms = drift.predict(healthy(5000, seed=7)).is_anomaly.mean()
    detected = drift.predict(drifted(500, seed=8, shift_sd=-4.0)).is_anomaly.mean()
    print(f"drift @1% target: FPR {false_alarms:.3%}, TPR {detected:.1%} (collapse, 4 sd)")
    assert 0.004 <= false_alarms <= 0.02
    assert detected > 0.9


def test_fusion_beats_or_matches_each_member_on_mixed_faults(drift: DriftDetector) -> None:
    """Two fault kinds: a collapse (correlation broken) and one feature far out of range."""
    from sklearn.metrics import roc_auc_score

    far = healthy(200, seed=9)
    far[:, NAMES.index("mem_rss.level_z")] += 30.0
    x = np.vstack([healthy(2000, seed=10), drifted(200, seed=11, shift_sd=-2.5), far])
    y = np.r_[np.zeros(2000), np.ones(400)]
    c = drift.score_components(x)
    auc = {m: roc_auc_score(y, c[f"{m}.raw"]) for m in ("autoencoder", "forest")}
    fused = roc_auc_score(y, drift.score(x))
    print(f"ROC-AUC: fused {fused:.3f}, members {auc}")
    assert fused >= min(auc.values())
    assert fused > 0.9


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        DriftConfig(fusion="median")
    with pytest.raises(ConfigError):
        DriftConfig(weight_autoencoder=0.0, weight_forest=0.0)
    with pytest.raises(ConfigError, match="unknown"):
        config_from_dict(DriftConfig, {"fussion": "max"})


def test_too_few_rows_is_an_input_error() -> None:
    with pytest.raises(InputError):
        DriftDetector().fit(healthy(50, seed=12), NAMES)


def test_state_from_different_members_is_refused(drift: DriftDetector) -> None:
    other = AutoencoderDetector(AutoencoderConfig(max_epochs=1))
    other.fit(healthy(100, seed=13)[:, :-1], NAMES[:-1])
    with pytest.raises(ModelIntegrityError, match="different feature lists"):
        DriftDetector.from_state(drift.state_dict(), other, drift.forest)


# --------------------------------------------------------------------------- throughput


def test_ensemble_scores_a_large_batch_like_its_parts(drift: DriftDetector) -> None:
    """Prints windows/s on one core; the speed targets are `podguard bench`'s printed figures,
    not a timed assertion (a loaded CI machine is no stopwatch)."""
    x = healthy(10_000, seed=14)
    rates = {}
    with threadpool_limits(1):
        for name, fn in (
            ("autoencoder", drift.autoencoder.score),
            ("forest", drift.forest.score),
            ("fused", drift.score),
        ):
            fn(x[:10])
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                fn(x)
                best = min(best, time.perf_counter() - start)
            rates[name] = len(x) / best
    print("scoring windows/s on one core: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    fused = drift.score(x)
    assert fused.shape == (len(x),) and np.isfinite(fused).all()
    np.testing.assert_allclose(drift.score(x[:100]), fused[:100], rtol=1e-5, atol=1e-6)


def test_group_wise_calibration_split_keeps_groups_apart() -> None:
    det = DriftDetector(DriftConfig(calibration_fraction=0.25, seed=3))
    groups = np.repeat([f"pod-{i}" for i in range(12)], 50)
    cal, train = det._calibration_split(len(groups), groups)
    assert not set(groups[cal]) & set(groups[train])
    assert 0.15 <= len(cal) / len(groups) <= 0.3
    assert len(cal) + len(train) == len(groups)
    with pytest.raises(InputError, match="at least 2 groups"):
        det._calibration_split(100, ["one"] * 100)
    with pytest.raises(InputError, match="one label per row"):
        det._calibration_split(100, ["a", "b"])


def test_fit_with_groups(drift: DriftDetector) -> None:
    x = healthy(2000, seed=15)
    groups = np.repeat(np.arange(20), 100)
    det = DriftDetector(DriftConfig(), AutoencoderDetector(AutoencoderConfig(max_epochs=5)))
    assert det.fit(x, NAMES, groups=groups) is det
    assert np.all(np.isfinite(det.score(healthy(10, seed=16))))


@pytest.mark.slow
def test_on_windows_from_the_window_engine() -> None:
    """Integration: scenario trace -> WindowEngine windows -> drift detector.

    Fitted on healthy pods, threshold on other healthy pods; the throughput_drift pods
    (CPU, GPU utilisation and network collapse before a crash) are flagged after onset, and
    the explanation names the throughput channels.
    """
    from sklearn.metrics import roc_auc_score

    from detector import scenarios
    from detector.settings import WindowSettings
    from training.fit import collect_windows

    trace, labels = scenarios.generate(
        n_pods_per_kind=4,
        hours=7,
        step_s=60,
        seed=3,
        shapes=(*scenarios.HEALTHY_SHAPES, "throughput_drift"),
    )
    batch = collect_windows(trace, windows=WindowSettings(), every=5)
    pods = np.array([k.pod for k in batch.keys])
    lab = labels.set_index("pod")
    faulty = np.array([lab.loc[p, "shape"] == "throughput_drift" for p in pods])
    onset = np.array([lab.loc[p, "onset_ts"] for p in pods], dtype=float)
    healthy_pods = sorted(set(pods[~faulty]))
    held = set(np.random.default_rng(0).choice(healthy_pods, size=8, replace=False).tolist())
    is_held = np.isin(pods, list(held))
    fit_rows = np.flatnonzero(~faulty & ~is_held)
    hold_rows = np.flatnonzero(is_held)
    after = np.flatnonzero(faulty & (np.asarray(batch.ts) > onset + 1200))

    x = batch.features
    det = DriftDetector(DriftConfig(), AutoencoderDetector(AutoencoderConfig(max_epochs=60)))
    det.fit(x[fit_rows], batch.feature_names, groups=pods[fit_rows])
    det.infer_threshold(x[hold_rows], fpr=0.02)
    pred = det.predict(x)
    y = np.r_[np.zeros(hold_rows.size), np.ones(after.size)]
    auc = roc_auc_score(y, np.r_[pred.score[hold_rows], pred.score[after]])
    print(
        f"windows: {len(batch)}; drift pods after onset: {after.size}; ROC-AUC {auc:.3f}; "
        f"TPR {pred.is_anomaly[after].mean():.2f}"
    )
    assert after.size >= 10
    assert auc > 0.9
    assert pred.is_anomaly[after].mean() > 0.6
    flagged = after[pred.is_anomaly[after]]
    throughput = ("cpu_rate", "gpu_util", "net_rx_rate", "net_tx_rate")
    named = [
        any(n.split(".")[0] in throughput for n, _ in a.top(3)) for a in det.explain(x[flagged])
    ]
    assert np.mean(named) >= 0.9


def test_near_ties_at_large_magnitude_still_give_increasing_knots() -> None:
    cal = TailCalibrator.fit(np.array([1e6, 1e6 + 1e-10, 1e6]), u=0.9)
    assert np.all(np.diff(cal.knots) > 0)
    TailCalibrator.from_dict(cal.to_dict())
