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
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detector.channels import CHANNEL_METRICS, LIMITS
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

# Metric names the project reads (cAdvisor, kube-state-metrics, DCGM): the rows of the
# channel and limit tables (detector.channels), named here for the code that writes traces.
WORKING_SET = CHANNEL_METRICS["mem_working_set"]
RSS = CHANNEL_METRICS["mem_rss"]
CACHE = CHANNEL_METRICS["mem_cache"]
CPU_SECONDS = CHANNEL_METRICS["cpu_rate"]
FS_USAGE = CHANNEL_METRICS["fs_usage"]
NET_RX = CHANNEL_METRICS["net_rx_rate"]
NET_TX = CHANNEL_METRICS["net_tx_rate"]
RESTARTS = CHANNEL_METRICS["restarts"]
OOM_KILLED = CHANNEL_METRICS["oom_killed"]  # 1 once the last termination was OOMKilled
GPU_FB_USED = CHANNEL_METRICS["gpu_fb_used"]  # MiB
GPU_UTIL = CHANNEL_METRICS["gpu_util"]  # percent
MEMORY_LIMIT, KSM_LIMITS = (m.metric for m in LIMITS["memory"].metrics)  # KSM: bytes in a trace
(GPU_FB_FREE,) = (m.metric for m in LIMITS["gpu_memory"].metrics)  # MiB
(FS_LIMIT,) = (m.metric for m in LIMITS["filesystem"].metrics)

MAX_TIMESTAMP = 1e11
"""Unix seconds must be below this (year ~5138); larger values are milliseconds or garbage."""

MAX_REPLAY_STEPS = 1_000_000
"""Steps a replay may walk (1.9 years at 60 s); a longer span is a bad timestamp, refused."""

DEFAULT_MAX_FUTURE_S = 86400.0
"""How far past the wall clock a replayed trace may reach before it is refused, seconds."""


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

    def where(i: int) -> str:
        return _row_ref(source, i)

    out: dict[str, Any] = {}
    out["timestamp"] = _unix_seconds(df["timestamp"], source, where)
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


def _row_ref(source: str, i: int) -> str:
    """Where row ``i`` of a trace is: its line in a CSV file, else its row number."""
    is_csv = source.lower().endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst"))
    return f"line {i + 2}" if is_csv else f"row {i}"


def _unix_seconds(ts_raw: pd.Series, source: str, where: Any) -> np.ndarray:
    """The ``timestamp`` column as float unix seconds, or :class:`InputError` naming the
    first bad row. A datetime column (Parquet ``timestamp`` type; naive times are taken as
    UTC) and RFC 3339 strings are converted; numbers must be seconds in (0, 1e11): larger
    ones are named as milliseconds, microseconds or nanoseconds."""
    if pd.api.types.is_datetime64_any_dtype(ts_raw.dtype):
        return _from_datetimes(ts_raw, source, where)
    if pd.api.types.is_timedelta64_dtype(ts_raw.dtype):
        raise InputError(f"{source}: column 'timestamp' holds durations ({ts_raw.dtype}), not "
                         f"points in time; write unix seconds or RFC 3339 times")
    ts = pd.to_numeric(ts_raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(ts)
    if bad.any() and not pd.api.types.is_numeric_dtype(ts_raw.dtype):
        parsed = pd.to_datetime(ts_raw, errors="coerce", utc=True, format="ISO8601")
        if parsed.notna().all():  # every row an RFC 3339 / ISO 8601 time
            return _from_datetimes(parsed, source, where)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{source}: column 'timestamp' must be finite unix seconds; "
            f"{where(i)} has {ts_raw.iloc[i]!r}"
        )
    out_of_range = (ts <= 0) | (ts >= MAX_TIMESTAMP)
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        v = float(ts[i])
        n = int(out_of_range.sum())
        rows = f"{n:,} of {ts.size:,} rows" if n > 1 else "1 row"
        if v <= 0:
            why = "timestamps must be unix seconds after 1970-01-01"
        else:
            unit, div = next((u, d) for u, d, lim in (
                ("milliseconds", 1e3, 1e14), ("microseconds", 1e6, 1e17),
                ("nanoseconds", 1e9, float("inf"))) if v < lim)
            as_time = _iso(v / div)
            why = (f"these look like {unit} ({v:.0f} {unit} is {as_time}); podguard reads unix "
                   f"seconds: divide the column by {div:g}")
        raise InputError(f"{source}: column 'timestamp' is out of range in {rows}; "
                         f"{where(i)} has {ts_raw.iloc[i]!r}: {why}")
    return ts


def _from_datetimes(col: pd.Series, source: str, where: Any) -> np.ndarray:
    s = col
    if s.dt.tz is None:
        s = s.dt.tz_localize("UTC")
    nat = s.isna().to_numpy()
    if nat.any():
        i = int(np.flatnonzero(nat)[0])
        raise InputError(f"{source}: column 'timestamp' has a missing time at {where(i)}")
    ns = s.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    secs = ns.to_numpy().astype(np.int64).astype(np.float64) / 1e9
    early = secs <= 0
    if early.any():
        i = int(np.flatnonzero(early)[0])
        raise InputError(f"{source}: column 'timestamp' has {col.iloc[i]}, before 1970, at "
                         f"{where(i)}")
    return secs


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts:g} s"


def _span_text(seconds: float) -> str:
    for unit, n in (("years", 365.25 * 86400), ("days", 86400.0), ("hours", 3600.0)):
        if seconds >= n:
            return f"{seconds / n:,.1f} {unit}"
    return f"{seconds:,.0f} s"


def check_replayable(df: pd.DataFrame, *, step_s: float, source: str | None = None,
                     now: float | None = None,
                     max_future_s: float | None = DEFAULT_MAX_FUTURE_S,
                     max_steps: int = MAX_REPLAY_STEPS) -> None:
    """:class:`InputError` if replaying the (validated) trace ``df`` in ``step_s`` steps would
    walk an absurd span: a row more than ``max_future_s`` past ``now`` (default: the wall
    clock; None: no check), or first-to-last rows more than ``max_steps`` steps apart (one row
    at ts=1 beside a 2026 trace, one in the year 5100). The error names the row, its time and
    the largest gap, so the bad timestamp can be found; nothing is allocated over the span."""
    name = source or str(df.attrs.get("source", "<frame>"))
    ts = df["timestamp"].to_numpy(dtype=np.float64)
    if ts.size == 0:
        return
    if not step_s > 0:
        raise InputError(f"{name}: the replay step must be > 0 seconds, got {step_s!r}")
    if max_future_s is not None:
        wall = time.time() if now is None else float(now)
        i = int(np.argmax(ts))
        if ts[i] > wall + max_future_s:
            n = int((ts > wall + max_future_s).sum())
            raise InputError(
                f"{name}: {n:,} row(s) lie in the future: {_row_ref(name, i)} has timestamp "
                f"{ts[i]:g} ({_iso(float(ts[i]))}), {_span_text(float(ts[i] - wall))} after "
                f"now; more than {max_future_s:g} s ahead is refused (a clock or unit error)")
    lo, hi = float(ts.min()), float(ts.max())
    steps = (hi - lo) / step_s
    if steps > max_steps:
        uniq = np.unique(ts)
        gaps = np.diff(uniq)
        g = int(np.argmax(gaps))
        before, after = float(uniq[g]), float(uniq[g + 1])
        row_b = int(np.flatnonzero(ts == before)[0])
        row_a = int(np.flatnonzero(ts == after)[0])
        raise InputError(
            f"{name}: the trace spans {_span_text(hi - lo)} ({steps:,.0f} steps of "
            f"{step_s:g} s; at most {max_steps:,} are replayed); its largest gap, "
            f"{_span_text(after - before)}, lies between {_row_ref(name, row_b)} at "
            f"{before:g} ({_iso(before)}) and {_row_ref(name, row_a)} at {after:g} "
            f"({_iso(after)}): a timestamp is probably wrong; remove those rows or split "
            f"the trace")


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
