"""The Prometheus source and the daemon against the real local Prometheus.

One scenario, end to end (to keep the suite short): four hours of history of two pods are
backfilled with promtool (one leaking, one steady), a live exporter continues both series and
Prometheus scrapes it; the daemon backfills its windows with chunked range queries, polls the
live part and raises the leak verdict for the leaking pod only. Then Prometheus is stopped
for a minute and started again: the daemon keeps running, raises no alarm from the gap, marks
its windows stale meanwhile, fetches the gap on recovery and is caught up again. The daemon's
own /metrics is scraped by the same Prometheus. Also: the backfill arrives in ordered slices
covering the range once.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from deploy.local.prometheus import Series, to_openmetrics
from detector.pipeline import Pipeline
from detector.runtime.build import make_engine
from detector.runtime.daemon import Daemon
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.runtime.server import MetricsServer
from detector.settings import PrometheusSourceSettings, Settings
from detector.sources.base import Delivery
from detector.sources.prometheus import OOM_KILLED, PrometheusSource
from detector.verdicts import Verdict
from tests.support.exporter import CadvisorExporter
from tests.support.stack_fixtures import PrometheusHandle

LOG = logging.getLogger("podguard.test.prometheus")


GIB, MIB = float(1 << 30), float(1 << 20)


LIMIT = 4 * GIB


LEAK_PER_S = 300 * MIB / 3600


@pytest.mark.stack
def test_backfill_arrives_in_ordered_slices_covering_the_range_once(
        local_prometheus: PrometheusHandle) -> None:
    """4 h of history in 30-min slices, oldest first, every grid point exactly once, each
    sample at its own timestamp; a query failing mid-backfill resumes at its slice."""
    job = f"slices_{uuid.uuid4().hex[:8]}"
    metric = "container_memory_working_set_bytes"
    step, chunk = 15.0, 1800.0
    now = (time.time() // step) * step + 7.0  # off the grid
    first = math.ceil((now - 4 * 3600) / step) * step  # where the backfill must start
    last = math.floor(now / step) * step
    stamps = [first - 600 + step * i for i in range(int((last - first + 600) / step) + 1)]
    offset = {"pod-a": 0.0, "pod-b": 0.5}  # value = timestamp + offset: each point is its own
    labels = {"job": job, "node": "node-a", "namespace": "ml", "container": "main"}
    local_prometheus.backfill(to_openmetrics([
        Series(metric, {**labels, "pod": pod}, [(t, t + off) for t in stamps])
        for pod, off in offset.items()]))

    clock = [now]

    def sleep(s: float) -> None:
        clock[0] += s

    source = PrometheusSource(PrometheusSourceSettings(
        url=local_prometheus.url, node_name="node-a", extra_matchers=f'job="{job}"',
        metrics=[metric], query_step_s=step, poll_s=step, backfill_s=4 * 3600,
        backfill_chunk_s=chunk, max_points=50, timeout_s=5, backoff_s=[1]),
        logger=LOG, clock=lambda: clock[0], sleep=sleep)
    source.start()
    calls = [0]
    real_query = source._client.query_range

    def flaky_query(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 10:  # 3 queries of 50 points per 120-point slice: inside slice 4
            raise ConnectionError("injected")
        return real_query(*args, **kwargs)

    source._client.query_range = flaky_query
    slices: list[Delivery] = []
    caught_up: list[bool] = []
    failed = False
    for _ in range(50):
        d = source.poll(5.0)
        if not source.status().up:
            failed = True
            assert len(d.samples) == 0  # a failed slice delivers nothing
        elif len(d.samples):
            slices.append(d)
            caught_up.append(source.status().caught_up)
        if source.status().caught_up:
            break
    assert failed and source.status().up and source.status().caught_up

    assert len(slices) == 8, f"{len(slices)} slices"
    assert caught_up == [False] * 7 + [True]
    assert all(d.backfill for d in slices)
    bounds = [(min(d.samples.timestamp), max(d.samples.timestamp)) for d in slices]
    assert bounds[0][0] == first and bounds[-1][1] == last
    for (lo, hi), (next_lo, _) in itertools.pairwise(bounds):
        assert hi - lo <= chunk - step and next_lo == hi + step  # ordered, contiguous
    seen = [(t, pod) for d in slices for t, pod in zip(d.samples.timestamp, d.samples.pod)]
    assert len(seen) == len(set(seen)), "a point was delivered twice"
    grid = [first + step * i for i in range(int((last - first) / step) + 1)]
    assert sorted(seen) == sorted((t, pod) for t in grid for pod in offset)
    for d in slices:
        for t, pod, v in zip(d.samples.timestamp, d.samples.pod, d.samples.value):
            assert v == t + offset[pod]
    assert source.backfilled_s == last - first - step  # the whole range, less one poll

    clock[0] += step  # then plain polling: the next point only, not a backfill
    d = source.poll(5.0)
    assert not d.backfill and sorted(set(d.samples.timestamp)) == [last + step]


@pytest.mark.stack
def test_the_last_terminated_reason_is_read_per_container_as_the_oom_killed_flag(
        local_prometheus: PrometheusHandle) -> None:
    """kube-state-metrics' ``..._last_terminated_reason{reason=...}``, joined to the node like
    the other kube-state-metrics series: OOMKilled reads 1, another reason 0, a 0-valued
    series (not the current reason) nothing, another node's pod nothing."""
    job = f"ksm_{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:6]
    step = 15.0
    now = (time.time() // step) * step
    stamps = [now - 600 + step * i for i in range(41)]
    reason = "kube_pod_container_status_last_terminated_reason"
    pods = {f"oom-{tag}": ("node-a", "OOMKilled", 1.0), f"err-{tag}": ("node-a", "Error", 1.0),
            f"stale-{tag}": ("node-a", "OOMKilled", 0.0),
            f"away-{tag}": ("node-b", "OOMKilled", 1.0)}
    series = []
    for pod, (node, why, value) in pods.items():
        series.append(Series("kube_pod_info", {"job": job, "namespace": "ml", "pod": pod,
                                               "node": node}, [(t, 1.0) for t in stamps]))
        series.append(Series(reason, {"job": job, "namespace": "ml", "pod": pod,
                                      "container": "main", "reason": why},
                             [(t, value) for t in stamps]))
    local_prometheus.backfill(to_openmetrics(series))
    source = PrometheusSource(PrometheusSourceSettings(
        url=local_prometheus.url, node_name="node-a", extra_matchers=f'job="{job}"',
        metrics=[OOM_KILLED], query_step_s=step, poll_s=step, backfill_s=600,
        timeout_s=5, backoff_s=[1]), logger=LOG, clock=lambda: now, sleep=lambda s: None)
    source.start()
    got: dict[str, set[float]] = {}
    for _ in range(10):
        d = source.poll(5.0)
        for pod, container, metric, v in zip(d.samples.pod, d.samples.container,
                                             d.samples.metric, d.samples.value):
            assert (container, metric) == ("main", OOM_KILLED)
            got.setdefault(pod, set()).add(v)
        if source.status().caught_up:
            break
    source.close()
    assert source.status().caught_up
    assert got == {f"oom-{tag}": {1.0}, f"err-{tag}": {0.0}}, got


@pytest.mark.stack
def test_leak_from_backfill_and_live_scrape_then_a_minute_without_prometheus(
        local_prometheus: PrometheusHandle) -> None:
    job = f"cadvisor_{uuid.uuid4().hex[:8]}"
    rng = random.Random(3)
    now = time.time()
    t_start = now - 4 * 3600
    hist_end = now - 30

    def leaky(t: float) -> float:
        return 1 * GIB + LEAK_PER_S * (t - t_start) + rng.uniform(-2, 2) * MIB

    def steady(t: float) -> float:
        return 1.5 * GIB + rng.uniform(-4, 4) * MIB

    with CadvisorExporter() as exporter:
        labels = {"job": job, "instance": exporter.target, "node": "node-a",
                  "namespace": "ml", "container": "main"}
        stamps = [t_start + 15 * i for i in range(int((hist_end - t_start) // 15))]
        series = []
        for pod, f in (("leaky", leaky), ("steady", steady)):
            pts = [(t, f(t)) for t in stamps]
            series += [
                Series("container_memory_working_set_bytes", {**labels, "pod": pod}, pts),
                Series("container_memory_rss", {**labels, "pod": pod}, pts),
                Series("container_spec_memory_limit_bytes", {**labels, "pod": pod},
                       [(t, LIMIT) for t in stamps]),
            ]
        local_prometheus.backfill(to_openmetrics(series))

        stop_feed = threading.Event()

        def feed() -> None:  # the live part continues the same curves
            while not stop_feed.is_set():
                t = time.time()
                for pod, f in (("leaky", leaky), ("steady", steady)):
                    exporter.set("ml", pod, "main", f(t))
                stop_feed.wait(0.5)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        local_prometheus.set_targets(job, [exporter.target], {"node": "node-a"})
        try:
            _run_daemon(local_prometheus, job, hist_end)
        finally:
            stop_feed.set()
            feeder.join(timeout=5)
            local_prometheus.remove_targets(job)


def _run_daemon(prom: PrometheusHandle, job: str, hist_end: float) -> None:
    settings = Settings.model_validate({
        "windows": {"horizon_s": 4 * 3600, "step_s": 15},
        "sources": {"kind": "prometheus", "prometheus": {
            "url": prom.url, "node_name": "node-a", "extra_matchers": f'job="{job}"',
            "query_step_s": 15, "poll_s": 5, "backfill_s": 4 * 3600, "max_points": 300,
            "timeout_s": 5, "backoff_s": [1, 2, 3]}},
        "runtime": {"lateness_s": 1.0, "console": False, "verdicts_path": ""},
    })
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry, StateView())
    source = PrometheusSource(settings.sources.prometheus, logger=LOG)
    daemon = Daemon(settings=settings, source=source, pipeline=Pipeline.load(None),
                    engine=make_engine(settings), sinks=[], metrics=metrics, logger=LOG,
                    poll_timeout_s=0.25)
    verdicts: list[tuple[float, Verdict]] = []
    daemon.on_verdicts.append(lambda vs: verdicts.extend((time.time(), v) for v in vs))
    deliveries: list[tuple[float, Delivery]] = []
    real_poll = source.poll

    def recording_poll(timeout: float) -> Delivery:  # observe what the real source returns
        d = real_poll(timeout)
        if len(d.samples):
            deliveries.append((time.time(), d))
        return d

    source.poll = recording_poll  # type: ignore[method-assign]
    server = MetricsServer(host="127.0.0.1", port=0, registry=registry,
                           healthy=daemon.healthy, ready=daemon.ready).start()
    pg_job = f"podguard_{uuid.uuid4().hex[:6]}"
    prom.set_targets(pg_job, [f"127.0.0.1:{server.port}"])
    source.start()
    try:
        def until(check: Callable[[], bool], what: str, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not check():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                daemon.turn()

        def positives(pod: str, since: float = 0.0) -> list[Verdict]:
            return [v for t, v in verdicts if v.pod == pod and v.is_anomaly and t >= since]

        # 1. backfill (chunked: 300 points per query), live polling, the leak verdict
        until(lambda: bool(positives("leaky")), "the leak verdict", 120)
        v = positives("leaky")[0]
        assert v.kind == "memory_leak" and v.namespace == "ml" and v.node == "node-a"
        assert v.time_to_oom_s is not None and 3600 < v.time_to_oom_s < 24 * 3600
        assert v.explanation is not None and "working set" in v.explanation.text
        first = deliveries[0][1]
        assert first.backfill and min(first.samples.timestamp) < hist_end - 3.5 * 3600
        until(lambda: any(max(d.samples.timestamp) > hist_end + 20 for _, d in deliveries),
              "live samples scraped after the backfilled history", 60)
        assert daemon.ready()[0]

        # the daemon's /metrics, scraped by the real Prometheus
        prom.wait_for_targets(pg_job, timeout=60)
        until(lambda: bool(prom.query(f'podguard_samples_ingested_total{{job="{pg_job}"}} > 0')),
              "Prometheus to scrape podguard_samples_ingested_total", 60)
        until(lambda: bool(prom.query(f'podguard_pod_anomalous{{job="{pg_job}",pod="leaky"}}')),
              "Prometheus to scrape podguard_pod_anomalous of the leaky pod", 30)
        leaky_seq = [v.is_anomaly for _, v in verdicts if v.pod == "leaky"]
        first_pos = leaky_seq.index(True)
        assert all(leaky_seq[first_pos:]), f"the leak verdict flickered: {leaky_seq}"

        # 2. a minute without Prometheus
        stopped_at = time.time()
        prom.stop()
        outage_end = time.monotonic() + 60
        until(lambda: time.monotonic() > outage_end, "the end of the outage", 90)
        assert not source.status().up and not source.status().caught_up
        assert metrics.evaluations.labels("stale")._value.get() > 0
        during = [v for t, v in verdicts if stopped_at + 10 < t]
        assert during and all(v.stale and not v.is_anomaly for v in during)
        n_before = len(deliveries)
        prom.start()
        restarted_at = time.time()
        until(lambda: source.status().caught_up, "the source to catch up", 60)
        gap = [d for t, d in deliveries[n_before:] if d.backfill]
        assert gap, "no backfill after the outage"
        assert min(gap[0].samples.timestamp) <= stopped_at + 15  # from where polling stopped
        # every 15-s point of the steady pod, from the start of its history to now, was
        # delivered, except inside the outage itself (Prometheus scraped nothing there)
        seen = {t for _, d in deliveries for t, pod, m in zip(
            d.samples.timestamp, d.samples.pod, d.samples.metric)
            if pod == "steady" and m == "container_memory_working_set_bytes"}
        grid = range(int(min(seen)), int(max(seen)) + 1, 15)
        missing = [t for t in grid if t not in seen and not stopped_at < t < restarted_at]
        assert missing == [], f"{len(missing)} points never fetched, e.g. {missing[:5]}"
        assert source.backfilled_s >= 50
        recovered = time.time()
        until(lambda: time.time() > recovered + 20, "scoring after recovery", 40)
        assert positives("steady") == []  # no false alarm, before, during or after
        after = [v for t, v in verdicts if t > recovered and v.pod == "steady"]
        assert after and not any(v.stale for v in after)
        assert daemon.healthy()[0] and not daemon.stopping
        assert math.isfinite(restarted_at)
    finally:
        prom.remove_targets(pg_job)
        daemon.stop("test over")
        daemon.shutdown()
        server.close()

