"""A small real exporter for tests: cAdvisor-style container series over HTTP on 127.0.0.1.

It serves ``container_memory_working_set_bytes{namespace,pod,container}`` (and
``container_memory_rss``) with prometheus-client's exposition, from values the test sets at
any time; the series are built at scrape time, so a removed container disappears at once.

    with CadvisorExporter() as exp:
        exp.set("ml", "trainer-0", "main", 1.5e9)
        prometheus.set_targets("cadvisor", [exp.target])
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

_Key = tuple[str, str, str]  # namespace, pod, container


class _ContainerCollector(Collector):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.working_set: dict[_Key, float] = {}
        self.rss: dict[_Key, float] = {}

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "pod", "container"]
        ws = GaugeMetricFamily("container_memory_working_set_bytes",
                               "Current working set in bytes.", labels=labels)
        rss = GaugeMetricFamily("container_memory_rss", "Size of RSS in bytes.", labels=labels)
        with self.lock:
            for key, v in sorted(self.working_set.items()):
                ws.add_metric(list(key), v)
            for key, v in sorted(self.rss.items()):
                rss.add_metric(list(key), v)
        yield ws
        yield rss


class CadvisorExporter:
    """A real HTTP server on 127.0.0.1 (port chosen by the kernel) serving container series."""

    def __init__(self) -> None:
        self._collector = _ContainerCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        self._server, self._thread = start_http_server(0, addr="127.0.0.1",
                                                       registry=self.registry)
        self.port = int(self._server.server_port)

    @property
    def target(self) -> str:
        """``host:port`` for a Prometheus scrape config."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def set(self, namespace: str, pod: str, container: str, working_set_bytes: float,
            rss_bytes: float | None = None) -> None:
        key = (namespace, pod, container)
        with self._collector.lock:
            self._collector.working_set[key] = working_set_bytes
            self._collector.rss[key] = working_set_bytes if rss_bytes is None else rss_bytes

    def remove(self, namespace: str, pod: str, container: str) -> None:
        key = (namespace, pod, container)
        with self._collector.lock:
            self._collector.working_set.pop(key, None)
            self._collector.rss.pop(key, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CadvisorExporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
