"""What the in-pod diagnosis costs a real training loop: ``python -m detector.diagnosis.bench``.

A real PyTorch training loop (an MLP 256-1024-1024-1, SGD, batch 64, one CPU thread; 400
earlier losses kept with their graphs, so each snapshot has autograd graphs to walk) runs in
rounds of three phases of ``--seconds`` each, interleaved so drift of the machine hits all:

* **no helper**: the plain loop;
* **helper idle**: :meth:`DiagnosisHelper.step` called every step, its thread polling the
  request file every second, no request;
* **diagnosis window**: a request answered (tracemalloc on, ``window_s`` = the phase); the
  steps that took the two snapshots are reported as the pauses, the others as the window's
  throughput.

Throughput is steps per CPU second of the process (all its threads, the helper's included),
so other load on a shared machine does not enter the figures; the pauses are wall clock.
A second measurement alternates plain, idle-helper and tracemalloc slices of 0.5 s (median of
``--slices``), which cancels most of the drift of a busy machine.
It prints steps/s per phase, the slowdown against the plain loop (median of the rounds, with
the spread of the plain loop between rounds as the noise), the pauses, and the cost of one idle
``step()`` call. Torch is imported here (a benchmark, not the in-pod path).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from detector.diagnosis import report as rp
from detector.diagnosis.helper import DiagnosisHelper, FileChannel


def _loop() -> Any:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    kept = []
    for _ in range(400):  # earlier losses kept with their graphs: work for the snapshots
        kept.append(((model(torch.randn(8, 256)) - 1.0) ** 2).mean())

    def step() -> None:
        x, y = torch.randn(64, 256), torch.randn(64, 1)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step.kept = kept  # type: ignore[attr-defined]
    return step


def _rate(step: Any, seconds: float, hook: Any = None) -> float:
    """Steps per CPU second of this process (all its threads: the helper's too)."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    end = t0 + seconds
    while time.perf_counter() < end:
        step()
        if hook is not None:
            hook()
        n += 1
    return n / (time.process_time() - c0)


def _interleaved(step: Any, helper: DiagnosisHelper, nframes: int, slices: int,
                 seconds: float) -> dict[str, float]:
    """Median slowdown (%) of idle-helper and tracemalloc slices against plain slices, the
    three alternating every ``seconds`` (fine interleaving cancels the drift of a shared
    machine that whole phases suffer)."""
    import tracemalloc

    ratios: dict[str, list[float]] = {"helper_idle": [], "tracemalloc": []}
    for _ in range(slices):
        base = _rate(step, seconds)
        ratios["helper_idle"].append(base / _rate(step, seconds, helper.step) - 1)
        tracemalloc.start(nframes)
        try:
            traced = _rate(step, seconds)
        finally:
            tracemalloc.stop()
        ratios["tracemalloc"].append(base / traced - 1)
    return {k: 100 * statistics.median(v) for k, v in ratios.items()}


def _window(step: Any, helper: DiagnosisHelper, channel: FileChannel,
            seconds: float) -> dict[str, Any]:
    req = rp.DiagnosisRequest(id="d-" + secrets.token_hex(8), ts=time.time(),
                              window_s=seconds)
    channel.write_request(req.to_json())
    deadline = time.monotonic() + 30
    while helper._armed is None and time.monotonic() < deadline:  # the thread picks it up
        step()
    times: list[float] = []
    pauses: list[float] = []
    answered = len(helper.results)
    c_steps = 0.0
    while len(helper.results) == answered and time.monotonic() < deadline + seconds:
        c0 = time.process_time()
        step()
        t1 = time.perf_counter()
        before = (helper._due is None, len(helper.results))
        helper.step()
        t2, c2 = time.perf_counter(), time.process_time()
        if (helper._due is None, len(helper.results)) != before:
            pauses.append(t2 - t1)
        else:
            times.append(t2 - t1)
            c_steps += c2 - c0
    res = helper.results[-1]
    return {"rate": len(times) / c_steps, "pauses": pauses, "result": res}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.diagnosis.bench")
    p.add_argument("--seconds", type=float, default=5.0, help="per phase and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slices", type=int, default=20,
                   help="alternating 0.5 s slices of the interleaved measurement")
    p.add_argument("--nframes", type=int, default=None,
                   help="tracemalloc frames (default: the diagnoser's)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    step = _loop()
    tmp = Path(tempfile.mkdtemp(prefix="podguard-diag-bench-"))
    channel = FileChannel(tmp)
    helper = DiagnosisHelper(channel, poll_s=1.0)
    if a.nframes is not None:
        helper.diagnoser.nframes = a.nframes
    _rate(step, 1.0)  # warm-up
    plain: list[float] = []
    idle: list[float] = []
    window: list[float] = []
    pauses: list[list[float]] = []
    cpu: list[list[float]] = []
    for _ in range(a.rounds):
        plain.append(_rate(step, a.seconds))
        idle.append(_rate(step, a.seconds, helper.step))
        w = _window(step, helper, channel, a.seconds)
        window.append(w["rate"])
        pauses.append(w["pauses"])
        cpu.append(list(w["result"].get("cost", {}).get("pause_cpu_s", [])))
    fine = _interleaved(step, helper, helper.diagnoser.nframes, a.slices, 0.5)
    helper.close()
    idle_helper = DiagnosisHelper(channel, background=False)
    n = 1_000_000
    t0 = time.perf_counter()
    for _ in range(n):
        idle_helper.step()
    per_call_ns = (time.perf_counter() - t0) / n * 1e9
    base = statistics.median(plain)
    noise = (max(plain) - min(plain)) / base * 100 if len(plain) > 1 else 0.0

    def slow(rates: list[float]) -> float:
        return (base / statistics.median(rates) - 1) * 100

    pa = [x[0] for x in pauses if len(x) > 0]
    pb = [x[1] for x in pauses if len(x) > 1]
    figures = {
        "steps_per_s": {"no_helper": base, "helper_idle": statistics.median(idle),
                        "diagnosis_window": statistics.median(window)},
        "slowdown_pct": {"helper_idle": slow(idle), "diagnosis_window": slow(window)},
        "noise_pct": noise, "idle_step_call_ns": per_call_ns,
        "interleaved_slowdown_pct": fine,
        "pause_s": {"snapshot_a_max": max(pa, default=0.0), "snapshot_b_max": max(pb, default=0.0)},
        "pause_cpu_s": cpu, "rounds": a.rounds, "seconds_per_phase": a.seconds,
        "sentence": helper.results[-1]["sentence"] if helper.results else "",
    }
    print(f"diagnosis benchmark: MLP 256-1024-1024-1, SGD, batch 64, one CPU thread; "
          f"{a.rounds} rounds x {a.seconds:g} s per phase")
    print(f"  no helper          {base:8.1f} steps/CPU-s (spread between rounds {noise:.1f} %)")
    print(f"  helper idle        {figures['steps_per_s']['helper_idle']:8.1f} steps/CPU-s "
          f"slowdown {slow(idle):+.1f} %   (one idle step() call: {per_call_ns:.0f} ns)")
    print(f"  diagnosis window   {figures['steps_per_s']['diagnosis_window']:8.1f} steps/CPU-s "
          f"slowdown {slow(window):+.1f} %   (tracemalloc on, "
          f"{helper.diagnoser.nframes} frames)")
    print(f"  interleaved 0.5 s slices (median of {a.slices}): helper idle "
          f"{fine['helper_idle']:+.1f} %, tracemalloc ({helper.diagnoser.nframes} frames) "
          f"{fine['tracemalloc']:+.1f} %")
    print(f"  pauses per diagnosis: snapshot A up to {max(pa, default=0.0):.3f} s, snapshot B "
          f"up to {max(pb, default=0.0):.3f} s (wall clock; CPU {cpu})")
    print(f"  last answer: {figures['sentence']}")
    if a.json is not None:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
