"""Builds the default model shipped in ``data/model`` from the project's own scenario data.

Rebuild it with::

    .venv/bin/python -m training.default_model            # writes data/model/<version>, promotes it

Healthy scenario pods only (seeded), windows from the daemon's engine, thresholds at the
default false-alarm rates. Deterministic for a given seed and library versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from detector import scenarios
from detector.models import store
from detector.models.trend import TrendDetector
from detector.settings import DetectionSettings, WindowSettings
from training.fit import collect_windows, fit_detectors, young_windows

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "model"
DEFAULT_VERSION = "default-7"
SEED = 20261126


def healthy_training_trace(seed: int = SEED, n_pods: int = 96, hours: float = 24.0
                           ) -> pd.DataFrame:
    trace, _labels = scenarios.generate_healthy(n_pods=n_pods, hours=hours, seed=seed)
    return trace


def build(root: Path = DEFAULT_ROOT, *, seed: int = SEED, n_pods: int = 96, hours: float = 24.0,
          version: str = DEFAULT_VERSION, progress: bool = True, replace: bool = True) -> Path:
    started = time.perf_counter()
    ws = WindowSettings()
    det = DetectionSettings()
    trace = healthy_training_trace(seed, n_pods, hours)
    healthy = collect_windows(trace, windows=ws, progress=progress, desc="training windows")
    # the imminent path's threshold: the pods' first minutes at a 15 s grid
    young = young_windows(trace, span_s=TrendDetector().fast_min_s, progress=progress)
    result = fit_detectors(healthy, detection=det, seed=seed, progress=progress, young=young)
    target = root / version
    if target.exists() and replace:
        shutil.rmtree(target)
    card = {
        "data_range": {"start": result.summary["data_start"], "end": result.summary["data_end"]},
        "metrics": {k: v for k, v in result.summary.items()
                    if k not in ("feature_names", "data_start", "data_end")},
        "training_data": {"source": "detector.scenarios.generate_healthy", "seed": seed,
                          "pods": n_pods, "hours": hours},
        "settings": {"windows": ws.model_dump(), "detection": det.model_dump()},
    }
    path = store.save_bundle(root, result.detectors, card,
                             version=version, promote_now=True)
    print(json.dumps({"model": str(path), "seconds": round(time.perf_counter() - started, 1),
                      **{k: v for k, v in result.summary.items() if k != "feature_names"}},
                     indent=2, default=str))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description="Build the default model shipped in data/model.")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="model root (data/model)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--pods", type=int, default=96, help="healthy pods (96)")
    p.add_argument("--hours", type=float, default=24.0, help="hours of history (24)")
    args = p.parse_args()
    build(args.root, seed=args.seed, n_pods=args.pods, hours=args.hours)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
