"""The embedded default source: real workloads as child processes, sampled from /proc.

``podguard run`` with no configuration uses it (``sources.kind: local``). It starts small
PyTorch training loops as real child processes (torch is imported by the children only):

* healthy loops (``trainer-<i>``) log their monitoring loss with ``loss.item()``;
* leaky loops (``leaky-trainer-<i>``) start, after ``leak_after_s``, to keep the monitoring
  loss *tensor* (``history.append(loss)``), computed without ``torch.no_grad()``, so every
  step keeps its autograd graph and the activations saved in it: the classic leak, growing
  by about ``leak_bytes_per_s``.

Every ``sample_interval_s`` it reads each child's ``/proc/<pid>/status`` (VmRSS, RssAnon) and
``/proc/<pid>/stat`` (CPU time) and emits cAdvisor-named samples for a pseudo-pod per child
(``container_memory_working_set_bytes``, ``container_memory_rss``,
``container_cpu_usage_seconds_total``, ``container_spec_memory_limit_bytes``) plus
``kube_pod_container_status_restarts_total``. A child whose RSS passes
``memory_limit_bytes`` is killed and restarted, like the kernel's OOM killer and the kubelet,
and, once a child has ended, its last terminated reason as kube-state-metrics' flag
(``..._last_terminated_reason_oomkilled``: 1 after such a kill, 0 after another exit).

**Time compression.** The shipped leak detector looks at block minima over 40 min to 4 h and
judges a window after 90 min of data. To show a real detection in minutes, the source's clock
runs ``time_scale`` times faster than the wall clock (default 60: a real second is a model
minute, a 0.25 s sample interval is a 15 s scrape). Memory values are real bytes; CPU seconds
are multiplied by the same factor so rates stay in cores. Times shown to a person (onset,
time to OOM) are converted back to real seconds by :meth:`LocalSource.real_seconds`. The model,
its thresholds and the window settings are the shipped ones, unchanged.

Run as ``python -m detector.sources.local --kind leaky ...`` this module is the workload itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from detector.channels import CHANNEL_METRICS, LIMITS, OOM_KILLED_CHANNEL
from detector.settings import LocalSourceSettings, Settings
from detector.sources.base import Delivery, SourceSpec, SourceStatus

# the series it delivers, named by the channel table (detector.channels: no pandas in the
# training-loop children that import this module)
_WORKING_SET, _RSS, _CPU_SECONDS, _RESTARTS = (
    CHANNEL_METRICS[c] for c in ("mem_working_set", "mem_rss", "cpu_rate", "restarts"))
_MEMORY_LIMIT = LIMITS["memory"].metrics[0].metric
_OOM_KILLED = CHANNEL_METRICS[OOM_KILLED_CHANNEL]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_ROW_BYTES = 16 * 1024  # kept per batch row and step, as measured in the daemon (~16 KiB)


@dataclass
class Workload:
    """One pseudo-pod: its child process and what the summary needs to know about it."""

    pod: str
    leaky: bool
    started_real: float = 0.0  # monotonic time of the current child's start
    first_start_real: float = 0.0
    restarts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    oom_kills: list[float] = field(default_factory=list)  # source-clock times
    last_oom_killed: float | None = None  # 1.0/0.0 once it has ended (the kubelet's reason)
    log: IO[bytes] | None = None


class LocalSource:
    """Starts the workloads, samples them, restarts the OOM-killed (see module docstring)."""

    name = "local"

    def __init__(self, settings: LocalSourceSettings, *, logger: logging.Logger,
                 log_dir: str | Path | None = None,
                 python: str = sys.executable,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.log = logger
        self.python = python
        self.log_dir = Path(log_dir) if log_dir else None
        self.monotonic = monotonic
        self.node = settings.node or socket.gethostname()
        self._m0 = monotonic()
        self._t0 = wall()
        self._next_sample = self._m0
        self.workloads: list[Workload] = (
            [Workload(f"leaky-trainer-{i}", True) for i in range(settings.leaky_workloads)]
            + [Workload(f"trainer-{i}", False) for i in range(settings.healthy_workloads)])
        self._newest: float | None = None

    # ------------------------------------------------------------------ clocks

    def now(self) -> float:
        """The compressed clock: unix seconds, running ``time_scale`` times the wall clock."""
        return self._t0 + (self.monotonic() - self._m0) * self.settings.time_scale

    def clock_rate(self) -> float:
        """Model seconds per real second (``time_scale``)."""
        return float(self.settings.time_scale)

    def to_clock(self, real_monotonic: float) -> float:
        return self._t0 + (real_monotonic - self._m0) * self.settings.time_scale

    def real_seconds(self, model_seconds: float) -> float:
        """A duration on the source clock as real seconds."""
        return model_seconds / self.settings.time_scale

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.workloads and self.python == sys.executable:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                from detector.errors import ConfigError

                raise ConfigError(
                    "the embedded default's workloads are PyTorch training loops, and torch is "
                    "not installed (the daemon's runtime set leaves it out): pip install "
                    "'podguard[train]', set sources.local.healthy_workloads and leaky_workloads "
                    "to 0, or configure a prometheus or kafka source")
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        for w in self.workloads:
            self._spawn(w)
        self.log.info("local workloads started",
                      extra={"pods": [w.pod for w in self.workloads], "node": self.node,
                             "time_scale": self.settings.time_scale,
                             "memory_limit_bytes": self.settings.memory_limit_bytes})

    def close(self, timeout: float = 5.0) -> None:
        procs = [w for w in self.workloads if w.proc is not None and w.proc.poll() is None]
        for w in procs:
            assert w.proc is not None
            w.proc.terminate()
        deadline = time.monotonic() + timeout
        for w in procs:
            assert w.proc is not None
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=5)
        for w in self.workloads:
            if w.log is not None:
                w.log.close()
                w.log = None

    def _spawn(self, w: Workload) -> None:
        s = self.settings
        per_step = s.leak_bytes_per_s / s.steps_per_s
        rows = max(8, round(per_step / _ROW_BYTES))
        argv = [self.python, "-m", "detector.sources.local", "--kind",
                "leaky" if w.leaky else "healthy", "--rows", str(rows),
                "--steps-per-s", str(s.steps_per_s),
                "--leak-after", str(s.leak_after_s if w.restarts == 0 else 0.0),
                "--parent", str(os.getpid())]
        if self.log_dir is not None and w.log is None:
            w.log = open(self.log_dir / f"{w.pod}.log", "ab")  # noqa: SIM115 - held
        out = w.log if w.log is not None else subprocess.DEVNULL
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if self.log_dir is not None:  # the in-pod diagnosis channel (detector.diagnosis)
            env["PODGUARD_DIAGNOSIS_DIR"] = str(self.log_dir / "diagnosis" / w.pod)
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        w.proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                  env=env, cwd=root)
        w.started_real = self.monotonic()
        if w.restarts == 0:
            w.first_start_real = w.started_real

    # ------------------------------------------------------------------ the contract

    def poll(self, timeout: float) -> Delivery:
        out = Delivery()
        m = self.monotonic()
        if m < self._next_sample:
            time.sleep(max(0.0, min(timeout, self._next_sample - m)))
            m = self.monotonic()
            if m < self._next_sample:
                return out
        interval = self.settings.sample_interval_s
        self._next_sample = max(self._next_sample + interval, m)
        ts = self.to_clock(m)
        cols = out.samples
        s = self.settings
        limit = float(s.memory_limit_bytes)
        for w in self.workloads:
            proc = w.proc
            if proc is None:
                continue
            if proc.poll() is not None:  # died by itself (or was OOM-killed): restart it
                self.log.warning("workload exited; restarting it",
                                 extra={"pod": w.pod, "code": proc.returncode})
                w.restarts += 1
                w.last_oom_killed = 0.0
                self._spawn(w)
                continue
            stats = read_proc(proc.pid)
            if stats is None:
                continue
            rss, anon, cpu = stats
            if rss > limit:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                w.oom_kills.append(ts)
                w.restarts += 1
                w.last_oom_killed = 1.0
                self.log.warning("workload passed its memory limit: killed (OOM) and restarted",
                                 extra={"pod": w.pod, "rss_bytes": rss, "limit_bytes": limit})
                self._spawn(w)
                continue
            pod, ns, node = w.pod, s.namespace, self.node
            cols.append(ts, ns, pod, "main", node, _WORKING_SET, rss)
            cols.append(ts, ns, pod, "main", node, _RSS, anon)
            cols.append(ts, ns, pod, "main", node, _CPU_SECONDS, cpu * s.time_scale)
            cols.append(ts, ns, pod, "main", node, _MEMORY_LIMIT, limit)
            cols.append(ts, ns, pod, "main", node, _RESTARTS, float(w.restarts))
            if w.last_oom_killed is not None:
                cols.append(ts, ns, pod, "main", node, _OOM_KILLED, w.last_oom_killed)
        out.messages = 1
        if len(cols):
            self._newest = ts
        return out

    def commit(self, tokens: Sequence[Any]) -> None:
        """Nothing to acknowledge."""

    def status(self) -> SourceStatus:
        alive = sum(1 for w in self.workloads if w.proc is not None and w.proc.poll() is None)
        lag = None if self._newest is None else max(0.0, self.now() - self._newest)
        return SourceStatus(up=alive == len(self.workloads), caught_up=True, lag_s=lag,
                            extra={"workloads_alive": float(alive)})

    def leak_onsets(self) -> dict[str, float]:
        """Source-clock time at which each leaky pseudo-pod started leaking."""
        return {w.pod: self.to_clock(w.first_start_real + self.settings.leak_after_s)
                for w in self.workloads if w.leaky and w.first_start_real}


def read_proc(pid: int) -> tuple[float, float, float] | None:
    """(VmRSS bytes, RssAnon bytes, user+system CPU seconds) of a process; None if gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            status = fh.read()
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    rss = anon = 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = float(line.split()[1]) * 1024
        elif line.startswith("RssAnon:"):
            anon = float(line.split()[1]) * 1024
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)
    return rss, anon, cpu


# ---------------------------------------------------------------------- the workload itself


def workload_main(argv: Sequence[str] | None = None) -> int:
    """A small training loop; ``--kind leaky`` keeps its monitoring losses as tensors."""
    p = argparse.ArgumentParser(prog="python -m detector.sources.local")
    p.add_argument("--kind", choices=["leaky", "healthy"], required=True)
    p.add_argument("--rows", type=int, default=96, help="batch rows (count)")
    p.add_argument("--steps-per-s", type=float, default=2.0)
    p.add_argument("--leak-after", type=float, default=20.0, help="seconds before leaking")
    p.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    a = p.parse_args(argv)

    import torch  # only in the child: the daemon never imports torch for this

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    history: list[Any] = []
    diagnosis = None  # answers podguard's diagnosis requests between two steps
    if os.environ.get("PODGUARD_DIAGNOSIS_DIR"):
        from detector.diagnosis.helper import DiagnosisHelper

        diagnosis = DiagnosisHelper.from_env(poll_s=1.0)
    started = time.monotonic()
    period = 1.0 / a.steps_per_s
    nxt = time.monotonic()
    while True:
        if a.parent and not _alive(a.parent):
            return 0
        x, y = torch.randn(a.rows, 256), torch.randn(a.rows, 1)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        xv = torch.randn(a.rows, 256)
        monitor = ((model(xv) - y) ** 2).mean()  # no torch.no_grad(): it has a graph
        if a.kind == "leaky" and time.monotonic() - started >= a.leak_after:
            history.append(monitor)  # the bug: keeps the graph and its activations
        else:
            history.append(monitor.item())  # the fix: a float
            if len(history) > 1000:
                history = history[-100:]
        if diagnosis is not None:
            diagnosis.step()
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    sys.exit(workload_main())


# ------------------------------------------------------------------ registration


def _build(settings: Settings, logger: logging.Logger, out_dir: Path | None) -> LocalSource:
    return LocalSource(settings.sources.local, logger=logger,
                       log_dir=(out_dir / "workloads") if out_dir else None)


def _banner(source: LocalSource, model_version: str, scale: float) -> str:
    from detector.explain import format_duration

    return (f"podguard run: embedded default - {len(source.workloads)} real training loops "
            f"(one leaking), sampled from /proc; model {model_version}; time runs {scale:g}x "
            f"(a real second is {format_duration(scale)} of telemetry)")


def _describe(source: LocalSource, summary: Any, scale: float,
              diagnosis: Callable[[str, str], dict[str, Any] | None] | None) -> list[str]:
    """The run summary's line per workload: its role, the leak's onset, the first alarm
    (``summary``: the daemon's ``RunSummary``) and why, and what the in-pod diagnosis saw."""
    from detector.diagnosis.report import describe
    from detector.explain import format_duration

    lines = []
    t_start = summary.started
    onsets = source.leak_onsets()
    for w in source.workloads:
        key = (source.settings.namespace, w.pod)
        det = summary.first.get(key)
        role = "leaks" if w.leaky else "healthy"
        onset = onsets.get(w.pod)
        onset_txt = ""
        onset_real: float | None = None
        if onset is not None:
            onset_real = (onset - source.now()) / scale + time.time()
            onset_txt = f", leak began at +{onset_real - t_start:.0f} s"
        if det is None:
            verdict = "no alarm" + (" (correct)" if not w.leaky else " (MISSED)")
            lines.append(f"  {w.pod:<18} {role}{onset_txt}: {verdict}")
            continue
        v = det.verdict
        when = det.wall_time - t_start
        after = "" if onset_real is None else (
            f" ({det.wall_time - onset_real:.0f} s after the onset)")
        tto = (f", OOM expected in ~{format_duration(v.time_to_oom_s)}"
               if v.time_to_oom_s is not None else "")
        ooms = f", OOM-killed {len(w.oom_kills)}x" if w.oom_kills else ""
        lines.append(f"  {w.pod:<18} {role}{onset_txt}: {v.kind} at +{when:.0f} s"
                     f"{after}{tto}{ooms}")
        if v.explanation is not None:
            lines.append(f"      why: {v.explanation.text}")
        if diagnosis is not None and (d := diagnosis(*key)) is not None:
            lines.append(f"      what grows: {describe(d, limit=1000)}")
    return lines


SOURCE = SourceSpec("local", _build, embedded=True, default_out_dir=Path("out/run"),
                    banner=_banner, describe=_describe)
"""``sources.kind: local``, the embedded default: real loops on this host in compressed time,
the demo's outputs (see :class:`~detector.sources.base.SourceSpec`)."""
