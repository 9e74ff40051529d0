"""``podguard bench``: speed and memory figures (a benchmark that prints, not a timed test).

Figures, each on one CPU core (torch and BLAS limited to one thread):

* windows scored per second for the full ensemble (leak trend + autoencoder + isolation
  forest), batched, without explanations, and the whole per-step path
  (``Pipeline.evaluate``); each per second of wall time and per CPU-second of this process
  (on a loaded machine the wall time also counts other processes' turns);
* explanation latency per flagged window (leak: exact Shapley over 9 inputs; drift: tree
  SHAP + expected gradients);
* replay throughput (rows/s) on 100 pods x 16 h x 7 metrics at 15 s (~3.5 M rows);
* peak RSS of a process holding a node's worth of pods (110) with 4 h windows, measured in a
  fresh subprocess so the benchmark's own data does not count.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from detector import scenarios
from detector.pipeline import Pipeline
from detector.replay import make_engine
from detector.settings import WindowSettings
from detector.windows import WindowBatch, iter_windows


def _one_core() -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _collect(trace: pd.DataFrame, n_max: int) -> WindowBatch:
    """The non-stale windows of the first steps of ``trace``, until ``n_max`` are reached."""
    parts = []
    total = 0
    for _t, batch, _r in iter_windows(trace, every_s=60.0, engine=make_engine(WindowSettings()),
                                      drop_stale=True):
        parts.append(batch)
        total += len(batch)
        if total >= n_max:
            break
    return WindowBatch.concat(parts)


def bench_scoring(pipe: Pipeline, batch: WindowBatch, repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats``, in wall seconds and in this process's CPU seconds (on a loaded
    machine the wall time counts the other processes' turns too)."""
    best, best_cpu = np.inf, np.inf
    for _ in range(repeats):
        pipe.trend.forget_analysis()  # time the analysis itself, not its cache
        t, c = time.perf_counter(), time.process_time()
        pipe.trend.score(batch)
        pipe.trend.leak_report(batch)  # the same analysis: computed once per batch
        pipe.drift.score(pipe.drift_features(batch))
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return {"windows": len(batch), "seconds": best, "windows_per_s_per_core": len(batch) / best,
            "cpu_seconds": best_cpu, "windows_per_cpu_s": len(batch) / best_cpu}


def bench_step(pipe: Pipeline, trace: pd.DataFrame, steps: int = 120) -> dict[str, float]:
    """The whole per-step path as the daemon calls it: ``Pipeline.evaluate`` (leak and drift
    scores, leak reports, history, debouncing, explanations of positives) on one batch per
    step of a node's pods, over ``steps`` consecutive steps, in the steady state: a first
    pass over the same steps (timed apart, ``first_pass_cpu_seconds``) prepares what a model
    builds once, at its first explanation."""
    batches: list[WindowBatch] = []
    for _t, batch, _r in iter_windows(trace, every_s=60.0, engine=make_engine(WindowSettings())):
        if len(batch):
            batches.append(batch)
    batches = batches[-steps:]

    def fresh() -> Pipeline:
        return Pipeline(trend=pipe.trend, drift=pipe.drift, settings=pipe.settings,
                        version=pipe.version, univariate=pipe.univariate)

    # the steady state: what a model prepares once, at its first explanation (the forest's
    # TreeSHAP leaf tables, ~0.3 s), is timed apart, not as part of the steps
    c = time.process_time()
    warm = fresh()
    for b in batches:
        warm.evaluate(b)
    first_pass_cpu = time.process_time() - c
    fresh_pipe = fresh()
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for b in batches:
        fresh_pipe.evaluate(b)
        n += len(b)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    return {"windows": n, "steps": len(batches), "batch": n / max(len(batches), 1),
            "seconds": dt, "windows_per_s_per_core": n / dt, "cpu_seconds": cpu,
            "windows_per_cpu_s": n / cpu, "first_pass_cpu_seconds": first_pass_cpu}


def bench_custom_metric(pipe: Pipeline, pods: int = 110, steps: int = 300) -> dict[str, float]:
    """The custom-metric path as the pipeline runs it each step: one metric per pod, 4 h
    windows of 240 points, each step one new point per pod (streaming state warmed first)."""
    from detector.models.univariate import StreamBank

    rng = np.random.default_rng(3)
    L = 240
    x = 0.41 + 0.03 * rng.standard_normal((pods, L + 600 + steps))
    keys = [f"pod-{i}" for i in range(pods)]
    bank = StreamBank(pipe.univariate)
    grid = np.arange(L) * 60.0
    thr = pipe.univariate.threshold_for("bench_metric")
    for t in range(L, L + 600):  # warm: the first window, then 600 steps
        bank.advance(keys, np.broadcast_to(grid + 60.0 * (t - L), (pods, L)), x[:, t - L:t], thr)
    start = time.perf_counter()
    for t in range(L + 600, L + 600 + steps):
        bank.advance(keys, np.broadcast_to(grid + 60.0 * (t - L), (pods, L)), x[:, t - L:t], thr)
    sec = (time.perf_counter() - start) / steps
    return {"pods": pods, "ms_per_step": 1000 * sec, "windows_per_s_per_core": pods / sec,
            "state_floats_per_series": bank.state_floats()}


def bench_explain(pipe: Pipeline, batch: WindowBatch, n: int = 20) -> dict[str, float]:
    from detector import explain as xp

    idx = np.arange(min(n, len(batch)))
    sub = batch.subset(idx)
    t = time.perf_counter()
    inputs, names = pipe.trend.explain_features(sub)
    bg = pipe.trend.explain_background(names)
    for j in range(len(sub)):
        xp.exact_shapley(pipe.trend.score_from_explain_features, inputs[j], bg, names)
    leak_ms = 1000 * (time.perf_counter() - t) / len(sub)
    x = pipe.drift_features(sub)
    pipe.drift.explain(x[:1])  # warm-up (background, graph)
    t = time.perf_counter()
    for j in range(len(sub)):
        pipe.drift.explain(x[j:j + 1])
    drift_ms = 1000 * (time.perf_counter() - t) / len(sub)
    return {"leak_explanation_ms": leak_ms, "drift_explanation_ms": drift_ms}


def bench_replay(pipe: Pipeline, pods: int, hours: float) -> dict[str, float]:
    from detector.replay import iter_replay

    trace, _ = scenarios.generate(n_pods=pods, hours=hours, seed=99)
    t = time.perf_counter()
    steps = sum(1 for _ in iter_replay(trace, pipe, step_s=60.0, progress=True))
    dt = time.perf_counter() - t
    return {"rows": len(trace), "pods": pods, "hours": hours, "steps": steps, "seconds": dt,
            "rows_per_s": len(trace) / dt}


RSS_CHILD = r"""
import json, math, resource, sys, time
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) * 1024
start = rss()
import pyarrow.parquet as pq
from detector.pipeline import Pipeline
from detector.replay import make_engine
from detector.settings import WindowSettings
from detector.traces import validate_trace
model = sys.argv[1] or None
pipe = Pipeline.load(model)
loaded = rss()
engine = make_engine(WindowSettings())
t_cpu = time.process_time(); steps = 0; next_t = None
# the trace streams in (time-ordered record batches), as a source would deliver it
for rb in pq.ParquetFile(sys.argv[2]).iter_batches(batch_size=2000):
    df = validate_trace(rb.to_pandas())
    engine.ingest(df)
    newest = float(df["timestamp"].iloc[-1])
    if next_t is None:
        next_t = math.ceil(float(df["timestamp"].iloc[0]) / 60.0) * 60.0
    while next_t <= newest:
        pipe.evaluate(engine.windows(at=next_t)); steps += 1; next_t += 60.0
cpu = time.process_time() - t_cpu
print(json.dumps({"steps": steps, "rss_start_bytes": start, "rss_model_loaded_bytes": loaded,
                  "rss_bytes": rss(),
                  # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak
                  "peak_rss_bytes": int(open('/proc/self/status').read()
                                        .split('VmHWM:')[1].split()[0]) * 1024,
                  "cpu_s_per_step": cpu / steps, "torch_imported": "torch" in sys.modules,
                  "state": engine.state_size()}))
"""


def bench_rss(pods: int, model: Path | None) -> dict[str, object]:
    """RSS of a fresh process that loads the model and runs ``pods`` pods for 4.5 h of trace
    time; the trace is generated here (by the parent) so its generation does not count."""
    import tempfile

    trace, _ = scenarios.generate(n_pods=pods, hours=4.5, seed=3,
                                  shapes=scenarios.HEALTHY_SHAPES)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.parquet"
        trace.sort_values("timestamp", kind="stable").to_parquet(path, row_group_size=20_000)
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(model or ""), str(path)],
                             capture_output=True, text=True, check=True)
    res: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    res["pods"] = pods
    return res


def run_bench(args: argparse.Namespace) -> int:
    _one_core()
    pipe = Pipeline.load(args.model)
    print(f"podguard bench, model {pipe.version}, one core", flush=True)
    trace, _ = scenarios.generate(n_pods=args.pods, hours=5.0, seed=11)
    batch = _collect(trace, 20_000)
    res: dict[str, object] = {}
    res["scoring"] = bench_scoring(pipe, batch)
    print(f"scoring (trend + autoencoder + forest, batched, no explanations): "
          f"{res['scoring']['windows_per_s_per_core']:,.0f} windows/s/core "  # type: ignore[index]
          f"({res['scoring']['windows_per_cpu_s']:,.0f} per CPU-second) "  # type: ignore[index]
          f"over {len(batch):,} windows", flush=True)
    res["step"] = st = bench_step(pipe, trace)
    print(f"per-step path (Pipeline.evaluate with leak reports, as the daemon calls it): "
          f"{st['windows_per_s_per_core']:,.0f} windows/s/core "
          f"({st['windows_per_cpu_s']:,.0f} per CPU-second) at a batch of "
          f"{st['batch']:.0f} windows ({st['steps']:.0f} steps; the first pass, preparing "
          f"the model's explainers, took {st['first_pass_cpu_seconds']:.2f} CPU-s)", flush=True)
    res["custom_metric"] = cm = bench_custom_metric(pipe)
    print(f"custom metric (streaming univariate, {cm['pods']:.0f} pods x 1 metric, one new "
          f"point a step): {cm['windows_per_s_per_core']:,.0f} windows/s/core "
          f"({cm['ms_per_step']:.2f} ms per step)", flush=True)
    res["explain"] = bench_explain(pipe, batch)
    print(f"explanation latency: leak {res['explain']['leak_explanation_ms']:.1f} ms, "  # type: ignore[index]
          f"drift {res['explain']['drift_explanation_ms']:.1f} ms per window", flush=True)  # type: ignore[index]
    r = bench_rss(args.pods, args.model)
    res["node"] = r
    mib = {k: float(r[k]) / 2**20  # type: ignore[arg-type]
           for k in ("rss_model_loaded_bytes", "rss_bytes", "peak_rss_bytes")}
    print(f"node of {args.pods} pods, 4 h windows, a step every 60 s: RSS {mib['rss_bytes']:.0f} "
          f"MiB (after loading the model {mib['rss_model_loaded_bytes']:.0f}, peak "
          f"{mib['peak_rss_bytes']:.0f}; torch imported: {r['torch_imported']}), "
          f"{float(r['cpu_s_per_step']) * 1000:.0f} ms CPU per step", flush=True)  # type: ignore[arg-type]
    if args.replay_hours > 0:
        res["replay"] = bench_replay(pipe, args.replay_pods, args.replay_hours)
        rp = res["replay"]
        print(f"replay: {rp['rows']:,} rows ({rp['pods']} pods x {rp['hours']} h) in "  # type: ignore[index]
              f"{rp['seconds']:.0f} s = {rp['rows_per_s']:,.0f} rows/s", flush=True)  # type: ignore[index]
    res["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res, indent=2, default=float))
    return 0
