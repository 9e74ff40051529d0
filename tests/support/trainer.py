"""A real training process standing in for the container of a kwok pod (end-to-end tests).

kwok pods run nothing, so ``tests/stack/test_remediation_e2e.py`` starts one of these per pod it
sees Running, and stops it when the pod goes. It is a real PyTorch training loop (a small
MLP on a fixed synthetic regression task, one thread) with a real leak: it keeps every
step's hidden activations "for a debug histogram" (``--leak-bytes`` per step), so its
memory really grows. It exposes its own memory in cAdvisor format on 127.0.0.1 (port chosen
by the kernel, written to ``--port-file``) for Prometheus to scrape:

- ``container_memory_working_set_bytes`` = VmRSS of this process,
- ``container_memory_rss`` = RssAnon of this process,
- ``container_spec_memory_limit_bytes`` = the pod's memory limit (``--limit-bytes``),

labelled ``namespace, pod, container`` and ``id`` (``/kubepods/pod<uid>/<container>``, as
cAdvisor does, so a recreated pod with the same name is a new series).

It honours podguard's checkpoint requests with :class:`CheckpointResponder`, over podguard's
pod channel (``--endpoint``) with the pod-bound token the kubelet shim wrote for it
(``--token-file``, audience podguard; the pod has no Kubernetes API access): it saves
model, optimizer and step to its volume directory, acknowledges, then holds (no further
step) until it is stopped. At start it resumes from the newest checkpoint in that directory.
Every completed step is appended to ``<data>/steps.log`` as ``<pod uid> <step>``, and
lifecycle events to ``<data>/trainer.jsonl``,
so the test can prove that no completed step was lost.

Run: ``python -m tests.support.trainer --namespace ns --pod p --uid U --data DIR ...``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector


def _status_bytes(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) * 1024.0
    return float("nan")


class _MemoryCollector(Collector):
    def __init__(self, labels: dict[str, str], limit_bytes: float) -> None:
        self.labels = labels
        self.limit = limit_bytes

    def collect(self) -> Iterator[Metric]:
        names = list(self.labels)
        values = list(self.labels.values())
        for name, help_, value in (
                ("container_memory_working_set_bytes", "Current working set in bytes.",
                 _status_bytes("VmRSS")),
                ("container_memory_rss", "Size of RSS in bytes.", _status_bytes("RssAnon")),
                ("container_spec_memory_limit_bytes", "Memory limit for the container.",
                 self.limit)):
            fam = GaugeMetricFamily(name, help_, labels=names)
            fam.add_metric(values, value)
            yield fam


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--pod", required=True)
    ap.add_argument("--uid", required=True)
    ap.add_argument("--container", default="trainer")
    ap.add_argument("--data", type=Path, required=True, help="the pod's volume directory")
    ap.add_argument("--endpoint", required=True, help="podguard's pod channel URL")
    ap.add_argument("--token-file", required=True, help="the pod's projected token")
    ap.add_argument("--limit-bytes", type=float, required=True)
    ap.add_argument("--port-file", type=Path, required=True)
    ap.add_argument("--leak-bytes", type=int, default=32768, help="leaked per step")
    ap.add_argument("--step-interval", type=float, default=0.5, help="seconds per step")
    ap.add_argument("--ack-delay", type=float, default=0.0,
                    help="seconds between seeing a request and answering it")
    ap.add_argument("--never-ack", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from detector.remediation.checkpoint import (
        ChannelClient,
        CheckpointResponder,
        latest_checkpoint,
        torch_saver,
    )

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data: Path = args.data
    data.mkdir(parents=True, exist_ok=True)
    ckpt_dir = data / "checkpoints"
    events = data / "trainer.jsonl"
    steps_log = data / "steps.log"

    batch, features = 64, 32
    hidden = max(8, args.leak_bytes // (batch * 4))  # one step's activations = leak_bytes
    model = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    w_true = torch.randn(features, 1, generator=gen)
    start = 0
    found = latest_checkpoint(ckpt_dir)
    if found is not None:
        state = torch.load(found.path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"]) + 1
        _append(events, {"event": "resumed", "uid": args.uid, "from_step": int(state["step"]),
                         "path": str(found.path), "ts": time.time()})

    labels = {"namespace": args.namespace, "pod": args.pod, "container": args.container,
              "id": f"/kubepods/pod{args.uid}/{args.container}"}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MemoryCollector(labels, args.limit_bytes))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(str(server.server_port))
    os.replace(tmp, args.port_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    responder = CheckpointResponder(directory=ckpt_dir,
                                    channel=ChannelClient(args.endpoint, args.token_file),
                                    poll_interval_s=0.5, hold_s=900.0)
    _append(events, {"event": "started", "uid": args.uid, "pid": os.getpid(),
                     "start_step": start, "port": server.server_port, "ts": time.time()})
    debug_activations: list[torch.Tensor] = []  # the leak: never cleared
    seen_request_at: float | None = None
    completed = start - 1
    with open(steps_log, "a", buffering=1) as steps_fh:
        step = start
        while not stop.is_set():
            x = torch.randn(batch, features, generator=gen)
            y = x @ w_true
            h = model[1](model[0](x))
            loss = torch.nn.functional.mse_loss(model[2](h), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            debug_activations.append(h.detach().clone())
            steps_fh.write(f"{args.uid} {step}\n")  # step completed
            completed = step
            if not args.never_ack:
                if seen_request_at is None and responder.pending() is not None:
                    seen_request_at = time.time()
                    _append(events, {"event": "request_seen", "uid": args.uid, "step": step,
                                     "ts": seen_request_at})
                if (seen_request_at is not None
                        and time.time() - seen_request_at >= args.ack_delay):
                    req = responder.pending(force=True)
                    if req is not None:
                        snapshot: dict[str, Any] = {
                            "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "step": step}
                        saver = torch_saver(snapshot.copy)
                        path = responder.save_and_acknowledge(req, saver, step=step)
                        if path is None:
                            _append(events, {"event": "ack_refused", "uid": args.uid,
                                             "step": step, "request": req.id,
                                             "ts": time.time()})
                        else:
                            _append(events, {"event": "acknowledged", "uid": args.uid,
                                             "step": step, "request": req.id,
                                             "path": str(path), "ts": time.time()})
                            responder.hold(stop=stop.is_set)
                            _append(events, {"event": "hold_ended", "uid": args.uid,
                                             "stopping": stop.is_set(), "ts": time.time()})
                    seen_request_at = None
            if stop.is_set():
                break
            step += 1
            stop.wait(args.step_interval)
    _append(events, {"event": "stopped", "uid": args.uid, "last_step": completed,
                     "leaked_bytes": sum(t.numel() * 4 for t in debug_activations),
                     "ts": time.time()})
    server.shutdown()
    thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
