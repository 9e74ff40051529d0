"""A small gateway placed in front of a real service, as Mimir's or kube-rbac-proxy's would be.

It can serve HTTPS (with a certificate of the stack's test CA), demand a bearer token and
headers (e.g. ``X-Scope-OrgID``), answer a scripted fault first (``(status, headers)``:
429/503 with ``Retry-After``), and otherwise forwards the request to the real upstream
through ``upstream_session`` (which carries the upstream's own CA and credentials). Every
request it sees is recorded (method, path, status answered, headers).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests


@dataclass
class Seen:
    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class Gateway:
    def __init__(self, upstream: str, upstream_session: requests.Session, *,
                 tls: tuple[str, str] | None = None, token: str | None = None,
                 require_headers: Mapping[str, str] | None = None,
                 script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.session = upstream_session
        self.token = token  # accepted bearer token; None: no token needed
        self.require_headers = dict(require_headers or {})
        self.script = list(script or [])
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        gw = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                status, out, extra = gw._decide(self.command, self.path, headers, body)
                with gw.lock:
                    gw.seen.append(Seen(self.command, self.path, status, headers))
                self._answer(status, out, extra)

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _decide(self, method: str, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, bytes, dict[str, str]]:
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, b"bad or missing bearer token\n", {"Content-Type": "text/plain"}
        for k, v in self.require_headers.items():
            if headers.get(k) != v:
                return 403, f"{k} must be {v}\n".encode(), {"Content-Type": "text/plain"}
        with self.lock:
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            status, extra = scripted
            return status, b'{"status":"error","errorType":"unavailable","error":"injected"}', {
                "Content-Type": "application/json", **extra}
        forward = {k: v for k, v in headers.items()
                   if k.lower() in ("content-type", "accept")}
        r = self.session.request(method, self.upstream + path, data=body, headers=forward,
                                 timeout=30)
        return r.status_code, r.content, {"Content-Type": r.headers.get("Content-Type",
                                                                         "application/json")}

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_port}"

    def statuses(self) -> list[int]:
        with self.lock:
            return [s.status for s in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
