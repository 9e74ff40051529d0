"""``/metrics``, ``/healthz`` and ``/readyz`` on one small threaded HTTP server.

Started by :mod:`detector.runtime.build`; it reads the injected registry and two callables of
the daemon. ``/healthz`` answers 200 while the daemon loop makes progress (a stalled loop:
503, so the kubelet restarts the pod); ``/readyz`` answers 200 once the model is loaded and
the source delivered data. Binds to the configured host (127.0.0.1 by default); port 0 picks
a free port, read back from :attr:`MetricsServer.port`.

Whoever can reach the port is untrusted (the manifests also ship a NetworkPolicy for it):

* every connection has a socket timeout (``timeout_s``): a client that sends half a request,
  or reads nothing, is dropped after it, so it cannot hold a thread;
* at most ``max_connections`` are served at once (one thread each); a connection beyond that
  is answered ``503`` at once and closed (counted in :attr:`MetricsServer.refused`), so
  thousands of half-open sockets cost at most ``max_connections`` threads;
* a client that aborts (reset, broken pipe, timeout) is logged as one structured debug line,
  never as a traceback on stderr, so JSON logs stay JSON; only GET and HEAD are served.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], tuple[bool, str]]

_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n")


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server with a cap on concurrent connections and quiet errors."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: Any, *, max_connections: int,
                 log: logging.Logger) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.log = log
        self.refused = 0
        self.aborted = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(0.5)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.aborted += 1
        err = sys.exc_info()[1]
        self.log.debug("http client aborted", extra={
            "client": str(client_address[0]) if client_address else "",
            "error": type(err).__name__ if err is not None else ""})


class MetricsServer:
    def __init__(self, *, host: str, port: int, registry: CollectorRegistry,
                 healthy: Probe, ready: Probe, timeout_s: float = 10.0,
                 max_connections: int = 16, logger: logging.Logger | None = None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s  # socket timeout of each connection (StreamRequestHandler)

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

            def do_HEAD(self) -> None:
                self.do_GET()

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood the logs

        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self._httpd = _BoundedServer((host, port), Handler, max_connections=max_connections,
                                     log=logger or logging.getLogger("podguard.http"))
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="podguard-http")

    @property
    def refused(self) -> int:
        """Connections answered 503 because ``max_connections`` were being served."""
        return self._httpd.refused

    @property
    def aborted(self) -> int:
        """Connections that ended in an error (client reset, timeout, broken pipe)."""
        return self._httpd.aborted

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
