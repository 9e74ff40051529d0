"""The ingester: raw samples in, the series store's bins updated (vectorised over the rows).

Each series keeps, per bin of ``step_s`` seconds, its newest sample (timestamp and value) and,
for counters, the largest raw value seen in the bin. A call goes through three stages:

1. :meth:`Ingester._screen` rejects and counts bad rows (bad timestamps, missing labels, the
   pause container, the node's own unused series, NaN/inf values);
2. :meth:`Ingester._series` maps each row to its series slot (registering new series and
   pods, recording the pod's node);
3. :meth:`Ingester._store` rejects negative counters and known gauges, drops rows older than
   the ring holds (``too_old``), merges duplicates and late samples into their bins and
   writes the ring.

Bad rows never raise and never disturb accepted data; only a frame without the required
columns is an :class:`~detector.errors.InputError` (before anything is stored).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from detector import traces as tr
from detector.errors import InputError
from detector.windows.batch import IngestReport, Sample
from detector.windows.series import GAUGE, T_EXTRA, SeriesStore, unused_infrastructure

_PAUSE_CONTAINER = "POD"
_MAX_TIMESTAMP = tr.MAX_TIMESTAMP  # year ~5138: larger values are milliseconds or garbage


class _Labels(NamedTuple):
    """Integer codes of a frame's label columns and the string of each code."""

    ns_c: np.ndarray
    ns_u: list[str]
    pod_c: np.ndarray
    pod_u: list[str]
    con_c: np.ndarray  # 0 = missing/""
    con_u: list[str]
    met_c: np.ndarray
    met_u: list[str]


class Ingester:
    """Writes samples into ``store`` on bins of ``step_s`` ending at ``origin_s + k * step_s``;
    a series' ring holds ``store.ring`` bins, of which the ``lead`` oldest serve only the
    rates and forward fill of the window's first bins. Pods silent for ``pod_ttl_s`` are
    forgotten after each call."""

    def __init__(self, store: SeriesStore, *, step_s: float, origin_s: float, lead: int,
                 pod_ttl_s: float) -> None:
        self.store = store
        self.step_s = step_s
        self.origin_s = origin_s
        self.lead = lead
        self.pod_ttl_s = pod_ttl_s

    def ingest_samples(self, samples: Iterable[Sample]) -> IngestReport:
        """Ingests samples from a streaming source (see :meth:`ingest`)."""
        rows = list(samples)
        cols: dict[str, Any] = {
            "timestamp": np.array([r.timestamp for r in rows], dtype=object),
            "namespace": [r.namespace for r in rows],
            "pod": [r.pod for r in rows],
            "container": [r.container for r in rows],
            "node": [r.node for r in rows],
            "metric": [r.metric for r in rows],
            "value": np.array([r.value for r in rows], dtype=object),
        }
        return self.ingest(cols)

    def ingest(self, df: pd.DataFrame | Mapping[str, Any]) -> IngestReport:
        """Ingests rows in the trace format (a DataFrame or a mapping of equal-length columns).

        Bad rows are rejected and counted by reason in the returned report
        (``bad_timestamp``, ``missing_label``, ``pause_container``, ``unused_metric``,
        ``nan_value``, ``inf_value``, ``negative_counter``, ``negative_value``, ``too_old``);
        only a frame without the required columns raises :class:`InputError` (before
        anything is stored). Pods silent for ``pod_ttl_s`` are forgotten afterwards.
        """
        frame = df if isinstance(df, pd.DataFrame) else pd.DataFrame(dict(df))
        missing = [c for c in tr.REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(
                f"WindowEngine.ingest: missing required column(s) {', '.join(missing)}"
            )
        rep = IngestReport(rows=len(frame))
        if len(frame) == 0:
            return rep
        rows, ts, val, lab = self._screen(frame, rep)
        if rows.size == 0:
            return rep
        sid = self._series(frame, rows, lab)
        self._store(sid, ts[rows], val[rows], rep)
        return rep

    def _screen(self, frame: pd.DataFrame, rep: IngestReport
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Labels]:
        """(accepted row numbers, timestamps, values, label codes); the rejected rows are
        counted in ``rep``."""
        ts = _as_float(frame["timestamp"])
        val = _as_float(frame["value"])
        ok = np.isfinite(ts) & (ts > 0) & (ts < _MAX_TIMESTAMP)
        rep.add("bad_timestamp", int((~ok).sum()))

        ns_c, ns_u = _codes(frame["namespace"])
        pod_c, pod_u = _codes(frame["pod"])
        met_c, met_u = _codes(frame["metric"])
        if "container" in frame.columns:
            con_c, con_u = _codes(frame["container"])
        else:
            con_c, con_u = np.full(len(frame), -1, dtype=np.int64), []
        con_c = con_c + 1  # 0 = missing/""
        con_u = ["", *con_u]
        empty_ns = np.array([u == "" for u in ns_u] + [True])
        empty_pod = np.array([u == "" for u in pod_u] + [True])
        empty_met = np.array([u == "" for u in met_u] + [True])
        labelled = ~(empty_ns[ns_c] | empty_pod[pod_c] | empty_met[met_c])
        rep.add("missing_label", int((ok & ~labelled).sum()))
        ok &= labelled
        pause = np.array([False] + [u == _PAUSE_CONTAINER for u in con_u[1:]])
        rep.add("pause_container", int((ok & pause[con_c]).sum()))
        ok &= ~pause[con_c]
        # the node's own series that no channel reads (cAdvisor's memory breakdown, other
        # kube-state-metrics) are not an application's custom metrics
        unused = np.array([unused_infrastructure(u) for u in met_u] + [False])
        rep.add("unused_metric", int((ok & unused[met_c]).sum()))
        ok &= ~unused[met_c]
        nan_v = np.isnan(val)
        inf_v = np.isinf(val)
        rep.add("nan_value", int((ok & nan_v).sum()))
        rep.add("inf_value", int((ok & inf_v).sum()))
        ok &= ~(nan_v | inf_v)
        rows = np.flatnonzero(ok)
        return rows, ts, val, _Labels(ns_c, ns_u, pod_c, pod_u, con_c, con_u, met_c, met_u)

    def _series(self, frame: pd.DataFrame, rows: np.ndarray, lab: _Labels) -> np.ndarray:
        """The series slot of each accepted row (new series and pods registered)."""
        st = self.store
        ns_c, ns_u, pod_c, pod_u, con_c, con_u, met_c, met_u = lab

        # one integer key per (namespace, pod, container, metric)
        sizes = [len(ns_u), len(pod_u), len(con_u), len(met_u)]
        if float(np.prod([max(1, z) for z in sizes], dtype=np.float64)) < 2**62:
            key = ns_c[rows]
            key = key * sizes[1] + pod_c[rows]
            key = key * sizes[2] + con_c[rows]
            key = key * sizes[3] + met_c[rows]
            uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
        else:  # pragma: no cover - astronomically many label values in one chunk
            stacked = np.stack([ns_c[rows], pod_c[rows], con_c[rows], met_c[rows]], axis=1)
            uniq, first, inv = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        node_c, node_u = (
            _codes(frame["node"]) if "node" in frame.columns else (None, [])
        )
        sid_of = np.empty(len(uniq), dtype=np.int64)
        for u, r0 in enumerate(first.tolist()):
            r = int(rows[r0])
            name = (ns_u[ns_c[r]], pod_u[pod_c[r]], con_u[con_c[r]], met_u[met_c[r]])
            s = st.series_slot(name)
            sid_of[u] = s
            if node_c is not None and node_c[r] >= 0:
                node = node_u[node_c[r]]
                if node:
                    st.pod_node[int(st.s_pod[s])] = node
        return sid_of[inv.reshape(-1)]

    def _store(self, sid: np.ndarray, t: np.ndarray, val: np.ndarray,
               rep: IngestReport) -> None:
        """Writes the rows ``(series, time, raw value)`` into their bins."""
        st = self.store
        v = val * st.s_scale[sid]
        kind = st.s_kind[sid]
        counter = kind != GAUGE
        neg = v < 0
        bad_neg_counter = neg & counter
        bad_neg_known = neg & ~counter & (st.s_target[sid] != T_EXTRA)
        rep.add("negative_counter", int(bad_neg_counter.sum()))
        rep.add("negative_value", int(bad_neg_known.sum()))
        keep = ~(bad_neg_counter | bad_neg_known)
        sid, t, v = sid[keep], t[keep], v[keep]
        if sid.size == 0:
            return
        b = np.ceil((t - self.origin_s) / self.step_s).astype(np.int64)

        # too old: behind the newest bin of the series by more than the ring holds
        order = np.lexsort((t, b, sid))
        sid, t, v, b = sid[order], t[order], v[order], b[order]
        s_start = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        chunk_newest_b = np.maximum.reduceat(b, s_start)
        chunk_newest_t = np.maximum.reduceat(t, s_start)
        us = sid[s_start]
        newest_b = np.maximum(st.s_newest_b[us], chunk_newest_b)
        seg = np.repeat(np.arange(us.size), np.diff(np.r_[s_start, sid.size]))
        fresh = b > newest_b[seg] - (st.ring - self.lead)
        rep.add("too_old", int((~fresh).sum()))
        late = t < st.s_newest_t[sid]
        dup_in_chunk = np.r_[False, (sid[1:] == sid[:-1]) & (t[1:] == t[:-1])]
        sid, t, v, b = sid[fresh], t[fresh], v[fresh], b[fresh]
        late, dup_in_chunk = late[fresh], dup_in_chunk[fresh]
        st.s_newest_b[us] = newest_b
        st.s_newest_t[us] = np.maximum(st.s_newest_t[us], chunk_newest_t)
        if sid.size == 0:
            return

        # one group per (series, bin): the newest sample and the largest value
        g_start = np.flatnonzero(np.r_[True, (sid[1:] != sid[:-1]) | (b[1:] != b[:-1])])
        g_last = np.r_[g_start[1:], sid.size] - 1
        g_sid, g_b = sid[g_start], b[g_start]
        g_t, g_v = t[g_last], v[g_last]
        g_max = np.maximum.reduceat(v, g_start)
        slot = g_b % st.ring
        cur = st.bid[g_sid, slot]
        newer = cur < g_b
        same = cur == g_b
        older = cur > g_b  # cannot happen after the too_old filter; kept for safety
        cur_t = st.bt[g_sid, slot]
        dup_stored = same & (g_t == cur_t)
        # newer bin: overwrite the slot
        ns_, nb_ = g_sid[newer], slot[newer]
        st.bid[ns_, nb_] = g_b[newer]
        st.bt[ns_, nb_] = g_t[newer]
        st.bv[ns_, nb_] = g_v[newer]
        st.bm[ns_, nb_] = g_max[newer]
        # same bin: merge
        ss_, sb_ = g_sid[same], slot[same]
        replace = g_t[same] >= cur_t[same]
        st.bt[ss_[replace], sb_[replace]] = g_t[same][replace]
        st.bv[ss_[replace], sb_[replace]] = g_v[same][replace]
        st.bm[ss_, sb_] = np.fmax(st.bm[ss_, sb_], g_max[same])
        n_older = int(np.diff(np.r_[g_start, sid.size])[older].sum())
        rep.add("too_old", n_older)
        rep.accepted = int(sid.size) - n_older
        dup = dup_in_chunk.copy()
        dup[g_last[dup_stored]] = True
        rep.duplicates = int(dup.sum())
        rep.late = int((late & ~dup).sum())

        # pod first/last seen
        pods = st.s_pod[sid]
        np.minimum.at(st.p_first, pods, t)
        np.maximum.at(st.p_last, pods, t)
        st.clock = max(st.clock, float(t.max()))
        st.forget_vanished(st.clock, self.pod_ttl_s)


def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 = missing) and the string of each code."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy().astype(np.int64)
        cats = [str(c) for c in col.cat.categories]
        return codes, cats
    codes_, uniq = pd.factorize(col, use_na_sentinel=True)
    return codes_.astype(np.int64), [str(u) for u in uniq]


def _as_float(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_float_dtype(col.dtype) or pd.api.types.is_integer_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
