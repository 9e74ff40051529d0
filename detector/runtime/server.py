"""``/metrics``, ``/healthz`` and ``/readyz`` on one small threaded HTTP server.

Started by :mod:`detector.runtime.build`; it reads the injected registry and two callables of
the daemon. ``/healthz`` answers 200 while the daemon loop makes progress (a stalled loop:
503, so the kubelet restarts the pod); ``/readyz`` answers 200 once the model is loaded and
the source delivered data. Binds to the configured host (127.0.0.1 by default); port 0 picks
a free port, read back from :attr:`MetricsServer.port`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], tuple[bool, str]]


class MetricsServer:
    def __init__(self, *, host: str, port: int, registry: CollectorRegistry,
                 healthy: Probe, ready: Probe) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (outer.healthy if path == "/healthz" else outer.ready)()
                    self._send(200 if ok else 503, (why or ("ok" if ok else "not ok")).encode()
                               + b"\n", "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz\n",
                               "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood the logs

        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="podguard-http")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
