"""The ``podguard`` command line: run, replay, replay-demo, evaluate, bench, train, config.

Each sub-command is a thin shell over a library module; errors from podguard's own
exception tree are printed as one line (``podguard: error: ...``) with exit code 2
(permanent) or 75 (temporary, worth retrying), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from detector import __version__
from detector.errors import PodguardError, TemporaryError

EPILOG = """examples:
  podguard run --duration 180                     # the daemon, embedded default (live)
  podguard replay-demo                            # not live: scenarios replayed, summary + plot
  podguard replay trace.parquet --out verdicts.jsonl
  podguard evaluate --out out/evaluation          # table + plot against two baselines
  podguard bench                                  # windows/s/core, explanation latency, RSS
  podguard train --traces history.parquet --out /models
  podguard train --prometheus http://prometheus:9090 --since 7d --out /models
  podguard config --print-defaults
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="podguard",
        description="Telemetry anomaly detection for ML workloads on Kubernetes: memory leaks "
                    "with time to OOM and pre-failure drift, explained with SHAP.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"podguard {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("replay", help="replay a recorded trace causally and write verdicts",
                       description="Replays TRACE (CSV or Parquet, long format: timestamp, "
                       "namespace, pod, container, node, metric, value) through the detectors. "
                       "A verdict at time t uses only samples up to t. Writes one JSON line "
                       "per pod per step.")
    r.add_argument("trace", type=Path, help="trace file (.csv, .csv.gz or .parquet)")
    r.add_argument("--out", type=Path, required=True, help="verdicts file (JSON lines)")
    r.add_argument("--model", type=Path, default=None,
                   help="model bundle directory or model root with a 'current' pointer "
                        "(default: the model shipped in data/model)")
    r.add_argument("--step", type=float, default=60.0, help="evaluation step, seconds (60)")
    r.add_argument("--config", type=Path, default=None, help="settings YAML")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--max-future-s", type=float, default=86400.0,
                   help="refuse a trace with rows more than this past the wall clock, seconds "
                        "(86400)")

    e = sub.add_parser("evaluate", help="recall, lead time and false alarms vs. baselines",
                       description="Generates labelled scenarios (seeded), adds the real "
                       "healthy Exathlon traces when present, and compares podguard with the "
                       "predict_linear rule and a plain IForest. Writes a table (Markdown, "
                       "JSON) and a plot.")
    e.add_argument("--out", type=Path, default=Path("out/evaluation"), help="output directory")
    e.add_argument("--model", type=Path, default=None, help="model (default: data/model)")
    e.add_argument("--seed", type=int, default=1234, help="scenario seed (1234)")
    e.add_argument("--pods-per-kind", type=int, default=8, help="pods per scenario shape (8)")
    e.add_argument("--hours", type=float, default=48.0, help="trace length, hours (48)")
    e.add_argument("--split", choices=("train", "test", "both"), default="both",
                   help="scenario split: train (--seed; what may be tuned on), the frozen "
                   "test split (its own seeds and parameter ranges), or both side by side "
                   "(default)")
    e.add_argument("--no-exathlon", action="store_true", help="skip the Exathlon healthy set")
    e.add_argument("--exathlon-dir", type=Path, default=None,
                   help="folder of Exathlon run zips, e.g. the full benchmark (default: "
                        "$PODGUARD_EXATHLON_DIR, else the 3-run excerpt in data/exathlon)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--nab", type=Path, default=None, metavar="PATH",
                   help="instead: NAB standard score of the custom-metric detector on the NAB "
                        "corpus at PATH (e.g. ../shared/data/nab-dev) next to its published "
                        "detectors; exit 1 if those are not reproduced")

    b = sub.add_parser("bench", help="speed and memory figures",
                       description="Prints windows scored per second per core (batched, no "
                       "explanations), explanation latency per flagged window, replay rows/s "
                       "and peak RSS for a node's worth of pods.")
    b.add_argument("--pods", type=int, default=110, help="pods on the node (110)")
    b.add_argument("--model", type=Path, default=None, help="model (default: data/model)")
    b.add_argument("--replay-hours", type=float, default=16.0,
                   help="hours of the replay benchmark trace (16; 0 = skip)")
    b.add_argument("--replay-pods", type=int, default=100, help="pods in the replay trace (100)")

    d = sub.add_parser("replay-demo", aliases=["demo"],
                       help="the detection core replayed on generated scenarios, with a "
                            "summary and a plot (no daemon; `podguard run` is the live one)",
                       description="Generates a small labelled scenario trace, replays it "
                       "with the shipped model and prints what was detected, when and why, "
                       "and draws a timeline. Nothing runs live: `podguard run` with no "
                       "configuration (`make demo`) is the daemon on real training loops.")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    d.add_argument("--seed", type=int, default=7, help="scenario seed (7)")

    t = sub.add_parser("train", help="the offline retraining job (history -> validated model)",
                       description="Pulls history from Prometheus or reads trace files, "
                       "excludes pods with incidents, fits the detectors and their thresholds, "
                       "validates the candidate against the model in service and promotes it "
                       "only if it is not worse by more than --margin.")
    from training.job import add_arguments

    add_arguments(t)

    rn = sub.add_parser("run", help="the daemon (no configuration: the embedded default)",
                        description="Runs the detector as a daemon: Prometheus or Kafka "
                        "source, or with no configuration the embedded default (real training "
                        "loops on this machine, one leaking, in compressed time). Serves "
                        "/metrics, /healthz and /readyz; stops on SIGTERM/SIGINT or after "
                        "--duration and prints a summary.")
    from detector.runtime.args import add_arguments as add_run_arguments

    add_run_arguments(rn)

    c = sub.add_parser("config", help="show the configuration",
                       description="Prints the default configuration as YAML, every field "
                       "with its unit, or validates a file.")
    c.add_argument("--print-defaults", action="store_true", help="print the defaults")
    c.add_argument("--check", type=Path, default=None, help="validate a YAML file")
    return p


#: Packages left out of the daemon's runtime set, and the extra that installs each.
OPTIONAL_PACKAGES = {
    "torch": "train", "pyarrow": "train", "scipy": "train", "sklearn": "train", "pyod": "train",
    "shap": "eval", "matplotlib": "eval", "numba": "eval",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ModuleNotFoundError as e:
        extra = OPTIONAL_PACKAGES.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"podguard: error: `podguard {args.command}` needs {e.name}, which the daemon's "
              f"runtime set leaves out: pip install 'podguard[{extra}]'", file=sys.stderr)
        return 2
    except TemporaryError as e:
        print(f"podguard: temporary error (retry later): {e}", file=sys.stderr)
        return 75
    except PodguardError as e:
        print(f"podguard: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        from detector.settings import defaults_yaml, load_settings

        if args.check:
            load_settings(args.check)
            print(f"{args.check}: valid")
            return 0
        print(defaults_yaml(), end="")
        return 0
    if args.command == "replay":
        from detector.pipeline import Pipeline
        from detector.replay import replay_to_file
        from detector.settings import load_settings
        from detector.traces import load_trace

        settings = load_settings(args.config)
        trace = load_trace(args.trace)
        pipe = Pipeline.load(args.model, settings=settings.detection)
        summary = replay_to_file(trace, pipe, args.out, step_s=args.step,
                                 progress=not args.no_progress,
                                 max_future_s=args.max_future_s)
        print(json.dumps(summary.to_json_dict(), indent=2))
        # for a person: per pod its first alarm, kind, time to OOM and why (stdout stays JSON)
        print("\n".join(summary.lines()), file=sys.stderr)
        return 0
    if args.command == "train":
        from training.job import run

        run(args)
        return 0
    if args.command == "evaluate" and args.nab is not None:
        from detector.nab_eval import run_nab

        return run_nab(args.nab, out=args.out)
    if args.command == "evaluate":
        from detector.evaluate_cli import run_evaluate

        return run_evaluate(args)
    if args.command == "bench":
        from detector.bench import run_bench

        return run_bench(args)
    if args.command == "run":
        from detector.runtime.build import run_command

        return run_command(args)
    if args.command in ("replay-demo", "demo"):
        from detector.demo import run_demo

        return run_demo(args)
    raise AssertionError(args.command)
