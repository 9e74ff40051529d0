"""The kubelet's part for kwok nodes: run the API server's pods as real processes.

kwok keeps its nodes Ready and moves the pods bound to them to Running, but runs nothing. The
real-node supervisor (:class:`deploy.local.node.Supervisor`, with a ``kubernetes`` section in
its spec) starts a :class:`PodSync`, which does for those pods what a kubelet does for its
own, with the harness's cgroups:

* a pod bound to one of ``nodes`` in one of ``namespaces``, Running and not being deleted,
  gets each of its containers started by the supervisor in its own memory (+cpu) cgroup
  ``/<parent>/<namespace>/<pod>/pod<uid>/<container>/<restart>`` under the container's
  ``resources.limits`` (a container without a memory limit is refused, with an event), and
  restarted after an exit while the pod stays (``restartPolicy: Always``);
* a pod deleted or evicted (``deletionTimestamp`` set, or gone) has its containers stopped:
  SIGTERM to the process group, SIGKILL after ``terminationGracePeriodSeconds`` (at most
  ``max_grace_s``); they are not restarted;
* the "image" of every container is the harness's workload runner: the container's ``args``
  are the arguments of ``python -m deploy.local.node_workloads`` (the kind first);
* volumes: a ``persistentVolumeClaim`` bound to a ``hostPath`` PersistentVolume, and a
  ``hostPath``, are the directory ``<root>/hostpath/<path>`` (the node's disk, shared by the
  kwok nodes as they are one machine); an ``emptyDir`` is ``<root>/pods/<uid>/<volume>``; a
  ``projected`` ``serviceAccountToken`` source is a file there holding a token the API server
  issued for that pod (a TokenRequest bound to the pod's name and uid, with the source's
  audience and expiry, renewed at 80 % of its life), as the kubelet writes it. There is no
  mount namespace: an ``env`` value or an argument under a ``mountPath`` is rewritten to the
  volume's directory;
* ``env``: literal values, and ``fieldRef`` of ``metadata.name``, ``metadata.namespace``,
  ``metadata.uid``, ``spec.nodeName``, ``spec.serviceAccountName``.

Everything it does is appended to the supervisor's ``events.jsonl`` (``pod_running`` when it
first sees a pod Running, ``pod_deleted`` when it sees it go, ``pod_refused``), beside the
supervisor's own ``start``/``exit``/``oom_kill`` records, which carry the pod's uid. The API
client uses ``kubeconfig`` (the harness's admin credentials stand in for the node's).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.local.node import Supervisor, _Container

log = logging.getLogger("podguard.local.kubelet")

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
          "G": 10**9, "T": 10**12}
FIELD_REFS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
              "spec.serviceAccountName")


def quantity(text: str) -> float:
    """A Kubernetes quantity (``768Mi``, ``1G``, ``500m``, ``2``) as a number."""
    t = str(text).strip()
    if t.endswith("m"):
        return float(t[:-1]) / 1000.0
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if t.endswith(suffix):
            return float(t[:-len(suffix)]) * _UNITS[suffix]
    return float(t)


class PodRefused(ValueError):
    """A pod this kubelet cannot run (the reason is in the text)."""


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    containers: list[_Container]
    tokens: list[tuple[Path, str, int]] = field(default_factory=list)  # file, audience, s
    token_at: float = 0.0
    grace_s: float = 30.0


class PodSync:
    """Runs the pods of kwok nodes (see the module docstring); a daemon thread."""

    def __init__(self, supervisor: Supervisor, spec: dict[str, Any]) -> None:
        from kubernetes import client, config

        self.sup = supervisor
        self.namespaces = [str(n) for n in spec["namespaces"]]
        self.nodes = {str(n) for n in spec["nodes"]}
        self.root = Path(spec.get("root") or supervisor.workdir / "kubelet")
        self.interval_s = float(spec.get("interval_s", 0.5))
        self.max_grace_s = float(spec.get("max_grace_s", 30.0))
        self.api = config.new_client_from_config(config_file=str(spec["kubeconfig"]))
        self.core = client.CoreV1Api(self.api)
        self.pods: dict[str, _Pod] = {}
        self.refused: set[str] = set()

    def start(self) -> PodSync:
        threading.Thread(target=self._loop, daemon=True, name="kubelet").start()
        return self

    def _loop(self) -> None:
        while not self.sup.stopping.wait(self.interval_s):
            try:
                self.sync()
            except Exception as e:  # the API server restarting: try again next turn
                self.sup.event(event="kubelet_error", error=repr(e)[:500])

    def sync(self) -> None:
        seen: set[str] = set()
        for ns in self.namespaces:
            for pod in self.core.list_namespaced_pod(ns).items or []:
                m, spec, st = pod.metadata, pod.spec, pod.status
                if m is None or spec is None or spec.node_name not in self.nodes:
                    continue
                uid = str(m.uid)
                if m.deletion_timestamp is not None or st is None or st.phase != "Running":
                    continue
                seen.add(uid)
                if uid not in self.pods and uid not in self.refused:
                    self._run(pod)
        now = time.time()
        for uid, p in list(self.pods.items()):
            if uid not in seen:
                self.sup.event(event="pod_deleted", namespace=p.namespace, pod=p.name, uid=uid)
                for c in p.containers:
                    self.sup.kill(c, p.grace_s)
                del self.pods[uid]
            elif p.tokens and now - p.token_at > 0.8 * min(s for _, _, s in p.tokens):
                self._write_tokens(p)

    # ------------------------------------------------------------------ a new pod

    def _run(self, pod: Any) -> None:
        from deploy.local.node import Workload, _Container

        m, spec = pod.metadata, pod.spec
        uid, ns, name = str(m.uid), str(m.namespace), str(m.name)
        try:
            volumes, tokens = self._volumes(pod)
            p = _Pod(uid, ns, name, [], tokens,
                     grace_s=min(self.max_grace_s,
                                 float(spec.termination_grace_period_seconds or 30)))
            self._write_tokens(p)
            for ctr in spec.containers:
                limits = (ctr.resources.limits if ctr.resources else None) or {}
                if "memory" not in limits:
                    raise PodRefused(f"container {ctr.name} has no memory limit")
                args = list(ctr.args or [])
                if not args:
                    raise PodRefused(f"container {ctr.name} has no args (the workload kind "
                                     "of deploy.local.node_workloads first)")
                mounts = {str(vm.mount_path).rstrip("/"): volumes[vm.name]
                          for vm in ctr.volume_mounts or [] if vm.name in volumes}
                cpu = limits.get("cpu")
                w = Workload(pod=name, kind=args[0], container=str(ctr.name),
                             memory_limit_bytes=int(quantity(limits["memory"])),
                             args=tuple(_rewrite(a, mounts) for a in args[1:]),
                             cpu_millicores=None if cpu is None else
                             max(1, round(quantity(cpu) * 1000)))
                p.containers.append(_Container(w, namespace=ns, uid=uid,
                                               node=str(spec.node_name),
                                               env=self._env(pod, ctr, mounts)))
        except (PodRefused, KeyError, ValueError) as e:
            self.refused.add(uid)
            self.sup.event(event="pod_refused", namespace=ns, pod=name, uid=uid, reason=str(e))
            return
        self.pods[uid] = p
        self.sup.event(event="pod_running", namespace=ns, pod=name, uid=uid,
                       node=str(spec.node_name))
        for c in p.containers:
            self.sup.add(c)

    def _volumes(self, pod: Any) -> tuple[dict[str, Path], list[tuple[Path, str, int]]]:
        m = pod.metadata
        out: dict[str, Path] = {}
        tokens: list[tuple[Path, str, int]] = []
        for v in pod.spec.volumes or []:
            if v.persistent_volume_claim is not None:
                pvc = self.core.read_namespaced_persistent_volume_claim(
                    v.persistent_volume_claim.claim_name, str(m.namespace))
                if pvc.spec is None or not pvc.spec.volume_name:
                    raise PodRefused(f"volume {v.name}: claim not bound")
                pv = self.core.read_persistent_volume(pvc.spec.volume_name)
                if pv.spec is None or pv.spec.host_path is None:
                    raise PodRefused(f"volume {v.name}: only hostPath PersistentVolumes")
                out[v.name] = self._hostpath(pv.spec.host_path.path)
            elif v.host_path is not None:
                out[v.name] = self._hostpath(v.host_path.path)
            elif v.empty_dir is not None:
                out[v.name] = self.root / "pods" / str(m.uid) / v.name
            elif v.projected is not None:
                d = self.root / "pods" / str(m.uid) / v.name
                for src in v.projected.sources or []:
                    sat = src.service_account_token
                    if sat is None:
                        continue
                    rel = Path(sat.path)
                    if rel.is_absolute() or ".." in rel.parts:
                        raise PodRefused(f"volume {v.name}: bad token path {sat.path!r}")
                    tokens.append((d / rel, str(sat.audience or ""),
                                   max(600, int(sat.expiration_seconds or 3600))))
                out[v.name] = d
            else:
                continue  # configMap, secret, ...: not needed by the harness's workloads
            out[v.name].mkdir(parents=True, exist_ok=True)
        return out, tokens

    def _hostpath(self, path: str) -> Path:
        rel = Path(str(path).lstrip("/"))
        if ".." in rel.parts:
            raise PodRefused(f"hostPath {path!r} leaves the node's directory")
        return self.root / "hostpath" / rel

    def _write_tokens(self, p: _Pod) -> None:
        from kubernetes import client

        for path, audience, seconds in p.tokens:
            sa = "default"
            pod = self.core.read_namespaced_pod(p.name, p.namespace)
            if pod.spec is not None and pod.spec.service_account_name:
                sa = str(pod.spec.service_account_name)
            tr = self.core.create_namespaced_service_account_token(
                sa, p.namespace, client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(
                        audiences=[audience] if audience else [], expiration_seconds=seconds,
                        bound_object_ref=client.V1BoundObjectReference(
                            kind="Pod", api_version="v1", name=p.name, uid=p.uid))))
            if tr.status is None or not tr.status.token:
                raise PodRefused("the API server issued no token")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(str(tr.status.token))
            os.replace(tmp, path)
        p.token_at = time.time()

    def _env(self, pod: Any, ctr: Any, mounts: dict[str, Path]) -> dict[str, str]:
        m, spec = pod.metadata, pod.spec
        fields = {"metadata.name": m.name, "metadata.namespace": m.namespace,
                  "metadata.uid": m.uid, "spec.nodeName": spec.node_name,
                  "spec.serviceAccountName": spec.service_account_name or "default"}
        env: dict[str, str] = {}
        for e in ctr.env or []:
            if e.value is not None:
                env[str(e.name)] = _rewrite(str(e.value), mounts)
            elif e.value_from is not None and e.value_from.field_ref is not None:
                path = str(e.value_from.field_ref.field_path)
                if path not in FIELD_REFS:
                    raise PodRefused(f"env {e.name}: fieldRef {path} is not supported")
                env[str(e.name)] = str(fields[path])
            else:
                raise PodRefused(f"env {e.name}: only values and fieldRefs")
        return env


def _rewrite(value: str, mounts: dict[str, Path]) -> str:
    """``value`` with a leading mount path replaced by its volume's directory."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount + "/"):
            return str(mounts[mount]) + value[len(mount):]
    return value


def pod_events(events: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The supervisor's records of one pod (by uid), in order."""
    return [e for e in events if e.get("uid") == uid]
