"""A throwaway detector, written the way a new detector module of ``detector.models`` is: its
class and one ``SPEC``; :func:`register` is the one line a real one adds to
``detector.models.registry.REGISTRY`` (plus, since it decides a kind of its own, that kind's
row in ``detector.kinds``).

Its score is how much of the memory limit the working set grew by over the window (newest
point less oldest), its threshold a healthy quantile. Loaded as a pytest plugin
(``-p tests.support.scratch_detector``) it registers itself before the test modules are
imported, so the contract suite runs over it with no edit of its own
(``tests/test_registry.py``).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pytest

from detector import kinds
from detector.errors import NotFittedError, ThresholdNotInferredError
from detector.models import registry
from detector.models.base import Attribution, Prediction, attributions, threshold_at_fpr
from detector.models.spec import (
    Decider,
    DetectorSpec,
    Evidence,
    FitContext,
    Fitted,
    Judged,
    Member,
)
from detector.windows import CHANNELS, WindowBatch

KIND = "scratch_growth"
_WS = CHANNELS.index("mem_working_set")
_NAMES = ("mem_working_set.growth",)


class ScratchDetector:
    """The working set's growth over each window, as a fraction of the memory limit (0
    without a limit or data)."""

    name = "scratch"

    def __init__(self) -> None:
        self.fitted_ = False
        self.threshold_: float | None = None
        self.base_ = 0.0

    def fit(self, batch: WindowBatch, /) -> ScratchDetector:
        self.base_ = float(np.median(self._fill(batch))) if len(batch) else 0.0
        self.fitted_ = True
        return self

    @staticmethod
    def _fill(batch: WindowBatch) -> np.ndarray:
        ws = batch.values[:, _WS, :].astype(np.float64)
        lim = batch.limits[:, _WS].astype(np.float64)
        fin = np.isfinite(ws)
        L = ws.shape[-1]
        first = ws[np.arange(len(ws)), np.argmax(fin, axis=-1)] if len(ws) else ws[:, 0]
        last = ws[np.arange(len(ws)), L - 1 - np.argmax(fin[:, ::-1], axis=-1)] if len(ws) \
            else ws[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (last - first) / lim
        return np.where(np.isfinite(f), f, 0.0)

    def score(self, batch: WindowBatch, /) -> np.ndarray:
        if not self.fitted_:
            raise NotFittedError("ScratchDetector is not fitted")
        return self._fill(batch)

    def infer_threshold(self, batch: WindowBatch, fpr: float, /) -> float:
        """Twice the healthy quantile at ``fpr`` (a margin for pods it has not seen: an
        epoch's ramp grows a healthy working set by a fifth of its limit in a window)."""
        self.threshold_ = 2.0 * threshold_at_fpr(self.score(batch), fpr)
        return self.threshold_

    def predict(self, batch: WindowBatch, /) -> Prediction:
        s = self.score(batch)
        if self.threshold_ is None:
            raise ThresholdNotInferredError("ScratchDetector has no threshold")
        return Prediction(score=s, threshold=self.threshold_, is_anomaly=s > self.threshold_)

    def explain(self, batch: WindowBatch, /) -> list[Attribution]:
        s = self.score(batch)
        return attributions((s - self.base_)[:, None], self.base_, _NAMES)

    def get_state(self) -> dict[str, Any]:
        return {"fitted": self.fitted_, "threshold": self.threshold_, "base": self.base_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ScratchDetector:
        det = cls()
        det.fitted_, det.threshold_, det.base_ = (bool(state["fitted"]), state["threshold"],
                                                  float(state["base"]))
        return det


class ScratchDecider:
    """Flags every eligible window whose working set grew by more than the threshold."""

    def __init__(self, det: ScratchDetector) -> None:
        self.det = det
        self.forgotten: list[Hashable] = []

    def judge(self, batch: WindowBatch, eligible: np.ndarray, evidence: Evidence, /
              ) -> Judged | None:
        pred = self.det.predict(batch)  # a young pod has no baseline: not judged
        return Judged(KIND, pred.is_anomaly & eligible & ~evidence.new_pod, pred.score,
                      np.full(len(batch), pred.threshold),
                      lambda i, step_s: (f"working set grew by {pred.score[i]:.0%} of its limit",
                                         {_NAMES[0]: float(pred.score[i])}))

    def settle(self, batch: WindowBatch, kinds: list[str], raised: np.ndarray, /) -> None:
        pass

    def forget(self, key: Hashable, /) -> None:
        self.forgotten.append(key)

    def adopt(self, previous: Decider, /) -> None:
        if isinstance(previous, ScratchDecider):
            self.forgotten = previous.forgotten


def _fit(ctx: FitContext) -> Fitted:
    det = ScratchDetector().fit(ctx.fit)
    return Fitted(det, {"scratch_threshold": det.infer_threshold(ctx.healthy, 0.05)})


SPEC = DetectorSpec(
    name="scratch", cls=ScratchDetector, input="window", example=ScratchDetector,
    kinds=(KIND,),
    member=Member("scratch", frozenset({"scratch.json"}),
                  lambda contents, card: ScratchDetector.from_state(
                      json.loads(contents["scratch.json"])),
                  encode=lambda det: {"scratch.json": json.dumps(det.get_state()).encode()}),
    fit=_fit, decider=ScratchDecider,
)


def register(mp: pytest.MonkeyPatch) -> None:
    """The registration line (``REGISTRY`` + ``SPEC``) and the new kind's row, undone with
    ``mp``."""
    mp.setattr(registry, "REGISTRY", (*registry.REGISTRY, SPEC))
    mp.setattr(kinds, "BY_NAME", {**kinds.BY_NAME, KIND: kinds.VerdictKind(
        KIND, "scratch", "Working set grew")})


_PLUGIN_PATCH = pytest.MonkeyPatch()


def pytest_configure(config: pytest.Config) -> None:
    """As a plugin: registered for the whole run, before any test module is imported."""
    register(_PLUGIN_PATCH)


def pytest_unconfigure(config: pytest.Config) -> None:
    _PLUGIN_PATCH.undo()
