"""The real workloads the real-node harness runs, each as a "container" under a memory limit.

Run by the supervisor (:mod:`deploy.local.node`) as ``python -m deploy.local.node_workloads
KIND [options]`` inside the container's cgroup. Nothing here knows about the limit or decides
when it dies: the kernel's OOM killer does, and the supervisor reads the kernel's count.

Plain Python (start in ~0.1 s, a few MiB of baseline; limits ~200-300 MiB):

``leak``       allocates ``--rate-mib-min`` MiB/min of touched memory from ``--onset-s`` on,
               never frees it (with ``--onset-s 0`` and restarts: the crash-looping leak);
``sawtooth``   a GC sawtooth: grows to ``--peak-mib`` over ``--period-s``, frees, again;
``warmup``     fills a cache towards ``--plateau-mib`` with time constant ``--tau-s``
               (fast at first, then slower, then flat) and holds it;
``flap``       holds ``--base-mib`` and exits with status 1 after ``--period-s`` (a sidecar
               failing its liveness probe: restarted by the supervisor, never OOM-killed);
``pagecache``  writes a file of ``--file-mib`` (larger than its limit) in ``--dir`` and re-reads
               it forever at ``--read-mib-s``: usage sits at the limit, RSS stays flat, the
               working set ramps as re-read pages move to the active list; never OOM-killed.

PyTorch training loops (torch's own baseline is ~300 MiB anonymous memory; limits ~700 MiB):

``trainer``            a healthy loop: :func:`detector.sources.local.workload_main` ``--kind
                       healthy`` (the monitoring loss is logged with ``.item()``);
``trainer-kept-loss``  the same loop keeping every monitoring loss *tensor* with its graph
                       from ``--onset-s`` on (``workload_main --kind leaky``);
``trainer-loader-leak`` a DataLoader with one persistent worker whose Dataset keeps every
                       sample it produced: the leak lives in the worker process (the OOM
                       killer kills the worker; the main process then fails);
``trainer-dataset-cache`` a Dataset that caches each augmented sample under (index, epoch):
                       a cache that never hits, growing every epoch, in the main process;
``trainer-checkpointed`` the kept-loss leak in a loop that uses podguard's checkpoint helper
                       (:class:`detector.remediation.checkpoint.CheckpointResponder`, from the
                       pod's environment: ``PODGUARD_ENDPOINT``, ``PODGUARD_TOKEN_FILE``):
                       it resumes from the newest checkpoint in ``--checkpoint-dir``, answers
                       podguard's checkpoint request with model, optimizer and step, then
                       holds until it is stopped; every completed step is appended to
                       ``<checkpoint-dir>/../steps.log`` as ``<POD_UID> <step>``, its
                       lifecycle (started, resumed, leak_onset, acknowledged, stopped) to
                       ``trainer.jsonl`` beside it (the story of :mod:`deploy.local.story`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

MIB = 1 << 20
KINDS = ("leak", "sawtooth", "warmup", "pagecache", "flap", "trainer", "trainer-kept-loss",
         "trainer-loader-leak", "trainer-dataset-cache", "trainer-checkpointed")
TORCH_KINDS = frozenset(k for k in KINDS if k.startswith("trainer"))


def _chunk(n_bytes: int) -> bytearray:
    """``n_bytes`` of memory really touched (every page written)."""
    b = bytearray(n_bytes)
    for i in range(0, n_bytes, 4096):
        b[i] = 1
    return b


def _ticker(period: float) -> Iterator[float]:
    nxt = time.monotonic()
    while True:
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))
        yield time.monotonic()


def run_leak(a: argparse.Namespace) -> int:
    kept: list[bytearray] = [_chunk(int(a.base_mib * MIB))]
    t0 = time.monotonic()
    per_tick = a.rate_mib_min * MIB / 60.0 * a.tick_s
    owed = 0.0
    for now in _ticker(a.tick_s):
        if now - t0 >= a.onset_s:
            owed += per_tick
            if owed >= 4096:
                kept.append(_chunk(int(owed)))
                owed -= int(owed)
    return 0


def run_sawtooth(a: argparse.Namespace) -> int:
    base = _chunk(int(a.base_mib * MIB))
    garbage: list[bytearray] = []
    t_start = time.monotonic()
    step = a.peak_mib * MIB / max(1.0, a.period_s / a.tick_s)
    for now in _ticker(a.tick_s):
        if (now - t_start) >= a.period_s:
            garbage.clear()  # the collection
            t_start = now
        else:
            garbage.append(_chunk(int(step)))
    del base
    return 0


def run_warmup(a: argparse.Namespace) -> int:
    cache: list[bytearray] = []
    have = 0.0
    t0 = time.monotonic()
    for now in _ticker(a.tick_s):
        target = a.plateau_mib * MIB * (1.0 - math.exp(-(now - t0) / a.tau_s))
        if target - have >= 4096:
            cache.append(_chunk(int(target - have)))
            have += int(target - have)
    return 0


def run_flap(a: argparse.Namespace) -> int:
    held = _chunk(int(a.base_mib * MIB))
    time.sleep(a.period_s)
    del held
    return 1  # not an OOM kill: the restart's reason is Error


def run_pagecache(a: argparse.Namespace) -> int:
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"pagecache-{os.getpid()}.bin"
    block = os.urandom(MIB)
    try:
        with open(path, "wb") as f:
            for _ in range(int(a.file_mib)):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        del block
        buf = bytearray(MIB)
        per_tick = max(1, int(a.read_mib_s * a.tick_s))
        with open(path, "rb", buffering=0) as f:
            for _ in _ticker(a.tick_s):
                for _ in range(per_tick):
                    if f.readinto(buf) == 0:
                        f.seek(0)
    finally:
        path.unlink(missing_ok=True)
    return 0


# ---------------------------------------------------------------------- torch loops


def _torch_model(hidden: int = 512) -> tuple[Any, Any]:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 1))
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


def _sample_bytes(a: argparse.Namespace) -> int:
    """Bytes one sample keeps, so that the leak grows ``--rate-mib-min`` at the step rate."""
    per_step = a.rate_mib_min * MIB / 60.0 / a.steps_per_s
    return max(256, int(per_step / a.batch))


class _KeepingDataset:
    """Synthetic regression samples; with ``keep`` each produced sample is also kept."""

    def __init__(self, n: int, sample_bytes: int, keep: bool, onset_s: float) -> None:
        self.n, self.sample_bytes, self.keep, self.onset_s = n, sample_bytes, keep, onset_s
        self.kept: list[Any] = []
        self.t0 = time.monotonic()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        g = torch.Generator().manual_seed(i)
        x = torch.randn(64, generator=g)
        if self.keep and time.monotonic() - self.t0 >= self.onset_s:
            # "for the debug dump": the raw sample, never released
            self.kept.append(torch.randn(self.sample_bytes // 4, generator=g))
        return x, x[:1].clone()


def run_loader_leak(a: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    model, opt = _torch_model()
    ds = _KeepingDataset(10_000_000, _sample_bytes(a), keep=True, onset_s=a.onset_s)
    loader: Any = DataLoader(cast(Any, ds), batch_size=a.batch, num_workers=1,
                             persistent_workers=True, prefetch_factor=2)
    tick = _ticker(1.0 / a.steps_per_s)
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        next(tick)
    return 0


class _CachingDataset:
    """Caches every augmented sample under (index, epoch): the cache never hits."""

    def __init__(self, n: int, sample_bytes: int, onset_s: float) -> None:
        self.n, self.sample_bytes, self.onset_s = n, sample_bytes, onset_s
        self.cache: dict[tuple[int, int], Any] = {}
        self.epoch = 0
        self.t0 = time.monotonic()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        key = (i, self.epoch)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        g = torch.Generator().manual_seed(i * 1000 + self.epoch)
        aug = torch.randn(max(64, self.sample_bytes // 4), generator=g)
        item = (aug[:64], aug[:1].clone())
        if time.monotonic() - self.t0 >= self.onset_s:
            self.cache[key] = (aug[:64], aug[:1].clone(), aug)  # keeps the whole buffer
        return item[0], item[1]


def run_dataset_cache(a: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    model, opt = _torch_model()
    ds = _CachingDataset(a.batch * 50, _sample_bytes(a), a.onset_s)
    tick = _ticker(1.0 / a.steps_per_s)
    while True:
        for x, y in DataLoader(cast(Any, ds), batch_size=a.batch, shuffle=True):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            next(tick)
        ds.epoch += 1


KEPT_BYTES_PER_ROW = 2900
"""What one kept monitoring loss holds per batch row in :func:`run_checkpointed`'s model (its
graph keeps the input and the hidden activations: (64 + 512) float32, plus allocator slack;
measured)."""


def run_checkpointed(a: argparse.Namespace) -> int:
    """The kept-loss leak with podguard's checkpoint helper (see the module docstring)."""
    import json
    import signal
    import threading

    import torch

    from detector.remediation.checkpoint import (
        CheckpointResponder,
        latest_checkpoint,
        torch_saver,
    )

    ckpt = Path(a.checkpoint_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    uid = os.environ.get("POD_UID", "")
    log_path = ckpt.parent / "trainer.jsonl"

    def record(event: str, **kw: Any) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"event": event, "uid": uid, "pid": os.getpid(),
                                 "ts": time.time(), **kw}) + "\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    model, opt = _torch_model()
    start = 0
    found = latest_checkpoint(ckpt)
    if found is not None:
        state = torch.load(found.path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"]) + 1
        record("resumed", from_step=int(state["step"]), path=str(found.path))
    responder = CheckpointResponder.from_env(directory=ckpt, poll_interval_s=1.0,
                                             hold_s=600.0)
    rows = max(1, round(a.rate_mib_min * MIB / 60.0 / a.steps_per_s / KEPT_BYTES_PER_ROW))
    record("started", start_step=start, rows=rows)
    kept: list[Any] = []  # the bug: every monitoring loss, with its graph
    t0, leaking = time.monotonic(), False
    tick = _ticker(1.0 / a.steps_per_s)
    w_true = torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
    with open(ckpt.parent / "steps.log", "a", buffering=1) as steps:
        step = start
        while not stop.is_set():
            x = torch.randn(32, 64)
            loss = torch.nn.functional.mse_loss(model(x), x @ w_true)
            opt.zero_grad()
            loss.backward()
            opt.step()
            xv = torch.randn(rows, 64)
            monitor = torch.nn.functional.mse_loss(model(xv), xv @ w_true)  # has a graph
            if time.monotonic() - t0 >= a.onset_s:
                if not leaking:
                    leaking = True
                    record("leak_onset", step=step)
                kept.append(monitor)
            steps.write(f"{uid} {step}\n")
            snapshot: dict[str, Any] = {"model": model.state_dict(),
                                        "optimizer": opt.state_dict(), "step": step}
            if responder.maybe_checkpoint(torch_saver(snapshot.copy), step=step):
                ack = responder.last_ack or {}
                record("acknowledged", step=step, path=ack.get("path"),
                       request=ack.get("id"))
                responder.hold(stop=stop.is_set)
                record("hold_ended", stopping=stop.is_set())
            if stop.is_set():
                break
            step += 1
            next(tick)
    record("stopped", last_step=step, kept=len(kept))
    return 0


def run_trainer(a: argparse.Namespace, leaky: bool) -> int:
    from detector.sources.local import _ROW_BYTES, workload_main

    rows = 96
    if leaky:  # the kept graph holds ~_ROW_BYTES per batch row and step
        rows = max(8, round(a.rate_mib_min * MIB / 60.0 / a.steps_per_s / _ROW_BYTES))
    return workload_main(["--kind", "leaky" if leaky else "healthy", "--rows", str(rows),
                          "--steps-per-s", str(a.steps_per_s),
                          "--leak-after", str(a.onset_s if leaky else 1e12)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.local.node_workloads",
                                description="a real workload for the real-node harness")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--onset-s", type=float, default=0.0, help="seconds before leaking")
    p.add_argument("--rate-mib-min", type=float, default=20.0, help="leak rate (MiB/min)")
    p.add_argument("--base-mib", type=float, default=8.0, help="memory held from the start")
    p.add_argument("--peak-mib", type=float, default=100.0, help="sawtooth: garbage at peak")
    p.add_argument("--period-s", type=float, default=60.0,
                   help="sawtooth: seconds per tooth; flap: seconds before it exits")
    p.add_argument("--plateau-mib", type=float, default=120.0, help="warmup: final size")
    p.add_argument("--tau-s", type=float, default=120.0, help="warmup: time constant")
    p.add_argument("--file-mib", type=float, default=400.0, help="pagecache: file size")
    p.add_argument("--read-mib-s", type=float, default=40.0, help="pagecache: read rate")
    p.add_argument("--dir", default=".", help="pagecache: where the file is written")
    p.add_argument("--steps-per-s", type=float, default=4.0, help="trainers: step rate")
    p.add_argument("--batch", type=int, default=32, help="trainers: batch size (loader kinds)")
    p.add_argument("--tick-s", type=float, default=0.5, help="allocation tick (seconds)")
    p.add_argument("--checkpoint-dir", default="checkpoints",
                   help="trainer-checkpointed: where checkpoints are saved and resumed from")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.kind in ("leak", "sawtooth", "warmup", "pagecache", "flap"):
        runner = {"leak": run_leak, "sawtooth": run_sawtooth, "warmup": run_warmup,
                  "pagecache": run_pagecache, "flap": run_flap}[a.kind]
        return runner(a)
    if a.kind == "trainer":
        return run_trainer(a, leaky=False)
    if a.kind == "trainer-kept-loss":
        return run_trainer(a, leaky=True)
    if a.kind == "trainer-loader-leak":
        return run_loader_leak(a)
    if a.kind == "trainer-checkpointed":
        return run_checkpointed(a)
    return run_dataset_cache(a)


if __name__ == "__main__":
    sys.exit(main())
