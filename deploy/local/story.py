"""The whole story once, end to end: a leak flagged, checkpointed, moved, resumed, never killed.

``python -m deploy.local.story`` (``make story``; root, a writable memory cgroup hierarchy,
``make prepare``) runs, all real and all on 127.0.0.1:

1. the local control plane (:mod:`deploy.local.kubernetes`: kube-apiserver, controllers,
   scheduler, kwok nodes), or the one ``--kubeconfig`` names;
2. the real-node harness (:class:`deploy.local.node.RealNode`: cAdvisor, Prometheus with
   kubelet-like labels, the supervisor) playing the kubelet of the kwok nodes
   (:mod:`deploy.local.story_kubelet`): the pod the API server shows Running runs as a real
   process in a memory cgroup under the pod's limit, and stops when the pod is evicted;
3. a StatefulSet ``trainer`` (one replica, opted in to remediation, a PersistentVolume for its
   checkpoints, a projected service-account token of audience ``podguard``) whose container is
   a real PyTorch training loop with the kept-loss leak that uses podguard's checkpoint helper
   (``trainer-checkpointed`` of :mod:`deploy.local.node_workloads`);
4. ``podguard run`` with remediation on, reading the harness's Prometheus, its API access
   exactly :data:`detector.remediation.rbac.CONTROLLER_RULES` (+ its records' Role), its pod
   channel on loopback.

It then follows what happens and prints a timeline: the pod Running, the leak's onset (the
trainer's own record), podguard's first verdict (kind and time to OOM), the checkpoint request,
the trainer's acknowledgement, the eviction, the first process's end (with the cgroup's own
``oom_kill`` count), the replacement Running, the resumed step, and when the first process
would have reached its limit (a least-squares line through cAdvisor's working set during the
leak, extrapolated to the limit) beside podguard's prediction. Everything it made is removed
at the end (namespaces, PersistentVolume, ClusterRole, cgroups, processes by PID).

    .venv/bin/python -m deploy.local.story [--limit-mib 896] [--rate-mib-min 30] [--json F]

:func:`run` is what ``tests/stack/real/test_story.py`` calls, with the session's control plane.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.local import _proc
from deploy.local._proc import StackError
from deploy.local.node import RealNode
from deploy.local.node_soak import LIVE, start_live, stop_live

MIB = 1 << 20
POD = "trainer-0"
TOKEN_DIR = "/var/run/secrets/podguard"


@dataclass(frozen=True)
class StoryConfig:
    """The trainer and the limits. Defaults: torch alone holds ~390 MiB of the 896 MiB; the
    leak (26-43 MiB/min measured in the cgroup for the same setting: the kept graphs'
    allocations fragment the heap differently from run to run) would fill the rest 12-20 min
    after the start, while podguard's fast path judges an incarnation from its first ~6-9
    minutes on (measured: first verdicts at 6.4-7.4 min)."""

    limit_mib: int = 896  # the container's memory limit
    rate_mib_min: float = 30.0  # the leak's growth as the trainer sizes it
    onset_s: float = 30.0  # healthy seconds before the leak starts
    steps_per_s: float = 4.0
    steps_after_resume: int = 20  # the story ends once the replacement completed these
    timeout_s: float = 840.0  # from the StatefulSet's creation to the resumed steps
    window_step_s: float = 15.0  # podguard's evaluation step
    scrape_s: float = 2.0


@dataclass
class Story:
    """What happened (unix seconds; None: it did not happen)."""

    namespace: str = ""
    limit_bytes: int = 0
    first_uid: str = ""
    second_uid: str = ""
    first_node: str = ""
    second_node: str = ""
    statefulset_created: float | None = None
    pod_running: float | None = None
    process_started: float | None = None
    leak_onset: float | None = None
    first_verdict: float | None = None  # the verdict's window end
    first_verdict_kind: str = ""
    predicted_oom: float | None = None  # first verdict + its time to OOM
    time_to_oom_s: float | None = None
    checkpoint_requested: float | None = None
    acknowledged: float | None = None
    ack_step: int | None = None
    checkpoint: str = ""
    evicted: float | None = None
    forced: bool = False
    first_exit: float | None = None
    first_exit_reason: str = ""
    first_oom_kills: int | None = None  # the kernel's count in the first cgroup, at exit
    oom_kill_events: int = 0  # oom_kill records of the supervisor for either pod
    second_running: float | None = None
    second_started: float | None = None
    resumed: float | None = None
    resumed_from_step: int | None = None
    first_new_step: int | None = None
    steps_first: list[int] = field(default_factory=list)
    steps_second: list[int] = field(default_factory=list)
    would_oom: float | None = None  # extrapolated from cAdvisor's working set
    leak_rate_mib_min: float | None = None  # measured by the same fit
    verdict_log: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def timeline(self) -> list[tuple[str, float | None, str]]:
        mib = self.limit_bytes / MIB
        return [
            ("StatefulSet created", self.statefulset_created, self.namespace),
            ("pod Running (API server)", self.pod_running,
             f"{POD} uid {self.first_uid[:8]} on {self.first_node}"),
            ("process started in its cgroup", self.process_started,
             f"limit {mib:.0f} MiB"),
            ("leak onset (trainer)", self.leak_onset, "keeps every monitoring loss"),
            ("first verdict", self.first_verdict,
             f"{self.first_verdict_kind or 'none'}, time to OOM "
             + ("?" if self.time_to_oom_s is None else f"{self.time_to_oom_s:.0f} s")),
            ("checkpoint requested", self.checkpoint_requested, "over the pod channel"),
            ("checkpoint acknowledged", self.acknowledged,
             f"step {self.ack_step} {Path(self.checkpoint).name if self.checkpoint else ''}"),
            ("evicted (Eviction API)", self.evicted, "forced" if self.forced else
             "after the checkpoint"),
            ("first process ended", self.first_exit,
             f"{self.first_exit_reason}, cgroup oom_kill={self.first_oom_kills}"),
            ("replacement Running", self.second_running,
             f"uid {self.second_uid[:8]} on {self.second_node}"),
            ("training resumed", self.resumed,
             f"from step {self.resumed_from_step}, next {self.first_new_step}"),
            ("podguard's predicted OOM", self.predicted_oom, "first verdict + time to OOM"),
            ("would have OOMed", self.would_oom,
             "working set at the limit (fit: "
             + ("?" if self.leak_rate_mib_min is None else
                f"{self.leak_rate_mib_min:.1f} MiB/min") + ")"),
        ]

    def table(self) -> str:
        t0 = self.process_started or self.statefulset_created or 0.0
        lines = [f"{'step':<32} {'UTC':<8} {'+s':>7}  detail"]
        for name, ts, detail in self.timeline():
            when = "-" if ts is None else time.strftime("%H:%M:%S", time.gmtime(ts))
            rel = "-" if ts is None else f"{ts - t0:+7.1f}"
            lines.append(f"{name:<32} {when:<8} {rel:>7}  {detail}")
        return "\n".join(lines)


# ====================================================================== the cluster's objects


def _objects(ns: str, pv: str, cfg: StoryConfig, endpoint: str) -> dict[str, dict[str, Any]]:
    labels = {"app": "trainer"}
    args = ["trainer-checkpointed", "--checkpoint-dir", "/data/checkpoints",
            "--onset-s", f"{cfg.onset_s:g}", "--rate-mib-min", f"{cfg.rate_mib_min:g}",
            "--steps-per-s", f"{cfg.steps_per_s:g}"]
    return {
        "pv": {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "podguard-story",
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": f"/podguard-story/{pv}"},
                        "claimRef": {"namespace": ns, "name": f"data-{POD}"}}},
        "statefulset": {
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "trainer", "namespace": ns},
            "spec": {"replicas": 1, "serviceName": "trainer",
                     "selector": {"matchLabels": labels},
                     "template": {
                         "metadata": {"labels": {**labels, "podguard.io/remediate": "true"}},
                         "spec": {
                             "serviceAccountName": "trainer",
                             "terminationGracePeriodSeconds": 10,
                             "containers": [{
                                 "name": "trainer",
                                 "image": "registry.invalid/podguard/trainer:story",
                                 "args": args,
                                 "env": [{"name": "PODGUARD_ENDPOINT", "value": endpoint},
                                         {"name": "PODGUARD_TOKEN_FILE",
                                          "value": f"{TOKEN_DIR}/token"},
                                         {"name": "POD_UID", "valueFrom": {
                                             "fieldRef": {"fieldPath": "metadata.uid"}}}],
                                 "resources": {"limits": {"memory": f"{cfg.limit_mib}Mi",
                                                          "cpu": "1"},
                                               "requests": {"memory": f"{cfg.limit_mib}Mi"}},
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                                  {"name": "podguard-token",
                                                   "mountPath": TOKEN_DIR}]}],
                             "volumes": [{"name": "podguard-token", "projected": {"sources": [
                                 {"serviceAccountToken": {"audience": "podguard",
                                                          "expirationSeconds": 3600,
                                                          "path": "token"}}]}}]}},
                     "volumeClaimTemplates": [{
                         "metadata": {"name": "data"},
                         "spec": {"accessModes": ["ReadWriteOnce"],
                                  "storageClassName": "podguard-story",
                                  "resources": {"requests": {"storage": "1Gi"}}}}]}},
    }


class _Cluster:
    """What the story makes in the cluster, and its removal."""

    def __init__(self, kubeconfig: Path, sfx: str) -> None:
        from kubernetes import client, config

        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.sfx = sfx
        self.ns = f"story-{sfx}"
        self.system_ns = f"story-{sfx}-podguard"
        self.role = f"podguard-story-{sfx}"
        self.pv = f"story-{sfx}"
        self.made: list[tuple[str, str]] = []

    def nodes(self) -> list[str]:
        items = self.core.list_node(label_selector="type=kwok").items or []
        return sorted(str(n.metadata.name) for n in items if n.metadata is not None)

    def setup(self, state: Path) -> Path:
        """Namespaces, the daemon's identity; returns the daemon's kubeconfig."""
        from kubernetes import client, utils

        from detector.remediation import rbac

        for ns in (self.system_ns, self.ns):
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
                name=ns)))
            self.made.append(("namespace", ns))
        for ns, sa in ((self.system_ns, "podguard"), (self.ns, "trainer")):
            self.core.create_namespaced_service_account(ns, client.V1ServiceAccount(
                metadata=client.V1ObjectMeta(name=sa)))  # the trainer's: no Role at all
        store = rbac.store_role(self.system_ns)
        subject = [{"kind": "ServiceAccount", "name": "podguard",
                    "namespace": self.system_ns}]
        docs = [rbac.cluster_role(self.role),
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": self.role}, "subjects": subject,
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": self.role}},
                store,
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "podguard-records", "namespace": self.system_ns},
                 "subjects": subject,
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": store["metadata"]["name"]}},
                {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                 "metadata": {"name": "podguard-story"},
                 "provisioner": "kubernetes.io/no-provisioner",
                 "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain"}]
        for doc in docs:
            try:
                utils.create_from_dict(self.api, doc)
            except utils.FailToCreateError as e:
                if not all(getattr(x, "status", None) == 409 for x in e.api_exceptions):
                    raise
            if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                self.made.append((doc["kind"], doc["metadata"]["name"]))
        tr = self.core.create_namespaced_service_account_token(
            "podguard", self.system_ns, client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)))
        if tr.status is None or not tr.status.token:
            raise StackError("the API server issued no token for podguard")
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        path = state / "podguard.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
            "users": [{"name": "podguard", "user": {"token": tr.status.token}}],
            "contexts": [{"name": "podguard", "context": {"cluster": cluster["name"],
                                                          "user": "podguard"}}],
            "current-context": "podguard"}))
        return path

    def create_trainer(self, cfg: StoryConfig, endpoint: str) -> None:
        from kubernetes import utils

        objs = _objects(self.ns, self.pv, cfg, endpoint)
        utils.create_from_dict(self.api, objs["pv"])
        self.made.append(("PersistentVolume", self.pv))
        utils.create_from_dict(self.api, objs["statefulset"])

    def pod(self) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.core.read_namespaced_pod(POD, self.ns)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def record(self) -> Any:
        from detector.remediation.actuator import Actuator
        from detector.remediation.store import RecordStore
        from detector.settings import RemediationSettings

        store = RecordStore(Actuator(self.api, settings=RemediationSettings()), self.system_ns)
        return store.get("StatefulSet", self.ns, "trainer")[0]

    def teardown(self) -> list[str]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        errors: list[str] = []
        rbac_api = client.RbacAuthorizationV1Api(self.api)
        for kind, name in reversed(self.made):
            try:
                if kind == "namespace":
                    self.core.delete_namespace(name)
                elif kind == "PersistentVolume":
                    self.core.delete_persistent_volume(name)
                elif kind == "ClusterRole":
                    rbac_api.delete_cluster_role(name)
                elif kind == "ClusterRoleBinding":
                    rbac_api.delete_cluster_role_binding(name)
            except ApiException as e:
                if e.status != 404:
                    errors.append(f"deleting {kind} {name}: HTTP {e.status}")
        for node in self.core.list_node(label_selector="type=kwok").items or []:
            if node.spec is None or node.metadata is None:
                continue
            taints = node.spec.taints or []
            mine = [t for t in taints if str(t.key).startswith("podguard.io/")]
            if mine:  # the remediation's PreferNoSchedule taint, if it was not released
                self.core.patch_node(str(node.metadata.name), {"spec": {"taints": [
                    self.api.sanitize_for_serialization(t) for t in taints if t not in mine]}})
        self.api.close()
        return errors


# ====================================================================== following the story


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _steps(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out.setdefault(parts[0], []).append(int(parts[1]))
    return out


def _observe(story: Story, node: RealNode, cluster: _Cluster, data: Path) -> None:
    events = node.events()
    running = [e for e in events if e.get("event") == "pod_running" and e.get("pod") == POD]
    if running:
        story.first_uid, story.first_node = running[0]["uid"], running[0].get("node", "")
        story.pod_running = running[0]["ts"]
    if len(running) > 1:
        story.second_uid, story.second_node = running[1]["uid"], running[1].get("node", "")
        story.second_running = running[1]["ts"]
    for e in events:
        if e.get("event") == "start" and e.get("uid") == story.first_uid and \
                story.process_started is None:
            story.process_started = e["ts"]
        if e.get("event") == "start" and story.second_uid and e.get("uid") == story.second_uid \
                and story.second_started is None:
            story.second_started = e["ts"]
        if e.get("event") == "exit" and e.get("uid") == story.first_uid and \
                story.first_exit is None:
            story.first_exit, story.first_exit_reason = e["ts"], str(e.get("reason"))
            story.first_oom_kills = e.get("oom_kills")
    story.oom_kill_events = sum(1 for e in events if e.get("event") == "oom_kill"
                                and e.get("uid") in (story.first_uid, story.second_uid))
    for r in _jsonl(data / "trainer.jsonl"):
        if r["event"] == "leak_onset" and r.get("uid") == story.first_uid:
            story.leak_onset = story.leak_onset or r["ts"]
        elif r["event"] == "acknowledged" and r.get("uid") == story.first_uid:
            story.acknowledged, story.ack_step = r["ts"], r.get("step")
            story.checkpoint = str(r.get("path") or "")
        elif r["event"] == "resumed" and story.second_uid and r.get("uid") == story.second_uid:
            story.resumed, story.resumed_from_step = r["ts"], r.get("from_step")
    steps = _steps(data / "steps.log")
    story.steps_first = steps.get(story.first_uid, []) if story.first_uid else []
    story.steps_second = steps.get(story.second_uid, []) if story.second_uid else []
    story.first_new_step = story.steps_second[0] if story.steps_second else None
    verdicts = [v for v in _jsonl(node.state / LIVE / "verdicts.jsonl")
                if v.get("pod") == POD and v.get("namespace") == cluster.ns]
    story.verdict_log = verdicts[:20]
    first = next((v for v in verdicts if v.get("is_anomaly")), None)
    if first is not None and story.first_verdict is None:
        story.first_verdict, story.first_verdict_kind = first["ts"], str(first.get("kind"))
        story.time_to_oom_s = first.get("time_to_oom_s")
        if story.time_to_oom_s is not None:
            story.predicted_oom = first["ts"] + float(story.time_to_oom_s)
    rec = cluster.record()
    if rec is not None and rec.uid == story.first_uid:
        story.checkpoint_requested = rec.requested_at or story.checkpoint_requested
        story.evicted = rec.evicted_at or story.evicted
        story.forced = rec.forced


def _would_oom(story: Story, node: RealNode) -> None:
    """A least-squares line through the first pod's working set while it leaked (from onset
    + 30 s to the checkpoint: in its hold it makes no steps, so it leaks no more), at the
    limit."""
    if story.leak_onset is None or not story.first_uid:
        return
    end = story.acknowledged or story.first_exit or time.time()
    start = story.leak_onset + 30.0
    if end - start < 60:
        return
    span = int(time.time() - start) + 30
    q = (f'container_memory_working_set_bytes{{namespace="{story.namespace}",pod="{POD}",'
         f'id=~".*/pod{story.first_uid}/.*"}}[{span}s]')
    pts = [(float(t), float(v)) for r in node.query(q) for t, v in r.get("values", [])
           if start <= float(t) <= end]
    if len(pts) < 10:
        return
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (v - mv) for t, v in pts) / sxx if sxx > 0 else 0.0
    if slope <= 0:
        return
    story.leak_rate_mib_min = slope * 60 / MIB
    story.would_oom = mt + (story.limit_bytes - mv) / slope


def run(state: Path, *, kubeconfig: Path | None = None, cfg: StoryConfig | None = None,
        report: Callable[[str], None] = print) -> Story:
    """Runs the story in ``state`` (see the module docstring) and returns what happened.

    With ``kubeconfig`` the control plane it names is used (its kwok nodes), else one is
    started in ``state`` and stopped at the end. Raises :class:`StackError` when a part of
    the stack cannot start; the story's own failures are in ``Story.errors``."""
    from deploy.local.kubernetes import Kubernetes

    cfg = cfg or StoryConfig()
    state.mkdir(parents=True, exist_ok=True)
    k8s: Kubernetes | None = None
    if kubeconfig is None:
        k8s = Kubernetes()
        k8s.prepare()
        report("starting the local control plane (kube-apiserver, controllers, kwok)")
        k8s.start(state)
        kubeconfig = state / "kubeconfig"
    cluster = _Cluster(kubeconfig, secrets.token_hex(3))
    story = Story(namespace=cluster.ns, limit_bytes=cfg.limit_mib * MIB)
    node: RealNode | None = None
    try:
        daemon_kc = cluster.setup(state)
        root = state / "kubelet"
        node = RealNode(state / "node", [], scrape_interval=f"{cfg.scrape_s:g}s",
                        memory_limit_bytes=(cfg.limit_mib + 512) * MIB * 2,
                        kubernetes={"kubeconfig": str(kubeconfig), "namespaces": [cluster.ns],
                                    "nodes": cluster.nodes(), "root": str(root)})
        node.start()
        port = _proc.free_port()
        endpoint = f"http://127.0.0.1:{port}"
        start_live(node, poll_s=cfg.scrape_s, env={"KUBECONFIG": str(daemon_kc)}, settings={
            "sources": {"prometheus": {"extra_matchers": f'namespace="{cluster.ns}"'}},
            "windows": {"step_s": cfg.window_step_s},
            "alerting": {"kubernetes_events": True},
            "remediation": {
                "enabled": True, "namespace": cluster.system_ns, "channel_host": "127.0.0.1",
                "channel_port": port, "checkpoint_timeout_s": 60,
                # the leak fills the limit in minutes: evict without an answer only when
                # the pod would die within the next 30 s anyway
                "evict_unacknowledged_below_s": 30, "retry_s": 5, "resync_s": 10,
                "avoid_node": True, "avoid_ttl_s": 300}})
        report(f"podguard run (remediation on, channel {endpoint}), harness Prometheus "
               f"{node.prometheus_url}; creating StatefulSet {cluster.ns}/trainer")
        cluster.create_trainer(cfg, endpoint)
        story.statefulset_created = time.time()
        data = root / "hostpath" / "podguard-story" / cluster.pv
        deadline = time.monotonic() + cfg.timeout_s
        said: set[str] = set()
        while time.monotonic() < deadline:
            _observe(story, node, cluster, data)
            for name, ts, detail in story.timeline()[:11]:
                if ts is not None and name not in said:
                    said.add(name)
                    t0 = story.process_started or story.statefulset_created or ts
                    report(f"  {ts - t0:+7.1f} s  {name}: {detail}")
            if len(story.steps_second) >= cfg.steps_after_resume:
                break
            if story.oom_kill_events:
                story.errors.append("the kernel OOM-killed the trainer")
                break
            if not _proc.alive(_proc.pid_of(LIVE, node.state)):
                story.errors.append("podguard run exited:\n" + _proc.log_tail(LIVE,
                                                                              node.state))
                break
            time.sleep(1.0)
        else:
            story.errors.append(f"the story did not finish within {cfg.timeout_s:.0f} s")
        _observe(story, node, cluster, data)
        try:
            _would_oom(story, node)
        except Exception as e:  # the table says "-"; the error is reported
            story.errors.append(f"extrapolating the working set failed: {e!r}")
    finally:
        if node is not None:
            with contextlib.suppress(Exception):
                stop_live(node)
            try:
                node.stop()
            except StackError as e:
                story.errors.append(f"stopping the harness: {e}")
            if story.first_uid:
                _observe_exit(story, node)
        story.errors.extend(cluster.teardown())
        if k8s is not None:
            k8s.stop(state)
    return story


def _observe_exit(story: Story, node: RealNode) -> None:
    for e in node.events():
        if e.get("event") == "exit" and e.get("uid") == story.first_uid and \
                story.first_exit is None:
            story.first_exit, story.first_exit_reason = e["ts"], str(e.get("reason"))
            story.first_oom_kills = e.get("oom_kills")


def check(story: Story) -> list[str]:
    """What keeps the story from being told as it should be (empty: it was)."""
    out = list(story.errors)
    need = {"first verdict": story.first_verdict, "checkpoint requested":
            story.checkpoint_requested, "acknowledgement": story.acknowledged,
            "eviction": story.evicted, "replacement Running": story.second_running,
            "resume": story.resumed}
    out += [f"no {k}" for k, v in need.items() if v is None]
    if story.first_verdict_kind and story.first_verdict_kind != "memory_leak":
        out.append(f"the first verdict is {story.first_verdict_kind}, not memory_leak")
    if story.first_verdict is not None and story.time_to_oom_s is None:
        out.append("the first verdict has no time to OOM")
    if story.forced:
        out.append("evicted without the checkpoint")
    if story.first_oom_kills != 0 or story.oom_kill_events:
        out.append(f"the kernel OOM-killed the trainer (oom_kill={story.first_oom_kills}, "
                   f"{story.oom_kill_events} oom_kill event(s))")
    if story.ack_step is not None and story.resumed_from_step != story.ack_step:
        out.append(f"resumed from step {story.resumed_from_step}, not the acknowledged "
                   f"{story.ack_step}")
    if story.ack_step is not None and story.first_new_step != story.ack_step + 1:
        out.append(f"the replacement's first step is {story.first_new_step}, not "
                   f"{story.ack_step + 1}")
    order = [("process started", story.process_started), ("leak onset", story.leak_onset),
             ("first verdict", story.first_verdict),
             ("checkpoint requested", story.checkpoint_requested),
             ("acknowledged", story.acknowledged), ("evicted", story.evicted),
             ("replacement Running", story.second_running), ("resumed", story.resumed)]
    known = [(k, v) for k, v in order if v is not None]
    for (a, ta), (b, tb) in itertools.pairwise(known):
        if tb < ta - 1.0:  # clocks of one machine; 1 s for the verdict's window end
            out.append(f"{b} ({tb:.1f}) came before {a} ({ta:.1f})")
    if story.would_oom is not None and story.evicted is not None and \
            story.would_oom <= story.evicted:
        out.append("the eviction came after the extrapolated OOM")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.local.story",
                                 description=__doc__.splitlines()[0])
    d = StoryConfig()
    ap.add_argument("--kubeconfig", type=Path, default=None,
                    help="use this control plane (kwok nodes) instead of starting one")
    ap.add_argument("--limit-mib", type=int, default=d.limit_mib)
    ap.add_argument("--rate-mib-min", type=float, default=d.rate_mib_min)
    ap.add_argument("--onset-s", type=float, default=d.onset_s)
    ap.add_argument("--timeout-s", type=float, default=d.timeout_s)
    ap.add_argument("--json", type=Path, default=None, help="write what happened here")
    ap.add_argument("--keep", type=Path, default=None,
                    help="state directory to keep (logs, events); default: a temporary one")
    a = ap.parse_args(argv)
    cfg = StoryConfig(limit_mib=a.limit_mib, rate_mib_min=a.rate_mib_min, onset_s=a.onset_s,
                      timeout_s=a.timeout_s)
    state = a.keep or Path(tempfile.mkdtemp(prefix="podguard-story-"))
    try:
        story = run(state, kubeconfig=a.kubeconfig, cfg=cfg,
                    report=lambda m: print(m, flush=True))
    finally:
        if a.keep is None:
            shutil.rmtree(state, ignore_errors=True)
    print("\n" + story.table())
    if story.predicted_oom is not None and story.would_oom is not None and \
            story.first_verdict is not None:
        real = story.would_oom - story.first_verdict
        est = story.predicted_oom - story.first_verdict
        print(f"\ntime to OOM at the first verdict: podguard {est:.0f} s, extrapolated "
              f"{real:.0f} s ({(est - real) / real * 100:+.0f} %)" if real > 0 else "")
    if a.json is not None:
        a.json.write_text(json.dumps(asdict(story), indent=2))
    problems = check(story)
    for p in problems:
        print(f"STORY FAILED: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
