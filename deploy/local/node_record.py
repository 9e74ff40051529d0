"""Recording real traces through the real-node harness, with the kernel's ground truth.

Called by ``data/real/record.py`` (the shipped traces under ``data/real/``), by the soak
benchmark (:mod:`deploy.local.node_soak`) and by the real-kernel tests. A recording starts a
:class:`deploy.local.node.RealNode` with a named mix of workloads (:data:`MIXES`), lets it run,
then reads the whole span back from its Prometheus with :func:`training.history.pull_history`
(cAdvisor -> Prometheus -> the trace format of :mod:`detector.traces`), and writes the labels
from the supervisor's event log: every start, every kernel OOM kill (the moment the cgroup's
``oom_kill`` count rose), every exit with its status and reason.

Besides the window engine's inputs the trace carries the memory breakdown real nodes export,
under cAdvisor's names (:data:`BREAKDOWN`): ``container_memory_cache``,
``container_memory_mapped_file``, ``container_memory_usage_bytes``,
``container_memory_failcnt``, and ``container_oom_events_total``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from deploy.local import cadvisor
from deploy.local.node import RealNode, Workload

MIB = 1 << 20

BREAKDOWN: tuple[str, ...] = (
    "container_memory_cache",
    "container_memory_mapped_file",
    "container_memory_usage_bytes",
    "container_memory_failcnt",
    "container_oom_events_total",
)
"""cAdvisor series recorded beside the window engine's inputs (not read by it today)."""

TORCH_LIMIT = 768 * MIB  # torch's own import is ~300 MiB anonymous memory (CUDA build)


def _w(pod: str, kind: str, limit_mib: int, *args: str, leaky: bool = False,
       cpu: int = 500, container: str = "main") -> Workload:
    return Workload(pod=pod, kind=kind, memory_limit_bytes=limit_mib * MIB,
                    args=tuple(args), leaky=leaky, cpu_millicores=cpu, container=container)


def sidecar_mix() -> list[Workload]:
    """Pods of two containers (session 9, ~30 min): beside each, a small log shipper that
    exits every 3-4 min for a reason other than an OOM kill (its restarts back off as the
    kubelet's do). A leak in the main container (OOM ~30 min in), a crash-looping main
    container (OOM every ~6 min), a healthy warm-up, and a pod whose *sidecar* leaks under
    its own small limit beside a large healthy main container. Each pod is scored by its
    first container (the leaking one where one leaks)."""
    def shipper(pod: str, period_s: str) -> Workload:
        return _w(pod, "flap", 128, "--base-mib", "30", "--period-s", period_s,
                  container="shipper", cpu=200)

    return [
        _w("sc-leak", "leak", 384, "--onset-s", "300", "--rate-mib-min", "12",
           "--base-mib", "30", leaky=True),
        shipper("sc-leak", "240"),
        _w("sc-crashloop", "leak", 256, "--onset-s", "0", "--rate-mib-min", "40",
           "--base-mib", "20", leaky=True),
        shipper("sc-crashloop", "180"),
        _w("sc-healthy", "warmup", 320, "--plateau-mib", "150", "--tau-s", "300"),
        shipper("sc-healthy", "200"),
        _w("sc-sidecar-leak", "leak", 160, "--onset-s", "120", "--rate-mib-min", "8",
           "--base-mib", "10", leaky=True, container="shipper", cpu=200),
        _w("sc-sidecar-leak", "warmup", 512, "--plateau-mib", "200", "--tau-s", "120"),
    ]


def soak_mix() -> list[Workload]:
    """A dozen mixed workloads for the ~60 min soak (leaks OOM in ~5-25 min, some loop)."""
    return [
        _w("trainer-healthy-0", "trainer", 768),
        _w("trainer-healthy-1", "trainer", 768),
        _w("trainer-kept-loss", "trainer-kept-loss", 768, "--onset-s", "300",
           "--rate-mib-min", "25", leaky=True),
        _w("trainer-loader-leak", "trainer-loader-leak", 768, "--onset-s", "240",
           "--rate-mib-min", "20", leaky=True),
        _w("trainer-dataset-cache", "trainer-dataset-cache", 768, "--onset-s", "600",
           "--rate-mib-min", "30", leaky=True),
        _w("pagecache-reader", "pagecache", 256, "--file-mib", "400", "--read-mib-s", "40"),
        _w("gc-sawtooth-fast", "sawtooth", 256, "--base-mib", "40", "--peak-mib", "120",
           "--period-s", "60"),
        _w("gc-sawtooth-slow", "sawtooth", 320, "--base-mib", "40", "--peak-mib", "200",
           "--period-s", "600"),
        _w("warmup-plateau", "warmup", 256, "--plateau-mib", "170", "--tau-s", "600"),
        _w("crashloop-leak", "leak", 256, "--onset-s", "0", "--rate-mib-min", "40",
           "--base-mib", "20", leaky=True),
        _w("slow-leak", "leak", 384, "--onset-s", "600", "--rate-mib-min", "15",
           "--base-mib", "20", leaky=True),
        _w("late-leak", "leak", 256, "--onset-s", "1800", "--rate-mib-min", "20",
           "--base-mib", "30", leaky=True),
    ]


def holdout_mix(seed: int = 20261201) -> list[Workload]:
    """A held-out dozen, its parameters drawn from their own ranges by ``seed`` (session 6).

    Written before anyone looked at podguard on it and never tuned on: the ranges differ from
    :func:`soak_mix`'s fixed values (other limits, rates, onsets, periods, plateaus), so the
    shipped ``data/real/holdout.csv.gz`` is a real trace no rule or threshold was fitted to."""
    import random

    r = random.Random(seed)

    def u(lo: float, hi: float) -> str:
        return f"{r.uniform(lo, hi):.0f}"

    saw_lim = r.choice((192, 256, 384))
    slow_lim = r.choice((256, 320, 448))
    warm_lim = r.choice((192, 256, 384))
    pc_lim = r.choice((160, 224, 320))
    return [
        _w("h-trainer-healthy", "trainer", 768, "--steps-per-s", u(2, 6)),
        _w("h-trainer-kept-loss", "trainer-kept-loss", 768, "--onset-s", u(60, 900),
           "--rate-mib-min", u(12, 40), leaky=True),
        _w("h-trainer-loader-leak", "trainer-loader-leak", 768, "--onset-s", u(60, 900),
           "--rate-mib-min", u(12, 40), leaky=True),
        _w("h-trainer-dataset-cache", "trainer-dataset-cache", 768, "--onset-s", u(60, 900),
           "--rate-mib-min", u(12, 40), leaky=True),
        _w("h-pagecache-reader", "pagecache", pc_lim,
           "--file-mib", f"{pc_lim * r.uniform(1.3, 2.5):.0f}", "--read-mib-s", u(15, 60)),
        _w("h-sawtooth", "sawtooth", saw_lim, "--base-mib", u(15, 50),
           "--peak-mib", f"{saw_lim * r.uniform(0.3, 0.55):.0f}", "--period-s", u(20, 240)),
        _w("h-sawtooth-slow", "sawtooth", slow_lim, "--base-mib", u(15, 50),
           "--peak-mib", f"{slow_lim * r.uniform(0.3, 0.55):.0f}", "--period-s", u(300, 1200)),
        _w("h-warmup", "warmup", warm_lim,
           "--plateau-mib", f"{warm_lim * r.uniform(0.4, 0.7):.0f}", "--tau-s", u(30, 1500)),
        _w("h-crashloop", "leak", r.choice((160, 224, 288)), "--onset-s", "0",
           "--rate-mib-min", u(30, 90), "--base-mib", u(10, 40), leaky=True),
        _w("h-leak-a", "leak", r.choice((256, 384, 512)), "--onset-s", u(0, 1200),
           "--rate-mib-min", u(8, 30), "--base-mib", u(10, 60), leaky=True),
        _w("h-leak-b", "leak", r.choice((192, 256, 320)), "--onset-s", u(600, 2100),
           "--rate-mib-min", u(10, 40), "--base-mib", u(10, 60), leaky=True),
        _w("h-leak-c", "leak", r.choice((256, 320)), "--onset-s", u(0, 300),
           "--rate-mib-min", u(40, 120), "--base-mib", u(10, 40), leaky=True),
    ]


def sidecar_holdout_mix(seed: int = 20261203) -> list[Workload]:
    """Held-out pods of two containers, their parameters drawn by ``seed`` (session 12).

    Written before anyone looked at podguard on it, after the change that reads a young
    container incarnation's growth and projects the binding container's own series
    (:mod:`detector.windows.assemble`), and never tuned on: ranges of its own around
    :func:`sidecar_mix`'s fixed values. Each pod is scored by its first container. A
    crash-looping main container beside a restarting shipper; a leaking shipper beside a
    main container warming up; a slow main leak beside a restarting shipper; a shipper
    crash-looping under a small limit beside a flat main; two healthy pods (both containers
    warming up together; a page-cache reader beside a restarting shipper)."""
    import random

    r = random.Random(seed)

    def u(lo: float, hi: float) -> str:
        return f"{r.uniform(lo, hi):.0f}"

    def shipper(pod: str) -> Workload:
        return _w(pod, "flap", 128, "--base-mib", u(20, 40), "--period-s", u(150, 320),
                  container="shipper", cpu=200)

    loop_lim = r.choice((192, 256, 320))
    side_lim = r.choice((128, 160, 192))
    slow_lim = r.choice((320, 384, 448))
    warm_lim = r.choice((256, 320, 384))
    pc_lim = r.choice((160, 224))
    return [
        _w("sh-crashloop", "leak", loop_lim, "--onset-s", "0", "--rate-mib-min", u(30, 80),
           "--base-mib", u(10, 40), leaky=True),
        shipper("sh-crashloop"),
        _w("sh-sidecar-leak", "leak", side_lim, "--onset-s", u(60, 600), "--rate-mib-min",
           u(6, 20), "--base-mib", u(10, 30), leaky=True, container="shipper", cpu=200),
        _w("sh-sidecar-leak", "warmup", 512, "--plateau-mib", u(120, 300), "--tau-s",
           u(60, 600)),
        _w("sh-main-leak", "leak", slow_lim, "--onset-s", u(120, 900), "--rate-mib-min",
           u(8, 25), "--base-mib", u(20, 60), leaky=True),
        shipper("sh-main-leak"),
        _w("sh-sidecar-loop", "leak", r.choice((96, 128)), "--onset-s", "0",
           "--rate-mib-min", u(20, 60), "--base-mib", u(5, 20), leaky=True,
           container="shipper", cpu=200),
        _w("sh-sidecar-loop", "warmup", 384, "--plateau-mib", u(80, 200), "--tau-s",
           u(30, 120)),
        _w("sh-healthy", "warmup", warm_lim,
           "--plateau-mib", f"{warm_lim * r.uniform(0.4, 0.7):.0f}", "--tau-s", u(60, 900)),
        _w("sh-healthy", "warmup", 128, "--plateau-mib", u(30, 80), "--tau-s", u(30, 300),
           container="sidecar", cpu=200),
        _w("sh-pagecache", "pagecache", pc_lim,
           "--file-mib", f"{pc_lim * r.uniform(1.3, 2.5):.0f}", "--read-mib-s", u(15, 60)),
        shipper("sh-pagecache"),
    ]


MIXES: dict[str, list[Workload]] = {
    # The shipped recording (data/real/): every shape once, ~20 minutes.
    "mixed": [
        _w("trainer-healthy", "trainer", 768),
        _w("trainer-kept-loss", "trainer-kept-loss", 768, "--onset-s", "120",
           "--rate-mib-min", "45", leaky=True),
        _w("trainer-loader-leak", "trainer-loader-leak", 768, "--onset-s", "60",
           "--rate-mib-min", "40", leaky=True),
        _w("trainer-dataset-cache", "trainer-dataset-cache", 768, "--onset-s", "60",
           "--rate-mib-min", "40", leaky=True),
        _w("pagecache-reader", "pagecache", 256, "--file-mib", "400", "--read-mib-s", "40"),
        _w("gc-sawtooth", "sawtooth", 256, "--base-mib", "40", "--peak-mib", "120",
           "--period-s", "90"),
        _w("warmup-plateau", "warmup", 256, "--plateau-mib", "150", "--tau-s", "180"),
        _w("crashloop-leak", "leak", 256, "--onset-s", "0", "--rate-mib-min", "60",
           "--base-mib", "20", leaky=True),
        _w("slow-leak", "leak", 320, "--onset-s", "180", "--rate-mib-min", "25",
           "--base-mib", "20", leaky=True),
    ],
    # A longer recording: the soak's dozen workloads (data/real/soak.csv.gz, 35 minutes).
    "soak": soak_mix(),
    # The held-out recording of session 6 (data/real/holdout.csv.gz): drawn parameters.
    "holdout": holdout_mix(),
    # Pods of two containers, sidecars restarting beside them (session 9, ~30 minutes).
    "sidecars": sidecar_mix(),
    # Held-out pods of two containers, drawn parameters (session 12, ~36 minutes).
    "sidecars-holdout": sidecar_holdout_mix(),
    # The real-kernel tests (~7 minutes): two leaks that OOM 4-6 minutes after their start (a
    # real PyTorch trainer keeping its loss with the graph, and a plain allocation leak), a
    # crash-looping leak that OOMs every ~65 s, and three healthy shapes.
    "quick": [
        _w("fast-leak", "leak", 200, "--onset-s", "20", "--rate-mib-min", "240",
           "--base-mib", "20", leaky=True),
        _w("leak", "leak", 256, "--onset-s", "20", "--rate-mib-min", "45",
           "--base-mib", "20", leaky=True),
        _w("trainer-kept-loss", "trainer-kept-loss", 600, "--onset-s", "20",
           "--rate-mib-min", "60", leaky=True),
        _w("pagecache-reader", "pagecache", 128, "--file-mib", "200", "--read-mib-s", "40"),
        _w("gc-sawtooth", "sawtooth", 200, "--base-mib", "30", "--peak-mib", "100",
           "--period-s", "20"),
        _w("warmup-plateau", "warmup", 200, "--plateau-mib", "100", "--tau-s", "20"),
    ],
}


@dataclass
class Recording:
    trace: pd.DataFrame
    labels: dict[str, Any]
    extra: Any = None  # what ``before_stop`` returned


def _arg(w: Workload, name: str) -> float | None:
    a = list(w.args)
    if name in a:
        return float(a[a.index(name) + 1])
    return None


def labels_from_events(node: RealNode, events: Sequence[dict[str, Any]], *, start: float,
                       end: float, step: float) -> dict[str, Any]:
    """The labels file: per pod its spec, starts, kernel OOM kills and exits (unix seconds)."""
    pods: dict[str, Any] = {}
    by_container: dict[tuple[str, str], dict[str, Any]] = {}
    for w in node.workloads:
        entry = {
            "namespace": node.namespace, "container": w.container, "kind": w.kind,
            "args": list(w.args), "memory_limit_bytes": w.memory_limit_bytes,
            "cpu_millicores": w.cpu_millicores, "meant_to_leak": w.leaky,
            "leak_onset_after_start_s": _arg(w, "--onset-s") if w.leaky else None,
            "starts": [], "oom_kills": [], "exits": []}
        if w.pod not in pods:  # a pod's first workload is the container it is scored by
            pods[w.pod] = entry
        else:  # its others are its sidecars, recorded beside it
            pods[w.pod].setdefault("sidecars", {})[w.container] = entry
        by_container[(w.pod, w.container)] = entry
    version = None
    for e in events:
        kind = e.get("event")
        if kind == "supervisor_start":
            version = e.get("cgroup_version")
        pod = by_container.get((str(e.get("pod")), str(e.get("container", "main"))))
        if pod is None:
            continue
        if kind == "start":
            pod["starts"].append(round(float(e["ts"]), 3))
        elif kind == "oom_kill":
            pod["oom_kills"].append(round(float(e["ts"]), 3))
        elif kind == "exit" and e.get("reason") != "Stopped":
            pod["exits"].append({k: e.get(k) for k in (
                "ts", "reason", "returncode", "signal", "oom_kills", "peak_bytes", "restart",
                "ran_s")})
    return {
        "about": ("Real processes under real memory cgroups, measured by cAdvisor "
                  f"{cadvisor.VERSION} (github.com/google/cadvisor/lib), scraped by Prometheus "
                  "and read back with training.history.pull_history. oom_kills: the time the "
                  "cgroup's kernel oom_kill count was seen to rise (polled every 0.25 s); "
                  "exits: the supervisor's wait() on the container's process, reason "
                  "OOMKilled when the kernel count rose. leak_onset_after_start_s is what the "
                  "workload was told (not ground truth). A pod of several containers is "
                  "scored by its first; the others are under its sidecars."),
        "start": round(start, 3), "end": round(end, 3), "step_s": step,
        "scrape_interval": node.scrape_interval,
        "cgroup_version": version, "kernel": platform.release(),
        "breakdown_metrics": list(BREAKDOWN),
        "pods": pods,
    }


def pull_trace(url: str, *, start: float, end: float, step: float,
               namespace: str) -> pd.DataFrame:
    """The recorded span from Prometheus: the engine's inputs, the breakdown, KSM limits."""
    from detector import traces as tr
    from training.history import HISTORY_METRICS, pull_history

    matcher = f'namespace="{namespace}"'
    start, end = float(int(start)), float(int(end) + 1)  # whole seconds: the client's datetimes
    main = pull_history(url, start=start, end=end, step=step,
                        metrics=tuple(dict.fromkeys((*HISTORY_METRICS, *BREAKDOWN))),
                        matcher=matcher)
    limits = pull_history(url, start=start, end=end, step=step, metrics=(tr.KSM_LIMITS,),
                          matcher=matcher + ',resource="memory"', incidents=False)
    df = pd.concat([main, limits], ignore_index=True)
    df = df.sort_values(["timestamp", "pod", "metric"], kind="stable").reset_index(drop=True)
    return tr.validate_trace(df, source=f"prometheus {url}")


def record(state: Path, workloads: Sequence[Workload], *, duration_s: float,
           step: float = 5.0, scrape_interval: str = "5s", tag: str | None = None,
           stop_when: Callable[[RealNode], bool] | None = None,
           on_start: Callable[[RealNode], None] | None = None,
           before_stop: Callable[[RealNode, float, float], Any] | None = None,
           restart_backoff_s: float = 2.0, restart_backoff_max_s: float | None = None,
           report: Callable[[str], None] = print) -> Recording:
    """Run ``workloads`` for ``duration_s`` (or until ``stop_when``), then read it all back.

    ``on_start(node)`` runs once the harness is up (e.g. to load rules into its Prometheus);
    ``before_stop(node, start, end)`` runs after the trace was read, while Prometheus still
    runs; its result is :attr:`Recording.extra`.
    """
    node = RealNode(state, workloads, scrape_interval=scrape_interval, tag=tag,
                    restart_backoff_s=restart_backoff_s,
                    restart_backoff_max_s=restart_backoff_max_s)
    with node:
        if on_start is not None:
            on_start(node)
        node.wait_for_scrapes(timeout=120)
        start = time.time() - 5
        deadline = time.monotonic() + duration_s
        last = 0.0
        while time.monotonic() < deadline:
            time.sleep(5)
            if stop_when is not None and stop_when(node):
                break
            if time.monotonic() - last > 60:
                last = time.monotonic()
                kills = {p: len(t) for p, t in node.oom_kills().items() if t}
                report(f"[record] {time.time() - start:.0f}s, OOM kills so far: {kills}")
        time.sleep(float(scrape_interval.rstrip("s")) * 2)
        end = time.time()
        trace = pull_trace(node.prometheus_url, start=start, end=end, step=step,
                           namespace=node.namespace)
        labels = labels_from_events(node, node.events(), start=start, end=end, step=step)
        extra = before_stop(node, start, end) if before_stop is not None else None
    return Recording(trace, labels, extra)


def write(rec: Recording, out: Path, name: str) -> tuple[Path, Path]:
    """``<out>/<name>.csv.gz`` and ``<out>/<name>.labels.json``, each written atomically."""
    from detector.traces import save_trace

    out.mkdir(parents=True, exist_ok=True)
    trace_path = save_trace(rec.trace, out / f"{name}.csv.gz")
    labels_path = out / f"{name}.labels.json"
    tmp = labels_path.with_name(f".{labels_path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(rec.labels, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, labels_path)
    return trace_path, labels_path
