"""The daemon's HTTP server under hostile clients: half-open connections, aborted clients.
A real server on loopback, real sockets."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter

from detector.runtime.server import MetricsServer


def _server(**kw: object) -> MetricsServer:
    reg = CollectorRegistry()
    Counter("podguard_test_total", "a test counter", registry=reg).inc()
    return MetricsServer(host="127.0.0.1", port=0, registry=reg, healthy=lambda: (True, "ok"),
                         ready=lambda: (True, "ready"), **kw).start()  # type: ignore[arg-type]


def _wait(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_half_open_requests_cost_bounded_threads_and_time_out() -> None:
    before = threading.active_count()
    server = _server(timeout_s=1.0, max_connections=8)
    socks = []
    try:
        for _ in range(200):  # each sends half a request line and then nothing
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET /metr")
            socks.append(s)
        time.sleep(0.3)
        assert threading.active_count() - before <= 8 + 2, threading.active_count() - before
        assert _wait(lambda: server.refused >= 150, 5.0), server.refused
        # the held connections are dropped after the socket timeout; then scrapes work again
        assert _wait(lambda: threading.active_count() - before <= 2, 5.0)
        r = requests.get(server.url + "/metrics", timeout=5)
        assert r.status_code == 200 and "podguard_test_total 1.0" in r.text
    finally:
        for s in socks:
            s.close()
        server.close()


def test_a_refused_connection_gets_a_503_not_a_hang() -> None:
    server = _server(timeout_s=2.0, max_connections=1)
    held = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        held.sendall(b"GET /")
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.0 503")
    finally:
        held.close()
        server.close()


def test_aborted_clients_print_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    server = _server(timeout_s=1.0, max_connections=4)
    try:
        for _ in range(20):  # ask for /metrics, then reset the connection without reading
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
            s.close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)  # TLS
            s.recv(1000)
        assert requests.get(server.url + "/healthz", timeout=5).text == "ok\n"
        assert requests.head(server.url + "/readyz", timeout=5).status_code == 200
    finally:
        server.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
