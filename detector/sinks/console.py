"""Console and JSON-lines sink for the embedded default and for local runs.

Positive verdicts are printed as one readable line each (the pod, the kind, time to OOM and
the explanation sentence); with a path, every positive verdict is also appended to a JSON
lines file (flushed per batch, so nothing accepted is lost on a crash of the process).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from detector.explain import format_duration
from detector.verdicts import Verdict


class ConsoleSink:
    name = "console"

    def __init__(self, *, path: str | Path | None = None, stream: IO[str] | None = None,
                 all_verdicts: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.all_verdicts = all_verdicts
        self._fh: IO[str] | None = None
        if path is not None:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(p, "a")  # noqa: SIM115 - held for the sink's lifetime
        self.sent = 0

    def send(self, verdicts: Sequence[Verdict]) -> None:
        chosen = [v for v in verdicts if self.all_verdicts or v.is_anomaly]
        for v in chosen:
            if v.is_anomaly:
                self.stream.write(format_line(v) + "\n")
            if self._fh is not None:
                self._fh.write(v.to_json() + "\n")
        if self._fh is not None and chosen:
            self._fh.flush()
        if chosen:
            self.stream.flush()
        self.sent += len(chosen)

    def flush(self, timeout: float) -> bool:
        if self._fh is not None:
            self._fh.flush()
        self.stream.flush()
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def format_line(v: Verdict) -> str:
    tto = f" OOM in ~{format_duration(v.time_to_oom_s)}" if v.time_to_oom_s else ""
    why = f" - {v.explanation.text}" if v.explanation else ""
    return f"ALERT {v.kind} {v.namespace}/{v.pod} (node {v.node or '?'}){tto}{why}"
