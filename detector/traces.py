"""The trace format: long-format telemetry tables on disk and in memory.

A trace is one row per sample with the columns of :data:`TRACE_COLUMNS`:
``timestamp`` (unix seconds, float), ``namespace``, ``pod``, ``container``, ``node`` (may be
empty), ``metric`` (a Prometheus metric name such as ``container_memory_working_set_bytes``)
and ``value`` (float, NaN allowed). Counters (names ending ``_total``) are raw cumulative
values, resets included. Files are CSV (optionally compressed) or Parquet.

Callers: ``detector.replay`` and the CLI load traces and walk them in time order with
:func:`iter_time_chunks`; ``detector.scenarios`` / ``detector.exathlon`` build traces and
:func:`save_trace` writes them; :class:`detector.windows.WindowEngine` ingests the frames.

String columns are pandas categoricals so a 3.5 M-row trace fits in ~100 MB and slices fast.
Rows with a NaN value are kept by :func:`load_trace` (the window engine rejects and counts
them); their number is in ``df.attrs["nan_values"]``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detector.errors import InputError

TRACE_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "namespace",
    "pod",
    "container",
    "node",
    "metric",
    "value",
)
"""Column order of a trace."""

REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "namespace", "pod", "metric", "value")
"""Columns a trace file must have; ``container`` and ``node`` default to ``""``."""

STRING_COLUMNS: tuple[str, ...] = ("namespace", "pod", "container", "node", "metric")

# Metric names the project reads (cAdvisor, kube-state-metrics, DCGM).
WORKING_SET = "container_memory_working_set_bytes"
RSS = "container_memory_rss"
CPU_SECONDS = "container_cpu_usage_seconds_total"
MEMORY_LIMIT = "container_spec_memory_limit_bytes"
KSM_LIMITS = "kube_pod_container_resource_limits"  # memory limit bytes in a trace
FS_USAGE = "container_fs_usage_bytes"
FS_LIMIT = "container_fs_limit_bytes"
NET_RX = "container_network_receive_bytes_total"
NET_TX = "container_network_transmit_bytes_total"
RESTARTS = "kube_pod_container_status_restarts_total"
GPU_FB_USED = "DCGM_FI_DEV_FB_USED"  # MiB
GPU_FB_FREE = "DCGM_FI_DEV_FB_FREE"  # MiB
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # percent

MIB = float(1 << 20)


def is_counter(metric: str) -> bool:
    """Whether ``metric`` is a cumulative counter (Prometheus naming: ends in ``_total``)."""
    return metric.endswith("_total")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _need_pyarrow(path: Path) -> None:
    """Parquet needs pyarrow, which the daemon's runtime set leaves out (podguard[train])."""
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise InputError(f"{path}: Parquet traces need pyarrow (pip install 'podguard[train]'); "
                         f"CSV traces (.csv, .csv.gz) need nothing more")


def validate_trace(df: pd.DataFrame, *, source: str = "<frame>") -> pd.DataFrame:
    """A copy of ``df`` in canonical trace form, or :class:`InputError` naming what is wrong.

    Checks that the required columns are present, that every ``timestamp`` is a finite
    number and that every ``value`` is a number or NaN (empty). The error names ``source``,
    the column and the first bad row (for CSV files: the line number in the file).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"{source}: missing required column(s) {', '.join(missing)} "
            f"(have: {', '.join(map(str, df.columns))})"
        )
    is_csv = source.lower().endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst"))

    def where(i: int) -> str:
        return f"line {i + 2}" if is_csv else f"row {i}"

    out: dict[str, Any] = {}
    ts_raw = df["timestamp"]
    ts = pd.to_numeric(ts_raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(ts)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{source}: column 'timestamp' must be finite unix seconds; "
            f"{where(i)} has {ts_raw.iloc[i]!r}"
        )
    out["timestamp"] = ts
    for col in STRING_COLUMNS:
        if col in df.columns:
            s = df[col]
            if not isinstance(s.dtype, pd.CategoricalDtype):
                s = s.astype("string").fillna("").astype("category")
            elif s.isna().any():
                if "" not in s.cat.categories:
                    s = s.cat.add_categories([""])
                s = s.fillna("")
            out[col] = s.reset_index(drop=True)
        else:
            out[col] = pd.Series(
                pd.Categorical.from_codes(np.zeros(len(df), dtype=np.int8), pd.Index([""]))
            )
    for col in ("namespace", "pod", "metric"):
        s = out[col]
        empty = (s == "").to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise InputError(f"{source}: column {col!r} must not be empty; {where(i)} is empty")
    val_raw = df["value"]
    if pd.api.types.is_numeric_dtype(val_raw.dtype) and not pd.api.types.is_bool_dtype(
        val_raw.dtype
    ):
        val = val_raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        num = pd.to_numeric(val_raw, errors="coerce")
        val = num.to_numpy(dtype=np.float64, na_value=np.nan)
        suspect = np.flatnonzero(np.isnan(val) & val_raw.notna().to_numpy())
        if suspect.size:
            # "", "nan", "NA", "null" are explicit missing values, not errors
            txt = val_raw.iloc[suspect].astype("string").str.strip().str.lower()
            real_bad = ~txt.isin(["", "nan", "na", "n/a", "null", "none"]).to_numpy()
            if real_bad.any():
                i = int(suspect[int(np.flatnonzero(real_bad)[0])])
                raise InputError(
                    f"{source}: column 'value' must be numeric or empty; "
                    f"{where(i)} has {val_raw.iloc[i]!r}"
                )
    out["value"] = val
    frame = pd.DataFrame({c: out[c] for c in TRACE_COLUMNS})
    frame.attrs["nan_values"] = int(np.isnan(val).sum())
    frame.attrs["source"] = source
    return frame


def load_trace(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Reads and validates a trace file (CSV or Parquet); see :func:`validate_trace`.

    Raises :class:`InputError` if the file cannot be read or is malformed.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"trace file {p} does not exist")
    if _is_parquet(p):
        _need_pyarrow(p)
    try:
        if _is_parquet(p):
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(
                p,
                dtype={c: "category" for c in STRING_COLUMNS},
                keep_default_na=True,
                low_memory=False,
            )
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise InputError(f"cannot read trace {p}: {e}") from e
    except Exception as e:  # pyarrow raises its own error types on corrupt files
        raise InputError(f"cannot read trace {p}: {type(e).__name__}: {e}") from e
    return validate_trace(df, source=str(p))


def save_trace(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Writes a trace (validated first) to CSV or Parquet by suffix, atomically.

    The file is written under a temporary name in the same folder and renamed into place, so
    a failed write leaves any previous file intact and no partial file behind.
    """
    p = Path(path)
    frame = validate_trace(df, source=str(p))
    if _is_parquet(p):
        _need_pyarrow(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a trace is ordinary data
        if _is_parquet(p):
            frame.to_parquet(tmp, index=False, compression="zstd")
        else:
            if p.suffix.lower() == ".gz":
                frame.to_csv(tmp, index=False, compression="gzip")
            else:
                frame.to_csv(tmp, index=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def sort_by_time(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` in non-decreasing ``timestamp`` order (stable; returned as is if already sorted)."""
    ts = df["timestamp"].to_numpy()
    if ts.size < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        return df
    order = np.argsort(ts, kind="stable")
    return df.iloc[order].reset_index(drop=True)


def iter_time_chunks(
    df: pd.DataFrame,
    step: float,
    *,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[tuple[float, pd.DataFrame]]:
    """Yields ``(t_end, chunk)`` in time order, one per ``step`` seconds of trace time.

    ``t_end`` runs over the multiples of ``step`` from the first one at or after the first
    timestamp (or ``start``) to the first one at or after the last timestamp (or ``end``);
    ``chunk`` holds the rows with ``t_end - step < timestamp <= t_end`` (possibly none), so
    every row is yielded exactly once when no ``start``/``end`` cuts the trace. Rows are
    sliced, not copied, after one sort; categorical columns stay categorical.
    """
    if not step > 0:
        raise InputError(f"iter_time_chunks: step must be > 0 seconds, got {step!r}")
    frame = sort_by_time(df)
    ts = frame["timestamp"].to_numpy(dtype=np.float64)
    if ts.size == 0 and (start is None or end is None):
        return
    lo = float(ts[0]) if start is None else float(start)
    hi = float(ts[-1]) if end is None else float(end)
    k0 = int(np.ceil(lo / step))
    k1 = int(np.ceil(hi / step))
    ends = np.arange(k0, k1 + 1, dtype=np.float64) * step
    if start is None:
        first = 0
    else:
        first = int(np.searchsorted(ts, ends[0] - step, side="right")) if ends.size else 0
    cuts = np.searchsorted(ts, ends, side="right")
    prev = first
    for t_end, cut in zip(ends.tolist(), cuts.tolist()):
        yield t_end, frame.iloc[prev:cut]
        prev = cut
