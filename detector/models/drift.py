"""The fused pre-failure drift detector: autoencoder + isolation forest, one calibrated score.

:class:`DriftDetector` fits both members on healthy windows, then converts each member's raw
score into a *tail score* on held-back healthy windows (:class:`TailCalibrator`):
``t = -log10 P_healthy(score >= s)``, the empirical exceedance probability in the body and an
exponential tail fitted to the top ``1 - tail_quantile`` beyond it, so that t keeps growing
(no saturation at the calibration sample size) and the members' scores become comparable
(t = 2 means "a 1-in-100 healthy window scores this high"). The fused score is the weighted
mean (default) or the max of the tail scores; its threshold is fitted state, set by
:meth:`DriftDetector.infer_threshold` at a target false-alarm rate on fresh healthy windows.

``explain`` returns the fused attribution: each member's SHAP values (TreeSHAP for the forest,
expected gradients for the autoencoder) carried into tail-score space by the secant slope of
the calibrator (:func:`.attribution.rescale_attribution`), then summed with the fusion's
weights (for ``max``, the winning member's). The values sum to ``score - base_value``; the
member mapping is an approximation documented there.

Per-pod baselines are handled upstream in the features; NaN features are imputed by the
members. Called by the daemon's pipeline, training and the model store.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.channels import channel, drift_feature_names
from detector.errors import ConfigError, InputError, ModelIntegrityError
from detector.models.attribution import combine, rescale_attribution
from detector.models.autoencoder import AE_JSON, AE_WEIGHTS, AutoencoderConfig, AutoencoderDetector
from detector.models.base import (
    Attribution,
    Prediction,
    ThresholdMixin,
    attributions,
    threshold_at_fpr,
)
from detector.models.forest import (
    FOREST_JSON,
    FOREST_WEIGHTS,
    ForestConfig,
    IsolationForestDetector,
    check_features,
    config_from_dict,
    read_tensors,
)
from detector.models.spec import (
    CARD,
    NEW_POD_S,
    Decider,
    DetectorSpec,
    Evidence,
    FitContext,
    Fitted,
    Judged,
    Member,
    json_file,
    pod_age_s,
    select_features,
)
from detector.models.state import CalibratorState, DriftState, read_state
from detector.windows import CHANNELS, THROUGHPUT_CHANNELS, WindowBatch, nanmedian_last

__all__ = ["DRIFT_JSON", "DriftConfig", "DriftDetector", "TailCalibrator"]

DRIFT_JSON = "drift.json"
_FORMAT = "podguard.drift/1"
_LN10 = math.log(10.0)


@dataclass(frozen=True)
class DriftConfig:
    """How the members' scores are calibrated and fused."""

    fusion: str = "mean"
    """"mean" (weighted mean of the tail scores) or "max"."""
    weight_autoencoder: float = 0.5
    """Weight of the autoencoder's tail score in the mean (normalised with the forest's)."""
    weight_forest: float = 0.5
    """Weight of the isolation forest's tail score in the mean."""
    calibration_fraction: float = 0.25
    """Fraction of the healthy rows given to ``fit`` held back to calibrate the tail scores."""
    tail_quantile: float = 0.9
    """Healthy quantile beyond which the exceedance probability is an exponential tail."""
    seed: int = 0
    """Seed of the fit/calibration split."""

    def __post_init__(self) -> None:
        if self.fusion not in ("mean", "max"):
            raise ConfigError(f"DriftConfig.fusion must be 'mean' or 'max', got {self.fusion!r}")
        if min(self.weight_autoencoder, self.weight_forest) < 0 or (
            self.weight_autoencoder + self.weight_forest <= 0
        ):
            raise ConfigError("DriftConfig: weights must be >= 0 and not both 0")
        if not 0.0 < self.calibration_fraction < 1.0 or not 0.5 <= self.tail_quantile < 1.0:
            raise ConfigError("DriftConfig: calibration_fraction in (0,1), tail_quantile [.5,1)")

    @property
    def weights(self) -> tuple[float, float]:
        """(autoencoder, forest) weights, normalised to sum to 1."""
        total = self.weight_autoencoder + self.weight_forest
        return self.weight_autoencoder / total, self.weight_forest / total


_GRID = 101  # knots of the body's piecewise-linear CDF


@dataclass
class TailCalibrator:
    """Maps a raw member score to ``-log10`` of its healthy exceedance probability.

    Body (score <= the ``u`` quantile): piecewise-linear empirical CDF at ``_GRID`` quantiles.
    Tail: ``P = (1 - u) exp(-(s - q_u) / beta)``, beta the mean excess over ``q_u`` (the
    exponential maximum-likelihood fit). Continuous, non-decreasing, unbounded above.
    """

    knots: np.ndarray  # (_GRID,) strictly increasing scores at probabilities probs
    probs: np.ndarray  # (_GRID,) 0 .. u
    beta: float  # scale of the exponential tail, score units

    @classmethod
    def fit(cls, scores: np.ndarray, u: float) -> TailCalibrator:
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size < 2:
            raise InputError("need at least 2 finite healthy scores to calibrate")
        probs = np.linspace(0.0, u, _GRID)
        knots = np.quantile(s, probs)
        magnitude = float(np.abs(knots).max())
        spread = max(float(knots[-1] - knots[0]), 1e-9 * (1.0 + magnitude))
        # strictly increasing under ties: steps of >= 4 ulps of the largest knot
        step = max(1e-9 * spread, 4.0 * float(np.spacing(magnitude)))
        knots = knots + np.arange(_GRID) * step
        excess = s[s > knots[-1]] - knots[-1]
        beta = float(excess.mean()) if excess.size else 0.0
        beta = max(beta, 1e-6 * spread)
        return cls(knots=knots, probs=probs, beta=beta)

    @property
    def u(self) -> float:
        return float(self.probs[-1])

    def transform(self, s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)
        q_u = self.knots[-1]
        body = -np.log10(1.0 - np.interp(np.minimum(s, q_u), self.knots, self.probs))
        tail = -math.log10(1.0 - self.u) + (s - q_u) / (self.beta * _LN10)
        return np.where(s > q_u, tail, body)

    def derivative(self, s: np.ndarray) -> np.ndarray:
        """dt/ds, for the attribution's fallback when a row sits at its base value."""
        s = np.asarray(s, dtype=np.float64)
        i = np.clip(np.searchsorted(self.knots, s) - 1, 0, _GRID - 2)
        slope_p = (self.probs[i + 1] - self.probs[i]) / (self.knots[i + 1] - self.knots[i])
        p = np.interp(np.clip(s, self.knots[0], self.knots[-1]), self.knots, self.probs)
        body = np.where(s < self.knots[0], 0.0, slope_p / ((1.0 - p) * _LN10))
        return np.where(s > self.knots[-1], 1.0 / (self.beta * _LN10), body)

    def to_dict(self) -> dict[str, Any]:
        return {
            "knots": [float(v) for v in self.knots],
            "probs": [float(v) for v in self.probs],
            "beta": self.beta,
        }

    @classmethod
    def from_dict(cls, data: object) -> TailCalibrator:
        """From :meth:`to_dict`, checked (:class:`~detector.models.state.CalibratorState`);
        :class:`ConfigError` naming the bad field otherwise."""
        return cls.from_state(read_state(CalibratorState, data, "calibrator", error=ConfigError))

    @classmethod
    def from_state(cls, st: CalibratorState) -> TailCalibrator:
        return cls(knots=np.asarray(st.knots, dtype=np.float64),
                   probs=np.asarray(st.probs, dtype=np.float64), beta=st.beta)


class DriftDetector(ThresholdMixin):
    """Autoencoder + isolation forest fused into one calibrated drift score."""

    name = "drift"

    def __init__(
        self,
        config: DriftConfig | None = None,
        autoencoder: AutoencoderDetector | None = None,
        forest: IsolationForestDetector | None = None,
    ) -> None:
        self.config = config or DriftConfig()
        self.autoencoder = autoencoder or AutoencoderDetector(AutoencoderConfig())
        self.forest = forest or IsolationForestDetector(ForestConfig())
        self.calibrators: dict[str, TailCalibrator] = {}
        self.feature_names: tuple[str, ...] = ()
        self.threshold_ = None
        self.fitted_ = False

    @property
    def members(self) -> dict[str, AutoencoderDetector | IsolationForestDetector]:
        return {"autoencoder": self.autoencoder, "forest": self.forest}

    # -- fitting and scoring ------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        feature_names: tuple[str, ...],
        groups: Sequence[Hashable] | np.ndarray | None = None,
    ) -> DriftDetector:
        """Fit both members on part of the healthy ``X``; calibrate on the rest.

        ``groups`` (one label per row, e.g. the pod) makes the calibration split by group, so
        the tail scores are calibrated on pods the members never saw, as they will be used.
        Without it rows are split at random, which overlapping windows of one pod make
        optimistic (calibration rows resemble training rows).
        """
        arr = check_features(X, len(feature_names))
        cal_idx, train_idx = self._calibration_split(arr.shape[0], groups)
        cal, train = arr[cal_idx], arr[train_idx]
        self.feature_names = tuple(feature_names)
        self.autoencoder.fit(train, self.feature_names)
        self.forest.fit(train, self.feature_names)
        self.calibrators = {
            name: TailCalibrator.fit(member.score(cal), self.config.tail_quantile)
            for name, member in self.members.items()
        }
        self.threshold_ = None
        self.fitted_ = True
        return self

    def _calibration_split(
        self, n: int, groups: Sequence[Hashable] | np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.config.seed)
        target = self.config.calibration_fraction * n
        if groups is None:
            perm = rng.permutation(n)
            n_cal = round(target)
            cal_mask = np.zeros(n, dtype=bool)
            cal_mask[perm[:n_cal]] = True
        else:
            labels = np.asarray([str(g) for g in groups])
            if labels.shape != (n,):
                raise InputError(f"groups must give one label per row ({n}), got {labels.shape}")
            uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
            if uniq.size < 2:
                raise InputError("a group-wise calibration split needs at least 2 groups")
            order = rng.permutation(uniq.size)
            # whole groups into calibration until it holds about calibration_fraction of rows
            take = np.cumsum(counts[order]) <= max(target, counts[order[0]])
            take[-1] = False  # at least one group left to fit on
            cal_mask = np.isin(inverse, order[take])
        cal_idx, train_idx = np.flatnonzero(cal_mask), np.flatnonzero(~cal_mask)
        if cal_idx.size < 20 or train_idx.size < 20:
            raise InputError(
                f"need >= 20 rows each to fit and calibrate; got {train_idx.size} and "
                f"{cal_idx.size} of {n}"
            )
        return cal_idx, train_idx

    def score_components(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Raw and tail scores of each member: keys ``<member>.raw`` / ``<member>.tail``."""
        self._check_fitted()
        arr = check_features(X, len(self.feature_names))
        out: dict[str, np.ndarray] = {}
        for name, member in self.members.items():
            raw = member.score(arr)
            out[f"{name}.raw"] = raw
            out[f"{name}.tail"] = self.calibrators[name].transform(raw)
        return out

    def _fuse(self, t_ae: np.ndarray, t_forest: np.ndarray) -> np.ndarray:
        if self.config.fusion == "max":
            return np.maximum(t_ae, t_forest)
        w_ae, w_forest = self.config.weights
        return w_ae * t_ae + w_forest * t_forest

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fused tail score per row (float64, higher = more anomalous; 2 ~ 1-in-100)."""
        c = self.score_components(X)
        return self._fuse(c["autoencoder.tail"], c["forest.tail"])

    def infer_threshold(self, X: np.ndarray, fpr: float) -> float:
        self.threshold_ = threshold_at_fpr(self.score(X), fpr)
        return self.threshold_

    def predict(self, X: np.ndarray) -> Prediction:
        threshold = self._check_threshold()
        s = self.score(X)
        return Prediction(score=s, threshold=threshold, is_anomaly=s > threshold)

    # -- explanations -------------------------------------------------------------------
    def _member_tail_shap(self, name: str, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        member = self.members[name]
        cal = self.calibrators[name]
        phi, base, raw = member.score_shap(X)
        t_base = float(cal.transform(np.array([base]))[0])
        t_x = cal.transform(raw)
        phi_t = rescale_attribution(phi, base, raw, t_base, t_x, cal.derivative(raw))
        return phi_t, np.full(raw.shape[0], t_base)

    def explain(self, X: np.ndarray) -> list[Attribution]:
        """Fused attribution per row (positive = pushes towards anomalous)."""
        self._check_fitted()
        arr = check_features(X, len(self.feature_names))
        phi_ae, base_ae = self._member_tail_shap("autoencoder", arr)
        phi_f, base_f = self._member_tail_shap("forest", arr)
        if self.config.fusion == "max":
            c = self.score_components(arr)
            ae_wins = c["autoencoder.tail"] >= c["forest.tail"]
            phi = np.where(ae_wins[:, None], phi_ae, phi_f)
            base = np.where(ae_wins, base_ae, base_f)
        else:
            w_ae, w_f = self.config.weights
            phi, base = combine([(w_ae, phi_ae, base_ae), (w_f, phi_f, base_f)])
        return attributions(phi, base, self.feature_names)

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": _FORMAT,
            "config": dataclasses.asdict(self.config),
            "feature_names": list(self.feature_names),
            "calibrators": {k: v.to_dict() for k, v in self.calibrators.items()},
            "threshold": self.threshold_,
        }

    def save(self, directory: str | Path) -> list[Path]:
        """Write the members' files and ``drift.json`` into ``directory``; returns the paths."""
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = self.autoencoder.save(d) + self.forest.save(d)
        path = d / DRIFT_JSON
        path.write_text(json.dumps(self.state_dict(), indent=2, allow_nan=False))
        return [*paths, path]

    @classmethod
    def load(cls, directory: str | Path) -> DriftDetector:
        d = Path(directory)
        try:
            state = json.loads((d / DRIFT_JSON).read_text())
        except (OSError, ValueError) as exc:
            raise ModelIntegrityError(f"cannot read {d / DRIFT_JSON}: {exc}") from exc
        return cls.from_state(state, AutoencoderDetector.load(d), IsolationForestDetector.load(d))

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        autoencoder: AutoencoderDetector,
        forest: IsolationForestDetector,
    ) -> DriftDetector:
        """Rebuild from :meth:`state_dict` output and the loaded members (validated)."""
        st = read_state(DriftState, state, "drift state", fmt=_FORMAT)
        try:
            det = cls(config_from_dict(DriftConfig, st.config), autoencoder, forest)
        except ConfigError as exc:
            raise ModelIntegrityError(f"invalid drift state: {exc}") from exc
        det.calibrators = {k: TailCalibrator.from_state(getattr(st.calibrators, k))
                           for k in ("autoencoder", "forest")}
        det.feature_names = tuple(st.feature_names)
        if not det.feature_names == autoencoder.feature_names == forest.feature_names:
            raise ModelIntegrityError("drift: members were fitted on different feature lists")
        det.threshold_ = st.threshold
        det.fitted_ = True
        return det


# ------------------------------------------------------------------ registration (models.registry)


def _read_member(contents: Mapping[str, bytes], card: Mapping[str, Any]) -> DriftDetector:
    tensors = read_tensors(contents[AE_WEIGHTS], AE_WEIGHTS)
    trees = read_tensors(contents[FOREST_WEIGHTS], FOREST_WEIGHTS)
    autoencoder = AutoencoderDetector.from_state(json_file(contents, AE_JSON), tensors)
    forest = IsolationForestDetector.from_state(json_file(contents, FOREST_JSON), trees)
    drift = DriftDetector.from_state(json_file(contents, DRIFT_JSON), autoencoder, forest)
    if list(drift.feature_names) != card.get("features"):
        raise ModelIntegrityError(f"{CARD}: feature list disagrees with the model")
    return drift


def _card(drift: DriftDetector) -> dict[str, Any]:
    ae = drift.autoencoder
    return {
        "features": list(drift.feature_names),
        "scaling": {"method": "median/IQR (robust)", **ae.scaler.to_dict()},
        "thresholds": {"drift": drift.threshold_, "autoencoder": ae.threshold_,
                       "forest": drift.forest.threshold_},
    }


def _fit(ctx: FitContext) -> Fitted:
    """The ensemble on the fitting pods' drift features (each channel's ``drift_stats``),
    its threshold at ``drift_fpr`` on the held-back pods; pods younger than
    :data:`~detector.models.spec.NEW_POD_S` are neither learnt from nor judged. Option
    ``config``: a :class:`DriftConfig` (default: the defaults with the context's seed)."""
    t0 = time.perf_counter()
    seed = ctx.seed
    drift = DriftDetector(
        config=ctx.options.get("drift", {}).get("config") or DriftConfig(seed=seed),
        autoencoder=AutoencoderDetector(AutoencoderConfig(seed=seed), progress=ctx.progress),
        forest=IsolationForestDetector(ForestConfig(seed=seed)),
    )
    names = drift_feature_names(list(ctx.healthy.feature_names))
    cols = [ctx.healthy.feature_names.index(n) for n in names]
    fit_b, hold_b = (b.subset(np.flatnonzero(pod_age_s(b) >= NEW_POD_S))
                     for b in (ctx.fit, ctx.holdout))
    drift.fit(fit_b.features[:, cols], names, groups=[str(k) for k in fit_b.keys])
    threshold = drift.infer_threshold(hold_b.features[:, cols], ctx.detection.drift_fpr)
    summary: dict[str, Any] = {
        "windows_fit": len(fit_b), "windows_holdout": len(hold_b),
        "drift_threshold": threshold, "drift_fit_s": round(time.perf_counter() - t0, 2),
        "holdout_false_alarm_rate": {
            "drift": float(np.mean(drift.predict(hold_b.features[:, cols]).is_anomaly))},
    }
    hist = drift.autoencoder.history_
    if hist is not None:
        summary["autoencoder"] = {
            "epochs": hist.epochs, "train_loss": hist.train_loss[-1] if hist.train_loss else None,
            "val_loss": hist.val_loss[-1] if hist.val_loss else None,
            "samples_per_s": round(hist.samples_per_s, 1), "seconds": round(hist.seconds, 2),
            "device": hist.device,
        }
    return Fitted(drift, summary)


def _example() -> DriftDetector:
    return DriftDetector(DriftConfig(), AutoencoderDetector(AutoencoderConfig(
        max_epochs=60, patience=6)), IsolationForestDetector())


DRIFT_MIN_SHIFT = 0.2
"""A drift is paged only when some throughput channel's level (median of its last 10 min)
is at least this fraction away from the pod's baseline median: a collapse before a crash
takes 85-97 % of the load within the hour, while a load cycle's swing in its first cycle
(13-16 % on the train split's paged pods) or a memory series calming down after a restart's
warm-up is no pre-failure sign an engineer acts on."""


def throughput_shift(batch: WindowBatch) -> np.ndarray:
    """(n,) the largest relative distance of a throughput channel's last-10-min median from
    its baseline median (NaN where no throughput channel has both). A change smaller than
    the channel's noise floor (:attr:`detector.channels.Channel.floor`) is none (an idle
    channel's relative change is noise); one above it from a median of 0 is inf."""
    idx = [CHANNELS.index(c) for c in THROUGHPUT_CHANNELS]
    floor = np.array([channel(c).floor for c in THROUGHPUT_CHANNELS])
    k = max(1, round(600.0 / batch.step_s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no shift known
        now = nanmedian_last(batch.values[:, idx, -k:].astype(np.float64))
        med = batch.baseline[:, idx, 0].astype(np.float64)
        diff = np.abs(now - med)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(diff < floor, 0.0, diff / np.abs(med))
        return np.nanmax(rel, axis=1) if rel.shape[1] else np.full(len(batch), np.nan)


class DriftDecider:
    """The pipeline's ``drift`` decision: the fused score above its threshold, for a pod old
    enough to have a baseline (:data:`NEW_POD_S`) whose throughput moved at least
    :data:`DRIFT_MIN_SHIFT` from it, with the two decision rules of podguard
    that need another detector's judgement, both reading the leak decider's findings
    (``evidence.found["trend"]``, :class:`detector.models.trend.LeakFindings`), here and
    nowhere else:

    * throughput back at levels this incarnation already held (a periodic or daily load coming
      round again) is no drift, unless the memory grows towards its limit (the leak the drift
      features saw first) or the kernel OOM-killed the pod before;
    * drift on memory growing towards its limit is the leak it is (GPU memory creep moves the
      drift features first), and so is the restart storm of a pod its kernel OOM-killed (a
      crash-looping leak): such a row's kind is the leak's, and the leak decider's judgement
      reports and explains it (with its time to OOM) - unless that leak is not paged yet (a
      young incarnation's projection beyond its reach, ``LeakFindings.not_yet``): then
      neither is the drift.

    Without a leak decider, none of these rules applies."""

    def __init__(self, det: DriftDetector) -> None:
        self.det = det

    def judge(self, batch: WindowBatch, eligible: np.ndarray, evidence: Evidence, /
              ) -> Judged:
        det, ev, n = self.det, evidence, len(batch)
        x = select_features(batch, det.feature_names)
        pred = det.predict(x)
        leak = ev.found.get("trend")
        near_leak = leak.near_leak if leak is not None else np.zeros(n, dtype=bool)
        kills = leak.kills if leak is not None else np.zeros(n, dtype=np.int64)
        cycle = ev.history.throughput_revisits(batch, ev.slots) & ~near_leak & (kills == 0)
        # a drift of its own (not the leak the drift features saw first) needs the throughput
        # to have moved far enough to matter
        with np.errstate(invalid="ignore"):
            moved = (throughput_shift(batch) >= DRIFT_MIN_SHIFT) | near_leak | (kills > 0)
        # the leak it would be named is not paged yet (a young pod's far projection): nor is
        # its drift
        not_yet = (leak.not_yet if leak is not None and leak.not_yet is not None
                   else np.zeros(n, dtype=bool)) & near_leak & (kills == 0)
        flagged = pred.is_anomaly & eligible & ~ev.new_pod & ~cycle & moved & ~not_yet
        kinds = (np.where(near_leak | (kills > 0), leak.kinds, "drift").astype(object)
                 if leak is not None else None)
        score = np.asarray(pred.score, dtype=np.float64)

        def facts(i: int) -> tuple[str, dict[str, Any]]:
            return "pre-failure drift, ", {"score": float(score[i]), "threshold": pred.threshold}

        return Judged("drift", flagged, score, np.full(n, pred.threshold), kinds=kinds,
                      attribute=lambda rows: det.explain(x[np.asarray(rows)]), facts=facts)

    def settle(self, batch: WindowBatch, kinds: list[str], raised: np.ndarray, /) -> None:
        pass

    def forget(self, key: Hashable, /) -> None:
        pass

    def adopt(self, previous: Decider, /) -> None:
        pass


SPEC = DetectorSpec(
    name="drift", cls=DriftDetector, input="array", example=_example, kinds=("drift",),
    member=Member("drift", frozenset({AE_JSON, AE_WEIGHTS, FOREST_JSON, FOREST_WEIGHTS,
                                      DRIFT_JSON}),
                  _read_member, write=lambda det, directory, files: det.save(directory),
                  card=_card),
    fit=_fit,
    decider=DriftDecider,
)
"""The drift fusion: its five bundle files, ``drift`` verdicts (:class:`DriftDecider`, after
the leak decider), fitted on the held-back split."""
