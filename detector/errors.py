"""The exception tree of podguard.

Every error raised on purpose by podguard derives from :class:`PodguardError`.
Whether a caller should retry is decided by the branch, not by the message:

* :class:`TemporaryError` - the same call may succeed later (a server is down,
  answered 429/5xx, a connection broke). Carries an optional ``delay`` hint in
  seconds (e.g. from ``Retry-After``).
* :class:`PermanentError` - retrying the same call cannot help (bad input, a
  tampered model file, a forbidden API call).
"""

from __future__ import annotations


class PodguardError(Exception):
    """Base class of every error podguard raises on purpose."""


class TemporaryError(PodguardError):
    """A failure that may go away if the same operation is retried later."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay  # seconds, a hint for the next attempt; None = caller's backoff


class PermanentError(PodguardError):
    """A failure that retrying cannot fix."""


class InputError(PermanentError, ValueError):
    """Input data (a trace, a message, a configuration) is malformed; the message names what."""


class ConfigError(InputError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class NotFittedError(PermanentError):
    """A detector was asked to score before ``fit`` was called."""


class ThresholdNotInferredError(PermanentError):
    """A detector was asked for a verdict before ``infer_threshold`` was called."""


class ModelIntegrityError(PermanentError):
    """A model artifact is missing, tampered with, foreign, or uses a forbidden format (pickle)."""


class ServiceUnavailableError(TemporaryError):
    """A remote service (Prometheus, Kafka, Alertmanager, the API server) did not answer."""


class AuthError(PermanentError):
    """A server refused podguard's credentials (HTTP 401/403, a failed SASL handshake): the
    same credentials will be refused again, so the call is not retried."""


class TlsError(PermanentError):
    """A TLS handshake failed: the server's certificate does not verify against the
    configured CA, names another host, or the client certificate was refused."""
