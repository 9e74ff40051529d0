"""The real-node harness: real processes under real memory limits, measured by cAdvisor.

Three processes, all on 127.0.0.1, all started and stopped by PID by :class:`RealNode`:

1. **cAdvisor** (:mod:`deploy.local.cadvisor`), reporting only cgroups under
   ``/podguard-node-*``;
2. **the supervisor** (``python -m deploy.local.node supervise SPEC``, :func:`supervise`),
   which plays the kubelet's part: each container incarnation runs in its own cgroup
   ``/<parent>/<namespace>/<pod>/<container>/<restart>`` (memory limit, cpu quota; v1 or v2,
   :mod:`deploy.local.cgroups`), is restarted after it exits (``restartPolicy: Always``,
   with a back-off), and the reason it ended is the kernel's: ``OOMKilled`` when the cgroup's
   ``oom_kill`` count (``memory.oom_control`` v1, ``memory.events`` v2) rose, else
   ``Error``/``Completed`` from the exit status. It serves what kube-state-metrics would on its
   ``/metrics`` (``kube_pod_container_status_restarts_total``,
   ``kube_pod_container_status_last_terminated_reason{reason=...}``,
   ``kube_pod_container_resource_limits{resource="memory"|"cpu"}``,
   ``kube_pod_container_status_running``) and appends every start, OOM kill and exit to
   ``events.jsonl`` (the ground truth of a recording);
3. **Prometheus** (:class:`NodePrometheus`, Debian's binary through
   :class:`deploy.local.prometheus.Prometheus`), scraping both; cAdvisor's ``id`` (the cgroup
   path) is relabelled into ``namespace``/``pod``/``container``, as a kubelet's cAdvisor
   labels its series, and cgroups that are not a container incarnation are dropped.

With a ``kubernetes`` section in its spec the supervisor also plays the kubelet of kwok nodes
(:mod:`deploy.local.story_kubelet`): each pod the API server shows Running on one of them gets
its containers started as above, in ``/<parent>/<namespace>/<pod>/pod<uid>/<container>/<n>``
(a recreated pod of the same name is a new series, as under a kubelet), and stopped when the
pod is deleted or evicted.

On stop the supervisor kills its workloads and removes its parent cgroup; :meth:`RealNode.stop`
checks and removes what is left of that tree (its own, never anything else).

It is its own Prometheus, not the stack's: the harness's pods must not show up in the other
tests' queries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.local import _proc, cadvisor
from deploy.local._proc import LOOPBACK, StackError
from deploy.local.cgroups import CgroupError, Cgroups, detect, owned_parent_name
from deploy.local.prometheus import Prometheus
from deploy.local.stack import atomic_write, http

MIB = 1 << 20
EVENTS = "events.jsonl"


@dataclass(frozen=True)
class Workload:
    """One container of one pod: what runs, under which limits."""

    pod: str
    kind: str  # a kind of deploy.local.node_workloads
    memory_limit_bytes: int
    args: tuple[str, ...] = ()
    container: str = "main"
    cpu_millicores: int | None = 1000
    leaky: bool = False  # what the workload is meant to be (for reports; not ground truth)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["args"] = list(self.args)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Workload:
        known = {"pod", "kind", "memory_limit_bytes", "args", "container", "cpu_millicores",
                 "leaky"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"workload {d.get('pod')!r}: unknown field(s) {sorted(extra)}")
        return cls(pod=str(d["pod"]), kind=str(d["kind"]),
                   memory_limit_bytes=int(d["memory_limit_bytes"]),
                   args=tuple(str(x) for x in d.get("args", ())),
                   container=str(d.get("container", "main")),
                   cpu_millicores=(None if d.get("cpu_millicores") is None
                                   else int(d["cpu_millicores"])),
                   leaky=bool(d.get("leaky", False)))


# ====================================================================== the supervisor


@dataclass
class _Container:
    w: Workload
    namespace: str = ""  # the supervisor's namespace when empty
    uid: str = ""  # a Kubernetes pod's uid (pods of deploy.local.story_kubelet), else ""
    node: str = ""  # the node it is reported on (kube-state-metrics); the host when empty
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's own
    stop: threading.Event = field(default_factory=threading.Event)  # its pod is gone
    restarts: int = 0
    running: bool = False
    last_reason: str = ""
    pid: int | None = None
    cgroup: str = ""
    oom_kills_seen: int = 0
    started_at: float = 0.0
    consecutive: int = 0  # exits since the last incarnation that ran 10 minutes
    history: list[dict[str, Any]] = field(default_factory=list)


def backoff_delay(base_s: float, cap_s: float, consecutive: int) -> float:
    """The kubelet's crash back-off: ``base * 2**(n-1)`` for the n-th consecutive exit, capped.

    The kubelet uses 10 s doubling to 300 s, reset after 10 minutes of running; the harness
    defaults to a fixed short delay (``cap == base``) so tests stay bounded.
    """
    if consecutive <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** min(consecutive - 1, 30)))


class Supervisor:
    """Runs the workloads in their cgroups and restarts them (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        self.namespace = str(spec.get("namespace", "realnode"))
        self.parent = str(spec.get("parent") or owned_parent_name())
        self.backoff_s = float(spec.get("restart_backoff_s", 2.0))
        self.backoff_max_s = float(spec.get("restart_backoff_max_s", self.backoff_s))
        self.python = str(spec.get("python") or sys.executable)
        self.node = str(spec.get("node") or socket.gethostname())
        self.workdir = workdir
        self.cg: Cgroups = detect()
        self.containers = [_Container(Workload.from_json(w)) for w in spec["workloads"]]
        # the parent cgroup's limit (the node's allocatable memory); default: the sum of the
        # workloads' limits + 256 MiB
        self.spec_memory = spec.get("memory_limit_bytes")
        self.kubernetes: dict[str, Any] | None = spec.get("kubernetes")
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.events = open(workdir / EVENTS, "a", buffering=1)  # noqa: SIM115 - held
        self.threads: list[threading.Thread] = []
        self.procs: dict[str, Any] = {}

    def event(self, **rec: Any) -> None:
        rec.setdefault("ts", time.time())
        with self.lock:
            self.events.write(json.dumps(rec, sort_keys=True) + "\n")

    def cgroup_name(self, c: _Container) -> str:
        ns = c.namespace or self.namespace
        if c.uid:  # as the kubelet's /kubepods/pod<uid>/<container>: a new pod, a new series
            return f"/{self.parent}/{ns}/{c.w.pod}/pod{c.uid}/{c.w.container}/{c.restarts}"
        return f"/{self.parent}/{ns}/{c.w.pod}/{c.w.container}/{c.restarts}"

    def add(self, c: _Container) -> None:
        """Starts one more container (a pod the API server bound to a node this plays)."""
        with self.lock:
            self.containers.append(c)
        t = threading.Thread(target=self.run_container, args=(c,), daemon=True)
        t.start()
        self.threads.append(t)

    def kill(self, c: _Container, grace_s: float) -> None:
        """Stops a container as the kubelet does for a deleted pod: SIGTERM to its process
        group, SIGKILL after ``grace_s``; it is not restarted."""
        c.stop.set()
        pid = c.pid
        if pid is None or not c.running:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)

        def _kill() -> None:
            if c.running and c.pid == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

        timer = threading.Timer(grace_s, _kill)
        timer.daemon = True
        timer.start()

    def _ids(self, c: _Container) -> dict[str, Any]:
        return {"namespace": c.namespace, "uid": c.uid} if c.uid else {}

    def _argv(self, c: _Container) -> list[str]:
        # The shell joins each hierarchy itself before exec: the process is charged to its
        # cgroup from its first byte (v1 charges do not move with a process).
        joins = " && ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in self.cg.dirs(c.cgroup))
        cmd = [self.python, "-m", "deploy.local.node_workloads", c.w.kind, *c.w.args]
        if c.w.kind == "pagecache" and "--dir" not in c.w.args:
            cmd += ["--dir", str(self.workdir / "files" / c.w.pod)]
        return ["/bin/sh", "-c", f"{joins} && exec \"$@\"", "sh", *cmd]

    def run_container(self, c: _Container) -> None:
        import subprocess

        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": root + (os.pathsep + os.environ["PYTHONPATH"]
                                     if os.environ.get("PYTHONPATH") else "")}
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        while not self.stopping.is_set() and not c.stop.is_set():
            c.cgroup = self.cgroup_name(c)
            self.cg.create(c.cgroup, memory_limit=c.w.memory_limit_bytes,
                           cpu_millicores=c.w.cpu_millicores)
            # a pod's other containers (sidecars) log apart: <pod>.<container>.<restart>.log
            part = "" if c.w.container == "main" else f".{c.w.container}"
            with open(logs / f"{c.w.pod}{part}.{c.restarts}.log", "ab") as log:
                proc = subprocess.Popen(self._argv(c), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**env, **c.env},
                                        cwd=root, start_new_session=True)
            c.pid, c.running, c.started_at, c.oom_kills_seen = proc.pid, True, time.time(), 0
            self.procs[c.uid or f"{c.w.pod}/{c.w.container}"] = proc
            if c.stop.is_set():  # its pod went while it was starting
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            self.event(event="start", pod=c.w.pod, container=c.w.container, pid=proc.pid,
                       restart=c.restarts, cgroup=c.cgroup, kind=c.w.kind,
                       memory_limit_bytes=c.w.memory_limit_bytes, **self._ids(c))
            code = proc.wait()
            ended = time.time()
            self.poll_oom(c)
            try:
                mem = self.cg.memory(c.cgroup)
                kills, failcnt, peak = mem.oom_kills, mem.failcnt, mem.peak_bytes
            except CgroupError:
                kills, failcnt, peak = c.oom_kills_seen, None, None
            if self.stopping.is_set() or c.stop.is_set():
                reason = "Stopped"
            elif kills > 0:
                reason = "OOMKilled"
            else:
                reason = "Completed" if code == 0 else "Error"
            c.running = False
            self.event(event="exit", pod=c.w.pod, container=c.w.container, restart=c.restarts,
                       returncode=code, signal=(-code if code < 0 else None), oom_kills=kills,
                       failcnt=failcnt, peak_bytes=peak, reason=reason,
                       ran_s=round(ended - c.started_at, 3), ts=ended, **self._ids(c))
            # the incarnation's cgroup goes with it (its processes are ours)
            with contextlib.suppress(CgroupError):
                self.cg.remove_tree(c.cgroup)
            if self.stopping.is_set() or c.stop.is_set():
                return
            c.last_reason = reason
            c.restarts += 1
            c.consecutive = 1 if ended - c.started_at >= 600 else c.consecutive + 1
            self.stopping.wait(backoff_delay(self.backoff_s, self.backoff_max_s, c.consecutive))

    def poll_oom(self, c: _Container) -> None:
        """Record each rise of the incarnation's kernel OOM-kill count, when it is seen."""
        if not c.cgroup:
            return
        try:
            kills = self.cg.memory(c.cgroup).oom_kills
        except CgroupError:
            return
        if kills > c.oom_kills_seen:
            self.event(event="oom_kill", pod=c.w.pod, container=c.w.container,
                       restart=c.restarts, oom_kills=kills, cgroup=c.cgroup, **self._ids(c))
            c.oom_kills_seen = kills

    def watch_ooms(self) -> None:
        while not self.stopping.wait(0.25):
            for c in list(self.containers):
                if c.running:
                    self.poll_oom(c)

    # ------------------------------------------------------------------ kube-state-metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        base = ["namespace", "pod", "container", "uid"]
        restarts = CounterMetricFamily(
            "kube_pod_container_status_restarts_total",
            "The number of container restarts per container.", labels=base)
        last = GaugeMetricFamily(
            "kube_pod_container_status_last_terminated_reason",
            "Describes the last reason the container was in terminated state.",
            labels=[*base, "reason"])
        limits = GaugeMetricFamily(
            "kube_pod_container_resource_limits",
            "The number of requested limit resource by a container.",
            labels=[*base, "node", "resource", "unit"])
        running = GaugeMetricFamily(
            "kube_pod_container_status_running",
            "Describes whether the container is currently in running state.", labels=base)
        for c in list(self.containers):
            if c.uid and c.stop.is_set() and not c.running:
                continue  # a deleted pod's series go with it
            lv = [c.namespace or self.namespace, c.w.pod, c.w.container,
                  c.uid or f"{self.parent}-{c.w.pod}"]
            restarts.add_metric(lv, float(c.restarts))
            if c.last_reason:
                last.add_metric([*lv, c.last_reason], 1.0)
            node = c.node or self.node
            limits.add_metric([*lv, node, "memory", "byte"], float(c.w.memory_limit_bytes))
            if c.w.cpu_millicores is not None:
                limits.add_metric([*lv, node, "cpu", "core"], c.w.cpu_millicores / 1000)
            running.add_metric(lv, 1.0 if c.running else 0.0)
        yield from (restarts, last, limits, running)

    def serve(self, port_file: Path) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        reg = CollectorRegistry(auto_describe=False)
        supervisor = self

        class _C:
            def collect(self) -> Iterator[Any]:
                return supervisor.collect()

        reg.register(_C())
        server, _ = start_http_server(0, addr=LOOPBACK, registry=reg)
        atomic_write(port_file, f"{server.server_port}\n")

    def run(self, port_file: Path) -> int:
        parent = f"/{self.parent}"
        self.cg.create(parent, memory_limit=int(self.spec_memory) if self.spec_memory else
                       sum(c.w.memory_limit_bytes for c in self.containers) + 256 * MIB)
        self.event(event="supervisor_start", parent=parent, cgroup_version=self.cg.version,
                   pid=os.getpid(), node=self.node)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        try:
            self.serve(port_file)
            watcher = threading.Thread(target=self.watch_ooms, daemon=True)
            watcher.start()
            for c in self.containers:
                t = threading.Thread(target=self.run_container, args=(c,), daemon=True)
                t.start()
                self.threads.append(t)
            if self.kubernetes:  # play the kubelet of kwok nodes for the API server's pods
                from deploy.local.story_kubelet import PodSync

                PodSync(self, self.kubernetes).start()
            while not self.stopping.wait(0.5):
                pass
        finally:
            self.stopping.set()
            for p in list(self.procs.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            for t in self.threads:
                t.join(timeout=15)
            try:
                self.cg.remove_tree(parent)
            finally:
                self.event(event="supervisor_stop", parent=parent)
                self.events.close()
        return 0


def supervise(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.local.node supervise")
    ap.add_argument("spec", type=Path, help="JSON: {namespace, parent, workloads: [...]}")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--port-file", type=Path, required=True)
    a = ap.parse_args(argv)
    spec = json.loads(a.spec.read_text())
    a.workdir.mkdir(parents=True, exist_ok=True)
    return Supervisor(spec, a.workdir).run(a.port_file)


# ====================================================================== Prometheus + harness


def relabel_configs() -> list[dict[str, Any]]:
    """cAdvisor's ``id`` (``/<parent>/<ns>/<pod>/[pod<uid>/]<container>/<restart>``) ->
    kubelet labels."""
    # (a pod of the API server has its uid as a level: /<parent>/<ns>/<pod>/pod<uid>/...)
    rx = r"/podguard-node-[^/]+/([^/]+)/([^/]+)/(?:pod[0-9a-f-]+/)?([^/]+)/[0-9]+"
    return [
        {"source_labels": ["id"], "regex": rx, "action": "keep"},
        {"source_labels": ["id"], "regex": rx, "target_label": "namespace",
         "replacement": "$1"},
        {"source_labels": ["id"], "regex": rx, "target_label": "pod", "replacement": "$2"},
        {"source_labels": ["id"], "regex": rx, "target_label": "container",
         "replacement": "$3"},
    ]


class NodePrometheus(Prometheus):
    """The harness's own Prometheus: scrapes its cAdvisor and its supervisor."""

    name = "realnode-prometheus"

    def __init__(self, *, cadvisor_target: str, ksm_target: str, node: str,
                 scrape_interval: str = "5s") -> None:
        super().__init__(scrape_interval=scrape_interval)
        self.cadvisor_target, self.ksm_target, self.node = cadvisor_target, ksm_target, node

    @staticmethod
    def home(state: Path) -> Path:
        return state / "realnode-prometheus"

    def _config(self, state: Path, port: int) -> str:
        config = yaml.safe_load(super()._config(state, port))
        config["scrape_configs"] += [
            {"job_name": "kubelet-cadvisor",
             # cAdvisor stamps its samples; with those stamps honoured a removed cgroup's
             # series would not go stale (no staleness marker) and linger for 5 minutes.
             "honor_timestamps": False,
             "static_configs": [{"targets": [self.cadvisor_target],
                                 "labels": {"node": self.node}}],
             "metric_relabel_configs": relabel_configs()},
            {"job_name": "kube-state-metrics", "honor_labels": True,
             "static_configs": [{"targets": [self.ksm_target]}]},
        ]
        return "# written by deploy/local/node.py at each start\n" + yaml.safe_dump(
            config, sort_keys=False)


class RealNode:
    """cAdvisor + supervisor + Prometheus for ``workloads``, in ``state`` (a context manager)."""

    def __init__(self, state: Path, workloads: Sequence[Workload], *,
                 namespace: str = "realnode", scrape_interval: str = "5s",
                 restart_backoff_s: float = 2.0, restart_backoff_max_s: float | None = None,
                 tag: str | None = None,
                 python: str | None = None,
                 kubernetes: dict[str, Any] | None = None,
                 memory_limit_bytes: int | None = None) -> None:
        self.state = Path(state)
        self.workloads = list(workloads)
        self.namespace = namespace
        self.scrape_interval = scrape_interval
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = (restart_backoff_s if restart_backoff_max_s is None
                                      else restart_backoff_max_s)
        self.parent = owned_parent_name(tag)
        self.python = python or sys.executable
        self.node = socket.gethostname()
        self.kubernetes = kubernetes  # deploy.local.story_kubelet.PodSync's settings
        self.memory_limit_bytes = memory_limit_bytes
        self.prometheus: NodePrometheus | None = None
        self.cg: Cgroups | None = None

    @property
    def workdir(self) -> Path:
        return self.state / "realnode"

    @property
    def prometheus_url(self) -> str:
        if self.prometheus is None or (url := self.prometheus.url(self.state)) is None:
            raise StackError("the real node is not started")
        return url

    def start(self) -> RealNode:
        self.cg = detect()  # fails here, with the reason, if there is no writable hierarchy
        if self.cg.exists(f"/{self.parent}"):
            raise StackError(f"cgroup /{self.parent} exists already (another harness?)")
        self.state.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            # only this harness's cgroups: two harnesses at once must not see each other's pods
            cport = cadvisor.start_instance("realnode-cadvisor", self.state,
                                            prefixes=(f"/{self.parent}/",))
            spec = {"namespace": self.namespace, "parent": self.parent, "node": self.node,
                    "restart_backoff_s": self.restart_backoff_s,
                    "restart_backoff_max_s": self.restart_backoff_max_s, "python": self.python,
                    "workloads": [w.to_json() for w in self.workloads]}
            if self.kubernetes is not None:
                spec["kubernetes"] = self.kubernetes
            if self.memory_limit_bytes is not None:
                spec["memory_limit_bytes"] = self.memory_limit_bytes
            spec_file = self.workdir / "spec.json"
            atomic_write(spec_file, json.dumps(spec, indent=2))
            port_file = self.workdir / "supervisor.port"
            port_file.unlink(missing_ok=True)
            _proc.start("realnode-supervisor", [
                self.python, "-m", "deploy.local.node", "supervise", str(spec_file),
                "--workdir", str(self.workdir), "--port-file", str(port_file)], self.state,
                cwd=Path(__file__).resolve().parents[2])
            _proc.wait_until(lambda: port_file.is_file(), timeout=30,
                             what="the supervisor serving /metrics",
                             name="realnode-supervisor", state=self.state)
            sport = int(port_file.read_text())
            self.prometheus = NodePrometheus(
                cadvisor_target=f"{LOOPBACK}:{cport}", ksm_target=f"{LOOPBACK}:{sport}",
                node=self.node, scrape_interval=self.scrape_interval)
            self.prometheus.start(self.state)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        errors: list[str] = []
        _proc.stop("realnode-supervisor", self.state, grace=30.0)
        if self.cg is not None and self.cg.exists(f"/{self.parent}"):
            try:
                self.cg.remove_tree(f"/{self.parent}")
            except CgroupError as e:
                errors.append(str(e))
        if self.prometheus is not None:
            self.prometheus.stop(self.state)
        _proc.stop("realnode-cadvisor", self.state)
        if errors:
            raise StackError("; ".join(errors))

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ reading back

    def events(self) -> list[dict[str, Any]]:
        try:
            text = (self.workdir / EVENTS).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def oom_kills(self) -> dict[str, list[float]]:
        """Pod -> times of the kernel's OOM kills (first seen rise of the cgroup's count)."""
        out: dict[str, list[float]] = {w.pod: [] for w in self.workloads}
        for e in self.events():
            if e.get("event") == "oom_kill":
                out.setdefault(e["pod"], []).append(float(e["ts"]))
        return out

    def query(self, promql: str) -> list[dict[str, Any]]:
        if self.prometheus is None:
            raise StackError("the real node is not started")
        return self.prometheus.query(self.state, promql)

    def wait_for_scrapes(self, timeout: float = 60.0) -> None:
        """Until every workload has a working-set series and a restart counter in Prometheus."""
        pods = {w.pod for w in self.workloads}

        def ok() -> bool:
            ws = {r["metric"].get("pod") for r in self.query(
                f'container_memory_working_set_bytes{{namespace="{self.namespace}"}}')}
            rs = {r["metric"].get("pod") for r in self.query(
                f'kube_pod_container_status_restarts_total{{namespace="{self.namespace}"}}')}
            return pods <= ws and pods <= rs

        _proc.wait_until(ok, timeout=timeout, what="every workload scraped",
                         name="realnode-supervisor", state=self.state, interval=1.0)

    def supervisor_metrics(self) -> str:
        port = int((self.workdir / "supervisor.port").read_text())
        return http("GET", f"http://{LOOPBACK}:{port}/metrics")[1].decode()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["supervise"]:
        return supervise(args[1:])
    print("usage: python -m deploy.local.node supervise SPEC --workdir D --port-file F",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
