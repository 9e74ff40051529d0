"""Decoding Kafka messages into samples, and what is wrong with the ones that cannot be.

Called by :mod:`detector.sources.kafka` (one :meth:`Decoder.decode` per record) and by the
benchmark. Two message formats are accepted, told apart by their keys:

1. **The Prometheus remote-write to Kafka adapter** (one sample per message)::

       {"timestamp": "2026-01-01T00:00:00Z", "value": "1.5",
        "name": "container_memory_working_set_bytes",
        "labels": {"__name__": "container_memory_working_set_bytes", "namespace": "ml",
                   "pod": "trainer-0", "container": "main", "node": "node-a"}}

   ``timestamp`` is RFC 3339 (a number of unix seconds is also taken), ``value`` a decimal
   string (or a number).

2. **The podguard batch** (many samples, labels written once per series)::

       {"podguard": 1,
        "series": [
          {"name": "container_memory_working_set_bytes",
           "labels": {"namespace": "ml", "pod": "trainer-0", "container": "main",
                      "node": "node-a"},
           "samples": [[1767225600.0, 1.5e9], [1767225615.0, 1.52e9]]}]}

   ``samples`` are ``[unix seconds, value]`` pairs of JSON numbers.

In both, ``namespace`` and ``pod`` labels are required, ``container`` and ``node`` optional
(``exported_namespace``/``exported_pod``/``exported_container`` are used when the plain ones are
missing, as after a scrape without ``honor_labels``). Every sample is checked: a finite
value, a timestamp in (0, 1e11) seconds and no more than ``max_future_s`` ahead of the
decoder's clock (one sample stamped in the year 5100 would otherwise move the window engine's
clock and make every other pod look vanished), a valid metric name, no more than
``max_labels`` labels, no label longer than ``max_label_bytes``, no negative counter
(``*_total``) or memory/limit value. A bad sample is refused with a reason (the good
samples of the same batch are kept); a message that is too big, not UTF-8 JSON or of
neither shape is refused whole. kube-state-metrics'
``kube_pod_container_status_last_terminated_reason{reason=...}`` becomes the ``oom_killed``
channel's series (:func:`detector.channels.oom_killed_flag`: 1 for ``OOMKilled``, 0 for
another reason; a sample below 0.5, no current reason, is valid and dropped: ``ignored``).
Nothing raises: :meth:`Decoder.decode` returns the refusals, and
:func:`dead_letter_record` turns them into the dead-letter message (reason, where it came
from, the payload cut to 64 KiB).

Everything the decoder keeps is bounded, whatever the input: a message is at most
``max_message_bytes`` (checked before parsing); the caches hold at most 4,096 entries of at
most ``max_label_bytes`` (metric names) or 64 characters (timestamp strings; longer ones are
refused, never stored); label values kept in the samples are at most ``max_label_bytes``; a
refusal keeps at most 5 examples of at most 512 characters.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detector import channels as chan
from detector.sources.base import SampleColumns

REASONS: tuple[str, ...] = (
    "too_large",  # message over max_message_bytes
    "not_json",  # not UTF-8 or not JSON
    "bad_shape",  # JSON, but neither format (wrong top-level type, missing keys)
    "too_many_samples",  # batch over max_samples_per_message
    "bad_type",  # a field of the wrong JSON type
    "bad_metric_name",
    "bad_timestamp",
    "future_timestamp",  # more than max_future_s ahead of the decoder's clock
    "bad_value",  # not a number
    "non_finite_value",  # NaN or +-Inf
    "negative_counter",
    "negative_value",  # a memory size or limit below 0
    "missing_label",  # no namespace or pod
    "too_many_labels",
    "label_too_long",
    "bad_label_text",  # a label that is not valid Unicode (a lone surrogate from a \udc80 escape)
)
"""Every reason a sample or message is refused (the ``reason`` label of the metrics)."""

_METRIC_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_NON_NEGATIVE = ("_bytes", "_rss", "_limits", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
                 "_reason_oomkilled")  # the flag under its own (trace) name
_MAX_TS = 1e11
_OOM_KILLED = chan.CHANNEL_METRICS[chan.OOM_KILLED_CHANNEL]
_PAYLOAD_MAX = 64 * 1024
_CACHE_MAX = 4096
_MAX_TS_CHARS = 64  # an RFC 3339 time is ~20-35 characters; longer strings are refused


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 1 << 20
    max_samples_per_message: int = 100_000
    max_labels: int = 64
    max_label_bytes: int = 1024
    max_future_s: float | None = 300.0  # None: no check against the clock


@dataclass
class Decoded:
    """The outcome of one message: samples appended to the caller's columns, refusals."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # samples (or 1 per whole message)
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few refused samples
    ignored: int = 0  # valid samples that carry nothing (a last terminated reason below 0.5)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


def _oom_flag(reason: object, direct: bool, value: float) -> float | None:
    """The value a sample is kept with: a last terminated ``reason``'s as the ``oom_killed``
    flag (:func:`detector.channels.oom_killed_flag`; None: no current reason, dropped), the
    flag sent under its trace name (``direct``) as 0/1 like it, any other sample's as is."""
    if reason is not None:
        return chan.oom_killed_flag(reason, value)
    if direct:
        return 1.0 if value >= 0.5 else 0.0
    return value


class Decoder:
    """Decodes records of either format into :class:`SampleColumns` (see module docstring).

    Keeps two small caches (metric names checked, RFC 3339 strings parsed) so a stream of
    scrapes, which repeats both, is cheap to decode.
    """

    def __init__(self, limits: Limits | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.limits = limits or Limits()
        self.clock = clock
        self._names: dict[str, str | None] = {}  # metric -> None if valid, else reason
        self._times: dict[str, float | None] = {}
        self._max_ts = _MAX_TS  # newest timestamp accepted by the message being decoded

    # -------------------------------------------------------------- entry point

    def decode(self, payload: bytes | None, out: SampleColumns) -> Decoded:
        res = Decoded()
        if payload is None:
            res.rejected["bad_shape"] += 1
            return res
        if len(payload) > self.limits.max_message_bytes:
            res.rejected["too_large"] += 1
            return res
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            res.rejected["not_json"] += 1
            return res
        if not isinstance(doc, dict):
            res.rejected["bad_shape"] += 1
            return res
        skew = self.limits.max_future_s
        self._max_ts = _MAX_TS if skew is None else min(_MAX_TS, self.clock() + skew)
        if "series" in doc and "podguard" in doc:
            self._batch(doc, out, res)
        elif "name" in doc and "labels" in doc and "value" in doc and "timestamp" in doc:
            self._adapter(doc, out, res)
        else:
            res.rejected["bad_shape"] += 1
        return res

    # -------------------------------------------------------------- formats

    def _adapter(self, doc: dict[str, Any], out: SampleColumns, res: Decoded) -> None:
        name = doc["name"]
        labels = doc["labels"]
        ts = self._timestamp(doc["timestamp"])
        raw = doc["value"]
        if isinstance(raw, str):
            try:
                value = float(raw)
            except (ValueError, OverflowError):
                value = None
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            value = _as_float(raw)
        else:
            value = None
        reason = self._check_series(name, labels)
        if reason is None:
            if ts is None:
                reason = "bad_timestamp"
            elif ts > self._max_ts:
                reason = "future_timestamp"
            elif value is None:
                reason = "bad_value"
            else:
                reason = _value_reason(name, value)
        if reason is not None:
            self._refuse(res, reason, 1, doc)
            return
        assert ts is not None and value is not None
        ns, pod, container, node = _pod_labels(labels)
        reason = labels.get("reason") if name == chan.LAST_TERMINATED_REASON else None
        if reason is not None:
            name = _OOM_KILLED
        flag = _oom_flag(reason, name == _OOM_KILLED, value)
        if flag is None:
            res.ignored += 1
            return
        out.append(ts, ns, pod, container, node, name, flag)
        res.accepted += 1

    def _batch(self, doc: dict[str, Any], out: SampleColumns, res: Decoded) -> None:
        series = doc["series"]
        if doc["podguard"] != 1 or not isinstance(series, list):
            res.rejected["bad_shape"] += 1
            return
        total = 0
        for s in series:
            n = len(s["samples"]) if isinstance(s, dict) and isinstance(
                s.get("samples"), list) else 1
            total += n
        if total > self.limits.max_samples_per_message:
            res.rejected["too_many_samples"] += total
            return
        for s in series:
            if not isinstance(s, dict) or not isinstance(s.get("samples"), list):
                self._refuse(res, "bad_shape", 1, s)
                continue
            samples = s["samples"]
            name = s.get("name")
            labels = s.get("labels")
            reason = self._check_series(name, labels)
            if reason is not None:
                self._refuse(res, reason, len(samples), {"name": name, "labels": labels})
                continue
            assert isinstance(name, str) and isinstance(labels, dict)
            ns, pod, container, node = _pod_labels(labels)
            reason = labels.get("reason") if name == chan.LAST_TERMINATED_REASON else None
            counter = name.endswith("_total")
            non_neg = counter or name.endswith(_NON_NEGATIVE)
            if reason is not None:
                name = _OOM_KILLED
            direct = name == _OOM_KILLED and reason is None  # the flag under its trace name
            for pair in samples:
                if not (isinstance(pair, list) and len(pair) == 2):
                    self._refuse(res, "bad_type", 1, pair)
                    continue
                t, v = pair
                if type(t) is not float and (type(t) is not int):
                    self._refuse(res, "bad_timestamp", 1, pair)
                    continue
                if type(v) is not float and (type(v) is not int or (v := _as_float(v)) is None):
                    self._refuse(res, "bad_value", 1, pair)
                    continue
                if not 0.0 < t < _MAX_TS:
                    self._refuse(res, "bad_timestamp", 1, pair)
                    continue
                if t > self._max_ts:
                    self._refuse(res, "future_timestamp", 1, pair)
                    continue
                if not math.isfinite(v):
                    self._refuse(res, "non_finite_value", 1, pair)
                    continue
                if v < 0 and non_neg:
                    self._refuse(res, "negative_counter" if counter else "negative_value", 1,
                                 pair)
                    continue
                flag = _oom_flag(reason, direct, float(v))
                if flag is None:
                    res.ignored += 1
                    continue
                out.append(float(t), ns, pod, container, node, name, flag)
                res.accepted += 1

    # -------------------------------------------------------------- checks

    def _check_series(self, name: Any, labels: Any) -> str | None:
        if not isinstance(name, str):
            return "bad_type"
        bad_name = self._names.get(name, "?")
        if bad_name == "?":
            if len(name) > self.limits.max_label_bytes:
                bad_name = "label_too_long"
            elif not _METRIC_RE.match(name):
                bad_name = "bad_metric_name"
            else:
                bad_name = None
            if len(self._names) >= _CACHE_MAX:
                self._names.clear()
            if len(name) <= self.limits.max_label_bytes:
                self._names[name] = bad_name
        if bad_name is not None:
            return bad_name
        if not isinstance(labels, dict):
            return "bad_type"
        if len(labels) > self.limits.max_labels:
            return "too_many_labels"
        cap = self.limits.max_label_bytes
        for k, v in labels.items():
            if not isinstance(v, str):
                return "bad_type"
            if len(k) > cap or len(v) > cap:
                return "label_too_long"
            if not (k.isascii() and v.isascii()) and not (_utf8_ok(k) and _utf8_ok(v)):
                return "bad_label_text"
        ns = labels.get("namespace") or labels.get("exported_namespace")
        pod = labels.get("pod") or labels.get("exported_pod")
        if not ns or not pod:
            return "missing_label"
        return None

    def _timestamp(self, raw: Any) -> float | None:
        if isinstance(raw, str):
            if len(raw) > _MAX_TS_CHARS:
                return None  # refused, and never kept in the cache
            ts = self._times.get(raw, -1.0)
            if ts == -1.0:
                ts = _parse_rfc3339(raw)
                if len(self._times) >= _CACHE_MAX:
                    self._times.clear()
                self._times[raw] = ts
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            ts = _as_float(raw)
        else:
            return None
        if ts is None or not (0.0 < ts < _MAX_TS):
            return None
        return ts

    @staticmethod
    def _refuse(res: Decoded, reason: str, n: int, example: Any) -> None:
        res.rejected[reason] += n
        if len(res.examples) < 5:
            res.examples.append({"reason": reason, "sample": _clip(example)})


def _utf8_ok(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (JSON lets ``"\\udc80"`` through as a lone surrogate,
    which every sink and the Kubernetes API would choke on)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_float(x: int | float) -> float | None:
    try:
        return float(x)
    except OverflowError:  # a JSON integer beyond the float range
        return None


def _value_reason(name: str, value: float) -> str | None:
    if not math.isfinite(value):
        return "non_finite_value"
    if value < 0:
        if name.endswith("_total"):
            return "negative_counter"
        if name.endswith(_NON_NEGATIVE):
            return "negative_value"
    return None


def _pod_labels(labels: dict[str, str]) -> tuple[str, str, str, str]:
    ns = labels.get("namespace") or labels.get("exported_namespace") or ""
    pod = labels.get("pod") or labels.get("exported_pod") or ""
    container = labels.get("container") or labels.get("exported_container") or ""
    node = labels.get("node") or labels.get("kubernetes_node") or ""
    return ns, pod, container, node


def _parse_rfc3339(text: str) -> float | None:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None  # a time without a zone is ambiguous: refuse it
    try:
        return dt.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _clip(obj: Any, limit: int = 512) -> Any:
    """A JSON-able, size-bounded copy of a refused piece (for the dead-letter record)."""
    try:
        text = json.dumps(obj, allow_nan=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def dead_letter_record(payload: bytes | None, decoded: Decoded, *, topic: str, partition: int,
                       offset: int, timestamp_ms: int | None = None) -> bytes:
    """The dead-letter message for a record with refusals: why, where from, what."""
    raw = payload or b""
    cut = raw[:_PAYLOAD_MAX]
    try:
        body: dict[str, Any] = {"payload": cut.decode("utf-8"), "payload_encoding": "utf-8"}
    except UnicodeDecodeError:
        body = {"payload": base64.b64encode(cut).decode(), "payload_encoding": "base64"}
    reasons = dict(decoded.rejected)
    record = {
        "reason": max(reasons, key=lambda k: reasons[k]) if reasons else "unknown",
        "reasons": reasons,
        "accepted_samples": decoded.accepted,
        "rejected": decoded.n_rejected,
        "examples": decoded.examples,
        "source": {"topic": topic, "partition": partition, "offset": offset,
                   "timestamp_ms": timestamp_ms},
        "payload_bytes": len(raw),
        "payload_truncated": len(raw) > _PAYLOAD_MAX,
        **body,
    }
    return json.dumps(record, separators=(",", ":"), allow_nan=True).encode()


def encode_batch(series: list[tuple[str, dict[str, str], list[tuple[float, float]]]]) -> bytes:
    """A podguard batch message: ``[(metric, labels, [(unix seconds, value), ...]), ...]``."""
    doc = {"podguard": 1, "series": [
        {"name": name, "labels": labels, "samples": [[t, v] for t, v in samples]}
        for name, labels, samples in series
    ]}
    return json.dumps(doc, separators=(",", ":")).encode()


def encode_adapter(name: str, labels: dict[str, str], ts: float, value: float) -> bytes:
    """One message as the remote-write adapter writes it (RFC 3339 UTC time, value string)."""
    from datetime import UTC

    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    doc = {"timestamp": stamp.replace("+00:00", "Z"), "value": repr(float(value)),
           "name": name, "labels": {"__name__": name, **labels}}
    return json.dumps(doc, separators=(",", ":")).encode()
