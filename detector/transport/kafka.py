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

import ssl
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


def classify(e: BaseException, *, what: str, where: str) -> PodguardError:
    """The podguard error for a kafka-python failure ``e`` (see the module docstring)."""
    if isinstance(e, PodguardError):
        return e
    text = f"{type(e).__name__}: {e}"
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    names = " ".join(type(x).__name__ for x in chain)
    if "SaslAuthenticationFailed" in names or "AuthenticationFailed" in names or (
            "authentication" in text.lower() and "fail" in text.lower()):
        return AuthError(f"{what}: the broker refused the SASL credentials ({text}); check "
                         f"{where}.username, {where}.password_file and {where}.sasl_mechanism")
    if any(isinstance(x, ssl.SSLCertVerificationError) for x in chain) or (
            "CERTIFICATE_VERIFY_FAILED" in text):
        return TlsError(f"{what}: the broker's certificate does not verify ({text}); set "
                        f"{where}.ca_file to the CA that signed it")
    return ServiceUnavailableError(f"{what}: {text}")
