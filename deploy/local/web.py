"""TLS and basic auth for the stack's HTTP services (Prometheus, Alertmanager): a web config.

Both read the Prometheus exporter-toolkit web configuration (``--web.config.file``). A
service made with ``web=WebSecurity(...)`` gets, in ``<state>/<name>/web/``: a test CA, a
server certificate for 127.0.0.1/localhost signed by it, a client certificate (for mutual
TLS), a random basic-auth password (in ``password``, mode 0600; only its bcrypt hash goes into
``web-config.yml``). What a client needs is kept in the service's record (:class:`WebFiles`),
so the stack's own probes, the tests and ``python -m deploy.local env`` find it again.

Made with the openssl CLI (as the local Kubernetes' certificates, :mod:`deploy.local.k8s_pki`)
and the ``bcrypt`` package (a dev dependency; needed only when basic auth is asked for).
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from deploy.local._proc import StackError
from deploy.local.k8s_pki import Pair
from deploy.local.k8s_pki import _cert as issue_cert

ClientAuth = Literal["none", "optional", "require"]
_CLIENT_AUTH_TYPE = {"none": "NoClientCert", "optional": "VerifyClientCertIfGiven",
                     "require": "RequireAndVerifyClientCert"}


@dataclass(frozen=True)
class WebSecurity:
    """How an HTTP service of the stack is protected."""

    tls: bool = True
    client_certs: ClientAuth = "none"  # "require": mutual TLS with the stack's client cert
    basic_auth_user: str = ""  # non-empty: basic auth with this user and a random password


@dataclass(frozen=True)
class WebFiles:
    """What a client of a protected service needs (paths are absolute)."""

    web_config: str
    scheme: str  # "https" or "http"
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    username: str = ""
    password_file: str = ""

    def to_record(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> WebFiles | None:
        web = record.get("web")
        if not isinstance(web, dict):
            return None
        return cls(**{k: str(v) for k, v in web.items() if k in cls.__dataclass_fields__})

    @property
    def password(self) -> str:
        return Path(self.password_file).read_text().strip() if self.password_file else ""

    def context(self) -> ssl.SSLContext | None:
        """A client TLS context trusting the stack's CA, with the client certificate (sent
        only when the server asks for one)."""
        if self.scheme != "https":
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx

    def headers(self) -> dict[str, str]:
        if not self.username:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def scrape_config(self) -> dict[str, Any]:
        """The part of a Prometheus scrape config that reaches this service (self-scrape)."""
        out: dict[str, Any] = {"scheme": self.scheme}
        if self.scheme == "https":
            out["tls_config"] = {"ca_file": self.ca_file, "cert_file": self.client_cert,
                                 "key_file": self.client_key}
        if self.username:
            out["basic_auth"] = {"username": self.username, "password_file": self.password_file}
        return out


def write(home: Path, security: WebSecurity) -> WebFiles:
    """Certificates, password and ``web-config.yml`` under ``home/web`` (made once, kept
    across restarts while ``security`` stays the same)."""
    d = home / "web"
    spec = d / "spec.json"
    wanted = json.dumps(asdict(security), sort_keys=True)
    files = _files(d, security)
    if spec.exists() and spec.read_text() == wanted and Path(files.web_config).exists():
        return files
    d.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {}
    if security.tls:
        ca_ext = ["basicConstraints = critical, CA:TRUE",
                  "keyUsage = critical, keyCertSign, cRLSign, digitalSignature",
                  "subjectKeyIdentifier = hash"]
        leaf = ["basicConstraints = critical, CA:FALSE",
                "keyUsage = critical, digitalSignature, keyEncipherment",
                "authorityKeyIdentifier = keyid"]
        ca = issue_cert(d, "ca", cn="podguard-stack-test-ca", org="", ca=None, ext=ca_ext)
        server = issue_cert(d, "server", cn="127.0.0.1", org="", ca=ca, ext=[
            *leaf, "extendedKeyUsage = serverAuth",
            "subjectAltName = IP:127.0.0.1, DNS:localhost"])
        issue_cert(d, "client", cn="podguard", org="", ca=ca,
                   ext=[*leaf, "extendedKeyUsage = clientAuth"])
        tls: dict[str, Any] = {"cert_file": str(server.cert), "key_file": str(server.key)}
        if security.client_certs != "none":
            tls["client_auth_type"] = _CLIENT_AUTH_TYPE[security.client_certs]
            tls["client_ca_file"] = str(ca.cert)
        config["tls_server_config"] = tls
    if security.basic_auth_user:
        password = secrets.token_urlsafe(18)
        pw = d / "password"
        pw.write_text(password + "\n")
        pw.chmod(0o600)
        config["basic_auth_users"] = {security.basic_auth_user: _bcrypt(password)}
    Path(files.web_config).write_text(
        "# written by deploy/local/web.py\n" + yaml.safe_dump(config, sort_keys=False))
    spec.write_text(wanted)
    return files


def _files(d: Path, security: WebSecurity) -> WebFiles:
    d = d.resolve()
    ca, client = Pair(d / "ca.crt", d / "ca.key"), Pair(d / "client.crt", d / "client.key")
    return WebFiles(
        web_config=str(d / "web-config.yml"), scheme="https" if security.tls else "http",
        ca_file=str(ca.cert) if security.tls else "",
        client_cert=str(client.cert) if security.tls else "",
        client_key=str(client.key) if security.tls else "",
        username=security.basic_auth_user,
        password_file=str(d / "password") if security.basic_auth_user else "")


def _bcrypt(password: str) -> str:
    try:
        import bcrypt
    except ImportError:
        raise StackError("basic auth of the local stack needs the bcrypt package (a dev "
                         "dependency): .venv/bin/pip install bcrypt==5.0.0, or make prepare"
                         ) from None
    # Cost 6: the servers check the hash on every request; this is a test password.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6)).decode()
