"""The window engine: raw samples in, per-pod fixed-grid windows out.

One engine is shared by the replay (``detector.replay``), the daemon's sources and offline
training (``training/``), so a model sees the same windows everywhere. Callers feed samples
with :meth:`WindowEngine.ingest` (a DataFrame in the trace format of ``detector.traces``) or
:meth:`WindowEngine.ingest_samples` (streaming sources) and ask for a :class:`WindowBatch` with
:meth:`WindowEngine.windows`; models in ``detector.models`` consume the batch.

How samples become windows
--------------------------
* Time is cut into bins of ``step_s`` seconds: bin ``b`` holds the samples with
  ``origin + (b-1)*step < t <= origin + b*step``. Each series (namespace, pod, container,
  metric) keeps a ring of the last ``(horizon_s + max_late_s) / step_s`` bins; per bin it keeps
  the newest sample (timestamp and value) and, for counters, the largest raw value seen in the
  bin. Memory per series is therefore bounded and independent of the sample rate.
* Duplicates (same series and timestamp) are absorbed: the later arrival replaces the value.
  Late samples (older than the newest of their series, within ``max_late_s``) are merged into
  their bin; older ones are rejected as ``too_old``. NaN/inf values, bad timestamps, negative
  counters and rows without namespace/pod/metric are rejected and counted by reason in the
  :class:`IngestReport`; a bad row never raises and never disturbs accepted data.
* Counters (``*_total``) become per-second rates (``cpu_rate``, ``net_*_rate``, custom
  ``*_total`` metrics) or per-step increments (``restarts``) between consecutive non-empty
  bins, Prometheus-style: a decrease is a reset and the new value counts from 0 (a reset
  inside one bin is seen through the bin's maximum).
* Gauges take the newest value of each bin. Rates and gauges are forward-filled over gaps of
  up to ``max_gap_s``; beyond that the grid holds NaN.
* Containers of a pod are summed (the pod is the unit); a pod-level series with an empty
  ``container`` label is used only when the pod has no per-container series for that metric;
  the pause container ``POD`` is ignored. Memory limits are summed over containers; a limit of
  0 (unlimited) on any container makes the pod's limit unknown (NaN). But the kernel kills a
  container at its own limit: where one container grows towards its own limit faster than
  the others use theirs, the pod's memory limit is that container's own plus the others'
  newest use, so the headroom is its own (``WindowBatch.memory_container`` names it; see
  ``WindowAssembler._binding``).
* A window ends at the last bin boundary ``<= at`` (its ``ts``) and only ever uses samples with
  timestamps ``<= ts``: windows are causal.
* A pod with no sample for ``pod_ttl_s`` (engine clock = newest timestamp ingested) is
  forgotten, so memory stays bounded as pods come and go.
* The engine holds only ``horizon_s + max_late_s`` of history per series (about 8 KiB per
  series at the defaults). Feed a long trace in time order, a step at a time, and ask for
  windows as you go (:func:`iter_windows` / :func:`collect_windows` do exactly that; the
  replay, evaluation and training all go through them); ingesting a whole day at once
  keeps only its last hours. ``windows(at)`` for an ``at`` older than the retained history
  is still causal but incomplete (NaN).

Baseline and features
---------------------
``baseline`` is the pod's own robust level and scale, (median, MAD), of each channel over the
part of the window older than ``baseline_exclude_s`` (default: all but the last hour), so a
new workload is judged against itself; NaN until ``min_baseline_s`` of data exist there.
Only bins after the window's last container restart count (a restarted container is a new
incarnation, judged against itself again), and features relative to the baseline are NaN
while it is missing.
``features`` (:data:`FEATURE_NAMES`, see :func:`extract_features`) summarise each window for
the drift models. The channels, their metrics, units, scale floors and limits are rows of the
channel table (:mod:`detector.channels`).

Where each part lives
---------------------
* :mod:`~detector.windows.batch` - :class:`Sample`, :class:`IngestReport`, :class:`PodKey`,
  :class:`WindowBatch` (the data in and out);
* :mod:`~detector.windows.series` - the series store: every per-series and per-pod array,
  declared once, and how each metric is read;
* :mod:`~detector.windows.ingest` - the ingester (samples into the store's bins);
* :mod:`~detector.windows.assemble` - the window assembler (bins out as windows);
* :mod:`~detector.windows.stats` - NaN-aware robust statistics (medians, MADs, block minima,
  Theil-Sen, restarts);
* :mod:`~detector.windows.features` - baselines and features;
* :mod:`~detector.windows.engine` - :class:`WindowEngine`, which joins them, and the replay
  loop :func:`iter_windows` / :func:`collect_windows`.

Everything callers use is importable from ``detector.windows`` itself.
"""

from __future__ import annotations

from detector.channels import INFRASTRUCTURE_PREFIXES
from detector.windows.batch import IngestReport, PodKey, Sample, WindowBatch
from detector.windows.engine import WindowEngine, collect_windows, iter_windows
from detector.windows.features import (
    CHANNEL_METRICS,
    CHANNELS,
    FEATURE_NAMES,
    MEMORY_CHANNELS,
    THROUGHPUT_CHANNELS,
    extract_features,
    robust_baseline,
)
from detector.windows.stats import (
    after_last_restart,
    block_reduce,
    last_restart_index,
    nancount_last,
    nanmedian_last,
    nanmedian_mad_last,
    pairwise_slopes,
    theil_sen_block_minima,
)

__all__ = [
    "CHANNELS",
    "CHANNEL_METRICS",
    "FEATURE_NAMES",
    "INFRASTRUCTURE_PREFIXES",
    "MEMORY_CHANNELS",
    "THROUGHPUT_CHANNELS",
    "IngestReport",
    "PodKey",
    "Sample",
    "WindowBatch",
    "WindowEngine",
    "after_last_restart",
    "block_reduce",
    "collect_windows",
    "extract_features",
    "iter_windows",
    "last_restart_index",
    "nancount_last",
    "nanmedian_last",
    "nanmedian_mad_last",
    "pairwise_slopes",
    "robust_baseline",
    "theil_sen_block_minima",
]
