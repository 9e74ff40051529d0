"""The shipped real traces (``data/real/``) replayed through the default model, scored against
their kernel labels: what the real-trace tests share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from deploy.local.node_report import Row, podguard_verdicts, sample_times, score
from detector import traces as tr

REAL = Path(__file__).resolve().parents[2] / "data" / "real"


def replay(name: str, step_s: float = 15.0) -> tuple[dict[str, Any], pd.DataFrame, list[Row]]:
    """``data/real/<name>``: its labels, podguard's verdicts at ``step_s`` and the scored rows
    (one per container incarnation)."""
    trace = tr.load_trace(REAL / f"{name}.csv.gz")
    labels = json.loads((REAL / f"{name}.labels.json").read_text())
    verdicts = podguard_verdicts(trace, step_s=step_s)
    rows = score(labels, verdicts, samples=sample_times(trace, labels))
    return labels, verdicts, rows
