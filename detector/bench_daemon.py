"""``python -m detector.bench_daemon``: the daemon's figures (a benchmark that prints).

1. **Kafka ingest** - samples decoded and folded into windows per CPU second (= per core),
   for the podguard batch format (one message per pod scrape, ``batch``, or per node scrape,
   ``batch_node``) and the remote-write adapter's one-sample messages:
   (a) in-process, from encoded records (decoder + window engine, no network);
   (b) through the real broker when ``--bootstrap`` (or ``PODGUARD_KAFKA_BOOTSTRAP``) is given:
   produced to a fresh topic, then consumed by :class:`~detector.sources.kafka.KafkaSource`
   (kafka-python record parsing included) and folded.
2. **End-to-end latency** - a live source emits scrapes of 110 pods aligned to the step
   (timestamps = emission time); pods have 4 h of history, one leaks. For each step, the time
   from the arrival of the newest sample in the window to the moment the verdicts reached the
   sink; separately for the positive (alert) verdicts of the leaking pod.
3. **CPU and RSS at 110 pods** - a fresh process runs the daemon (default settings: 4 h
   windows, 60 s step) on a live source of 110 pods x 9 series scraped every 15 s. The
   source first delivers ``sources.prometheus.backfill_s`` (4 h) of history the way the
   Prometheus source does: oldest first, in slices of ``sources.prometheus.backfill_chunk_s``
   (1800 s), one slice per poll of the daemon's loop (so folded, and scored when a step is
   due, like any poll), not caught up until the last slice; ``--backfill-chunk-s 0`` delivers
   it in one batch instead (the figure before slicing). Prints its CPU share of one core
   while streaming, and its RSS when the model is loaded, at its peak during the backfill
   (the kernel's high-water mark, reset once the model is loaded), right after the backfill,
   and while streaming.

Targets (issue 4): >= 50,000 samples/s per core ingested; < 1 s from the sample to the alert;
< 2 % of one core and < 400 MB RSS at 110 pods.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detector import channels as chan
from detector.sinks.base import SynchronousSink
from detector.sources.base import Delivery, SampleColumns, SourceStatus
from detector.sources.kafka_codec import Decoder, encode_adapter, encode_batch

METRICS: tuple[str, ...] = (*chan.read_metrics("cadvisor"),
                            *(c.metric for c in chan.CHANNEL_TABLE
                              if c.exporter == "kube-state-metrics" and not c.fact))
"""The series each synthetic pod exports: every cAdvisor metric of the channel table
(``detector.channels``: channels, then limits) and kube-state-metrics' channels (the restart
counter; not its limit metric, a fallback the engine does not need here, nor the last
terminated reason, which kube-state-metrics exports only for a container that has ended)."""
GIB = float(1 << 30)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its high-water mark (``VmHWM``), MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Resets ``VmHWM`` to the current RSS (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _value(metric: str, pod: int, t: float, leaky: bool = False) -> float:
    """A synthetic sample of ``metric``, by its row of the channel table: leak channels at
    1 GiB (plus 400 MiB/h for the leaky pod), limits at 4 GiB, other byte gauges at 200 MB,
    counters rising steadily (restarts stay 0)."""
    row = chan.BY_NAME.get(chan.METRIC_CHANNEL.get(metric, ""))
    if row is None:  # a limit
        return 4 * GIB
    if row.leak:
        base = 1.0 * GIB + 1e6 * pod
        return base + ((t - LEAK_T0) * 400 * 2**20 / 3600 if leaky else 0.0)
    if row.kind == "rate":
        return 0.5 * t % 1e7 if row.unit == "cores" else 1e5 * t % 1e12
    if row.kind == "gauge" and row.unit == "bytes":
        return 2e8
    return 0.0


LEAK_T0 = 0.0


def _scrape(cols: SampleColumns, t: float, pods: int, leaky_pod: int = -1) -> None:
    for p in range(pods):
        for m in METRICS:
            cols.append(t, "ml", f"pod-{p}", "main", "node-a", m, _value(m, p, t, p == leaky_pod))


# ------------------------------------------------------------------------------ 1. ingest


def bench_ingest(pods: int = 110, scrapes: int = 200) -> dict[str, Any]:
    from detector.windows import WindowEngine

    t0 = time.time() - 15.0 * scrapes
    batch_msgs = []
    adapter_msgs = []
    for k in range(scrapes):
        t = t0 + 15.0 * k
        for p in range(pods):
            labels = {"namespace": "ml", "pod": f"pod-{p}", "container": "main", "node": "n"}
            batch_msgs.append(encode_batch([(m, labels, [(t, _value(m, p, t))])
                                            for m in METRICS]))
            if k < scrapes // 4:
                adapter_msgs += [encode_adapter(m, labels, t, _value(m, p, t)) for m in METRICS]
    out: dict[str, Any] = {}
    for name, msgs, per in (("batch", batch_msgs, len(METRICS)), ("adapter", adapter_msgs, 1)):
        engine = WindowEngine()
        dec = Decoder()
        c0, w0 = _cpu(), time.perf_counter()
        n = 0
        chunk = 5000 // per
        for i in range(0, len(msgs), chunk):
            cols = SampleColumns()
            for m in msgs[i:i + chunk]:
                dec.decode(m, cols)
            n += engine.ingest(cols.columns()).accepted
        cpu = _cpu() - c0
        out[f"in_process_{name}"] = {"samples": n, "cpu_s": round(cpu, 3),
                                     "wall_s": round(time.perf_counter() - w0, 3),
                                     "samples_per_cpu_s": round(n / cpu)}
    return out


def bench_ingest_broker(bootstrap: str, pods: int = 110, scrapes: int = 100) -> dict[str, Any]:
    import uuid

    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from detector.settings import KafkaSourceSettings
    from detector.sources.kafka import KafkaSource
    from detector.windows import WindowEngine

    out: dict[str, Any] = {}
    for fmt in ("batch_node", "batch", "adapter"):
        topic = f"pg-bench-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="podguard-bench")
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        admin.close()
        prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=1 << 20,
                             acks=1, client_id="podguard-bench")
        t0 = time.time() - 15.0 * scrapes
        n_sent = 0
        for k in range(scrapes if fmt != "adapter" else scrapes // 4):
            t = t0 + 15.0 * k
            if fmt == "batch_node":  # one message per node scrape (all pods)
                prod.send(topic, encode_batch([
                    (m, {"namespace": "ml", "pod": f"pod-{p}", "container": "main",
                         "node": "n"}, [(t, _value(m, p, t))])
                    for p in range(pods) for m in METRICS]))
                n_sent += pods * len(METRICS)
                continue
            for p in range(pods):
                labels = {"namespace": "ml", "pod": f"pod-{p}", "container": "main",
                          "node": "n"}
                if fmt == "batch":
                    prod.send(topic, encode_batch([(m, labels, [(t, _value(m, p, t))])
                                                   for m in METRICS]))
                else:
                    for m in METRICS:
                        prod.send(topic, encode_adapter(m, labels, t, _value(m, p, t)))
                n_sent += len(METRICS)
        prod.flush(timeout=120)
        prod.close()
        src = KafkaSource(KafkaSourceSettings(bootstrap_servers=[bootstrap], topic=topic,
                                              group_id=topic, dead_letter_topic=""),
                          logger=logging.getLogger("podguard.bench"))
        src.start()
        engine = WindowEngine()
        n = 0
        deadline = time.monotonic() + 120
        # wait for the first records (group join), then time the rest
        first = src.poll(5.0)
        while not len(first.samples) and time.monotonic() < deadline:
            first = src.poll(1.0)
        n += engine.ingest(first.samples.columns()).accepted
        c0, w0 = _cpu(), time.perf_counter()
        timed = 0
        while n + timed < n_sent and time.monotonic() < deadline:
            d = src.poll(1.0)
            if len(d.samples):
                timed += engine.ingest(d.samples.columns()).accepted
        cpu = _cpu() - c0
        src.close()
        out[f"broker_{fmt}"] = {"samples": timed, "cpu_s": round(cpu, 3),
                                "wall_s": round(time.perf_counter() - w0, 3),
                                "samples_per_cpu_s": round(timed / cpu) if cpu else None}
    return out


# ------------------------------------------------------------------------------ live source


class LiveScrapes:
    """A Source emitting a scrape of ``pods`` pods every ``interval_s`` of wall time, aligned
    to multiples of the interval, stamped with the emission time.

    History, either taken whole from :meth:`history`, or (``backfill_s`` > 0) delivered by
    ``poll`` first, as the Prometheus source does: oldest first, one slice of at most
    ``backfill_chunk_s`` per poll (0: all of it in one), not caught up until the last."""

    name = "bench"

    def __init__(self, pods: int, interval_s: float, leaky_pod: int = -1,
                 backfill_s: float = 0.0, backfill_chunk_s: float = 0.0) -> None:
        self.pods = pods
        self.interval_s = interval_s
        self.leaky_pod = leaky_pod
        self.arrivals: dict[float, float] = {}  # sample timestamp -> arrival (perf_counter)
        self._next = (time.time() // interval_s + 1) * interval_s
        # backfill still to deliver: scrapes [_backfill_from, _next at start), per slice
        self._backfill_from = self._next - math.floor(backfill_s / interval_s) * interval_s
        self._backfill_end = self._next
        self._slice_scrapes = (max(1, math.floor(backfill_chunk_s / interval_s))
                               if backfill_chunk_s > 0 else None)  # None: one batch
        self.backfill_slices = 0  # slices delivered so far

    @property
    def backfilling(self) -> bool:
        return self._backfill_from < self._backfill_end

    def _span(self, t0: float, t1: float) -> SampleColumns:
        """Scrapes at t0, t0 + interval, ... before t1."""
        cols = SampleColumns()
        for k in range(max(0, math.ceil((t1 - t0) / self.interval_s))):
            _scrape(cols, t0 + k * self.interval_s, self.pods, self.leaky_pod)
        return cols

    def history(self, hours: float) -> SampleColumns:
        return self._span(self._next - hours * 3600, self._next)

    def start(self) -> None:
        pass

    def poll(self, timeout: float) -> Delivery:
        if self.backfilling:
            t0 = self._backfill_from
            t1 = (self._backfill_end if self._slice_scrapes is None
                  else min(self._backfill_end, t0 + self._slice_scrapes * self.interval_s))
            self._backfill_from = t1
            self.backfill_slices += 1
            return Delivery(samples=self._span(t0, t1), messages=1, backfill=True)
        d = Delivery()
        wait = self._next - time.time()
        if wait > 0:
            time.sleep(min(timeout, wait))
            if self._next - time.time() > 0:
                return d
        t = self._next
        _scrape(d.samples, t, self.pods, self.leaky_pod)
        self.arrivals[t] = time.perf_counter()
        self._next += self.interval_s
        d.messages = 1
        return d

    def commit(self, tokens: Sequence[Any]) -> None:
        pass

    def now(self) -> float:
        return time.time()

    def clock_rate(self) -> float:
        return 1.0

    def status(self) -> SourceStatus:
        return SourceStatus(up=True, caught_up=not self.backfilling)

    def close(self, timeout: float = 5.0) -> None:
        pass


def _daemon(settings: Any, source: Any, sinks: list[Any]) -> Any:
    from prometheus_client import CollectorRegistry

    from detector.pipeline import Pipeline
    from detector.runtime.build import make_engine
    from detector.runtime.daemon import Daemon
    from detector.runtime.metrics import DaemonMetrics, StateView

    log = logging.getLogger("podguard.bench")
    metrics = DaemonMetrics(CollectorRegistry(), StateView(), process=False)
    return Daemon(settings=settings, source=source, pipeline=Pipeline.load(None),
                  engine=make_engine(settings), sinks=sinks, metrics=metrics, logger=log)


class _TimingSink(SynchronousSink):
    name = "timing"

    def __init__(self) -> None:
        self.got: list[tuple[float, float, bool]] = []  # (window end, perf time, any alert)

    def send(self, verdicts: Sequence[Any]) -> None:
        if verdicts:
            self.got.append((verdicts[0].ts, time.perf_counter(),
                             any(v.is_anomaly for v in verdicts)))



def bench_latency(pods: int = 110, step_s: float = 5.0, steps: int = 8) -> dict[str, Any]:
    global LEAK_T0
    from detector.settings import Settings

    settings = Settings.model_validate({"windows": {"horizon_s": 4 * 3600, "step_s": step_s},
                                        "detection": {"confirm_steps": 1},
                                        "runtime": {"lateness_s": 0.5}})
    src = LiveScrapes(pods, step_s, leaky_pod=0)
    LEAK_T0 = src._next - 3 * 3600
    sink = _TimingSink()
    daemon = _daemon(settings, src, [sink])
    daemon.fold(Delivery(samples=src.history(4.0)))
    while len(sink.got) < steps:
        daemon.turn()
    lat = [(got - src.arrivals[end], alert) for end, got, alert in sink.got
           if end in src.arrivals]
    all_l = np.array([x for x, _ in lat])
    alert_l = np.array([x for x, a in lat if a])
    return {"steps": len(lat), "pods": pods, "step_s": step_s, "lateness_s": 0.5,
            "sample_to_verdicts_s": {"median": round(float(np.median(all_l)), 3),
                                     "max": round(float(all_l.max()), 3)},
            "sample_to_alert_s": ({"median": round(float(np.median(alert_l)), 3),
                                   "max": round(float(alert_l.max()), 3),
                                   "alerts": int(alert_l.size)} if alert_l.size else None)}


def _watch_child(seconds: float, pods: int, backfill_chunk_s: float | None = None) -> None:
    """Runs in a fresh process: daemon at default settings on 110 live pods, after a backfill
    delivered in slices of ``backfill_chunk_s`` (None: the settings'; 0: one batch)."""
    from detector.settings import Settings

    settings = Settings.model_validate({"runtime": {"lateness_s": 0.5}})
    prom = settings.sources.prometheus
    chunk = prom.backfill_chunk_s if backfill_chunk_s is None else backfill_chunk_s
    src = LiveScrapes(pods, 15.0, backfill_s=prom.backfill_s, backfill_chunk_s=chunk)
    daemon = _daemon(settings, src, [])
    rss_loaded = _rss_mb()
    hwm = _reset_peak_rss()
    sampled = rss_loaded
    w0 = time.monotonic()
    while src.backfilling:  # one slice per turn, scored when a step is due
        daemon.turn()
        sampled = max(sampled, _rss_mb())
    backfill_wall = time.monotonic() - w0
    rss_after = _rss_mb()
    rss_backfill_peak = max(sampled, _rss_mb("VmHWM")) if hwm else sampled
    evaluations_backfill = daemon.summary.evaluations
    # settle one scoring step, then measure
    end = time.monotonic() + 65
    while time.monotonic() < end:
        daemon.turn()
    c0, w0 = _cpu(), time.monotonic()
    end = w0 + seconds
    peak = _rss_mb()
    while time.monotonic() < end:
        daemon.turn()
        peak = max(peak, _rss_mb())
    cpu, wall = _cpu() - c0, time.monotonic() - w0
    print(json.dumps({"pods": pods, "series": pods * len(METRICS), "wall_s": round(wall, 1),
                      "cpu_s": round(cpu, 2), "cpu_share_of_one_core": round(cpu / wall, 4),
                      "rss_mb_now": round(_rss_mb(), 1), "rss_mb_peak_measured": round(peak, 1),
                      "evaluations": daemon.summary.evaluations,
                      "torch_imported": "torch" in sys.modules,
                      "backfill_chunk_s": chunk or None, "backfill_slices": src.backfill_slices,
                      "backfill_wall_s": round(backfill_wall, 1),
                      "evaluations_during_backfill": evaluations_backfill,
                      "rss_mb_model_loaded": round(rss_loaded, 1),
                      "rss_mb_backfill_peak": round(rss_backfill_peak, 1),
                      "rss_mb_backfill_peak_from": "VmHWM" if hwm else "sampled after each poll",
                      "rss_mb_after_backfill": round(rss_after, 1)}))


def bench_watch(seconds: float, pods: int = 110,
                backfill_chunk_s: float | None = None) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    chunk = [] if backfill_chunk_s is None else ["--backfill-chunk-s", str(backfill_chunk_s)]
    out = subprocess.run([sys.executable, "-m", "detector.bench_daemon", "--_watch-child",
                          str(seconds), "--pods", str(pods), *chunk], capture_output=True,
                         text=True, env=env, cwd=root, check=False, timeout=seconds + 600)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stdout + out.stderr)[-2000:]}
    return dict(json.loads(lines[-1]))


def _seconds(text: str) -> float:
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, not {text}")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.bench_daemon", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default=os.environ.get("PODGUARD_KAFKA_BOOTSTRAP", ""),
                   help="Kafka bootstrap host:port for the through-the-broker figures")
    p.add_argument("--watch-seconds", type=float, default=120.0,
                   help="measured wall time of the 110-pod CPU/RSS run (120)")
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--backfill-chunk-s", type=_seconds, default=None, metavar="SECONDS",
                   help="CPU/RSS run: the start-up backfill is delivered in slices of this "
                        "many seconds, one per poll (default: the settings' "
                        "sources.prometheus.backfill_chunk_s, 1800); 0: in one batch, as "
                        "before slicing, for comparison")
    p.add_argument("--skip", default="", help="comma list of parts to skip: "
                                              "ingest,broker,latency,watch")
    p.add_argument("--_watch-child", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if a._watch_child is not None:
        _watch_child(a._watch_child, a.pods, a.backfill_chunk_s)
        return 0
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a scikit-learn dependency: not in the daemon's runtime set
        pass
    else:
        threadpool_limits(1)
    skip = set(a.skip.split(","))
    results: dict[str, Any] = {}
    if "ingest" not in skip:
        results["ingest"] = bench_ingest(a.pods)
        print("ingest (in-process):", json.dumps(results["ingest"]), flush=True)
    if "broker" not in skip and a.bootstrap:
        results["ingest_broker"] = bench_ingest_broker(a.bootstrap, a.pods)
        print("ingest (through the broker):", json.dumps(results["ingest_broker"]), flush=True)
    if "latency" not in skip:
        results["latency"] = bench_latency(a.pods)
        print("latency:", json.dumps(results["latency"]), flush=True)
    if "watch" not in skip:
        results["watch"] = bench_watch(a.watch_seconds, a.pods, a.backfill_chunk_s)
        print("110 pods at 15 s:", json.dumps(results["watch"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
