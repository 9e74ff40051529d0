"""Synthetic window-feature arrays for the drift-model tests (no dependency on windows.py).

Healthy windows are correlated multivariate normal: a few latent factors (load, memory
pressure, ...) drive all features, plus independent noise, with ~3 % of cells missing (NaN).
Drifted windows shift chosen features by a number of healthy standard deviations, e.g. the
"CPU / GPU utilisation / network level collapses" pattern that precedes a hung job.
Used by tests/test_{autoencoder,forest,drift,explain,store,detector_contract}.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NAMES: tuple[str, ...] = (
    *(
        f"{channel}.{stat}"
        for channel in ("mem_working_set", "mem_rss", "cpu_rate", "gpu_util", "net_rx_rate")
        for stat in ("level_z", "slope_30m", "log_vol_ratio")
    ),
    "mem_working_set.frac_limit",
    "mem_working_set.floor_slope",
    "restarts.count_1h",
)
"""18 feature names in the windows.py naming scheme."""

COLLAPSE: tuple[str, ...] = ("cpu_rate.level_z", "gpu_util.level_z", "net_rx_rate.level_z")
"""The throughput channels whose level collapses before a hang."""

_N_FACTORS = 4


def _loadings(d: int) -> np.ndarray:
    return np.random.default_rng(12345).normal(size=(_N_FACTORS, d))


def healthy(n: int, seed: int, d: int = len(NAMES), missing: float = 0.03) -> np.ndarray:
    """``n`` healthy rows (float32, NaN for missing)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, _N_FACTORS)) @ _loadings(d) + 0.5 * rng.normal(size=(n, d))
    x[rng.random(x.shape) < missing] = np.nan
    return x.astype(np.float32)


def healthy_std(d: int = len(NAMES)) -> np.ndarray:
    """The exact standard deviation of each healthy feature."""
    w = _loadings(d)
    return np.sqrt((w**2).sum(axis=0) + 0.25)


def drifted(
    n: int, seed: int, features: Sequence[str] = COLLAPSE, shift_sd: float = -5.0
) -> np.ndarray:
    """``n`` rows with ``features`` shifted by ``shift_sd`` healthy standard deviations."""
    x = healthy(n, seed)
    idx = [NAMES.index(f) for f in features]
    x[:, idx] += shift_sd * healthy_std()[idx]
    return x
