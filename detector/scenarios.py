"""Seeded, labelled synthetic traces of ML pods: healthy shapes and faults.

Used by the tests, by ``data/generate_scenarios.py`` (the shipped scenario set), by training
(healthy data, :func:`generate_healthy`) and by the replay benchmark (generated on the fly).
The output is a trace in the format of :mod:`detector.traces` plus a label table.

Each pod has one *shape*:

* healthy (:data:`HEALTHY_SHAPES`, then :data:`LATER_SHAPES`): ``steady``, ``gc_sawtooth``
  (JVM/Python GC), ``warmup_plateau`` (caches filling, then flat), ``epoch_periodic``
  (per-epoch ramps with checkpoint spikes), ``step_up`` (one legitimate step, e.g. a bigger
  dataset shard), ``diurnal`` (serving load), ``periodic_load``
  (a 1-24 h load cycle), ``slow_warmup`` (a warm-up over hours) and ``page_cache`` (a file
  reader: the working set ramps towards the limit with its active file pages while the RSS
  stays flat and ``container_memory_cache`` holds the rest; the only shape that exports the
  cache series);
* faults: ``slow_leak``, ``fast_leak``, ``step_leak`` (staircase), ``leak_under_gc`` (a rising
  floor under a GC sawtooth), ``gpu_creep`` (``DCGM_FI_DEV_FB_USED`` creeping to the card size)
  ``throughput_drift`` (cpu rate, GPU utilisation and network collapse over 30-60 min
  before a crash) and ``late_leak`` (flat for 20-60 min, then an OOM within 5-20 min).
  Growing faults take :data:`FAULT_HOURS` from onset to OOM (a slow leak 8-36 h, a fast one
  0.5-1.5 h), shortened where the trace is too short to hold them.

Every pod carries realistic companion series: working set and RSS, the cumulative CPU
counter, network counters, the memory limit (``container_spec_memory_limit_bytes`` on most
pods, ``kube_pod_container_resource_limits`` on some), fs usage, the restart counter and, for
GPU pods, DCGM frame-buffer used/free (MiB) and utilisation (%). Some pods have a sidecar
container. Imperfections are injected: missing samples and short gaps, duplicated rows, NaN
values, jittered timestamps and, on some healthy pods, a container restart (counters reset,
memory warms up again).

Labels (one row per fault: one per pod, except a crash-looping leak, one per incarnation
that the kernel killed; healthy pods one row): ``namespace, pod, shape, kind, onset_ts, failure_ts,
fault_metric``. ``kind`` is ``none``, ``memory_leak``, ``gpu_memory_leak`` or ``drift``;
``fault_metric`` names the series the fault moves (``|``-separated when several: a
throughput collapse moves CPU, GPU utilisation and network together).
For leaks ``failure_ts`` is when the faulty series reaches its limit (in rare cases, noise
keeping it just under, after the end of the trace: then it is the projected time); the
pod's series end there (OOM kill /
crash; the replacement pod is not modelled). Healthy pods have NaN times and an empty
``fault_metric``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from detector import traces as tr
from detector.errors import InputError

HEALTHY_SHAPES: tuple[str, ...] = (
    "steady",
    "gc_sawtooth",
    "warmup_plateau",
    "epoch_periodic",
    "step_up",
    "diurnal",
    "periodic_load",
    "slow_warmup",
)
_FIRST_LEAKS: tuple[str, ...] = ("slow_leak", "fast_leak", "step_leak", "leak_under_gc",
                                 "early_leak", "periodic_leak")
LEAK_SHAPES: tuple[str, ...] = (*_FIRST_LEAKS, "late_leak")
FAULT_SHAPES: tuple[str, ...] = (*_FIRST_LEAKS, "crashloop_leak", "gpu_creep", "throughput_drift",
                                 "late_leak")  # late_leak last: the other pods keep their seeds
LATER_SHAPES: tuple[str, ...] = ("page_cache",)
"""Healthy shapes added after the test split was frozen, evaluated (in :data:`ALL_SHAPES`,
last) but not in :data:`HEALTHY_SHAPES` (the fitting data of the shipped model stays what it
was). Their pods draw from a seed stream of their own, so adding them re-drew none of the
other pods of a seed: every earlier pod, its name and its imperfections are what they were."""
ALL_SHAPES: tuple[str, ...] = (*HEALTHY_SHAPES, *FAULT_SHAPES, *LATER_SHAPES)

KIND_OF_SHAPE: dict[str, str] = {
    **{s: "none" for s in (*HEALTHY_SHAPES, *LATER_SHAPES)},
    **{s: "memory_leak" for s in LEAK_SHAPES},
    "crashloop_leak": "memory_leak",
    "gpu_creep": "gpu_memory_leak",
    "throughput_drift": "drift",
}
KINDS: tuple[str, ...] = ("none", "memory_leak", "gpu_memory_leak", "drift")
LABEL_COLUMNS: tuple[str, ...] = (
    "namespace",
    "pod",
    "shape",
    "kind",
    "onset_ts",
    "failure_ts",
    "fault_metric",
)

GIB = float(1 << 30)
DEFAULT_START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Imperfections:
    """How dirty the generated telemetry is (probabilities are per row unless noted)."""

    drop_rate: float = 0.01  # a sample is missing
    duplicate_rate: float = 0.005  # a row is delivered twice
    nan_rate: float = 0.001  # a value is NaN
    gap_pod_rate: float = 0.15  # per pod: one scrape gap of 2-8 min
    restart_pod_rate: float = 0.2  # per healthy pod: one container restart (counter resets)
    jitter_s: float = 1.0  # timestamp jitter, +- seconds

    @staticmethod
    def none() -> Imperfections:
        """Clean telemetry (for exact tests)."""
        return Imperfections(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass
class _PodSeries:
    """Per-pod generated arrays before conversion to the long format."""

    namespace: str
    pod: str
    node: str
    t: np.ndarray
    series: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # container, metric
    # facts: (container, metric, values on t, NaN = no sample), written without imperfections
    # and after the series, so adding one draws nothing and changes no other row
    facts: list[tuple[str, str, np.ndarray]] = field(default_factory=list)


def _shape_list(n_pods_per_kind: int, shapes: Sequence[str], n_pods: int | None) -> list[str]:
    unknown = [s for s in shapes if s not in KIND_OF_SHAPE]
    if unknown:
        raise InputError(f"unknown scenario shape(s) {unknown}; known: {list(ALL_SHAPES)}")
    if n_pods is not None:
        if n_pods < 1:
            raise InputError(f"n_pods must be >= 1, got {n_pods}")
        return [shapes[i % len(shapes)] for i in range(n_pods)]
    if n_pods_per_kind < 1:
        raise InputError(f"n_pods_per_kind must be >= 1, got {n_pods_per_kind}")
    return [s for s in shapes for _ in range(n_pods_per_kind)]


def generate(
    n_pods_per_kind: int = 2,
    hours: float = 8.0,
    step_s: float = 15.0,
    seed: int = 0,
    *,
    shapes: Sequence[str] = ALL_SHAPES,
    n_pods: int | None = None,
    start_ts: float = DEFAULT_START_TS,
    gpu_fraction: float = 0.3,
    imperfections: Imperfections | None = None,
    split: str = "train",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A labelled trace: ``n_pods_per_kind`` pods of each shape in ``shapes``.

    ``n_pods`` (if given) instead assigns shapes round-robin to that many pods. ``split``
    picks the parameter ranges (:data:`SPLITS`): ``"train"`` is what thresholds and rules may
    be tuned on, ``"test"`` is the frozen held-out split (draw it with :data:`TEST_SEEDS`).
    Returns ``(trace, labels)``; the trace is sorted by timestamp and has categorical string
    columns. The same arguments always give the same output.
    """
    if not hours > 0 or not step_s > 0:
        raise InputError(f"hours and step_s must be > 0, got {hours!r}, {step_s!r}")
    if not 0.0 <= gpu_fraction <= 1.0:
        raise InputError(f"gpu_fraction must be in [0, 1], got {gpu_fraction!r}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; known: {sorted(SPLITS)}")
    ranges = SPLITS[split]
    imp = Imperfections() if imperfections is None else imperfections
    shape_list = _shape_list(n_pods_per_kind, shapes, n_pods)
    # two seed streams: the shapes of LATER_SHAPES draw from their own, so that adding them
    # changed none of the other pods' draws (see LATER_SHAPES)
    later = [s in LATER_SHAPES for s in shape_list]
    streams = []
    for root, n in ((np.random.SeedSequence(seed), later.count(False)),
                    (np.random.SeedSequence((seed, 1)), later.count(True))):
        children = root.spawn(n + 1)
        streams.append((iter(children[:-1]), np.random.default_rng(children[-1]), root))
    K = int(hours * 3600 // step_s) + 1
    t_grid = start_ts + np.arange(K, dtype=np.float64) * step_s
    groups: list[list[_PodSeries]] = [[], []]
    labels: list[dict[str, object]] = []
    for i, shape in enumerate(shape_list):
        pod_seeds, meta_rng, _root = streams[later[i]]
        rng = np.random.default_rng(next(pod_seeds))
        gpu = shape == "gpu_creep" or (
            shape != "throughput_drift" and rng.random() < gpu_fraction
        )
        if shape == "throughput_drift":
            gpu = rng.random() < 0.5
        ns = ("ml-train", "ml-serve", "research")[int(meta_rng.integers(3))]
        name = f"job-{meta_rng.integers(16**5):05x}-{i}"
        node = f"node-{int(meta_rng.integers(8)):02d}"
        ps, labs = _make_pod(rng, shape, gpu, t_grid, step_s, imp, ns, name, node, ranges)
        groups[later[i]].append(ps)
        labels.extend(labs)
    trace = _to_long([(g, np.random.default_rng(root.spawn(1)[0]))
                      for g, (_s, _m, root) in zip(groups, streams, strict=True)], imp)
    lab_df = pd.DataFrame(labels, columns=list(LABEL_COLUMNS))
    return trace, lab_df


def generate_healthy(
    n_pods: int = 12,
    hours: float = 8.0,
    step_s: float = 15.0,
    seed: int = 0,
    *,
    shapes: Sequence[str] = HEALTHY_SHAPES,
    start_ts: float = DEFAULT_START_TS,
    gpu_fraction: float = 0.3,
    imperfections: Imperfections | None = None,
    split: str = "train",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Healthy pods only (training data for fitting models and thresholds)."""
    bad = [s for s in shapes if KIND_OF_SHAPE.get(s) != "none"]
    if bad:
        raise InputError(f"generate_healthy: {bad} are not healthy shapes")
    return generate(
        hours=hours,
        step_s=step_s,
        seed=seed,
        shapes=shapes,
        n_pods=n_pods,
        start_ts=start_ts,
        gpu_fraction=gpu_fraction,
        imperfections=imperfections,
        split=split,
    )


# ---------------------------------------------------------------------------------------------
# parameter ranges and splits


FAULT_HOURS: dict[str, tuple[float, float]] = {
    "slow_leak": (8.0, 36.0),
    "fast_leak": (0.5, 1.5),
    "step_leak": (4.0, 16.0),
    "leak_under_gc": (4.0, 24.0),
    "gpu_creep": (4.0, 24.0),
    "early_leak": (0.4, 2.0),
    "periodic_leak": (6.0, 24.0),
    "crashloop_leak": (0.3, 1.2),
    "late_leak": (5 / 60, 20 / 60),
}
"""Range of the time from onset to OOM of each growing fault, hours (drawn log-uniformly), in
the train split (:data:`SPLITS` holds the test split's own ranges).

Why these: a slow leak - an ever-growing list of metrics, a dataloader worker's copy-on-read
growth - adds a few hundred MiB per hour against GiBs of headroom, and is the leak that kills a
long training run overnight, a day or more after it began; a staircase grows at epoch or
evaluation boundaries; a leak under a GC sawtooth raises the floor slowly; CUDA memory creep
(tensors kept alive across steps, allocator fragmentation) takes hours; a fast leak (a batch
accumulated on every step) fills memory within an hour or so; an early leak starts in the
pod's first minutes (a leak in the first epoch) and OOMs within two hours of the pod's start;
a crash-looping leak comes back in every incarnation after its OOM kill (one fault per
incarnation); a periodic leak rides on a multi-hour load cycle; a late leak starts after a
long flat stretch (20-60 min from the pod's start) and OOMs within minutes, often against a
limit many times the flat level (a small sidecar-sized process that starts leaking fast)."""


@dataclass(frozen=True)
class Ranges:
    """The parameter ranges every shape draws from. Two instances exist (:data:`SPLITS`):
    the train split, on which thresholds and rules may be tuned, and the frozen test split
    with its own ranges, on which the reported figures are measured."""

    base_gib: tuple[float, float] = (0.5, 8.0)  # working set level (log-uniform)
    limit_ratio: tuple[float, float] = (1.8, 3.0)  # limit / base
    noise: float = 0.004  # relative noise of the working set
    saw_amp: tuple[float, float] = (0.1, 0.3)  # GC sawtooth amplitude, of base
    saw_period_s: tuple[float, float] = (120.0, 900.0)
    warmup_tau_s: tuple[float, float] = (300.0, 1200.0)  # warmup_plateau time constant
    slow_warmup_tau_s: tuple[float, float] = (1200.0, 3 * 3600.0)  # slow_warmup (log-uniform)
    warmup_depth: tuple[float, float] = (0.3, 0.6)
    period_h: tuple[float, float] = (1.0, 24.0)  # periodic_load cycle (log-uniform)
    periodic_amp: tuple[float, float] = (0.1, 0.4)  # of base, peak to trough
    epoch_s: tuple[float, float] = (900.0, 2700.0)
    step_up: tuple[float, float] = (1.2, 1.5)
    late_start: float = 0.4  # fraction of pods that start after the trace begins
    late_leak_limit_ratio: tuple[float, float] = (1.8, 9.0)  # late_leak: limit / base
    late_leak_onset_s: tuple[float, float] = (1200.0, 3600.0)  # late_leak: flat stretch
    # page_cache: how long the working set's file pages ramp (hours, log-uniform), the
    # working set they ramp to (of the limit), and the RSS's share of that growth
    page_cache_ramp_h: tuple[float, float] = (0.5, 8.0)
    page_cache_fill: tuple[float, float] = (0.6, 0.9)
    page_cache_rss_share: tuple[float, float] = (0.0, 0.1)
    fault_hours: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(FAULT_HOURS))


SPLITS: dict[str, Ranges] = {
    "train": Ranges(),
    "test": Ranges(
        base_gib=(0.3, 12.0),
        limit_ratio=(1.5, 3.5),
        noise=0.006,
        saw_amp=(0.05, 0.4),
        saw_period_s=(60.0, 1800.0),
        warmup_tau_s=(120.0, 2400.0),
        slow_warmup_tau_s=(900.0, 5 * 3600.0),
        warmup_depth=(0.2, 0.7),
        period_h=(1.0, 24.0),
        periodic_amp=(0.05, 0.5),
        epoch_s=(600.0, 3600.0),
        step_up=(1.1, 1.7),
        late_start=0.5,
        late_leak_limit_ratio=(1.5, 10.0),
        late_leak_onset_s=(900.0, 5400.0),
        page_cache_ramp_h=(0.3, 12.0),
        page_cache_fill=(0.5, 0.95),
        page_cache_rss_share=(0.0, 0.15),
        fault_hours={
            "slow_leak": (6.0, 48.0),
            "fast_leak": (0.3, 2.0),
            "step_leak": (3.0, 20.0),
            "leak_under_gc": (3.0, 30.0),
            "gpu_creep": (3.0, 30.0),
            "early_leak": (0.3, 2.0),
            "periodic_leak": (5.0, 30.0),
            "crashloop_leak": (0.25, 1.5),
            "late_leak": (4 / 60, 25 / 60),
        },
    ),
}
"""``train``: thresholds, rules and defaults may be tuned on it. ``test``: frozen; its own
seeds (:data:`TEST_SEEDS`) and wider, shifted ranges; nothing is tuned on it and the README's
figures come from it."""

TEST_SEEDS: tuple[int, ...] = (900_001, 900_002)
"""The frozen test split's seeds (``podguard evaluate --split test``)."""

CRASHLOOP_KILLS = 4
"""A crash-looping leak is killed this many times (each incarnation a fault), then given up."""

FAULT_END_FRACTION = 0.95
"""Every fault plays out inside its trace: a drawn duration that would end after this fraction
of the trace is shortened to end there (short traces get faster faults)."""


def _fault_duration(rng: np.random.Generator, shape: str, onset: float, T: float,
                    ranges: Ranges | None = None) -> float:
    lo, hi = (ranges or SPLITS["train"]).fault_hours[shape]
    drawn = _loguniform(rng, lo, hi) * 3600.0
    room = FAULT_END_FRACTION * T - onset
    return min(drawn, room) if room > 0 else drawn


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _sawtooth(t: np.ndarray, period: float, phase: float) -> np.ndarray:
    return np.mod(t / period + phase, 1.0)


def _cycle(rng: np.random.Generator, t: np.ndarray, period: float) -> np.ndarray:
    """A load cycle in [0, 1] of one of three waveforms: sine, sawtooth, square-ish batch."""
    ph = rng.random()
    form = int(rng.integers(3))
    x = np.mod(t / period + ph, 1.0)
    if form == 0:
        return 0.5 - 0.5 * np.cos(2 * np.pi * x)
    if form == 1:
        return x
    duty = rng.uniform(0.2, 0.6)  # a batch window: ramps in and out over a tenth of it
    edge = 0.1 * duty
    return np.clip(np.minimum(x / edge, (duty - x) / edge), 0.0, 1.0)


def _make_pod(
    rng: np.random.Generator,
    shape: str,
    gpu: bool,
    t_abs: np.ndarray,
    step_s: float,
    imp: Imperfections,
    ns: str,
    name: str,
    node: str,
    ranges: Ranges | None = None,
) -> tuple[_PodSeries, list[dict[str, object]]]:
    rg = ranges or SPLITS["train"]
    K = t_abs.size
    T_trace = float(t_abs[-1] - t_abs[0]) if K else 0.0
    # a pod may start at any time of the trace (its first minutes are then inside it)
    start = 0.0
    if rng.random() < rg.late_start and T_trace > 3600:
        start = rng.uniform(0.0, 0.5) * T_trace
    t = t_abs - t_abs[0] - start  # the pod's own clock: 0 at its start
    T = T_trace - start
    kind = KIND_OF_SHAPE[shape]
    base = _loguniform(rng, *rg.base_gib) * GIB
    limit = np.ceil(base * rng.uniform(*rg.limit_ratio) / (256 * 2**20)) * (256 * 2**20)
    noise = rng.normal(0.0, rg.noise, K)
    load = np.ones(K)  # throughput multiplier (cpu, gpu util, network)
    ws_rel = np.ones(K)  # working set / base
    fb_card_mib = float(rng.choice([40960.0, 81920.0]))
    fb_base_mib = fb_card_mib * rng.uniform(0.3, 0.6)
    fb_mib = fb_base_mib * (1 + rng.normal(0, 0.002, K))
    fs = rng.uniform(0.1, 5.0) * GIB * (1 + 0.02 * np.clip(t, 0, None) / max(T, 1.0))
    onset = np.nan
    failure = np.nan
    fault_metric = ""
    restart_at: list[float] = []
    incarnations: list[tuple[float, float]] = []  # crash loop: (onset, OOM) per incarnation

    def warmup(start_: float, tau: float, depth: float) -> np.ndarray:
        dt = np.clip(t - start_, 0, None)
        return np.where(t >= start_, 1.0 - depth * np.exp(-dt / tau), 1.0)

    # --- the underlying healthy shape (leaks sit on top of steady, GC or periodic shapes)
    saw_amp = 0.0
    if shape in ("gc_sawtooth", "leak_under_gc"):
        saw_amp = rng.uniform(*rg.saw_amp)
        period = rng.uniform(*rg.saw_period_s)
        ws_rel = ws_rel + saw_amp * _sawtooth(t, period, rng.random())
    elif shape == "warmup_plateau":
        ws_rel = ws_rel * warmup(0.0, rng.uniform(*rg.warmup_tau_s), rng.uniform(*rg.warmup_depth))
    elif shape == "slow_warmup":
        ws_rel = ws_rel * warmup(0.0, _loguniform(rng, *rg.slow_warmup_tau_s),
                                 rng.uniform(*rg.warmup_depth))
    elif shape in ("periodic_load", "periodic_leak"):
        amp = rng.uniform(*rg.periodic_amp)
        period_s = _loguniform(rng, *rg.period_h) * 3600.0
        ws_rel = ws_rel * (1 + amp * _cycle(rng, t, period_s))
        load = load * (1 + 0.5 * amp * _cycle(rng, t, period_s))
    elif shape == "epoch_periodic":
        epoch = rng.uniform(*rg.epoch_s)
        ph = rng.random()
        ramp = rng.uniform(0.05, 0.15)
        ws_rel = ws_rel + ramp * _sawtooth(t, epoch, ph)
        every = int(rng.integers(2, 5))
        spike_len = rng.uniform(60.0, 180.0)
        spike = rng.uniform(0.2, 0.4)
        epoch_no = np.floor(t / epoch + ph)
        since = (t / epoch + ph - epoch_no) * epoch
        ckpt = (np.mod(epoch_no, every) == 0) & (since < spike_len)
        ws_rel = ws_rel + spike * ckpt
        ckpt_size = base * rng.uniform(0.5, 1.0)
        n_ckpt = np.floor((epoch_no + every - 1) / every)
        fs = fs + ckpt_size * np.clip(n_ckpt, 0, 2)  # the last two checkpoints are kept
        load = load * (1 - 0.5 * ckpt)
        if gpu:
            fb_mib = fb_mib * (1 + 0.03 * _sawtooth(t, epoch, ph))
    elif shape == "step_up":
        ts_ = rng.uniform(0.2, 0.7) * T
        ws_rel = ws_rel * np.where(t >= ts_, rng.uniform(*rg.step_up), 1.0)
    elif shape == "diurnal":
        ph = rng.uniform(0, 2 * np.pi)
        load = load * (1 + 0.35 * np.sin(2 * np.pi * t / 86400.0 + ph))
        ws_rel = ws_rel * (1 + 0.04 * np.sin(2 * np.pi * t / 86400.0 + ph))
    elif shape == "page_cache":
        # a file reader (a dataset streamed, re-read shards): its active file pages, counted
        # in the working set, ramp from a read start towards a level under the limit and stay
        # (the kernel reclaims them, never OOM-kills for them)
        read_at = rng.uniform(0.0, 0.3) * max(T, 0.0)
        ramp_s = _loguniform(rng, *rg.page_cache_ramp_h) * 3600.0
        fill = rng.uniform(*rg.page_cache_fill)
        top_rel = max(fill * limit / base, 1.05)
        ws_rel = ws_rel * (1 + (top_rel - 1) * np.clip((t - read_at) / ramp_s, 0, 1))

    peak_rel = float(np.max(ws_rel[t >= 0])) if (t >= 0).any() else 1.0
    if shape in LEAK_SHAPES:
        # an early leak starts in the pod's first minutes
        if shape == "early_leak":
            onset = rng.uniform(0.0, 600.0)
        elif shape == "late_leak":
            onset = min(rng.uniform(*rg.late_leak_onset_s), 0.5 * T)
            limit = np.ceil(base * rng.uniform(*rg.late_leak_limit_ratio) / (64 * 2**20)) \
                * (64 * 2**20)
        else:
            onset = rng.uniform(0.1, 0.3) * T
        duration = _fault_duration(rng, shape, onset, T, rg)
        headroom_rel = limit / base - peak_rel
        rate_rel = headroom_rel / duration  # of base per second
        dt = np.clip(t - onset, 0, None)
        if shape == "step_leak":
            step_every = rng.uniform(600.0, 1800.0)
            growth = rate_rel * np.floor(dt / step_every) * step_every
        else:
            growth = rate_rel * dt
        ws_rel = ws_rel + growth
        fault_metric = tr.WORKING_SET
    elif shape == "crashloop_leak":
        # leaks from every incarnation's start until the kernel kills it; restarted after a
        # back-off, it leaks again at a similar rate
        ws_rel = np.full(K, np.nan)
        inc_start = 0.0
        rate_rel = (limit / base - 1.0) / (_loguniform(rng, *rg.fault_hours[shape]) * 3600.0)
        while inc_start < FAULT_END_FRACTION * T and len(incarnations) < CRASHLOOP_KILLS:
            r = rate_rel * rng.uniform(0.8, 1.25)
            warm = rng.uniform(60.0, 300.0)
            dur = (limit / base - 1.0) / r + warm
            sel = (t >= inc_start) & (t < inc_start + dur)
            dt = t[sel] - inc_start
            ws_rel[sel] = (1.0 - 0.3 * np.exp(-dt / (warm / 3))) + r * np.clip(dt - warm, 0, None)
            kill = inc_start + dur
            incarnations.append((inc_start + warm, kill))
            # the kubelet's back-off: 10 s, doubling, at most 5 min
            restart_at.append(kill + min(10.0 * 2 ** len(restart_at), 300.0))
            inc_start = restart_at[-1]
        ws_rel = np.where(np.isfinite(ws_rel), ws_rel, 1.0)
        # after its last kill the job is given up on (its series end there)
        failure = incarnations[-1][1] if restart_at else np.nan
        restart_at = [r_ for r_ in restart_at[:-1] if r_ < T]
        fault_metric = tr.WORKING_SET
    elif shape == "gpu_creep":
        onset = rng.uniform(0.1, 0.3) * T
        duration = _fault_duration(rng, shape, onset, T, rg)
        rate_mib = (fb_card_mib - fb_base_mib) / duration
        fb_mib = fb_mib + rate_mib * np.clip(t - onset, 0, None)
        fault_metric = tr.GPU_FB_USED
    elif shape == "throughput_drift":
        failure = rng.uniform(0.5, 0.9) * T
        onset = failure - rng.uniform(1800.0, 3600.0)
        floor_level = rng.uniform(0.03, 0.15)
        frac = np.clip((t - onset) / (failure - onset), 0, 1)
        load = load * (1 - (1 - floor_level) * frac ** rng.uniform(0.7, 1.5))
        # the collapse moves every throughput series of the pod together, so each names it
        fault_metric = "|".join([tr.CPU_SECONDS, *([tr.GPU_UTIL] if gpu else []),
                                 tr.NET_RX, tr.NET_TX])
    elif (kind == "none" and shape != "page_cache" and rng.random() < imp.restart_pod_rate
          and T > 3600):
        restart_at = [rng.uniform(0.2, 0.9) * T]
        ws_rel = ws_rel * warmup(restart_at[0], rng.uniform(120.0, 600.0), 0.5)

    ws = base * ws_rel * (1 + noise)
    rss_share = rng.uniform(0.75, 0.92)
    rss_noise = 1 + rng.normal(0, 0.003, K)
    rss = ws * rss_share * rss_noise
    cache: np.ndarray | None = None
    if shape == "page_cache":
        # the RSS (anonymous memory) grows by a small share of the working set's growth; the
        # page cache holds the file pages in the working set and inactive ones beside them
        # (usage = RSS + cache stays under the limit)
        rss = base * (rss_share + rng.uniform(*rg.page_cache_rss_share) * (ws_rel - 1.0)) \
            * rss_noise
        inactive = rng.uniform(0.1, 1.0) * np.clip(limit - ws, 0, None)
        cache = np.minimum((ws - rss) + inactive, limit - rss)

    # failure time: the series (working set or GPU memory) reaches its limit
    if shape in LEAK_SHAPES:
        hit = np.flatnonzero((ws >= limit) & (t >= 0))
        if hit.size:
            failure = float(t[hit[0]])
        else:  # projected from the mean leak rate, beyond the end of the trace
            rate_b = (limit - base * peak_rel) / duration
            failure = onset + duration if rate_b > 0 else np.nan
            failure = max(failure, T + step_s)
    elif shape == "gpu_creep":
        hit = np.flatnonzero((fb_mib >= fb_card_mib) & (t >= 0))
        failure = float(t[hit[0]]) if hit.size else max(onset + duration, T + step_s)
    elif shape == "crashloop_leak":
        ws = np.minimum(ws, limit)  # the kernel kills at the limit
    fb_mib = np.minimum(fb_mib, fb_card_mib)

    # throughput: cpu, gpu util, network
    cores = rng.uniform(0.5, 6.0)
    cpu_rate = np.clip(cores * load * (1 + rng.normal(0, 0.05, K)), 0, None)
    util = np.clip(rng.uniform(60, 95) * load * (1 + rng.normal(0, 0.04, K)), 0, 100)
    rx_bps = float(np.exp(rng.uniform(np.log(1e5), np.log(5e7))))
    rx = np.clip(rx_bps * load * (1 + rng.normal(0, 0.08, K)), 0, None)
    tx = np.clip(rx * rng.uniform(0.05, 0.5) * (1 + rng.normal(0, 0.08, K)), 0, None)
    cpu_c = np.cumsum(cpu_rate * step_s) + rng.uniform(0, 1e5)
    rx_c = np.cumsum(rx * step_s) + rng.uniform(0, 1e10)
    tx_c = np.cumsum(tx * step_s) + rng.uniform(0, 1e10)
    restarts = np.zeros(K)
    for r_at in restart_at:
        after = t >= r_at
        if not after.any():
            continue
        i0 = int(np.argmax(after))
        for c in (cpu_c, rx_c, tx_c):
            c[after] = c[after] - c[i0] + c[i0] - c[max(i0 - 1, 0)]  # counts again from ~0
        restarts[after] += 1.0

    # the pod's series start at its start and end at failure (or, in a crash loop, are
    # missing between each OOM kill and the restart)
    alive = t >= 0
    if np.isfinite(failure) and failure <= T:
        alive = alive & (t < failure)
    for (_on, kill), r_at in zip(incarnations, [*restart_at, np.inf], strict=False):
        alive = alive & ~((t >= kill) & (t < r_at))
    keep = alive
    # a scrape gap
    if rng.random() < imp.gap_pod_rate and T > 3600:
        g0 = rng.uniform(0.1, 0.9) * T
        keep = keep & ~((t >= g0) & (t < g0 + rng.uniform(120.0, 480.0)))

    main = "main" if not gpu else "trainer"
    limit_metric = tr.MEMORY_LIMIT if rng.random() < 0.8 else tr.KSM_LIMITS
    ps = _PodSeries(ns, name, node, t_abs[keep])
    k = keep
    ps.series += [
        (main, tr.WORKING_SET, ws[k]),
        (main, tr.RSS, rss[k]),
        (main, tr.CPU_SECONDS, cpu_c[k]),
        (main, limit_metric, np.full(int(k.sum()), limit)),
        (main, tr.NET_RX, rx_c[k]),
        (main, tr.NET_TX, tx_c[k]),
        (main, tr.RESTARTS, restarts[k]),
        (main, tr.FS_USAGE, fs[k] if np.ndim(fs) else np.full(int(k.sum()), fs)),
    ]
    if cache is not None:
        ps.series.append((main, tr.CACHE, cache[k]))
    if shape == "crashloop_leak" and restart_at:
        # kube-state-metrics' last terminated reason: OOMKilled from the first kill's restart
        # on (no series before a first termination)
        ps.facts.append((main, tr.OOM_KILLED, np.where(restarts[k] > 0, 1.0, np.nan)))
    if gpu:
        ps.series += [
            (main, tr.GPU_FB_USED, fb_mib[k]),
            (main, tr.GPU_FB_FREE, fb_card_mib - fb_mib[k]),
            (main, tr.GPU_UTIL, util[k]),
        ]
    if rng.random() < 0.25:  # a small steady sidecar
        side = rng.uniform(30, 200) * 2**20
        side_ws = side * (1 + rng.normal(0, 0.01, K))
        ps.series += [
            ("sidecar", tr.WORKING_SET, side_ws[k]),
            ("sidecar", tr.RSS, 0.8 * side_ws[k]),
            ("sidecar", tr.CPU_SECONDS, np.cumsum(np.full(K, 0.02 * step_s))[k]),
            ("sidecar", limit_metric, np.full(int(k.sum()), 256.0 * 2**20)),
        ]
    t0 = float(t_abs[0]) + start if K else 0.0
    if not incarnations:
        incarnations = [(onset, failure)]
    labels: list[dict[str, object]] = []
    for on, fail in incarnations:
        if shape == "crashloop_leak" and not (t0 + fail <= float(t_abs[-1])):
            continue  # an incarnation still alive when the trace ends is not judged
        labels.append({
            "namespace": ns,
            "pod": name,
            "shape": shape,
            "kind": kind,
            "onset_ts": t0 + on if np.isfinite(on) else np.nan,
            "failure_ts": t0 + fail if np.isfinite(fail) else np.nan,
            "fault_metric": fault_metric,
        })
    return ps, labels


# ---------------------------------------------------------------------------------------------
# long format


def _to_long(groups: list[tuple[list[_PodSeries], np.random.Generator]], imp: Imperfections
             ) -> pd.DataFrame:
    """The long-format trace of groups of pods, each group's imperfections drawn from its own
    generator (a group's rows are what they would be alone)."""
    ts_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    code_parts: dict[str, list[np.ndarray]] = {c: [] for c in tr.STRING_COLUMNS}
    cats: dict[str, dict[str, int]] = {c: {} for c in tr.STRING_COLUMNS}
    facts: list[tuple[np.ndarray, np.ndarray, tuple[str, str, str, str, str]]] = []

    def code(col: str, s: str) -> int:
        d = cats[col]
        if s not in d:
            d[s] = len(d)
        return d[s]

    for pods, rng in groups:
        g_ts: list[np.ndarray] = []
        g_val: list[np.ndarray] = []
        g_codes: dict[str, list[np.ndarray]] = {c: [] for c in tr.STRING_COLUMNS}
        for ps in pods:
            n = ps.t.size
            jitter = rng.uniform(-imp.jitter_s, imp.jitter_s, n) if imp.jitter_s > 0 else 0.0
            t = ps.t + jitter
            for container, metric, vals in ps.series:
                g_ts.append(t)
                g_val.append(np.asarray(vals, dtype=np.float64))
                for col, s in (
                    ("namespace", ps.namespace),
                    ("pod", ps.pod),
                    ("container", container),
                    ("node", ps.node),
                    ("metric", metric),
                ):
                    g_codes[col].append(np.full(n, code(col, s), dtype=np.int32))
            for container, metric, vals in ps.facts:
                has = np.isfinite(vals)
                facts.append((t[has], vals[has],
                              (ps.namespace, ps.pod, container, ps.node, metric)))
        if not g_ts:
            continue
        ts = np.concatenate(g_ts)
        val = np.concatenate(g_val)
        codes = {c: np.concatenate(g_codes[c]) for c in tr.STRING_COLUMNS}
        N = ts.size
        keep = rng.random(N) >= imp.drop_rate
        dup = rng.random(N) < imp.duplicate_rate
        idx = np.flatnonzero(keep)
        idx = np.sort(np.concatenate([idx, np.flatnonzero(keep & dup)]), kind="stable")
        val = val[idx].copy()
        val[rng.random(idx.size) < imp.nan_rate] = np.nan
        ts_parts.append(ts[idx])
        val_parts.append(val)
        for c in tr.STRING_COLUMNS:
            code_parts[c].append(codes[c][idx])
    for f_ts, f_val, labels in facts:  # after every draw: the other rows are as without them
        ts_parts.append(f_ts)
        val_parts.append(f_val)
        for col, name in zip(tr.STRING_COLUMNS, labels, strict=True):
            code_parts[col].append(np.full(f_ts.size, code(col, name), dtype=np.int32))
    if not ts_parts:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in tr.TRACE_COLUMNS})
    ts = np.concatenate(ts_parts)
    val = np.concatenate(val_parts)
    order = np.argsort(ts, kind="stable")
    data: dict[str, object] = {"timestamp": ts[order]}
    for col in tr.STRING_COLUMNS:
        names = list(cats[col])
        data[col] = pd.Categorical.from_codes(np.concatenate(code_parts[col])[order],
                                              categories=pd.Index(names))
    data["value"] = val[order]
    df = pd.DataFrame(data)[list(tr.TRACE_COLUMNS)]
    return df
