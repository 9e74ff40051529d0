"""The persisted JSON state shared by the array detectors (autoencoder, forest).

Both write it with :func:`detector.models.base.array_state` and check it on load with
:func:`detector.models.base.read_array_state`; a malformed state is a ModelIntegrityError
through either detector's real ``load`` (never a TypeError/ValueError from deep inside).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from detector.errors import ModelIntegrityError
from detector.models.autoencoder import AE_JSON, AutoencoderConfig, AutoencoderDetector
from detector.models.base import ARRAY_STATE_KEYS, read_array_state
from detector.models.forest import FOREST_JSON, ForestConfig, IsolationForestDetector
from tests.support.drift_data import NAMES, healthy

torch.set_num_threads(1)

_KINDS: dict[str, tuple[Callable[[], Any], str]] = {
    "autoencoder": (lambda: AutoencoderDetector(AutoencoderConfig(max_epochs=3, patience=2),
                                                device="cpu"), AE_JSON),
    "forest": (lambda: IsolationForestDetector(ForestConfig(n_estimators=20)), FOREST_JSON),
}
_FITTED: dict[str, Any] = {}


@pytest.fixture(params=sorted(_KINDS))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Path, Path]:
    """(detector class, model dir, its JSON state file) for a small fitted, thresholded model."""
    kind = str(request.param)
    make, json_name = _KINDS[kind]
    if kind not in _FITTED:
        det = make().fit(healthy(400, seed=1), NAMES)
        det.infer_threshold(healthy(200, seed=2), 0.05)
        _FITTED[kind] = det
    _FITTED[kind].save(tmp_path)
    return type(_FITTED[kind]), tmp_path, tmp_path / json_name


def test_state_has_exactly_the_shared_keys(saved: tuple[Any, Path, Path]) -> None:
    cls, d, path = saved
    state = json.loads(path.read_text())
    assert set(state) == ARRAY_STATE_KEYS
    assert state["feature_names"] == list(NAMES)
    loaded = cls.load(d)
    assert loaded.state_dict() == state


_BAD: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "foreign format": (lambda s: {**s, "format": "somebody.else/1"}, "format"),
    "not an object": (lambda s: [s], "format"),
    "extra key": (lambda s: {**s, "extra": 1}, "keys"),
    "missing key": (lambda s: {k: v for k, v in s.items() if k != "threshold"}, "keys"),
    "names a string": (lambda s: {**s, "feature_names": "abc"}, "feature_names"),
    "names not str": (lambda s: {**s, "feature_names": [1] * len(NAMES)}, "feature_names"),
    "threshold text": (lambda s: {**s, "threshold": "0.5"}, "threshold"),
    "threshold bool": (lambda s: {**s, "threshold": True}, "threshold"),
    "config a list": (lambda s: {**s, "config": []}, "config"),
    "misspelled config": (lambda s: {**s, "config": {**s["config"], "sed": 1}}, "unknown"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_malformed_state_is_refused_on_load(saved: tuple[Any, Path, Path], case: str) -> None:
    cls, d, path = saved
    mutate, match = _BAD[case]
    path.write_text(json.dumps(mutate(json.loads(path.read_text()))))
    with pytest.raises(ModelIntegrityError, match=match):
        cls.load(d)


def test_null_threshold_round_trips() -> None:
    state: dict[str, Any] = {"format": "x/1", "config": {}, "scaler": {}, "feature_names": ["a"],
             "threshold": None}
    assert read_array_state(state, "x/1", "x").threshold is None
    assert read_array_state({**state, "threshold": 2}, "x/1", "x").threshold == 2.0
