"""The authenticated channel between a pod and its node's podguard daemon.

podguard never trusts what a workload writes into the cluster. A pod that honours podguard's
requests (a checkpoint today; a leak diagnosis next) talks to the daemon of its node over
HTTP, and proves who it is with its own projected service-account token, audience
``podguard`` (a ``serviceAccountToken`` volume source). The daemon checks each token with a
``TokenReview`` (the API server vouches for it, for that audience) and reads the pod's
namespace, name and uid from the user the review returns
(``authentication.kubernetes.io/pod-name`` / ``pod-uid`` in ``extra``: only tokens bound to a
pod carry them; a token of the bare service account is refused). The pod is told only its
own requests, and an answer is accepted only from the pod a request was made to, for that
request's fresh id.

Pull model, two calls, both ``POST`` with ``Authorization: Bearer <token>``::

    POST /v1/requests          -> 200 {"requests": [{"kind": "checkpoint", "id": "...",
                                                     "ts": 1700000000.0, "reason": "..."}]}
    POST /v1/answers  {"kind": "checkpoint", "id": "...", "result": {...}}
                               -> 200 {"accepted": true}
                               -> 409 {"accepted": false, "reason": "..."}  (stale, unknown id)
    401 (no or bad token), 400 (bad body), 404, 413 (body over 64 KiB), 503 (busy)

Request kinds are pluggable: a :class:`RequestKind` has a ``kind`` name, ``pending(pod)``
(the requests for that pod now) and ``answer(pod, id, result)``; the server routes by the
``kind`` field. The remediation controller registers ``checkpoint``
(:class:`detector.remediation.controller.RemediationController`); a second kind such as
``diagnose`` is one more object passed to :class:`ChannelServer` (``kinds=[...]``) and one
more branch in the pod's helper - the transport, authentication and validation are shared.

Bounded: sockets time out (``timeout_s``), bodies are at most 64 KiB, at most
``max_in_flight`` requests are served at once (then 503), TokenReview results are cached
for ``cache_ttl_s`` (refusals for a few seconds) in a bounded map keyed by the token's hash.
TLS (``remediation.channel_tls_cert_file`` / ``channel_tls_key_file``): the channel is served
over HTTPS with that certificate (it must name the Service the pods call, e.g.
``podguard-channel.podguard.svc``), so the pods' tokens never cross the node's network in
clear text; the handshake runs in the connection's thread under the socket timeout, and a
rotated pair is picked up for new connections. Without them, plain HTTP.

Used by the daemon (:mod:`detector.runtime.build`) and the end-to-end tests; the pod side is
the one in-pod client, :class:`detector.podclient.PodChannelClient` (``PODGUARD_CA_FILE`` for
the CA), used by the checkpoint and the diagnosis helpers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from kubernetes import client

from detector.errors import ConfigError, PodguardError
from detector.remediation.actuator import Actuator

log = logging.getLogger("podguard.remediation.channel")

AUDIENCE = "podguard"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class PodIdentity:
    """Who is calling, as the API server vouched for it (TokenReview)."""

    namespace: str
    pod: str
    uid: str
    service_account: str
    node: str = ""


@dataclass(frozen=True)
class PodRequest:
    """One request to a pod (sent as JSON in ``/v1/requests``)."""

    kind: str
    id: str
    ts: float
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "ts": self.ts, "reason": self.reason}


@dataclass(frozen=True)
class Answer:
    accepted: bool
    reason: str = ""


class RequestKind(Protocol):
    """One kind of request the daemon makes to pods (``checkpoint``, ``diagnose``, ...)."""

    kind: str

    def pending(self, pod: PodIdentity) -> list[PodRequest]: ...

    def answer(self, pod: PodIdentity, request_id: str,
               result: Mapping[str, Any]) -> Answer: ...


class Unauthenticated(Exception):
    """The token is missing, not valid for the audience, or not bound to a pod."""


class TokenReviewer:
    """Identifies pods by their projected service-account token (see the module docstring)."""

    def __init__(self, actuator: Actuator, *, audience: str = AUDIENCE,
                 cache_ttl_s: float = 30.0, refusal_ttl_s: float = 5.0,
                 max_entries: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.actuator = actuator
        self.audience = audience
        self.cache_ttl_s = cache_ttl_s
        self.refusal_ttl_s = refusal_ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.auth = client.AuthenticationV1Api(actuator.api)
        self._cache: OrderedDict[str, tuple[float, PodIdentity | str]] = OrderedDict()
        self._lock = threading.Lock()

    def identify(self, token: str) -> PodIdentity:
        if not token or len(token) > 16384:
            raise Unauthenticated("no bearer token")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            if isinstance(hit[1], str):
                raise Unauthenticated(hit[1])
            return hit[1]
        try:
            got: PodIdentity | str = self._review(token)
            ttl = self.cache_ttl_s
        except Unauthenticated as e:
            got, ttl = str(e), self.refusal_ttl_s
        with self._lock:
            self._cache[key] = (now + ttl, got)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        if isinstance(got, str):
            raise Unauthenticated(got)
        return got

    def _review(self, token: str) -> PodIdentity:
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(
            token=token, audiences=[self.audience]))
        try:
            review = self.actuator.call("token review", self.auth.create_token_review, body)
        except PodguardError as e:
            raise Unauthenticated(f"the token could not be reviewed now: {e}") from e
        st = review.status
        if st is None or not st.authenticated or st.user is None:
            raise Unauthenticated("the API server does not accept the token "
                                  f"for audience {self.audience!r}"
                                  + (f": {st.error}" if st is not None and st.error else ""))
        if self.audience not in (st.audiences or []):
            raise Unauthenticated(f"the token is not for audience {self.audience!r}")
        user, extra = str(st.user.username or ""), dict(st.user.extra or {})
        parts = user.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise Unauthenticated(f"{user!r} is not a service account")
        pod, uid = _one(extra.get(POD_NAME)), _one(extra.get(POD_UID))
        if not pod or not uid:
            raise Unauthenticated("the token is not bound to a pod (use a projected "
                                  "serviceAccountToken volume)")
        return PodIdentity(namespace=parts[2], pod=pod, uid=uid, service_account=parts[3],
                           node=_one(extra.get(NODE_NAME)))


def _one(values: Any) -> str:
    if isinstance(values, list | tuple) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


class ChannelServer:
    """The daemon's end of the channel (see the module docstring)."""

    def __init__(self, reviewer: TokenReviewer, kinds: Iterable[RequestKind], *,
                 host: str = "0.0.0.0", port: int = 0, timeout_s: float = 5.0,
                 max_in_flight: int = 16, tls_cert_file: str = "", tls_key_file: str = "",
                 logger: logging.Logger | None = None) -> None:
        self.log = logger if logger is not None else log
        self.tls = ServerTls(tls_cert_file, tls_key_file) if tls_cert_file else None
        self.reviewer = reviewer
        self.kinds: dict[str, RequestKind] = {k.kind: k for k in kinds}
        self.stats: Counter[str] = Counter()  # outcome -> count ("accepted", "refused:..")
        self._slots = threading.BoundedSemaphore(max_in_flight)
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if not server._slots.acquire(blocking=False):
                    self._reply(503, {"error": "busy"})
                    return
                try:
                    code, body = server.route(self.path, self.headers.get("Authorization", ""),
                                              self._body())
                except _BadRequest as e:
                    code, body = e.code, {"error": str(e)}
                except Exception as e:  # a bug must not kill the server thread
                    server.log.warning("channel: %s failed: %r", self.path, e)
                    code, body = 500, {"error": "internal error"}
                finally:
                    server._slots.release()
                self._reply(code, body)

            def do_GET(self) -> None:
                self._reply(404 if self.path != "/healthz" else 200, {})

            def _body(self) -> bytes:
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                except ValueError as e:
                    raise _BadRequest(400, "bad Content-Length") from e
                if n < 0 or n > MAX_BODY:
                    raise _BadRequest(413, f"body over {MAX_BODY} bytes")
                return self.rfile.read(n) if n else b""

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    # one call per connection: an unread (refused) body never reaches the
                    # next request's parser, and no idle connection holds a thread
                    self.send_header("Connection", "close")
                    self.close_connection = True
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client went away

            def log_message(self, format: str, *args: Any) -> None:
                server.log.debug("channel %s: " + format, self.client_address[0], *args)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                server.log.debug("channel: connection from %s failed", client_address)

            def finish_request(self, request: Any, client_address: Any) -> None:
                if server.tls is None:
                    super().finish_request(request, client_address)
                    return
                # the TLS handshake runs here, in the connection's own thread and under the
                # socket timeout, so a client that stalls it holds only its own thread
                request.settimeout(timeout_s)
                tls = server.tls.context().wrap_socket(request, server_side=True)
                try:
                    super().finish_request(tls, client_address)
                finally:
                    tls.close()

        self.httpd = Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{'https' if self.tls is not None else 'http'}://{host!s}:{port}"

    def start(self) -> ChannelServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="podguard-channel")
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def route(self, path: str, authorization: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path not in ("/v1/requests", "/v1/answers"):
            return 404, {"error": f"no such endpoint {path}"}
        scheme, _, token = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise Unauthenticated("no bearer token")
            pod = self.reviewer.identify(token.strip())
        except Unauthenticated as e:
            self.stats["unauthenticated"] += 1
            self.log.info("channel: %s refused: %s", path, e)
            return 401, {"error": str(e)}
        if path == "/v1/requests":
            out: list[dict[str, Any]] = []
            for kind in self.kinds.values():
                out.extend(r.as_json() for r in kind.pending(pod))
            return 200, {"requests": out}
        try:
            doc = json.loads(body or b"{}", parse_constant=_no_constant)
        except ValueError as e:
            raise _BadRequest(400, f"the body is not JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) or not \
                isinstance(doc.get("id"), str) or not isinstance(doc.get("result", {}), dict):
            raise _BadRequest(400, 'expected {"kind": str, "id": str, "result": {...}}')
        target = self.kinds.get(doc["kind"])
        if target is None:
            raise _BadRequest(400, f"unknown kind {doc['kind']!r} (known: "
                                   f"{', '.join(sorted(self.kinds))})")
        answer = target.answer(pod, doc["id"], doc.get("result", {}))
        self.stats["accepted" if answer.accepted else "refused"] += 1
        if not answer.accepted:
            self.log.info("channel: %s answer of %s/%s refused: %s", doc["kind"],
                          pod.namespace, pod.pod, answer.reason)
            return 409, {"accepted": False, "reason": answer.reason}
        return 200, {"accepted": True}


class ServerTls:
    """The channel's server certificate and key (PEM files, e.g. a cert-manager Secret): read
    at start, and again for new connections when either file changes (rotation needs no
    restart). A pair that does not load at start is a ConfigError naming the setting."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._lock = threading.Lock()
        self._stamp: tuple[float, float] | None = None
        self._ctx = self._load()

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.cert_file).st_mtime, os.stat(self.key_file or
                                                         self.cert_file).st_mtime

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            stamp = self._mtimes()
            ctx.load_cert_chain(self.cert_file, self.key_file or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"remediation.channel_tls_cert_file / channel_tls_key_file "
                              f"({self.cert_file}, {self.key_file}): cannot load the "
                              f"channel's certificate and key: {e}") from e
        self._stamp = stamp
        return ctx

    def context(self) -> ssl.SSLContext:
        with self._lock:
            try:
                if self._mtimes() != self._stamp:
                    self._ctx = self._load()
                    log.info("channel: TLS certificate reloaded from %s", self.cert_file)
            except (OSError, ConfigError) as e:  # mid-rotation: keep serving the old pair
                log.warning("channel: TLS certificate not reloaded: %s", e)
            return self._ctx


class _BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")
