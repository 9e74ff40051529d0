"""Writes the shipped scenario set: ``data/scenarios/trace.parquet`` and ``labels.csv``.

A thin command-line wrapper over :func:`detector.scenarios.generate` (seeded, so the files
are reproducible). The replay demo and the evaluation read these files; the large replay
benchmark (100 pods x 16 h) is generated on the fly by ``detector.bench`` instead.

    .venv/bin/python data/generate_scenarios.py [--pods-per-kind 2] [--hours 8] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from detector.scenarios import generate
from detector.traces import save_trace

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods-per-kind", type=int, default=2, help="pods per scenario shape")
    ap.add_argument("--hours", type=float, default=8.0, help="trace length, hours")
    ap.add_argument("--step", type=float, default=15.0, help="sample period, seconds")
    ap.add_argument("--seed", type=int, default=7, help="random seed")
    ap.add_argument("--out", type=Path, default=HERE / "scenarios", help="output folder")
    args = ap.parse_args(argv)
    trace, labels = generate(
        n_pods_per_kind=args.pods_per_kind, hours=args.hours, step_s=args.step, seed=args.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    trace_path = save_trace(trace, args.out / "trace.parquet")
    fd, tmp = tempfile.mkstemp(prefix=".labels.", suffix=".tmp", dir=args.out)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        labels.to_csv(tmp, index=False)
        os.replace(tmp, args.out / "labels.csv")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    size = trace_path.stat().st_size
    print(
        f"wrote {trace_path} ({len(trace)} rows, {size / 1e6:.1f} MB) and "
        f"{args.out / 'labels.csv'} ({len(labels)} pods)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
