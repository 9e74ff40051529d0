"""The local Kubernetes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.

A real control plane (built from source by :mod:`deploy.local.k8s_build`) whose nodes are
simulated by kwok: three Node objects ``kwok-node-0..2`` that kwok keeps Ready, with pods
scheduled onto them by the real scheduler, driven by the real controllers (StatefulSet,
disruption, garbage collector, PV binder, ...) and moved to Running/deleted by kwok's stages.

Registered in the local stack as service ``"kubernetes"`` (see :mod:`deploy.local._service`).
Everything binds to 127.0.0.1 on ports chosen at start; all state lives in the stack
directory: ``<state>/kubeconfig`` (admin, what ``env()`` exports as KUBECONFIG),
``<state>/<process>.log|.pid``, ``<state>/kubernetes.json`` (the URLs chosen, which lets
``status`` work from another process) and ``<state>/kubernetes/`` (PKI, etcd data,
kubeconfigs of the components).
Every start generates a fresh CA, certificates and an empty etcd.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.local import _proc, k8s_build
from deploy.local._proc import LOOPBACK, StackError
from deploy.local._service import ServiceStatus
from deploy.local.k8s_pki import FRONT_PROXY_CLIENT, Pair, Pki, make_pki, write_kubeconfig

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service's ClusterIP, first of SERVICE_CIDR
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
NODE_LABEL = ("type", "kwok")

START_ATTEMPTS = 3  # a start that lost a port race is retried with new ports

# Started in this order, stopped in reverse.
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class NodeShape:
    """Allocatable resources of each kwok node (also reported as capacity)."""

    cpu: str = "32"  # cores
    memory: str = "256Gi"  # bytes, Kubernetes quantity
    pods: str = "110"
    gpus: str = "8"  # nvidia.com/gpu (extended resource, for GPU workloads); "0": none


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def listen_port() -> int:
    """A free port for a server, chosen below the kernel's ephemeral range.

    :func:`_proc.free_port` asks the kernel, which hands out ports from the same range it
    uses for the source ports of outgoing connections; with five processes opening
    connections while the next one starts, a port picked that way can be taken by a client
    socket before its server binds it ("address already in use"). Below the range only
    other servers compete, and we check those by binding.
    """
    lo, _ = _ephemeral_range()
    if lo <= 12000:
        return _proc.free_port()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, lo)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    return _proc.free_port()


def _http(url: str, *, ctx: ssl.SSLContext | None = None, method: str = "GET",
          body: Any = None, timeout: float = 3.0) -> tuple[int, bytes]:
    """One request on loopback, never through a proxy; returns (status, body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Accept": "application/json", **({"Content-Type": "application/json"} if data else {})})
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers) if ctx is not None else _NO_PROXY
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


class _Layout:
    """Paths of one stack directory's Kubernetes state."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.root = state / "kubernetes"
        self.pki = self.root / "pki"
        self.etcd_data = self.root / "etcd"
        self.kwok_home = self.root / "kwok-home"
        self.endpoints = state / "kubernetes.json"
        self.admin_kubeconfig = state / "kubeconfig"

    def kubeconfig(self, user: str) -> Path:
        return self.admin_kubeconfig if user == "admin" else self.root / f"{user}.kubeconfig"


@dataclass(frozen=True)
class Endpoints:
    """What ``start`` chose, saved to ``<state>/kubernetes.json`` for ``status``."""

    etcd: str  # client URL
    apiserver: str
    controller_manager: str
    scheduler: str
    kwok: str
    nodes: tuple[str, ...]
    start_seconds: dict[str, float]  # seconds from start() entry until each step was ready

    def url(self, process: str) -> str:
        return {"etcd": self.etcd, "kube-apiserver": self.apiserver,
                "kube-controller-manager": self.controller_manager,
                "kube-scheduler": self.scheduler, "kwok": self.kwok}[process]

    @classmethod
    def load(cls, path: Path) -> Endpoints | None:
        try:
            raw = json.loads(path.read_text())
            raw["nodes"] = tuple(raw["nodes"])
            return cls(**raw)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        tmp.replace(path)


class Kubernetes:
    """The local control plane with kwok nodes, as a stack service."""

    name = "kubernetes"

    def __init__(self, *, nodes: int = 3, shape: NodeShape | None = None,
                 timeout: float = 120.0) -> None:
        """``nodes``: kwok nodes made at start; ``timeout``: seconds each process may take."""
        self.node_count = nodes
        self.shape = shape or NodeShape()
        self.timeout = timeout

    # ---- prepare -------------------------------------------------------------------------

    def prepare(self) -> None:
        k8s_build.prepare()

    # ---- start ---------------------------------------------------------------------------

    def start(self, state: Path) -> None:
        lay = _Layout(state)
        if self._all_ready(lay):
            return  # already up from this stack directory: reuse it
        self.stop(state)
        bins = k8s_build.binaries()
        if bins.missing():
            raise StackError(
                "kubernetes binaries are not built yet (missing "
                f"{', '.join(p.name for p in bins.missing())}): run `python -m deploy.local "
                "prepare` (or `make prepare`) first; the first build takes several minutes")
        state.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once(lay, bins)
                return
            except StackError:
                self.stop(state)
                # Another server took a port between our check and the bind: try new ports.
                if attempt == START_ATTEMPTS or not _bind_conflict(state):
                    raise
            except BaseException:
                self.stop(state)
                raise

    def _start_once(self, lay: _Layout, bins: k8s_build.Binaries) -> None:
        state = lay.state
        t0 = time.monotonic()
        took: dict[str, float] = {}
        lay.endpoints.unlink(missing_ok=True)
        if lay.root.exists():
            shutil.rmtree(lay.root)
        lay.root.mkdir(parents=True)
        for p in PROCESSES:
            (state / f"{p}.log").unlink(missing_ok=True)

        pki = make_pki(lay.pki, extra_sans=(f"IP:{SERVICE_IP}",))
        took["pki"] = time.monotonic() - t0

        etcd_url = self._start_etcd(lay, bins)
        took["etcd"] = time.monotonic() - t0

        api_url = self._start_apiserver(lay, bins, pki, etcd_url)
        for user in ("admin", "kube-controller-manager", "kube-scheduler", "kwok"):
            write_kubeconfig(lay.kubeconfig(user), server=api_url, ca=pki.ca.cert,
                             client=pki.clients[user], user=user)
        admin = _Admin(api_url, pki)
        _proc.wait_until(admin.readyz, timeout=self.timeout, what="/readyz",
                         name="kube-apiserver", state=state)
        took["kube-apiserver"] = time.monotonic() - t0

        # The rest start together and are waited for afterwards.
        kcm_url = self._start_kcm(lay, bins, pki, pki.serving["kube-controller-manager"])
        sched_url = self._start_scheduler(lay, bins, pki.serving["kube-scheduler"])
        admin.ensure_cluster_admin("podguard:kwok-controller", "kwok-controller")
        kwok_url = self._start_kwok(lay, bins)
        nodes = tuple(f"kwok-node-{i}" for i in range(self.node_count))
        for n in nodes:
            admin.create_node(n, self.shape)

        ca_ctx = _client_ctx(pki.ca.cert)
        _proc.wait_until(lambda: _healthz(kcm_url, ca_ctx), timeout=self.timeout,
                         what="/healthz", name="kube-controller-manager", state=state)
        _proc.wait_until(lambda: _healthz(sched_url, ca_ctx), timeout=self.timeout,
                         what="/healthz", name="kube-scheduler", state=state)
        took["controllers"] = time.monotonic() - t0
        # The ServiceAccount admission plugin rejects pods until the controller manager
        # made the namespace's `default` ServiceAccount: that is "ready for pods".
        _proc.wait_until(
            lambda: admin.exists("/api/v1/namespaces/default/serviceaccounts/default"),
            timeout=self.timeout, what="the default ServiceAccount",
            name="kube-controller-manager", state=state)
        _proc.wait_until(lambda: _healthz(kwok_url, None), timeout=self.timeout,
                         what="/healthz", name="kwok", state=state)
        _proc.wait_until(lambda: admin.ready_nodes(nodes) == len(nodes),
                         timeout=self.timeout, what=f"{len(nodes)} Ready kwok nodes",
                         name="kwok", state=state)
        took["ready"] = time.monotonic() - t0
        Endpoints(etcd=etcd_url, apiserver=api_url, controller_manager=kcm_url,
                  scheduler=sched_url, kwok=kwok_url, nodes=nodes,
                  start_seconds={k: round(v, 2) for k, v in took.items()}).save(lay.endpoints)

    def _start_etcd(self, lay: _Layout, bins: k8s_build.Binaries) -> str:
        client = listen_port()
        peer = listen_port()
        while peer == client:
            peer = listen_port()
        url = f"http://{LOOPBACK}:{client}"
        peer_url = f"http://{LOOPBACK}:{peer}"
        _proc.start("etcd", [
            str(bins.etcd), "--name=podguard", f"--data-dir={lay.etcd_data}",
            f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=podguard={peer_url}", "--initial-cluster-state=new",
            "--auto-compaction-mode=periodic", "--auto-compaction-retention=10m",
            # a throw-away test store: no fsync keeps it fast on slow disks
            "--unsafe-no-fsync", "--log-level=warn",
        ], lay.state)
        _proc.wait_until(lambda: _etcd_healthy(url), timeout=self.timeout, what="/health",
                         name="etcd", state=lay.state)
        return url

    def _start_apiserver(self, lay: _Layout, bins: k8s_build.Binaries, pki: Pki,
                         etcd_url: str) -> str:
        port = listen_port()
        _proc.start("kube-apiserver", [
            str(bins.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={LOOPBACK}", f"--secure-port={port}",
            f"--advertise-address={LOOPBACK}",
            f"--cert-dir={lay.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}", f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--authorization-mode=Node,RBAC",
            # The aggregation layer's request-header authentication, as kubeadm sets it up;
            # without it the controller manager and scheduler log errors about its CA.
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            # Endpoints may not hold loopback addresses, so the `kubernetes` Service cannot
            # list 127.0.0.1: do not try (the default "lease" reconciler logs an error every
            # 10 s). Nothing in-cluster needs it: kwok pods do not run.
            "--endpoint-reconciler-type=none",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
        ], lay.state)
        return f"https://{LOOPBACK}:{port}"

    def _start_kcm(self, lay: _Layout, bins: k8s_build.Binaries, pki: Pki,
                   serving: Pair) -> str:
        port = listen_port()
        kc = lay.kubeconfig("kube-controller-manager")
        _proc.start("kube-controller-manager", [
            str(bins.kube_controller_manager),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--bind-address={LOOPBACK}", f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            "--controllers=*",
            # One instance: leader election only adds a way to die (a lease renewal that a
            # loaded machine delays past its deadline makes the process exit for good).
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--cluster-name=podguard-local",
            # default /usr/libexec/kubernetes/..., which it would create outside the state
            f"--flex-volume-plugin-dir={lay.root / 'flexvolume'}",
            "--profiling=false",
        ], lay.state)
        return f"https://{LOOPBACK}:{port}"

    def _start_scheduler(self, lay: _Layout, bins: k8s_build.Binaries, serving: Pair) -> str:
        port = listen_port()
        kc = lay.kubeconfig("kube-scheduler")
        _proc.start("kube-scheduler", [
            str(bins.kube_scheduler),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--bind-address={LOOPBACK}", f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            "--leader-elect=false",  # one instance, as the controller manager
            "--profiling=false",
        ], lay.state)
        return f"https://{LOOPBACK}:{port}"

    def _start_kwok(self, lay: _Layout, bins: k8s_build.Binaries) -> str:
        port = listen_port()
        lay.kwok_home.mkdir(parents=True, exist_ok=True)
        _proc.start("kwok", [
            str(bins.kwok),
            f"--kubeconfig={lay.kubeconfig('kwok')}",
            f"--config={bins.kwok_stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
            # Node addresses and the "kubelet" port point at kwok's own loopback server, so
            # nothing ever tries to reach a node elsewhere.
            f"--node-ip={LOOPBACK}", f"--node-port={port}",
            f"--server-address={LOOPBACK}:{port}",
        ], lay.state, env={"HOME": str(lay.kwok_home)})  # ignore a user's ~/.kwok/kwok.yaml
        return f"http://{LOOPBACK}:{port}"

    # ---- stop / status / env -------------------------------------------------------------

    def stop(self, state: Path) -> None:
        for p in reversed(PROCESSES):
            _proc.stop(p, state)

    def status(self, state: Path) -> list[ServiceStatus]:
        lay = _Layout(state)
        ep = Endpoints.load(lay.endpoints)
        out: list[ServiceStatus] = []
        admin = self._admin(lay, ep)
        for p in PROCESSES:
            pid = _proc.pid_of(p, state)
            if not _proc.alive(pid):
                pid = None
            url = ep.url(p) if ep else ""
            ready, detail = False, "not running"
            if pid and ep and admin:
                try:
                    ready, detail = self._probe(p, ep, admin)
                except (OSError, ValueError) as e:
                    ready, detail = False, f"not ready: {e}"
            out.append(ServiceStatus(name=p, url=url, ready=ready, pid=pid,
                                     rss_bytes=_proc.rss_bytes(pid), detail=detail))
        return out

    def env(self, state: Path) -> dict[str, str]:
        kubeconfig = _Layout(state).admin_kubeconfig
        return {"KUBECONFIG": str(kubeconfig)} if kubeconfig.is_file() else {}

    def endpoints(self, state: Path) -> Endpoints | None:
        """What the last start in ``state`` chose (URLs, node names, start timings)."""
        return Endpoints.load(_Layout(state).endpoints)

    # ---- helpers -------------------------------------------------------------------------

    def _admin(self, lay: _Layout, ep: Endpoints | None) -> _Admin | None:
        pki_dir = lay.pki
        if ep is None or not (pki_dir / "admin.crt").is_file():
            return None
        return _Admin(ep.apiserver, pki_dir=pki_dir)

    def _probe(self, p: str, ep: Endpoints, admin: _Admin) -> tuple[bool, str]:
        if p == "etcd":
            code, body = _http(f"{ep.etcd}/version")
            ok = _etcd_healthy(ep.etcd)
            return ok, f"etcd {json.loads(body).get('etcdserver', '?')}" if code == 200 else ""
        if p == "kube-apiserver":
            ok = admin.readyz()
            code, body = admin.get("/version")
            return ok, json.loads(body).get("gitVersion", "") if code == 200 else ""
        if p in ("kube-controller-manager", "kube-scheduler"):
            ok = _healthz(ep.url(p), admin.ca_ctx)
            return ok, "healthz ok" if ok else "healthz not ok"
        ready = admin.ready_nodes(ep.nodes)
        ok = _healthz(ep.kwok, None) and ready == len(ep.nodes)
        return ok, f"{ready}/{len(ep.nodes)} kwok nodes Ready"

    def _all_ready(self, lay: _Layout) -> bool:
        if Endpoints.load(lay.endpoints) is None:
            return False
        if not all(_proc.alive(_proc.pid_of(p, lay.state)) for p in PROCESSES):
            return False
        return all(s.ready for s in self.status(lay.state))


def _bind_conflict(state: Path) -> bool:
    """Whether a process of the last attempt failed to bind its port."""
    for p in PROCESSES:
        try:
            if "address already in use" in (state / f"{p}.log").read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def _client_ctx(ca: Path, client: Pair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _etcd_healthy(url: str) -> bool:
    code, body = _http(f"{url}/health")
    return code == 200 and json.loads(body).get("health") == "true"


def _healthz(url: str, ctx: ssl.SSLContext | None) -> bool:
    code, body = _http(f"{url}/healthz", ctx=ctx)
    return code == 200 and body.strip() == b"ok"


class _Admin:
    """The few API calls the stack itself makes, as the admin user (no client library)."""

    def __init__(self, server: str, pki: Pki | None = None, *, pki_dir: Path | None = None
                 ) -> None:
        if pki is not None:
            ca, client = pki.ca.cert, pki.clients["admin"]
        elif pki_dir is not None:
            ca, client = pki_dir / "ca.crt", Pair(pki_dir / "admin.crt", pki_dir / "admin.key")
        else:
            raise ValueError("pki or pki_dir")
        self.server = server
        self.ca_ctx = _client_ctx(ca)
        self.ctx = _client_ctx(ca, client)

    def get(self, path: str) -> tuple[int, bytes]:
        return _http(self.server + path, ctx=self.ctx)

    def readyz(self) -> bool:
        code, body = self.get("/readyz")
        return code == 200 and body.strip() == b"ok"

    def exists(self, path: str) -> bool:
        return self.get(path)[0] == 200

    def _create(self, path: str, obj: dict[str, Any]) -> None:
        code, body = _http(self.server + path, ctx=self.ctx, method="POST", body=obj)
        if code not in (200, 201, 409):  # 409: already there (a retried start)
            raise StackError(f"creating {obj['kind']} {obj['metadata']['name']} failed: "
                             f"HTTP {code}: {body[:500]!r}")

    def ensure_cluster_admin(self, binding: str, user: str) -> None:
        self._create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": user}],
        })

    def create_node(self, name: str, shape: NodeShape) -> None:
        resources = {"cpu": shape.cpu, "memory": shape.memory, "pods": shape.pods}
        if shape.gpus != "0":
            resources["nvidia.com/gpu"] = shape.gpus
        self._create("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                                "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {NODE_LABEL[0]: NODE_LABEL[1], "kubernetes.io/hostname": name,
                           "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                           "kubernetes.io/role": "agent"},
            },
            "spec": {},
            "status": {"allocatable": resources, "capacity": resources},
        })

    def ready_nodes(self, names: tuple[str, ...]) -> int:
        code, body = self.get(f"/api/v1/nodes?labelSelector={NODE_LABEL[0]}%3D{NODE_LABEL[1]}")
        if code != 200:
            return 0
        ready = 0
        for item in json.loads(body).get("items", []):
            if item["metadata"]["name"] not in names:
                continue
            conds = item.get("status", {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                ready += 1
        return ready
