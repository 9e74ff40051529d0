"""``podguard evaluate --nab PATH``: podguard's custom-metric detector on the NAB corpus.

Scores :class:`detector.models.univariate.UnivariateDetector` (defaults, causal, one pass per
file) with the NAB standard profile (:mod:`detector.nab`) next to the published detections
that ship with the corpus (``results/<detector>/...`` at ``results/thresholds.json``), per
labelled subset and in total, and counts alarms on ``artificialNoAnomaly``. The published
detectors are re-scored here, so the table also checks this scorer against the figures the
corpus's README states (:data:`PUBLISHED`).

Three podguard rows, kept apart because only the first follows NAB's protocol of parameters
fixed before scoring: **a priori** (the default threshold), **tuned** (NAB's threshold
optimisation over :data:`TUNING_GRID` on the labels it is then scored on) and **held out**
(leave one subset out: each subset at the threshold best on the others), see
:func:`tuning_from_runs`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from detector import nab
from detector.errors import InputError

PUBLISHED: dict[str, dict[str, float]] = {
    "ARTime": {"total": 80.4, "artificialWithAnomaly": 70.3, "realAdExchange": 75.1,
               "realTraffic": 86.9, "realTweets": 81.8},
    "numenta": {"total": 73.1},
    "windowedGaussian": {"total": 50.8},
}
"""The standard-profile scores the nab-dev README states (four labelled subsets together)."""

COLUMNS: tuple[str, ...] = (*nab.LABELLED_SUBSETS, "total")


@dataclass(frozen=True)
class Row:
    """One detector's line of the table."""

    detector: str
    scores: dict[str, nab.SetScore]  # subset or "total" -> score
    no_anomaly_alarms: int  # detections on artificialNoAnomaly (after the probationary period)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # per file: file_detail

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "detector": self.detector,
            "no_anomaly_alarms": self.no_anomaly_alarms,
            "scores": {k: {"score": round(v.score, 4), "raw": round(v.raw, 4),
                           "windows": v.windows, "detected": v.detected,
                           "false_positives": v.false_positives,
                           "points_lost": {c: round(x, 2) for c, x in v.lost.items()}}
                       for k, v in self.scores.items()},
        }
        if self.files:
            out["files"] = self.files
        return out


def _peak(s: np.ndarray) -> float | None:
    s = s[np.isfinite(s)]
    return round(float(s.max()), 3) if s.size else None


def file_detail(files: Sequence[nab.NabFile], detections: dict[str, np.ndarray],
                scores: dict[str, np.ndarray] | None = None, *,
                threshold: float | None = None, gap: int | None = None
                ) -> dict[str, dict[str, Any]]:
    """Per file, what the score is made of: each scored window (``rows``, first and last)
    with its first detection's row and position in the window (0 = its first row, 0.5 its
    labelled centre; both None when missed), and the rows of the false positives (all after
    the probationary period). With the detector's ``scores`` (file name -> score per row):
    each window's ``max_score`` (over its scored rows) and the file's
    ``max_score_outside`` (the highest score outside every window after the probationary
    period: the series' own ordinary excursions), to set a missed window against. With the
    ``threshold`` too: the file's ``flagged_share`` (rows scoring at or above it, of all its
    rows) and, with the detector's episode ``gap``, its ``longest_episode`` (first and last
    row of the longest run of flagged rows closer than ``gap``; None when none is flagged):
    how long a change holds the series in anomaly."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        d = np.asarray(detections[f.name], dtype=bool)
        s = None if scores is None else np.asarray(scores[f.name], dtype=np.float64)
        probation = nab.probationary_length(d.size)
        inside = np.zeros(d.size, dtype=bool)
        wins = []
        for a, b in f.windows:
            inside[a:b + 1] = True
            if b < probation:
                continue
            hits = np.flatnonzero(d[max(a, probation):b + 1])
            first = max(a, probation) + int(hits[0]) if hits.size else None
            at = None if first is None else round((first - a) / (b - a + 1), 3)
            win: dict[str, Any] = {"rows": [a, b], "first_detection": first, "position": at}
            if s is not None:
                win["max_score"] = _peak(s[max(a, probation):b + 1])
            wins.append(win)
        fps = np.flatnonzero(d & ~inside)
        out[f.name] = {"windows": wins,
                       "false_positive_rows": [int(i) for i in fps[fps >= probation]]}
        if s is not None:
            out[f.name]["max_score_outside"] = _peak(s[probation:][~inside[probation:]])
        if s is not None and threshold is not None:
            flagged = np.flatnonzero(np.isfinite(s) & (s >= threshold))
            out[f.name]["flagged_share"] = round(flagged.size / max(s.size, 1), 4)
            if gap is not None:
                out[f.name]["longest_episode"] = _longest_episode(flagged, gap)
    return out


def _longest_episode(flagged: np.ndarray, gap: int) -> list[int] | None:
    """``[first, last]`` row of the longest episode of the rows ``flagged`` (sorted; rows
    closer than ``gap`` belong to one episode, as :func:`~detector.models.univariate.
    episode_starts` counts them)."""
    if flagged.size == 0:
        return None
    cut = np.flatnonzero(np.diff(flagged) > gap)
    starts, ends = np.r_[0, cut + 1], np.r_[cut, flagged.size - 1]
    k = int(np.argmax(flagged[ends] - flagged[starts]))
    return [int(flagged[starts[k]]), int(flagged[ends[k]])]


def _row(name: str, files: Sequence[nab.NabFile], detections: dict[str, np.ndarray], *,
         detail: bool = False, row_scores: dict[str, np.ndarray] | None = None,
         threshold: float | None = None, gap: int | None = None) -> Row:
    """``detections`` scored; ``detail``: with :func:`file_detail` (of ``row_scores`` too,
    the detector's score per row, when given)."""
    scores = nab.score_detections(files, detections)
    labelled = [f for f in files if f.subset != nab.NO_ANOMALY_SUBSET]
    quiet = [f for f in files if f.subset == nab.NO_ANOMALY_SUBSET]
    alarms = sum(scores[f.name].false_positives for f in quiet)
    present = {f.subset for f in labelled}
    subsets = [s for s in nab.LABELLED_SUBSETS if s in present] + sorted(
        present - set(nab.LABELLED_SUBSETS))  # nab-dev's order first, then any other
    return Row(name, nab.by_subset(labelled, scores, subsets), alarms,
               file_detail(files, detections, row_scores, threshold=threshold, gap=gap)
               if detail else {})


def published_rows(root: Path, files: Sequence[nab.NabFile]) -> list[Row]:
    """The published detectors of the corpus, re-scored at their published thresholds."""
    thresholds = nab.load_thresholds(root)
    rows = []
    for det in nab.published_detectors(root):
        if det not in thresholds:
            continue
        dets = {f.name: nab.load_published_scores(root, det, f) >= thresholds[det]
                for f in files}
        rows.append(_row(det, files, dets))
    return rows


def season_points(f: nab.NabFile) -> int:
    """One day in points of ``f``'s own grid (the median step between its rows)."""
    ts = f.timestamps.astype("datetime64[s]").astype(np.int64)
    step = float(np.median(np.diff(ts))) if ts.size > 1 else 0.0
    return round(86400.0 / step) if step > 0 else 0


def podguard_detections(files: Sequence[nab.NabFile], threshold: float | None = None
                        ) -> dict[str, np.ndarray]:
    """The alarms (bool per row) of podguard's univariate detector with its default settings
    and a seasonal time scale of one day (in each file's own points), causal, one run per
    file (``threshold``: another threshold than the default)."""
    return podguard_run(files, threshold)[0]


def podguard_run(files: Sequence[nab.NabFile], threshold: float | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`podguard_detections` and the detector's score of every row (NaN while it
    warms up), file name -> array each."""
    from detector.models.univariate import UnivariateDetector, episode_starts

    base = UnivariateDetector()
    thr = base.default_threshold if threshold is None else threshold
    groups: dict[int, list[nab.NabFile]] = {}
    for f in files:
        groups.setdefault(season_points(f), []).append(f)
    detections: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for season, group in sorted(groups.items()):
        det = UnivariateDetector(config=replace(base.config, season_points=season),
                                 default_threshold=thr)
        # the files of one grid as one batch (rows padded with NaN at the end: a no-op for
        # the detector, which is causal and per row, so each file's alarms are its own run's)
        x = np.full((len(group), max(len(f.values) for f in group)), np.nan)
        for i, f in enumerate(group):
            x[i, :len(f.values)] = f.values
        score, flagged, _ = det.run(x, thr)  # (what det.alarms(x) does, keeping the scores)
        alarms = episode_starts(flagged, det.config.episode_gap_points)
        detections.update({f.name: alarms[i, :len(f.values)] for i, f in enumerate(group)})
        scores.update({f.name: score[i, :len(f.values)] for i, f in enumerate(group)})
    return detections, scores


def podguard_row(files: Sequence[nab.NabFile], threshold: float | None = None) -> Row:
    """:func:`podguard_detections` scored (``threshold``: another threshold than the
    default, for a sweep)."""
    from detector.models.univariate import UnivariateDetector

    det = UnivariateDetector()
    dets, scores = podguard_run(files, threshold)
    return _row("podguard univariate" + ("" if threshold is None else f" @ {threshold:g}"),
                files, dets, detail=True, row_scores=scores,
                threshold=det.default_threshold if threshold is None else threshold,
                gap=det.config.episode_gap_points)


TUNING_GRID: tuple[float, ...] = tuple(round(2.0 + 0.25 * k, 2) for k in range(13))
"""Thresholds tried by NAB's optimisation step (:func:`tuned_rows`): 2.0 to 5.0."""


def _quiet_alarms(files: Sequence[nab.NabFile], scores: dict[str, nab.FileScore]) -> int:
    return sum(scores[f.name].false_positives for f in files
               if f.subset == nab.NO_ANOMALY_SUBSET)


def _best(files: Sequence[nab.NabFile], runs: dict[float, dict[str, nab.FileScore]],
          subsets: Sequence[str]) -> float:
    """The threshold of ``runs`` with the highest total over ``subsets`` among those with
    no alarm on ``artificialNoAnomaly`` (all of them when none is quiet); ties: the
    highest threshold."""
    quiet = [t for t in runs if _quiet_alarms(files, runs[t]) == 0] or list(runs)
    use = [f for f in files if f.subset in subsets]
    return max(quiet, key=lambda t: (nab.normalise(runs[t][f.name] for f in use).score, t))


def tuned_rows(files: Sequence[nab.NabFile], grid: Sequence[float] = TUNING_GRID
               ) -> tuple[list[Row], dict[str, Any]]:
    """NAB's threshold optimisation over ``grid`` (one run of the detector per threshold),
    done twice (:func:`tuning_from_runs`)."""
    out = {float(t): podguard_run(files, t) for t in grid}
    runs = {t: nab.score_detections(files, d) for t, (d, _) in out.items()}
    rows, info = tuning_from_runs(files, runs)
    from detector.models.univariate import UnivariateDetector

    t = info["tuned_threshold"]
    rows[0] = replace(rows[0], files=file_detail(
        files, *out[t], threshold=t, gap=UnivariateDetector().config.episode_gap_points))
    return rows, info


def tuning_from_runs(files: Sequence[nab.NabFile],
                     runs: dict[float, dict[str, nab.FileScore]]
                     ) -> tuple[list[Row], dict[str, Any]]:
    """From the file scores at each threshold of a sweep (``runs``: threshold -> file name
    -> score), two rows:

    * **tuned**: the one threshold with the best total on the labelled subsets themselves
      (what NAB's ``optimize`` step does; a figure tuned on its own labels);
    * **held out** (leave one subset out): each labelled subset scored at the threshold
      that is best on the other labelled subsets, and the total over those held-out file
      scores.

    Either choice only among thresholds with no alarm on ``artificialNoAnomaly`` (a quiet
    series must stay quiet; all thresholds when none is). Returns the two rows and what
    was chosen."""
    if not runs:
        raise InputError("no threshold to tune over")
    labelled = [f for f in files if f.subset != nab.NO_ANOMALY_SUBSET]
    present = [s for s in nab.LABELLED_SUBSETS if any(f.subset == s for f in labelled)] + \
        sorted({f.subset for f in labelled} - set(nab.LABELLED_SUBSETS))
    t_all = _best(files, runs, present)
    tuned = Row(f"podguard univariate, tuned on these labels @ {t_all:g}",
                nab.by_subset(labelled, runs[t_all], present), _quiet_alarms(files, runs[t_all]))
    held: dict[str, nab.FileScore] = {}
    chosen: dict[str, float] = {}
    for s in present:
        others = [o for o in present if o != s]
        t = _best(files, runs, others) if others else t_all
        chosen[s] = t
        held.update({f.name: runs[t][f.name] for f in labelled if f.subset == s})
    quiet = max((_quiet_alarms(files, runs[t]) for t in chosen.values()), default=0)
    out = Row("podguard univariate, held out (threshold tuned on the other subsets)",
              nab.by_subset(labelled, held, present), quiet)
    info = {"grid": sorted(float(t) for t in runs), "tuned_threshold": t_all,
            "held_out_thresholds": chosen,
            "sweep": {f"{t:g}": round(nab.by_subset(labelled, r, present)["total"].score, 2)
                      for t, r in sorted(runs.items())}}
    return [tuned, out], info


def check_published(rows: Sequence[Row]) -> list[str]:
    """Mismatches between the re-scored published detectors and :data:`PUBLISHED`."""
    bad = []
    got = {r.detector: r for r in rows}
    for det, want in PUBLISHED.items():
        if det not in got:
            bad.append(f"{det}: no published results in the corpus")
            continue
        for col, v in want.items():
            if col not in got[det].scores:
                bad.append(f"{det} {col}: not in this corpus")
                continue
            s = got[det].scores[col].score
            if not math.isfinite(s) or round(s, 1) != v:
                bad.append(f"{det} {col}: scored {s:.2f}, the README states {v}")
    return bad


def to_markdown(rows: Sequence[Row]) -> str:
    cols = list(rows[0].scores) if rows else list(COLUMNS)
    head = ["detector", *cols, "alarms on artificialNoAnomaly"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r.detector] + [f"{r.scores[c].score:.1f}" if c in r.scores else "-"
                                for c in cols]
        lines.append("| " + " | ".join([*cells, str(r.no_anomaly_alarms)]) + " |")
    return "\n".join(lines) + "\n"


def run_nab(root: Path, *, out: Path | None = None, published_only: bool = False,
            tune: bool = True) -> int:
    """Prints the table (and writes ``nab.json`` under ``out``); exit code 1 when the
    re-scored published figures do not match the README's. ``tune``: also the rows of
    :func:`tuned_rows` (one run of the detector per threshold of the grid)."""
    started = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--nab {root}: no such directory (the NAB corpus, e.g. "
                         "../shared/data/nab-dev)")
    files = nab.load_corpus(root)
    rows = [] if published_only else [podguard_row(files)]
    tuning: dict[str, Any] = {}
    if tune and not published_only:
        more, tuning = tuned_rows(files)
        rows += more
    rows += published_rows(root, files)
    sys.stdout.write(to_markdown(rows))
    bad = check_published(rows)
    windows = rows[0].scores["total"].windows if rows else 0
    print(f"\nNAB standard profile, {len(files)} files, {windows} windows "
          f"({time.perf_counter() - started:.0f} s). Published figures "
          + ("reproduced." if not bad else "NOT reproduced:\n  " + "\n  ".join(bad)))
    if tuning:
        print(f"a priori: the default threshold; tuned: {tuning['tuned_threshold']:g} (best of "
              f"{tuning['grid'][0]:g}..{tuning['grid'][-1]:g} on the labels it is scored on); "
              "held out: each subset at the threshold best on the others: "
              + ", ".join(f"{k} {v:g}" for k, v in tuning["held_out_thresholds"].items()))
    for r in rows:
        if r.detector.startswith("podguard") and r.scores["total"].lost:
            t, lost = r.scores["total"], r.scores["total"].lost
            print(f"{r.detector}: {t.score:.1f}; points lost: missed windows "
                  f"{lost['missed']:.1f} ({t.windows - t.detected} of {t.windows}), late "
                  f"detections {lost['late']:.1f}, false positives "
                  f"{lost['false_positives']:.1f} ({t.false_positives})")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "nab.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"rows": [r.to_json_dict() for r in rows],
                                   "published_check": bad, "tuning": tuning}, indent=2))
        tmp.replace(path)
        print(f"written: {path}")
    return 1 if bad else 0
