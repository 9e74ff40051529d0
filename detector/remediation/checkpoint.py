"""The workload side of the checkpoint protocol: a helper a PyTorch training loop calls.

podguard's controller asks a pod for a checkpoint by writing the annotation
``podguard.io/checkpoint-request`` (``{"id": ..., "ts": ..., "reason": ...}``) and evicts
the pod only after the pod answers ``podguard.io/checkpoint-ack`` with the same ``id`` and
the checkpoint's path. In the training loop::

    from detector.remediation.checkpoint import CheckpointResponder, latest_checkpoint, torch_saver

    responder = CheckpointResponder.from_env(directory="/data/checkpoints")
    start = 0
    if (found := latest_checkpoint("/data/checkpoints")) is not None:
        state = torch.load(found.path, weights_only=True)
        model.load_state_dict(state["model"]); optimizer.load_state_dict(state["optimizer"])
        start = found.step + 1
    for step in range(start, steps):
        train_one_step(step)
        saver = torch_saver(lambda: {"model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "step": step})
        if responder.maybe_checkpoint(saver, step=step):
            responder.hold()  # the pod is about to be evicted: make no progress it would lose

Requests are read from the pod through the API (``get`` on its own pod: quick) or, when
given, from a downward-API annotations file (no API access needed to read, but the kubelet
refreshes it only every minute or so). The acknowledgement is a ``patch`` of the pod's own
annotations (RBAC: :data:`detector.remediation.rbac.WORKLOAD_RULES`). A checkpoint is
written to a temporary name, fsynced and renamed into place, and ``latest.json`` next to it
is replaced atomically, before the acknowledgement is sent.

``hold`` pauses the loop (up to ``hold_s``) after an acknowledgement, so no completed step is
lost when the eviction follows; if the eviction does not come (a PodDisruptionBudget), the
loop goes on and the controller asks again when the checkpoint is stale.
This module never imports torch; :func:`torch_saver` imports it when called.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from detector.remediation import protocol as proto

log = logging.getLogger("podguard.remediation.checkpoint")

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DOWNWARD_DEFAULT = Path("/etc/podinfo/annotations")


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``latest.json`` says about the newest saved checkpoint."""

    path: Path
    step: int
    request_id: str
    ts: float


def latest_checkpoint(directory: str | Path) -> CheckpointInfo | None:
    """The newest checkpoint saved by :class:`CheckpointResponder` in ``directory``."""
    meta = Path(directory) / "latest.json"
    try:
        raw = json.loads(meta.read_text())
        info = CheckpointInfo(Path(raw["path"]), int(raw["step"]), str(raw["request_id"]),
                              float(raw["ts"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if info.path.is_file() else None


def torch_saver(state: Callable[[], Any]) -> Callable[[Path], object]:
    """A save function writing ``state()`` with ``torch.save`` (torch imported on use)."""
    def save(path: Path) -> None:
        import torch

        torch.save(state(), path)
    return save


def parse_downward_annotations(text: str) -> dict[str, str]:
    """The downward API's ``annotations`` file: lines ``key="value"`` (Go-quoted values)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep or not quoted.startswith('"'):
            continue
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, str):
            out[key.strip()] = value
    return out


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointResponder:
    """Answers podguard's checkpoint requests for one pod (see the module docstring)."""

    def __init__(self, *, namespace: str, pod: str, directory: str | Path,
                 api: client.ApiClient | None = None, annotations_file: str | Path | None = None,
                 poll_interval_s: float = 2.0, hold_s: float = 600.0,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 logger: logging.Logger | None = None) -> None:
        if api is None and annotations_file is None:
            raise ValueError("CheckpointResponder needs an API client (to acknowledge) or "
                             "an annotations file")
        self.log = logger if logger is not None else log
        self.namespace = namespace
        self.pod = pod
        self.directory = Path(directory)
        self.api = api
        self.core = client.CoreV1Api(api) if api is not None else None
        self.annotations_file = Path(annotations_file) if annotations_file else None
        self.poll_interval_s = poll_interval_s
        self.hold_s = hold_s
        self.clock = clock
        self.sleep = sleep
        self._next_poll = 0.0
        self._answered: set[str] = set()
        self.last_ack: proto.CheckpointAck | None = None

    @classmethod
    def from_env(cls, directory: str | Path, **kwargs: Any) -> CheckpointResponder:
        """For a pod: namespace from ``POD_NAMESPACE`` (or the service account's), name from
        ``POD_NAME`` (or ``HOSTNAME``), API from the in-cluster service account or
        ``KUBECONFIG``, annotations file from ``PODGUARD_ANNOTATIONS_FILE`` if set."""
        ns = os.environ.get("POD_NAMESPACE") or (
            _SA_NAMESPACE.read_text().strip() if _SA_NAMESPACE.exists() else "default")
        pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME", "")
        try:
            config.load_incluster_config()
            api = client.ApiClient()
        except config.ConfigException:
            api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
        ann = os.environ.get("PODGUARD_ANNOTATIONS_FILE")
        return cls(namespace=ns, pod=pod, directory=directory, api=api,
                   annotations_file=ann or None, **kwargs)

    # ------------------------------------------------------------------ reading

    def annotations(self) -> dict[str, str]:
        """The pod's annotations now (downward-API file if given, else the API)."""
        if self.annotations_file is not None:
            try:
                return parse_downward_annotations(self.annotations_file.read_text())
            except OSError:
                return {}
        assert self.core is not None
        pod = self.core.read_namespaced_pod(self.pod, self.namespace, _request_timeout=10)
        return dict((pod.metadata.annotations or {}) if pod.metadata else {})

    def pending(self, *, force: bool = False) -> proto.CheckpointRequest | None:
        """A request not yet acknowledged (polled at most every ``poll_interval_s``)."""
        now = self.clock()
        if not force and now < self._next_poll:
            return None
        self._next_poll = now + self.poll_interval_s
        try:
            ann = self.annotations()
        except Exception as e:  # the training must go on if the API is unreachable
            self.log.warning("cannot read the pod's annotations: %s", e)
            return None
        req = proto.CheckpointRequest.parse(ann.get(proto.REQUEST))
        if req is None or req.id in self._answered:
            return None
        ack = proto.CheckpointAck.parse(ann.get(proto.ACK))
        if ack is not None and ack.id == req.id:
            self._answered.add(req.id)  # answered before a restart of this process
            return None
        return req

    # ------------------------------------------------------------------ answering

    def save_and_acknowledge(self, request: proto.CheckpointRequest,
                             save: Callable[[Path], object], *, step: int) -> Path:
        """Saves (atomically), records ``latest.json``, then acknowledges ``request``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"ckpt-{step:09d}-{request.id}.pt"
        tmp = final.with_name(f".{final.name}.tmp")
        save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        now = self.clock()
        meta = self.directory / "latest.json"
        mtmp = meta.with_name(".latest.json.tmp")
        mtmp.write_text(json.dumps({"path": str(final), "step": step,
                                    "request_id": request.id, "ts": now}))
        os.replace(mtmp, meta)
        _fsync_dir(self.directory)
        ack = proto.CheckpointAck(id=request.id, path=str(final), ts=now, step=step)
        self.acknowledge(ack)
        self._answered.add(request.id)
        self.last_ack = ack
        self.log.info("checkpoint %s saved at step %d for request %s", final, step, request.id)
        return final

    def acknowledge(self, ack: proto.CheckpointAck) -> None:
        if self.core is None:
            raise RuntimeError("acknowledging needs an API client (patch on the pod itself)")
        delays = (0.5, 1.0, 2.0, 5.0)
        for attempt in range(1, len(delays) + 2):
            try:
                self.core.patch_namespaced_pod(
                    self.pod, self.namespace,
                    {"metadata": {"annotations": {proto.ACK: ack.to_json()}}},
                    _request_timeout=10)
                return
            except Exception as e:
                if attempt > len(delays):
                    raise
                self.log.warning("acknowledging %s failed (%s); attempt %d/%d", ack.id, e, attempt,
                            len(delays) + 1)
                self.sleep(delays[attempt - 1])

    def maybe_checkpoint(self, save: Callable[[Path], object], *, step: int) -> bool:
        """Call once per completed step: saves and acknowledges a pending request.
        True when it did (the pod will be evicted: call :meth:`hold`)."""
        req = self.pending()
        if req is None:
            return False
        self.save_and_acknowledge(req, save, step=step)
        return True

    def hold(self, *, stop: Callable[[], bool] | None = None) -> None:
        """Waits up to ``hold_s`` for the eviction (or until ``stop()`` is true); a newer
        request arriving meanwhile ends the wait so the loop can answer it."""
        end = self.clock() + self.hold_s
        while self.clock() < end:
            if stop is not None and stop():
                return
            if self.pending() is not None:
                self._next_poll = 0.0  # let maybe_checkpoint see it at once
                return
            self.sleep(min(1.0, self.poll_interval_s))
