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

import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from detector import channels as chan
from detector.kinds import LEAK_KINDS
from detector.pipeline import Pipeline
from detector.settings import WindowSettings
from detector.windows import WindowBatch

TraceSet = pd.DataFrame | list[pd.DataFrame]

PREDICT_LINEAR_RANGE_S = 3600.0
PREDICT_LINEAR_AHEAD_S = 4 * 3600.0

# Which window channel carries each raw metric (to check that an explanation names the
# fault's metric), and the channels that count as one family with the working set: those
# bounded by the memory limit.
METRIC_CHANNEL = dict(chan.METRIC_CHANNEL)
MEMORY_FAMILY = {c.name for c in chan.CHANNEL_TABLE if c.limit == "memory"}


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
        x = np.where(np.isfinite(features), features, np.nan)
        has = ~np.isnan(x).all(axis=0)  # a feature never seen (no GPU here) is filled with 0
        self.fill = np.zeros(x.shape[1])
        self.fill[has] = np.nanmedian(x[:, has], axis=0)
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
    kind_ok: float = math.nan  # fraction of detections whose first verdict has the fault's kind
    captured: float = math.nan  # mean share of the warning time captured (a miss counts 0)
    set: str = ""  # the evaluation set (the train or test split of the scenarios)

    @property
    def recall(self) -> float:
        return self.detected / self.faults if self.faults else math.nan


def episodes(flags: np.ndarray) -> int:
    """Number of maximal runs of True in a time-ordered boolean array."""
    f = np.asarray(flags, dtype=bool)
    if f.size == 0:
        return 0
    return int(f[0]) + int(np.count_nonzero(f[1:] & ~f[:-1]))


FAULT_COLUMNS = ("detector", "set", "namespace", "pod", "kind", "shape", "onset_ts", "failure_ts",
                 "detected", "lead_s", "captured", "top_feature_ok", "kind_ok", "tto_in_range",
                 "tto_range_ratio")


@dataclass
class FamilyFA:
    """False-alarm episodes on one healthy family's time, and the kinds that opened them."""

    episodes: int = 0
    hours: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)


EPISODE_COLUMNS = ("detector", "set", "family", "namespace", "pod", "ts", "pod_hours",
                   "minutes", "kind", "tto_low_h", "tto_high_h")
"""One row per false-alarm episode: where it began (``ts``; ``pod_hours``: hours since the
pod's first step in the evaluation), how long it lasted (``minutes``, live steps), the kind
of its first verdict and the time-to-OOM range that verdict stated (hours, NaN if none)."""


@dataclass(frozen=True)
class StepScore:
    """One detector's steps judged against the labels."""

    faults: pd.DataFrame  # one row per labelled fault, :data:`FAULT_COLUMNS`
    fa_episodes: int  # false-alarm episodes on healthy pods and before onsets
    healthy_hours: float  # live healthy pod-hours judged
    by_family: dict[str, FamilyFA] = field(default_factory=dict)  # per scenario shape
    # one row per false-alarm episode, :data:`EPISODE_COLUMNS`
    episodes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=list(EPISODE_COLUMNS)))

    @property
    def fa_per_1000h(self) -> float:
        return 1000.0 * self.fa_episodes / self.healthy_hours if self.healthy_hours else math.nan


def judge_steps(steps: pd.DataFrame, labels: pd.DataFrame, *, step_s: float,
                detector: str) -> StepScore:
    """Per-fault detections, lead times and warning time captured, and false-alarm episodes
    on healthy time.

    ``steps`` has one row per pod per evaluation: ``ts, namespace, pod, alarm (bool),
    top_feature (str or None), stale (bool)`` and, for detectors that name a kind,
    ``verdict_kind``. ``labels`` has one row per fault (a crash-looping pod one per
    incarnation) or one ``none`` row per healthy pod. A fault counts as detected by its first
    alarm in ``[onset, failure)``; its lead time is ``failure - that alarm`` and the share of
    the warning time it captured ``lead / (failure - onset)`` (0 for a miss, at most 1).
    Healthy time is every live step of a healthy pod and of a faulty pod before its first
    onset; false alarms are counted there.
    """
    faulty = labels[labels["kind"].astype(str) != "none"]
    by_pod = {k: g.sort_values("onset_ts") for k, g in
              faulty.groupby(["namespace", "pod"], sort=False)}
    fa_episodes = 0
    healthy_steps = 0
    faults: list[dict[str, object]] = []
    shape_of = ({(str(r["namespace"]), str(r["pod"])): str(r["shape"])
                 for r in labels.to_dict("records")} if "shape" in labels else {})
    by_family: dict[str, FamilyFA] = {}

    episode_rows: list[dict[str, object]] = []

    def count(ns: object, pod: object, g: pd.DataFrame, flags: np.ndarray, n_live: int,
              first_ts: float) -> int:
        family = shape_of.get((str(ns), str(pod)), "unlabelled")
        fam = by_family.setdefault(family, FamilyFA())
        ep = episodes(flags)
        fam.episodes += ep
        fam.hours += n_live * step_s / 3600.0
        if not ep:
            return ep
        f = np.asarray(flags, dtype=bool)
        edges = np.diff(np.concatenate([[0], f.astype(np.int8), [0]]))
        ts = g["ts"].to_numpy(dtype=np.float64)
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            kind = str(g["verdict_kind"].iloc[a]) if "verdict_kind" in g else ""
            if kind:
                fam.kinds[kind] = fam.kinds.get(kind, 0) + 1
            lo, hi = ((float(g["tto_low"].iloc[a]) / 3600.0, float(g["tto_high"].iloc[a]) / 3600.0)
                      if "tto_low" in g else (math.nan, math.nan))
            episode_rows.append({
                "detector": detector, "set": "", "family": family, "namespace": ns, "pod": pod,
                "ts": ts[a], "pod_hours": (ts[a] - first_ts) / 3600.0,
                "minutes": (b - a) * step_s / 60.0, "kind": kind, "tto_low_h": lo,
                "tto_high_h": hi})
        return ep

    for (ns, pod), g in steps.groupby(["namespace", "pod"], sort=False, observed=True):
        g = g.sort_values("ts")
        ts = g["ts"].to_numpy(dtype=np.float64)
        alarm = g["alarm"].to_numpy(dtype=bool)
        live = ~g["stale"].to_numpy(dtype=bool)
        rows = by_pod.get((ns, pod))
        if rows is None:
            fa_episodes += count(ns, pod, g, alarm & live, int(live.sum()), ts[0])
            healthy_steps += int(live.sum())
            continue
        before = ts < float(rows["onset_ts"].min())
        fa_episodes += count(ns, pod, g[before], alarm[before] & live[before],
                             int((live & before).sum()), ts[0])
        healthy_steps += int((live & before).sum())
        for row in rows.to_dict("records"):
            onset, failure = float(row["onset_ts"]), float(row["failure_ts"])
            hit = np.flatnonzero(alarm & (ts >= onset) & (ts < failure))
            rec: dict[str, object] = {
                "detector": detector, "set": "", "namespace": ns, "pod": pod,
                "kind": str(row["kind"]),
                "shape": str(row.get("shape", row["kind"])),
                "onset_ts": onset, "failure_ts": failure, "detected": bool(hit.size),
                "lead_s": math.nan, "captured": 0.0, "top_feature_ok": False,
                "kind_ok": math.nan, "tto_in_range": math.nan, "tto_range_ratio": math.nan}
            if hit.size:
                top = g["top_feature"].iloc[hit[0]] if "top_feature" in g else None
                lead = failure - ts[hit[0]]
                rec["lead_s"] = lead
                rec["captured"] = float(np.clip(lead / max(failure - onset, step_s), 0.0, 1.0))
                rec["top_feature_ok"] = names_fault(top, str(row["fault_metric"]))
                if "verdict_kind" in g:
                    rec["kind_ok"] = float(g["verdict_kind"].iloc[hit[0]] == row["kind"])
                if "tto_low" in g:  # the stated time-to-OOM range at the first alarm
                    lo = float(g["tto_low"].iloc[hit[0]])
                    hi = float(g["tto_high"].iloc[hit[0]])
                    if math.isfinite(lo) and math.isfinite(hi) and lo > 0:
                        rec["tto_in_range"] = float(lo <= lead <= hi)
                        rec["tto_range_ratio"] = hi / lo
            faults.append(rec)
    return StepScore(pd.DataFrame(faults, columns=list(FAULT_COLUMNS)), fa_episodes,
                     healthy_steps * step_s / 3600.0, by_family,
                     pd.DataFrame(episode_rows, columns=list(EPISODE_COLUMNS)))


def summarise(faults: pd.DataFrame, by: str = "kind") -> list[KindResult]:
    """Recall, median lead and top-feature hits per value of ``by`` (``kind`` or ``shape``)."""
    out: list[KindResult] = []
    sets = (faults["set"].fillna("").astype(str) if "set" in faults
            else pd.Series("", index=faults.index))
    for (det, set_, key), g in faults.assign(set=sets).groupby(
            ["detector", "set", by], sort=True):
        d = g[g["detected"]]
        out.append(KindResult(
            detector=str(det), set=str(set_), kind=str(key), faults=len(g), detected=len(d),
            median_lead_s=float(d["lead_s"].median()) if len(d) else math.nan,
            top_feature_ok=float(d["top_feature_ok"].mean()) if len(d) else math.nan,
            kind_ok=float(d["kind_ok"].astype(float).mean()) if len(d) else math.nan,
            captured=(float(g["captured"].astype(float).mean()) if "captured" in g
                      else math.nan)))
    return out


def score_steps(steps: pd.DataFrame, labels: pd.DataFrame, *, step_s: float,
                detector: str) -> tuple[list[KindResult], float, float]:
    """Per-kind results, false-alarm episodes per 1,000 healthy pod-hours, healthy pod-hours."""
    sc = judge_steps(steps, labels, step_s=step_s, detector=detector)
    return summarise(sc.faults), sc.fa_per_1000h, sc.healthy_hours


DURATION_BUCKETS_H: tuple[float, ...] = (0.0, 4.0, 8.0, 16.0, math.inf)
"""Edges (hours from onset to failure) of the lead-time table by fault duration: a rule that
looks 4 h ahead can be out-led at most by ``duration / 4 h``, so the ratio depends on them."""


def lead_by_duration(faults: pd.DataFrame, detectors: tuple[str, str] = (
        "podguard", "predict_linear")) -> pd.DataFrame:
    """Median lead of two detectors on the same memory-leak faults, by fault duration."""
    f = faults[faults["kind"] == "memory_leak"]
    if f.empty:
        return pd.DataFrame()
    key = [c for c in ("set", "namespace", "pod", "onset_ts") if c in f]
    a, b = (f[f["detector"] == d] for d in detectors)
    joined = a.merge(b[[*key, "lead_s", "captured"]].rename(
        columns={"lead_s": "lead_s_b", "captured": "captured_b"}), on=key, how="inner")
    dur_h = (joined["failure_ts"] - joined["onset_ts"]) / 3600.0

    def row(label: str, g: pd.DataFrame) -> dict[str, object]:
        la, lb = g["lead_s"].median() / 60.0, g["lead_s_b"].median() / 60.0
        return {"time_to_oom_h": label, "faults": len(g), f"{detectors[0]}_lead_min": la,
                f"{detectors[1]}_lead_min": lb,
                f"{detectors[0]}_captured": float(g["captured"].mean()),
                f"{detectors[1]}_captured": float(g["captured_b"].mean()),
                "ratio": la / lb if lb and math.isfinite(lb) else math.nan}

    rows = []
    for lo, hi in itertools.pairwise(DURATION_BUCKETS_H):
        g = joined[(dur_h >= lo) & (dur_h < hi)]
        if not g.empty:
            rows.append(row(f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}", g))
    rows.append(row("all", joined))
    return pd.DataFrame(rows)


# -- the run -----------------------------------------------------------------------------
def _result_rows(rows: list[KindResult], key: str) -> pd.DataFrame:
    return pd.DataFrame([{
        "set": r.set, "detector": r.detector, key: r.kind, "faults": r.faults,
        "detected": r.detected,
        "recall": r.recall, "warning_captured": r.captured,
        "median_lead_min": r.median_lead_s / 60.0,
        "top_shap_names_fault": r.top_feature_ok, "first_verdict_kind_right": r.kind_ok,
    } for r in rows])


EPISODES_SHOWN = 40
"""At most this many false-alarm episodes are listed in ``evaluation.md`` (all in the JSON)."""


@dataclass
class Evaluation:
    table: pd.DataFrame  # one row per detector x kind
    healthy: pd.DataFrame  # one row per detector x healthy set: episodes / 1000 pod-hours
    faults: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAULT_COLUMNS))
    # one row per set x healthy family (podguard): episodes, pod-hours, first verdict kinds
    healthy_by_family: pd.DataFrame = field(default_factory=pd.DataFrame)
    # podguard's false-alarm episodes, one row each (:data:`EPISODE_COLUMNS`)
    false_alarm_episodes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=list(EPISODE_COLUMNS)))

    @classmethod
    def from_faults(cls, faults: pd.DataFrame, healthy: pd.DataFrame) -> Evaluation:
        """The report of per-fault records (:func:`judge_steps`) and false-alarm rows."""
        table = _result_rows(summarise(faults), "kind") if len(faults) else pd.DataFrame()
        return cls(table=table, healthy=healthy, faults=faults)

    @property
    def by_shape(self) -> pd.DataFrame:
        """Like :attr:`table`, one row per detector x scenario shape."""
        return _result_rows(summarise(self.faults, by="shape"), "shape") if len(
            self.faults) else pd.DataFrame()

    @property
    def by_duration(self) -> pd.DataFrame:
        """Median lead of podguard and predict_linear on memory leaks, by time to OOM."""
        return lead_by_duration(self.faults) if len(self.faults) else pd.DataFrame()

    def to_markdown(self) -> str:
        parts = [_md(self.table)]
        by_shape, by_duration = self.by_shape, self.by_duration
        if not by_shape.empty:
            parts += ["By scenario shape:", _md(by_shape)]
        if not by_duration.empty:
            parts += ["Memory leaks: median lead by time from onset to OOM "
                      "(podguard / predict_linear):", _md(by_duration)]
        tto = self.tto_calibration
        if not tto.empty:
            parts += ["Leaks: the stated time-to-OOM range at the first alarm (share containing "
                      "the real OOM, median high/low):", _md(tto)]
        parts += ["False-alarm episodes per 1,000 healthy pod-hours:", _md(self.healthy)]
        if not self.healthy_by_family.empty:
            parts += ["podguard's false-alarm episodes by family (healthy time of each "
                      "scenario shape; kinds of the episodes' first verdicts):",
                      _md(self.healthy_by_family)]
        eps = self.false_alarm_episodes
        if not eps.empty:
            shown = eps.sort_values(["set", "family", "pod", "ts"]).head(EPISODES_SHOWN)
            more = len(eps) - len(shown)
            parts += ["podguard's false-alarm episodes (pod_hours: the pod's age at the first "
                      "alarm, hours since its first sample; minutes: how long it stayed raised; "
                      "the time-to-OOM range it stated, hours):",
                      _md(shown.drop(columns=["detector", "ts"]))
                      + (f"\n\n... and {more} more in evaluation.json" if more > 0 else "")]
        return "\n\n".join(parts) + "\n"

    @property
    def tto_calibration(self) -> pd.DataFrame:
        """Per set: how often podguard's stated range contained the real OOM, and how wide."""
        f = self.faults
        if f.empty or "tto_in_range" not in f:
            return pd.DataFrame()
        f = f[(f["detector"] == "podguard") & f["tto_in_range"].notna()]
        if f.empty:
            return pd.DataFrame()
        return pd.DataFrame([{"set": k, "leaks": len(g),
                              "range_contains_oom": float(g["tto_in_range"].mean()),
                              "median_high_over_low": float(g["tto_range_ratio"].median())}
                             for k, g in f.groupby("set", sort=True)])


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
            verdict_kind=[v.kind for v in verdicts],
            tto_low=[v.time_to_oom_range_s[0] if v.time_to_oom_range_s else math.nan
                     for v in verdicts],
            tto_high=[v.time_to_oom_range_s[1] if v.time_to_oom_range_s else math.nan
                      for v in verdicts],
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
    fault_frames: list[pd.DataFrame] = []
    fa_rows: list[dict[str, object]] = []
    fam_rows: list[dict[str, object]] = []
    episode_frames: list[pd.DataFrame] = []
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
            sc = judge_steps(steps, labels, step_s=step_s, detector=det)
            if len(sc.faults):
                fault_frames.append(sc.faults.assign(set=name))
            fa_rows.append({"set": name, "detector": det, "healthy_pod_hours": sc.healthy_hours,
                            "fa_episodes": sc.fa_episodes,
                            "fa_episodes_per_1000h": sc.fa_per_1000h})
            if det == "podguard":
                if len(sc.episodes):
                    episode_frames.append(sc.episodes.assign(set=name))
                fam_rows += [{"set": name, "family": fam, "healthy_pod_hours": f.hours,
                              "fa_episodes": f.episodes,
                              "kinds": ", ".join(f"{k} {v}" for k, v in sorted(f.kinds.items()))}
                             for fam, f in sorted(sc.by_family.items())]
    faults = (pd.concat(fault_frames, ignore_index=True) if fault_frames
              else pd.DataFrame(columns=list(FAULT_COLUMNS)))
    ev = Evaluation.from_faults(faults, pd.DataFrame(fa_rows))
    episodes_df = (pd.concat(episode_frames, ignore_index=True) if episode_frames
                   else pd.DataFrame(columns=list(EPISODE_COLUMNS)))
    return replace(ev, healthy_by_family=pd.DataFrame(fam_rows),
                   false_alarm_episodes=episodes_df)


def write_report(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``evaluation.md``, ``evaluation.json`` and ``evaluation.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "evaluation.md"
    md.write_text(ev.to_markdown())
    js = out / "evaluation.json"
    js.write_text(json.dumps({"by_kind": _records(ev.table), "by_shape": _records(ev.by_shape),
                              "memory_leak_lead_by_duration": _records(ev.by_duration),
                              "time_to_oom_range": _records(ev.tto_calibration),
                              "false_alarms": _records(ev.healthy),
                              "false_alarms_by_family": _records(ev.healthy_by_family),
                              "false_alarm_episodes": _records(ev.false_alarm_episodes),
                              "faults": _records(ev.faults)},
                             indent=2, default=_json_default, allow_nan=False))
    png = out / "evaluation.png"
    plot(ev, png)
    return {"markdown": md, "json": js, "plot": png}


def _records(df: pd.DataFrame) -> list[dict[str, object]]:
    """Rows as dicts with NaN as None (strict JSON)."""
    return [{str(k): (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in r.items()} for r in df.to_dict(orient="records")]


def _json_default(o: object) -> object:
    if isinstance(o, float | np.floating):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return str(o)


DETECTOR_COLORS = {"podguard": "tab:blue", "predict_linear": "tab:orange",
                   "iforest": "tab:gray"}


def plot(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    t = ev.table
    dets = list(dict.fromkeys(t["detector"])) if not t.empty else []
    kinds = list(dict.fromkeys(t["kind"])) if not t.empty else []
    width = 0.8 / max(len(dets), 1)
    for ax, col, title in ((axes[0], "recall", "Recall (detected before failure)"),
                           (axes[1], "median_lead_min", "Median lead time before failure (min)")):
        for j, d in enumerate(dets):
            vals = [float(t[(t.detector == d) & (t.kind == k)][col].fillna(0).sum())
                    for k in kinds]
            ax.bar(np.arange(len(kinds)) + j * width, vals, width, label=d,
                   color=DETECTOR_COLORS.get(d))
        ax.set_xticks(np.arange(len(kinds)) + width * (len(dets) - 1) / 2, kinds, rotation=15)
        ax.set_title(title)
        ax.legend()
    h = ev.healthy
    if not h.empty:
        labels = [f"{r.detector}\n{r.set}" for r in h.itertuples()]
        axes[2].barh(labels, h["fa_episodes_per_1000h"].fillna(0),
                     color=[DETECTOR_COLORS.get(str(d), "tab:gray") for d in h["detector"]])
        axes[2].set_xscale("symlog")
    axes[2].set_title("False-alarm episodes / 1,000 healthy pod-hours")
    ax = axes[3]
    f = ev.faults[ev.faults["kind"].isin(list(LEAK_KINDS))] if len(
        ev.faults) else ev.faults
    for det, marker in (("podguard", "o"), ("predict_linear", "x"), ("iforest", ".")):
        g = f[(f["detector"] == det) & f["detected"]] if len(f) else f
        if len(g):
            dur = (g["failure_ts"] - g["onset_ts"]) / 3600.0
            ax.scatter(dur, g["lead_s"].astype(float) / 3600.0, marker=marker, label=det,
                       color=DETECTOR_COLORS[det])
    if len(f):
        top = float(((f["failure_ts"] - f["onset_ts"]) / 3600.0).max())
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="lead = time to OOM")
        ax.axhline(PREDICT_LINEAR_AHEAD_S / 3600.0, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    ax.set_xlabel("time from onset to OOM (h)")
    ax.set_ylabel("lead before OOM (h)")
    ax.set_title("Leaks: lead time vs how slow the leak is")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
