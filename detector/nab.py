"""NAB (Numenta Anomaly Benchmark) scoring, standard profile, and the NAB corpus reader.

Used by ``podguard evaluate --nab PATH`` (:mod:`detector.nab_eval`) to judge podguard's
univariate detector for custom metrics (:mod:`detector.models.univariate`) on real labelled
series, and to check this scorer against the published detections shipped with the corpus.
The corpus is read from a directory given on the command line (never shipped with podguard):

* ``data/<subset>/<name>.csv``: columns ``timestamp`` (``YYYY-MM-DD HH:MM:SS``), ``value``;
* ``labels_combined_windows.json``: ``{"<subset>/<name>.csv": [[start, end], ...]}``;
* ``results/<detector>/<subset>/<detector>_<name>.csv`` (column ``anomaly_score``) and
  ``results/thresholds.json`` (``{detector: {"standard": {"threshold": t}}}``), optional.

The rule, per file of ``n`` rows (:func:`score_file`):

* rows before the probationary period, ``min(floor(0.15 n), 750)``, are ignored;
* each window counts once: its first detection earns ``A_TP * sigma(y)`` with
  ``sigma(y) = 2 / (1 + e^(5y)) - 1`` and ``y = -(right - i + 1) / width`` (``i`` the
  detection's row, ``right`` the window's last row, ``width`` its rows), so a detection on a
  window's first row earns ``A_TP * sigma(-1) = 0.987`` and later ones less, down to
  ``sigma(-1/width) ~ 0`` on its last row; a window with no detection costs ``A_FN``;
* a detection outside every window costs ``A_FP * sigma(d / width)`` when a window precedes
  it (``d`` rows past the end of the nearest preceding window, ``width`` that window's rows;
  near zero just after it, the full ``-A_FP`` from three widths on) and ``-A_FP`` otherwise;
* a set's raw score is the sum over its files, normalised as
  ``100 * (raw - null) / (perfect - null)`` with ``null = -A_FN * windows`` (the detector that
  flags nothing) and ``perfect = A_TP * sigma(-1) * windows`` (the detector that flags the
  first row of every window, scored by the same rule).

This is the rule of the corpus's README, and it reproduces the published figures there
(ARTime 80.4, Numenta HTM 73.1, windowedGaussian 50.8 over the four labelled subsets).
NAB's own code divides a window's reward by ``sigma(-1)`` (so ``perfect = A_TP * windows``)
and measures ``d`` in ``width - 1``; ``reward_scaled=True`` does that (ARTime 80.46, HTM
73.09, windowedGaussian 50.87: the same to within 0.1).
A detection is a row whose anomaly score is ``>= threshold``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import InputError

PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750
LABELLED_SUBSETS: tuple[str, ...] = (
    "artificialWithAnomaly", "realAdExchange", "realTraffic", "realTweets")
"""The four labelled subsets of nab-dev (``artificialNoAnomaly`` has no windows)."""
NO_ANOMALY_SUBSET = "artificialNoAnomaly"


@dataclass(frozen=True)
class Profile:
    """NAB's cost profile: reward of a detected window, cost of a missed one and of a
    false positive (all in units of one window)."""

    a_tp: float = 1.0
    a_fp: float = 0.11
    a_fn: float = 1.0


STANDARD = Profile()


def scaled_sigmoid(y: float) -> float:
    """``2 / (1 + e^(5y)) - 1``; -1 beyond ``y > 3`` (NAB's cut-off)."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probationary_length(n: int) -> int:
    """Rows at the start of an ``n``-row file that are not scored."""
    return int(min(math.floor(PROBATION_FRACTION * n), PROBATION_MAX_ROWS))


@dataclass(frozen=True)
class FileScore:
    """The score of one detector on one file."""

    raw: float
    null: float  # the raw score of the detector that flags nothing
    perfect: float  # the raw score of the detector that flags the first row of every window
    windows: int  # windows that count (at least one row after the probationary period)
    detected: int  # windows with a detection
    false_positives: int  # detections outside every window, after the probationary period
    tp_score: float  # sum of the rewards of detected windows
    fp_score: float  # sum of the (negative) costs of false positives


def score_file(detections: np.ndarray, windows: Sequence[tuple[int, int]], *,
               profile: Profile = STANDARD, reward_scaled: bool = False) -> FileScore:
    """NAB's score of one file.

    ``detections``: ``(n,)`` bool, one per row; ``windows``: ``(first, last)`` row indices
    (inclusive), sorted and disjoint. See the module docstring for the rule;
    ``reward_scaled``: NAB's code instead of the corpus README.
    """
    det = np.asarray(detections, dtype=bool)
    if det.ndim != 1:
        raise InputError(f"detections must be one-dimensional, got shape {det.shape}")
    n = det.size
    wins = [(int(a), int(b)) for a, b in windows]
    for k, (a, b) in enumerate(wins):
        if not 0 <= a <= b < n:
            raise InputError(f"window {k} ({a}, {b}) is outside the file's {n} rows")
        if k and a <= wins[k - 1][1]:
            raise InputError(f"windows {k - 1} and {k} overlap or are not sorted")
    probation = probationary_length(n)
    max_tp = scaled_sigmoid(-1.0) if reward_scaled else 1.0
    fp_den = 1 if reward_scaled else 0
    tp_score = fp_score = 0.0
    counted = detected = n_fp = 0
    for a, b in wins:
        if b < probation:  # wholly inside the probationary period: not scored
            continue
        counted += 1
        width = b - a + 1
        hits = np.flatnonzero(det[max(a, probation):b + 1])
        if hits.size:
            i = max(a, probation) + int(hits[0])
            tp_score += profile.a_tp * scaled_sigmoid(-(b - i + 1) / width) / max_tp
            detected += 1
    # false positives: detections after the probationary period outside every window
    inside = np.zeros(n, dtype=bool)
    for a, b in wins:
        inside[a:b + 1] = True
    fps = np.flatnonzero(det & ~inside)
    fps = fps[fps >= probation]
    if fps.size:
        rights = np.asarray([b for _, b in wins], dtype=np.int64)
        widths = np.asarray([b - a + 1 for a, b in wins], dtype=np.int64)
        for i in fps.tolist():
            k = int(np.searchsorted(rights, i, side="left")) - 1  # last window ending before i
            if k >= 0:
                past = (i - rights[k]) / max(int(widths[k]) - fp_den, 1)
                fp_score += profile.a_fp * scaled_sigmoid(past)
            else:
                fp_score -= profile.a_fp
        n_fp = int(fps.size)
    raw = tp_score + fp_score - profile.a_fn * (counted - detected)
    perfect = profile.a_tp * scaled_sigmoid(-1.0) / max_tp * counted
    return FileScore(raw=raw, null=-profile.a_fn * counted, perfect=perfect, windows=counted,
                     detected=detected, false_positives=n_fp, tp_score=tp_score,
                     fp_score=fp_score)


@dataclass(frozen=True)
class SetScore:
    """The normalised score of one detector over a set of files."""

    score: float  # 100 * (raw - null) / (perfect - null); nan for a set without windows
    raw: float
    null: float
    perfect: float
    windows: int
    detected: int
    false_positives: int
    files: int
    lost: dict[str, float] = field(default_factory=dict)  # see :func:`points_lost`


def points_lost(scores: Iterable[FileScore]) -> dict[str, float]:
    """Where a set's score falls short of 100, in points of the normalised score (they sum
    to ``100 - score``): ``missed`` (each missed window costs the perfect reward plus
    ``A_FN``), ``late`` (a detected window's reward short of the perfect one, a detection
    at its first row losing nothing) and ``false_positives`` (their costs)."""
    missed = late = fp = perfect = null = 0.0
    for f in scores:
        if f.windows:
            per = f.perfect / f.windows  # the perfect reward of one window
            missed += (per - f.null / f.windows) * (f.windows - f.detected)
            late += per * f.detected - f.tp_score
        fp -= f.fp_score
        perfect += f.perfect
        null += f.null
    if not perfect > null:
        return {}
    unit = 100.0 / (perfect - null)
    return {"missed": missed * unit, "late": late * unit, "false_positives": fp * unit}


def normalise(scores: Iterable[FileScore]) -> SetScore:
    """Sums file scores and normalises them against the null and the perfect detector."""
    fs = list(scores)
    raw = sum(f.raw for f in fs)
    windows = sum(f.windows for f in fs)
    null = sum(f.null for f in fs)
    perfect = sum(f.perfect for f in fs)
    score = 100.0 * (raw - null) / (perfect - null) if perfect > null else math.nan
    return SetScore(score=score, raw=raw, null=null, perfect=perfect, windows=windows,
                    detected=sum(f.detected for f in fs),
                    false_positives=sum(f.false_positives for f in fs), files=len(fs),
                    lost=points_lost(fs))


# -- the corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NabFile:
    """One series of the corpus with its windows as row indices."""

    name: str  # "<subset>/<file>.csv"
    timestamps: np.ndarray  # (n,) datetime64[s]
    values: np.ndarray  # (n,) float64
    windows: tuple[tuple[int, int], ...]

    @property
    def subset(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def step_s(self) -> float:
        """The file's median sampling interval, seconds."""
        if self.timestamps.size < 2:
            return 0.0
        d = np.diff(self.timestamps.astype("datetime64[s]").astype(np.int64))
        return float(np.median(d))


def _read_csv(path: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (has {list(df.columns)})")
    out: dict[str, np.ndarray] = {}
    for c in columns:
        if c == "timestamp":
            try:
                out[c] = pd.to_datetime(df[c], format="mixed").to_numpy("datetime64[s]")
            except (ValueError, TypeError) as e:
                raise InputError(f"{path}: bad timestamp ({e})") from e
        else:
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
            if not np.isfinite(v).all():
                bad = int(np.flatnonzero(~np.isfinite(v))[0])
                raise InputError(f"{path}: column {c!r} row {bad + 2} is not a finite number")
            out[c] = v
    return out


def window_rows(timestamps: np.ndarray, limits: Sequence[Sequence[str]], name: str
                ) -> tuple[tuple[int, int], ...]:
    """Windows given as ``[start, end]`` timestamps -> ``(first, last)`` row indices: the
    rows with ``start <= t <= end``."""
    ts = np.asarray(timestamps).astype("datetime64[s]")
    out: list[tuple[int, int]] = []
    for lim in limits:
        if len(lim) != 2:
            raise InputError(f"{name}: a window must be [start, end], got {lim!r}")
        try:
            a, b = (np.datetime64(str(x).replace(" ", "T")[:19], "s") for x in lim)
        except ValueError as e:
            raise InputError(f"{name}: bad window timestamp in {lim!r} ({e})") from e
        i = int(np.searchsorted(ts, a, side="left"))
        j = int(np.searchsorted(ts, b, side="right")) - 1
        if j < i:
            raise InputError(f"{name}: window {lim!r} holds no row of the file")
        out.append((i, j))
    return tuple(out)


def load_windows(root: Path) -> dict[str, list[list[str]]]:
    path = Path(root) / "labels_combined_windows.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read the NAB windows ({e}); pass the corpus "
                         "directory (holding data/ and labels_combined_windows.json)") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected an object of file -> windows")
    return raw


def load_corpus(root: str | Path, subsets: Sequence[str] | None = None) -> list[NabFile]:
    """The files of ``subsets`` (default: every subset under ``root/data``), sorted by name."""
    root = Path(root)
    windows = load_windows(root)
    data = root / "data"
    if not data.is_dir():
        raise InputError(f"{data}: no such directory (is {root} a NAB corpus?)")
    names = sorted(k for k in windows if subsets is None or k.split("/", 1)[0] in subsets)
    files: list[NabFile] = []
    for name in names:
        path = data / name
        if not path.is_file():
            raise InputError(f"{path}: listed in labels_combined_windows.json but missing")
        cols = _read_csv(path, ("timestamp", "value"))
        ts = cols["timestamp"]
        if ts.size and not (np.diff(ts.astype(np.int64)) >= 0).all():  # (one NAB file
            raise InputError(f"{path}: timestamps are not in time order")  # repeats a row)
        files.append(NabFile(name=name, timestamps=ts, values=cols["value"],
                             windows=window_rows(ts, windows[name], name)))
    if not files:
        raise InputError(f"{root}: no files of subsets {list(subsets or [])} in the corpus")
    return files


def load_thresholds(root: str | Path, profile: str = "standard") -> dict[str, float]:
    path = Path(root) / "results" / "thresholds.json"
    try:
        raw = json.loads(path.read_text())
        return {d: float(v[profile]["threshold"]) for d, v in raw.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: cannot read the published thresholds ({e})") from e


def published_detectors(root: str | Path) -> list[str]:
    res = Path(root) / "results"
    return sorted(p.name for p in res.iterdir() if p.is_dir()) if res.is_dir() else []


def load_published_scores(root: str | Path, detector: str, f: NabFile) -> np.ndarray:
    """The published ``anomaly_score`` of ``detector`` on file ``f`` (rows checked)."""
    subset, fname = f.name.split("/", 1)
    path = Path(root) / "results" / detector / subset / f"{detector}_{fname}"
    cols = _read_csv(path, ("timestamp", "anomaly_score"))
    if cols["timestamp"].shape != f.timestamps.shape or not (
            cols["timestamp"] == f.timestamps).all():
        raise InputError(f"{path}: rows do not match the data file {f.name}")
    return cols["anomaly_score"]


def score_detections(files: Sequence[NabFile], detections: Mapping[str, np.ndarray], *,
                     profile: Profile = STANDARD, reward_scaled: bool = False
                     ) -> dict[str, FileScore]:
    """:func:`score_file` for every file (``detections``: file name -> bool per row)."""
    out = {}
    for f in files:
        d = np.asarray(detections[f.name], dtype=bool)
        if d.shape != f.values.shape:
            raise InputError(f"{f.name}: {d.size} detections for {f.values.size} rows")
        out[f.name] = score_file(d, f.windows, profile=profile, reward_scaled=reward_scaled)
    return out


def by_subset(files: Sequence[NabFile], scores: Mapping[str, FileScore],
              subsets: Sequence[str] = LABELLED_SUBSETS) -> dict[str, SetScore]:
    """One :class:`SetScore` per subset plus ``"total"`` over ``subsets`` together."""
    out = {s: normalise(scores[f.name] for f in files if f.subset == s) for s in subsets}
    out["total"] = normalise(scores[f.name] for f in files if f.subset in subsets)
    return out
