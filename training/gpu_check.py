"""GPU check for the retraining job: the same autoencoder training on CUDA and on the CPU.

Run on a machine with a CUDA GPU (well under 5 minutes of device time)::

    python -m training.gpu_check                 # CUDA vs CPU, same data, same seed
    python -m training.gpu_check --devices cpu   # the code path without a GPU

It builds healthy windows from the project's own scenario generator, trains the autoencoder
on each device with the same seed and data, and prints samples/s and final losses per device.
Then it saves the GPU-trained model, loads it on the CPU (safetensors, no pickle) and checks
that it scores the same windows identically within float tolerance (bf16/fp16 autocast is
used for training only; scoring is float32). Exit status 1 if the check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np

from detector import scenarios
from detector.models.autoencoder import AutoencoderConfig, AutoencoderDetector
from detector.settings import WindowSettings
from training.fit import collect_windows, drift_feature_names


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", nargs="+", default=None,
                   help="devices to train on (default: cuda cpu when CUDA is available)")
    p.add_argument("--pods", type=int, default=48, help="healthy pods (48)")
    p.add_argument("--hours", type=float, default=14.0, help="hours of history (14)")
    p.add_argument("--epochs", type=int, default=60, help="epochs, no early stop (60)")
    p.add_argument("--batch-size", type=int, default=1024, help="batch size (1024)")
    p.add_argument("--rtol", type=float, default=1e-4, help="score tolerance, relative (1e-4)")
    args = p.parse_args(argv)
    devices = args.devices or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    trace, _ = scenarios.generate_healthy(n_pods=args.pods, hours=args.hours, seed=5)
    batch = collect_windows(trace, windows=WindowSettings())
    names = drift_feature_names(batch.feature_names)
    X = batch.features[:, [batch.feature_names.index(n) for n in names]]
    print(f"data: {len(X):,} windows x {len(names)} features "
          f"({time.perf_counter() - t0:.0f} s to build)")
    cfg = AutoencoderConfig(seed=0, max_epochs=args.epochs, patience=args.epochs + 1,
                            batch_size=args.batch_size)
    results: dict[str, dict[str, object]] = {}
    models: dict[str, AutoencoderDetector] = {}
    for dev in devices:
        det = AutoencoderDetector(cfg, device=dev)
        det.fit(X, names)
        h = det.history_
        assert h is not None
        results[dev] = {"device": h.device, "amp": h.amp_dtype, "epochs": h.epochs,
                        "samples_per_s": round(h.samples_per_s), "seconds": round(h.seconds, 2),
                        "final_train_loss": h.train_loss[-1], "final_val_loss": h.val_loss[-1]}
        models[dev] = det
        print(json.dumps(results[dev]))
    ok = True
    if "cuda" in models:
        with tempfile.TemporaryDirectory() as d:
            models["cuda"].save(d)
            on_cpu = AutoencoderDetector.load(d)
        gpu_scores = models["cuda"].score(X)
        cpu_scores = on_cpu.score(X)
        close = np.allclose(gpu_scores, cpu_scores, rtol=args.rtol, atol=1e-6)
        diff = float(np.max(np.abs(gpu_scores - cpu_scores)))
        print(f"GPU-trained model loaded on the CPU scores identically: {close} "
              f"(max |diff| {diff:.3g})")
        ok = ok and close
        if "cpu" in results:
            speedup = float(results["cuda"]["samples_per_s"]) / float(  # type: ignore[arg-type]
                results["cpu"]["samples_per_s"])  # type: ignore[arg-type]
            print(f"training speed-up GPU/CPU: {speedup:.1f}x")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
