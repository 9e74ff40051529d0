"""The real-node soak, a benchmark (not a test): real workloads, real limits, real OOM kills.

``make soak`` runs a dozen mixed workloads (:func:`deploy.local.node_record.soak_mix`) for
~60 minutes in the real-node harness, with the rule
``predict_linear(container_memory_working_set_bytes[1h], 4*3600) > limit`` loaded into its
Prometheus (without ``for`` and with ``for: 10m``), then replays the shipped podguard pipeline
causally over the recorded trace and prints, per container incarnation: the kernel's OOM kill,
podguard's first verdict and its kind, the time-to-OOM estimate vs the real one, the rule's
first firing, and the false alarms on the healthy ones (:mod:`deploy.local.node_report`).

    .venv/bin/python -m deploy.local.node_soak [--minutes 60] [--mix soak|mixed|quick]
    .venv/bin/python -m deploy.local.node_soak --trace data/real/mixed.csv.gz   # podguard only
    make realnode-check   # the same with --check: exit 1 unless podguard warned before each kill

``--out DIR`` keeps the trace, labels, verdicts and the table. Needs root (a writable memory
cgroup hierarchy) and ``make prepare``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from deploy.local.node import RealNode
from deploy.local.node_record import MIXES, Recording, record, write
from deploy.local.node_report import (
    RULE_ALERTS,
    Row,
    install_rule,
    podguard_verdicts,
    rule_firings,
    rule_on_trace,
    sample_times,
    score,
    table,
)


def _rules(node: RealNode, start: float, end: float) -> dict[str, Any]:
    return {name: rule_firings(node.prometheus_url, start=start, end=end, alert=name)
            for name in RULE_ALERTS}


LIVE = "podguard-live"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                        dict) else v
    return out


def start_live(node: RealNode, *, poll_s: float = 5.0, settings: dict[str, Any] | None = None,
               env: dict[str, str] | None = None) -> Path:
    """``podguard run`` reading the harness's Prometheus (PID in the state dir); its verdicts.
    ``settings`` are merged into its configuration; ``env`` (e.g. KUBECONFIG) is added to its
    environment."""
    import yaml

    from deploy.local import _proc

    out = node.state / LIVE
    out.mkdir(exist_ok=True)
    verdicts = out / "verdicts.jsonl"
    config = {
        "sources": {"kind": "prometheus", "prometheus": {
            "url": node.prometheus_url, "node_name": "", "node_matcher": "",
            "extra_matchers": f'namespace="{node.namespace}"', "query_step_s": poll_s,
            "poll_s": poll_s}},
        "alerting": {"kubernetes_events": False},
        "runtime": {"console": False, "verdicts_path": str(verdicts), "log_format": "text"},
    }
    if settings:
        config = _merge(config, settings)
    cfg = out / "podguard.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    _proc.start(LIVE, [sys.executable, "-m", "detector", "run", "--config", str(cfg),
                       "--port", "0", "--out", str(out)], node.state, env=env)
    return verdicts


def stop_live(node: RealNode) -> pd.DataFrame:
    """Stop ``podguard run`` and read back its (positive) verdicts."""
    from deploy.local import _proc

    alive = _proc.alive(_proc.pid_of(LIVE, node.state))
    _proc.stop(LIVE, node.state, grace=30.0)
    if not alive:
        print("podguard run had exited early; its log:\n" + _proc.log_tail(LIVE, node.state))
    log = node.state / f"{LIVE}.log"
    if log.exists():  # the daemon's log and its exit summary, kept beside the verdicts
        shutil.copy(log, node.workdir / f"{LIVE}.log")
        print("podguard run, last lines of its log:\n" + _proc.log_tail(LIVE, node.state, 12))
    path = node.state / LIVE / "verdicts.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return pd.DataFrame(rows, columns=["ts", "pod", "is_anomaly", "kind", "time_to_oom_s"]
                        if not rows else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.local.node_soak",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="how long the workloads run")
    ap.add_argument("--mix", choices=sorted(MIXES), default="soak")
    ap.add_argument("--step", type=float, default=5.0, help="scrape/trace period, seconds")
    ap.add_argument("--replay-step", type=float, default=15.0,
                    help="podguard's evaluation step, seconds")
    ap.add_argument("--trace", type=Path, default=None,
                    help="score a recorded trace (with its .labels.json) instead of running")
    ap.add_argument("--live", action="store_true",
                    help="also run `podguard run` against the harness's Prometheus")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless every OOM kill was warned first by podguard as a "
                         "memory_leak with a time to OOM and no healthy pod raised anything")
    ap.add_argument("--out", type=Path, default=None, help="keep everything in this folder")
    a = ap.parse_args(argv)

    rules: dict[str, Any] = {}
    live: pd.DataFrame | None = None
    if a.trace is not None:
        from detector.traces import load_trace

        trace = load_trace(a.trace)
        stem = a.trace.name.split(".")[0]
        labels = json.loads((a.trace.parent / f"{stem}.labels.json").read_text())
        rule_state = Path(tempfile.mkdtemp(prefix="podguard-rule-"))
        try:
            rules = rule_on_trace(trace, rule_state, step=float(labels.get("step_s", 5.0)))
        finally:
            shutil.rmtree(rule_state, ignore_errors=True)
    else:
        workloads = MIXES[a.mix]
        state = Path(tempfile.mkdtemp(prefix="podguard-soak-"))

        def start(node: RealNode) -> None:
            assert node.prometheus is not None
            install_rule(node.prometheus, node.state)
            if a.live:
                start_live(node, poll_s=a.step)

        def before_stop(node: RealNode, t0: float, t1: float) -> dict[str, Any]:
            got = _rules(node, t0, t1)
            if a.live:
                got["live"] = stop_live(node)
            return got

        try:
            rec: Recording = record(state, workloads, duration_s=a.minutes * 60, step=a.step,
                                    scrape_interval=f"{a.step:g}s", on_start=start,
                                    before_stop=before_stop,
                                    # the kubelet's CrashLoopBackOff: 10 s doubling to 5 min
                                    restart_backoff_s=10.0, restart_backoff_max_s=300.0,
                                    report=lambda m: print(m, flush=True))
        finally:
            shutil.rmtree(state, ignore_errors=True)
        trace, labels, rules = rec.trace, rec.labels, rec.extra or {}
        live = rules.pop("live", None)
        if a.out is not None:
            write(rec, a.out, f"soak-{a.mix}")
    verdicts = podguard_verdicts(trace, step_s=a.replay_step,
                                 out=a.out / "verdicts.jsonl" if a.out else None)
    samples = sample_times(trace, labels)
    rows = score(labels, verdicts, rules.get("PredictLinearOOM"),
                 rules.get("PredictLinearOOMFor10m"), samples)
    text = "podguard replay of the recorded trace, the rule in the harness's Prometheus\n"
    text += table(rows)
    if live is not None:
        text += "\n\n`podguard run` live against the harness's Prometheus\n" + table(
            score(labels, live, rules.get("PredictLinearOOM"),
                  rules.get("PredictLinearOOMFor10m"), samples))
    print(text)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "report.txt").write_text(text + "\n")
    if a.check:
        failures = check(rows)
        for f in failures:
            print(f"CHECK FAILED: {f}")
        return 1 if failures else 0
    return 0


def check(rows: list[Row]) -> list[str]:
    """What keeps podguard from "warns before every kill, quiet on the healthy ones"."""
    out = []
    for r in rows:
        if r.killed is not None and (not r.warned or r.tto_estimate_s is None):
            first = ("none" if r.first_alarm is None else
                     f"{r.first_kind} at {(r.first_alarm - r.started) / 60:.1f} min"
                     f" (time to OOM {r.tto_estimate_s})")
            out.append(f"{r.pod} incarnation {r.incarnation}: OOM-killed at "
                       f"{(r.killed - r.started) / 60:.1f} min, podguard's first alarm {first}")
        if not r.meant_to_leak and r.alarms:
            out.append(f"{r.pod} (healthy): {r.alarms} anomalous verdict(s), first "
                       f"{r.first_kind}")
    return out


if __name__ == "__main__":
    sys.exit(main())
