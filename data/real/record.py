"""Re-records the shipped real traces: ``data/real/<name>.csv.gz`` and ``<name>.labels.json``.

A thin command-line wrapper over :func:`deploy.local.node_record.record`: real workloads
(PyTorch training loops, a page-cache reader, a GC sawtooth, a warm-up, leaks) in their own
memory cgroups on this machine, measured by cAdvisor, scraped by Prometheus, read back into
the trace format; the labels hold the kernel's OOM kills and every exit. Needs root (a
writable memory cgroup hierarchy) and ``make prepare`` (cAdvisor, Prometheus).

    sudo .venv/bin/python data/real/record.py [--mix mixed] [--minutes 20] [--step 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from deploy.local.node_record import MIXES, record, write

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix", choices=sorted(MIXES), default="mixed", help="workload set")
    ap.add_argument("--minutes", type=float, default=20.0, help="how long to record")
    ap.add_argument("--step", type=float, default=5.0, help="trace sample period, seconds")
    ap.add_argument("--name", default=None, help="file name stem (default: the mix)")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = ap.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="podguard-realnode-"))
    try:
        rec = record(state, MIXES[args.mix], duration_s=args.minutes * 60, step=args.step,
                     scrape_interval=f"{args.step:g}s")
        trace_path, labels_path = write(rec, args.out, args.name or args.mix)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    kills = {p: len(v["oom_kills"]) for p, v in rec.labels["pods"].items()}
    print(f"wrote {trace_path} ({len(rec.trace)} rows, {trace_path.stat().st_size / 1e6:.2f} MB)"
          f" and {labels_path}; kernel OOM kills per pod: {kills}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
