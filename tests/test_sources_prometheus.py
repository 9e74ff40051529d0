"""The Prometheus source's queries (node scope, the kube-state-metrics join), without a server.
The end-to-end scenario against the real local Prometheus is in
tests/stack/test_sources_prometheus.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from detector.settings import PrometheusSourceSettings
from detector.sources.prometheus import build_queries


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_queries_scope_to_the_node_and_join_kube_state_metrics() -> None:
    q = dict((name or "", promql) for name, promql in build_queries(
        PrometheusSourceSettings(url="http://p", extra_matchers='namespace!="kube-system"'),
        "node-7"))
    plain = q[""]
    assert plain.startswith('{__name__=~"') and 'node="node-7"' in plain
    assert "container_memory_working_set_bytes" in plain and "DCGM_FI_DEV_FB_USED" in plain
    assert 'namespace!="kube-system"' in plain
    limits = q["kube_pod_container_resource_limits"]
    assert 'resource="memory"' in limits and 'kube_pod_info{node="node-7"}' in limits
    assert "group_left(node)" in q["kube_pod_container_status_restarts_total"]
    unscoped = dict(build_queries(PrometheusSourceSettings(url="http://p"), ""))
    assert all("node=" not in v for v in unscoped.values())


