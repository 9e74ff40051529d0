"""Real PyTorch training loops with real leaks, answering podguard's diagnosis request.

Each scenario is a small training loop (one CPU thread) that calls
:meth:`detector.diagnosis.helper.DiagnosisHelper.step` once per step, as a user's loop would.
The helper reads the request from ``<dir>/request.json`` and writes ``<dir>/result.json``
(:class:`~detector.diagnosis.helper.FileChannel`); the process exits once it has answered
(or after ``--max-s``). The lines the diagnosis must name carry a ``# LEAK:`` marker, so the
tests find their numbers without hard-coding them.

Scenarios (``python -m tests.support.leaks SCENARIO --dir DIR``):

* ``kept-loss``: the validation loss is computed without ``torch.no_grad()`` and appended to
  a list as a tensor, so each step keeps its autograd graph and its saved activations;
* ``dataset-cache``: a Dataset that memoises every decoded sample (Python lists) in a dict
  that never hits, read in the main process (``num_workers=0``);
* ``worker-cache``: the same Dataset read by two persistent DataLoader workers: each worker's
  copy of the cache grows, the main process does not;
* ``offload``: activations moved off the accelerator (``.detach().cpu().clone()``) into a
  recorder's list "for later analysis";
* ``healthy``: the same loop as ``kept-loss`` with ``loss.item()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from detector.diagnosis.helper import DiagnosisHelper, FileChannel

torch.set_num_threads(1)


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 1))


class Loop:
    """Runs ``step`` until the helper answered (or ``max_s``), calling the helper each step."""

    def __init__(self, directory: Path, *, warmup_s: float, max_s: float) -> None:
        self.directory = directory
        self.warmup_s = warmup_s
        self.max_s = max_s
        self.helper: DiagnosisHelper | None = None
        self.started = time.monotonic()
        self.steps = 0

    def tick(self) -> bool:
        """After a step: False when the loop should end."""
        self.steps += 1
        now = time.monotonic()
        if self.helper is None and now - self.started >= self.warmup_s:
            self.helper = DiagnosisHelper(FileChannel(self.directory), poll_s=0.1)
            (self.directory / "ready").write_text(str(self.steps))
        if self.helper is not None:
            self.helper.step()
            if self.helper.results:
                self.helper.close()
                return False
        return now - self.started < self.max_s


def kept_loss(loop: Loop, *, leak: bool = True) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    train_epoch(model, opt, loop, leak=leak)


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loop: Loop, *,
                leak: bool) -> None:
    losses: list[Any] = []
    while True:
        x, y = torch.randn(64, 128), torch.randn(64, 1)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        xv = torch.randn(64, 128)
        val_loss = ((model(xv) - y) ** 2).mean()  # LEAK: kept-loss (no torch.no_grad())
        if leak:
            losses.append(val_loss)  # the bug: the tensor, with its graph
        else:
            losses.append(val_loss.item())
            del losses[:-100]
        if not loop.tick():
            return


class CachingDataset(Dataset[Any]):
    """Decodes a sample per index and memoises it; the index space never repeats, so the
    cache only grows (the bug: an unbounded memo)."""

    def __init__(self, n: int = 1_000_000) -> None:
        self.n = n
        self.cache: dict[int, list[float]] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> torch.Tensor:
        sample = self.cache.get(idx)
        if sample is None:
            sample = [float(i % 251) * 0.5 for i in range(idx % 7, idx % 7 + 2048)]  # LEAK: cache
            self.cache[idx] = sample
        return torch.tensor(sample[:128])


def dataset_cache(loop: Loop, *, workers: int = 0) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ds = CachingDataset()
    loader = DataLoader(ds, batch_size=32, num_workers=workers,
                        persistent_workers=workers > 0)
    for batch in loader:
        loss = (model(batch) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not loop.tick():
            return


class ActivationRecorder:
    """Keeps activations "for later analysis", moved off the accelerator first."""

    def __init__(self) -> None:
        self.kept: list[torch.Tensor] = []

    def record(self, h: torch.Tensor) -> None:
        self.kept.append(h.detach().cpu().clone())  # LEAK: offload


def offload(loop: Loop) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    recorder = ActivationRecorder()
    while True:
        x = torch.randn(64, 128)
        h = model[1](model[0](x))
        out = model[4](model[3](model[2](h)))
        loss = (out ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        recorder.record(h)
        if not loop.tick():
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.leaks")
    p.add_argument("scenario", choices=["kept-loss", "dataset-cache", "worker-cache",
                                        "offload", "healthy"])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--max-s", type=float, default=60.0)
    a = p.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)
    loop = Loop(a.dir, warmup_s=a.warmup_s, max_s=a.max_s)
    if a.scenario == "kept-loss":
        kept_loss(loop)
    elif a.scenario == "healthy":
        kept_loss(loop, leak=False)
    elif a.scenario == "dataset-cache":
        dataset_cache(loop)
    elif a.scenario == "worker-cache":
        dataset_cache(loop, workers=2)
    else:
        offload(loop)
    answered = loop.helper is not None and bool(loop.helper.results)
    print(json.dumps({"steps": loop.steps, "answered": answered,
                      "tracing_after": tracemalloc.is_tracing()}))
    return 0 if answered else 3


if __name__ == "__main__":
    sys.exit(main())
