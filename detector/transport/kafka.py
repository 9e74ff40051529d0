"""TLS and SASL of podguard's Kafka clients (kafka-python), from one settings class.

:func:`client_config` turns :class:`~detector.settings.KafkaSecuritySettings` into the
keyword arguments every ``KafkaConsumer``, ``KafkaProducer`` and ``KafkaAdminClient`` of
podguard gets: ``security_protocol``; for SSL and SASL_SSL the CA file (verification and
host-name checks are on; one ``ssl.SSLContext`` built here), an optional client certificate
and key; for SASL the mechanism
(SCRAM-SHA-512 by default), the user and the password read from its file. Missing files and
contradictions are :class:`~detector.errors.ConfigError` naming the key.

:func:`classify` maps a kafka-python failure onto the exception tree: a failed SASL
handshake is an :class:`~detector.errors.AuthError`, a certificate that does not verify a
:class:`~detector.errors.TlsError` (both permanent: retrying cannot help), anything else a
:class:`~detector.errors.ServiceUnavailableError` (temporary).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from detector.errors import (
    AuthError,
    ConfigError,
    PodguardError,
    ServiceUnavailableError,
    TlsError,
)
from detector.settings import KafkaSecuritySettings
from detector.transport.http import FileSecret, _file


def client_config(s: KafkaSecuritySettings, *, where: str) -> dict[str, Any]:
    """kafka-python keyword arguments for ``s`` (``where``: its settings path)."""
    out: dict[str, Any] = {"security_protocol": s.protocol}
    tls = s.protocol in ("SSL", "SASL_SSL")
    sasl = s.protocol.startswith("SASL_")
    if not tls and (s.ca_file or s.cert_file or s.key_file):
        raise ConfigError(f"{where}: ca_file/cert_file/key_file need protocol SSL or SASL_SSL "
                          f"(it is {s.protocol}, which sends everything in clear)")
    if not sasl and (s.username or s.password_file):
        raise ConfigError(f"{where}: username/password_file need protocol SASL_SSL (or "
                          f"SASL_PLAINTEXT); it is {s.protocol}")
    if tls:
        if bool(s.cert_file) != bool(s.key_file):
            raise ConfigError(f"{where}: cert_file and key_file go together")
        out["ssl_context"] = _context(s, where)
        out["ssl_check_hostname"] = s.check_hostname
    if sasl:
        if not (s.username and s.password_file):
                raise ConfigError(f"{where}: SASL needs username and password_file")
        secret = FileSecret(_file(s.password_file, f"{where}.password_file"),
                            key=f"{where}.password_file")
        out["sasl_mechanism"] = s.sasl_mechanism
        out["sasl_plain_username"] = s.username
        out["sasl_plain_password"] = secret.get()
    return out


def _context(s: KafkaSecuritySettings, where: str) -> ssl.SSLContext:
    """Verifying TLS context: ``ca_file`` or the system's CAs, host names checked unless
    ``check_hostname`` is off, the client certificate when given."""
    cafile = _file(s.ca_file, f"{where}.ca_file") if s.ca_file else None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.check_hostname = s.check_hostname
    if s.cert_file:
        try:
            ctx.load_cert_chain(_file(s.cert_file, f"{where}.cert_file"),
                                _file(s.key_file, f"{where}.key_file"))
        except ssl.SSLError as e:
            raise ConfigError(f"{where}: cert_file/key_file do not load: {e}") from e
    return ctx


@contextmanager
def connection_failures() -> Iterator[list[str]]:
    """What kafka-python logs about failed connections while the block runs: it retries a
    failed TLS or SASL handshake by itself and in the end reports only a bootstrap timeout,
    so the cause (a refused password, a certificate that does not verify) is read here."""
    seen: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(seen) < 50:
                seen.append(record.getMessage()[:500])

    handler = _Collect(level=logging.WARNING)
    logger = logging.getLogger("kafka")
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def classify(e: BaseException, *, what: str, where: str,
             logged: Sequence[str] = ()) -> PodguardError:
    """The podguard error for a kafka-python failure ``e`` (see the module docstring);
    ``logged``: what :func:`connection_failures` collected meanwhile."""
    if isinstance(e, PodguardError):
        return e
    text = f"{type(e).__name__}: {e}"
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    names = " ".join(type(x).__name__ for x in chain)
    everything = " | ".join([text, *logged])
    low = everything.lower()
    if "SaslAuthenticationFailed" in names or "saslauthenticationfailed" in low or (
            "authentication failed" in low):
        cause = next((m for m in logged if "authentication" in m.lower()), text)
        return AuthError(f"{what}: the broker refused the SASL credentials ({cause}); check "
                         f"{where}.username, {where}.password_file and {where}.sasl_mechanism")
    if any(isinstance(x, ssl.SSLCertVerificationError) for x in chain) or (
            "certificate verify failed" in low):
        cause = next((m for m in logged if "certificate verify failed" in m.lower()), text)
        return TlsError(f"{what}: the broker's certificate does not verify ({cause}); set "
                        f"{where}.ca_file to the CA that signed it")
    if "wrong version number" in low or "unexpected eof" in low:
        return TlsError(f"{what}: TLS handshake failed ({text}); is {where}.protocol right for "
                        f"this listener?")
    return ServiceUnavailableError(f"{what}: {text}")


# ------------------------------------------------------------------ handshake probe
# kafka-python retries a refused TLS or SASL handshake by itself and in the end reports a
# bootstrap timeout (a broker closing the connection after a failed SCRAM exchange is seen
# as "socket disconnected"). Before the clients are built, :func:`probe` makes the same
# handshakes once on a plain blocking socket, so a wrong password or an unknown CA is a
# clear permanent error at once instead of a slow, anonymous timeout.

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36


def _frame(api_key: int, version: int, correlation: int, body: bytes) -> bytes:
    client = b"podguard-probe"
    head = struct.pack(">hhih", api_key, version, correlation, len(client)) + client
    msg = head + body
    return struct.pack(">i", len(msg)) + msg


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the broker closed the connection")
        buf += chunk
    return buf


def _response(sock: socket.socket, correlation: int) -> bytes:
    (size,) = struct.unpack(">i", _read(sock, 4))
    if not 4 <= size <= 1 << 20:
        raise EOFError(f"implausible response size {size}")
    data = _read(sock, size)
    if struct.unpack(">i", data[:4])[0] != correlation:
        raise EOFError("response to another request")
    return data[4:]


def _string(data: bytes, at: int) -> tuple[str | None, int]:
    (n,) = struct.unpack(">h", data[at:at + 2])
    if n < 0:
        return None, at + 2
    return data[at + 2:at + 2 + n].decode("utf-8", "replace"), at + 2 + n


def _scram(sock: socket.socket, cfg: dict[str, Any]) -> None:
    from kafka.net.sasl.scram import ScramClient  # kafka-python's own SCRAM arithmetic

    mech = cfg["sasl_mechanism"].encode()
    sock.sendall(_frame(_SASL_HANDSHAKE, 1, 1, struct.pack(">h", len(mech)) + mech))
    data = _response(sock, 1)
    (code,) = struct.unpack(">h", data[:2])
    if code != 0:
        raise _Refused(f"the broker does not offer {cfg['sasl_mechanism']} (error {code})")
    client = ScramClient(cfg["sasl_plain_username"], cfg["sasl_plain_password"],
                         cfg["sasl_mechanism"])
    for step in range(2):
        token = client.first_message() if step == 0 else client.final_message()
        sock.sendall(_frame(_SASL_AUTHENTICATE, 0, 2 + step,
                            struct.pack(">i", len(token)) + token))
        try:
            data = _response(sock, 2 + step)
        except EOFError:
            raise _Refused("the broker closed the connection during the SCRAM exchange "
                           "(it does so for invalid credentials)") from None
        (code,) = struct.unpack(">h", data[:2])
        message, at = _string(data, 2)
        if code != 0:
            raise _Refused(f"SASL authentication failed: {message or f'error {code}'}")
        (n,) = struct.unpack(">i", data[at:at + 4])
        reply = data[at + 4:at + 4 + n]
        if step == 0:
            client.process_server_first_message(reply)
        else:
            client.process_server_final_message(reply)


class _Refused(Exception):
    pass


def probe(bootstrap_servers: Sequence[str], cfg: dict[str, Any], *, what: str, where: str,
          timeout_s: float) -> None:
    """One TLS (and SASL) handshake with the first bootstrap server that answers; returns
    quietly when none answers (the clients retry that themselves: temporary). Raises
    :class:`TlsError` or :class:`AuthError` for a refusal."""
    protocol = cfg.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return
    for server in bootstrap_servers:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue  # not answering: the clients' own retries handle that
        sock: socket.socket = raw
        try:
            if protocol in ("SSL", "SASL_SSL"):
                try:
                    sock = cfg["ssl_context"].wrap_socket(raw, server_hostname=host)
                except ssl.SSLCertVerificationError as e:
                    raise TlsError(f"{what}: the broker's certificate does not verify "
                                   f"({e.verify_message}); set {where}.ca_file to the CA that "
                                   f"signed it") from e
                except ssl.SSLError as e:
                    raise TlsError(f"{what}: TLS handshake with {server} failed ({e}); is "
                                   f"{where}.protocol right for this listener?") from e
            if protocol == "SSL":
                try:  # TLS 1.3: a refused client certificate shows on the first read
                    sock.sendall(_frame(_API_VERSIONS, 0, 1, b""))
                    _response(sock, 1)
                except ssl.SSLError as e:
                    raise TlsError(f"{what}: the broker refused the TLS session ({e}); does it "
                                   f"require a client certificate ({where}.cert_file, "
                                   f"{where}.key_file)?") from e
                except EOFError as e:
                    raise TlsError(f"{what}: the broker closed the connection after the TLS "
                                   f"handshake; does it require a client certificate "
                                   f"({where}.cert_file, {where}.key_file)?") from e
                except (OSError, struct.error):
                    return
            if protocol.startswith("SASL_") and str(cfg.get("sasl_mechanism", "")).startswith(
                    "SCRAM-"):
                try:
                    _scram(sock, cfg)
                except (_Refused, ValueError) as e:
                    raise AuthError(f"{what}: the broker refused the SASL credentials ({e}); "
                                    f"check {where}.username, {where}.password_file and "
                                    f"{where}.sasl_mechanism") from e
                except (OSError, EOFError, struct.error):
                    return  # a network problem, not a refusal: left to the clients
            return
        except OSError:
            return
        finally:
            sock.close()
