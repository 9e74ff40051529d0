"""Readable explanations for podguard's verdicts, and the attribution maths re-exported.

What is here, and who calls it:

* :func:`describe` - one readable sentence from an attribution and facts (rates in MiB/h,
  time to OOM, the memory limit), with human names for features (:func:`human_name`, from
  the channel table's words);
* :func:`explain_flagged` - explanations of the positive verdicts of any detector;
* :func:`format_bytes`, :func:`format_duration`, :func:`format_rate` - the units the
  sentences, alerts and events use.

The attribution algorithms (:func:`expected_gradients`, :class:`LeafPaths` +
:func:`path_dependent_tree_shap` over :class:`TreeArrays`, :func:`rescale_attribution`,
:func:`combine`, :func:`exact_shapley`) live in :mod:`detector.models.attribution`, inside the
models layer, so the detectors never import this module; they are re-exported here.

This module sits above the models (it imports :mod:`detector.models.base` and
:mod:`detector.models.attribution`) and never imports torch or shap: it is on the daemon's
explanation path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from detector.channels import feature_words
from detector.models.attribution import (
    LeafPaths,
    TreeArrays,
    combine,
    exact_shapley,
    expected_gradients,
    path_dependent_tree_shap,
    rescale_attribution,
)
from detector.models.base import Attribution, Detector

__all__ = [
    "Explanation",
    "Facts",
    "LeafPaths",
    "TreeArrays",
    "combine",
    "describe",
    "exact_shapley",
    "expected_gradients",
    "explain_flagged",
    "format_bytes",
    "format_duration",
    "format_rate",
    "human_name",
    "path_dependent_tree_shap",
    "rescale_attribution",
]

# --------------------------------------------------------------------------- readable text

def human_name(feature: str) -> str:
    """Words for a feature name like ``"cpu_rate.level_z"`` (-> "CPU level vs baseline"); the
    words of channels and statistics come from the channel table (``detector.channels``)."""
    return feature_words(feature)


def _trim(v: float, digits: int) -> str:
    text = f"{v:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_bytes(n: float) -> str:
    """Binary units: 8589934592 -> "8 GiB", 430000000 -> "410 MiB"."""
    v = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024.0 or unit == "TiB":
            text = _trim(v, 0 if v >= 100 or unit == "B" else 1)
            return f"{'-' if n < 0 else ''}{text} {unit}"
        v /= 1024.0
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Rounded to what a reader needs: "45 s", "38 min", "3 h", "1.5 h", "2.5 d"."""
    s = float(seconds)
    if not math.isfinite(s):
        return "unknown time"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{_trim(s / 3600, 1)} h"
    return f"{_trim(s / 86400, 1)} d"


def format_rate(bytes_per_s: float) -> str:
    """A growth rate per hour, signed: 119000 B/s -> "+409 MiB/h"."""
    sign = "+" if bytes_per_s >= 0 else "-"
    return f"{sign}{format_bytes(abs(bytes_per_s) * 3600.0)}/h"


class Facts(TypedDict, total=False):
    """Facts a sentence can state; every key optional."""

    subject: str  # what grows, e.g. "working set"
    growth_bytes_per_s: float  # fitted growth rate, bytes/s
    growth_duration_s: float  # how long the growth has lasted, seconds
    time_to_oom_s: float  # projected time until the limit, seconds
    time_to_oom_low_s: float  # early end of the stated range, seconds
    time_to_oom_high_s: float  # late end of the stated range, seconds
    oom_kills: int  # OOM kills of earlier incarnations (a crash-looping leak)
    limit_bytes: float  # the memory limit, bytes
    container: str  # the container whose own limit that is (a pod of several)
    score: float  # the detector score
    threshold: float  # the detector threshold


def describe(attribution: Attribution, facts: Facts | None = None, top_k: int = 3) -> str:
    """One sentence: facts first, then the top positive contributors with their values.

    e.g. "working set +410 MiB/h for 3 h, OOM in ~38 min at the 8 GiB limit; top
    contributors: memory slope (0.41), RSS growth (0.22)".
    """
    f: Mapping[str, Any] = facts or {}
    clauses: list[str] = []
    if "growth_bytes_per_s" in f:
        text = f"{f.get('subject', 'memory')} {format_rate(f['growth_bytes_per_s'])}"
        if "growth_duration_s" in f:
            text += f" for {format_duration(f['growth_duration_s'])}"
        clauses.append(text)
    if f.get("oom_kills"):
        k = int(f["oom_kills"])
        named = "" if "growth_bytes_per_s" in f else f" of the {f.get('subject', 'memory')}"
        clauses.insert(0, f"crash-looping leak{named} ({k} OOM kill{'s' if k != 1 else ''} "
                          "so far)")
    if "time_to_oom_s" in f:
        text = f"OOM in ~{format_duration(f['time_to_oom_s'])}"
        if "time_to_oom_low_s" in f and "time_to_oom_high_s" in f:
            text += (f" ({format_duration(f['time_to_oom_low_s'])}"
                     f"-{format_duration(f['time_to_oom_high_s'])})")
        if "limit_bytes" in f:
            text += f" at the {format_bytes(f['limit_bytes'])} limit"
            if f.get("container"):
                text += f" of container {str(f['container'])[:63]}"
        clauses.append(text)
    if "score" in f:
        text = f"score {f['score']:.2f}"
        if "threshold" in f:
            text += f" over threshold {f['threshold']:.2f}"
        clauses.append(text)
    head = ", ".join(clauses)
    top = [(n, v) for n, v in attribution.top(top_k) if v > 0]
    if top:
        tail = "top contributors: " + ", ".join(f"{human_name(n)} ({v:.2f})" for n, v in top)
    else:
        tail = "no single feature stands out"
    return f"{head}; {tail}" if head else tail


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Explanation:
    """A flagged row: its index in the batch, score, attribution and sentence."""

    row: int
    score: float
    attribution: Attribution
    text: str


def explain_flagged(detector: Detector, X: np.ndarray, top_k: int = 3) -> list[Explanation]:
    """Predict on ``X`` and explain only the rows the detector flags (positive verdicts)."""
    prediction = detector.predict(X)
    rows = np.flatnonzero(prediction.is_anomaly)
    if rows.size == 0:
        return []
    attributions = detector.explain(np.asarray(X)[rows])
    return [
        Explanation(
            row=int(r),
            score=float(prediction.score[r]),
            attribution=a,
            text=describe(
                a,
                {"score": float(prediction.score[r]), "threshold": prediction.threshold},
                top_k=top_k,
            ),
        )
        for r, a in zip(rows, attributions)
    ]
