"""Evaluation harness (``podguard evaluate``): podguard against two baselines on labelled traces.

Who calls it: the CLI and the test suite. It replays labelled scenario traces (and the real
healthy Exathlon traces) through the window engine once, and at every step asks three
detectors for a verdict on every pod:

* **podguard** - the full pipeline (leak trend detector + drift ensemble, debounced);
* **predict_linear** - the common Prometheus rule
  ``predict_linear(container_memory_working_set_bytes[1h], 4*3600) > limit``
  (least-squares line over the last hour of working set, extrapolated 4 h);
* **iforest** - a plain PyOD IForest with default contamination on the same features.

Reported per fault kind: recall (detected between onset and failure), median lead time
before failure, the fraction of detections whose top SHAP feature names the fault's
metric, and false-alarm episodes per 1,000 healthy pod-hours (an episode is a maximal run
of consecutive positive steps on a healthy pod, or on a faulty pod before its onset).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from detector.pipeline import Pipeline
from detector.settings import WindowSettings
from detector.windows import WindowBatch

TraceSet = pd.DataFrame | list[pd.DataFrame]

PREDICT_LINEAR_RANGE_S = 3600.0
PREDICT_LINEAR_AHEAD_S = 4 * 3600.0

# Which window channel carries each raw metric (to check that an explanation names the
# fault's metric).
METRIC_CHANNEL = {
    "container_memory_working_set_bytes": "mem_working_set",
    "container_memory_rss": "mem_rss",
    "DCGM_FI_DEV_FB_USED": "gpu_fb_used",
    "container_cpu_usage_seconds_total": "cpu_rate",
    "DCGM_FI_DEV_GPU_UTIL": "gpu_util",
    "container_network_receive_bytes_total": "net_rx_rate",
    "container_network_transmit_bytes_total": "net_tx_rate",
    "container_fs_usage_bytes": "fs_usage",
}
MEMORY_FAMILY = {"mem_working_set", "mem_rss"}


def feature_channel(feature: str) -> str:
    return feature.split(".", 1)[0]


def names_fault(feature: str | None, fault_metric: str) -> bool:
    """Does a top feature name the fault's metric? (Working set and RSS count as one family.)"""
    if not feature:
        return False
    ch = feature_channel(feature)
    wanted = {METRIC_CHANNEL.get(m, m) for m in str(fault_metric).split("|")}
    if wanted & MEMORY_FAMILY:
        wanted |= MEMORY_FAMILY
    return ch in wanted


# -- baselines ---------------------------------------------------------------------------
def predict_linear_alarm(batch: WindowBatch) -> np.ndarray:
    """The ``predict_linear(ws[1h], 4h) > limit`` rule on each window (bool per window)."""
    ws = batch.channel("mem_working_set").astype(np.float64)
    limit = batch.limits[:, batch.channels.index("mem_working_set")].astype(np.float64)
    grid = batch.grid
    sel = grid > -PREDICT_LINEAR_RANGE_S
    y = ws[:, sel]
    x = np.broadcast_to(grid[sel], y.shape)
    ok = np.isfinite(y)
    cnt = ok.sum(axis=1)
    xm = np.where(ok, x, 0).sum(axis=1) / np.maximum(cnt, 1)
    ym = np.where(ok, y, 0).sum(axis=1) / np.maximum(cnt, 1)
    dx = np.where(ok, x - xm[:, None], 0)
    dy = np.where(ok, y - ym[:, None], 0)
    sxx = (dx * dx).sum(axis=1)
    slope = np.divide((dx * dy).sum(axis=1), sxx, out=np.zeros_like(sxx), where=sxx > 0)
    pred = ym + slope * (PREDICT_LINEAR_AHEAD_S - xm)
    return (cnt >= 2) & np.isfinite(limit) & (limit > 0) & (pred > limit)


class PlainIForest:
    """pyod IForest with default settings (contamination 0.1) on the window features."""

    def __init__(self, seed: int = 0) -> None:
        from pyod.models.iforest import IForest

        self.model = IForest(random_state=seed)
        self.fill: np.ndarray | None = None

    def fit(self, features: np.ndarray) -> PlainIForest:
        self.fill = np.nan_to_num(np.nanmedian(features, axis=0), nan=0.0)
        self.model.fit(self._impute(features))
        return self

    def _impute(self, x: np.ndarray) -> np.ndarray:
        assert self.fill is not None
        return np.where(np.isfinite(x), x, self.fill[None, :])

    def predict(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.model.predict(self._impute(features)), dtype=bool)


# -- metrics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class KindResult:
    detector: str
    kind: str
    faults: int
    detected: int
    median_lead_s: float
    top_feature_ok: float  # fraction of detections whose top feature names the fault metric

    @property
    def recall(self) -> float:
        return self.detected / self.faults if self.faults else math.nan


def episodes(flags: np.ndarray) -> int:
    """Number of maximal runs of True in a time-ordered boolean array."""
    f = np.asarray(flags, dtype=bool)
    if f.size == 0:
        return 0
    return int(f[0]) + int(np.count_nonzero(f[1:] & ~f[:-1]))


def score_steps(steps: pd.DataFrame, labels: pd.DataFrame, *, step_s: float,
                detector: str) -> tuple[list[KindResult], float, float]:
    """Per-kind results, false-alarm episodes per 1,000 healthy pod-hours, healthy pod-hours.

    ``steps`` has one row per pod per evaluation: ``ts, namespace, pod, alarm (bool),
    top_feature (str or None), stale (bool)``.
    """
    lab = labels.set_index(["namespace", "pod"])
    results: list[KindResult] = []
    fa_episodes = 0
    healthy_steps = 0
    per_kind: dict[str, list[tuple[bool, float, bool]]] = {}
    for (ns, pod), g in steps.groupby(["namespace", "pod"], sort=False, observed=True):
        g = g.sort_values("ts")
        ts = g["ts"].to_numpy(dtype=np.float64)
        alarm = g["alarm"].to_numpy(dtype=bool)
        live = ~g["stale"].to_numpy(dtype=bool)
        row = lab.loc[(ns, pod)] if (ns, pod) in lab.index else None  # type: ignore[index]
        if row is None or str(row["kind"]) == "none":
            fa_episodes += episodes(alarm & live)
            healthy_steps += int(live.sum())
            continue
        kind = str(row["kind"])
        onset, failure = float(row["onset_ts"]), float(row["failure_ts"])
        before = ts < onset
        fa_episodes += episodes(alarm[before] & live[before])
        healthy_steps += int((live & before).sum())
        hit = np.flatnonzero(alarm & (ts >= onset) & (ts < failure))
        if hit.size:
            first = hit[0]
            top = g["top_feature"].iloc[first] if "top_feature" in g else None
            per_kind.setdefault(kind, []).append(
                (True, failure - ts[first], names_fault(top, str(row["fault_metric"]))))
        else:
            per_kind.setdefault(kind, []).append((False, math.nan, False))
    for kind, rows in sorted(per_kind.items()):
        det = [r for r in rows if r[0]]
        leads = [r[1] for r in det]
        results.append(KindResult(
            detector=detector, kind=kind, faults=len(rows), detected=len(det),
            median_lead_s=float(np.median(leads)) if leads else math.nan,
            top_feature_ok=(sum(r[2] for r in det) / len(det)) if det else math.nan,
        ))
    pod_hours = healthy_steps * step_s / 3600.0
    rate = 1000.0 * fa_episodes / pod_hours if pod_hours else math.nan
    return results, rate, pod_hours


# -- the run -----------------------------------------------------------------------------
@dataclass
class Evaluation:
    table: pd.DataFrame  # one row per detector x kind, plus false-alarm columns
    healthy: pd.DataFrame  # one row per detector x healthy set: episodes / 1000 pod-hours

    def to_markdown(self) -> str:
        return (_md(self.table) + "\n\nFalse-alarm episodes per 1,000 healthy pod-hours:\n\n"
                + _md(self.healthy) + "\n")


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.3g}" if isinstance(v, float) and math.isfinite(v)
                         else ("n/a" if isinstance(v, float) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_detectors(trace: pd.DataFrame, pipeline: Pipeline, iforest: PlainIForest, *,
                  step_s: float, progress: bool = False, desc: str = "evaluate",
                  ) -> dict[str, pd.DataFrame]:
    """Step records of the three detectors over one trace (one causal pass)."""
    from detector.replay import iter_batches

    recs: dict[str, list[pd.DataFrame]] = {"podguard": [], "predict_linear": [], "iforest": []}
    for _t, batch, engine in iter_batches(trace, step_s=step_s, progress=progress,
                                          windows=WindowSettings(step_s=step_s), desc=desc):
        if len(batch) == 0:
            continue
        for key in set(pipeline.known_pods()) - set(engine.pods()):
            pipeline.forget(key)
        verdicts = pipeline.evaluate(batch)
        base = pd.DataFrame({
            "ts": batch.ts, "namespace": [k.namespace for k in batch.keys],
            "pod": [k.pod for k in batch.keys], "stale": batch.stale,
        })
        recs["podguard"].append(base.assign(
            alarm=[v.is_anomaly for v in verdicts],
            top_feature=pd.Series([v.explanation.top_feature() if v.explanation else None
                                   for v in verdicts], dtype=object)))
        recs["predict_linear"].append(base.assign(
            alarm=predict_linear_alarm(batch) & ~batch.stale,
            top_feature="mem_working_set.predict_linear"))
        recs["iforest"].append(base.assign(
            alarm=iforest.predict(batch.features) & ~batch.stale, top_feature=None))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in recs.items()}


def evaluate(sets: Iterable[tuple[str, TraceSet, pd.DataFrame]], pipeline_factory:
             Callable[[], Pipeline], iforest: PlainIForest, *, step_s: float = 60.0,
             progress: bool = False) -> Evaluation:
    """Evaluates over named ``(name, trace or traces, labels)`` sets; healthy-only sets have
    all-``none`` labels (or none at all). Traces of one set that lie at different times (e.g.
    separate recorded runs) are given as a list and replayed one by one."""
    kind_rows: list[KindResult] = []
    fa_rows: list[dict[str, object]] = []
    for name, traces, labels in sets:
        parts: dict[str, list[pd.DataFrame]] = {}
        for trace in ([traces] if isinstance(traces, pd.DataFrame) else traces):
            recs = run_detectors(trace, pipeline_factory(), iforest, step_s=step_s,
                                 progress=progress, desc=name)
            for det, steps in recs.items():
                parts.setdefault(det, []).append(steps)
        for det, frames in parts.items():
            steps = pd.concat(frames, ignore_index=True)
            if steps.empty:
                continue
            res, rate, hours = score_steps(steps, labels, step_s=step_s, detector=det)
            kind_rows += res
            fa_rows.append({"set": name, "detector": det, "healthy_pod_hours": hours,
                            "fa_episodes_per_1000h": rate})
    table = pd.DataFrame([{
        "detector": r.detector, "kind": r.kind, "faults": r.faults, "detected": r.detected,
        "recall": r.recall, "median_lead_min": r.median_lead_s / 60.0,
        "top_shap_names_fault": r.top_feature_ok,
    } for r in kind_rows])
    return Evaluation(table=table, healthy=pd.DataFrame(fa_rows))


def write_report(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``evaluation.md``, ``evaluation.json`` and ``evaluation.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "evaluation.md"
    md.write_text(ev.to_markdown())
    js = out / "evaluation.json"
    js.write_text(json.dumps({"by_kind": ev.table.to_dict(orient="records"),
                              "false_alarms": ev.healthy.to_dict(orient="records")},
                             indent=2, default=_json_default))
    png = out / "evaluation.png"
    plot(ev, png)
    return {"markdown": md, "json": js, "plot": png}


def _json_default(o: object) -> object:
    if isinstance(o, float | np.floating):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return str(o)


def plot(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    t = ev.table
    dets = list(dict.fromkeys(t["detector"])) if not t.empty else []
    kinds = list(dict.fromkeys(t["kind"])) if not t.empty else []
    width = 0.8 / max(len(dets), 1)
    for ax, col, title in ((axes[0], "recall", "Recall (detected before failure)"),
                           (axes[1], "median_lead_min", "Median lead time before failure (min)")):
        for j, d in enumerate(dets):
            vals = [float(t[(t.detector == d) & (t.kind == k)][col].fillna(0).sum())
                    for k in kinds]
            ax.bar(np.arange(len(kinds)) + j * width, vals, width, label=d)
        ax.set_xticks(np.arange(len(kinds)) + width * (len(dets) - 1) / 2, kinds, rotation=15)
        ax.set_title(title)
        ax.legend()
    h = ev.healthy
    if not h.empty:
        labels = [f"{r.detector}\n{r.set}" for r in h.itertuples()]
        axes[2].barh(labels, h["fa_episodes_per_1000h"].fillna(0))
        axes[2].set_xscale("symlog")
    axes[2].set_title("False-alarm episodes / 1,000 healthy pod-hours")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
