"""The window assembler: the series store's bins out as per-pod windows on a regular grid.

A window ends at the last bin boundary ``<= at`` and uses only samples with timestamps at or
before it (causal). Assembling goes in stages, each a method of :class:`WindowAssembler`:

1. :meth:`~WindowAssembler._series_grid` gathers the window's bins of every series of the
   candidate pods (plus ``lead`` bins before it for rates and forward fill) and turns them
   into grid values (:func:`series_to_grid`: gauges as is, counters as rates or increments,
   gaps up to ``gap_bins`` forward-filled);
2. :meth:`~WindowAssembler._live` leaves out pods without data in the window or silent for
   ``pod_ttl_s`` before its end;
3. :meth:`~WindowAssembler._groups` sums the containers of each pod per target (a pod-level
   series with an empty ``container`` counts only where the pod has no named one) and takes
   each group's newest value (limits are read as of the newest sample); in a pod of several
   containers, a restart starts a new memory incarnation only where its container held a
   real part of the pod's working set, and a container's last-terminated-reason flag counts
   only while it is the latest to have started one (:meth:`~WindowAssembler._align_restarts`);
   and where one container's own memory limit binds (it grows towards it),
   :meth:`~WindowAssembler._binding` says which, so the pod's memory limit is the one that
   will OOM-kill it;
4. the channels, their limits (from the limit table), the extra (custom) metrics, the
   baselines and features are laid out in a :class:`~detector.windows.batch.WindowBatch`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector import channels as chan
from detector.windows.batch import PodKey, WindowBatch
from detector.windows.features import (
    CHANNELS,
    FEATURE_NAMES,
    extract_features,
    robust_baseline,
)
from detector.windows.series import (
    GAUGE,
    INCREASE,
    LIMIT_TARGETS,
    N_TARGETS,
    RATE,
    T_EXTRA,
    SeriesStore,
)
from detector.windows.stats import theil_sen_block_minima

MEMORY_RESTART_SHARE = 0.2
"""In a pod of several containers, a container's restart starts a new memory incarnation of the
pod (the memory detectors judge only what follows it) only where the container held at least
this share of the pod's working set over :data:`MEMORY_RESTART_LOOKBACK_S` before it."""

MEMORY_RESTART_LOOKBACK_S = 600.0
"""How far before a restart the restarting container's share is read, seconds (longer than a
crash loop's back-off, 5 min at most, during which the dead container has no working set)."""


BINDING_SPAN_S = 1800.0
"""In a pod of several containers, each container's own growth is read over this last part of
the window (the Theil-Sen slope of its :data:`BINDING_BLOCK_S` block minima, the floor under
a GC sawtooth) to tell which container's own limit binds (:meth:`WindowAssembler._binding`)."""

BINDING_BLOCK_S = 300.0

BINDING_MIN_BLOCKS = 6
"""A container incarnation younger than twice :data:`BINDING_SPAN_S` (restarted, or started,
inside it) is read over the recent half of its life (at least its last three samples), in
blocks of a sixth of that (at most :data:`BINDING_BLOCK_S`): a crash-looping main container
killed every 6 min beside a sidecar never had three 5-min blocks of one life, so the pod's
summed limit (its headroom the sidecar's too) was projected until the kill; the recent half
leaves out a warm-up's first rise."""


MEMORY_LIMIT_CHANNELS: tuple[int, ...] = tuple(
    i for i, c in enumerate(chan.CHANNEL_TABLE) if c.limit == "memory")
"""The channels bounded by the memory limit (working set, RSS, page cache)."""

UNLIMITED_BYTES = float(2**60)
"""A memory limit at or above this is no limit (cgroup v1 writes "unlimited" as ~2^63)."""


def _prior_peak(x: np.ndarray, k: int) -> np.ndarray:
    """(m, L): the largest finite value of each row of ``x`` (m, L) over the ``k`` points
    before each point (NaN where there is none); a sliding maximum by doubling widths."""
    m, n = x.shape
    run = np.concatenate([np.full((m, k), -np.inf), np.where(np.isnan(x), -np.inf, x)], axis=1)
    w = 1  # run[:, j]: the largest of the w points from j of the padded row
    while 2 * w <= k:
        run = np.maximum(run[:, :-w], run[:, w:])
        w *= 2
    peak = np.maximum(run[:, :n], run[:, k - w: k - w + n])
    return np.where(peak == -np.inf, np.nan, peak)


def _group_reduce(ufunc: np.ufunc, x: np.ndarray, group: np.ndarray, n: int,
                  fill: Any) -> np.ndarray:
    """(n, L): ``ufunc`` reduced over the rows of ``x`` (m, L) of each group ``group`` (m,)
    in row order, ``fill`` where a group has no row (ufunc.at without its cost)."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    out = np.full((n, x.shape[1]), fill, dtype=x.dtype)
    if g.size:
        out[g[starts]] = ufunc.reduceat(x[order], starts, axis=0)
    return out


@dataclass(frozen=True)
class Geometry:
    """The engine's grid and timing, in seconds unless named otherwise (see WindowEngine)."""

    n_bins: int  # L: grid points of a window
    step_s: float
    origin_s: float
    lead: int  # bins gathered before the window (rates, forward fill)
    gap_bins: int  # gaps up to this many bins are forward-filled
    stale_after_s: float
    min_history_s: float
    baseline_exclude_s: float
    min_baseline_s: float
    pod_ttl_s: float

    @property
    def grid(self) -> np.ndarray:
        return np.arange(-(self.n_bins - 1), 1, dtype=np.float64) * self.step_s


@dataclass
class _Series:
    """The window of each selected series: slot, pod position, grid values, data mask."""

    sel: np.ndarray  # (S,) series slots
    p_of: np.ndarray  # (S,) position of the series' pod among the candidates
    vals: np.ndarray  # (S, L) grid values
    has_data: np.ndarray  # (S, L) bins holding a sample
    idx_last: np.ndarray  # (S,) newest bin with data, -1 for none

    def take(self, m: np.ndarray) -> _Series:
        return _Series(self.sel[m], self.p_of[m], self.vals[m], self.has_data[m],
                       self.idx_last[m])


@dataclass
class _Binding:
    """Pods where one container's own memory limit binds (:meth:`WindowAssembler._binding`)."""

    pod: np.ndarray  # (b,) pod positions
    container: np.ndarray  # (b,) the binding container's ordinal in its pod
    limit: np.ndarray  # (b,) its own memory limit, bytes
    own_last: np.ndarray  # (b, C) its own newest value of each channel (NaN: none)
    own_vals: np.ndarray  # (b, M, L) its own series of each of MEMORY_LIMIT_CHANNELS


@dataclass
class _Groups:
    """One group per (pod, target) or (pod, extra metric): containers summed."""

    pod: np.ndarray  # (g,) pod position
    target: np.ndarray  # (g,) channel index, limit target or T_EXTRA
    extra: np.ndarray  # (g,) extra metric index (-1 for none)
    values: np.ndarray  # (g, L) sum over containers, NaN where none has data
    last: np.ndarray  # (g,) sum of the containers' newest values
    zero: np.ndarray  # (g,) containers whose newest value is <= 0
    memory_restarts: dict[int, np.ndarray]  # pod -> (L,) restarts of memory incarnations
    binding: _Binding | None = None  # pods where one container's own memory limit binds

    def others_use(self, n: int, ci: int) -> np.ndarray:
        """``(b,)``: in each pod where a container binds (:attr:`binding`), the newest use of
        channel ``ci`` by its other containers (the pod's newest sum minus the binding
        container's own)."""
        assert self.binding is not None
        return self.per_pod(n, ci, self.last)[self.binding.pod] - self.binding.own_last[:, ci]

    def per_pod(self, n: int, tgt: int, arr: np.ndarray,
                bad: np.ndarray | None = None) -> np.ndarray:
        """``(n,)``: ``arr`` of each pod's ``tgt`` group (NaN where it has none, or ``bad``)."""
        out = np.full(n, np.nan)
        m = self.target == tgt
        a = arr[m]
        if bad is not None:
            a = np.where(bad[m], np.nan, a)
        out[self.pod[m]] = a
        return out


class WindowAssembler:
    """Reads ``store`` into :class:`WindowBatch` es on the grid of ``geometry``."""

    def __init__(self, store: SeriesStore, geometry: Geometry) -> None:
        self.store = store
        self.geo = geometry
        self.grid = geometry.grid

    def windows(self, at: float | None = None,
                pods: Iterable[PodKey] | None = None) -> WindowBatch:
        """The windows of all held pods (or of ``pods``) ending at the last bin boundary <= at
        (default: the store's clock); see :meth:`detector.windows.WindowEngine.windows`."""
        st, geo = self.store, self.geo
        L, C = geo.n_bins, len(CHANNELS)
        if at is None:
            at = st.clock
        if at is None or not np.isfinite(at):
            return self.empty_batch()
        B = math.floor((float(at) - geo.origin_s) / geo.step_s)
        t_end = geo.origin_s + B * geo.step_s
        if pods is None:
            cand = sorted(st.pod_index.values())
        else:
            cand = sorted({st.pod_index[k] for k in pods if k in st.pod_index})
        if not cand:
            return self.empty_batch()
        cand_arr = np.asarray(cand, dtype=np.int64)
        cand_arr = cand_arr[st.p_first[cand_arr] <= t_end]
        if cand_arr.size == 0:
            return self.empty_batch()

        series = self._series_grid(B, cand_arr)
        live = self._live(series, cand_arr.size)
        if live is None:
            return self.empty_batch()
        series, keep_pod, last_bin = live
        cand_arr, last_bin = cand_arr[keep_pod], last_bin[keep_pod]
        n = cand_arr.size
        g = self._groups(series, n)

        values = np.full((n, C, L), np.nan, dtype=np.float32)
        is_ch = g.target < C
        values[g.pod[is_ch], g.target[is_ch]] = g.values[is_ch]
        if g.binding is not None:
            self._bind_values(g, values)
        limits = self._limits(g, n)
        memory_restarts = None
        if g.memory_restarts:  # pods of several restarting containers
            memory_restarts = values[:, CHANNELS.index(chan.RESTART_CHANNEL)].copy()
            for p, row in g.memory_restarts.items():
                memory_restarts[p] = np.where(np.isfinite(memory_restarts[p]), row, np.nan)
        memory_container = memory_container_limit = None
        if g.binding is not None:
            memory_container = np.full(n, "", dtype=object)
            memory_container_limit = np.full(n, np.nan)
            names = [{o: c for c, o in st.pod_containers[int(cand_arr[p])].items()}
                     for p in g.binding.pod.tolist()]
            memory_container[g.binding.pod] = [
                nm.get(int(o), "") for nm, o in zip(names, g.binding.container.tolist(),
                                                    strict=True)]
            memory_container_limit[g.binding.pod] = g.binding.limit
        extra: dict[str, np.ndarray] = {}
        is_ex = g.target == T_EXTRA
        for e in np.unique(g.extra[is_ex]).tolist():
            m = is_ex & (g.extra == e)
            arr = np.full((n, L), np.nan, dtype=np.float32)
            arr[g.pod[m]] = g.values[m]
            extra[st.extra_names[e]] = arr

        baseline = robust_baseline(values, geo.step_s, geo.baseline_exclude_s,
                                   geo.min_baseline_s)
        features = extract_features(values, limits, baseline, geo.step_s)
        newest_age = (L - 1 - last_bin) * geo.step_s
        first = st.p_first[cand_arr]
        stale = (newest_age > geo.stale_after_s) | (first > t_end - geo.min_history_s)
        keys = [st.pod_keys[p] for p in cand_arr.tolist()]
        return WindowBatch(
            keys=[k for k in keys if k is not None],
            nodes=[st.pod_node[p] for p in cand_arr.tolist()],
            ts=np.full(n, t_end, dtype=np.float64),
            grid=self.grid.copy(),
            channels=CHANNELS,
            values=values,
            limits=limits,
            baseline=baseline,
            features=features,
            feature_names=FEATURE_NAMES,
            stale=stale,
            extra=extra,
            memory_restarts=memory_restarts,
            memory_container=memory_container,
            memory_container_limit=memory_container_limit,
        )

    def _series_grid(self, B: int, cand_arr: np.ndarray) -> _Series:
        """The grid values of every live series of the candidate pods, window ending at bin B."""
        st, geo = self.store, self.geo
        L = geo.n_bins
        pod_pos = np.full(len(st.pod_keys), -1, dtype=np.int64)
        pod_pos[cand_arr] = np.arange(cand_arr.size)
        n_cap = st.capacity
        s_pod = st.s_pod[:n_cap]
        sel = np.flatnonzero(st.s_alive & (s_pod >= 0))
        sel = sel[pod_pos[s_pod[sel]] >= 0]

        G = L + geo.lead
        bins = np.arange(B - G + 1, B + 1, dtype=np.int64)
        ring = st.ring
        s0 = int(bins[0] % ring)

        def gather(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
            sub = arr[rows]  # the slots of the window are contiguous modulo the ring
            if s0 + G <= ring:
                return sub[:, s0 : s0 + G]
            return np.concatenate([sub[:, s0:], sub[:, : s0 + G - ring]], axis=1)

        kind = st.s_kind[sel]
        valid = gather(st.bid, sel) == bins[None, :]
        bv = np.where(valid, gather(st.bv, sel), np.nan)
        c_rows = np.flatnonzero(kind != GAUGE)  # times and maxima matter for counters only
        bt = np.full_like(bv, np.nan)
        bm = np.full_like(bv, np.nan)
        if c_rows.size:
            cv = valid[c_rows]
            bt[c_rows] = np.where(cv, gather(st.bt, sel[c_rows]), np.nan)
            bm[c_rows] = np.where(cv, gather(st.bm, sel[c_rows]), np.nan)
        vals = series_to_grid(bt, bv, bm, valid, kind, geo.gap_bins)[:, -L:]
        has_data = valid[:, -L:]
        idx_last = np.where(has_data, np.arange(L)[None, :], -1).max(axis=1)
        return _Series(sel, pod_pos[s_pod[sel]], vals, has_data, idx_last)

    def _live(self, series: _Series, n_cand: int
              ) -> tuple[_Series, np.ndarray, np.ndarray] | None:
        """Series of the pods with data in the window, not silent for ``pod_ttl_s`` (their
        pod positions renumbered), the kept-pod mask and each candidate's newest data bin;
        None when no pod is left."""
        L = self.geo.n_bins
        last_bin = np.full(n_cand, -1, dtype=np.int64)
        np.maximum.at(last_bin, series.p_of, series.idx_last)
        age = (L - 1 - last_bin) * self.geo.step_s
        keep_pod = (last_bin >= 0) & (age <= self.geo.pod_ttl_s)
        if not keep_pod.any():
            return None
        new_pos = np.cumsum(keep_pod) - 1
        kept = series.take(keep_pod[series.p_of])
        kept.p_of = new_pos[kept.p_of]
        return kept, keep_pod, last_bin

    def _groups(self, series: _Series, n: int) -> _Groups:
        """The containers of each pod summed per target (pod-level series only where the pod
        has no named one) and each group's newest value."""
        st = self.store
        target = st.s_target[series.sel]
        agg = st.s_agg[series.sel]
        # a pod-level ("" container) series only counts where the pod has no named one
        gid = series.p_of * N_TARGETS + target
        extra_id = st.s_extra[series.sel]
        n_ex = max(1, len(st.extra_names))
        gid = np.where(target == T_EXTRA, n * N_TARGETS + series.p_of * n_ex + extra_id, gid)
        named = np.zeros(gid.max() + 1 if gid.size else 1, dtype=bool)
        named[gid[~agg]] = True
        use = ~agg | ~named[gid]
        p_of, target, gid, extra_id = series.p_of[use], target[use], gid[use], extra_id[use]
        series_vals, idx_last = series.vals[use], series.idx_last[use]
        series_vals, memory = self._align_restarts(series.sel[use], p_of, target, series_vals)

        # sum containers: sort by group and reduce
        order = np.argsort(gid, kind="stable")
        gid_s = gid[order]
        starts = np.flatnonzero(np.r_[True, gid_s[1:] != gid_s[:-1]])
        vals_s = series_vals[order]
        fin = np.isfinite(vals_s)
        sums = np.add.reduceat(np.where(fin, vals_s, 0.0), starts, axis=0)
        cnts = np.add.reduceat(fin.astype(np.int32), starts, axis=0)
        # the last valid value of each series (limits are taken as of the newest sample)
        last_val = np.where(
            idx_last >= 0,
            series_vals[np.arange(series_vals.shape[0]), np.maximum(idx_last, 0)],
            np.nan,
        )
        lv_s = last_val[order]
        lv_fin = np.isfinite(lv_s)
        lv_sum = np.add.reduceat(np.where(lv_fin, lv_s, 0.0), starts)
        lv_cnt = np.add.reduceat(lv_fin.astype(np.int32), starts)
        lv_zero = np.add.reduceat((lv_fin & (lv_s <= 0)).astype(np.int32), starts)
        binding = self._binding(series.sel[use], p_of, target, series_vals, last_val, n)
        return _Groups(
            pod=p_of[order][starts],
            target=target[order][starts],
            extra=extra_id[order][starts],
            values=np.where(cnts > 0, sums, np.nan),
            last=np.where(lv_cnt > 0, lv_sum, np.nan),
            zero=lv_zero,
            memory_restarts=memory,
            binding=binding,
        )

    def _binding(self, sel: np.ndarray, p_of: np.ndarray, target: np.ndarray,
                 vals: np.ndarray, last: np.ndarray, n: int) -> _Binding | None:
        """In pods of several containers: the container whose own memory limit binds.

        The kernel OOM-kills a container at its *own* limit, not at the pod's sum: a small
        sidecar leaking under 160 MiB beside a 512 MiB main container is killed with the
        pod sum's headroom still large. Per container, the floor's growth over the last
        :data:`BINDING_SPAN_S` (Theil-Sen slope of :data:`BINDING_BLOCK_S` block minima)
        over its own headroom (its limit - its newest working set) ranks the containers;
        the one using its headroom fastest binds, if it grows by at least the working set's
        scale floor over the span and has a limit (a container's first known limit metric;
        0 or >= :data:`UNLIMITED_BYTES` is none). No container binds where none grows so
        (the pod's summed limit stays, as before), or where a container without a limit
        grows faster (its growth is bounded by no known limit). ``last`` (S,) is each
        series' newest value, the same the groups sum."""
        st = self.store
        ws_t = CHANNELS.index("mem_working_set")
        named = ~st.s_agg[sel]
        ws_rows = np.flatnonzero(named & (target == ws_t))
        if ws_rows.size < 2:
            return None
        n_ws = np.bincount(p_of[ws_rows], minlength=n)
        ws_rows = ws_rows[n_ws[p_of[ws_rows]] >= 2]
        if ws_rows.size == 0:
            return None
        cont = st.s_container[sel]
        key = p_of * (int(cont.max()) + 1) + np.maximum(cont, 0)
        ws_key = key[ws_rows]

        def match(tgt: int) -> np.ndarray:
            """Each working-set row's container's row of target ``tgt`` (-1: none)."""
            rows = np.flatnonzero(named & (target == tgt))
            out = np.full(ws_rows.size, -1)
            if rows.size == 0:
                return out
            order = np.argsort(key[rows], kind="stable")
            keys = key[rows][order]
            at = np.minimum(np.searchsorted(keys, ws_key), keys.size - 1)
            hit = keys[at] == ws_key
            out[hit] = rows[order[at[hit]]]
            return out

        def own(tgt: int) -> np.ndarray:
            """Each working-set row's container's newest value of target ``tgt``."""
            at = match(tgt)
            return np.where(at >= 0, last[np.maximum(at, 0)], np.nan)

        lim = np.full(ws_rows.size, np.nan)
        for j in range(len(chan.LIMITS["memory"].metrics)):  # the first known metric
            got = own(LIMIT_TARGETS[("memory", j)])
            lim = np.where(np.isfinite(lim), lim, got)
        limited = np.isfinite(lim) & (lim > 0) & (lim < UNLIMITED_BYTES)
        rate = self._binding_rates(vals, ws_rows, match(CHANNELS.index(chan.RESTART_CHANNEL)))
        grows = np.nan_to_num(rate) * BINDING_SPAN_S >= chan.CHANNEL_TABLE[ws_t].floor
        room = np.maximum(lim - last[ws_rows], 2.0**20)
        urgency = np.where(limited & grows, np.nan_to_num(rate) / room, -np.inf)
        # per pod: its most urgent limited container, and its fastest unlimited grower
        order = np.lexsort((-urgency, p_of[ws_rows]))
        pods = p_of[ws_rows][order]
        first = np.r_[True, pods[1:] != pods[:-1]]
        best = order[first]
        free_rate = np.where(~limited & grows, np.nan_to_num(rate), -np.inf)
        fastest_free = np.full(n, -np.inf)
        np.maximum.at(fastest_free, p_of[ws_rows], free_rate)
        best = best[(urgency[best] > -np.inf)
                    & (fastest_free[p_of[ws_rows][best]] <= np.nan_to_num(rate[best]))]
        if best.size == 0:
            return None
        own_last = np.full((best.size, len(CHANNELS)), np.nan)
        own_vals = np.full((best.size, len(MEMORY_LIMIT_CHANNELS), vals.shape[-1]), np.nan)
        for m, ci in enumerate(MEMORY_LIMIT_CHANNELS):
            rows = ws_rows[best] if ci == ws_t else match(ci)[best]
            has = rows >= 0
            own_last[has, ci] = last[rows[has]]
            own_vals[has, m] = vals[rows[has]]
        return _Binding(pod=p_of[ws_rows[best]], container=cont[ws_rows[best]],
                        limit=lim[best], own_last=own_last, own_vals=own_vals)

    @staticmethod
    def _bind_values(g: _Groups, values: np.ndarray) -> None:
        """In the pods where one container's own limit binds, its memory channels are that
        container's own series plus the other containers' newest use (a constant): the
        container is OOM-killed when *its* usage reaches *its* limit, whatever the others do,
        so its growth - not the sum's, which a sidecar's warm-up or restarts bend - is what
        is projected against the effective limit (:meth:`_limits`). At the newest bin the
        channel is the pod's sum, as before."""
        b = g.binding
        assert b is not None
        n = values.shape[0]
        for m, ci in enumerate(MEMORY_LIMIT_CHANNELS):
            others = g.others_use(n, ci)
            ok = np.isfinite(others) & np.isfinite(b.own_vals[:, m]).any(axis=-1)
            values[b.pod[ok], ci] = b.own_vals[ok, m] + others[ok, None]

    def _binding_rates(self, vals: np.ndarray, ws_rows: np.ndarray,
                       restart_row: np.ndarray) -> np.ndarray:
        """(W,) each working-set row's growth (bytes/s: Theil-Sen slope of block minima, the
        floor under a GC sawtooth) over the last :data:`BINDING_SPAN_S` of its container's
        current incarnation (after its own last restart, ``restart_row`` its restart
        series, -1 none), or the recent half of a younger one (see
        :data:`BINDING_MIN_BLOCKS`). NaN with fewer than three blocks of data."""
        step = self.geo.step_s
        k = max(1, math.ceil(BINDING_SPAN_S / step))
        k2 = min(2 * k, vals.shape[-1])
        bins = np.arange(k2)[None, :]
        v = vals[ws_rows, -k2:].astype(np.float64)
        inc = np.zeros_like(v)
        has = restart_row >= 0
        inc[has] = np.nan_to_num(vals[restart_row[has], -k2:])
        restarted = inc > 0
        since = np.where(restarted.any(axis=1),
                         k2 - 1 - np.argmax(restarted[:, ::-1], axis=1), 0)
        live = np.isfinite(v) & (bins >= since[:, None])
        age = np.where(live.any(axis=1), k2 - np.argmax(live, axis=1), 0)  # bins
        judged = np.minimum(k, np.maximum(age // 2, np.minimum(age, 3)))
        v = np.where((bins >= (k2 - judged)[:, None]) & live, v, np.nan)
        kb = np.clip(judged // BINDING_MIN_BLOCKS, 1, max(1, round(BINDING_BLOCK_S / step)))
        rate = np.full(ws_rows.size, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
            for b in np.unique(kb):
                rows = np.flatnonzero(kb == b)
                rate[rows] = theil_sen_block_minima(v[rows], step, float(b) * step)
        return rate

    def _align_restarts(self, sel: np.ndarray, p_of: np.ndarray, target: np.ndarray,
                        vals: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Per container, in pods of several restarting containers: which restarts start a
        new memory incarnation, and whose last-terminated reason the pod's flag is.

        * A container's restart starts a memory incarnation of the pod only where the
          container held at least :data:`MEMORY_RESTART_SHARE` of the pod's working set over
          the :data:`MEMORY_RESTART_LOOKBACK_S` before it (or either is unknown, except in
          the window's first bins, whose lookback lies before the window): a sidecar
          restarting every few minutes would otherwise cut the main container's history each
          time and hide its leak. Returned per pod position: that pod's restart increments
          of the memory incarnations (pods not in it: the ``restarts`` channel).
        * ``vals`` with each container's flag kept only where it is the pod's latest to
          start a memory incarnation (or none has in the window): the pod's flag, summed over
          containers next, is then the reason of that restart, not a sidecar's old OOM kill
          marking the main container's later restart for another reason (or the other way
          round). Where that container exports no reason the flag is unknown (NaN). A flag
          whose container has no restart series is left as it is."""
        rst, oom = CHANNELS.index(chan.RESTART_CHANNEL), CHANNELS.index(chan.OOM_KILLED_CHANNEL)
        ws_t = CHANNELS.index("mem_working_set")
        memory: dict[int, np.ndarray] = {}
        if p_of.size == 0:
            return vals, memory
        n_rst = np.bincount(p_of[target == rst], minlength=int(p_of.max()) + 1)
        multi = n_rst[p_of] >= 2  # rows of pods with several restart series
        r_rows = np.flatnonzero(multi & (target == rst))
        if r_rows.size == 0:
            return vals, memory
        L = vals.shape[-1]
        bins = np.arange(L)
        K = max(1, math.ceil(MEMORY_RESTART_LOOKBACK_S / self.geo.step_s))
        # rows are matched by (pod, container ordinal); sorted restart keys, first row kept
        cont = self.store.s_container[sel]
        key = p_of * (int(cont.max()) + 2) + (cont + 1)
        pods, j_of = np.unique(p_of[r_rows], return_inverse=True)  # the pods, row -> pod
        j_pos = np.full(n_rst.size, -1)
        j_pos[pods] = np.arange(pods.size)

        inc = np.nan_to_num(vals[r_rows])  # (R, L) increments per restarting container
        w_rows = np.flatnonzero(multi & (target == ws_t))
        if w_rows.size:
            w_vals = vals[w_rows]
            fin = np.isfinite(w_vals)
            w_j = j_pos[p_of[w_rows]]
            pod_sum = _group_reduce(np.add, np.where(fin, w_vals, 0.0), w_j, pods.size, 0)
            pod_cnt = _group_reduce(np.add, fin.astype(np.int64), w_j, pods.size, 0)
            pod_peak = _prior_peak(np.where(pod_cnt > 0, pod_sum, np.nan), K)[j_of]  # (R, L)
            # each restart row's own working set (the last such row of its container)
            order = np.argsort(key[w_rows], kind="stable")
            w_keys = key[w_rows][order]
            at = np.searchsorted(w_keys, key[r_rows], side="right") - 1
            found = (at >= 0) & (w_keys[np.maximum(at, 0)] == key[r_rows])
            own = np.full((r_rows.size, L), np.nan)
            own[found] = w_vals[order[at[found]]]
            own_peak = _prior_peak(own, K)
            known = np.isfinite(own_peak) & np.isfinite(pod_peak)
            # unknown counts (a container without a working set series), but not at the
            # window's first bins, whose lookback lies before the window: their restarts
            # were judged, with it, while they were recent
            significant = np.where(known, own_peak >= MEMORY_RESTART_SHARE * pod_peak,
                                   bins[None, :] >= K)
            has_ws = np.zeros(pods.size, dtype=bool)
            has_ws[w_j] = True  # a pod without any working set: every restart counts
            inc = np.where(significant | ~has_ws[j_of][:, None], inc, 0.0)
        mem = _group_reduce(np.add, inc, j_of, pods.size, 0)
        memory = {int(p): mem[j] for j, p in enumerate(pods.tolist())}

        # the newest bin at or before each bin where each container started a memory
        # incarnation (-1: none), and the pod's newest over its containers
        last = np.maximum.accumulate(np.where(inc > 0, bins[None, :], -1), axis=-1)
        latest = _group_reduce(np.maximum, last, j_of, pods.size, -1)
        o_rows = np.flatnonzero(multi & (target == oom))
        if o_rows.size == 0:
            return vals, memory
        order = np.argsort(key[r_rows], kind="stable")
        r_keys = key[r_rows][order]
        at = np.searchsorted(r_keys, key[o_rows], side="left")
        found = (at < r_keys.size) & (r_keys[np.minimum(at, r_keys.size - 1)] == key[o_rows])
        if not found.any():  # a flag whose container has no restart series is left as it is
            return vals, memory
        o_rows, ri = o_rows[found], order[at[found]]
        top = latest[j_of[ri]]
        other = (top >= 0) & (last[ri] < top)
        if not other.any():
            return vals, memory
        out = vals.copy()
        out[o_rows] = np.where(other, np.nan, vals[o_rows])
        return out, memory

    def _limits(self, g: _Groups, n: int) -> np.ndarray:
        """``(n, C)`` float32: each channel's limit from the limit table, NaN where unknown."""
        limits = np.full((n, len(CHANNELS)), np.nan, dtype=np.float32)
        for lim in chan.LIMIT_TABLE:
            value = np.full(n, np.nan)
            for j, m in enumerate(lim.metrics):  # the first known metric, then fallbacks
                tgt = LIMIT_TARGETS[(lim.name, j)]
                got = g.per_pod(n, tgt, g.last, g.zero > 0 if m.zero_unknown else None)
                value = got if j == 0 else np.where(np.isfinite(value), value, got)
            for ci, row in enumerate(chan.CHANNEL_TABLE):
                if row.limit != lim.name:
                    continue
                if lim.plus_used:  # the metric is the free part: limit = used + free
                    total = g.per_pod(n, ci, g.last) + value
                    limits[:, ci] = np.where(total > 0, total, np.nan)
                else:
                    limits[:, ci] = value
        b = g.binding
        if b is not None:  # the binding container's own limit, plus the others' newest use
            # (never above the pod's summed limit where that is known)
            for ci in MEMORY_LIMIT_CHANNELS:
                eff = g.others_use(n, ci) + b.limit
                summed = limits[b.pod, ci]
                eff = np.where(np.isfinite(summed) & (summed > 0), np.fmin(eff, summed), eff)
                ok = np.isfinite(eff)
                limits[b.pod[ok], ci] = eff[ok]
        return limits

    def empty_batch(self) -> WindowBatch:
        """A batch of zero windows with this grid, channels and features."""
        C, L = len(CHANNELS), self.geo.n_bins
        return WindowBatch(
            keys=[],
            nodes=[],
            ts=np.zeros(0),
            grid=self.grid.copy(),
            channels=CHANNELS,
            values=np.zeros((0, C, L), np.float32),
            limits=np.zeros((0, C), np.float32),
            baseline=np.zeros((0, C, 2), np.float32),
            features=np.zeros((0, len(FEATURE_NAMES)), np.float32),
            feature_names=FEATURE_NAMES,
            stale=np.zeros(0, bool),
            extra={},
        )


def _ffill_index(valid: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """For each column, the index of the last valid column at or before it and whether it is
    within ``max_gap`` columns."""
    G = valid.shape[1]
    idx = np.where(valid, np.arange(G)[None, :], -1)
    last = np.maximum.accumulate(idx, axis=1)
    ok = (last >= 0) & (np.arange(G)[None, :] - last <= max_gap)
    return last, ok


def series_to_grid(
    bt: np.ndarray, bv: np.ndarray, bm: np.ndarray, valid: np.ndarray, kind: np.ndarray,
    gap_bins: int,
) -> np.ndarray:
    """Per-series grid values: gauges as is, counters as rates/increments; then forward fill."""
    S, G = bv.shape
    out = bv.copy()
    counter = kind != GAUGE
    if counter.any():
        c = np.flatnonzero(counter)
        cv, cm, ct, cval = bv[c], bm[c], bt[c], valid[c]
        last, _ = _ffill_index(cval, G)
        prev = np.full_like(last, -1)
        prev[:, 1:] = last[:, :-1]
        has_prev = cval & (prev >= 0) & (np.arange(G)[None, :] - prev <= gap_bins + 1)
        pidx = np.maximum(prev, 0)
        rows = np.arange(c.size)[:, None]
        pv = cv[rows, pidx]
        pt = ct[rows, pidx]
        reset_inside = cm > cv  # the bin's maximum exceeds its newest value
        inc = np.where(
            reset_inside,
            np.maximum(cm - pv, 0.0) + cv,
            np.where(cv < pv, cv, cv - pv),
        )
        dt = ct - pt
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(kind[c][:, None] == RATE, inc / dt, inc)
        rate = np.where(has_prev & (dt > 0), rate, np.nan)
        out[c] = rate
    fin = np.isfinite(out)
    last, ok = _ffill_index(fin, gap_bins)
    filled = out[np.arange(S)[:, None], np.maximum(last, 0)]
    res = np.where(ok, filled, np.nan)
    # increments (restarts) are counts per step: never forward-filled
    inc_rows = kind == INCREASE
    if inc_rows.any():
        res[inc_rows] = out[inc_rows]
    return res
