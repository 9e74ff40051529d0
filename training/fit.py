"""Fitting the detectors from healthy windows (shared by ``podguard train`` and the default model).

Who calls it: ``training.default_model`` (the model shipped in ``data/model``) and the
retraining job. Windows are built causally with the daemon's engine, pods are split into a
fitting part and a held-back part, the models learn on the first and their thresholds are
fitted at the configured false-alarm rates on the second (fitted state, never hand-set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from detector import channels as chan
from detector import traces as tr
from detector.errors import InputError
from detector.models import registry
from detector.models.drift import DriftConfig, DriftDetector
from detector.models.spec import FitContext
from detector.models.trend import TrendDetector
from detector.replay import make_engine
from detector.settings import DetectionSettings, WindowSettings
from detector.windows import WindowBatch
from detector.windows import collect_windows as collect_all_windows


def collect_windows(trace: pd.DataFrame, *, windows: WindowSettings, every: int = 1,
                    progress: bool = False, desc: str = "windows") -> WindowBatch:
    """The non-stale windows of ``trace`` at every ``every``-th step (multiples of
    ``every * windows.step_s``), in one batch: :func:`detector.windows.collect_windows` on an
    engine built from ``windows``. :class:`InputError` if there are none."""
    batch = collect_all_windows(trace, every_s=every * windows.step_s,
                                engine=make_engine(windows), drop_stale=True,
                                progress=progress, desc=desc)
    if len(batch) == 0:
        raise InputError("no usable windows in the training data (all pods stale or empty)")
    return batch


YOUNG_STEP_S = 15.0
"""The grid the imminent path's threshold is fitted at (it needs 6 points in a young
incarnation's first minutes: a daemon scraping every 15 s)."""


def young_windows(trace: pd.DataFrame, *, span_s: float, step_s: float = YOUNG_STEP_S,
                  progress: bool = False) -> WindowBatch | None:
    """The non-stale windows of every pod's first ``span_s`` and of every container
    incarnation's (after a restart), at a ``step_s`` grid: what the imminent leak path judges.
    Only the rows near those starts are replayed (10 min before a restart, so the window
    sees it), so this costs minutes of data per pod, not the whole trace; None without any."""
    if trace.empty:
        return None
    ts = trace["timestamp"].to_numpy(dtype=np.float64)
    pod = (trace["namespace"].astype(str) + "/" + trace["pod"].astype(str)).to_numpy()
    keep = np.zeros(len(trace), dtype=bool)
    frame = pd.DataFrame({"pod": pod, "ts": ts, "metric": trace["metric"].astype(str).to_numpy(),
                          "value": trace["value"].to_numpy(dtype=np.float64)})
    first = frame.groupby("pod")["ts"].transform("min").to_numpy()
    keep |= ts <= first + span_s + 2 * step_s
    rs = frame[frame["metric"] == tr.RESTARTS].sort_values(["pod", "ts"], kind="stable")
    rise = rs.groupby("pod")["value"].diff().to_numpy() > 0
    for p_, t_ in zip(rs["pod"].to_numpy()[rise], rs["ts"].to_numpy()[rise], strict=True):
        keep |= (pod == p_) & (ts >= t_ - 600.0) & (ts <= t_ + span_s + 2 * step_s)
    sub = trace[keep]
    if sub.empty:
        return None
    batch = collect_all_windows(sub, every_s=step_s,
                               engine=make_engine(WindowSettings(step_s=step_s)),
                               drop_stale=True, progress=progress, desc="young windows")
    return batch if len(batch) else None


def drift_feature_names(all_names: Sequence[str]) -> tuple[str, ...]:
    """The features the drift ensemble learns (each channel's ``drift_stats`` in the channel
    table): throughput channels, restarts and memory volatility. Memory *levels and trends*
    are left to the leak detector, so a legitimate step up of memory or an epoch's ramp is not
    "drift" (they made most drift false alarms)."""
    return chan.drift_feature_names(list(all_names))


def split_by_pod(batch: WindowBatch, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of (fit, held-back) windows; every pod lands wholly on one side."""
    pods = sorted({str(k) for k in batch.keys})
    if len(pods) < 2:
        raise InputError(f"need windows of at least 2 pods to hold some back, got {len(pods)}")
    rng = np.random.default_rng(seed)
    n_hold = min(len(pods) - 1, max(1, round(holdout * len(pods))))
    held = set(rng.choice(pods, size=n_hold, replace=False).tolist())
    mask = np.array([str(k) in held for k in batch.keys])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclass
class FitResult:
    """The fitted detectors by registered name (a bundle's ``detectors``) and the summary."""

    detectors: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def trend(self) -> TrendDetector:
        det: TrendDetector = self.detectors["trend"]
        return det

    @property
    def drift(self) -> DriftDetector:
        det: DriftDetector = self.detectors["drift"]
        return det


def fit_detectors(healthy: WindowBatch, *, detection: DetectionSettings, seed: int = 0,
                  holdout: float = 0.3, drift_config: DriftConfig | None = None,
                  progress: bool = False, young: WindowBatch | None = None) -> FitResult:
    """Fits every registered detector (``detector.models.registry``, each by its fit hook)
    on healthy windows, split by pod into a fitting part and a held-back part (thresholds
    as fitted state, at the configured false-alarm rates); ``young`` (:func:`young_windows`
    of the same healthy data) fits the leak detector's imminent path (without it the path
    stays off); ``drift_config`` is the drift fusion's option ``config``."""
    fit_idx, hold_idx = split_by_pod(healthy, holdout, seed)
    ctx = FitContext(healthy=healthy, fit=healthy.subset(fit_idx),
                     holdout=healthy.subset(hold_idx), detection=detection, seed=seed,
                     progress=progress, young=young,
                     options={"drift": {"config": drift_config}} if drift_config else {})
    detectors: dict[str, Any] = {}
    summary: dict[str, Any] = {"windows": len(healthy), "pods": len({str(k) for k in healthy.keys}),
                               "data_start": float(np.min(healthy.ts)),
                               "data_end": float(np.max(healthy.ts)),
                               "feature_names": list(healthy.feature_names)}
    for spec in registry.fitted():
        assert spec.fit is not None
        out = spec.fit(ctx)
        detectors[spec.name] = out.detector
        for key, value in out.summary.items():  # nested dicts (false-alarm rates) are merged
            if isinstance(value, dict) and isinstance(summary.get(key), dict):
                summary[key] = {**summary[key], **value}
            else:
                summary[key] = value
    return FitResult(detectors=detectors, summary=summary)


def describe_pods(keys: Sequence[object]) -> int:
    return len({str(k) for k in keys})
