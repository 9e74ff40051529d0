"""NaN-aware robust statistics along the last axis of window arrays (vectorised; numpy's own
``nanmedian`` is slow on 3-D arrays): medians and MADs, counts, block reductions, Theil-Sen
slopes of block minima, and where each window's last container restart lies.

Used by the feature extraction (:mod:`detector.windows.features`), the assembler's baselines
and the detectors (``detector.models.trend``, ``detector.models.history``).
"""

from __future__ import annotations

import numpy as np


def nanmedian_last(x: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where a row has no finite value."""
    xs = np.sort(x, axis=-1)  # NaN sorts last
    width = xs.shape[-1]
    if xs.size == 0:
        return np.full(xs.shape[:-1], np.nan, dtype=x.dtype)
    rows = xs.reshape(-1, width)
    cnt = np.count_nonzero(np.isfinite(rows), axis=-1)
    lo = np.maximum((cnt - 1) // 2, 0)
    hi = np.minimum(np.maximum(cnt // 2, 0), max(width - 1, 0))
    at = np.arange(rows.shape[0])
    med = 0.5 * (rows[at, lo] + rows[at, hi])
    return np.where(cnt > 0, med, np.nan).astype(x.dtype, copy=False).reshape(x.shape[:-1])


def nanmedian_mad_last(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, MAD) over the last axis ignoring NaN; MAD is raw (not scaled by 1.4826)."""
    med = nanmedian_last(x)
    mad = nanmedian_last(np.abs(x - med[..., None]))
    return med, mad


def last_restart_index(restarts: np.ndarray) -> np.ndarray:
    """``(n,)`` int: the bin of the last restart increment of each window, -1 for none.
    ``restarts`` ``(n, L)`` holds increments per bin, NaN for no data."""
    L = restarts.shape[-1]
    hit = np.nan_to_num(restarts) > 0
    return np.where(hit.any(axis=-1), L - 1 - np.argmax(hit[..., ::-1], axis=-1), -1)


def after_last_restart(restarts: np.ndarray) -> np.ndarray:
    """``(n, L)`` bool: bins after the last restart increment of each window (all True
    for windows without a restart)."""
    return np.arange(restarts.shape[-1])[None, :] > last_restart_index(restarts)[:, None]


def nancount_last(x: np.ndarray) -> np.ndarray:
    return np.count_nonzero(np.isfinite(x), axis=-1)


def block_reduce(
    values: np.ndarray, step_s: float, block_s: float, how: str = "min", min_frac: float = 0.5
) -> tuple[np.ndarray, int]:
    """Reduces the last axis into blocks of ``block_s`` (aligned to the window end).

    Returns ``(blocks, bins_per_block)``: ``blocks`` is ``(..., nb)`` with ``how`` in
    {"min", "median", "max"} of each block, NaN where fewer than ``min_frac`` of a block's
    bins hold data. Leading bins that do not fill a whole block are dropped.
    """
    L = values.shape[-1]
    k = max(1, round(block_s / step_s))
    nb = L // k
    if nb == 0:
        return np.full((*values.shape[:-1], 0), np.nan), k
    x = values[..., L - nb * k :].reshape(*values.shape[:-1], nb, k)
    fin = np.isfinite(x)
    if how in ("min", "max"):
        # a loop over the k bins of a block: numpy reduces short last axes slowly
        fill = np.inf if how == "min" else -np.inf
        op = np.minimum if how == "min" else np.maximum
        xf = np.where(fin, x, fill)
        r = xf[..., 0].copy()
        cnt = fin[..., 0].astype(np.int32)
        for q in range(1, k):
            op(r, xf[..., q], out=r)
            cnt += fin[..., q]
    elif how == "median":
        r = nanmedian_last(x)
        cnt = np.count_nonzero(fin, axis=-1)
    else:
        raise ValueError(f"block_reduce: unknown reduction {how!r}")
    return np.where(cnt >= max(1, int(np.ceil(min_frac * k))), r, np.nan), k


def pairwise_slopes(blocks: np.ndarray, dt_s: float) -> np.ndarray:
    """All pairwise slopes ``(y_j - y_i) / ((j - i) * dt_s)`` for i < j: ``(..., P)``."""
    nb = blocks.shape[-1]
    i, j = np.triu_indices(nb, k=1)
    return (blocks[..., j] - blocks[..., i]) / ((j - i) * dt_s)


def theil_sen_block_minima(values: np.ndarray, step_s: float, block_s: float) -> np.ndarray:
    """Theil-Sen slope (unit/s) of block minima over the last axis; NaN with < 3 blocks."""
    blocks, k = block_reduce(values, step_s, block_s, "min")
    if blocks.shape[-1] < 3:
        return np.full(values.shape[:-1], np.nan)
    sl = pairwise_slopes(blocks, k * step_s)
    ok = nancount_last(blocks) >= 3
    return np.where(ok, nanmedian_last(sl), np.nan)

