"""Console sink for the embedded default and for local runs.

Positive verdicts are printed as one readable line each (the pod, the kind, time to OOM and
the explanation sentence). Text the stream cannot encode (a lone surrogate in a pod name from
a crafted Kafka label, non-ASCII on an ASCII terminal) is written with backslash escapes; a
line that still fails is counted in :attr:`ConsoleSink.errors` and the rest of the batch is
printed, then the first error is raised (the daemon logs and counts it).

``path`` is a convenience for scripts and tests: the verdicts also go to a
:class:`~detector.sinks.jsonl.JsonLinesSink` on that file, written *before* the console lines,
so the console can never cost the file a verdict. The daemon builds the two sinks separately.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from detector.diagnosis.report import describe
from detector.explain import format_duration
from detector.sinks.base import SinkSpec
from detector.sinks.jsonl import JsonLinesSink
from detector.verdicts import Verdict


class ConsoleSink:
    name = "console"

    def __init__(self, *, path: str | Path | None = None, stream: IO[str] | None = None,
                 all_verdicts: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.all_verdicts = all_verdicts
        self.file = JsonLinesSink(path, all_verdicts=all_verdicts) if path is not None else None
        self.sent = 0
        self.errors = 0

    def send(self, verdicts: Sequence[Verdict]) -> None:
        if self.file is not None:
            self.file.send(verdicts)
        chosen = [v for v in verdicts if self.all_verdicts or v.is_anomaly]
        first: Exception | None = None
        for v in chosen:
            if not v.is_anomaly:
                continue
            try:
                self._write(format_line(v) + "\n")
            except Exception as e:  # a closed or broken stream: count, go on, raise after
                self.errors += 1
                first = first or e
        if chosen:
            try:
                self.stream.flush()
            except Exception as e:
                first = first or e
        self.sent += len(chosen)
        if first is not None:
            raise first

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except UnicodeEncodeError:
            enc = getattr(self.stream, "encoding", None) or "ascii"
            self.stream.write(text.encode(enc, "backslashreplace").decode(enc))

    def tick(self) -> None:
        """Nothing pending between steps."""

    def flush(self, timeout: float) -> bool:
        if self.file is not None:
            self.file.flush(timeout)
        self.stream.flush()
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        if self.file is not None:
            self.file.close(timeout)
            self.file = None


def format_line(v: Verdict) -> str:
    tto = f" OOM in ~{format_duration(v.time_to_oom_s)}" if v.time_to_oom_s else ""
    why = f" - {v.explanation.text}" if v.explanation else ""
    diag = f"\n      {describe(v.diagnosis)}" if v.diagnosis is not None else ""
    return f"ALERT {v.kind} {v.namespace}/{v.pod} (node {v.node or '?'}){tto}{why}{diag}"


SINK = SinkSpec("console", lambda ctx: ConsoleSink(stream=ctx.stream)
                if ctx.settings.runtime.console else None, thinned=True)
"""Readable lines when ``runtime.console`` (the embedded default repeats an alert once a real
minute)."""
