"""One HTTP client for podguard's own calls (Prometheus, Alertmanager): TLS, auth, errors.

:class:`HttpClient` wraps a ``requests.Session`` built from
:class:`~detector.settings.HttpClientSettings`:

* **TLS** is verified, always, unless ``insecure_skip_verify`` says otherwise: against
  ``ca_file`` when given, else the system's CAs. ``cert_file`` + ``key_file`` add a client
  certificate (mutual TLS).
* **Auth**: a bearer token from ``bearer_token_file`` or basic auth with the password from
  ``password_file``. Both files are re-read when they change (inode, size or mtime), so a
  rotated Kubernetes token is picked up without a restart. Never both.
* **Headers**: ``headers`` go with every request (``X-Scope-OrgID`` for Mimir/Cortex/Thanos).
* **Proxies**: a loopback URL never goes through an ``HTTP(S)_PROXY`` of the environment.

Every failure is mapped onto the exception tree (:mod:`detector.errors`), with the cause
chained and the settings key to look at named: no answer, a timeout, HTTP 429 or 5xx ->
:class:`~detector.errors.ServiceUnavailableError` (temporary; ``delay`` from ``Retry-After``);
a certificate that does not verify -> :class:`~detector.errors.TlsError`; 401/403 ->
:class:`~detector.errors.AuthError`; other 4xx -> :class:`~detector.errors.PermanentError`.
Retrying is the caller's choice, through :mod:`detector.transport.retry`; this module never
retries by itself (urllib3's own retries are off).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from detector.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    ServiceUnavailableError,
    TlsError,
)
from detector.settings import HttpClientSettings
from detector.transport.retry import parse_retry_after

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_SECRET_BYTES = 64 * 1024


class FileSecret:
    """The stripped text of a file, re-read whenever the file changes (a Kubernetes secret or
    projected token is swapped in atomically by a symlink flip: the inode changes)."""

    def __init__(self, path: str, *, key: str) -> None:
        self.path = Path(path)
        self.key = key  # the setting that named the file, for error messages
        self._stamp: tuple[int, int, int, int] | None = None
        self._value = ""
        self.reads = 0  # how many times the file was read (tests)

    def get(self) -> str:
        try:
            st = os.stat(self.path)  # follows symlinks: a flipped ..data link is seen
        except OSError as e:
            raise ConfigError(f"{self.key}: cannot read {self.path}: {e.strerror}") from e
        stamp = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            if st.st_size > MAX_SECRET_BYTES:
                raise ConfigError(f"{self.key}: {self.path} is {st.st_size} bytes; a token or "
                                  f"password file holds at most {MAX_SECRET_BYTES}")
            try:
                raw = self.path.read_bytes()
            except OSError as e:
                raise ConfigError(f"{self.key}: cannot read {self.path}: {e.strerror}") from e
            try:
                value = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(f"{self.key}: {self.path} is not UTF-8 text") from None
            if not value:
                raise ConfigError(f"{self.key}: {self.path} is empty")
            if any(c in value for c in "\r\n\0"):
                raise ConfigError(f"{self.key}: {self.path} holds more than one line")
            self._value, self._stamp = value, stamp
            self.reads += 1
        return self._value


class _FileAuth(requests.auth.AuthBase):
    """Bearer token or basic auth, each secret read from its file at every request (cheap:
    a stat; the file is read again only when it changed)."""

    def __init__(self, *, token: FileSecret | None = None, username: str = "",
                 password: FileSecret | None = None) -> None:
        self.token = token
        self.username = username
        self.password = password

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.token is not None:
            r.headers["Authorization"] = f"Bearer {self.token.get()}"
        elif self.password is not None:
            basic = requests.auth.HTTPBasicAuth(self.username, self.password.get())
            return basic(r)
        return r


def _file(path: str, key: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: {path} does not exist or is not a file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{key}: {path} is not readable")
    return str(p)


def build_session(settings: HttpClientSettings, *, where: str, url: str = "") -> requests.Session:
    """A ``requests.Session`` with the TLS, auth and headers of ``settings``.

    ``where`` is the settings path of ``settings`` (e.g. ``sources.prometheus.http``), used
    in every error message. Raises :class:`ConfigError` for missing files or contradictions.
    """
    s = settings
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=0)  # retrying is detector.transport.retry's job
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if s.insecure_skip_verify:
        if s.ca_file:
            raise ConfigError(f"{where}: ca_file and insecure_skip_verify contradict each other")
        session.verify = False
    elif s.ca_file:
        session.verify = _file(s.ca_file, f"{where}.ca_file")
    else:
        session.verify = True
    if s.cert_file or s.key_file:
        if not (s.cert_file and s.key_file):
            raise ConfigError(f"{where}: cert_file and key_file go together (mutual TLS needs "
                              "both the certificate and its key)")
        session.cert = (_file(s.cert_file, f"{where}.cert_file"),
                        _file(s.key_file, f"{where}.key_file"))
    if s.bearer_token_file and (s.username or s.password_file):
        raise ConfigError(f"{where}: give bearer_token_file or username/password_file, not both")
    if s.bearer_token_file:
        session.auth = _FileAuth(token=FileSecret(_file(s.bearer_token_file,
                                                        f"{where}.bearer_token_file"),
                                                  key=f"{where}.bearer_token_file"))
    elif s.username or s.password_file:
        if not (s.username and s.password_file):
            raise ConfigError(f"{where}: basic auth needs both username and password_file")
        session.auth = _FileAuth(username=s.username, password=FileSecret(
            _file(s.password_file, f"{where}.password_file"), key=f"{where}.password_file"))
    for name, value in s.headers.items():
        if not name or any(c in name + value for c in "\r\n\0") or ":" in name:
            raise ConfigError(f"{where}.headers: invalid header {name!r}")
        if name.lower() == "authorization" and session.auth is not None:
            raise ConfigError(f"{where}.headers: Authorization is set by the auth settings")
    session.headers.update(s.headers)
    if url and (urlsplit(url).hostname or "") in LOOPBACK_HOSTS:
        session.trust_env = False  # a loopback URL never goes through a proxy
    return session


class HttpClient:
    """Requests to one service (base URL), errors mapped as the module docstring says."""

    def __init__(self, base_url: str, settings: HttpClientSettings | None = None, *,
                 where: str, timeout_s: float, session: requests.Session | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.settings = settings or HttpClientSettings()
        self.where = where
        self.timeout_s = timeout_s
        self.session = session if session is not None else build_session(
            self.settings, where=where, url=base_url)

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,),
                timeout_s: float | None = None, **kwargs: Any) -> requests.Response:
        """``method`` on ``base_url + path``; the response when its status is in ``ok``."""
        url = self.base_url + path
        what = f"{method} {self.base_url}{path.split('?', 1)[0]}"
        try:
            resp = self.session.request(method, url, timeout=timeout_s or self.timeout_s,
                                        **kwargs)
        except requests.exceptions.SSLError as e:
            raise TlsError(f"{what}: TLS handshake failed: {_reason(e)}; {self._tls_hint()}"
                           ) from e
        except requests.exceptions.InvalidHeader as e:
            raise ConfigError(f"{self.where}: {e}") from e
        except requests.RequestException as e:  # no answer, reset, timeout
            raise ServiceUnavailableError(f"{what}: no answer: {_reason(e)}") from e
        if resp.status_code in ok:
            return resp
        raise self.error(what, resp)

    def error(self, what: str, resp: requests.Response) -> Exception:
        """The exception for a refused answer (status not accepted by the caller)."""
        code = resp.status_code
        text = _snippet(resp)
        if code == 429 or code >= 500:
            delay = parse_retry_after(resp.headers.get("Retry-After"))
            return ServiceUnavailableError(f"{what}: HTTP {code}: {text}", delay=delay)
        if code in (401, 403):
            word = "unauthorized" if code == 401 else "forbidden"
            return AuthError(f"{what}: HTTP {code} ({word}): {text}; check {self._auth_hint()}")
        return PermanentError(f"{what}: HTTP {code}: {text}")

    def close(self) -> None:
        self.session.close()

    def _tls_hint(self) -> str:
        s = self.settings
        if s.ca_file:
            return (f"the server's certificate does not verify against {self.where}.ca_file "
                    f"({s.ca_file}) or does not name the host")
        return (f"set {self.where}.ca_file to the CA that signed the server's certificate "
                f"(verification is on; the system's CAs do not know it)")

    def _auth_hint(self) -> str:
        s = self.settings
        if s.bearer_token_file:
            return f"the token in {self.where}.bearer_token_file ({s.bearer_token_file})"
        if s.password_file:
            return (f"{self.where}.username ({s.username!r}) and the password in "
                    f"{self.where}.password_file")
        return (f"{self.where}: the server wants credentials (bearer_token_file or "
                f"username/password_file)")


def _reason(e: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 error."""
    inner: BaseException = e
    seen = 0
    while seen < 8:
        nxt = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else (
            getattr(inner, "reason", None) or inner.__cause__ or inner.__context__)
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
        seen += 1
    text = str(inner) or type(inner).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _snippet(resp: requests.Response) -> str:
    text = resp.text[:300].strip().replace("\n", " ")
    return text or "(empty body)"

