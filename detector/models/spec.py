"""How a detector registers itself: one :class:`DetectorSpec` per detector module.

Each detector module of ``detector.models`` ends with ``SPEC = DetectorSpec(...)``, and
:data:`detector.models.registry.REGISTRY` lists every spec (one line per detector). The spec
says everything the rest of podguard needs to know about the detector:

* ``member``: how it lives in a model bundle (its files, how it is written and read back, the
  card entries it owns) - the store (:mod:`detector.models.store`) iterates the registry;
* ``kinds``: the verdict kinds (``detector.kinds``) it decides;
* ``fit``: how it is fitted from the training batch (a :class:`FitContext`) - training
  (``training.fit``) iterates the registry;
* ``decider``: how its score becomes a decision in the pipeline (a :class:`Decider`; the
  deciders judge in registry order, each the windows no earlier one flagged);
* ``input`` and ``example``: which variant of the detector contract it meets (``array``,
  ``window`` or ``stream``) and a small unfitted instance for the contract suite
  (``tests/test_detector_contract.py``, which runs over every registered spec and fails if a
  detector of ``detector.models`` is not registered);
* ``part_of``: a component fitted, saved and judged inside another detector (the autoencoder
  and the isolation forest are parts of the drift fusion).

It imports nothing of the detectors' (they import it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from detector.errors import ModelIntegrityError
from detector.models.base import Attribution
from detector.models.history import LevelHistory
from detector.settings import DetectionSettings
from detector.windows import CHANNELS, WindowBatch

Input = Literal["array", "window", "stream"]
"""The contract variant: ``array`` (:class:`detector.models.base.Detector`, feature arrays),
``window`` (:class:`detector.models.base.WindowDetector`, window batches) or ``stream``
(:class:`detector.models.base.StreamingDetector`, one series per row, point by point)."""


CARD = "model_card.json"
"""The model card's file name in a bundle."""


def json_file(contents: Mapping[str, bytes], fname: str) -> Any:
    """The JSON document ``fname`` of a bundle's verified ``contents``
    (:class:`ModelIntegrityError` if it is not JSON)."""
    try:
        return json.loads(contents[fname])
    except ValueError as exc:
        raise ModelIntegrityError(f"{fname} is not valid JSON: {exc}") from exc


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    """Writes ``files`` (name -> bytes) into ``directory``, each fsynced."""
    for fname, data in files.items():
        with open(directory / fname, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


@dataclass(frozen=True)
class Member:
    """How one detector lives in a bundle.

    ``files``: the bundle files it owns (none: it lives in the card only, under the keys its
    ``card`` gives). ``encode`` gives the files the detector is written as (name -> bytes; a
    detector that saves itself into a directory gives none and writes in ``write``),
    ``write`` puts them into the bundle's temporary directory, ``read`` builds the detector
    from the bundle's verified bytes (and its card), ``card`` gives the card entries it owns
    (``features``, ``scaling``, ``thresholds`` - merged over members -, or its own keys)."""

    name: str
    files: frozenset[str]
    read: Callable[[Mapping[str, bytes], Mapping[str, Any]], Any]
    encode: Callable[[Any], dict[str, bytes]] = field(default=lambda det: {})
    write: Callable[[Any, Path, dict[str, bytes]], None] = field(
        default=lambda det, directory, files: write_files(directory, files))
    card: Callable[[Any], Mapping[str, Any]] = field(default=lambda det: {})


NEW_POD_S = 300.0
"""A pod whose data in its window spans less than this (it started inside the window) is
judged for leaks only, and the drift ensemble does not learn from it; the window engine marks
windows stale only for their first ``min_history_s`` (2 min), so a crash loop's incarnations
that the kernel kills within minutes can be warned of."""


def pod_age_s(batch: WindowBatch) -> np.ndarray:
    """(n,) seconds of data in each window since its pod's first working-set point (inf for
    a pod older than the window or without memory data)."""
    ws = batch.values[:, CHANNELS.index("mem_working_set"), :]  # a view, no copy
    fin = np.isfinite(ws)
    L = ws.shape[-1]
    first = np.argmax(fin, axis=-1)
    return np.where(fin.any(axis=-1) & (first > 0), (L - first) * batch.step_s, np.inf)


@dataclass(frozen=True)
class FitContext:
    """What a detector's ``fit`` hook is given: the healthy training windows, split by pod."""

    healthy: WindowBatch
    """Every healthy window."""
    fit: WindowBatch
    """The pods the models learn on."""
    holdout: WindowBatch
    """The held-back pods (thresholds of models that learn are fitted on them)."""
    detection: DetectionSettings
    seed: int = 0
    progress: bool = False
    young: WindowBatch | None = None
    """Young incarnations' windows at a fine grid (``training.fit.young_windows``), or None."""
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per detector name, options its hook reads (e.g. ``{"drift": {"config": ...}}``)."""


@dataclass(frozen=True)
class Fitted:
    """A ``fit`` hook's result: the fitted detector and its entries of the training summary."""

    detector: Any
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    """What the pipeline knows of a batch before its detectors judge it, the same for every
    decider, and what earlier deciders found (``found``, by detector name: the one way a
    decider's judgement can depend on another's, e.g. the drift decider reads the leak
    decider's findings, see :class:`detector.models.drift.DriftDecider`)."""

    settings: DetectionSettings
    history: LevelHistory
    """The pods' level history, already updated with the batch."""
    slots: np.ndarray
    """(n,) each window's slot in ``history``."""
    stale: np.ndarray
    """(n,) bool, windows too short to judge."""
    new_pod: np.ndarray
    """(n,) bool, a pod seen for less than :data:`NEW_POD_S`."""
    incarnation: np.ndarray
    """(n,) start of each window's container incarnation."""
    found: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Judged:
    """A decider's judgement of a batch: per window whether it is flagged as ``kind`` (or the
    row's ``kinds``, for a detector deciding several), the score and threshold a verdict
    reports, and how a flagged row is explained.

    A verdict is reported (its score, threshold, ``verdict_fields`` and explanation) by the
    judgement of the detector that decides its kind, whichever decider flagged the row."""

    kind: str
    flagged: np.ndarray  # (n,) bool, only where eligible
    score: np.ndarray  # (n,) float (NaN: not judged)
    threshold: np.ndarray  # (n,) float
    explain: Callable[[int, float], tuple[str, dict[str, float]]] | None = None
    """``explain(row, step_s)`` -> (sentence, attribution values) of a flagged row."""
    kinds: np.ndarray | None = None
    """(n,) each row's kind where it is not ``kind`` (e.g. ``gpu_memory_leak``)."""
    attribute: Callable[[list[int]], list[Attribution]] | None = None
    """Instead of ``explain``: the attributions of rows, in one pass (costly: the pipeline
    keeps each pod's for ``EXPLAIN_EVERY_S`` while its kind stays), and ``facts(row)`` ->
    (the sentence's opening, the facts the pipeline's sentence states)."""
    facts: Callable[[int], tuple[str, dict[str, Any]]] | None = None
    verdict_fields: Callable[[int], dict[str, Any]] | None = None
    """Extra fields of a raised verdict of row (e.g. ``time_to_oom_s``)."""

    def kind_at(self, i: int) -> str:
        return self.kind if self.kinds is None else str(self.kinds[i])


class Decider(Protocol):
    """A detector's decision in the pipeline, with any per-pod state it keeps.

    ``judge`` sees every window and flags only ``eligible`` ones (not stale, not flagged by an
    earlier detector; a decider that needs a baseline also leaves out ``evidence.new_pod``,
    the leak decider judges young pods too); None: nothing to judge in this batch.
    ``settle`` is told every window's final kind and whether its verdict is raised (after
    debouncing), before explanations.
    ``forget`` drops a vanished pod's state; ``adopt`` carries a previous decider's state over
    a hot reload (when it means the same)."""

    def judge(self, batch: WindowBatch, eligible: np.ndarray, evidence: Evidence, /
              ) -> Judged | None: ...

    def settle(self, batch: WindowBatch, kinds: list[str], raised: np.ndarray, /) -> None: ...

    def forget(self, key: Hashable, /) -> None: ...

    def adopt(self, previous: Decider, /) -> None: ...


def select_features(batch: WindowBatch, names: tuple[str, ...]) -> np.ndarray:
    """The columns ``names`` of ``batch.features`` (ModelIntegrityError if one is missing)."""
    if tuple(batch.feature_names) == tuple(names):
        return batch.features
    try:
        cols = [batch.feature_names.index(n) for n in names]
    except ValueError as e:
        raise ModelIntegrityError(
            f"the model needs a feature the window engine does not produce ({e}): "
            "retrain the model for this version of podguard") from e
    return batch.features[:, cols]


@dataclass(frozen=True)
class DetectorSpec:
    """One detector's registration (see the module docstring)."""

    name: str
    """Its name: the bundle member, the ``name`` attribute of its class."""
    cls: type
    input: Input
    example: Callable[[], Any]
    """A small unfitted instance, for the contract suite."""
    kinds: tuple[str, ...] = ()
    member: Member | None = None
    fit: Callable[[FitContext], Fitted] | None = None
    decider: Callable[[Any], Decider] | None = None
    """Builds its pipeline decision from the loaded detector; None for a part."""
    part_of: str | None = None

    def __post_init__(self) -> None:
        if getattr(self.cls, "name", None) != self.name:
            raise ValueError(f"spec {self.name!r}: {self.cls.__name__}.name is not "
                             f"{self.name!r}")
        if self.member is not None and self.member.name != self.name:
            raise ValueError(f"spec {self.name!r}: its member is named {self.member.name!r}")
        if self.part_of is not None and (self.member or self.fit or self.decider or self.kinds):
            raise ValueError(f"spec {self.name!r}: a part of {self.part_of!r} is saved, "
                             "fitted and judged by it")
