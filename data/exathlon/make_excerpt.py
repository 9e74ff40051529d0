"""Writes the shipped Exathlon excerpt ``data/exathlon/*.zip`` from the full benchmark.

The tests need real healthy JVM memory behaviour, not the whole Exathlon set (41 MB, ~2,300
columns a run). This keeps, for a few undisturbed runs, only the columns
:mod:`detector.exathlon` reads (``t`` and, per executor and the driver, JVM memory used /
committed / heap max / heap used / non-heap used, CPU time and GC time), every sample, in the
same layout (one CSV per zip, named like the run), so the loader reads both the same way.

    .venv/bin/python data/exathlon/make_excerpt.py FULL_EXATHLON_DIR [--runs NAME ...]

The Exathlon data is Apache-2.0 (see ``LICENSE`` and ``NOTICE`` in this folder).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = ("1_0_100000_15", "1_0_100000_16", "1_0_10000_17", "1_0_500000_18", "5_0_100000_37",
        "5_0_50000_39")
"""The first six undisturbed runs (two applications, four input rates, 45-60 min each): the
set the tests used when they read the full benchmark, ~1,200 one-minute windows."""
COLUMN_SUFFIXES = (
    "jvm_total_used_value",
    "jvm_total_committed_value",
    "jvm_heap_max_value",
    "jvm_heap_used_value",
    "jvm_non-heap_used_value",
    "executor_cpuTime_count",
    "executor_jvmGCTime_count",
)


def excerpt(src: Path, dest: Path) -> int:
    """Copy the needed columns of run zip ``src`` into zip ``dest``; returns its size."""
    with zipfile.ZipFile(src) as zf:
        (member,) = [m for m in zf.namelist() if m.lower().endswith(".csv")]
        with zf.open(member) as fh:
            reader = csv.reader(io.TextIOWrapper(fh, encoding="utf-8", newline=""))
            header = next(reader)
            keep = [0] + [i for i, c in enumerate(header) if c.split("_", 1)[-1]
                          in COLUMN_SUFFIXES]
            rows = [[row[i] for i in keep] for row in reader]
    # A column with no sample (all -1 or empty: an executor that never ran) is left out.
    keep_cols = [0] + [j for j in range(1, len(keep))
                       if any(r[j] not in ("", "-1", "-1.0") for r in rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([header[keep[j]] for j in keep_cols])
    for r in rows:
        writer.writerow([r[j] for j in keep_cols])
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as out:
            info = zipfile.ZipInfo(member, date_time=(2021, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            out.writestr(info, buf.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="folder of the full Exathlon run zips")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), help="run names to keep")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = ap.parse_args(argv)
    for run in args.runs:
        size = excerpt(args.source / f"{run}.zip", args.out / f"{run}.zip")
        print(f"wrote {args.out / (run + '.zip')} ({size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
