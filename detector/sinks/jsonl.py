"""The JSON-lines sink: one line per verdict appended to a file (``runtime.verdicts_path``).

Built by :func:`detector.runtime.build.make_outputs`. Positive verdicts by default, every
verdict with ``all_verdicts``. Each batch is written in one piece and flushed, so what was
accepted survives a crash of the process. Lines are ASCII JSON (``Verdict.to_json``: non-ASCII
and even lone surrogates from a crafted pod name are escaped), so no pod name can make a write
fail; a verdict that cannot be serialised at all is counted in :attr:`JsonLinesSink.errors`
and skipped, never taking the rest of its batch with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from detector.sinks.base import SinkContext, SinkSpec
from detector.verdicts import Verdict

LOG = logging.getLogger("podguard.sinks.jsonl")


class JsonLinesSink:
    name = "jsonl"

    def __init__(self, path: str | Path, *, all_verdicts: bool = False) -> None:
        self.path = Path(path)
        self.all_verdicts = all_verdicts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(  # noqa: SIM115 - held for the sink's lifetime
            self.path, "a", encoding="utf-8", errors="backslashreplace", newline="\n")
        self.sent = 0
        self.errors = 0

    def send(self, verdicts: Sequence[Verdict]) -> None:
        lines = []
        for v in verdicts:
            if not (self.all_verdicts or v.is_anomaly):
                continue
            try:
                lines.append(v.to_json() + "\n")
            except (TypeError, ValueError) as e:  # one bad verdict must not cost the others
                self.errors += 1
                LOG.error("verdict not serialisable; skipped",
                          extra={"namespace": ascii(v.namespace), "pod": ascii(v.pod),
                                 "error": repr(e)})
        if not lines:
            return
        if self._fh is None:
            raise RuntimeError(f"JSON-lines sink on {self.path} is closed")
        self._fh.write("".join(lines))
        self._fh.flush()
        self.sent += len(lines)

    def tick(self) -> None:
        """Nothing pending between steps: every batch is written when sent."""

    def flush(self, timeout: float) -> bool:
        if self._fh is not None:
            self._fh.flush()
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._fh is not None:
            self._fh.flush()
            self._fh.close()
            self._fh = None


def _build(ctx: SinkContext) -> JsonLinesSink | None:
    """Every positive verdict as JSON lines at ``runtime.verdicts_path`` (relative to the
    output directory); none when it is empty."""
    if not ctx.settings.runtime.verdicts_path:
        return None
    path = Path(ctx.settings.runtime.verdicts_path)
    if ctx.out_dir is not None and not path.is_absolute():
        path = ctx.out_dir / path
    return JsonLinesSink(path)


SINK = SinkSpec("jsonl", _build)
