"""Process plumbing shared by every service of the local stack.

Each service runs as a child process we started ourselves, bound to 127.0.0.1 on a
port chosen at start, with its state under one stack directory. PIDs are recorded in
``<state>/<name>.pid`` and processes are stopped only by those PIDs (never by name).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A local service could not be built, started or reached. The message says how to fix it."""


def cache_dir() -> Path:
    """Per-user cache for built binaries and downloaded jars, reused across runs."""
    base = os.environ.get("PODGUARD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "podguard"
    )
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start(name: str, argv: Sequence[str], state: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start ``argv`` in its own process group; log to ``<state>/<name>.log``; record the PID."""
    log = open(state / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=full_env, cwd=cwd, start_new_session=True,
        )
    except OSError as e:
        raise StackError(f"{name}: cannot run {argv[0]}: {e}") from e
    finally:
        log.close()
    (state / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def pid_of(name: str, state: Path) -> int | None:
    f = state / f"{name}.pid"
    try:
        return int(f.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead; another user's process is alive)."""
    try:
        return bool(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def stop(name: str, state: Path, *, grace: float = 10.0) -> None:
    """SIGTERM the recorded PID (its process group), SIGKILL after ``grace`` seconds."""
    pid = pid_of(name, state)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if pid is None or not alive(pid):
            break
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(pid, sig)
        with contextlib.suppress(psutil.Error):  # reaps our own child; gone is fine
            psutil.Process(pid).wait(timeout=wait)
    (state / f"{name}.pid").unlink(missing_ok=True)


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of a live process."""
    try:
        return int(psutil.Process(pid).memory_info().rss) if alive(pid) else None
    except psutil.Error:
        return None


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, name: str,
               state: Path, interval: float = 0.25) -> None:
    """Poll ``check`` until it returns True; on timeout raise with the tail of the log."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive(pid_of(name, state)):
            raise StackError(f"{name} exited while waiting for {what}:\n{log_tail(name, state)}")
        try:
            if check():
                return
        except Exception as e:  # any failure means "not yet"
            last = e
        time.sleep(interval)
    raise StackError(
        f"{name}: {what} not reached within {timeout:.0f}s (last error: {last!r})\n"
        f"{log_tail(name, state)}"
    )


def log_tail(name: str, state: Path, lines: int = 30) -> str:
    try:
        text = (state / f"{name}.log").read_text(errors="replace")
    except OSError:
        return f"(no log at {state / (name + '.log')})"
    return "\n".join(text.splitlines()[-lines:])
