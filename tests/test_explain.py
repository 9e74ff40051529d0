"""Explanations: exact Shapley, expected gradients (numpy, checked against torch.autograd and
shap.GradientExplainer), TreeSHAP additivity, fault attribution, text."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import shap
import torch
from threadpoolctl import threadpool_limits

from detector.errors import InputError
from detector.explain import (
    LeafPaths,
    TreeArrays,
    describe,
    exact_shapley,
    expected_gradients,
    explain_flagged,
    format_bytes,
    format_duration,
    format_rate,
    human_name,
    path_dependent_tree_shap,
    rescale_attribution,
)
from detector.models.attribution import exact_shapley_rows
from detector.models.autoencoder import AutoencoderConfig, AutoencoderDetector
from detector.models.base import Attribution
from detector.models.drift import DriftConfig, DriftDetector
from detector.models.forest import iforest_tree_arrays
from tests.support.drift_data import NAMES, drifted, healthy, healthy_std

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def drift() -> DriftDetector:
    det = DriftDetector(
        DriftConfig(), AutoencoderDetector(AutoencoderConfig(max_epochs=60, patience=6))
    )
    det.fit(healthy(4000, seed=1), NAMES)
    det.infer_threshold(healthy(2000, seed=2), fpr=0.01)
    return det


def _nonlinear(x: np.ndarray) -> np.ndarray:
    return x[:, 0] * x[:, 1] + np.sin(x[:, 2]) + x[:, 3] ** 2 + 0.0 * x[:, 4] + 2.0 * x[:, 5]


# --------------------------------------------------------------------------- exact Shapley


def test_exact_shapley_matches_shap_exact() -> None:
    rng = np.random.default_rng(0)
    background = rng.normal(size=(12, 6))
    x = rng.normal(size=6)
    names = [f"f{i}" for i in range(6)]
    ours = exact_shapley(_nonlinear, x, background, names)
    masker = shap.maskers.Independent(background, max_samples=len(background))
    reference = shap.explainers.Exact(_nonlinear, masker)(x[None, :])
    np.testing.assert_allclose(list(ours.values.values()), reference.values[0], atol=1e-10)
    assert ours.base_value == pytest.approx(float(reference.base_values[0]))


def test_exact_shapley_axioms() -> None:
    rng = np.random.default_rng(1)
    background = rng.normal(size=(5, 6))
    x = rng.normal(size=6)
    attribution = exact_shapley(_nonlinear, x, background, [f"f{i}" for i in range(6)])
    v = attribution.values
    total = attribution.base_value + sum(v.values())
    assert total == pytest.approx(float(_nonlinear(x[None, :])[0]))  # efficiency
    assert v["f4"] == pytest.approx(0.0, abs=1e-12)  # dummy
    assert v["f5"] == pytest.approx(2.0 * (x[5] - background[:, 5].mean()))  # linear term
    sym = exact_shapley(lambda a: a[:, 0] * a[:, 1], np.array([2.0, 2.0]), np.zeros(2), "ab")
    assert sym.values["a"] == pytest.approx(sym.values["b"]) == pytest.approx(2.0)


def test_exact_shapley_of_many_rows_is_bit_for_bit_that_of_each_row() -> None:
    """The batched form the pipeline uses for the leak verdicts due an explanation (one call
    of the score per 32 rows) gives exactly what row-by-row calls give."""
    rng = np.random.default_rng(2)
    background = rng.normal(size=(8, 6))
    X = rng.normal(size=(70, 6))  # more than one chunk
    names = [f"f{i}" for i in range(6)]
    calls: list[int] = []

    def fn(a: np.ndarray) -> np.ndarray:
        calls.append(len(a))
        return _nonlinear(a)

    many = exact_shapley_rows(fn, X, background, names)
    assert len(calls) == 3 and len(many) == 70
    for x, got in zip(X, many, strict=True):
        one = exact_shapley(_nonlinear, x, background, names)
        assert got.values == one.values and got.base_value == one.base_value


def test_exact_shapley_refuses_large_or_mismatched_inputs() -> None:
    with pytest.raises(InputError):
        exact_shapley(lambda a: a.sum(1), np.zeros(13), np.zeros((1, 13)), list("abcdefghijklm"))
    with pytest.raises(InputError):
        exact_shapley(lambda a: a.sum(1), np.zeros(3), np.zeros((1, 3)), ["a", "b"])


# --------------------------------------------------------------------------- gradients


def _torch_expected_gradients(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    background: np.ndarray,
    n_steps: int,
) -> tuple[np.ndarray, float, np.ndarray]:
    """The reference: expected gradients of a torch function through ``torch.autograd`` (the
    implementation podguard used before its numpy backward pass), in float64."""
    xa = torch.from_numpy(np.atleast_2d(np.asarray(x, dtype=np.float64)))
    bg = torch.from_numpy(np.atleast_2d(np.asarray(background, dtype=np.float64)))
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alpha = torch.from_numpy(0.5 * (nodes + 1.0))
    weight = torch.from_numpy(0.5 * weights)
    with torch.no_grad():
        base = float(fn(bg).reshape(-1).mean())
        fx = fn(xa).reshape(-1).numpy()
    delta = xa[:, None, :] - bg[None, :, :]  # (n, b, d)
    points = bg[None, :, None, :] + alpha[None, None, :, None] * delta[:, :, None, :]
    points = points.reshape(-1, xa.shape[1]).requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(points).reshape(-1).sum(), points)
    grad = grad.reshape(xa.shape[0], bg.shape[0], n_steps, xa.shape[1])
    integral = (grad * weight[None, None, :, None]).sum(dim=2)
    return (delta * integral).mean(dim=1).numpy(), base, fx


def _shap_gradient_explainer(
    module: torch.nn.Module, x: np.ndarray, background: np.ndarray, nsamples: int
) -> np.ndarray:
    """``shap.GradientExplainer`` values (n, d) of a torch module (n, d) -> (n, 1)."""
    explainer = shap.GradientExplainer(module, torch.from_numpy(np.asarray(background, np.float32)))
    values = explainer.shap_values(
        torch.from_numpy(np.atleast_2d(np.asarray(x, np.float32))), nsamples=nsamples, rseed=0
    )
    arr = np.asarray(values[0] if isinstance(values, list) else values, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1)


def test_expected_gradients_sum_to_the_reconstruction_error(drift: DriftDetector) -> None:
    ae = drift.autoencoder
    x = np.vstack([drifted(10, seed=3), healthy(10, seed=4)])
    phi, base, score = ae.score_shap(x)
    np.testing.assert_allclose(score, ae.score(x), rtol=1e-5)
    gap = np.abs(phi.sum(axis=1) + base - score)
    assert np.all(gap <= 0.01 * np.abs(score - base) + 1e-4)


@pytest.mark.parametrize("n_steps", [1, 8])
def test_numpy_expected_gradients_equal_torch_autograd(drift: DriftDetector, n_steps: int) -> None:
    """Same attributions as the torch path, to 1e-5 relative, on drifted, healthy and
    partly missing rows (missing-mask inputs on), chunked or not."""
    ae = drift.autoencoder
    x = np.vstack([drifted(6, seed=20), healthy(4, seed=21)])
    x[7, ::3] = np.nan
    inputs = ae._inputs(x)
    theirs, t_base, t_fx = _torch_expected_gradients(
        ae.error_module().double(), inputs, ae.background_, n_steps
    )
    for max_rows in (4096, 1):  # one chunk; one row of x per chunk
        ours, base, fx = expected_gradients(
            ae.error_and_grad, inputs, ae.background_, n_steps=n_steps, max_rows=max_rows
        )
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
        assert base == pytest.approx(t_base, rel=1e-9)
        np.testing.assert_allclose(fx, t_fx, rtol=1e-9)
    if n_steps == ae.config.explain_steps:  # score_shap: the mask columns folded in
        phi_f, _, _ = ae.score_shap(x)
        f = len(NAMES)
        folded = theirs[:, :f] + theirs[:, f:]
        np.testing.assert_allclose(phi_f, folded, rtol=1e-5, atol=1e-5 * np.abs(folded).max())


def test_expected_gradients_agree_with_shap_gradient_explainer(drift: DriftDetector) -> None:
    ae = drift.autoencoder
    inputs = ae._inputs(drifted(3, seed=5))
    ours, _, _ = expected_gradients(ae.error_and_grad, inputs, ae.background_, n_steps=16)
    theirs = _shap_gradient_explainer(ae.error_module(), inputs, ae.background_, nsamples=3000)
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a, b)[0, 1] > 0.95
        assert a.argmax() == b.argmax()


def test_expected_gradients_of_a_linear_function_are_exact() -> None:
    w = np.array([1.0, -2.0, 0.5])

    def fn(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a @ w, np.broadcast_to(w, a.shape)

    x = np.array([[1.0, 1.0, 1.0]], dtype=np.float32)
    bg = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 2.0]], dtype=np.float32)
    phi, base, fx = expected_gradients(fn, x, bg, n_steps=1)
    np.testing.assert_allclose(phi[0], w * (x[0] - bg.mean(axis=0)), atol=1e-12)
    assert base == pytest.approx(1.5) and fx[0] == pytest.approx(-0.5)


def test_expected_gradients_refuse_mismatched_inputs() -> None:
    def fn(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a.sum(axis=1), np.ones_like(a)

    with pytest.raises(InputError):
        expected_gradients(fn, np.zeros((1, 3)), np.zeros((2, 4)))
    with pytest.raises(InputError):
        expected_gradients(fn, np.zeros((1, 3)), np.zeros((0, 3)))
    with pytest.raises(InputError):
        expected_gradients(fn, np.zeros((1, 3)), np.zeros((2, 3)), n_steps=0)


# --------------------------------------------------------------------------- trees


def test_tree_explainer_values_are_additive(drift: DriftDetector) -> None:
    """shap.TreeExplainer on the sklearn estimator: values sum to output - base value."""
    forest = drift.forest
    z = forest.transform(np.vstack([healthy(10, seed=6), drifted(10, seed=7)]))
    explainer = shap.TreeExplainer(forest.estimator_)
    values = explainer.shap_values(z)
    path_length = values.sum(axis=1) + explainer.expected_value
    # sklearn: score_samples = -2^(-E[h] / c(max_samples))
    np.testing.assert_allclose(
        -np.power(2.0, -path_length / forest._c), forest.estimator_.score_samples(z), atol=1e-9
    )


def test_numpy_tree_shap_equals_shap_tree_explainer(drift: DriftDetector) -> None:
    """Exact path-dependent TreeSHAP from the tree arrays, without shap at run time."""
    forest = drift.forest
    est = forest.estimator_
    paths = LeafPaths.from_trees(iforest_tree_arrays(est), est.n_features_in_)
    x = np.vstack([healthy(10, seed=6), drifted(10, seed=7), drifted(5, seed=8, shift_sd=-6.0)])
    x[0, ::2] = np.nan  # imputed to the median by the scaler, as the forest sees it
    z = forest.transform(x)
    explainer = shap.TreeExplainer(est)
    reference = np.asarray(explainer.shap_values(z, check_additivity=False))
    phi, base = path_dependent_tree_shap(paths, z, max_cells=1)  # one row per block
    scale = np.abs(reference).max()
    np.testing.assert_allclose(phi, reference, rtol=1e-9, atol=1e-12 * scale)
    assert base == pytest.approx(float(np.ravel(explainer.expected_value)[0]), rel=1e-12)
    assert forest._packed is not None
    np.testing.assert_allclose(
        phi.sum(axis=1) + base, forest._packed.mean_path_length(z), rtol=1e-12
    )
    np.testing.assert_allclose(path_dependent_tree_shap(paths, z)[0], phi, rtol=1e-12)


def test_numpy_tree_shap_on_a_hand_made_tree() -> None:
    """x0 <= 0 ? (x1 <= 0 ? 1 : 3) : 10, covers 4 | 2 (1 | 1) | 2: exact values by hand."""
    tree = TreeArrays(
        children_left=np.array([1, 3, -1, -1, -1]),
        children_right=np.array([2, 4, -1, -1, -1]),
        feature=np.array([0, 1, 0, 0, 0]),
        threshold=np.array([0.0, 0.0, 0.0, 0.0, 0.0]),
        value=np.array([0.0, 0.0, 10.0, 1.0, 3.0]),
        cover=np.array([4.0, 2.0, 2.0, 1.0, 1.0]),
    )
    paths = LeafPaths.from_trees([tree], n_features=3)
    assert paths.expected_value == pytest.approx(0.5 * 2.0 + 0.5 * 10.0)
    phi, base = path_dependent_tree_shap(paths, np.array([[-1.0, 1.0, 7.0]]))
    # v({}) = 6, v({0}) = 2, v({1}) = 0.5*3 + 0.5*10 = 6.5, v({0, 1}) = 3
    assert base == pytest.approx(6.0)
    np.testing.assert_allclose(
        phi[0], [0.5 * (2 - 6) + 0.5 * (3 - 6.5), 0.5 * (6.5 - 6) + 0.5 * (3 - 2), 0.0]
    )
    with pytest.raises(InputError):
        path_dependent_tree_shap(paths, np.zeros((1, 2)))


def test_rescale_attribution_keeps_the_sum_and_flips_for_decreasing_maps() -> None:
    phi = np.array([[1.0, 2.0, -0.5], [0.0, 0.0, 0.0]])
    base_in, out_in = 1.0, np.array([3.5, 1.0])

    def t(v: np.ndarray) -> np.ndarray:
        return -np.exp(v)  # decreasing

    out = rescale_attribution(
        phi, base_in, out_in, t(np.array(base_in)), t(out_in), -np.exp(out_in)
    )
    assert out[0].sum() == pytest.approx(float(t(out_in[0]) - t(np.array(base_in))))
    assert np.all(np.sign(out[0]) == -np.sign(phi[0]))
    np.testing.assert_array_equal(out[1], 0.0)  # at the base: fallback slope, zero values


# --------------------------------------------------------------------------- injected faults


def _one_feature_faults(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = healthy(n, seed=seed, missing=0.0)
    shifted = rng.integers(0, len(NAMES), size=n)
    sign = rng.choice([-1.0, 1.0], size=n)
    x[np.arange(n), shifted] += sign * 6.0 * healthy_std()[shifted]
    return x, shifted


@pytest.mark.parametrize("member", ["forest", "autoencoder", "fused"])
def test_shifted_feature_is_the_top_contributor(drift: DriftDetector, member: str) -> None:
    x, shifted = _one_feature_faults(200, seed=8)
    explainers: dict[str, Callable[[np.ndarray], list[Attribution]]] = {
        "forest": drift.forest.explain,
        "autoencoder": drift.autoencoder.explain,
        "fused": drift.explain,
    }
    attributions = explainers[member](x)
    top = np.array([NAMES.index(a.top(1)[0][0]) for a in attributions])
    hit_rate = float(np.mean(top == shifted))
    print(f"{member}: shifted feature ranked first in {hit_rate:.0%} of 200 faults")
    assert hit_rate >= 0.9


def test_collapse_pattern_names_the_collapsed_channels(drift: DriftDetector) -> None:
    attributions = drift.explain(drifted(20, seed=9, shift_sd=-5.0))
    collapsed = {"cpu_rate.level_z", "gpu_util.level_z", "net_rx_rate.level_z"}
    hits = [len(collapsed & {n for n, _ in a.top(3)}) for a in attributions]
    assert np.mean(hits) >= 2.5


# --------------------------------------------------------------------------- text


def test_describe_leak_sentence() -> None:
    attribution = Attribution(
        base_value=0.0,
        values={
            "mem_working_set.slope_30m": 0.41,
            "mem_rss.slope_30m": 0.22,
            "cpu_rate.level_z": -0.1,
        },
    )
    facts = {
        "subject": "working set",
        "growth_bytes_per_s": 410 * 2**20 / 3600,
        "growth_duration_s": 3 * 3600.0,
        "time_to_oom_s": 38 * 60.0,
        "limit_bytes": 8 * 2**30,
    }
    assert describe(attribution, facts) == (  # type: ignore[arg-type]
        "working set +410 MiB/h for 3 h, OOM in ~38 min at the 8 GiB limit; "
        "top contributors: memory slope (0.41), RSS growth (0.22)"
    )


def test_describe_a_crash_loop_warned_on_its_kills_names_the_working_set() -> None:
    """A crash loop's new life, raised on the earlier lives' kills before its own growth is
    measured: the sentence names what was killed and the attribution is the kills."""
    from detector.models.trend import crash_loop_attribution

    facts = {"subject": "working set", "oom_kills": 2, "time_to_oom_s": 20 * 60.0,
             "time_to_oom_low_s": 11 * 60.0, "time_to_oom_high_s": 22 * 60.0,
             "limit_bytes": 2.5 * 2**30}
    assert describe(crash_loop_attribution(), facts) == (  # type: ignore[arg-type]
        "crash-looping leak of the working set (2 OOM kills so far), OOM in ~20 min "
        "(11 min-22 min) at the 2.5 GiB limit; "
        "top contributors: working set OOM kills of the earlier lives (1.00)")
    # with this life's growth measured the growth clause names it, once
    grown = {**facts, "growth_bytes_per_s": 2**30 / 3600}
    assert describe(crash_loop_attribution(), grown).startswith(  # type: ignore[arg-type]
        "crash-looping leak (2 OOM kills so far), working set +1 GiB/h, OOM in ~20 min")


def test_describe_without_facts_or_positive_contributors() -> None:
    negative = Attribution(base_value=0.0, values={"cpu_rate.level_z": -1.0})
    assert describe(negative) == "no single feature stands out"
    drift_text = describe(
        Attribution(base_value=0.0, values={"gpu_util.level_z": 1.2, "cpu_rate.level_z": 0.8}),
        {"score": 3.1, "threshold": 2.0},
    )
    assert drift_text == (
        "score 3.10 over threshold 2.00; top contributors: "
        "GPU utilisation level vs baseline (1.20), CPU level vs baseline (0.80)"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [(512, "512 B"), (1536, "1.5 KiB"), (430 * 2**20, "430 MiB"), (8 * 2**30, "8 GiB")],
)
def test_format_bytes(value: float, text: str) -> None:
    assert format_bytes(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (45, "45 s"),
        (38 * 60, "38 min"),
        (3 * 3600, "3 h"),
        (5340, "89 min"),
        (5400, "1.5 h"),
        (6 * 3600 + 1800, "6.5 h"),
        (3 * 86400, "3 d"),
        (float("inf"), "unknown time"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_rate_and_human_names() -> None:
    assert format_rate(-(2**20) / 3600) == "-1 MiB/h"
    assert human_name("net_rx_rate.log_vol_ratio") == "network receive volatility change"
    assert human_name("mem_working_set.frac_limit") == "working set fraction of limit"
    assert human_name("custom_queue.depth_p99") == "custom queue depth p99"  # fallback


# --------------------------------------------------------------------------- verdicts, speed


def test_explain_flagged_explains_only_positive_verdicts(drift: DriftDetector) -> None:
    x = np.vstack([healthy(50, seed=10), drifted(5, seed=11, shift_sd=-6.0)])
    explanations = explain_flagged(drift, x)
    rows = {e.row for e in explanations}
    assert {50, 51, 52, 53, 54} <= rows
    assert len(rows) <= 5 + 3  # at most a few of the 50 healthy rows (FPR 1 %)
    assert all(e.score > drift.threshold_ for e in explanations)  # type: ignore[operator]
    assert all("top contributors" in e.text for e in explanations if e.row >= 50)


def test_explanation_latency_one_flagged_window(drift: DriftDetector) -> None:
    x = drifted(6, seed=12)
    with threadpool_limits(1):
        drift.explain(x[:1])  # warm-up: builds the TreeExplainer once
        times = []
        for i in range(1, 6):
            start = time.perf_counter()
            drift.explain(x[i : i + 1])
            times.append(time.perf_counter() - start)
    best, median = min(times), float(np.median(times))
    print(f"explanation latency: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms")
    assert median < 0.050
