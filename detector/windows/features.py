"""Per-pod baselines and the window features the drift models read.

``baseline`` (:func:`robust_baseline`) is the pod's own robust level and scale, (median, MAD),
of each channel over the part of the window older than ``exclude_s``, so a new workload is
judged against itself; NaN until ``min_baseline_s`` of data exist there. Only bins after the
window's last container restart count (a restarted container is a new incarnation, judged
against itself again), and features relative to the baseline are NaN while it is missing.

``features`` (:data:`FEATURE_NAMES`, see :func:`extract_features`) summarise each window; the
channels, their order, scale floors and which get which statistics come from the channel
table (:mod:`detector.channels`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from detector import channels as chan
from detector.errors import InputError
from detector.windows.stats import (
    after_last_restart,
    nancount_last,
    nanmedian_last,
    nanmedian_mad_last,
    theil_sen_block_minima,
)

CHANNELS: tuple[str, ...] = chan.CHANNELS
"""The canonical channel order of :attr:`WindowBatch.values` (the rows of
:data:`detector.channels.CHANNEL_TABLE`)."""

CHANNEL_METRICS: Mapping[str, str] = chan.CHANNEL_METRICS
"""The trace metric each channel is computed from (to name it in explanations)."""

MEMORY_CHANNELS: tuple[str, ...] = chan.LEAK_CHANNELS
"""The channels the leak detector watches."""
THROUGHPUT_CHANNELS: tuple[str, ...] = chan.THROUGHPUT_CHANNELS

FEATURE_NAMES: tuple[str, ...] = chan.feature_names()
"""Names of :attr:`WindowBatch.features` columns, ``"<channel>.<stat>"``; see
:func:`extract_features` for the definition of each statistic."""

# Absolute scale floors per channel (unit of the channel; the table's ``floor``): a flat
# healthy series has MAD 0, so scales are floored by these and by 5 % of the baseline level.
_SCALE_FLOOR = np.array([c.floor for c in chan.CHANNEL_TABLE], dtype=np.float64)
_RESTART_IDX = CHANNELS.index(chan.RESTART_CHANNEL)
_LEAK_IDX = [CHANNELS.index(c) for c in MEMORY_CHANNELS]
_INCREASE_IDX = [i for i, c in enumerate(chan.CHANNEL_TABLE) if c.kind == "increase"]
_REL_FLOOR = 0.05
_Z_CLIP = 50.0


def _tail(values: np.ndarray, seconds: float, step_s: float) -> np.ndarray:
    k = max(1, min(values.shape[-1], round(seconds / step_s)))
    return values[..., -k:]


def extract_features(
    values: np.ndarray, limits: np.ndarray, baseline: np.ndarray, step_s: float
) -> np.ndarray:
    """The ``(n, len(FEATURE_NAMES))`` float32 feature matrix of windows (vectorised).

    ``values`` is ``(n, C, L)`` in :data:`CHANNELS` order, ``limits`` ``(n, C)``, ``baseline``
    ``(n, C, 2)`` (median, MAD). For each gauge and rate channel, with
    ``scale = max(1.4826*MAD, 5 % of |median|, a per-channel floor)`` of the baseline:

    * ``<ch>.level_z`` - (median of the last 10 min - baseline median) / scale, clipped to
      +-50: the level relative to the pod's own history (a throughput collapse is strongly
      negative on ``cpu_rate``/``gpu_util``/``net_*``);
    * ``<ch>.slope_30m`` - (median of the last 10 min - median of minutes -30..-20) / scale,
      clipped to +-50: how far the channel moved over the last half hour;
    * ``<ch>.log_vol_ratio`` - log2 of (recent 30 min robust spread + floor) / (baseline
      spread + floor), clipped to +-10;

    for an increase channel (``restarts``) only ``<ch>.count_1h`` (increments over the last
    hour); and, for the leak channels (``leak`` in the channel table), ``<ch>.frac_limit``
    (last-10-min median / limit; NaN without a limit) and ``<ch>.floor_slope`` (Theil-Sen
    slope of 30-min block minima over the window - the rising floor under a GC sawtooth - in
    fractions of the limit per hour, or of the baseline level per hour when no limit is
    known). NaN wherever the inputs are missing.
    """
    _n, n_ch, L = values.shape
    if n_ch != len(CHANNELS):
        raise InputError(f"extract_features: expected {len(CHANNELS)} channels, got {n_ch}")
    v = values.astype(np.float64, copy=False)
    med_b = baseline[..., 0].astype(np.float64)
    mad_b = baseline[..., 1].astype(np.float64)
    floor = _SCALE_FLOOR[None, :]
    scale = np.fmax(np.fmax(1.4826 * mad_b, _REL_FLOOR * np.abs(med_b)), floor)
    # no baseline (a new pod or a fresh restart): nothing to scale against, so the
    # baseline-relative features are NaN (imputed by the models), not divided by the floor
    scale = np.where(np.isfinite(med_b), scale, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        recent10 = nanmedian_last(_tail(v, 600, step_s))
        k30 = max(2, min(L, round(1800 / step_s)))
        k10 = max(1, min(k30 // 2, round(600 / step_s)))
        early = nanmedian_last(v[..., L - k30 : L - k30 + k10])
        r30 = v[..., L - k30 :]
        _, mad_r = nanmedian_mad_last(r30)
        level_z = np.clip((recent10 - med_b) / scale, -_Z_CLIP, _Z_CLIP)
        slope = np.clip((recent10 - early) / scale, -_Z_CLIP, _Z_CLIP)
        volr = np.clip(
            np.log2((1.4826 * mad_r + floor) / (1.4826 * mad_b + floor)), -10.0, 10.0
        )
        inc_1h = _tail(v[:, _INCREASE_IDX, :], 3600, step_s)
        count_1h = np.full(v.shape[:2], np.nan)
        count_1h[:, _INCREASE_IDX] = np.where(
            nancount_last(inc_1h) > 0, np.nansum(np.nan_to_num(inc_1h), axis=-1), np.nan
        )
        mem_idx = _LEAK_IDX
        lim = limits[:, mem_idx].astype(np.float64)
        frac = recent10[:, mem_idx] / lim
        floor_rate = theil_sen_block_minima(v[:, mem_idx, :], step_s, block_s=1800)  # unit/s
        denom = np.where(np.isfinite(lim), lim, np.fmax(med_b[:, mem_idx], floor[:, mem_idx]))
        floor_slope = floor_rate * 3600.0 / denom
    by_stat = {"level_z": level_z, "slope_30m": slope, "log_vol_ratio": volr,
               "count_1h": count_1h}
    cols: list[np.ndarray] = []
    for ci, row in enumerate(chan.CHANNEL_TABLE):
        cols += [by_stat[stat][:, ci] for stat in row.stats()]
    leak_stat = {"frac_limit": frac, "floor_slope": floor_slope}
    for j in range(len(MEMORY_CHANNELS)):
        cols += [leak_stat[stat][:, j] for stat in chan.LEAK_STATS]
    out = np.stack(cols, axis=1).astype(np.float32)
    out[~np.isfinite(out)] = np.nan
    return out


def robust_baseline(values: np.ndarray, step_s: float, exclude_s: float,
                    min_baseline_s: float) -> np.ndarray:
    """``(n, C, 2)`` float32: (median, MAD) of each channel of ``values`` ``(n, C, L)`` over
    the window but its last ``exclude_s``, NaN where fewer than ``min_baseline_s`` of data lie
    there."""
    L = values.shape[-1]
    k_ex = round(exclude_s / step_s)
    part = values[..., : max(0, L - k_ex)]
    out = np.full((*values.shape[:2], 2), np.nan, dtype=np.float32)
    if part.shape[-1] == 0:
        return out
    # A container restart starts a new incarnation: its baseline holds only what came
    # after the last restart in the window (the counters, memory and throughput before it
    # belong to another process), so a restarted pod is judged against itself again once
    # ``min_baseline_s`` of post-restart history lies in the baseline part.
    after = after_last_restart(values[:, _RESTART_IDX, :])
    if not after.all():
        part = np.where(after[:, None, : part.shape[-1]], part, np.nan)
    med, mad = nanmedian_mad_last(part)
    enough = nancount_last(part) >= max(1, round(min_baseline_s / step_s))
    out[..., 0] = np.where(enough, med, np.nan)
    out[..., 1] = np.where(enough, mad, np.nan)
    return out
