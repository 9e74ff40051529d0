"""Fitting the detectors from healthy windows (shared by ``podguard train`` and the default model).

Who calls it: ``training.default_model`` (the model shipped in ``data/model``) and the
retraining job. Windows are built causally with the daemon's engine, pods are split into a
fitting part and a held-back part, the models learn on the first and their thresholds are
fitted at the configured false-alarm rates on the second (fitted state, never hand-set).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from detector import channels as chan
from detector import traces as tr
from detector.errors import InputError
from detector.models.autoencoder import AutoencoderConfig, AutoencoderDetector
from detector.models.drift import DriftConfig, DriftDetector
from detector.models.forest import ForestConfig, IsolationForestDetector
from detector.models.trend import TrendDetector
from detector.pipeline import NEW_POD_S, decision_scores, leak_decision_scores, pod_age_s
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
    trend: TrendDetector
    drift: DriftDetector
    summary: dict[str, Any] = field(default_factory=dict)


def fit_detectors(healthy: WindowBatch, *, detection: DetectionSettings, seed: int = 0,
                  holdout: float = 0.3, drift_config: DriftConfig | None = None,
                  progress: bool = False, young: WindowBatch | None = None) -> FitResult:
    """Fits both detectors on healthy windows and their thresholds on held-back pods;
    ``young`` (:func:`young_windows` of the same healthy data) fits the imminent leak path's
    threshold (without it the path stays off)."""
    fit_idx, hold_idx = split_by_pod(healthy, holdout, seed)
    fit_b, hold_b = healthy.subset(fit_idx), healthy.subset(hold_idx)
    t0 = time.perf_counter()
    trend = TrendDetector().fit(fit_b)
    # thresholds as fitted state: on every healthy window (the trend detector has few
    # parameters; the held-back part alone is too small for a 1e-4 tail)
    trend.infer_threshold(healthy, detection.leak_fpr)
    # then refitted on the scores the decision acts on (stale windows, projections beyond
    # the leak horizon and returns to a level already held never page)
    slow, fast = leak_decision_scores(trend, healthy, horizon_s=detection.leak_horizon_s)
    trend_thr = trend.thresholds_from_scores(slow, fast, detection.leak_fpr, background=healthy)
    n_young = 0
    if young is not None and len(young):
        _s, _f, imm = decision_scores(trend, young, horizon_s=detection.leak_horizon_s)
        judged = imm[np.isfinite(imm)]
        n_young = int(judged.size)
        trend.imminent_threshold_from_scores(judged, detection.leak_fpr)
    t1 = time.perf_counter()
    drift = DriftDetector(
        config=drift_config or DriftConfig(seed=seed),
        autoencoder=AutoencoderDetector(AutoencoderConfig(seed=seed), progress=progress),
        forest=IsolationForestDetector(ForestConfig(seed=seed)),
    )
    names = drift_feature_names(healthy.feature_names)
    cols = [healthy.feature_names.index(n) for n in names]
    # the drift ensemble does not judge pods younger than NEW_POD_S (nor learns from them)
    fit_b, hold_b = (b.subset(np.flatnonzero(pod_age_s(b) >= NEW_POD_S)) for b in (fit_b, hold_b))
    drift.fit(fit_b.features[:, cols], names, groups=[str(k) for k in fit_b.keys])
    drift_thr = drift.infer_threshold(hold_b.features[:, cols], detection.drift_fpr)
    t2 = time.perf_counter()
    pods = {str(k) for k in healthy.keys}
    summary: dict[str, Any] = {
        "windows": len(healthy), "windows_fit": len(fit_b), "windows_holdout": len(hold_b),
        "pods": len(pods), "trend_threshold": trend_thr,
        "trend_fast_threshold": trend.fast_threshold_,
        "trend_imminent_threshold": trend.imminent_threshold_,
        "windows_young": n_young, "drift_threshold": drift_thr,
        "trend_fit_s": round(t1 - t0, 2), "drift_fit_s": round(t2 - t1, 2),
        "data_start": float(np.min(healthy.ts)), "data_end": float(np.max(healthy.ts)),
        "feature_names": list(healthy.feature_names),
        "holdout_false_alarm_rate": {
            "trend": float(np.mean(trend.predict(hold_b).is_anomaly)),
            "drift": float(np.mean(drift.predict(hold_b.features[:, cols]).is_anomaly)),
        },
    }
    hist = drift.autoencoder.history_
    if hist is not None:
        summary["autoencoder"] = {
            "epochs": hist.epochs, "train_loss": hist.train_loss[-1] if hist.train_loss else None,
            "val_loss": hist.val_loss[-1] if hist.val_loss else None,
            "samples_per_s": round(hist.samples_per_s, 1), "seconds": round(hist.seconds, 2),
            "device": hist.device,
        }
    return FitResult(trend=trend, drift=drift, summary=summary)


def describe_pods(keys: Sequence[object]) -> int:
    return len({str(k) for k in keys})
