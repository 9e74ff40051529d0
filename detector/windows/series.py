"""The series store: every per-series and per-pod array of the window engine, in one place.

A *series* is one (namespace, pod, container, metric). Each holds a few scalars (which pod,
which channel or limit it feeds, how it becomes a channel, its newest sample...) and a ring of
``ring`` bins (newest timestamp, its value and the largest value of each bin, and the absolute
bin id the slot holds). The arrays are declared once, in :data:`SERIES_FIELDS` and
:data:`BIN_FIELDS` (name -> dtype and the value of an empty slot): creating, growing, resetting
a reused slot and dropping a pod's series all walk these declarations, so a new per-series
field is one line there. Pods have their own small registry (first/last sample time, node).

How a metric is read is classified here from the channel table (:mod:`detector.channels`):
each channel's metric feeds its channel, each limit metric its own target, and any other
metric becomes an extra (custom) series; the node's own exporter metrics outside the tables
are ignored.

Callers: :class:`detector.windows.ingest.Ingester` writes the store, and
:class:`detector.windows.assemble.WindowAssembler` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detector import channels as chan
from detector import traces as tr
from detector.windows.batch import PodKey

# ---------------------------------------------------------------------------------------------
# How each metric is read

GAUGE, RATE, INCREASE = 0, 1, 2
KIND_CODE = {"gauge": GAUGE, "rate": RATE, "increase": INCREASE}

# Targets a series feeds: the channels in CHANNELS order, then each limit metric of the limit
# table in order, then "any other metric" (-> WindowBatch.extra).
LIMIT_TARGETS: dict[tuple[str, int], int] = {}  # (limit name, metric position) -> target
KNOWN: dict[str, tuple[int, int, float]] = {  # metric -> (target, kind, unit scale)
    c.metric: (i, KIND_CODE[c.kind], c.scale) for i, c in enumerate(chan.CHANNEL_TABLE)
}
for _lim in chan.LIMIT_TABLE:
    for _j, _m in enumerate(_lim.metrics):
        LIMIT_TARGETS[(_lim.name, _j)] = len(KNOWN)
        KNOWN[_m.metric] = (len(KNOWN), GAUGE, _m.scale)
T_EXTRA = len(KNOWN)
N_TARGETS = T_EXTRA + 1


def unused_infrastructure(metric: str) -> bool:
    """A metric of the node's own exporters that no table row reads (ignored, not custom)."""
    return metric not in KNOWN and metric.startswith(chan.INFRASTRUCTURE_PREFIXES)


def classify(metric: str) -> tuple[int, int, float]:
    """(target, kind code, unit scale) of a metric."""
    known = KNOWN.get(metric)
    if known is not None:
        return known
    return (T_EXTRA, RATE if tr.is_counter(metric) else GAUGE, 1.0)


# ---------------------------------------------------------------------------------------------
# The store

NO_BIN = np.iinfo(np.int64).min // 2
"""``newest_b`` of a series without samples (far below any bin, without overflow)."""

SERIES_FIELDS: Mapping[str, tuple[type, Any]] = {
    "alive": (np.bool_, False),  # the slot holds a series
    "pod": (np.int64, -1),  # pod slot
    "target": (np.int64, 0),  # channel index, limit target or T_EXTRA (classify)
    "kind": (np.int64, 0),  # GAUGE, RATE or INCREASE
    "scale": (np.float64, 1.0),  # trace unit -> channel unit
    "agg": (np.bool_, False),  # container == "" (a pod-level series)
    "extra": (np.int64, -1),  # index into extra_names, -1 for a channel or limit
    "container": (np.int64, -1),  # the container's ordinal within its pod (pod_containers)
    "newest_t": (np.float64, -np.inf),  # newest sample time accepted
    "newest_b": (np.int64, NO_BIN),  # newest bin id accepted
}
"""Per-series scalars: attribute ``s_<name>`` of :class:`SeriesStore`, shape ``(capacity,)``."""

BIN_FIELDS: Mapping[str, tuple[type, Any]] = {
    "bt": (np.float64, np.nan),  # newest timestamp in the bin
    "bv": (np.float64, np.nan),  # value of that sample
    "bm": (np.float64, np.nan),  # largest value in the bin (counter resets inside a bin)
    "bid": (np.int64, -1),  # absolute bin id held by the slot
}
"""Per-series rings: attribute ``<name>`` of :class:`SeriesStore`, shape ``(capacity, ring)``."""

POD_FIELDS: Mapping[str, tuple[type, Any]] = {
    "first": (np.float64, np.inf),  # first sample time
    "last": (np.float64, -np.inf),  # newest sample time
}
"""Per-pod scalars: attribute ``p_<name>`` of :class:`SeriesStore`."""

_INITIAL_SERIES = 64
_INITIAL_PODS = 16


class SeriesStore:
    """Bounded state of every series and pod (see the module docstring); ``ring`` bins each.

    The arrays are public attributes for the ingester and the assembler: ``s_<field>`` for
    :data:`SERIES_FIELDS`, ``<field>`` for :data:`BIN_FIELDS`, ``p_<field>`` for
    :data:`POD_FIELDS`. Slots of dropped series and pods are reused.
    """

    def __init__(self, ring: int) -> None:
        self.ring = int(ring)
        self.series_index: dict[tuple[str, str, str, str], int] = {}
        self.series_name: list[tuple[str, str, str, str] | None] = []
        self._free_series: list[int] = []
        self.extra_names: list[str] = []
        self._extra_index: dict[str, int] = {}
        self.pod_index: dict[PodKey, int] = {}
        self.pod_keys: list[PodKey | None] = []
        self.pod_node: list[str] = []
        # per pod slot: container name -> its ordinal in the pod (s_container), so that
        # series of one container are matched with arrays; bounded by the pod's series
        self.pod_containers: list[dict[str, int]] = []
        self._free_pods: list[int] = []
        self.clock = -np.inf  # newest timestamp ingested
        for name, (dtype, fill) in SERIES_FIELDS.items():
            setattr(self, "s_" + name, np.full(_INITIAL_SERIES, fill, dtype=dtype))
        for name, (dtype, fill) in BIN_FIELDS.items():
            setattr(self, name, np.full((_INITIAL_SERIES, self.ring), fill, dtype=dtype))
        for name, (dtype, _fill) in POD_FIELDS.items():
            setattr(self, "p_" + name, np.zeros(0, dtype=dtype))

    # the arrays, declared for the type checker (set from the field tables above)
    s_alive: np.ndarray
    s_pod: np.ndarray
    s_target: np.ndarray
    s_kind: np.ndarray
    s_scale: np.ndarray
    s_agg: np.ndarray
    s_extra: np.ndarray
    s_container: np.ndarray
    s_newest_t: np.ndarray
    s_newest_b: np.ndarray
    bt: np.ndarray
    bv: np.ndarray
    bm: np.ndarray
    bid: np.ndarray
    p_first: np.ndarray
    p_last: np.ndarray

    @property
    def capacity(self) -> int:
        return int(self.s_alive.size)

    def _arrays(self) -> list[tuple[str, Any]]:
        """(attribute, fill) of every per-series array."""
        return [("s_" + n, f) for n, (_d, f) in SERIES_FIELDS.items()] + [
            (n, f) for n, (_d, f) in BIN_FIELDS.items()]

    def _grow_series(self, need: int) -> None:
        cap = self.capacity
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for attr, fill in self._arrays():
            a = getattr(self, attr)
            b = np.full((new, *a.shape[1:]), fill, dtype=a.dtype)
            b[:cap] = a
            setattr(self, attr, b)

    def _reset_series(self, rows: Any) -> None:
        """Every per-series field of ``rows`` back to its empty value."""
        for attr, fill in self._arrays():
            getattr(self, attr)[rows] = fill

    def pod_slot(self, key: PodKey) -> int:
        """The slot of pod ``key``, registering it if new."""
        p = self.pod_index.get(key)
        if p is not None:
            return p
        if self._free_pods:
            p = self._free_pods.pop()
            self.pod_keys[p] = key
            self.pod_node[p] = ""
            self.pod_containers[p] = {}
        else:
            p = len(self.pod_keys)
            self.pod_keys.append(key)
            self.pod_node.append("")
            self.pod_containers.append({})
            size = self.p_first.size
            if p >= size:
                new = max(_INITIAL_PODS, 2 * size)
                for name, (dtype, fill) in POD_FIELDS.items():
                    a = getattr(self, "p_" + name)
                    setattr(self, "p_" + name,
                            np.concatenate([a, np.full(new - size, fill, dtype=dtype)]))
        for name, (_dtype, fill) in POD_FIELDS.items():
            getattr(self, "p_" + name)[p] = fill
        self.pod_index[key] = p
        return p

    def series_slot(self, name: tuple[str, str, str, str]) -> int:
        """The slot of series ``(namespace, pod, container, metric)``, registering it (and its
        pod) if new."""
        s = self.series_index.get(name)
        if s is not None:
            return s
        ns, pod, container, metric = name
        p = self.pod_slot(PodKey(ns, pod))
        if self._free_series:
            s = self._free_series.pop()
        else:
            s = len(self.series_name)
            self.series_name.append(None)
            self._grow_series(s + 1)
        self._reset_series(s)
        target, kind, scale = classify(metric)
        self.series_name[s] = name
        self.series_index[name] = s
        self.s_alive[s] = True
        self.s_pod[s] = p
        self.s_target[s] = target
        self.s_kind[s] = kind
        self.s_scale[s] = scale
        self.s_agg[s] = container == ""
        self.s_container[s] = self.pod_containers[p].setdefault(
            container, len(self.pod_containers[p]))
        if target == T_EXTRA:
            e = self._extra_index.get(metric)
            if e is None:
                e = len(self.extra_names)
                self.extra_names.append(metric)
                self._extra_index[metric] = e
            self.s_extra[s] = e
        return s

    def pods(self) -> list[PodKey]:
        """The pods currently held, in registration order."""
        return [k for k in self.pod_keys if k is not None]

    def drop_pod(self, key: PodKey) -> bool:
        """Forgets a pod and all its series; returns whether it was held."""
        p = self.pod_index.pop(key, None)
        if p is None:
            return False
        sids = np.flatnonzero(self.s_alive & (self.s_pod == p))
        for s in sids.tolist():
            name = self.series_name[s]
            if name is not None:
                self.series_index.pop(name, None)
            self.series_name[s] = None
            self._free_series.append(s)
        self._reset_series(sids)
        self.pod_keys[p] = None
        self.pod_node[p] = ""
        self.pod_containers[p] = {}
        for field, (_dtype, fill) in POD_FIELDS.items():
            getattr(self, "p_" + field)[p] = fill
        self._free_pods.append(p)
        return True

    def forget_vanished(self, now: float, ttl_s: float) -> list[PodKey]:
        """Drops the pods with no sample in the last ``ttl_s`` before ``now``; returns them."""
        if not np.isfinite(now):
            return []
        gone = [k for k, p in self.pod_index.items() if self.p_last[p] < now - ttl_s]
        for k in gone:
            self.drop_pod(k)
        return gone

    def state_size(self) -> dict[str, int]:
        """Pods and series held and the bytes of the per-series arrays."""
        return {
            "pods": len(self.pod_index),
            "series": len(self.series_index),
            "series_capacity": self.capacity,
            "ring_bins": self.ring,
            "bytes": int(sum(getattr(self, attr).nbytes for attr, _f in self._arrays())),
        }
