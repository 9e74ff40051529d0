"""Schemas of saved model state, checked when it is read back (pydantic models).

A model bundle is untrusted input (it comes from a volume anyone with write access to it
could have changed). Every JSON document a detector reloads is validated here before a
number of it is used: strict types (no ``"0.5"`` for a number, no ``true`` for 1), finite
numbers only, unknown keys refused (a misspelled key is an error, not ignored), missing keys
refused. :func:`read_state` turns a failure into one :class:`ModelIntegrityError` naming what
was read and every bad field (``invalid drift state: calibrators.forest.beta: Input should be
greater than 0 (got -1.0)``).

The detectors (``detector.models.base``, ``drift``, ``univariate``, ``trend``) and the store
(``detector.models.store``) call :func:`read_state`; this module imports nothing of theirs.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from datetime import datetime
from itertools import pairwise
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import ErrorDetails

from detector.errors import ModelIntegrityError, PodguardError

Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SavedState(BaseModel):
    """Base of every saved-state schema: strict, finite, no unknown keys, read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


S = TypeVar("S", bound=BaseModel)


def _problems(e: ValidationError) -> str:
    errors: list[ErrorDetails] = e.errors(include_url=False)
    where = [".".join(str(p) for p in err["loc"]) for err in errors]
    unknown = sorted(w for w, err in zip(where, errors, strict=True)
                     if err["type"] == "extra_forbidden")
    missing = sorted(w for w, err in zip(where, errors, strict=True) if err["type"] == "missing")
    out = [f"{what} keys {keys}" for what, keys in (("unknown", unknown), ("missing", missing))
           if keys]
    for w, err in zip(where, errors, strict=True):
        if err["type"] in ("extra_forbidden", "missing"):
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        if err["type"] != "value_error" and not isinstance(got, dict | list):
            msg += f" (got {got!r})"
        out.append(f"{w}: {msg}" if w else msg)
    return "; ".join(out)


def read_state(model: type[S], data: object, what: str, *, fmt: str | None = None,
               context: Mapping[str, Any] | None = None,
               error: type[PodguardError] = ModelIntegrityError) -> S:
    """``data`` (read from JSON) validated as ``model``; else ``error`` (a
    :class:`ModelIntegrityError`) naming ``what`` (e.g. ``"drift state"``,
    ``"model_card.json"``) and every bad field.

    With ``fmt``, a document that is not an object with that ``format`` is refused first, in
    one line (a foreign file is not a list of field errors)."""
    if fmt is not None and (not isinstance(data, Mapping) or data.get("format") != fmt):
        raise error(f"not a podguard {what} (format != {fmt})")
    try:
        return model.model_validate(data, context=dict(context or {}))
    except ValidationError as e:
        raise error(f"invalid {what}: {_problems(e)}") from e


# ------------------------------------------------------------------------ the detectors


C = TypeVar("C")
_CONFIG_MODELS: dict[type, type[SavedState]] = {}


def read_config(cls: type[C], data: object, what: str | None = None, *,
                error: type[PodguardError] = ModelIntegrityError) -> C:
    """The config dataclass ``cls`` (e.g. ``ForestConfig``) from saved ``data``: each field
    strictly of its annotated type (a ``tuple[float, ...]`` is a JSON list), unknown keys
    refused, missing ones take the dataclass's default; then ``cls``'s own checks run."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    model = _CONFIG_MODELS.get(cls)
    if model is None:
        hints = typing.get_type_hints(cls)
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            ann = hints[f.name]
            if typing.get_origin(ann) is tuple:  # JSON has lists
                ann = list[typing.get_args(ann)[0]]  # type: ignore[misc]
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else ...)
            fields[f.name] = (ann, default)
        model = _CONFIG_MODELS[cls] = create_model(cls.__name__, __base__=SavedState, **fields)
    st = read_state(model, data, what or cls.__name__, error=error)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in st.model_dump().items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise error(f"{what or cls.__name__}: {exc}") from exc


class ScalerState(SavedState):
    """A :class:`~detector.models.forest.RobustScaler`: per feature a center and a scale > 0."""

    center: list[Finite]
    scale: list[Positive]
    clip: Positive

    @model_validator(mode="after")
    def _lengths(self) -> ScalerState:
        if len(self.center) != len(self.scale):
            raise ValueError(f"{len(self.center)} centers but {len(self.scale)} scales")
        return self



class ArrayDetectorState(SavedState):
    """The JSON half of an array detector (autoencoder, forest): ``base.array_state``."""

    format: str
    config: dict[str, Any]
    scaler: dict[str, Any]
    feature_names: list[str]
    threshold: Finite | None


class CalibratorState(SavedState):
    """A :class:`~detector.models.drift.TailCalibrator`: a monotone map score -> healthy
    quantile, with an exponential tail of rate ``beta`` beyond the last knot."""

    knots: list[Finite] = Field(min_length=2)
    probs: list[Finite]
    beta: Positive

    @model_validator(mode="after")
    def _monotone(self) -> CalibratorState:
        k, p = self.knots, self.probs
        if len(p) != len(k):
            raise ValueError(f"{len(k)} knots but {len(p)} probs")
        if any(b <= a for a, b in pairwise(k)):
            raise ValueError("knots must increase")
        if any(b < a for a, b in pairwise(p)) or p[-1] >= 1.0:
            raise ValueError("probs must be non-decreasing and below 1")
        return self


class Calibrators(SavedState):
    autoencoder: CalibratorState
    forest: CalibratorState


class DriftState(SavedState):
    """``drift.json``: the fused drift detector over its two members."""

    format: str
    config: dict[str, Any]
    feature_names: list[str]
    calibrators: Calibrators
    threshold: Finite | None


class UnivariateState(SavedState):
    """The custom-metric detector: thresholds per metric family (> 0)."""

    format: str
    config: dict[str, Any]
    thresholds: dict[str, Positive]
    default_threshold: Positive
    fit_info: dict[str, Any]


def _json_tuple(v: object) -> object:
    return tuple(v) if isinstance(v, list) else v  # JSON has no tuples


_IMMINENT = ("imminent_min_s", "imminent_horizon_s", "imminent_threshold")


class TrendState(SavedState):
    """``trend.json``: the leak detector's configuration, thresholds and healthy reference.

    Version 3 added the imminent path (its three keys); a version-2 state has none of them.
    Each ``explain_background`` row has ``context["explain_width"]`` values when given."""

    name: Literal["trend"]
    version: Literal[2, 3]
    views: list[Annotated[tuple[Finite, int], BeforeValidator(_json_tuple)]]
    u0: Finite
    min_span_s: Finite
    settle_s: Finite
    fast_span_s: Finite
    fast_min_s: Finite
    fast_horizon_s: Finite
    threshold: Finite | None
    fast_threshold: Finite | None
    fitted: bool
    healthy_quantiles: list[Finite]
    explain_background: list[list[Finite]]
    imminent_min_s: Finite | None = None
    imminent_horizon_s: Finite | None = None
    imminent_threshold: Finite | None = None

    @model_validator(mode="before")
    @classmethod
    def _keys_of_its_version(cls, data: object) -> object:
        if isinstance(data, Mapping) and data.get("version") == 3:
            missing = [k for k in _IMMINENT if k not in data]
            if missing:
                raise ValueError(f"a version-3 trend state needs {missing}")
        elif isinstance(data, Mapping) and data.get("version") == 2:
            extra = [k for k in _IMMINENT if k in data]
            if extra:
                raise ValueError(f"a version-2 trend state has no {extra}")
        return data

    @model_validator(mode="after")
    def _rows(self, info: ValidationInfo) -> TrendState:
        width = (info.context or {}).get("explain_width")
        bad = [i for i, r in enumerate(self.explain_background) if width is not None
               and len(r) != width]
        if bad:
            raise ValueError(f"explain_background rows {bad} do not have {width} values")
        return self


# ------------------------------------------------------------------------ the bundle card


class CardFile(BaseModel):
    """One file a card lists (its checksum; ``bytes`` and later keys are informative)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _iso_time(v: object) -> object:
    """An ISO-8601 text (strict mode reads no text as a datetime); the offset is required."""
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an ISO-8601 time") from None
    return v


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_time)]


class CardHead(BaseModel):
    """What the store relies on in ``model_card.json``; the rest of the card (metrics,
    data range, libraries, ``card_extra``) is information and kept as it is."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    format: str
    version: str
    features: list[str]
    files: dict[str, CardFile]
    card_sha256: str | None = None


class CardTime(BaseModel):
    """When a bundle was made (a card without it still loads; its age is then unknown)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    version: str
    created: IsoTime


__all__ = ["ArrayDetectorState", "CalibratorState", "CardFile", "CardHead", "CardTime",
           "DriftState", "Finite", "Positive", "SavedState", "ScalerState", "TrendState",
           "UnivariateState", "read_config", "read_state"]
