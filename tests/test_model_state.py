"""Saved model state is validated by the schemas of :mod:`detector.models.state`: a bad field
is a ModelIntegrityError naming the document and the field (and what was found there)."""

from __future__ import annotations

from typing import Any

import pytest

from detector.errors import ConfigError, ModelIntegrityError
from detector.models.drift import TailCalibrator
from detector.models.state import (
    CardHead,
    CardTime,
    DriftState,
    UnivariateState,
    read_config,
    read_state,
)

_CAL: dict[str, Any] = {"knots": [0.0, 1.0, 2.0], "probs": [0.1, 0.5, 0.9], "beta": 1.0}
_FMT = "podguard.drift/x"
_DRIFT: dict[str, Any] = {"format": _FMT, "config": {}, "feature_names": ["a"],
          "calibrators": {"autoencoder": _CAL, "forest": _CAL}, "threshold": 0.5}


@pytest.mark.parametrize(("change", "words"), [
    ({"threshold": "0.5"}, "threshold: Input should be a valid number (got '0.5')"),
    ({"threshold": True}, "threshold: Input should be a valid number (got True)"),
    ({"threshold": float("nan")}, "threshold: Input should be a finite number"),
    ({"calibrators": {"autoencoder": _CAL}}, "missing keys ['calibrators.forest']"),
    ({"calibrators": {"autoencoder": _CAL, "forest": {**_CAL, "beta": -1.0}}},
     "calibrators.forest.beta: Input should be greater than 0 (got -1.0)"),
    ({"calibrators": {"autoencoder": {**_CAL, "knots": [2.0, 1.0, 0.0]}, "forest": _CAL}},
     "calibrators.autoencoder: knots must increase"),
    ({"feature_names": ["a", 1], "thresold": 1}, "unknown keys ['thresold']"),
])
def test_a_bad_drift_state_names_the_field(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ModelIntegrityError) as e:
        read_state(DriftState, {**_DRIFT, **change}, "drift state", fmt=_FMT)
    assert str(e.value).startswith("invalid drift state: ") and words in str(e.value), e.value
    if "thresold" in change:
        assert "feature_names.1: Input should be a valid string (got 1)" in str(e.value)


def test_a_foreign_document_is_refused_in_one_line() -> None:
    for doc in ([_DRIFT], {**_DRIFT, "format": "somebody.else/1"}, None):
        with pytest.raises(ModelIntegrityError, match=r"^not a podguard drift state \(format "
                                                      r"!= podguard\.drift/x\)$"):
            read_state(DriftState, doc, "drift state", fmt=_FMT)
    good = read_state(DriftState, _DRIFT, "drift state", fmt=_FMT)
    assert good.calibrators.forest.knots == [0.0, 1.0, 2.0] and good.threshold == 0.5


def test_univariate_thresholds_must_be_positive_numbers() -> None:
    doc = {"format": "u", "config": {}, "thresholds": {"http": 4.0}, "default_threshold": 5,
           "fit_info": {}}
    assert read_state(UnivariateState, doc, "univariate state").default_threshold == 5.0
    with pytest.raises(ModelIntegrityError, match=r"thresholds\.http: Input should be greater "
                                                  r"than 0 \(got 0\)"):
        read_state(UnivariateState, {**doc, "thresholds": {"http": 0}}, "univariate state")


def test_the_card_head_and_its_created_time() -> None:
    card = {"format": "b", "version": "v1", "created": "2026-01-01T00:00:00+00:00",
            "features": ["a"], "files": {"a.json": {"sha256": "0" * 64, "bytes": 3}},
            "metrics": {"auc": 0.9}}
    head = read_state(CardHead, card, "model_card.json")
    assert head.files["a.json"].sha256 == "0" * 64 and head.model_extra == {
        "created": card["created"], "metrics": {"auc": 0.9}}  # information, kept as it is
    assert read_state(CardTime, card, "model_card.json").created.timestamp() == 1767225600
    cases: list[tuple[dict[str, Any], str]] = [
        ({"created": "2026-01-01T00:00:00"}, "created: Input should have timezone info"),
        ({"created": "yesterday"}, "'yesterday' is not an ISO-8601 time"),
        ({"files": {"a.json": {"sha256": "zz"}}}, "files.a.json.sha256")]
    for bad, words in cases:
        with pytest.raises(ModelIntegrityError) as e:
            read_state(CardTime if "created" in bad else CardHead, {**card, **bad},
                       "model_card.json")
        assert str(e.value).startswith("invalid model_card.json: ") and words in str(e.value)


def test_a_calibrator_read_by_itself_is_a_config_error() -> None:
    cal = TailCalibrator.from_dict(_CAL)
    assert list(cal.knots) == _CAL["knots"]
    with pytest.raises(ConfigError, match=r"invalid calibrator: unknown keys \['u'\]"):
        TailCalibrator.from_dict({**_CAL, "u": 0.9})


def test_a_saved_config_is_read_strictly_into_its_dataclass() -> None:
    from detector.models.forest import ForestConfig, RobustScaler, config_from_dict
    from detector.models.univariate import UnivariateConfig

    assert read_config(ForestConfig, {"n_estimators": 20, "clip": 5}) == \
        ForestConfig(n_estimators=20, clip=5.0)  # missing keys take the defaults
    assert read_config(UnivariateConfig, {"scales": [0, 3.5]}).scales == (0.0, 3.5)
    for data, words in [({"n_estimators": "200"}, "n_estimators: Input should be a valid "
                                                  "integer (got '200')"),
                        ({"seed": 1.5}, "seed: Input should be a valid integer"),
                        ({"n_estimators": 0}, "n_estimators >= 1"),  # the dataclass's check
                        ({"n_estimator": 20}, "unknown keys ['n_estimator']")]:
        with pytest.raises(ModelIntegrityError) as e:
            read_config(ForestConfig, data, "forest config")
        assert str(e.value).startswith(("invalid forest config: ", "forest config: ")) \
            and words in str(e.value), e.value
    with pytest.raises(ConfigError, match=r"invalid ForestConfig: unknown keys \['x'\]"):
        config_from_dict(ForestConfig, {"x": 1})
    sc = RobustScaler.from_dict({"center": [0.0, 1.0], "scale": [1.0, 2.0], "clip": 50.0})
    assert list(sc.scale) == [1.0, 2.0]
    with pytest.raises(ConfigError, match=r"scale\.1: Input should be greater than 0"):
        RobustScaler.from_dict({"center": [0.0, 1.0], "scale": [1.0, 0.0], "clip": 50.0})
    with pytest.raises(ConfigError, match="2 centers but 1 scales"):
        RobustScaler.from_dict({"center": [0.0, 1.0], "scale": [1.0], "clip": 50.0})


def test_the_shipped_trend_state_fits_its_schema_and_a_bad_one_is_named() -> None:
    import json
    from pathlib import Path

    from detector.models.state import TrendState

    root = Path(__file__).resolve().parents[1] / "data" / "model"
    doc = json.loads((root / (root / "current").read_text().strip() / "trend.json").read_text())
    width = len(doc["explain_background"][0])
    st = read_state(TrendState, doc, "trend state", context={"explain_width": width})
    assert st.version in (2, 3) and st.views and all(isinstance(k, int) for _, k in st.views)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"version": 4}, "version: Input should be 2 or 3 (got 4)"),
        ({"views": [[3600, "8"]]}, "views.0.1: Input should be a valid integer"),
        ({"fitted": 1}, "fitted: Input should be a valid boolean (got 1)"),
        ({"explain_background": [[0.0]]}, f"explain_background rows [0] do not have {width}")]
    for bad, words in cases:
        with pytest.raises(ModelIntegrityError) as e:
            read_state(TrendState, {**doc, **bad}, "trend state",
                       context={"explain_width": width})
        assert words in str(e.value), e.value


def test_the_trend_state_keys_are_the_schema_fields_and_the_shipped_bytes_are_kept() -> None:
    """TrendDetector.get_state writes exactly TrendState's fields (declared once, there), a
    constructor parameter or a fitted ``<key>_`` attribute each; the shipped trend.json is
    written back byte for byte after a load."""
    import inspect
    import json
    from pathlib import Path

    from detector.models.state import TrendState
    from detector.models.trend import TrendDetector

    root = Path(__file__).resolve().parent.parent / "data" / "model"
    path = root / (root / "current").read_text().strip() / "trend.json"
    raw = path.read_bytes()
    det = TrendDetector.from_state(json.loads(raw))
    state = det.get_state()
    assert set(state) == set(TrendState.model_fields)
    params = set(inspect.signature(TrendDetector.__init__).parameters) - {"self"}
    for key in set(state) - params - {"name", "version"}:
        assert hasattr(det, f"{key}_"), key
    assert json.dumps(state, indent=2, sort_keys=True, allow_nan=False).encode() == raw
    back = TrendDetector.from_state(json.loads(json.dumps(state)))
    assert back.get_state() == state
