"""Attribution algorithms and readable explanations for podguard's verdicts.

What is here, and who calls it:

* :func:`expected_gradients` - expected gradients (the estimator behind
  ``shap.GradientExplainer``) of a differentiable torch function against a healthy background,
  integrated with Gauss-Legendre quadrature instead of random path points, so the result is
  deterministic and sums to ``f(x) - mean f(background)`` to within the quadrature error.
  Used by :class:`detector.models.autoencoder.AutoencoderDetector` on its reconstruction error
  (``shap.DeepExplainer`` is not used: its values do not sum to a squared error).
  :func:`gradient_explainer_reference` runs ``shap.GradientExplainer`` itself, for cross-checks.
* :func:`rescale_attribution` - carries an additive attribution through a monotone transform
  of the model output (path length -> isolation score -> calibrated tail score) by the secant
  slope, keeping the sum exact and the signs meaningful. Used by the forest and the fusion.
* :func:`combine` - the fused attribution as the fusion's weighted sum of the members'.
* :func:`exact_shapley` - exact interventional Shapley values by 2^k enumeration for small
  feature sets (k <= 12); used by the leak detector's explanation over its handful of inputs.
* :func:`describe` - one readable sentence from an attribution and facts (rates in MiB/h,
  time to OOM, the memory limit), with human names for features (:func:`human_name`).
* :func:`explain_flagged` - explanations of the positive verdicts of any detector.

TreeSHAP for the isolation forest lives with the forest (``shap.TreeExplainer`` on its
scikit-learn estimator), since it needs the fitted trees.

This module is a utility for the models (it imports only :mod:`detector.models.base`); torch
and shap are imported lazily where needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from detector.errors import InputError
from detector.models.base import Attribution, Detector

if TYPE_CHECKING:
    import torch

__all__ = [
    "Explanation",
    "Facts",
    "combine",
    "describe",
    "exact_shapley",
    "expected_gradients",
    "explain_flagged",
    "format_bytes",
    "format_duration",
    "format_rate",
    "gradient_explainer_reference",
    "human_name",
    "rescale_attribution",
]

# --------------------------------------------------------------------------- attribution maths


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


def _gauss_legendre_01(k: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(k)
    return 0.5 * (nodes + 1.0), 0.5 * weights


def expected_gradients(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    background: np.ndarray,
    n_steps: int = 8,
    max_rows: int = 16384,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Expected gradients of a scalar-per-row torch function ``fn`` (n, d) -> (n,) or (n, 1).

    ``phi[i, j] = mean_b (x_ij - b_j) * integral_0^1 d fn / d x_j (b + a (x_i - b)) da``, the
    integral by ``n_steps`` Gauss-Legendre nodes. Returns ``(phi, base, f(x))`` with
    ``base = mean_b fn(b)``; ``phi.sum(1) ~= f(x) - base``. Runs on the CPU.
    """
    import torch

    xa = np.atleast_2d(np.asarray(x, dtype=np.float32))
    bg = np.atleast_2d(np.asarray(background, dtype=np.float32))
    if xa.shape[1] != bg.shape[1] or bg.shape[0] == 0:
        raise InputError(f"x has {xa.shape[1]} columns, background {bg.shape}")
    n, d = xa.shape
    b = bg.shape[0]
    alphas, weights = _gauss_legendre_01(n_steps)
    alpha_t = torch.from_numpy(alphas.astype(np.float32))
    weight_t = torch.from_numpy(weights.astype(np.float32))
    bg_t = torch.from_numpy(bg)
    per_row = b * n_steps
    rows_per_chunk = max(1, max_rows // per_row)
    phi = np.empty((n, d), dtype=np.float64)
    with torch.no_grad():
        base = float(torch.as_tensor(fn(bg_t)).reshape(-1).double().mean())
        fx = torch.as_tensor(fn(torch.from_numpy(xa))).reshape(-1).double().numpy()
    for s in range(0, n, rows_per_chunk):
        xs = torch.from_numpy(xa[s : s + rows_per_chunk])  # (m, d)
        m = xs.shape[0]
        delta = xs[:, None, :] - bg_t[None, :, :]  # (m, b, d)
        points = bg_t[None, :, None, :] + alpha_t[None, None, :, None] * delta[:, :, None, :]
        points = points.reshape(-1, d).requires_grad_(True)  # (m*b*k, d)
        with torch.enable_grad():
            out = torch.as_tensor(fn(points)).reshape(-1)
            (grad,) = torch.autograd.grad(out.sum(), points)
        grad = grad.reshape(m, b, n_steps, d)
        integral = (grad * weight_t[None, None, :, None]).sum(dim=2)  # (m, b, d)
        phi[s : s + m] = (delta * integral).mean(dim=1).double().numpy()
    return phi, base, fx


def gradient_explainer_reference(
    module: torch.nn.Module,
    x: np.ndarray,
    background: np.ndarray,
    nsamples: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """``shap.GradientExplainer`` values (n, d) of a torch module (n, d) -> (n, 1).

    The stochastic reference :func:`expected_gradients` is checked against (and benchmarked
    with); not used on the hot path.
    """
    import shap
    import torch

    explainer = shap.GradientExplainer(module, torch.from_numpy(np.asarray(background, np.float32)))
    values = explainer.shap_values(
        torch.from_numpy(np.atleast_2d(np.asarray(x, np.float32))),
        nsamples=nsamples,
        rseed=seed,
    )
    arr = np.asarray(values[0] if isinstance(values, list) else values, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1)


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
    bg = np.atleast_2d(np.asarray(background, dtype=np.float64))
    k = xv.shape[0]
    if len(names) != k or bg.shape[1] != k:
        raise InputError(f"x has {k} features, names {len(names)}, background {bg.shape}")
    if not 1 <= k <= _MAX_EXACT:
        raise InputError(f"exact Shapley enumerates 2^k coalitions; k={k} not in [1, 12]")
    n_coal = 1 << k
    coalitions = np.arange(n_coal)
    bits = ((coalitions[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)  # (2^k, k)
    rows = np.where(bits[:, None, :], xv[None, None, :], bg[None, :, :])  # (2^k, b, k)
    out = np.asarray(fn(rows.reshape(-1, k)), dtype=np.float64).reshape(n_coal, bg.shape[0])
    value = out.mean(axis=1)
    size = bits.sum(axis=1)
    fact = [math.factorial(i) for i in range(k + 1)]
    weight = np.array([fact[s] * fact[k - s - 1] / fact[k] for s in range(k)])
    phi = np.empty(k, dtype=np.float64)
    for i in range(k):
        without = coalitions[~bits[:, i]]
        phi[i] = np.sum(weight[size[without]] * (value[without | (1 << i)] - value[without]))
    return Attribution(
        base_value=float(value[0]), values={str(n): float(v) for n, v in zip(names, phi)}
    )


# --------------------------------------------------------------------------- readable text

_CHANNEL_WORDS: dict[str, str] = {
    "mem_working_set": "working set",
    "mem_rss": "RSS",
    "gpu_fb_used": "GPU memory",
    "cpu_rate": "CPU",
    "gpu_util": "GPU utilisation",
    "net_rx_rate": "network receive",
    "net_tx_rate": "network transmit",
    "fs_usage": "disk usage",
    "restarts": "restarts",
}

_STAT_WORDS: dict[str, str] = {
    "level_z": "level vs baseline",
    "slope_30m": "trend (30 min)",
    "slope_1h": "trend (1 h)",
    "log_vol_ratio": "volatility change",
    "vol_ratio": "volatility change",
    "frac_limit": "fraction of limit",
    "floor_slope": "floor growth",
    "count_1h": "in the last hour",
}

#: Whole-name overrides, for names that read better than "<channel> <stat>".
FEATURE_WORDS: dict[str, str] = {
    "mem_working_set.slope_30m": "memory slope",
    "mem_working_set.slope_1h": "memory slope",
    "mem_rss.slope_30m": "RSS growth",
    "mem_rss.slope_1h": "RSS growth",
    "restarts.count_1h": "restarts in the last hour",
}


def human_name(feature: str) -> str:
    """Words for a feature name like ``"cpu_rate.level_z"`` (-> "CPU level vs baseline")."""
    if feature in FEATURE_WORDS:
        return FEATURE_WORDS[feature]
    channel, _, stat = feature.partition(".")
    words = _CHANNEL_WORDS.get(channel, channel.replace("_", " "))
    if stat:
        words += " " + _STAT_WORDS.get(stat, stat.replace("_", " "))
    return words


def _trim(v: float, digits: int) -> str:
    text = f"{v:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_bytes(n: float) -> str:
    """Binary units: 8589934592 -> "8 GiB", 430000000 -> "410 MiB"."""
    v = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024.0 or unit == "TiB":
            text = _trim(v, 0 if v >= 100 or unit == "B" else 1)
            return f"{'-' if n < 0 else ''}{text} {unit}"
        v /= 1024.0
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Rounded to what a reader needs: "45 s", "38 min", "3 h", "1.5 h", "2.5 d"."""
    s = float(seconds)
    if not math.isfinite(s):
        return "unknown time"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{_trim(s / 3600, 1)} h"
    return f"{_trim(s / 86400, 1)} d"


def format_rate(bytes_per_s: float) -> str:
    """A growth rate per hour, signed: 119000 B/s -> "+409 MiB/h"."""
    sign = "+" if bytes_per_s >= 0 else "-"
    return f"{sign}{format_bytes(abs(bytes_per_s) * 3600.0)}/h"


class Facts(TypedDict, total=False):
    """Facts a sentence can state; every key optional."""

    subject: str  # what grows, e.g. "working set"
    growth_bytes_per_s: float  # fitted growth rate, bytes/s
    growth_duration_s: float  # how long the growth has lasted, seconds
    time_to_oom_s: float  # projected time until the limit, seconds
    limit_bytes: float  # the memory limit, bytes
    score: float  # the detector score
    threshold: float  # the detector threshold


def describe(attribution: Attribution, facts: Facts | None = None, top_k: int = 3) -> str:
    """One sentence: facts first, then the top positive contributors with their values.

    e.g. "working set +410 MiB/h for 3 h, OOM in ~38 min at the 8 GiB limit; top
    contributors: memory slope (0.41), RSS growth (0.22)".
    """
    f: Mapping[str, Any] = facts or {}
    clauses: list[str] = []
    if "growth_bytes_per_s" in f:
        text = f"{f.get('subject', 'memory')} {format_rate(f['growth_bytes_per_s'])}"
        if "growth_duration_s" in f:
            text += f" for {format_duration(f['growth_duration_s'])}"
        clauses.append(text)
    if "time_to_oom_s" in f:
        text = f"OOM in ~{format_duration(f['time_to_oom_s'])}"
        if "limit_bytes" in f:
            text += f" at the {format_bytes(f['limit_bytes'])} limit"
        clauses.append(text)
    if "score" in f:
        text = f"score {f['score']:.2f}"
        if "threshold" in f:
            text += f" over threshold {f['threshold']:.2f}"
        clauses.append(text)
    head = ", ".join(clauses)
    top = [(n, v) for n, v in attribution.top(top_k) if v > 0]
    if top:
        tail = "top contributors: " + ", ".join(f"{human_name(n)} ({v:.2f})" for n, v in top)
    else:
        tail = "no single feature stands out"
    return f"{head}; {tail}" if head else tail


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Explanation:
    """A flagged row: its index in the batch, score, attribution and sentence."""

    row: int
    score: float
    attribution: Attribution
    text: str


def explain_flagged(detector: Detector, X: np.ndarray, top_k: int = 3) -> list[Explanation]:
    """Predict on ``X`` and explain only the rows the detector flags (positive verdicts)."""
    prediction = detector.predict(X)
    rows = np.flatnonzero(prediction.is_anomaly)
    if rows.size == 0:
        return []
    attributions = detector.explain(np.asarray(X)[rows])
    return [
        Explanation(
            row=int(r),
            score=float(prediction.score[r]),
            attribution=a,
            text=describe(
                a,
                {"score": float(prediction.score[r]), "threshold": prediction.threshold},
                top_k=top_k,
            ),
        )
        for r, a in zip(rows, attributions)
    ]
