"""The daemon's unit tests on the other supported Pythons (3.12, 3.13), on its runtime set alone.

``make test`` runs this after the main suite (on the 3.11 dev venv). For each interpreter it
keeps a venv ``.venv-daemon-<version>`` holding exactly ``requirements-daemon.lock`` (the
daemon's runtime set: no torch, scikit-learn, scipy, shap, pyarrow, ...) plus the test tools
pinned in ``requirements.lock``, rebuilt only when those change, and runs :data:`TESTS` there
with the repository on ``PYTHONPATH``. So it checks two things at once: the daemon works on
that Python, and it works with nothing but its runtime set installed.

    .venv/bin/python -m tests.support.other_pythons [python3.12 python3.13 ...]

An interpreter that is not found fails the run with how to get it (``make test
EXTRA_PYTHONS=`` runs none). Bounded: ``--timeout`` for all of them (default 170 s; the
interpreters run at once, one core each). The venvs are built once (~1 min each).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHONS = ("python3.12", "python3.13")
#: The daemon-side unit tests that need nothing outside the runtime set.
TESTS = (
    "tests/test_windows.py", "tests/test_trend.py", "tests/test_traces.py",
    "tests/test_settings.py", "tests/test_daemon.py", "tests/test_daemon_housekeeping.py",
    "tests/test_kafka_codec.py", "tests/test_sources_prometheus.py", "tests/test_cli.py",
    "tests/test_transport.py", "tests/test_metrics.py", "tests/test_http_server.py",
    "tests/test_sinks_local.py", "tests/test_univariate.py", "tests/test_store_card.py",
    "tests/test_torch_free.py", "tests/test_model_state.py",
)
#: Tests among those that need an extra on purpose: Parquet traces (pyarrow, podguard[train])
#: and a bundle trained on the spot (torch); and the speed assertions, which the 3.11 suite
#: checks (here both interpreters run at once, beside each other). Everything else must pass.
DESELECT = ("not parquet and not datetime_column and not failed_save and not fresh "
            "and not fast")
#: psutil: the local stack's process handling (deploy/local/_proc.py), which the stack
#: fixtures the conftest loads import; the daemon itself never does.
TEST_TOOLS = ("pytest", "pytest-timeout", "hypothesis", "iniconfig", "pluggy", "packaging",
              "pygments", "attrs", "sortedcontainers", "psutil")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements() -> list[str]:
    """The runtime lock plus the test tools at the full lock's versions."""
    daemon = [line.strip() for line in (ROOT / "requirements-daemon.lock").read_text()
              .splitlines() if line.strip() and not line.startswith("#")]
    tools = [line.strip() for line in (ROOT / "requirements.lock").read_text().splitlines()
             if _norm(line.partition("==")[0]) in TEST_TOOLS]
    if len(tools) != len(TEST_TOOLS):
        raise SystemExit(f"requirements.lock lacks some of {TEST_TOOLS}")
    return sorted(set(daemon) | set(tools), key=str.lower)


def _runs(exe: str) -> bool:
    try:
        return subprocess.run([exe, "-c", "pass"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_python(python: str) -> str | None:
    """``python`` (e.g. ``python3.12``) on PATH if it runs (a pyenv shim of a version not
    selected does not), else pyenv's newest ``X.Y.*`` build under ``$PYENV_ROOT``."""
    exe = shutil.which(python)
    if exe and _runs(exe):
        return exe
    minor = python.removeprefix("python")
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    builds = sorted((pyenv_root / "versions").glob(f"{minor}.*/bin/{python}"),
                    key=lambda b: [int(x) for x in b.parts[-3].split(".") if x.isdigit()])
    for build in reversed(builds):
        if _runs(str(build)):
            return str(build)
    return None


def ensure_venv(python: str, reqs: list[str]) -> Path:
    """``.venv-daemon-<X.Y>`` for ``python`` holding exactly ``reqs`` (rebuilt on change)."""
    exe = find_python(python)
    if exe is None:
        raise SystemExit(
            f"other Pythons: {python} not found on PATH. Install it (apt-get install {python}, "
            f"pyenv install {python.removeprefix('python')}, or uv python install "
            f"{python.removeprefix('python')}), or run `make test EXTRA_PYTHONS=` to test "
            f"3.11 only")
    version = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    venv = ROOT / f".venv-daemon-{version}"
    stamp = venv / ".podguard-requirements"
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([exe, "-m", "venv", "--without-pip", str(venv)], check=True)
    req_file = venv / "requirements.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    # this interpreter's pip installs into the other one (the venv has no pip of its own)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "-r", str(req_file)], check=True)
    stamp.write_text(digest)
    return venv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pythons", nargs="*", default=list(DEFAULT_PYTHONS),
                    help="interpreters to test (python3.12 python3.13)")
    ap.add_argument("--timeout", type=float, default=170.0,
                    help="seconds for the tests (all interpreters run at once)")
    args = ap.parse_args(argv)
    reqs = requirements()
    venvs = {py: ensure_venv(py, reqs) for py in args.pythons}  # once, then reused
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs_dir = ROOT / "out" / "other-pythons"
    logs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs = {}
    for py, venv in venvs.items():
        cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-m", "not stack and not slow", "--timeout", "120", "-k", DESELECT, *TESTS]
        log = open(logs_dir / f"{venv.name}.log", "wb")  # noqa: SIM115 - closed below
        procs[py] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT), log, venv)
    print(f"other Pythons: {', '.join(args.pythons)}: {len(TESTS)} daemon test files each, "
          f"on the runtime set alone (logs in {logs_dir.relative_to(ROOT)}/)", flush=True)
    worst = 0
    for py, (proc, log, venv) in procs.items():
        try:
            rc = proc.wait(timeout=max(1.0, args.timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = 124
        log.close()
        text = (logs_dir / f"{venv.name}.log").read_text(errors="replace").splitlines()
        tail = [x for x in text if " passed" in x or " failed" in x or x.startswith("FAILED")
                or x.startswith("ERROR")]
        if rc != 0:
            tail = text[-60:]
        print(f"other Pythons: {py} ({venv.name}): exit {rc}"
              + (" (over the time limit)" if rc == 124 else ""))
        print("\n".join("    " + x for x in tail))
        worst = max(worst, rc)
    print(f"other Pythons: {time.monotonic() - started:.0f} s")
    return worst


if __name__ == "__main__":
    sys.exit(main())
