"""``podguard evaluate``: builds the evaluation sets, runs :mod:`detector.evaluate`, writes
the report (Markdown table, JSON, PNG plot) and prints the table."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import pandas as pd

from detector import scenarios
from detector.errors import InputError
from detector.evaluate import PlainIForest, TraceSet, evaluate, write_report
from detector.pipeline import Pipeline
from detector.settings import WindowSettings

TRAIN_SEED_OFFSET = 10_000  # the plain IForest baseline trains on healthy data of another seed


def split_seeds(split: str, seed: int) -> tuple[int, ...]:
    """The seeds of a split: the train split uses ``--seed``; the frozen test split always
    uses its own :data:`detector.scenarios.TEST_SEEDS`."""
    return (seed,) if split == "train" else scenarios.TEST_SEEDS


def evaluation_sets(args: argparse.Namespace) -> Iterator[tuple[str, TraceSet, pd.DataFrame]]:
    splits = ("train", "test") if args.split == "both" else (args.split,)
    for split in splits:
        seeds = split_seeds(split, args.seed)
        per_seed = max(1, round(args.pods_per_kind / len(seeds)))
        parts = [scenarios.generate(n_pods_per_kind=per_seed, hours=args.hours, seed=s,
                                    split=split) for s in seeds]
        # pod names repeat across seeds: make them unique per seed
        traces, labels = [], []
        for j, (trace, lab) in enumerate(parts):
            if len(parts) > 1:
                trace = trace.assign(pod=trace["pod"].astype(str) + f"-s{j}")
                lab = lab.assign(pod=lab["pod"].astype(str) + f"-s{j}")
            traces.append(trace)
            labels.append(lab)
        yield split, traces if len(traces) > 1 else traces[0], pd.concat(labels,
                                                                           ignore_index=True)
    if not args.no_exathlon:
        from detector import exathlon

        where = args.exathlon_dir if args.exathlon_dir is not None else exathlon.default_dir()
        runs = exathlon.list_runs(where)
        if not runs:
            raise InputError(f"no Exathlon runs in {where}: pass --exathlon-dir DIR (or set "
                             f"{exathlon.ENV_DIR}), or --no-exathlon")
        print(f"exathlon: {len(runs)} run(s) from {where}", file=sys.stderr)
        traces = []
        for p in runs:
            try:
                traces.append(exathlon.load_run(p))
            except InputError as e:  # e.g. one shipped zip is a truncated multi-part archive
                print(f"exathlon: skipping {p.name}: {e}", file=sys.stderr)
        if not traces:
            raise InputError(f"no readable Exathlon run in {where}")
        yield "exathlon", traces, pd.DataFrame(columns=list(scenarios.LABEL_COLUMNS))


def run_evaluate(args: argparse.Namespace) -> int:
    from training.fit import collect_windows

    started = time.perf_counter()
    healthy, _ = scenarios.generate_healthy(n_pods=12, hours=8, seed=args.seed + TRAIN_SEED_OFFSET)
    feats = collect_windows(healthy, windows=WindowSettings(), desc="baseline training").features
    iforest = PlainIForest(seed=args.seed).fit(feats)
    model = args.model

    def factory() -> Pipeline:
        return Pipeline.load(model)

    ev = evaluate(evaluation_sets(args), factory, iforest, progress=not args.no_progress)
    paths = write_report(ev, args.out)
    sys.stdout.write(ev.to_markdown())
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0
