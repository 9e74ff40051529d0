"""The trend analysis's shared and blocked computations give what one-at-a-time computation
gives, bit for bit (detector.models.trend: a batch analysed in blocks of windows, the slow
views of one number of blocks stacked, the drawdown shared by the short paths), and the
robust statistics they use agree with their plain definitions."""

from __future__ import annotations

import numpy as np
import pytest

from detector.models import trend
from detector.models.trend import TrendDetector, _fields, max_drawdown
from detector.scenarios import generate
from detector.windows import MEMORY_CHANNELS, WindowBatch, collect_windows
from detector.windows.stats import nanmedian_last


@pytest.fixture(scope="module")
def batch() -> WindowBatch:
    """Windows of every scenario shape (leaks, restarts, young pods, GPU and not), 60 s grid."""
    trace, _ = generate(n_pods_per_kind=1, hours=6, seed=303)
    return collect_windows(trace, every_s=1800)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _analysis_arrays(det: TrendDetector, batch: WindowBatch) -> list[np.ndarray]:
    det.forget_analysis()
    an = det._analyse(batch)
    out: list[np.ndarray] = []
    for st in (an.slow, an.fast, an.imminent):
        out += list(_fields(st))
    return [*out, an.slow_span, an.fast_span, an.imminent_span]


def test_a_batch_analysed_in_blocks_is_the_batch_analysed_whole(
        batch: WindowBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    det = TrendDetector()
    assert len(batch) > 50
    monkeypatch.setattr(trend, "ANALYSIS_BLOCK", 10 * len(batch))
    whole = _analysis_arrays(det, batch)
    monkeypatch.setattr(trend, "ANALYSIS_BLOCK", 7)  # blocks of 7 windows, the last shorter
    blocked = _analysis_arrays(det, batch)
    assert len(whole) == len(blocked)
    assert all(_same(a, b) for a, b in zip(whole, blocked, strict=True))
    # and every figure is really there (not all zeros): some windows grow, some judged fast
    assert np.count_nonzero(whole[0]) > 0 and np.isfinite(whole[-2]).any()


def test_views_of_one_number_of_blocks_computed_together_are_each_computed_alone(
        batch: WindowBatch) -> None:
    det = TrendDetector()
    step = batch.step_s
    v3, _, lim3 = det._inputs(batch.values, batch.limits, step, batch.restarts_of_memory())
    v = v3.reshape(-1, v3.shape[-1])
    lim = lim3.reshape(-1)
    rows = np.flatnonzero(np.isfinite(v).any(axis=-1))
    v, lim = v[rows], lim[rows]
    assert v3.shape[1] == len(MEMORY_CHANNELS)
    views = [(300.0, 8), (900.0, 8)]  # the default views with 8 blocks: 5- and 15-min blocks
    together = det._views(v, lim, step, views, {})
    for view, st in zip(views, together, strict=True):
        (alone,) = det._views(v, lim, step, [view], {})
        assert all(_same(a, b) for a, b in zip(_fields(st), _fields(alone), strict=True))
    assert not _same(together[0].score, together[1].score)  # two different views


def _drawdown_reference(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape[0])
    for r, row in enumerate(x.astype(np.float64)):
        top = -np.inf
        for value in row:
            if np.isfinite(value):
                top = max(top, value)
                out[r] = max(out[r], top - value)
    return out


def test_max_drawdown_is_the_largest_fall_below_the_running_maximum() -> None:
    rng = np.random.default_rng(4)
    x = np.cumsum(rng.standard_normal((40, 60)), axis=1)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0] = np.nan  # a row without data: 0
    x[1] = np.arange(60.0)  # growth only: 0
    got = max_drawdown(x)
    np.testing.assert_allclose(got, _drawdown_reference(x), rtol=0, atol=1e-12)
    assert got[0] == 0.0 and got[1] == 0.0 and got[2:].max() > 1.0


def test_nanmedian_last_is_numpys_nanmedian() -> None:
    rng = np.random.default_rng(5)
    for shape in ((30, 7), (30, 8), (4, 5, 9), (1, 1)):
        x = rng.standard_normal(shape)
        x[rng.random(shape) < 0.3] = np.nan
        x.reshape(-1, shape[-1])[0] = np.nan  # an all-NaN row: NaN
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            want = np.nanmedian(x, axis=-1)
        np.testing.assert_array_equal(nanmedian_last(x), want)
    assert nanmedian_last(np.zeros((0, 4))).shape == (0,)
