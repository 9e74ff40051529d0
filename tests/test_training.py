"""The retraining job: fit from traces, artifacts, the validation gate, incident exclusion."""

from __future__ import annotations

import argparse
import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector import scenarios
from detector.errors import InputError
from detector.models import store
from detector.models.trend import TrendDetector
from detector.traces import RESTARTS, save_trace
from training import job
from training.history import chunks, incident_pods, parse_duration, without_pods


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(prometheus=None, traces=None, since="7d", step=15.0,
                                   matcher="", out=None, fpr=1e-3, margin=0.01, seed=0,
                                   no_progress=True)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def healthy_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trace, _ = scenarios.generate_healthy(n_pods=8, hours=5.0, seed=3)
    return save_trace(trace, tmp_path_factory.mktemp("hist") / "healthy.parquet")


@pytest.fixture(scope="module")
def trained(healthy_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("models")
    out = job.run(_args(traces=[healthy_trace], out=root))
    return {"root": root, "out": out}


def test_train_from_traces_writes_a_promoted_loadable_bundle(trained: dict) -> None:
    root, out = trained["root"], trained["out"]
    assert out["promoted"] is True
    assert out["gate"]["reason"] == "no model in service"
    current = store.resolve_current(root)
    assert current == Path(out["model"])
    bundle = store.load_bundle(root)
    card = bundle.card
    assert card["validation_gate"]["promoted"] is True
    assert card["validation_gate"]["candidate"]["fault_windows"] > 0
    assert card["training_data"]["source"] == "traces"
    assert math.isfinite(card["metrics"]["drift_threshold"])
    # the round trip scores like the fitted model
    trend = TrendDetector.from_state(bundle.trend_state)
    assert trend.threshold_ == pytest.approx(out["summary"]["trend_threshold"])
    # the imminent path's threshold, fitted on the healthy pods' first minutes at 15 s
    assert out["summary"]["windows_young"] > 0
    assert trend.imminent_threshold_ == out["summary"]["trend_imminent_threshold"] is not None


@pytest.mark.slow
def test_training_is_reproducible(healthy_trace: Path, trained: dict, tmp_path: Path) -> None:
    again = job.run(_args(traces=[healthy_trace], out=tmp_path))
    a, b = trained["out"]["summary"], again["summary"]
    assert a["trend_threshold"] == pytest.approx(b["trend_threshold"])
    assert a["drift_threshold"] == pytest.approx(b["drift_threshold"], rel=1e-5)


def test_gate_refuses_a_deliberately_worse_candidate(trained: dict, healthy_trace: Path) -> None:
    bundle = store.load_bundle(trained["root"])
    good_trend = TrendDetector.from_state(bundle.trend_state)
    from detector.settings import WindowSettings
    from training.fit import collect_windows, split_by_pod

    windows = collect_windows(scenarios.generate_healthy(n_pods=6, hours=4.0, seed=11)[0],
                              windows=WindowSettings())
    _f, hold = split_by_pod(windows, 0.5, 0)
    vs = job.validation_set(windows.subset(hold), hours=6.0)
    good = job.validation_score(good_trend, bundle.drift, vs)
    # the worse candidate: same models, thresholds pushed so high that nothing is flagged
    worse_trend = copy.deepcopy(good_trend)
    worse_trend.threshold_ = 1e12
    worse_trend.fast_threshold_ = 1e12  # both paths: the fast one is scaled to the slow one
    worse_drift = copy.deepcopy(bundle.drift)
    worse_drift.threshold_ = 1e12
    worse = job.validation_score(worse_trend, worse_drift, vs)
    assert good["fault_window_recall"] > 0.3
    assert worse["fault_window_recall"] == 0.0
    assert worse["score"] < good["score"]
    assert job.gate_decision(worse, good, margin=0.01) is False
    assert job.gate_decision(good, worse, margin=0.01) is True
    assert job.gate_decision(good, None, margin=0.0) is True


@pytest.mark.slow
def test_second_run_compares_with_the_model_in_service(trained: dict, healthy_trace: Path
                                                       ) -> None:
    first = store.resolve_current(trained["root"])
    out = job.run(_args(traces=[healthy_trace], out=trained["root"], margin=0.5))
    gate = out["gate"]
    assert gate["current"] is not None and gate["current_version"] == first.name
    assert out["promoted"] is True  # same data, same seed: not worse
    assert store.resolve_current(trained["root"]) == Path(out["model"])


def test_incident_pods_are_excluded() -> None:
    trace, _ = scenarios.generate_healthy(n_pods=3, hours=1.0, seed=2,
                                          imperfections=scenarios.Imperfections.none())
    pods = trace[["namespace", "pod"]].drop_duplicates().astype(str).values.tolist()
    ns, pod = pods[0]
    rs = trace[(trace["metric"] == RESTARTS) & (trace["pod"] == pod)].copy()
    assert len(rs), "the generator emits the restart counter"
    rs = rs.sort_values("timestamp")
    rs.loc[rs.index[len(rs) // 2:], "value"] = rs["value"].max() + 1  # one restart
    bumped = pd.concat([trace[~trace.index.isin(rs.index)], rs], ignore_index=True)
    bad = incident_pods(bumped)
    assert bad == {(ns, pod)}
    kept = without_pods(bumped, bad)
    assert pod not in set(kept["pod"].astype(str))
    assert len(kept) < len(bumped)


def test_every_pod_with_incidents_is_a_clear_error(tmp_path: Path) -> None:
    trace, _ = scenarios.generate_healthy(n_pods=2, hours=1.0, seed=2)
    trace = trace.copy()
    is_rs = trace["metric"] == RESTARTS
    trace.loc[is_rs, "value"] = np.arange(int(is_rs.sum()), dtype=float)
    path = save_trace(trace, tmp_path / "t.parquet")
    with pytest.raises(InputError, match="incident"):
        job.run(_args(traces=[path], out=tmp_path / "m"))


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("6h", 21600),
                                          ("7d", 604800), ("2w", 1209600), ("30", 30)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "-5m", "0h", "7y"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(InputError):
        parse_duration(bad)


def test_chunks_stay_under_the_point_limit() -> None:
    cs = chunks(0.0, 7 * 86400.0, 15.0)
    assert len(cs) > 1
    for lo, hi in cs:
        assert (hi - lo) / 15.0 + 1 <= 11_000
    assert cs[0][0] == 0.0 and cs[-1][1] == 7 * 86400.0
    for (_, a), (b, _) in itertools.pairwise(cs):
        assert b == a + 15.0  # no sample lost or fetched twice between chunks


def test_gpu_check_script_runs_its_cpu_path(capsys: pytest.CaptureFixture[str]) -> None:
    from training import gpu_check

    assert gpu_check.main(["--devices", "cpu", "--pods", "6", "--hours", "3", "--epochs", "3"]
                          ) == 0
    out = capsys.readouterr().out
    assert '"device": "cpu"' in out and "samples_per_s" in out


def test_gpu_check_refuses_cuda_without_a_gpu() -> None:
    import torch

    from training import gpu_check

    if torch.cuda.is_available():  # on a GPU machine the real comparison runs instead
        assert gpu_check.main(["--pods", "6", "--hours", "3", "--epochs", "3"]) == 0
    else:
        assert gpu_check.main(["--devices", "cuda", "cpu"]) == 2
