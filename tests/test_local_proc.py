"""The local stack's process plumbing (deploy/local/_proc.py) on real child processes: start
records the PID, alive/rss_bytes see it, stop ends its whole process group (SIGKILL after the
grace period for one that ignores SIGTERM), reaps it and removes the PID file."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from deploy.local import _proc

# a parent that ignores SIGTERM and a grandchild in its process group, both sleeping
_STUBBORN = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
             "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
             "open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(60)")


def _wait_for(path: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_start_alive_rss_and_stop(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    pid = _proc.start("sleeper", [sys.executable, "-c", "import sys, time; open(sys.argv[1], "
                                  "'w').write('1'); time.sleep(60)", str(ready)], tmp_path)
    assert _proc.pid_of("sleeper", tmp_path) == pid and _proc.alive(pid)
    _wait_for(ready)  # the interpreter is up (right after the fork, RSS is the forking one's)
    rss = _proc.rss_bytes(pid)
    assert rss is not None and rss > 1 << 20  # a Python interpreter: more than 1 MiB
    _proc.stop("sleeper", tmp_path)
    assert not _proc.alive(pid) and _proc.rss_bytes(pid) is None
    assert _proc.pid_of("sleeper", tmp_path) is None  # the PID file is gone
    _proc.stop("sleeper", tmp_path)  # stopping what is not running is fine
    assert not _proc.alive(None) and not _proc.alive(0)


def test_stop_kills_the_group_of_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    child_file = tmp_path / "grandchild.pid"
    pid = _proc.start("stubborn", [sys.executable, "-c", _STUBBORN, str(child_file)], tmp_path)
    grandchild = _wait_for(child_file)
    assert _proc.alive(pid) and _proc.alive(grandchild)
    _proc.stop("stubborn", tmp_path, grace=0.5)  # SIGTERM is ignored: SIGKILL after 0.5 s
    deadline = time.monotonic() + 10  # the grandchild is init's to reap once killed
    while _proc.alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _proc.alive(pid) and not _proc.alive(grandchild)
