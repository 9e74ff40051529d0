"""Attribution maths the detectors explain themselves with (numpy only).

* :func:`expected_gradients` - expected gradients (the estimator behind
  ``shap.GradientExplainer``) of a function that returns its value and gradient, against a
  healthy background, integrated with Gauss-Legendre quadrature instead of random path points,
  so the result is deterministic and sums to ``f(x) - mean f(background)`` to within the
  quadrature error. Used by :class:`detector.models.autoencoder.AutoencoderDetector` on its
  reconstruction error, whose gradient it computes by a hand-written backward pass.
* :class:`LeafPaths` + :func:`path_dependent_tree_shap` - exact path-dependent TreeSHAP (the
  values ``shap.TreeExplainer`` computes without background data) of a tree ensemble given as
  plain arrays (:class:`TreeArrays`), vectorised over (rows x leaves x features on the path);
  used by the isolation forest.
* :func:`rescale_attribution` - carries an additive attribution through a monotone transform
  of the model output by the secant slope, keeping the sum exact. Used by the forest and the
  fusion.
* :func:`combine` - the fused attribution as the fusion's weighted sum of the members'.
* :func:`exact_shapley` - exact interventional Shapley values by 2^k enumeration for small
  feature sets (k <= 12); used on the leak detector's handful of inputs.

It sits inside the models layer (it imports only :mod:`detector.models.base` and
:mod:`detector.errors`), so a detector never reaches up into :mod:`detector.explain`, which
turns attributions into sentences and re-exports these names. It never imports torch or shap.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from detector.errors import InputError
from detector.models.base import Attribution

__all__ = [
    "LeafPaths",
    "TreeArrays",
    "combine",
    "exact_shapley",
    "exact_shapley_rows",
    "expected_gradients",
    "path_dependent_tree_shap",
    "rescale_attribution",
]



def rescale_attribution(
    phi: np.ndarray,
    base_in: float | np.ndarray,
    out_in: np.ndarray,
    base_out: float | np.ndarray,
    out_out: np.ndarray,
    slope_at: np.ndarray,
    rel_eps: float = 1e-9,
) -> np.ndarray:
    """Map attributions of ``g`` into attributions of ``T(g)`` for a monotone ``T``.

    ``phi`` (n, d) explains ``out_in - base_in`` (n,); the result explains
    ``out_out - base_out`` where ``out_out = T(out_in)``, ``base_out = T(base_in)``. Each row is
    multiplied by the secant slope ``(out_out - base_out) / (out_in - base_in)``; where the
    denominator vanishes, by ``slope_at`` = T'(out_in). The row sum stays exact (if it was) and a
    decreasing ``T`` flips the signs, as it should. This is an approximation: a feature's share
    of a non-linear transform of a sum is not uniquely defined; it keeps each model's ranking
    of features within a row.
    """
    phi = np.asarray(phi, dtype=np.float64)
    d_in = np.asarray(out_in, dtype=np.float64) - base_in
    d_out = np.asarray(out_out, dtype=np.float64) - base_out
    tiny = rel_eps * (1.0 + np.abs(np.asarray(out_in, dtype=np.float64)))
    safe = np.abs(d_in) > tiny
    ratio = np.where(safe, d_out / np.where(safe, d_in, 1.0), np.asarray(slope_at, np.float64))
    return phi * ratio[:, None]


def combine(
    parts: Sequence[tuple[float, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of attributions: ``parts = [(weight, phi (n, d), base (n,) or scalar)]``.

    Returns ``(phi, base)`` of ``sum_m weight_m * score_m``; additivity is preserved.
    """
    if not parts:
        raise ValueError("combine() needs at least one part")
    phi = sum(w * np.asarray(p, dtype=np.float64) for w, p, _ in parts)
    base = sum(w * np.asarray(b, dtype=np.float64) for w, _, b in parts)
    return np.asarray(phi), np.asarray(base)


@functools.lru_cache(maxsize=8)
def _gauss_legendre_01(k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` Gauss-Legendre nodes and weights on [0, 1] (computed once per ``k``: the
    root finding cost more than the drift explanation's gradients; read-only)."""
    nodes, weights = np.polynomial.legendre.leggauss(k)
    out = 0.5 * (nodes + 1.0), 0.5 * weights
    for a in out:
        a.flags.writeable = False
    return out


def expected_gradients(
    fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    background: np.ndarray,
    n_steps: int = 8,
    max_rows: int = 4096,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Expected gradients of a scalar-per-row function, given with its gradient.

    ``fn`` maps points (m, d) to ``(values (m,), gradients (m, d))``. ``phi[i, j] = mean_b
    (x_ij - b_j) * integral_0^1 d fn / d x_j (b + a (x_i - b)) da``, the integral by
    ``n_steps`` Gauss-Legendre nodes: one call to ``fn`` per chunk of rows of ``x``, on all
    (row x background x node) points of the chunk at once, at most ``max_rows`` points per call
    (memory stays bounded whatever ``len(x)``). Returns ``(phi, base, f(x))`` in float64 with
    ``base = mean_b fn(b)``; ``phi.sum(1) ~= f(x) - base``.
    """
    xa = np.atleast_2d(np.asarray(x, dtype=np.float64))
    bg = np.atleast_2d(np.asarray(background, dtype=np.float64))
    if xa.ndim != 2 or xa.shape[1] != bg.shape[1] or bg.shape[0] == 0:
        raise InputError(f"x has shape {xa.shape}, background {bg.shape}")
    if n_steps < 1:
        raise InputError(f"n_steps must be >= 1, got {n_steps}")
    n, d = xa.shape
    b = bg.shape[0]
    alphas, weights = _gauss_legendre_01(n_steps)
    base = float(np.mean(fn(bg)[0]))
    fx = np.asarray(fn(xa)[0], dtype=np.float64).reshape(n)
    rows_per_chunk = max(1, max_rows // (b * n_steps))
    phi = np.empty((n, d), dtype=np.float64)
    for s in range(0, n, rows_per_chunk):
        xs = xa[s : s + rows_per_chunk]  # (m, d)
        m = xs.shape[0]
        delta = xs[:, None, :] - bg[None, :, :]  # (m, b, d)
        points = bg[None, :, None, :] + alphas[None, None, :, None] * delta[:, :, None, :]
        _, grad = fn(points.reshape(-1, d))  # (m*b*k, d)
        integral = np.einsum("mbkd,k->mbd", np.reshape(grad, (m, b, n_steps, d)), weights)
        phi[s : s + m] = np.einsum("mbd,mbd->md", delta, integral) / b
    return phi, base, fx


class TreeArrays(NamedTuple):
    """One fitted binary tree as arrays over its nodes (scikit-learn's ``tree_`` layout).

    A row goes left at a split when ``x[feature] <= threshold``. ``feature`` holds the
    column of the *whole* input (remap a tree that saw a subset of columns first); ``value``
    is read at the leaves only; ``cover`` is the (weighted) training rows through each node.
    """

    children_left: np.ndarray  # (nodes,) int, -1 at leaves
    children_right: np.ndarray  # (nodes,) int, -1 at leaves
    feature: np.ndarray  # (nodes,) int, ignored at leaves
    threshold: np.ndarray  # (nodes,) float, ignored at leaves
    value: np.ndarray  # (nodes,) float, the model's output at a leaf
    cover: np.ndarray  # (nodes,) float > 0


@dataclass(frozen=True)
class LeafPaths:
    """Every leaf of a tree ensemble with what its root path asks of each feature.

    For leaf ``l`` and the ``k``-th distinct feature on its path: the path is followed by
    rows with ``lower[l, k] < x[feature[l, k]] <= upper[l, k]``, and ``zero[l, k]`` is the
    product of the cover fractions of the path's children at that feature's splits (where a
    row goes when the feature is unknown). Slots past ``size[l]`` are padding (``zero = 1``,
    never satisfied), so they multiply by one. ``value`` is the leaf value times its tree's
    weight. Built once per model (:meth:`from_trees`); a 200-tree isolation forest gives
    ~40,000 leaves x 8 slots.
    """

    feature: np.ndarray  # (L, D) intp
    lower: np.ndarray  # (L, D) float64
    upper: np.ndarray  # (L, D) float64
    zero: np.ndarray  # (L, D) float64
    size: np.ndarray  # (L,) intp
    value: np.ndarray  # (L,) float64
    n_features: int

    @functools.cached_property
    def shap_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What TreeSHAP needs of the paths alone, computed once: the Shapley weights of
        each leaf's path length ``(L, D + 1)``, its used slots ``(L, D)`` and the zero
        fractions slot by slot ``(D, L)``."""
        depth = self.feature.shape[1]
        return (_shapley_weights(depth)[self.size],
                np.arange(depth)[None, :] < self.size[:, None],
                np.ascontiguousarray(self.zero.T))

    @property
    def expected_value(self) -> float:
        """The cover-weighted mean output: the base value of the attributions."""
        return float(np.sum(self.value * np.prod(self.zero, axis=1)))

    @classmethod
    def from_trees(
        cls,
        trees: Sequence[TreeArrays],
        n_features: int,
        weights: Sequence[float] | None = None,
    ) -> LeafPaths:
        """Collect the leaves of ``trees`` (output = sum of ``weight * tree value``; the
        default weights ``1 / len(trees)`` make it the mean, as a forest's)."""
        if not trees:
            raise InputError("LeafPaths.from_trees needs at least one tree")
        w = [1.0 / len(trees)] * len(trees) if weights is None else [float(v) for v in weights]
        if len(w) != len(trees):
            raise InputError(f"{len(trees)} trees but {len(w)} weights")
        leaves: list[tuple[dict[int, tuple[float, float, float]], float]] = []
        for tree, weight in zip(trees, w):
            left = np.asarray(tree.children_left, dtype=np.intp)
            right = np.asarray(tree.children_right, dtype=np.intp)
            feat = np.asarray(tree.feature, dtype=np.intp)
            thr = np.asarray(tree.threshold, dtype=np.float64)
            cover = np.asarray(tree.cover, dtype=np.float64)
            value = np.asarray(tree.value, dtype=np.float64).reshape(-1)
            if np.any(cover <= 0) or not np.all(np.isfinite(value[left == -1])):
                raise InputError("tree covers must be > 0 and leaf values finite")
            # (node, {feature: (lower, upper, zero fraction)}) - parents come before children
            stack: list[tuple[int, dict[int, tuple[float, float, float]]]] = [(0, {})]
            while stack:
                node, bounds = stack.pop()
                if left[node] == -1:
                    leaves.append((bounds, weight * value[node]))
                    continue
                f = int(feat[node])
                if not 0 <= f < n_features:
                    raise InputError(f"split on feature {f}, outside [0, {n_features})")
                lo, hi, z = bounds.get(f, (-np.inf, np.inf, 1.0))
                t = float(thr[node])
                for child, c_lo, c_hi in (
                    (left[node], lo, min(hi, t)),
                    (right[node], max(lo, t), hi),
                ):
                    frac = cover[child] / cover[node]
                    stack.append((int(child), {**bounds, f: (c_lo, c_hi, z * frac)}))
        depth = max(1, max(len(b) for b, _ in leaves))
        n_leaves = len(leaves)
        feature = np.zeros((n_leaves, depth), dtype=np.intp)
        lower = np.full((n_leaves, depth), np.inf)
        upper = np.full((n_leaves, depth), np.inf)
        zero = np.ones((n_leaves, depth))
        size = np.zeros(n_leaves, dtype=np.intp)
        for i, (bounds, _) in enumerate(leaves):
            size[i] = len(bounds)
            for k, (f, (lo, hi, z)) in enumerate(sorted(bounds.items())):
                feature[i, k], lower[i, k], upper[i, k], zero[i, k] = f, lo, hi, z
        return cls(
            feature=feature,
            lower=lower,
            upper=upper,
            zero=zero,
            size=size,
            value=np.array([v for _, v in leaves], dtype=np.float64),
            n_features=int(n_features),
        )


def _shapley_weights(depth: int) -> np.ndarray:
    """``W[n, s] = s! (n - s - 1)! / n!`` for ``s < n`` (0 elsewhere), ``n, s <= depth``."""
    out = np.zeros((depth + 1, depth + 1))
    for n in range(1, depth + 1):
        for s in range(n):
            out[n, s] = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
    return out


def path_dependent_tree_shap(
    paths: LeafPaths, X: np.ndarray, max_cells: int = 1 << 17
) -> tuple[np.ndarray, float]:
    """Exact path-dependent TreeSHAP values ``(phi (n, d), base)`` of the ensemble in ``paths``.

    The value of a coalition S is the ensemble's output with the features outside S unknown
    (a split on one sends the row both ways, weighted by the training cover), as in
    ``shap.TreeExplainer(model)`` without data. Per leaf this is a product over the distinct
    features U on its path of ``o_j`` (x follows the path there: 0/1) inside S and ``z_j``
    (the cover fraction) outside it, so the leaf gives feature ``i`` in U
    ``value * (o_i - z_i) * sum_s W[|U|, s] q_s``, where ``q`` are the coefficients of
    ``prod_{j in U, j != i} (z_j + o_j t)``: the full product is built once per leaf and
    divided by each factor (``t + z_i`` top-down, stable since ``z_i <= 1``; or ``z_i``).
    ``phi.sum(1) + base`` equals the ensemble's output exactly. ``max_cells`` bounds the
    working arrays (rows x leaves x path slots per block; one row of a 200-tree forest is
    ~70,000 cells: rows one by one are faster than larger blocks, which leave the cache).
    """
    xa = np.atleast_2d(np.asarray(X, dtype=np.float32))
    if xa.ndim != 2 or xa.shape[1] != paths.n_features:
        raise InputError(f"X has shape {xa.shape}, the trees use {paths.n_features} features")
    n = xa.shape[0]
    n_leaves, depth = paths.feature.shape
    flat_feature = paths.feature.ravel()
    phi = np.zeros((n, paths.n_features), dtype=np.float64)
    rows = max(1, max_cells // (n_leaves * depth))
    for start in range(0, n, rows):
        contrib = _leaf_terms(paths, xa[start : start + rows].astype(np.float64))
        for r in range(contrib.shape[0]):
            phi[start + r] = np.bincount(
                flat_feature, weights=contrib[r].ravel(), minlength=paths.n_features
            )
    return phi, paths.expected_value


def _leaf_terms(paths: LeafPaths, xs: np.ndarray) -> np.ndarray:
    """(m, L, D) float64: what each path slot of each leaf gives the feature it tests, for
    rows ``xs`` (m, d) (0 on padding slots); see :func:`path_dependent_tree_shap`. The
    updates run in place: the same operations in the same order as the expressions in the
    comments, so bit for bit their values."""
    weights, valid, z_t = paths.shap_tables
    z = paths.zero
    m, (nl, depth) = xs.shape[0], paths.feature.shape
    xg = xs[:, paths.feature]  # (m, L, D)
    o = ((xg > paths.lower) & (xg <= paths.upper)).astype(np.float64)
    # the coefficients built one (m, L) plane per power of t (contiguous), then laid out
    # (m, L, D + 1) for the sums below
    coef = np.zeros((depth + 1, m, nl))
    coef[0] = 1.0
    o_t = np.ascontiguousarray(np.moveaxis(o, -1, 0))  # (D, m, L)
    low = np.empty((depth, m, nl))
    for k in range(depth):  # times (z_k + o_k t); the coefficients above t^(k+1) stay 0
        # coef[1:k+2] = z_k * coef[1:k+2] + o_k * coef[:k+1]; coef[0] *= z_k
        np.multiply(o_t[k], coef[:k + 1], out=low[:k + 1])
        high = coef[1:k + 2]
        np.multiply(z_t[k], high, out=high)
        np.add(high, low[:k + 1], out=high)
        coef[0] *= z_t[k]
    poly = np.ascontiguousarray(np.moveaxis(coef, 0, -1))  # (m, L, D + 1)
    # o_i = 0: q = poly / z_i
    s_zero = np.einsum("mls,ls->ml", poly, weights)[..., None] / z[None]
    # o_i = 1: q = poly / (t + z_i), top-down: q_{D-1} = p_D, q_{k-1} = p_k - z_i q_k
    q = np.broadcast_to(poly[..., depth, None], (m, nl, depth)).copy()
    s_one = weights[None, :, depth - 1, None] * q
    term = np.empty_like(q)
    for k in range(depth - 1, 0, -1):
        # q = p_k - z * q; s_one += W[k - 1] * q
        np.multiply(z[None], q, out=q)
        np.subtract(poly[..., k, None], q, out=q)
        np.multiply(weights[None, :, k - 1, None], q, out=term)
        s_one += term
    # where(o > 0, s_one, s_zero) * (o - z) * value, times 0 on padding slots
    contrib = np.where(o > 0, s_one, s_zero)
    np.subtract(o, z[None], out=o)
    contrib *= o
    contrib *= paths.value[None, :, None]
    contrib *= valid[None]
    return contrib


_MAX_EXACT = 12


def exact_shapley(
    fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    background: np.ndarray,
    names: Sequence[str],
) -> Attribution:
    """Exact (interventional) Shapley values of ``fn`` at ``x`` by enumerating 2^k coalitions.

    ``fn`` maps (m, k) -> (m,); the value of a coalition S is the mean of ``fn`` over the
    background rows with the features in S set to ``x``. One call to ``fn`` on
    ``2^k * len(background)`` rows. Values sum exactly to ``fn(x) - mean fn(background)``
    (the returned ``base_value``). ``k`` is limited to 12.
    """
    xv = np.asarray(x, dtype=np.float64).reshape(-1)
    return exact_shapley_rows(fn, xv[None, :], background, names)[0]


_ROWS_PER_CALL = 32


def exact_shapley_rows(
    fn: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    background: np.ndarray,
    names: Sequence[str],
    *,
    coalition_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> list[Attribution]:
    """:func:`exact_shapley` of each row of ``X`` (r, k), ``fn`` called once per up to 32
    rows (the same values, bit for bit, as row by row: each row is reduced alone).

    ``coalition_fn(xs, background, bits)`` -> (r, 2^k, b), if given, stands for ``fn`` on
    every coalition row (``bits`` (2^k, k): the features taken from ``xs``); a model whose
    score separates into parts can compute that far faster, with the same values."""
    xa = np.atleast_2d(np.asarray(X, dtype=np.float64))
    bg = np.atleast_2d(np.asarray(background, dtype=np.float64))
    k = xa.shape[1]
    if len(names) != k or bg.shape[1] != k:
        raise InputError(f"x has {k} features, names {len(names)}, background {bg.shape}")
    if not 1 <= k <= _MAX_EXACT:
        raise InputError(f"exact Shapley enumerates 2^k coalitions; k={k} not in [1, 12]")
    n_coal = 1 << k
    coalitions = np.arange(n_coal)
    bits = ((coalitions[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)  # (2^k, k)
    size = bits.sum(axis=1)
    fact = [math.factorial(i) for i in range(k + 1)]
    weight = np.array([fact[s] * fact[k - s - 1] / fact[k] for s in range(k)])
    without = np.stack([coalitions[~bits[:, i]] for i in range(k)])  # (k, 2^(k-1))
    with_i = without | (1 << np.arange(k))[:, None]  # the same coalitions plus feature i
    w_of = weight[size[without]]  # (k, 2^(k-1))
    out_attr: list[Attribution] = []
    for start in range(0, xa.shape[0], _ROWS_PER_CALL):
        xs = xa[start:start + _ROWS_PER_CALL]
        r = xs.shape[0]
        if coalition_fn is not None:
            out = np.asarray(coalition_fn(xs, bg, bits), dtype=np.float64)
        else:
            rows = np.where(bits[None, :, None, :], xs[:, None, None, :], bg[None, None, :, :])
            out = np.asarray(fn(rows.reshape(-1, k)), dtype=np.float64).reshape(
                r, n_coal, bg.shape[0])
        # each row and feature reduced alone along the last axis: bit for bit what one row
        # alone gives
        value = np.ascontiguousarray(out).mean(axis=2)  # (r, 2^k)
        terms = np.ascontiguousarray(w_of * (value[:, with_i] - value[:, without]))
        phi = terms.sum(axis=-1)  # (r, k), each a contiguous row's pairwise sum
        for j in range(r):
            out_attr.append(Attribution(base_value=float(value[j, 0]), values={
                str(n): float(v) for n, v in zip(names, phi[j])}))
    return out_attr


