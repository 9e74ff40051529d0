"""The workload side of the checkpoint protocol: a helper a PyTorch training loop calls.

podguard asks a pod for a checkpoint over its authenticated pod channel
(:mod:`detector.remediation.channel`): the helper asks the daemon of its node for pending
requests, proving who it is with the pod's projected service-account token (audience
``podguard``), saves a checkpoint, and answers with the request's id and the checkpoint's
path; podguard evicts the pod only after that answer. The pod needs no Kubernetes API access
(no Role). In the training loop::

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

The pod spec gives the helper its endpoint and token (``from_env``)::

    env:  # the Service podguard-channel keeps the traffic on the pod's node
      - {name: PODGUARD_ENDPOINT, value: "http://podguard-channel.podguard.svc:9847"}
      - {name: PODGUARD_TOKEN_FILE, value: /var/run/secrets/podguard/token}
      # with the channel over TLS (components/channel-tls): https:// in PODGUARD_ENDPOINT and
      # - {name: PODGUARD_CA_FILE, value: /etc/podguard-ca/ca.crt}   (the CA that signs it)
    volumes:
      - name: podguard-token
        projected: {sources: [{serviceAccountToken: {audience: podguard,
                                                     expirationSeconds: 3600, path: token}}]}

What the helper trusts (issue 14, item 11): nothing it is told without checking. A request
is honoured only if its kind is ``checkpoint``, its id matches
:data:`~detector.remediation.protocol.REQUEST_ID` (no ``/``, bounded), its time is finite and
at most ``max_request_age_s`` old, it was not answered before (a bounded memory of ids), and
the previous checkpoint is at least ``min_interval_s`` old (rate limit). Only the newest
``keep`` checkpoints it wrote are kept. ``hold`` waits at most ``hold_s`` (capped at
:data:`MAX_HOLD_S`). Every method called from the training loop catches its own errors (a
failed save, an unreachable daemon) and logs them: nothing raises into user code, and the
training goes on. A checkpoint is written to a temporary name, fsynced and renamed into
place, and ``latest.json`` next to it is replaced atomically, before the answer is sent.
This module never imports torch (:func:`torch_saver` imports it when called) nor the
Kubernetes client.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.podclient import PodChannelClient
from detector.remediation import protocol as proto

log = logging.getLogger("podguard.remediation.checkpoint")

MAX_HOLD_S = 900.0
"""The longest ``hold`` can keep the training loop, whatever it is configured to."""

_CKPT = re.compile(r"^ckpt-(\d{9})-[A-Za-z0-9_-]{1,128}\.pt$")


@dataclass(frozen=True)
class CheckpointRequest:
    """A checkpoint request as the daemon handed it over (validated)."""

    id: str
    ts: float
    reason: str = ""


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


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ChannelClient = PodChannelClient
"""The pod's end of podguard's channel: the one in-pod client, :mod:`detector.podclient`
(shared with the diagnosis helper)."""


class CheckpointResponder:
    """Answers podguard's checkpoint requests for one pod (see the module docstring)."""

    def __init__(self, *, directory: str | Path, channel: ChannelClient,
                 poll_interval_s: float = 2.0, hold_s: float = 120.0, keep: int = 3,
                 min_interval_s: float = 30.0, max_request_age_s: float = 1800.0,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 logger: logging.Logger | None = None) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1 (the checkpoint just acknowledged)")
        self.log = logger if logger is not None else log
        self.directory = Path(directory)
        self.channel = channel
        self.poll_interval_s = poll_interval_s
        self.hold_s = min(max(0.0, hold_s), MAX_HOLD_S)
        self.keep = keep
        self.min_interval_s = min_interval_s
        self.max_request_age_s = max_request_age_s
        self.clock = clock
        self.sleep = sleep
        self._next_poll = 0.0
        self._answered: OrderedDict[str, None] = OrderedDict()  # bounded memory of ids
        self._last_saved = -math.inf
        self.ignored: dict[str, int] = {}  # why requests were ignored -> count
        self.last_ack: dict[str, Any] | None = None

    @classmethod
    def from_env(cls, directory: str | Path, **kwargs: Any) -> CheckpointResponder:
        """For a pod: ``PODGUARD_ENDPOINT`` (the node's daemon), ``PODGUARD_TOKEN_FILE``
        (the projected token, audience podguard) and, for an ``https://`` endpoint,
        ``PODGUARD_CA_FILE`` (:meth:`detector.podclient.PodChannelClient.from_env`)."""
        return cls(directory=directory, channel=PodChannelClient.from_env(), **kwargs)

    # ------------------------------------------------------------------ requests

    def _ignore(self, why: str) -> None:
        self.ignored[why] = self.ignored.get(why, 0) + 1
        self.log.info("checkpoint request ignored: %s", why)

    def _valid(self, raw: dict[str, Any]) -> CheckpointRequest | None:
        if raw.get("kind") != "checkpoint":
            return None  # another kind of request: not ours
        rid, ts, reason = raw.get("id"), raw.get("ts"), raw.get("reason", "")
        if not isinstance(rid, str) or not proto.REQUEST_ID.match(rid):
            self._ignore("malformed id")
            return None
        if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
            self._ignore("no valid time")
            return None
        if self.clock() - float(ts) > self.max_request_age_s:
            self._ignore("stale")
            return None
        if rid in self._answered:
            return None
        return CheckpointRequest(rid, float(ts), str(reason)[:500])

    def pending(self, *, force: bool = False) -> CheckpointRequest | None:
        """A valid request not yet answered (asked at most every ``poll_interval_s``)."""
        now = self.clock()
        if not force and now < self._next_poll:
            return None
        self._next_poll = now + self.poll_interval_s
        try:
            got = self.channel.requests()
        except Exception as e:  # the training must go on if podguard is unreachable
            self.log.warning("cannot ask podguard for requests: %s", e)
            return None
        for raw in got:
            req = self._valid(raw)
            if req is not None:
                if now - self._last_saved < self.min_interval_s:
                    self._ignore("rate limited")
                    return None
                return req
        return None

    # ------------------------------------------------------------------ answering

    def save_and_acknowledge(self, request: CheckpointRequest, save: Callable[[Path], object],
                             *, step: int) -> Path | None:
        """Saves (atomically), records ``latest.json``, prunes, then answers ``request``.
        Returns the checkpoint's path when podguard accepted the answer, else None; never
        raises."""
        try:
            final = self._save(request, save, step=step)
        except Exception as e:
            self.log.error("checkpoint for request failed, training goes on: %r", e)
            return None
        self._last_saved = self.clock()
        self._remember(request.id)
        for attempt, delay in enumerate((0.5, 1.0, 2.0, 5.0, 0.0), start=1):
            try:
                ok, why = self.channel.answer("checkpoint", request.id,
                                              {"path": str(final), "step": step})
            except Exception as e:
                if delay == 0.0:
                    self.log.warning("answering podguard failed (%s); giving up", e)
                    return None
                self.log.warning("answering podguard failed (%s); attempt %d/5", e, attempt)
                self.sleep(delay)
                continue
            if not ok:
                self.log.warning("podguard did not accept the checkpoint: %s", why)
                return None
            self.last_ack = {"id": request.id, "path": str(final), "step": step,
                             "ts": self.clock()}
            self.log.info("checkpoint %s saved at step %d and acknowledged", final, step)
            return final
        return None

    def _save(self, request: CheckpointRequest, save: Callable[[Path], object], *,
              step: int) -> Path:
        if not proto.REQUEST_ID.match(request.id):
            raise ValueError("malformed request id")
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"ckpt-{int(step):09d}-{request.id}.pt"
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            save(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        meta = self.directory / "latest.json"
        mtmp = meta.with_name(".latest.json.tmp")
        mtmp.write_text(json.dumps({"path": str(final), "step": int(step),
                                    "request_id": request.id, "ts": self.clock()}))
        os.replace(mtmp, meta)
        _fsync_dir(self.directory)
        self._prune(keep_path=final)
        return final

    def _prune(self, *, keep_path: Path) -> None:
        """Only the newest ``keep`` checkpoints this helper wrote stay (by step)."""
        mine = sorted((p for p in self.directory.iterdir() if _CKPT.match(p.name)),
                      key=lambda p: (int(_CKPT.match(p.name).group(1)),  # type: ignore[union-attr]
                                     p.stat().st_mtime))
        for p in mine[:-self.keep]:
            if p != keep_path:
                try:
                    p.unlink()
                except OSError as e:
                    self.log.warning("cannot remove old checkpoint %s: %s", p, e)

    def _remember(self, request_id: str) -> None:
        self._answered[request_id] = None
        while len(self._answered) > 256:
            self._answered.popitem(last=False)

    def maybe_checkpoint(self, save: Callable[[Path], object], *, step: int) -> bool:
        """Call once per completed step: saves and answers a pending request.
        True when podguard accepted it (the pod will be evicted: call :meth:`hold`)."""
        try:
            req = self.pending()
            if req is None:
                return False
            return self.save_and_acknowledge(req, save, step=step) is not None
        except Exception as e:  # never into the training loop
            self.log.error("checkpoint helper failed: %r", e)
            return False

    def hold(self, *, stop: Callable[[], bool] | None = None) -> None:
        """Waits up to ``hold_s`` (at most :data:`MAX_HOLD_S`) for the eviction (or until
        ``stop()`` is true); a newer request arriving meanwhile ends the wait."""
        try:
            end = self.clock() + self.hold_s
            while self.clock() < end:
                if stop is not None and stop():
                    return
                if self.pending() is not None:
                    self._next_poll = 0.0  # let maybe_checkpoint see it at once
                    return
                self.sleep(max(0.05, min(1.0, self.poll_interval_s, end - self.clock())))
        except Exception as e:
            self.log.error("checkpoint helper hold failed: %r", e)
