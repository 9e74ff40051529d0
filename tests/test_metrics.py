"""The daemon's /metrics: per-pod gauges with bounded cardinality, standard process metrics.

Read back from a fresh registry (``registry.get_sample_value``) and, for the exposition, from
the real HTTP server of the daemon (``detector.runtime.server``).
"""

from __future__ import annotations

import logging
import math
import urllib.request

from prometheus_client import CollectorRegistry

from detector.pipeline import Pipeline
from detector.runtime.build import make_engine
from detector.runtime.daemon import Daemon
from detector.runtime.metrics import DaemonMetrics, StateView, exported_pods
from detector.runtime.server import MetricsServer
from detector.settings import Settings
from detector.verdicts import Kind, Verdict
from tests.support.leak_source import LeakSource

LOG = logging.getLogger("podguard.test.metrics")


def v(pod: str, score: float, *, threshold: float = 1.0, kind: Kind = "none",
      tto: float | None = None, ns: str = "ml") -> Verdict:
    anomaly = kind != "none"
    return Verdict(ts=0.0, namespace=ns, pod=pod, node="n1", is_anomaly=anomaly, kind=kind,
                   score=score, threshold=threshold, time_to_oom_s=tto,
                   time_to_oom_range_s=(tto * 0.5, tto * 2) if tto else None,
                   leak_rate_bytes_per_s=1234.5 if kind == "memory_leak" else None)


def registry_of(view: StateView, **kw: float) -> CollectorRegistry:
    reg = CollectorRegistry()
    DaemonMetrics(reg, view, **kw)  # type: ignore[arg-type]
    return reg


def test_per_pod_gauges_only_for_flagged_or_near_threshold_pods() -> None:
    view = StateView()
    view.verdicts = {(x.namespace, x.pod): x for x in [
        v("leaky", 3.0, kind="memory_leak", tto=7200.0),
        v("drifting", 0.5, kind="drift"),  # positive (e.g. debounced fusion): always shown
        v("near", 0.85), v("healthy", 0.2), v("nan", math.nan)]}
    reg = registry_of(view)
    pod = {"namespace": "ml", "pod": "leaky"}
    assert reg.get_sample_value("podguard_pod_score", pod) == 3.0
    assert reg.get_sample_value("podguard_pod_threshold", pod) == 1.0
    assert reg.get_sample_value("podguard_pod_time_to_oom_seconds", pod) == 7200.0
    assert reg.get_sample_value("podguard_pod_time_to_oom_low_seconds", pod) == 3600.0
    assert reg.get_sample_value("podguard_pod_time_to_oom_high_seconds", pod) == 14400.0
    assert reg.get_sample_value("podguard_pod_leak_rate_bytes_per_second", pod) == 1234.5
    assert reg.get_sample_value("podguard_pod_verdict", {**pod, "kind": "memory_leak"}) == 1
    assert reg.get_sample_value("podguard_pod_verdict", {"namespace": "ml", "pod": "drifting",
                                                         "kind": "drift"}) == 1
    assert reg.get_sample_value("podguard_pod_verdict", {"namespace": "ml", "pod": "near",
                                                         "kind": "none"}) == 1
    near = {"namespace": "ml", "pod": "near"}
    assert reg.get_sample_value("podguard_pod_time_to_oom_seconds", near) is None  # unknown
    for quiet in ("healthy", "nan"):
        assert reg.get_sample_value("podguard_pod_score", {"namespace": "ml",
                                                           "pod": quiet}) is None
    # a lower fraction shows the healthy pod too; the pod gone from the verdicts vanishes
    reg2 = registry_of(view, pod_min_ratio=0.1)
    assert reg2.get_sample_value("podguard_pod_score", {"namespace": "ml",
                                                        "pod": "healthy"}) == 0.2
    del view.verdicts[("ml", "leaky")]
    assert reg.get_sample_value("podguard_pod_score", pod) is None
    assert reg.get_sample_value("podguard_pod_verdict", {**pod, "kind": "memory_leak"}) is None


def test_the_number_of_pods_with_gauges_has_a_hard_cap() -> None:
    view = StateView()
    many = [v(f"p{i:04d}", 0.9 + i / 10_000) for i in range(5000)]
    many.append(v("leaky", 0.5, kind="memory_leak", tto=600.0))
    view.verdicts = {(x.namespace, x.pod): x for x in many}
    reg = registry_of(view, pod_max=50)
    scores = [s for m in reg.collect() if m.name == "podguard_pod_score" for s in m.samples]
    assert len(scores) == 50
    kept = {s.labels["pod"] for s in scores}
    assert "leaky" in kept  # positives first, then the highest score / threshold
    assert {f"p{i:04d}" for i in range(4951, 5000)} <= kept
    assert reg.get_sample_value("podguard_pod_metrics_omitted") == 4951
    shown, omitted = exported_pods(view.verdicts, min_ratio=0.8, max_pods=0)
    assert shown == [] and omitted == 5001


def test_process_metrics_keep_their_standard_names() -> None:
    reg = CollectorRegistry()
    DaemonMetrics(reg, StateView())
    server = MetricsServer(host="127.0.0.1", port=0, registry=reg, healthy=lambda: (True, ""),
                           ready=lambda: (True, "")).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
    finally:
        server.close()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    for std in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                "process_open_fds", "process_start_time_seconds", "python_info"):
        assert std in names, std
    assert not any(n.startswith("podguard_process_") for n in names)
    assert reg.get_sample_value("process_resident_memory_bytes") > 10e6  # type: ignore[operator]


def test_a_real_daemon_exports_a_flagged_pod_and_drops_it_when_the_pod_goes() -> None:
    """The gauges come from the daemon's own verdicts: the leaking pod gets them once
    flagged, the steady one (far below its threshold) never; deleted, the leaking pod's
    series vanish within the steps it takes its window to go stale."""
    settings = Settings.model_validate({"windows": {"horizon_s": 4 * 3600, "step_s": 60},
                                        "runtime": {"lateness_s": 0.0, "console": False}})
    reg = CollectorRegistry()
    view = StateView()
    source = LeakSource("ml", 1_800_000_000.0)
    daemon = Daemon(settings=settings, source=source, pipeline=Pipeline.load(None),
                    engine=make_engine(settings), sinks=[],
                    metrics=DaemonMetrics(reg, view, process=False), logger=LOG)
    leaky = {"namespace": "ml", "pod": "leaky"}
    for _ in range(100):
        daemon.turn()
        if reg.get_sample_value("podguard_pod_verdict", {**leaky, "kind": "memory_leak"}):
            break
    assert reg.get_sample_value("podguard_pod_verdict", {**leaky, "kind": "memory_leak"}) == 1
    tto = reg.get_sample_value("podguard_pod_time_to_oom_seconds", leaky)
    assert tto is not None and 3600 < tto < 24 * 3600
    assert reg.get_sample_value("podguard_pod_score", {"namespace": "ml", "pod": "steady"}) \
        is None
    source.pods.discard("leaky")  # the pod is deleted: no more samples
    for _ in range(200):
        daemon.turn()
        if reg.get_sample_value("podguard_pod_score", leaky) is None:
            break
    assert reg.get_sample_value("podguard_pod_score", leaky) is None, "the gauge lingers"
    assert reg.get_sample_value("podguard_pod_verdict", {**leaky, "kind": "memory_leak"}) \
        is None
    gone_for = source.t - source.t0
    assert gone_for < 8 * 3600, gone_for
