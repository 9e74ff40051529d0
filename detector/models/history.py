"""Per-pod memory history beyond the window: the floors of past blocks of each memory channel.

Called by :mod:`detector.pipeline` once per evaluated batch. A window holds a few hours; a
load cycle can last a day. This keeps, per pod and memory channel, the *floor* (minimum) of
every completed block of ``block_s`` seconds over the last ``keep_s`` since the pod's last
OOM kill (a container restart for another reason - a liveness failure, an exit - keeps the
levels held before it: the load that drove them did not change; an OOM kill ends them: they
led to it), and answers two questions the leak decision needs:

* **has this pod been here before?** (:meth:`LevelHistory.prior_max`): a periodic load comes
  back to levels it has already held - its floors of earlier cycles reach the current one -
  while a leak keeps making new floors. A rise to a level already held is no leak.
* **is the pod's throughput at a level it already held?**
  (:meth:`LevelHistory.throughput_revisits`): a periodic or daily load swings its CPU, GPU
  utilisation and network far from the few hours a window's baseline holds, and comes back
  to levels of earlier cycles; a collapse before a crash goes where the pod has not been.
  The drift decision does not page a return.
* **was the last incarnation OOM-killed?** (:attr:`LevelHistory.oom_kills`): in a crash
  loop the next incarnation's growth is judged with that evidence. A restart counts as an
  OOM kill when kube-state-metrics' last terminated reason says so: the ``oom_killed``
  channel (:data:`detector.channels.OOM_KILLED_CHANNEL`, 1 for ``OOMKilled``, 0 for another
  reason), its newest value at or after the restart's bin in the window that shows the
  restart (kube-state-metrics updates the reason and the restart count from the same pod
  status). Only where that channel has no data there (not scraped, or an exporter without
  it: unknown, not "no") does the old rule decide: the working set was at least
  :data:`NEAR_LIMIT` of its limit at the last evaluation before the restart. That rule
  misses fast leaks (a 4 MiB/s leak is killed from ~60 % of its limit one 10 s step later),
  the reason does not. The flag is untrusted: a negative value is unknown, ``>= 0.5`` is
  OOMKilled (a sum over containers can exceed 1), and a flag without a restart counts
  nothing (a kill is a restart whose reason is OOMKilled). In a pod of several containers
  an incarnation starts only at the restart of a container that held a real part of the
  pod's working set (a small sidecar's restart starts none), and the window engine keeps
  each container's flag only while it is the latest to have started one
  (:meth:`detector.windows.assemble.WindowAssembler._align_restarts`), so one container's
  old OOM kill does not mark another's later restart for another reason.

Everything is vectorised over the batch; a pod's slot is freed by :meth:`forget`.
State is bounded: ``keep_s / block_s`` floats per pod and channel.
"""

from __future__ import annotations

import warnings

import numpy as np

from detector.channels import OOM_KILLED_CHANNEL
from detector.windows import (
    CHANNELS,
    MEMORY_CHANNELS,
    THROUGHPUT_CHANNELS,
    PodKey,
    WindowBatch,
    last_restart_index,
    nanmedian_last,
)

NEAR_LIMIT = 0.85
"""Without a last-terminated reason, a restart when the working set was at least this fraction
of its limit counts as an OOM kill (the last scrape before a kill lags the kill by up to one
scrape interval)."""


REVISIT_TOLERANCE = 0.01
"""A rise to within this fraction of the limit of a floor the pod already held, longer ago
than the data that shows the rise, is a return to a known level (a load cycle), not a leak."""


TRACK_PACE = 0.5
"""After one OOM kill, the new incarnation whose working set has grown since its first sample
by at least this fraction of the pace the killed life kept to its limit (that limit less the
new life's first value, over the killed life's length) tracks the killed life
(:meth:`LevelHistory.tracks_killed_life`)."""

TRACK_MIN_SAMPLES = 3
"""Samples of the new incarnation the tracking test needs (its first included)."""

TRACK_MIN_FRACTION = 0.02
"""... and the growth it needs at least, as a fraction of the limit (above scrape noise)."""

ENVELOPE_SPANS = (8, 16)
"""Blocks (of ``block_s``, 15 min) per span of the lower envelope a leak riding on a load cycle
is read from (:meth:`LevelHistory.envelope_leak`): 2 h and 4 h, so four spans take 8 h and
16 h of the history's 26 h."""

ENVELOPE_TOLERANCE = 0.01
"""Each span's envelope must rise by more than this fraction of the limit."""

ENVELOPE_STEADY = 0.6
"""The newest span's rise must be at least this fraction of the oldest one's."""

ENVELOPE_RSS_SHARE = 0.25
"""... and, where the RSS is exported, its envelope must rise by at least this share of the
working set's (as ``trend.PAGE_CACHE_RSS_SHARE``: growth on a flat RSS is page cache)."""

THROUGHPUT_TOLERANCE = 0.02
"""A throughput level within this fraction of the range held before (and of its top) still
counts as held."""


class LevelHistory:
    """Block floors of each pod's memory channels over ``keep_s`` (see module docstring)."""

    def __init__(self, *, block_s: float = 900.0, keep_s: float = 26 * 3600.0) -> None:
        self.block_s = float(block_s)
        self.n_blocks = max(4, round(keep_s / block_s))
        self._slot: dict[PodKey, int] = {}
        self._free: list[int] = []
        cap = 16
        nc = len(MEMORY_CHANNELS)
        self._floor = np.full((cap, nc, self.n_blocks), np.nan, dtype=np.float32)
        self._tp_idx = [CHANNELS.index(c) for c in THROUGHPUT_CHANNELS]
        ntp = len(self._tp_idx)
        # each completed block's lowest and highest throughput (CPU, GPU utilisation, network)
        self._tp_lo = np.full((cap, ntp, self.n_blocks), np.nan, dtype=np.float32)
        self._tp_hi = np.full((cap, ntp, self.n_blocks), np.nan, dtype=np.float32)
        self._bid = np.full((cap, self.n_blocks), -1, dtype=np.int64)
        self._inc_start = np.full(cap, -np.inf)  # ts of the current incarnation's start
        # ts from which block levels count: the last OOM kill's restart (a restart for another
        # reason keeps the levels held before it: the workload's load did not change)
        self._levels_since = np.full(cap, -np.inf)
        self._born = np.full(cap, -np.inf)  # the pod's first data (-inf: older than a window)
        self._last_frac = np.zeros(cap)  # working set / limit at the last evaluation
        self.oom_kills_ = np.zeros(cap, dtype=np.int64)
        self._prev_life = np.full(cap, np.nan)  # how long the last OOM-killed incarnation ran
        # the current incarnation's first working-set sample (ts; NaN until seen; -inf: before the
        # first window, unknown) and the
        # killed one's last value, which the window engine carries over the restart's gap
        self._life_start = np.full(cap, np.nan)
        self._carried = np.full(cap, np.nan)
        self._mem_idx = [CHANNELS.index(c) for c in MEMORY_CHANNELS]
        self._ws = MEMORY_CHANNELS.index("mem_working_set")
        self._rss = MEMORY_CHANNELS.index("mem_rss")
        self._oom = CHANNELS.index(OOM_KILLED_CHANNEL)

    # -- slots --------------------------------------------------------------------------
    def _slots(self, keys: list[PodKey]) -> np.ndarray:
        out = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):
            s = self._slot.get(k)
            if s is None:
                if self._free:
                    s = self._free.pop()
                else:
                    s = len(self._slot)
                    if s >= self._bid.shape[0]:
                        self._grow(2 * self._bid.shape[0])
                self._slot[k] = s
                self._reset(np.array([s]))
                self._inc_start[s] = self._levels_since[s] = -np.inf  # (a reused slot)
                self._born[s] = np.nan  # set by update() from the pod's first window
                self.oom_kills_[s] = 0
                self._prev_life[s] = np.nan
                self._life_start[s] = self._carried[s] = np.nan
                self._last_frac[s] = 0.0
            out[i] = s
        return out

    def _grow(self, cap: int) -> None:
        def grow(a: np.ndarray, fill: object) -> np.ndarray:
            new = np.full((cap, *a.shape[1:]), fill, dtype=a.dtype)
            new[: a.shape[0]] = a
            return new

        self._floor = grow(self._floor, np.nan)
        self._tp_lo = grow(self._tp_lo, np.nan)
        self._tp_hi = grow(self._tp_hi, np.nan)
        self._bid = grow(self._bid, -1)
        self._inc_start = grow(self._inc_start, -np.inf)
        self._levels_since = grow(self._levels_since, -np.inf)
        self._born = grow(self._born, -np.inf)
        self._last_frac = grow(self._last_frac, 0.0)
        self.oom_kills_ = grow(self.oom_kills_, 0)
        self._prev_life = grow(self._prev_life, np.nan)
        self._life_start = grow(self._life_start, np.nan)
        self._carried = grow(self._carried, np.nan)

    def _reset(self, slots: np.ndarray) -> None:
        self._floor[slots] = np.nan
        self._tp_lo[slots] = np.nan
        self._tp_hi[slots] = np.nan
        self._bid[slots] = -1

    def _first_level_block(self, slots: np.ndarray) -> np.ndarray:
        """(n,) id of the first block whose levels count (see ``_levels_since``; -1: all)."""
        lo = np.ceil(self._levels_since[slots] / self.block_s)
        return np.where(np.isfinite(lo), lo, -1).astype(np.int64)

    def forget(self, key: PodKey) -> None:
        s = self._slot.pop(key, None)
        if s is not None:
            self._free.append(s)

    # -- update and queries ---------------------------------------------------------------
    def update(self, batch: WindowBatch) -> np.ndarray:
        """Takes in each window's last completed block; returns the pods' slots (n,).

        A restart seen in a window starts a new incarnation (its history is dropped), and
        counts as an OOM kill when its last terminated reason says OOMKilled (without that
        series: when the working set was near its limit just before)."""
        n = len(batch)
        slots = self._slots(batch.keys)
        if n == 0:
            return slots
        step = batch.step_s
        L = batch.values.shape[-1]
        ws = batch.values[:, self._mem_idx[self._ws], :]  # a view, no copy
        # a pod first seen: its first data point in the window (-inf when the window is full:
        # older than the window, its age unknown)
        unborn = np.isnan(self._born[slots])
        if unborn.any():
            fin = np.isfinite(ws[unborn])
            first = np.argmax(fin, axis=-1)
            # no working set yet (an image pull: kube-state-metrics first): still unborn
            self._born[slots[unborn]] = np.where(
                fin.any(axis=-1), np.where(first > 0, batch.ts[unborn] + batch.grid[first],
                                           -np.inf), np.nan)
        # incarnations: a restart newer than the incarnation start we hold
        last_r = last_restart_index(batch.restarts_of_memory())
        r_ts = np.where(last_r >= 0, batch.ts + batch.grid[np.clip(last_r, 0, L - 1)], -np.inf)
        new_inc = r_ts > self._inc_start[slots]
        if new_inc.any():
            s_new = slots[new_inc]
            reason = oom_reason_since(batch.values[new_inc, self._oom, :], last_r[new_inc])
            killed = np.where(np.isnan(reason), self._last_frac[s_new] >= NEAR_LIMIT,
                              reason >= 0.5)
            self.oom_kills_[s_new[killed]] += 1
            life = r_ts[new_inc] - self._inc_start[s_new]
            # how long it ran by its own samples: the restart count rises at the kill or at
            # the restart after a back-off (a crash loop's grows to 5 min), no part of a life
            ran, carried = self._lives_end(batch, np.flatnonzero(new_inc), last_r[new_inc])
            ran = ran - self._life_start[s_new]
            life = np.where(np.isfinite(ran), ran, life)
            self._prev_life[s_new[killed]] = np.where(np.isfinite(life), life, np.nan)[killed]
            # an OOM kill ends the levels held (they led to it); another restart keeps them
            self._reset(s_new[killed])
            self._levels_since[s_new[killed]] = r_ts[new_inc][killed]
            self._inc_start[s_new] = r_ts[new_inc]
            self._life_start[s_new], self._carried[s_new] = np.nan, carried
        # the working set's fraction of its limit now (for the next restart)
        lim = batch.limits[:, CHANNELS.index("mem_working_set")].astype(np.float64)
        fin = np.isfinite(ws)
        last = np.where(fin.any(axis=1), L - 1 - np.argmax(fin[:, ::-1], axis=1), 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = ws[np.arange(n), last].astype(np.float64) / lim
        self._last_frac[slots] = np.where(np.isfinite(frac), frac, 0.0)
        self._see_life_start(batch, slots, ws)
        # the last completed block of each window
        k = int(np.ceil(self.block_s / step)) + 1
        t_abs = batch.ts[:, None] + batch.grid[None, L - k:]
        blk = np.floor((t_abs - 1e-6) / self.block_s).astype(np.int64)
        target = np.floor(batch.ts / self.block_s).astype(np.int64) - 1
        sel = (blk == target[:, None])[:, None, :]
        # only the tail the last block can lie in is gathered (the trend detector gathers
        # the whole memory series once per batch)
        part = np.where(sel, batch.values[:, self._mem_idx, L - k:], np.nan)
        tp = np.where(sel, batch.values[:, self._tp_idx, L - k:], np.nan)
        with _quiet():
            mins = np.nanmin(part, axis=-1)  # (n, 3)
            tp_lo, tp_hi = np.nanmin(tp, axis=-1), np.nanmax(tp, axis=-1)  # (n, 4)
        after_inc = target * self.block_s >= self._levels_since[slots]
        ok = after_inc & np.isfinite(mins).any(axis=-1)
        if ok.any():
            pos = target[ok] % self.n_blocks
            self._floor[slots[ok], :, pos] = mins[ok]
            self._tp_lo[slots[ok], :, pos] = tp_lo[ok]
            self._tp_hi[slots[ok], :, pos] = tp_hi[ok]
            self._bid[slots[ok], pos] = target[ok]
        return slots

    def throughput_revisits(self, batch: WindowBatch, slots: np.ndarray,
                            exclude_s: float = 3600.0) -> np.ndarray:
        """(n,) bool: every throughput channel of the window with data is now (median of
        its last 10 min) within the range of levels the pod held since its last OOM kill in
        its blocks older than ``exclude_s`` (the part of the window the drift features compare
        with),
        within :data:`THROUGHPUT_TOLERANCE`: a load cycle coming round again, not a drift.
        False without such history (a pod in its first cycle is judged as before)."""
        n = len(batch)
        if n == 0:
            return np.zeros(0, dtype=bool)
        bid = self._bid[slots]
        hi_b = np.floor((batch.ts - exclude_s) / self.block_s).astype(np.int64)
        lo_b = self._first_level_block(slots)
        valid = (bid >= 0) & (bid < hi_b[:, None]) & (bid >= lo_b[:, None])
        with _quiet():
            lo = np.nanmin(np.where(valid[:, None, :], self._tp_lo[slots], np.nan), axis=-1)
            hi = np.nanmax(np.where(valid[:, None, :], self._tp_hi[slots], np.nan), axis=-1)
            k = max(1, round(600.0 / batch.step_s))
            now = nanmedian_last(batch.values[:, self._tp_idx, -k:].astype(np.float64))
        tol = THROUGHPUT_TOLERANCE * np.fmax(hi - lo, 0.0) + THROUGHPUT_TOLERANCE * np.abs(hi)
        judged = np.isfinite(now)
        with np.errstate(invalid="ignore"):
            inside = (now >= lo - tol) & (now <= hi + tol)
        return judged.any(axis=1) & np.all(~judged | inside, axis=1)

    def prior_max(self, slots: np.ndarray, ts: np.ndarray, exclude_s: np.ndarray) -> np.ndarray:
        """(n, 3) highest block floor since the pod's last OOM kill older than ``exclude_s``
        before ``ts`` (NaN where there is none)."""
        if slots.size == 0:
            return np.zeros((0, len(MEMORY_CHANNELS)))
        bid = self._bid[slots]  # (n, NB)
        hi = np.floor((ts - exclude_s) / self.block_s).astype(np.int64)
        lo = self._first_level_block(slots)
        valid = (bid >= 0) & (bid < hi[:, None]) & (bid >= lo[:, None])
        fl = np.where(valid[:, None, :], self._floor[slots], np.nan)
        with _quiet():
            return np.nanmax(fl, axis=-1)

    def revisits(self, batch: WindowBatch, slots: np.ndarray, channel: np.ndarray,
                  view_s: np.ndarray | None, limit: np.ndarray) -> np.ndarray:
        """(n,) bool: the growing channel's floor now (its last 15 min) is a level this
        incarnation already held before the data that shows the rise (a load cycle coming
        round again). ``channel`` names the growing channel per window ('' for none)."""
        n = len(batch)
        out = np.zeros(n, dtype=bool)
        grows = np.flatnonzero(np.asarray(channel) != "")
        if grows.size == 0:
            return out
        view = (np.asarray(view_s, dtype=np.float64)[grows] if view_s is not None
                else np.full(grows.size, 3600.0))
        exclude = np.maximum(np.nan_to_num(view, nan=3600.0), 1800.0)
        prior = self.prior_max(slots[grows], batch.ts[grows], exclude)  # (g, 3)
        ch = np.array([MEMORY_CHANNELS.index(str(c)) for c in np.asarray(channel)[grows]])
        rows = np.arange(grows.size)
        prior_c = prior[rows, ch]
        tail = max(2, round(self.block_s / batch.step_s))
        # the growing channel's last points only: one (g, tail) gather; the floor "now" is
        # that of the last block_s, or of the recent half of the data that shows the rise
        # where that is shorter (a leak minutes old after a long flat stretch, seen by a short
        # view: its last 15 min, and the view's start, still hold the flat level)
        cur = batch.values[grows, np.asarray(self._mem_idx)[ch], -tail:].astype(np.float64)
        half = 0.5 * np.nan_to_num(view, nan=2 * self.block_s)
        own = np.clip(np.round(half / batch.step_s), 2, tail)
        cur = np.where(np.arange(tail)[None, :] >= tail - own[:, None], cur, np.nan)
        fin = np.isfinite(cur)
        floor_now = np.where(fin.any(axis=1), np.where(fin, cur, np.inf).min(axis=1), np.nan)
        lim = np.asarray(limit, dtype=np.float64)[grows]
        tol = np.where(np.isfinite(lim), REVISIT_TOLERANCE * lim, 0.0)
        with np.errstate(invalid="ignore"):
            out[grows] = np.isfinite(prior_c) & (floor_now <= prior_c + tol)
        return out

    def envelope_leak(self, batch: WindowBatch, slots: np.ndarray,
                      rows: np.ndarray | None = None) -> np.ndarray:
        """(n,) seconds to OOM of a leak riding on a load cycle, read from the working set's
        lower envelope (NaN where there is none): the lowest block floor of each of the last
        four spans of :data:`ENVELOPE_SPANS` blocks (at least half of each span's blocks held)
        rises in each span by more than :data:`ENVELOPE_TOLERANCE` of the limit, the newest
        rise at least :data:`ENVELOPE_STEADY` of the oldest (a leak does not slow down; a
        warm-up does), and the envelope now is above that of every older span the history
        holds (a cycle longer than the spans coming round again is no leak). The OOM is
        projected from the window's peak over the last span at the envelope's pace. The trend
        views' blocks (15 min at most) are shorter than a cycle of hours, so their floors follow
        the cycle and a leak under it scores low; the envelope's spans are one cycle or more
        long. Shortest span first. ``rows`` (n,) bool: only those are judged (NaN elsewhere).
        """
        n = len(batch)
        out = np.full(n, np.nan)
        if n == 0:
            return out
        lim = batch.limits[:, CHANNELS.index("mem_working_set")].astype(np.float64)
        if rows is not None:
            lim = np.where(rows, lim, np.nan)
        cur = np.floor(batch.ts / self.block_s).astype(np.int64) - 1  # newest complete block
        lo = self._first_level_block(slots)
        for span in ENVELOPE_SPANS:
            todo = np.flatnonzero(np.isnan(out) & np.isfinite(lim) & (lim > 0))
            if todo.size == 0 or 4 * span > self.n_blocks:
                continue
            k = self.n_blocks // span  # spans the history holds
            want = cur[todo, None] - np.arange(k * span)[None, :]  # (g, k span), newest first
            pos = np.mod(want, self.n_blocks)
            s = slots[todo]
            held = (self._bid[s[:, None], pos] == want) & (want >= lo[todo, None])
            fl = np.where(held, self._floor[s[:, None], self._ws, pos], np.nan)
            fl = fl.reshape(todo.size, k, span)
            full = np.isfinite(fl).sum(axis=2) >= span // 2
            enough = full[:, :4].all(axis=1)
            with _quiet():
                env = np.nanmin(fl, axis=2)  # (g, k): env[:, 0] is the newest span
                rise = env[:, :3] - env[:, 1:4]  # (g, 3): newest rise first
                tol = ENVELOPE_TOLERANCE * lim[todo]
                steady = ((rise > tol[:, None]).all(axis=1)
                          & (rise[:, 0] >= ENVELOPE_STEADY * rise[:, 2]))
                # above the envelope of every span held before the four (a cycle longer
                # than the spans, coming round again, is no leak)
                before = np.nanmax(np.where(full[:, 4:], env[:, 4:], np.nan), axis=1) \
                    if k > 4 else np.full(todo.size, np.nan)
            new_high = ~(env[:, 0] <= before + tol)  # NaN before: nothing held, a new high
            # where the RSS is exported, anonymous memory must grow with it: a working set
            # that ramps on a flat RSS is page cache (a file reader), never OOM-killed for
            rss = self._floor[s[:, None], self._rss, pos]
            rss = np.where(held, rss, np.nan).reshape(todo.size, k, span)[:, :4]
            with _quiet():
                env_rss = np.nanmin(rss, axis=2)
            rss_rise = env_rss[:, 0] - env_rss[:, 3]
            anonymous = ~(rss_rise < ENVELOPE_RSS_SHARE * (env[:, 0] - env[:, 3]))
            ok = enough & steady & new_high & anonymous
            if not ok.any():
                continue
            g = np.flatnonzero(ok)
            rate = (env[g, 0] - env[g, 3]) / (3 * span * self.block_s)  # > 0: steady rises
            ws = batch.values[todo[g], self._mem_idx[self._ws], :].astype(np.float64)
            recent = batch.grid[None, :] >= -span * self.block_s
            with _quiet():
                peak = np.nanmax(np.where(recent, ws, np.nan), axis=1)
            out[todo[g]] = np.maximum(lim[todo[g]] - peak, 0.0) / rate  # NaN: no peak seen
        return out

    def oom_kills(self, slots: np.ndarray) -> np.ndarray:
        return self.oom_kills_[slots]

    def _lives_end(self, batch: WindowBatch, rows: np.ndarray, last_r: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """For windows ``rows`` whose restart is at bin ``last_r``: the time the ended
        incarnation's working set was last sampled - the start of the run of its last value
        that the engine forward-fills over the gap to the restart - and that value. The
        restart's bin holds the ended incarnation's last sample (a restart count that rises
        at the kill) unless it is lower than the one before (the new incarnation's first:
        a restart drops memory)."""
        end = np.full(len(rows), np.nan)
        value = np.full(len(rows), np.nan)
        ws = batch.values[rows, self._mem_idx[self._ws], :]
        for k in range(len(rows)):
            x = ws[k, :max(int(last_r[k]), 0) + 1]
            fin = np.flatnonzero(np.isfinite(x) & (x > 0))  # a dead cgroup reads 0
            if fin.size == 0:
                continue
            e = int(fin[-1])
            if e == x.size - 1 and fin.size > 1 and x[e] < x[fin[-2]]:
                e = int(fin[-2])  # the restart's bin holds the new incarnation (lower)
            other = np.flatnonzero(x[:e] != x[e])  # NaN counts as other
            start = int(other[-1]) + 1 if other.size else 0
            end[k] = batch.ts[rows[k]] + batch.grid[start]
            value[k] = x[e]
        return end, value

    def _see_life_start(self, batch: WindowBatch, slots: np.ndarray, ws: np.ndarray) -> None:
        """Notes each incarnation's first working-set sample: at or after its restart's bin,
        not the value the engine carries over from the killed incarnation, and not 0 (the
        killed container's cgroup, read once more before it goes)."""
        todo = np.flatnonzero(np.isnan(self._life_start[slots]))
        if todo.size == 0:
            return
        s = slots[todo]
        t = batch.ts[todo, None] + batch.grid[None, :]
        x = ws[todo]
        with np.errstate(invalid="ignore"):
            mine = ((x > 0) & (t >= self._inc_start[s][:, None])
                    & (x != self._carried[s][:, None]))
        seen = mine.any(axis=1)
        at = np.argmax(mine, axis=1)
        first = t[np.arange(todo.size), at]
        # data from the window's first bin of a life begun before it: its start is unknown
        # (-inf: the life's length is not known, not the window's)
        first = np.where((at == 0) & (t[:, 0] > self._inc_start[s]), -np.inf, first)
        self._life_start[s[seen]] = first[seen]

    def tracks_killed_life(self, batch: WindowBatch, slots: np.ndarray) -> np.ndarray:
        """(n,) bool: the pod's last incarnation was OOM-killed and this one's working set
        grows like it did - since this life's first sample (at least
        :data:`TRACK_MIN_SAMPLES` of them in the window) by at least :data:`TRACK_PACE` of the
        killed life's pace to the limit and by :data:`TRACK_MIN_FRACTION` of the limit. The
        evidence a single kill gives: the same leak again, before its own growth is long
        enough to measure. False for a life begun before the window (its start unknown) or
        without a limit; a life that grows slower, or levels (a one-off OOM, then healthy),
        does not track."""
        n = len(batch)
        out = np.zeros(n, dtype=bool)
        start, prev = self._life_start[slots], self._prev_life[slots]
        rows = np.flatnonzero((self.oom_kills_[slots] > 0) & np.isfinite(start)
                              & np.isfinite(prev) & (prev > 0))
        if rows.size == 0:
            return out
        ws = batch.values[rows, self._mem_idx[self._ws], :].astype(np.float64)
        t = batch.ts[rows, None] + batch.grid[None, :]
        with np.errstate(invalid="ignore"):
            mine = np.isfinite(ws) & (ws > 0) & (t >= start[rows, None])
        count = mine.sum(axis=1)
        L = ws.shape[1]
        first = np.argmax(mine, axis=1)
        last = L - 1 - np.argmax(mine[:, ::-1], axis=1)
        r = np.arange(rows.size)
        x0, x1 = ws[r, first], ws[r, last]
        elapsed = t[r, last] - t[r, first]
        lim = batch.limits[rows, CHANNELS.index("mem_working_set")].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            pace = (lim - x0) / prev[rows]
            grew = x1 - x0
            ok = ((count >= TRACK_MIN_SAMPLES) & np.isfinite(lim) & (lim > x0)
                  & (grew >= TRACK_PACE * pace * elapsed) & (grew >= TRACK_MIN_FRACTION * lim))
        out[rows] = ok
        return out

    def time_to_oom_by_last_life(self, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(n,) seconds until the current incarnation has run as long as the last one the
        kernel OOM-killed (NaN without one): a crash loop's time to its next kill. Both
        lives run from their first working-set sample (none yet: the whole life is left) to
        their last one, not from the restart count's rise (at the kill or at the restart
        after a back-off, depending on the exporter)."""
        start = self._life_start[slots]
        left = self._prev_life[slots] - (ts - np.where(np.isfinite(start), start, ts))
        return np.where(np.isfinite(left), np.maximum(left, 0.0), np.nan)

    def incarnation_start(self, slots: np.ndarray) -> np.ndarray:
        return self._inc_start[slots]

    def incarnation_age(self, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(n,) seconds of data of the current incarnation: since its restart, or since the
        pod's first data point (inf for a pod already older than its first window)."""
        start = np.fmax(self._inc_start[slots], self._born[slots])
        return np.where(np.isfinite(start), ts - start, np.inf)


def oom_reason_since(flag: np.ndarray, since: np.ndarray) -> np.ndarray:
    """(g,) the newest finite value of the ``oom_killed`` flag rows ``flag`` (g, L) at or after
    bin ``since`` (g,); NaN where there is none or it is negative (unknown)."""
    g, L = flag.shape
    mask = np.isfinite(flag) & (np.arange(L)[None, :] >= np.asarray(since)[:, None])
    has = mask.any(axis=1)
    last = L - 1 - np.argmax(mask[:, ::-1], axis=1)
    out = np.where(has, flag[np.arange(g), last].astype(np.float64), np.nan)
    return np.where(out >= 0.0, out, np.nan)


def _quiet() -> warnings.catch_warnings:
    """Silences numpy's all-NaN slice warnings (an all-NaN row is a valid 'nothing')."""
    return warnings.catch_warnings(action="ignore", category=RuntimeWarning)

