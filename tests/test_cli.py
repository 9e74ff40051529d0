"""The command line: help texts, clear one-line errors with exit codes, config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_the_commands() -> None:
    r = _run("--help")
    assert r.returncode == 0
    for cmd in ("replay", "evaluate", "bench", "demo", "train", "config"):
        assert cmd in r.stdout


def test_bad_trace_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,namespace,pod,metric,value\nnot-a-time,ns,p,m,1\n")
    r = _run("replay", str(bad), "--out", str(tmp_path / "v.jsonl"))
    assert r.returncode == 2
    assert "podguard: error:" in r.stderr and "timestamp" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "v.jsonl").exists()


def test_missing_trace_file(tmp_path: Path) -> None:
    r = _run("replay", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "v.jsonl"))
    assert r.returncode == 2 and "nope.parquet" in r.stderr


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    import shutil

    from detector.models import store
    from detector.pipeline import default_model_dir

    src = store.resolve_current(default_model_dir())
    copy = tmp_path / "model"
    shutil.copytree(src, copy)
    with open(copy / "trend.json", "a") as f:
        f.write(" ")
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,namespace,pod,metric,value\n1,ns,p,m,1\n")
    r = _run("replay", str(trace), "--out", str(tmp_path / "v.jsonl"), "--model", str(copy))
    assert r.returncode == 2 and "trend.json" in r.stderr


def test_config_defaults_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--print-defaults"]) == 0
    text = capsys.readouterr().out
    assert "leak_horizon_s" in text and "seconds" in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["config", "--check", str(path)]) == 0


def test_config_unknown_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("detection:\n  confirm_stepz: 3\n")
    assert main(["config", "--check", str(path)]) == 2
    assert "confirm_stepz" in capsys.readouterr().err
