"""A detector is one module plus one registration line (issue 12): a throwaway detector
(``tests/support/scratch_detector.py``, written as a ``detector.models`` module would be) is
registered by one line and then picked up, with no other edit, by the registry's checks, the
contract suite, the model store, training and the pipeline's decision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector import scenarios
from detector.errors import ModelIntegrityError
from detector.models import registry, store
from detector.models.univariate import SPEC as UNIVARIATE
from detector.pipeline import Pipeline, default_model_dir
from detector.replay import iter_batches
from detector.settings import DetectionSettings, WindowSettings
from tests.support import scratch_detector as scratch
from training.fit import collect_windows, fit_detectors

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trace() -> pd.DataFrame:
    trace, _ = scenarios.generate_healthy(n_pods=4, hours=3.0, seed=7)
    return trace


def test_the_registry_checks_what_a_registration_must_say(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    assert registry.check() == []
    # its kind is not in detector.kinds yet: named
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, scratch.SPEC))
    assert registry.check() == ["'scratch' decides 'scratch_growth', which detector.kinds does "
                                "not declare"]
    monkeypatch.undo()
    scratch.register(monkeypatch)  # the line and the kind's row
    assert registry.check() == []
    from dataclasses import replace

    from detector import kinds

    leak = replace(kinds.BY_NAME["memory_leak"], detector="drift")  # a row naming another
    monkeypatch.setitem(kinds.BY_NAME, "memory_leak", leak)
    assert "kind 'memory_leak' names detector 'drift', but 'trend' decides it" in (
        registry.check())
    monkeypatch.setitem(kinds.BY_NAME, "memory_leak", replace(leak, detector="trend"))
    assert registry.check((*registry.REGISTRY, scratch.SPEC)) == [
        "detector 'scratch' registered twice", "kind 'scratch_growth' is decided twice"]
    # a decider must say which kinds it decides (its verdicts' kinds are read from the table)
    registered = tuple(s for s in registry.REGISTRY if s is not scratch.SPEC)
    assert "'scratch' has a pipeline decider but decides no kind" in registry.check(
        (*registered, replace(scratch.SPEC, kinds=())))


def test_the_contract_suite_runs_over_a_newly_registered_detector() -> None:
    """The contract suite itself, run with the scratch detector registered (as a plugin, so
    before the suite is imported): its window-contract tests run for it and pass."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
         "tests.support.scratch_detector", "tests/test_detector_contract.py", "-k",
         "scratch or under_the_contract", "-v"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    ran = [line for line in out.stdout.splitlines() if "[scratch]" in line and "PASSED" in line]
    assert len(ran) == 5, out.stdout[-3000:]  # the five window-contract tests


def test_the_store_and_the_pipeline_pick_it_up(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, trace: pd.DataFrame) -> None:
    shipped = store.load_bundle(default_model_dir())  # (a bundle without it: refused after)
    scratch.register(monkeypatch)
    with pytest.raises(ModelIntegrityError, match=r"no files of detector\(s\) \['scratch'\] "
                                                  r"\(registered after it was trained\); "
                                                  r"retrain"):
        store.load_bundle(default_model_dir())
    det = scratch.ScratchDetector()
    det.fitted_, det.threshold_ = True, -1.0  # every window with a memory limit "grew"
    path = store.save_bundle(tmp_path, {**shipped.detectors, "scratch": det}, version="s1")
    card = json.loads((path / store.CARD).read_text())
    assert "scratch.json" in card["files"]
    back = store.load_bundle(path)
    assert back.detectors["scratch"].get_state() == det.get_state()
    (path / "scratch.json").write_text('{"fitted": true, "threshold": 9.0, "base": 0.0}')
    with pytest.raises(ModelIntegrityError, match="checksum"):
        store.load_bundle(path)
    (path / "scratch.json").write_text(json.dumps(det.get_state()))

    pipe = Pipeline.load(path)
    assert set(pipe.others) == {"scratch"} and [n for n, _ in pipe.deciders()] == [
        "trend", "drift", "univariate", "scratch"]
    raised = [v for _, batch, _ in iter_batches(trace, step_s=300.0)
              for v in pipe.evaluate(batch) if v.is_anomaly]
    assert raised and {v.kind for v in raised} == {"scratch_growth"}
    assert all(v.explanation is not None and "working set" in v.explanation.text
               for v in raised)
    assert all(v.score > v.threshold == -1.0 for v in raised)
    key = next(iter(pipe.known_pods()))
    pipe.forget(key)
    dec = dict(pipe.deciders())["scratch"]
    assert isinstance(dec, scratch.ScratchDecider) and dec.forgotten == [key]
    # a hot reload carries the decider's state over
    again = Pipeline.load(path)
    again.adopt_state(pipe)
    assert dict(again.deciders())["scratch"].forgotten == [key]  # type: ignore[attr-defined]


def test_training_fits_every_registered_detector(monkeypatch: pytest.MonkeyPatch,
                                                 trace: pd.DataFrame) -> None:
    """``fit_detectors`` fits what the registry lists (here the custom-metric detector and
    the scratch one only, so the test trains no autoencoder)."""
    scratch.register(monkeypatch)
    monkeypatch.setattr(registry, "REGISTRY", (UNIVARIATE, scratch.SPEC))
    healthy = collect_windows(trace, windows=WindowSettings())
    result = fit_detectors(healthy, detection=DetectionSettings(), seed=0)
    assert set(result.detectors) == {"univariate", "scratch"}
    fitted = result.detectors["scratch"]
    assert fitted.fitted_ and result.summary["scratch_threshold"] == fitted.threshold_
    assert 0.0 < fitted.threshold_ < 1.0
    assert np.isfinite(fitted.base_)
