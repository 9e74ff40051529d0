"""The custom-metric univariate detector (detector.models.univariate) on synthetic series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.errors import ModelIntegrityError
from detector.models.univariate import (
    DEFAULT_THRESHOLD,
    UnivariateConfig,
    UnivariateDetector,
    episode_starts,
)


def noise(seed: int, n: int = 600, level: float = 0.41, sd: float = 0.03) -> np.ndarray:
    return level + sd * np.random.default_rng(seed).standard_normal(n)


def test_a_level_step_is_flagged_and_alarms_once() -> None:
    x = noise(1)
    x[400:] *= 2.3  # step time 2.3x from point 400 on
    det = UnivariateDetector()
    score, flagged, _ = det.run(x[None, :])
    assert np.nanmax(score[0, 150:399]) < DEFAULT_THRESHOLD  # quiet before the fault
    assert flagged[0, 400:405].any()  # caught within a few points
    alarms = det.alarms(x[None, :])[0]
    assert alarms.sum() == 1 and 400 <= int(np.flatnonzero(alarms)[0]) < 405


def test_causal_a_verdict_uses_only_past_points() -> None:
    x = noise(2)
    y = x.copy()
    y[300:] += 5.0  # a different future
    det = UnivariateDetector()
    sx, fx, _ = det.run(x[None, :])
    sy, fy, _ = det.run(y[None, :])
    np.testing.assert_array_equal(sx[0, :300], sy[0, :300])
    np.testing.assert_array_equal(fx[0, :300], fy[0, :300])


def test_batch_of_series_equals_one_at_a_time_and_tolerates_nan() -> None:
    xs = np.stack([noise(s) for s in range(5)])
    xs[2, 100:120] = np.nan  # a gap in one series
    xs[4, 350:] += 1.0
    det = UnivariateDetector()
    batch, fb, _ = det.run(xs)
    for i in range(5):
        one, fo, _ = det.run(xs[i:i + 1])
        np.testing.assert_array_equal(batch[i], one[0])
        np.testing.assert_array_equal(fb[i], fo[0])
    assert np.isnan(batch[2, 100:120]).all()  # no data: no score, no verdict
    assert fb[4, 350:355].any()  # the shifted series is caught within a few points
    # healthy noise at the default threshold: flagged rarely (it is 1.2x the series' own
    # 99th percentile excursion, ~0.2 % of Gaussian points), never in a run
    healthy = fb[:4, 150:]
    assert healthy.mean() < 0.01


def test_flagged_points_barely_teach_the_baseline() -> None:
    x = noise(3, 500)
    x[300:340] += 1.0  # a 40-point excursion, then back to normal
    gated = UnivariateDetector()
    open_ = UnivariateDetector(config=UnivariateConfig(flagged_weight=1.0))
    st_g, st_o = gated.new_state(1), open_.new_state(1)
    for t in range(340):
        jg = gated.step(st_g, x[None, t], DEFAULT_THRESHOLD)
        jo = open_.step(st_o, x[None, t], DEFAULT_THRESHOLD)
    assert jg.is_anomaly[0] and jo.is_anomaly[0]
    assert abs(st_g.level[0] - 0.41) < abs(st_o.level[0] - 0.41)
    assert abs(st_g.level[0] - 0.41) < 0.05


def test_threshold_is_fitted_at_the_false_alarm_rate_and_persisted() -> None:
    det = UnivariateDetector()
    healthy = [noise(s, 800) for s in range(10, 20)]
    thr = det.infer_threshold("train_step_seconds", healthy, fpr=0.01)
    scores = np.concatenate([det.run(h[None, :], thr)[0].ravel() for h in healthy])
    scores = scores[np.isfinite(scores)]
    assert np.mean(scores > thr) <= 0.011
    assert det.threshold_for("train_step_seconds") == thr
    assert det.threshold_for("unknown_family") == DEFAULT_THRESHOLD
    state = json.loads(json.dumps(det.get_state(), allow_nan=False))
    back = UnivariateDetector.from_state(state)
    assert back.thresholds == det.thresholds and back.config == det.config
    np.testing.assert_array_equal(back.run(healthy[0][None, :])[0], det.run(healthy[0][None, :])[0])


def test_bad_state_is_refused() -> None:
    good = UnivariateDetector().get_state()
    for bad in ({**good, "format": "x"}, {**good, "extra": 1},
                {**good, "thresholds": {"m": -1.0}}, {**good, "config": {"nope": 1}},
                {**good, "default_threshold": float("inf")}):
        with pytest.raises(ModelIntegrityError):
            UnivariateDetector.from_state(bad)


def test_explanation_sentence_and_attributions() -> None:
    x = noise(4, 300)
    x[280:] *= 2.3
    det = UnivariateDetector()
    st = det.new_state(1)
    for t in range(300):
        j = det.step(st, x[None, t], DEFAULT_THRESHOLD)
    text, attr = det.explain("step_time", j, 0, step_s=60.0, unit="s")
    assert text.startswith("step time 2.") and "x its usual level for " in text
    assert "min" in text and "usual 0.4" in text
    assert sum(attr.values()) == pytest.approx(float(j.score[0]), rel=1e-6)
    assert set(attr) == {"step_time@-0", "step_time@-1", "step_time@-2"}


def test_episode_starts() -> None:
    f = np.zeros((1, 30), bool)
    f[0, [2, 3, 4, 10, 25]] = True
    np.testing.assert_array_equal(np.flatnonzero(episode_starts(f, 5)[0]), [2, 10, 25])
    np.testing.assert_array_equal(np.flatnonzero(episode_starts(f, 1)[0]), [2, 10, 25])
    assert episode_starts(f, 0).sum() == 5  # gap 0: every flagged point its own episode
