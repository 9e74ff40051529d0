"""Real healthy telemetry: Exathlon Spark Streaming runs as traces in podguard's format.

The Exathlon benchmark's undisturbed runs (``<app>_0_<rate>_<run>.zip``, one CSV per zip,
sampled once a second for 45-60 min) hold real JVM memory behaviour with garbage-
collection sawtooth and an old generation that fills up between major collections. They are
healthy, so the leak detector must not flag them. Called by the tests, by the evaluation
harness (false alarms on real data) and by training (healthy background).

Mapping (each Spark executor, and the driver, becomes one pod ``exathlon/<run>-<executor>``):

=======================================  =============================================
trace metric                             Exathlon column(s) of executor ``N``
=======================================  =============================================
``container_memory_working_set_bytes``   ``N_jvm_total_used_value`` (heap + non-heap in
                                         use: the GC sawtooth)
``container_memory_rss``                 ``N_jvm_total_committed_value`` (memory the JVM
                                         holds; grows in steps as the heap expands)
``container_spec_memory_limit_bytes``    ``limit="spark"`` (default): the limit Spark on
                                         Kubernetes sets, ``-Xmx`` (``N_jvm_heap_max_value``)
                                         plus the memory overhead ``max(10 %, 384 MiB)``;
                                         ``limit="tight"``: ``limit_factor`` x the run's
                                         peak committed memory (a right-sized limit, a
                                         harder test)
``container_cpu_usage_seconds_total``    ``N_executor_cpuTime_count`` / 1e9 (ns counter)
``jvm_gc_time_seconds_total``            ``N_executor_jvmGCTime_count`` / 1e3 (a custom
                                         counter, handled generically)
=======================================  =============================================

``-1`` marks a missing value in the files and is dropped. Samples are optionally
downsampled (the last sample of each ``downsample_s`` bin). Only the needed columns are
parsed, straight from the zip.

Where the runs come from: an explicit directory (``podguard evaluate --exathlon-dir DIR``,
``load_runs(DIR)``), else ``$PODGUARD_EXATHLON_DIR``, else :data:`SAMPLE_DIR`, the excerpt
shipped in the repository (``data/exathlon``: three runs, only the columns read here,
Apache-2.0 with its notice; written by ``data/exathlon/make_excerpt.py``). The tests use the
excerpt, so a clone alone passes them; the full benchmark (12 runs, 41 MB) is optional and
only the evaluation reads it, when given.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from detector import traces as tr
from detector.errors import InputError

ENV_DIR = "PODGUARD_EXATHLON_DIR"
NAMESPACE = "exathlon"
GC_TIME = "jvm_gc_time_seconds_total"
RUN_PATTERN = re.compile(r"^(\d+)_0_(\d+)_(\d+)\.zip$")
"""Undisturbed run files: ``<app>_0_<input rate>_<run>.zip``."""

_COLS = {
    "used": "jvm_total_used_value",
    "committed": "jvm_total_committed_value",
    "heap_max": "jvm_heap_max_value",
    "heap_used": "jvm_heap_used_value",
    "nonheap_used": "jvm_non-heap_used_value",
    "cpu": "executor_cpuTime_count",
    "gc": "executor_jvmGCTime_count",
}
_OVERHEAD_MIN = 384 * 2**20
_OVERHEAD_FRAC = 0.10


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "exathlon"
"""The excerpt shipped in the repository (absent from an installed wheel)."""


def default_dir() -> Path:
    """``$PODGUARD_EXATHLON_DIR`` if set, else the shipped excerpt :data:`SAMPLE_DIR`."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return SAMPLE_DIR


def list_runs(directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """The undisturbed run files in ``directory`` (sorted); [] if the folder is absent."""
    d = default_dir() if directory is None else Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if RUN_PATTERN.match(p.name))


def _header(zf: zipfile.ZipFile, member: str) -> list[str]:
    with zf.open(member) as f:
        return f.readline().decode("utf-8").strip().split(",")


def load_run(
    path: str | os.PathLike[str],
    *,
    downsample_s: float | None = 15.0,
    limit: str = "spark",
    limit_factor: float = 1.5,
    executors: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One Exathlon run as a trace (see the module docstring for the mapping).

    Raises :class:`InputError` naming the file if it is not a readable zip holding one CSV
    with a ``t`` column, or if an argument is invalid.
    """
    p = Path(path)
    if limit not in ("spark", "tight"):
        raise InputError(f"limit must be 'spark' or 'tight', got {limit!r}")
    if not limit_factor > 1.0:
        raise InputError(f"limit_factor must be > 1, got {limit_factor!r}")
    if downsample_s is not None and not downsample_s > 0:
        raise InputError(f"downsample_s must be > 0 or None, got {downsample_s!r}")
    try:
        with zipfile.ZipFile(p) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise InputError(f"{p}: expected one CSV in the zip, found {members}")
            member = members[0]
            cols = _header(zf, member)
            if not cols or cols[0] != "t":
                raise InputError(f"{p}: first column must be 't', got {cols[:1]}")
            present = set(cols)
            execs = sorted(
                {c.split("_", 1)[0] for c in cols[1:] if c.endswith("_" + _COLS["used"])}
            )
            if executors is not None:
                execs = [x for x in execs if x in set(executors)]
            want = ["t"] + [
                f"{x}_{c}" for x in execs for c in _COLS.values() if f"{x}_{c}" in present
            ]
            with zf.open(member) as f:
                df = pd.read_csv(f, usecols=want, dtype=np.float64, engine="c")
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise InputError(f"{p}: not a readable Exathlon zip: {e}") from e
    except (ValueError, pd.errors.ParserError) as e:
        raise InputError(f"{p}: cannot parse the CSV inside: {e}") from e
    df = df.replace(-1.0, np.nan)
    t = df["t"].to_numpy(dtype=np.float64)
    keep = np.isfinite(t)
    if downsample_s is not None:
        g = np.floor(t / downsample_s)
        last_in_bin = np.r_[g[1:] != g[:-1], True]
        keep &= last_in_bin
    df = df.loc[keep].reset_index(drop=True)
    t = df["t"].to_numpy(dtype=np.float64)
    run = p.stem.replace("_", "-")
    parts: list[pd.DataFrame] = []

    def add(pod: str, container: str, metric: str, values: np.ndarray) -> None:
        ok = np.isfinite(values)
        if not ok.any():
            return
        n = int(ok.sum())
        parts.append(
            pd.DataFrame(
                {
                    "timestamp": t[ok],
                    "namespace": NAMESPACE,
                    "pod": pod,
                    "container": container,
                    "node": "",
                    "metric": metric,
                    "value": values[ok],
                },
                index=pd.RangeIndex(n),
            )
        )

    for ex_id in execs:

        def col(key: str, ex_id: str = ex_id) -> np.ndarray | None:
            name = f"{ex_id}_{_COLS[key]}"
            return df[name].to_numpy(dtype=np.float64) if name in df.columns else None

        used = col("used")
        if used is None or not np.isfinite(used).any():
            continue
        pod = f"{run}-{'driver' if ex_id == 'driver' else 'exec-' + ex_id}"
        container = "driver" if ex_id == "driver" else "executor"
        add(pod, container, tr.WORKING_SET, used)
        committed = col("committed")
        if committed is not None:
            add(pod, container, tr.RSS, committed)
        if limit == "spark":
            hm = col("heap_max")
            heap_max = float(np.nanmax(hm)) if hm is not None and np.isfinite(hm).any() else np.nan
            lim = heap_max + max(_OVERHEAD_FRAC * heap_max, _OVERHEAD_MIN)
        else:
            ref = committed if committed is not None else used
            lim = limit_factor * float(np.nanmax(ref))
        if np.isfinite(lim):
            add(pod, container, tr.MEMORY_LIMIT, np.where(np.isfinite(used), lim, np.nan))
        cpu = col("cpu")
        if cpu is not None:
            add(pod, container, tr.CPU_SECONDS, cpu / 1e9)
        gc = col("gc")
        if gc is not None:
            add(pod, container, GC_TIME, gc / 1e3)
    if not parts:
        raise InputError(f"{p}: no executor with JVM memory columns found")
    out = pd.concat(parts, ignore_index=True)
    out = out.sort_values("timestamp", kind="stable").reset_index(drop=True)
    for c in tr.STRING_COLUMNS:
        out[c] = out[c].astype("category")
    return out[list(tr.TRACE_COLUMNS)]


def load_runs(
    directory: str | os.PathLike[str] | None = None,
    *,
    downsample_s: float | None = 15.0,
    limit: str = "spark",
    limit_factor: float = 1.5,
    max_runs: int | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """All readable runs of ``directory`` as one trace, plus ``(file, reason)`` of skipped ones.

    Runs are at different real times, so their pods never overlap. Raises
    :class:`InputError` if no run could be read.
    """
    runs = list_runs(directory)
    if max_runs is not None:
        runs = runs[:max_runs]
    frames: list[pd.DataFrame] = []
    skipped: list[tuple[str, str]] = []
    for p in runs:
        try:
            frames.append(
                load_run(p, downsample_s=downsample_s, limit=limit, limit_factor=limit_factor)
            )
        except InputError as e:
            skipped.append((p.name, str(e)))
    if not frames:
        where = default_dir() if directory is None else directory
        raise InputError(f"no readable Exathlon run in {where} (skipped: {skipped})")
    out = pd.concat(frames, ignore_index=True)
    for c in tr.STRING_COLUMNS:
        out[c] = out[c].astype("category")
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True), skipped
