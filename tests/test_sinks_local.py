"""The console and JSON-lines sinks, and the sink/source contracts the daemon relies on:
verdicts carrying hostile text (a lone surrogate from a crafted Kafka label) never cost the
batch, and the daemon builds the file sink as a sink of its own."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from detector.runtime.build import make_outputs
from detector.settings import Settings
from detector.sinks.base import Sink
from detector.sinks.console import ConsoleSink
from detector.sinks.jsonl import JsonLinesSink
from detector.verdicts import Explanation, Verdict

LOG = logging.getLogger("podguard.test.sinks")
EVIL = "trainer-\udc80-0"  # what json.loads makes of "trainer-\\udc80-0" in a Kafka label


def _verdict(pod: str, *, anomaly: bool = True) -> Verdict:
    return Verdict(ts=1_767_225_600.0, namespace="ml", pod=pod, node="node-a",
                   is_anomaly=anomaly, kind="memory_leak" if anomaly else "none", score=3.0,
                   threshold=1.0, time_to_oom_s=600.0 if anomaly else None,
                   explanation=Explanation(text=f"{pod} grows") if anomaly else None)


def _strict_stream(encoding: str = "utf-8") -> tuple[io.TextIOWrapper, io.BytesIO]:
    raw = io.BytesIO()
    return io.TextIOWrapper(raw, encoding=encoding, errors="strict", write_through=True), raw


def test_a_lone_surrogate_costs_neither_the_console_nor_the_file_a_verdict(
        tmp_path: Path) -> None:
    stream, raw = _strict_stream()
    path = tmp_path / "v.jsonl"
    sink = ConsoleSink(path=path, stream=stream)
    batch = [_verdict("a"), _verdict(EVIL), _verdict("c"), _verdict("d", anomaly=False)]
    sink.send(batch)  # must not raise
    sink.close()
    lines = raw.getvalue().decode("utf-8").splitlines()
    assert len(lines) == 3 and "ml/a" in lines[0] and "ml/c" in lines[2]
    assert "trainer-\\udc80-0" in lines[1]  # escaped, not dropped
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [r["pod"] for r in rows] == ["a", EVIL, "c"]  # JSON escapes it; it reads back


def test_an_ascii_terminal_gets_escapes_not_an_exception() -> None:
    stream, raw = _strict_stream("ascii")
    ConsoleSink(stream=stream).send([_verdict("café"), _verdict("b")])
    text = raw.getvalue().decode("ascii")
    assert "caf\\xe9" in text and "ml/b" in text


def test_jsonl_sink_appends_whole_batches_and_counts_what_it_cannot_write(
        tmp_path: Path) -> None:
    path = tmp_path / "out" / "v.jsonl"
    sink = JsonLinesSink(path)
    assert isinstance(sink, Sink)
    sink.send([_verdict("a"), _verdict("b", anomaly=False)])
    sink.send([_verdict(EVIL)])
    sink.tick()
    assert sink.flush(1.0) and sink.sent == 2 and sink.errors == 0
    sink.close()
    assert [json.loads(x)["pod"] for x in path.read_text().splitlines()] == ["a", EVIL]
    everything = JsonLinesSink(path, all_verdicts=True)
    everything.send([_verdict("z", anomaly=False)])
    everything.close()
    assert len(path.read_text().splitlines()) == 3
    with pytest.raises(RuntimeError, match="closed"):
        everything.send([_verdict("late")])


def test_a_broken_console_stream_still_prints_the_rest_then_raises() -> None:
    class Flaky(io.StringIO):
        def write(self, s: str) -> int:
            if "ml/b" in s:
                raise OSError("EPIPE")
            return super().write(s)

    stream = Flaky()
    sink = ConsoleSink(stream=stream)
    with pytest.raises(OSError, match="EPIPE"):
        sink.send([_verdict("a"), _verdict("b"), _verdict("c")])
    assert "ml/a" in stream.getvalue() and "ml/c" in stream.getvalue() and sink.errors == 1


def test_the_daemon_writes_the_verdicts_file_with_a_real_jsonl_sink(tmp_path: Path) -> None:
    settings = Settings.model_validate({"runtime": {"verdicts_path": "v.jsonl"}})
    stream, _ = _strict_stream()
    sinks, hook = make_outputs(settings, logger=LOG, out_dir=tmp_path, stream=stream)
    files = [s for s in sinks if isinstance(s, JsonLinesSink)]
    assert len(files) == 1 and files[0].path == tmp_path / "v.jsonl"
    assert all(isinstance(s, Sink) for s in sinks)
    assert hook is not None and hook.replacements() == {} and hook.reconcile() is None
    for s in sinks:
        s.send([_verdict(EVIL)])
        s.tick()
        s.close()
    assert json.loads((tmp_path / "v.jsonl").read_text())["pod"] == EVIL
