"""Pods that expose only application metrics get real verdicts (``metric_anomaly``) through
``podguard replay`` and the default model; the univariate state rides in a bundle's card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detector.cli import main
from detector.models.univariate import DEFAULT_THRESHOLD, UnivariateDetector
from detector.models.univariate import from_card as _univariate_of

T0 = 1_767_000_000.0
FAULT_AT = T0 + 4 * 3600  # step time 2.3x on pod "trainer-bad" from hour 4


def app_only_trace(hours: float = 5.0, seed: int = 5) -> pd.DataFrame:
    """Three pods whose only metrics are step time (gauge) and a request counter."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(0, hours * 3600, 15.0)
    rows = []
    for pod in ("trainer-a", "trainer-b", "trainer-bad"):
        step = 0.41 + 0.03 * rng.standard_normal(ts.size)
        if pod == "trainer-bad":
            step = np.where(ts >= FAULT_AT, step * 2.3, step)
        reqs = np.cumsum(rng.poisson(40, ts.size)).astype(float)
        for t, s, r in zip(ts, step, reqs):
            rows.append((t, "ml", pod, "main", "node-1", "train_step_seconds", s))
            rows.append((t, "ml", pod, "main", "node-1", "app_requests_total", r))
    return pd.DataFrame(rows, columns=["timestamp", "namespace", "pod", "container", "node",
                                       "metric", "value"])


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    d = tmp_path_factory.mktemp("app")
    trace = d / "trace.csv"
    app_only_trace().to_csv(trace, index=False)
    out = d / "verdicts.jsonl"
    assert main(["replay", str(trace), "--out", str(out), "--no-progress"]) == 0
    return pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])


def test_app_only_pods_get_verdicts_that_are_not_constant(verdicts: pd.DataFrame) -> None:
    judged = verdicts[~verdicts["stale"]]
    for pod, v in judged.groupby("pod"):
        scores = v["score"].dropna()
        assert scores.nunique() > 10, f"{pod}: constant scores {scores.unique()[:5]}"
    healthy = judged[judged["pod"] != "trainer-bad"]
    assert not healthy["is_anomaly"].any(), healthy[healthy["is_anomaly"]].head()


def test_injected_fault_raises_a_metric_anomaly_with_an_explanation(
        verdicts: pd.DataFrame) -> None:
    bad = verdicts[(verdicts["pod"] == "trainer-bad") & verdicts["is_anomaly"]]
    assert len(bad), "the 2.3x step-time fault was never raised"
    first = bad.sort_values("ts").iloc[0]
    assert FAULT_AT <= first["ts"] <= FAULT_AT + 10 * 60  # within 10 min of the onset
    assert first["kind"] == "metric_anomaly"
    assert not (verdicts[(verdicts["pod"] == "trainer-bad") & (verdicts["ts"] < FAULT_AT)]
                ["is_anomaly"].any())
    text = first["explanation"]["text"]
    assert "train step seconds" in text and "x its usual level" in text, text
    assert first["score"] >= first["threshold"] == pytest.approx(DEFAULT_THRESHOLD)
    assert any(k.startswith("train_step_seconds@") for k in first["explanation"]["features"])


def test_bundle_card_carries_fitted_thresholds_or_defaults() -> None:
    assert _univariate_of({}).threshold_for("x") == DEFAULT_THRESHOLD
    det = UnivariateDetector(thresholds={"train_step_seconds": 3.5})
    card = json.loads(json.dumps({"univariate": det.get_state()}, allow_nan=False))
    back = _univariate_of(card)
    assert back.threshold_for("train_step_seconds") == 3.5
    assert back.threshold_for("other") == DEFAULT_THRESHOLD


def test_fault_is_missed_when_the_family_threshold_is_far_higher(tmp_path: Path) -> None:
    """The family threshold from the bundle is what decides (the test can fail)."""
    from detector.pipeline import Pipeline
    from detector.replay import iter_batches

    pipe = Pipeline.load()
    pipe.univariate = UnivariateDetector(thresholds={"train_step_seconds": 1e6,
                                                     "app_requests_total": 1e6})
    raised = [v for _, batch, _ in iter_batches(app_only_trace(hours=4.5), step_s=60.0)
              for v in pipe.evaluate(batch) if v.is_anomaly]
    assert raised == []


def test_a_saved_bundle_carries_the_univariate_thresholds(tmp_path: Path) -> None:
    from detector.models import store
    from detector.pipeline import Pipeline, default_model_dir

    shipped = store.load_bundle(default_model_dir())
    det = UnivariateDetector(thresholds={"train_step_seconds": 2.5})
    path = store.save_bundle(tmp_path, {**shipped.detectors, "univariate": det}, version="t1")
    assert Pipeline.load(path).univariate.threshold_for("train_step_seconds") == 2.5
    card = json.loads((path / "model_card.json").read_text())
    card["univariate"]["thresholds"]["train_step_seconds"] = -1
    (path / "model_card.json").write_text(json.dumps(card))
    from detector.errors import ModelIntegrityError

    with pytest.raises(ModelIntegrityError, match="card_sha256"):  # the card is sealed
        Pipeline.load(path)
    card["card_sha256"] = store.card_digest(card)  # re-sealed: the state itself is checked
    (path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="univariate"):
        Pipeline.load(path)


def _banks(pipe: Any) -> dict[str, Any]:
    """The custom-metric streams of a pipeline (its univariate decider's banks)."""
    from detector.models.univariate import MetricDecider

    dec = dict(pipe.deciders())["univariate"]
    assert isinstance(dec, MetricDecider)
    return dec.banks


def test_pipeline_streams_custom_metrics_and_forgets_a_pod() -> None:
    """Each step advances a per-pod state by the new grid points only (each point is
    consumed once, not once per window that holds it); a vanished pod's state goes with
    Pipeline.forget."""
    from detector.pipeline import Pipeline
    from detector.replay import iter_batches

    pipe = Pipeline.load()
    last, steps = None, 0
    for _, batch, _ in iter_batches(app_only_trace(hours=1.5), step_s=60.0):
        pipe.evaluate(batch)
        last, steps = batch, steps + 1
    assert last is not None and steps > 30
    banks = _banks(pipe)
    bank = banks["train_step_seconds"]
    assert sorted(k.pod for k in bank.tracked()) == ["trainer-a", "trainer-b", "trainer-bad"]
    rows = [bank._rows[k] for k in last.keys]
    seen = bank._state.count[rows]
    span_points = 1.5 * 3600 / last.step_s
    assert (seen <= span_points + 1).all() and (seen >= 0.8 * (span_points - 60 / last.step_s)
                                                ).all(), (seen, span_points)
    key = last.keys[0]
    pipe.forget(key)
    assert key not in bank.tracked() and len(bank) == 2
    for k in last.keys[1:]:
        pipe.forget(k)
    assert banks == {}  # the last pod gone: no custom-metric state left at all
