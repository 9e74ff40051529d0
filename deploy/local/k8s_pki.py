"""Certificates, keys and kubeconfigs for the local control plane, made with the openssl CLI.

Called by :class:`deploy.local.kubernetes.Kubernetes` at every start, into a fresh
``<state>/kubernetes/pki``: a CA; kube-apiserver's serving certificate; the service-account
signing key pair; the front-proxy (request-header) CA and its client certificate; serving
certificates for the controller manager and scheduler; one client certificate per user
(admin in ``system:masters``, the controller manager and scheduler under their well-known
names, kwok's controller), each wrapped in a kubeconfig. EC P-256 keys: generating them
takes milliseconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.local._proc import StackError

VALID_DAYS = 365
CLUSTER = "podguard-local"
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Pair
    apiserver: Pair
    sa_key: Path  # private, signs service-account tokens
    sa_pub: Path  # public, verifies them
    clients: dict[str, Pair]  # "admin", "kube-controller-manager", "kube-scheduler", "kwok"
    serving: dict[str, Pair]  # "kube-controller-manager", "kube-scheduler": their HTTPS ports
    front_proxy_ca: Pair  # request-header CA: authenticates the apiserver to aggregated APIs
    front_proxy_client: Pair


# user -> (CommonName, Organization or "")
CLIENTS: dict[str, tuple[str, str]] = {
    "admin": ("podguard-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", ""),
    "kube-scheduler": ("system:kube-scheduler", ""),
    "kwok": ("kwok-controller", ""),
}

APISERVER_SANS = (
    "IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
)


def _openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        raise StackError("the local Kubernetes needs the `openssl` command for its certificates: "
                         "install it (Debian/Ubuntu: apt-get install openssl)")
    return found


def _run(args: list[str]) -> None:
    proc = subprocess.run(
        [_openssl(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        check=False)
    if proc.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {proc.stdout.strip()}")


def _cert(d: Path, name: str, *, cn: str, org: str, ext: list[str],
          ca: Pair | None) -> Pair:
    """A new EC key and a certificate for it, self-signed when ``ca`` is None."""
    cnf = d / f"{name}.cnf"
    subject = f"CN = {cn}\n" + (f"O = {org}\n" if org else "")
    cnf.write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = ext\n"
        f"[dn]\n{subject}[ext]\n" + "\n".join(ext) + "\n")
    pair = Pair(cert=d / f"{name}.crt", key=d / f"{name}.key")
    args = ["req", "-x509", "-new", "-config", str(cnf), "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256",
            "-days", str(VALID_DAYS), "-keyout", str(pair.key), "-out", str(pair.cert)]
    if ca is not None:
        args += ["-CA", str(ca.cert), "-CAkey", str(ca.key)]
    _run(args)
    pair.key.chmod(0o600)
    cnf.unlink()
    return pair


def make_pki(d: Path, *, extra_sans: tuple[str, ...] = ()) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca_ext = ["basicConstraints = critical, CA:TRUE",
              "keyUsage = critical, keyCertSign, cRLSign, digitalSignature",
              "subjectKeyIdentifier = hash"]
    ca = _cert(d, "ca", cn="podguard-local-ca", org="", ca=None, ext=ca_ext)
    fp_ca = _cert(d, "front-proxy-ca", cn="podguard-local-front-proxy-ca", org="", ca=None,
                  ext=ca_ext)
    leaf = ["basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
            "authorityKeyIdentifier = keyid"]
    apiserver = _cert(d, "kube-apiserver", cn="kube-apiserver", org="", ca=ca, ext=[
        *leaf, "extendedKeyUsage = serverAuth",
        "subjectAltName = " + ", ".join((*APISERVER_SANS, *extra_sans)),
    ])
    serving = {
        name: _cert(d, f"{name}-serving", cn=name, org="", ca=ca, ext=[
            *leaf, "extendedKeyUsage = serverAuth",
            "subjectAltName = IP:127.0.0.1, DNS:localhost"])
        for name in ("kube-controller-manager", "kube-scheduler")
    }
    clients = {
        user: _cert(d, user, cn=cn, org=org, ca=ca, ext=[*leaf, "extendedKeyUsage = clientAuth"])
        for user, (cn, org) in CLIENTS.items()
    }
    fp_client = _cert(d, "front-proxy-client", cn=FRONT_PROXY_CLIENT, org="", ca=fp_ca,
                      ext=[*leaf, "extendedKeyUsage = clientAuth"])
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-out", str(sa_key)])
    sa_key.chmod(0o600)
    _run(["pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)])
    return Pki(ca=ca, apiserver=apiserver, sa_key=sa_key, sa_pub=sa_pub, clients=clients,
               serving=serving, front_proxy_ca=fp_ca, front_proxy_client=fp_client)


def write_kubeconfig(path: Path, *, server: str, ca: Path, client: Pair, user: str) -> None:
    """A kubeconfig with one cluster/user/context, referring to the files by absolute path.

    JSON is YAML, so every kubeconfig reader accepts it.
    """
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": {
            "server": server, "certificate-authority": str(ca.resolve())}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(client.cert.resolve()),
            "client-key": str(client.key.resolve())}}],
        "contexts": [{"name": f"{user}@{CLUSTER}",
                      "context": {"cluster": CLUSTER, "user": user}}],
        "current-context": f"{user}@{CLUSTER}",
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
