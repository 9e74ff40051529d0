"""Verdicts: what podguard says about one pod at one evaluation time.

Produced by :mod:`detector.pipeline`, written by the replay as JSON lines, and handed
to sinks (console, Alertmanager) by the daemon. Plain data, no behaviour beyond
serialisation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from detector.kinds import DETECTOR_OF_KIND, KINDS, Kind

__all__ = ["DETECTOR_OF_KIND", "KINDS", "VERDICT_SCHEMA", "Explanation", "Kind", "Verdict"]

VERDICT_SCHEMA = "podguard.verdict/1"
"""The ``schema`` of every verdict line (bumped when a field changes meaning; new fields are
added at the end and do not bump it)."""


@dataclass(frozen=True)
class Explanation:
    """A readable sentence plus the SHAP attribution of each feature (name -> value)."""

    text: str
    features: dict[str, float] = field(default_factory=dict)

    def top_feature(self) -> str | None:
        if not self.features:
            return None
        return max(self.features.items(), key=lambda kv: kv[1])[0]


@dataclass(frozen=True)
class Verdict:
    ts: float  # evaluation time, unix seconds
    namespace: str
    pod: str
    node: str
    is_anomaly: bool
    kind: Kind
    score: float  # of the deciding detector; higher = more anomalous
    threshold: float  # that detector's fitted threshold
    time_to_oom_s: float | None = None  # median estimate; None when not a leak or no limit
    time_to_oom_range_s: tuple[float, float] | None = None  # (low, high) estimate
    leak_rate_bytes_per_s: float | None = None
    explanation: Explanation | None = None
    stale: bool = False  # too little recent data to judge: never anomalous
    # what the pod's own diagnosis says grows (detector.diagnosis.requester): its status
    # (pending / done / failed / unavailable) and, when done, the bounded answer; leaks only
    diagnosis: dict[str, Any] | None = None
    model_version: str | None = None  # the model bundle that scored it

    def to_json_dict(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            if x is None or not math.isfinite(x):
                return None
            return float(x)

        return {
            "ts": self.ts,
            "namespace": self.namespace,
            "pod": self.pod,
            "node": self.node,
            "is_anomaly": self.is_anomaly,
            "kind": self.kind,
            "score": num(self.score),
            "threshold": num(self.threshold),
            "time_to_oom_s": num(self.time_to_oom_s),
            "time_to_oom_range_s": (
                [num(v) for v in self.time_to_oom_range_s] if self.time_to_oom_range_s else None
            ),
            "leak_rate_bytes_per_s": num(self.leak_rate_bytes_per_s),
            "stale": self.stale,
            "explanation": (
                {"text": self.explanation.text,
                 "features": {k: round(float(v), 6) for k, v in self.explanation.features.items()}}
                if self.explanation else None
            ),
            # which detector decided, with which model, in which line format
            "detector": DETECTOR_OF_KIND.get(self.kind),
            "model_version": self.model_version,
            "schema": VERDICT_SCHEMA,
            # only when there is one, so verdicts without it serialise as before; last
            **({"diagnosis": self.diagnosis} if self.diagnosis is not None else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), separators=(",", ":"), allow_nan=False)
