"""The custom-metric univariate detector (detector.models.univariate) on synthetic series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.errors import ModelIntegrityError
from detector.models.univariate import (
    DEFAULT_THRESHOLD,
    StreamBank,
    UnivariateConfig,
    UnivariateDetector,
    episode_starts,
    gaussian_prior,
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
    # healthy noise at the default threshold (a 1e-5 tail probability per point): not flagged
    assert not fb[:4].any()


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


@pytest.mark.slow
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


def test_explanation_sentence_and_evidence_per_time_scale() -> None:
    x = noise(4, 300)
    x[280:] *= 2.3
    det = UnivariateDetector()
    st = det.new_state(1)
    for t in range(300):
        j = det.step(st, x[None, t], DEFAULT_THRESHOLD)
    text, attr = det.explain("step_time", j, 0, step_s=60.0, unit="s")
    assert text.startswith("step time 2.") and "x its usual level for " in text
    assert "min" in text and "usual 0.4" in text
    assert set(attr) == {"step_time@point", "step_time@ewm3", "step_time@ewm30"}
    assert max(attr.values()) - np.log10(3) == pytest.approx(float(j.score[0]), rel=1e-9)


def test_judged_from_a_few_points_without_alarming_on_noise() -> None:
    """A verdict from the 5th point on (shrinkage to the prior scale and tail), quiet on
    healthy noise from its first points, and a 2x step at point 8 caught at once."""
    det = UnivariateDetector()
    xs = np.stack([noise(s, 60, sd=0.01) for s in range(30, 50)])
    score, flagged, _ = det.run(xs)
    assert np.isnan(score[:, :4]).all() and np.isfinite(score[:, 4:]).all()
    assert not flagged.any()
    y = noise(51, 60, sd=0.01)
    y[8:] *= 2.0
    _, fy, _ = det.run(y[None, :])
    assert fy[0, 8]


def windows_of(x: np.ndarray, L: int, stride: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Sliding windows (end index, times, values) over ``x``: points t-L+1..t, step ``stride``."""
    out = []
    for end in range(L - 1, x.shape[-1], stride):
        idx = np.arange(end - L + 1, end + 1)
        out.append((end, np.broadcast_to(idx * 60.0, (x.shape[0], L)), x[:, idx]))
    return out


def test_streaming_over_windows_equals_a_full_replay() -> None:
    """Advancing the bank window after window (each overlapping the last but for the new
    points) gives, at every window's end, the judgement of one replay of the whole series."""
    xs = np.stack([noise(s, 700) for s in range(60, 64)])
    xs[1, 500:] *= 1.8
    xs[2, 300:310] = np.nan
    det = UnivariateDetector()
    full, fflag, _ = det.run(xs)
    bank = StreamBank(det)
    keys = ["a", "b", "c", "d"]
    for end, times, vals in windows_of(xs, L=240, stride=3):
        j = bank.advance(keys, times, vals, DEFAULT_THRESHOLD)
        last = np.array([max(i for i in range(end + 1) if np.isfinite(xs[r, i]))
                         for r in range(4)])
        np.testing.assert_array_equal(j.score, full[np.arange(4), last])
        np.testing.assert_array_equal(j.is_anomaly, fflag[np.arange(4), last])
    assert fflag[1, 500:505].any() and not fflag[[0, 3]].any()
    # batch == one at a time: one series through its own bank gives the same
    solo = StreamBank(det)
    for _end, times, vals in windows_of(xs[1:2], L=240, stride=3):
        js = solo.advance(["b"], times, vals, DEFAULT_THRESHOLD)
    np.testing.assert_array_equal(js.score, j.score[1:2])


def test_stream_state_is_bounded_and_forgotten() -> None:
    det = UnivariateDetector()
    bank = StreamBank(det)
    xs = np.stack([noise(s, 2000) for s in range(4)])
    floats = None
    for k, (_end, times, vals) in enumerate(windows_of(xs, L=240, stride=7)):
        bank.advance(["a", "b", "c", "d"], times, vals, DEFAULT_THRESHOLD)
        if k == 1:
            floats = bank.state_floats()
    assert bank.state_floats() == floats  # per-series state does not grow with time
    assert floats is not None and floats < 1000
    bank.forget("b")
    bank.forget("zz")  # unknown: nothing happens
    assert sorted(bank.tracked()) == ["a", "c", "d"]
    # a new pod reuses the row and starts fresh (with the family's prior), judged like a
    # new series would be: no score before its 5th point
    j = bank.advance(["e"], np.arange(3.0)[None, :] * 60, xs[1:2, :3], DEFAULT_THRESHOLD)
    assert np.isnan(j.score[0]) and len(bank) == 4 and bank._cap == 16


def test_episode_starts() -> None:
    f = np.zeros((1, 30), bool)
    f[0, [2, 3, 4, 10, 25]] = True
    np.testing.assert_array_equal(np.flatnonzero(episode_starts(f, 5)[0]), [2, 10, 25])
    np.testing.assert_array_equal(np.flatnonzero(episode_starts(f, 1)[0]), [2, 10, 25])
    assert episode_starts(f, 0).sum() == 5  # gap 0: every flagged point its own episode


def test_seasonal_scale_catches_a_missing_daily_jump_and_streams_alike() -> None:
    """With ``season_points`` (one "day" of 48 points here) a day whose usual jump does not
    come is flagged, while the jump itself, every day, is not; streaming the series window
    by window gives the replay's judgement there too."""
    rng = np.random.default_rng(7)
    t = np.arange(48 * 20)
    x = np.where(t % 48 < 12, 10.0, 0.0) + 0.1 * rng.standard_normal(t.size) + 5.0
    x[48 * 15:48 * 15 + 12] -= 10.0  # day 15: no jump
    det = UnivariateDetector(config=UnivariateConfig(season_points=48))
    score, flagged, j = det.run(x[None, :])
    assert not flagged[0, 48 * 4:48 * 15].any()  # the daily jump is usual after a few days
    assert flagged[0, 48 * 15:48 * 15 + 12].any()
    assert j is not None and j.scales[-1] == -48.0
    bank = StreamBank(det)
    for end, times, vals in windows_of(x[None, :], L=100, stride=5):
        js = bank.advance(["p"], times, vals, DEFAULT_THRESHOLD)
        assert js.score[0] == score[0, end] or (np.isnan(js.score[0]) and np.isnan(score[0, end]))
    assert bank.state_floats() < 1000


def square_day(seed: int, days: int = 12, period: int = 288) -> np.ndarray:
    """A healthy daily cycle from the series' first point: low at night, high by day (the
    shape of NAB's ``art_daily_*``), with a little noise."""
    t = np.arange(period * days)
    return 10.0 + 5.0 * (np.sin(2 * np.pi * (t + 0.5) / period) > 0) \
        + 0.1 * np.random.default_rng(seed).standard_normal(t.size)


def test_a_daily_cycle_from_the_start_is_not_held_flagged() -> None:
    """A daily cycle that starts with the series is judged against a level that cannot
    follow it: flagged, the points do not teach the baseline, so without relearning the
    flagging kept itself going (one episode of ~1,400 points here). The episode now ends
    within ``relearn_points`` of its first flagged point and later days are quiet, with or
    without the seasonal time scale; with it (one day of points, as ``podguard evaluate
    --nab`` runs), a real spike on a later day is still flagged and alarms."""
    x = square_day(11)
    spike = 288 * 9 + 100  # by day, on day 10
    x[spike] += 4.0
    for season in (0, 288):
        det = UnivariateDetector(config=UnivariateConfig(season_points=season))
        n = det.config.relearn_points
        assert n == round(det.config.halflife_points)  # one baseline half-life, not tuned
        for thr in (DEFAULT_THRESHOLD, 3.0):
            _, flagged, _ = det.run(x[None, :], thr)
            idx = np.flatnonzero(flagged[0])
            assert idx.size and idx[0] < 288  # the first day does look anomalous
            later = flagged[0, idx[0] + n + 5:spike]
            if thr == DEFAULT_THRESHOLD:  # a 1e-5 tail: not a healthy point flagged later
                assert not later.any(), (season, np.flatnonzero(later) + idx[0] + n + 5)
            else:  # a 1e-3 tail: a few stray points at most
                assert later.mean() < 0.005, (season, later.mean())
            if season:
                assert flagged[0, spike]
                starts = episode_starts(flagged, det.config.episode_gap_points)[0]
                assert starts[spike]
        if season:
            # the relearning restarts the seasonal change's scale too (the gating starved it
            # like the level's): otherwise the seasonal tail learns a mean excess ~5x its
            # prior's from the episode's points and a later missed or extra jump scores less
            st = det.new_state(1)
            for t in range(spike):
                det.step(st, x[None, t], DEFAULT_THRESHOLD)
            prior_beta = gaussian_prior(det.config)[1]
            assert st.beta[0, -1] < 2 * prior_beta[-1], (st.beta[0], prior_beta)


def test_a_lasting_level_shift_becomes_the_new_normal_and_a_spike_is_still_caught() -> None:
    x = noise(12, 3000, level=10.0, sd=0.1)
    x[1000:] += 3.0  # the series moves to a new level and stays there
    x[2500] += 6.0  # a spike on the new level, beyond anything the series has shown
    det = UnivariateDetector()
    n = det.config.relearn_points
    _, flagged, _ = det.run(x[None, :])
    assert flagged[0, 1000:1003].any()  # the shift is caught at once
    assert flagged[0, 1000:1000 + n].mean() > 0.9  # and held while it is news
    assert not flagged[0, 1000 + n + 5:2500].any()  # then it is the new normal
    assert flagged[0, 2500]
    starts = np.flatnonzero(det.alarms(x[None, :])[0])
    assert starts.tolist() == [1000, 2500]
    # the daemon's way (a pod's stream advanced window by window): the same verdicts
    bank = StreamBank(det)
    for end, times, vals in windows_of(x[None, :], L=120, stride=7):
        assert bank.advance(["p"], times, vals, DEFAULT_THRESHOLD).is_anomaly[0] \
            == flagged[0, end]
    # relearning off: the old behaviour, the shift held flagged for good
    off = UnivariateDetector(config=UnivariateConfig(relearn_halflives=0.0))
    assert off.run(x[None, :])[1][0, 2000:2500].all()
