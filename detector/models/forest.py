"""Isolation-forest drift detector on window feature vectors, plus the shared scaling helpers.

:class:`IsolationForestDetector` wraps PyOD's ``IForest`` (which wraps scikit-learn's
``IsolationForest``) on robust-scaled features. Its score is PyOD's ``decision_function``
(higher = more outlying), computed here by a vectorised numpy traversal of the fitted trees,
which equals scikit-learn's ``score_samples`` exactly (tested) and is ~40x faster for the small
batches the daemon scores each tick. Explanations are TreeSHAP values (``shap.TreeExplainer``)
mapped from the forest's path-length space into score space, sign flipped so that a positive
value pushes the window towards *anomalous*.

Persistence: the fitted trees as plain arrays in ``forest.safetensors`` (:class:`ForestArrays`:
each node's children, feature, threshold, leaf value and cover, plus the two scalars of the
score), plus ``forest.json`` for the configuration, the scaler and the threshold. Loading,
scoring and explaining need numpy and safetensors only, not scikit-learn, scipy or PyOD (fitting
does need them: ``podguard[train]``); every array read back is validated (shapes, dtypes, index
ranges, children after their parent so no tree can loop). No pickle anywhere.

This module also hosts :class:`RobustScaler` and :func:`config_from_dict`, shared with
:mod:`detector.models.autoencoder` (which would otherwise have to import torch-free helpers
from a torch module). Called by :mod:`detector.models.drift` (the fused detector), the model
store, and the contract tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from detector.errors import ConfigError, InputError, ModelIntegrityError
from detector.models.base import (
    Attribution,
    Prediction,
    ThresholdMixin,
    array_state,
    attributions,
    read_array_state,
    threshold_at_fpr,
)
from detector.models.spec import DetectorSpec
from detector.models.state import ScalerState, read_config, read_state

if TYPE_CHECKING:
    from detector.models.attribution import TreeArrays

__all__ = [
    "FOREST_JSON",
    "FOREST_WEIGHTS",
    "ForestArrays",
    "ForestConfig",
    "IsolationForestDetector",
    "RobustScaler",
    "check_features",
    "config_from_dict",
    "iforest_tree_arrays",
    "read_tensors",
]

FOREST_WEIGHTS = "forest.safetensors"
FOREST_JSON = "forest.json"
_FORMAT = "podguard.iforest/2"
"""/2: the trees are arrays in ``forest.safetensors`` (/1 was a skops-pickled estimator)."""
_TREES_FORMAT = "podguard.iforest-trees/1"
_TREE_INT_KEYS = ("node_count", "children_left", "children_right", "feature")
_TREE_FLOAT_KEYS = ("threshold", "value", "cover", "c", "offset")

_C = TypeVar("_C")


# --------------------------------------------------------------------------- shared helpers


def config_from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
    """Build the dataclass ``cls`` from ``data`` (:func:`~detector.models.state.read_config`:
    strict types, unknown keys refused); a :class:`ConfigError` names what is wrong."""
    return read_config(cls, data, error=ConfigError)


def check_features(X: np.ndarray, n_features: int | None = None) -> np.ndarray:
    """``X`` as a 2-D float32 array (a 1-D row becomes one row); wrong shape is an InputError."""
    arr = np.asarray(X, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"features must be a 2-D array (n, d), got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise InputError(f"expected {n_features} feature columns, got {arr.shape[1]}")
    return arr


@dataclass
class RobustScaler:
    """Median / IQR scaling fitted on healthy data; NaN (and ±inf) imputed to the median.

    ``transform`` returns ``(Z, missing)``: ``Z`` float32 scaled so that a healthy feature has
    median 0 and a normal-consistent spread of 1 (IQR / 1.349), missing entries set to 0 (the
    median) and everything clipped to ``±clip``; ``missing`` the boolean mask of imputed cells.
    """

    center: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(0))
    clip: float = 50.0  # scaled units (robust standard deviations)

    def fit(self, X: np.ndarray) -> RobustScaler:
        arr = np.asarray(X, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, np.nan)
        all_missing = np.asarray(np.isnan(arr).all(axis=0), dtype=bool)
        safe = np.where(all_missing[None, :], 0.0, arr)
        center = np.nanmedian(safe, axis=0)
        q75, q25 = np.nanpercentile(safe, [75.0, 25.0], axis=0)
        scale = (q75 - q25) / 1.349
        std = np.nanstd(safe, axis=0)
        scale = np.where(scale > 1e-12, scale, std)
        scale = np.where(scale > 1e-12, scale, 1.0)
        self.center, self.scale = center, scale
        return self

    @property
    def n_features(self) -> int:
        return int(self.center.shape[0])

    def transform(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(X, dtype=np.float64)
        missing = ~np.isfinite(arr)
        z = (arr - self.center) / self.scale
        z = np.where(missing, 0.0, z)
        np.clip(z, -self.clip, self.clip, out=z)
        return z.astype(np.float32), missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "clip": float(self.clip),
        }

    @classmethod
    def from_dict(cls, data: object) -> RobustScaler:
        """From :meth:`to_dict`, checked (:class:`~detector.models.state.ScalerState`)."""
        st = read_state(ScalerState, data, "scaler state", error=ConfigError)
        return cls(center=np.asarray(st.center, dtype=np.float64),
                   scale=np.asarray(st.scale, dtype=np.float64), clip=st.clip)


# --------------------------------------------------------------------------- the forest


@dataclass(frozen=True)
class ForestConfig:
    """Hyper-parameters of :class:`IsolationForestDetector`."""

    n_estimators: int = 200
    """Number of isolation trees (scoring cost is linear in it). 200 rather than the classic
    100: with 100 the TreeSHAP top feature of a one-feature fault is right ~89 % of the time,
    with 200 ~94 % (tests/test_explain.py), at half the (ample) scoring throughput."""
    max_samples: int = 256
    """Rows drawn to grow each tree (the classic 256; depth limit is log2 of it)."""
    max_features: float = 1.0
    """Fraction of feature columns each tree sees."""
    seed: int = 0
    """Random seed; the same data and seed give the same forest."""
    clip: float = 50.0
    """Scaled features are clipped to ±clip (robust standard deviations)."""

    def __post_init__(self) -> None:
        if self.n_estimators < 1 or self.max_samples < 2:
            raise ConfigError("ForestConfig: n_estimators >= 1 and max_samples >= 2 required")
        if not 0.0 < self.max_features <= 1.0 or self.clip <= 0:
            raise ConfigError("ForestConfig: max_features in (0, 1] and clip > 0 required")


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the average path length of an unsuccessful BST search (as scikit-learn's
    ``sklearn.ensemble._iforest._average_path_length``, to the bit; tested against it)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros(n.shape, dtype=np.float64)
    big = n > 2
    out[n == 2] = 1.0
    nb = n[big]
    out[big] = 2.0 * (np.log(nb - 1.0) + np.euler_gamma) - 2.0 * (nb - 1.0) / nb
    return out


def _node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    depth = np.zeros(left.shape[0], dtype=np.int64)
    for i in range(left.shape[0]):  # nodes are stored parent-before-child (checked on load)
        if left[i] != -1:
            depth[left[i]] = depth[right[i]] = depth[i] + 1
    return depth


@dataclass(frozen=True)
class ForestArrays:
    """A fitted isolation forest as plain arrays: what is saved, scored and explained.

    The trees' nodes are concatenated (tree ``k`` holds ``node_count[k]`` nodes, in
    scikit-learn's order: a parent before its children); per node, ``children_left`` /
    ``children_right`` are tree-local indices (``-1`` at leaves), ``feature`` the column of
    the whole input tested (0 at leaves), ``threshold`` the split (a row goes left when
    ``x <= threshold``), ``value`` the path length credited at a leaf (depth + c(leaf
    samples)) and ``cover`` the training rows through the node. ``c`` is c(max_samples), the
    path-length normaliser, and ``offset`` scikit-learn's ``offset_``.
    """

    node_count: np.ndarray  # (trees,) int64
    children_left: np.ndarray  # (nodes,) int64
    children_right: np.ndarray  # (nodes,) int64
    feature: np.ndarray  # (nodes,) int64
    threshold: np.ndarray  # (nodes,) float64
    value: np.ndarray  # (nodes,) float64
    cover: np.ndarray  # (nodes,) float64
    c: float
    offset: float
    n_features: int

    @classmethod
    def from_estimator(cls, est: Any) -> ForestArrays:
        """The arrays of a fitted ``sklearn.ensemble.IsolationForest`` (training only)."""
        counts, lefts, rights, feats, thrs, vals, covers = [], [], [], [], [], [], []
        for tree_est, cols in zip(est.estimators_, est.estimators_features_):
            t = tree_est.tree_
            cl = np.asarray(t.children_left, dtype=np.int64)
            cr = np.asarray(t.children_right, dtype=np.int64)
            leaf = cl == -1
            cols = np.asarray(cols, dtype=np.int64)
            counts.append(int(t.node_count))
            lefts.append(cl)
            rights.append(cr)
            feats.append(np.where(leaf, 0, cols[np.maximum(t.feature, 0)]))
            thrs.append(np.asarray(t.threshold, dtype=np.float64))
            vals.append(_node_depths(cl, cr) + _average_path_length(t.n_node_samples))
            covers.append(np.asarray(t.weighted_n_node_samples, dtype=np.float64))
        return cls(
            node_count=np.asarray(counts, dtype=np.int64),
            children_left=np.concatenate(lefts),
            children_right=np.concatenate(rights),
            feature=np.concatenate(feats).astype(np.int64),
            threshold=np.concatenate(thrs),
            value=np.concatenate(vals).astype(np.float64),
            cover=np.concatenate(covers),
            c=float(_average_path_length(np.array([est.max_samples_]))[0]),
            offset=float(est.offset_),
            n_features=int(est.n_features_in_),
        )

    @property
    def n_trees(self) -> int:
        return int(self.node_count.shape[0])

    def trees(self) -> list[TreeArrays]:
        """Each tree as :class:`.attribution.TreeArrays` (what TreeSHAP reads)."""
        from detector.models.attribution import TreeArrays

        out = []
        bounds = np.concatenate([[0], np.cumsum(self.node_count)])
        for a, b in itertools.pairwise(bounds):
            out.append(TreeArrays(self.children_left[a:b], self.children_right[a:b],
                                  self.feature[a:b], self.threshold[a:b], self.value[a:b],
                                  self.cover[a:b]))
        return out

    def to_tensors(self) -> dict[str, np.ndarray]:
        """The arrays as :meth:`from_tensors` reads them (int64 / float64, 1-D)."""
        arrays = {k: np.ascontiguousarray(getattr(self, k), dtype=np.int64)
                  for k in _TREE_INT_KEYS}
        for k in ("threshold", "value", "cover"):
            arrays[k] = np.ascontiguousarray(getattr(self, k), dtype=np.float64)
        arrays["c"] = np.array([self.c], dtype=np.float64)
        arrays["offset"] = np.array([self.offset], dtype=np.float64)
        return arrays

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], n_features: int) -> ForestArrays:
        """Validate arrays read from a file (untrusted) and build the forest from them.

        Every way the arrays could make scoring read out of bounds or loop is refused with
        :class:`ModelIntegrityError`: wrong keys, dtypes or lengths, a child index outside its
        tree or not after its parent, a leaf with one child, a feature outside ``[0,
        n_features)``, non-finite split thresholds, values or covers.
        """
        expected = set(_TREE_INT_KEYS) | set(_TREE_FLOAT_KEYS)
        if set(tensors) != expected:
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: arrays {sorted(tensors)} != "
                                      f"{sorted(expected)}")
        arr = {k: np.asarray(v) for k, v in tensors.items()}
        for k in _TREE_INT_KEYS:
            if arr[k].dtype != np.int64 or arr[k].ndim != 1:
                raise ModelIntegrityError(f"{FOREST_WEIGHTS}: {k} must be a 1-D int64 array")
        for k in _TREE_FLOAT_KEYS:
            if arr[k].dtype != np.float64 or arr[k].ndim != 1:
                raise ModelIntegrityError(f"{FOREST_WEIGHTS}: {k} must be a 1-D float64 array")
        counts = arr["node_count"]
        n = int(counts.sum()) if counts.size else 0
        if counts.size == 0 or (counts < 1).any():
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: node_count must be >= 1 per tree")
        node_keys = ("children_left", "children_right", "feature", "threshold", "value", "cover")
        if any(arr[k].shape != (n,) for k in node_keys):
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: every node array must hold "
                                      f"sum(node_count) = {n} entries")
        if arr["c"].shape != (1,) or arr["offset"].shape != (1,):
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: c and offset must hold one value")
        c, offset = float(arr["c"][0]), float(arr["offset"][0])
        if not (math.isfinite(c) and c > 0 and math.isfinite(offset)):
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: c must be finite > 0, offset finite")
        left, right = arr["children_left"], arr["children_right"]
        leaf = left == -1
        if not np.array_equal(leaf, right == -1):
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: a node has exactly one child")
        local = np.concatenate([np.arange(k, dtype=np.int64) for k in counts])
        size = np.repeat(counts, counts)
        split = ~leaf
        for child in (left, right):
            if ((child[split] <= local[split]) | (child[split] >= size[split])).any():
                raise ModelIntegrityError(f"{FOREST_WEIGHTS}: a child index is outside its "
                                          f"tree or not after its parent")
        feat = arr["feature"]
        if ((feat < 0) | (feat >= n_features)).any():
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: a feature index is outside "
                                      f"[0, {n_features})")
        if not (np.isfinite(arr["threshold"][split]).all() and np.isfinite(arr["value"]).all()
                and np.isfinite(arr["cover"]).all() and (arr["cover"] > 0).all()):
            raise ModelIntegrityError(f"{FOREST_WEIGHTS}: non-finite thresholds, values or "
                                      f"covers")
        return cls(node_count=counts.copy(), children_left=left.copy(),
                   children_right=right.copy(), feature=feat.copy(),
                   threshold=arr["threshold"].copy(), value=arr["value"].copy(),
                   cover=arr["cover"].copy(), c=c, offset=offset, n_features=n_features)


@dataclass(frozen=True)
class _PackedForest:
    """All trees of a fitted IsolationForest in flat arrays, for a vectorised traversal.

    Each tree's nodes are renumbered breadth first, so that a node's two children are next
    to each other (``first`` and ``first + 1``): a step down is one gather and one add."""

    feature: np.ndarray  # (nodes,) intp, column tested at the node (0 at leaves)
    threshold: np.ndarray  # (nodes,) float64, +inf at leaves (so leaves loop on themselves)
    first: np.ndarray  # (nodes,) intp: the left child (global index), the right one next;
    # a leaf's is itself (and +inf never sends a row right), so every row can take
    # max_depth steps
    value: np.ndarray  # (nodes,) float64, depth + c(n_node_samples) at leaves
    roots: np.ndarray  # (trees,) intp
    max_depth: int

    @classmethod
    def from_arrays(cls, forest: ForestArrays) -> _PackedForest:
        feature, threshold, first, value, roots = [], [], [], [], []
        base = 0
        for t in forest.trees():
            left = np.asarray(t.children_left, dtype=np.intp)
            right = np.asarray(t.children_right, dtype=np.intp)
            order = [0]  # breadth first: the children of each node appended together
            for node in order:
                if left[node] != -1:
                    order += [int(left[node]), int(right[node])]
            old = np.array(order, dtype=np.intp)
            new = np.empty(left.shape[0], dtype=np.intp)
            new[old] = np.arange(old.shape[0], dtype=np.intp)
            leaf = left[old] == -1
            roots.append(base)
            first.append(base + np.where(leaf, np.arange(old.shape[0]), new[left[old]]))
            feature.append(np.where(leaf, 0, np.asarray(t.feature)[old]))
            threshold.append(np.where(leaf, np.inf, np.asarray(t.threshold)[old]))
            value.append(np.where(leaf, np.asarray(t.value).reshape(-1)[old], 0.0))
            base += old.shape[0]
        max_depth = max(int(_node_depths(t.children_left, t.children_right).max())
                        for t in forest.trees())
        return cls(
            feature=np.concatenate(feature).astype(np.intp),
            threshold=np.concatenate(threshold).astype(np.float64),
            first=np.concatenate(first).astype(np.intp),
            value=np.concatenate(value).astype(np.float64),
            roots=np.array(roots, dtype=np.intp),
            max_depth=max_depth,
        )

    def mean_path_length(self, Z: np.ndarray, chunk: int = 256) -> np.ndarray:
        """E[h(x)] over the trees for each row of ``Z`` (n, d).

        All rows and trees advance one level per step (gathers on (chunk, trees) index
        arrays, small enough to stay in the cache); ``x > threshold`` picks the right child
        as in scikit-learn's ``x <= t`` left.
        """
        Z = np.ascontiguousarray(Z, dtype=np.float32)
        n, d = Z.shape
        out = np.empty(n, dtype=np.float64)
        n_trees = self.roots.shape[0]
        for start in range(0, n, chunk):
            block = Z[start : start + chunk]
            flat = block.ravel()
            m = block.shape[0]
            row_base = (np.arange(m, dtype=np.intp) * d)[:, None]
            node = np.broadcast_to(self.roots, (m, n_trees)).copy()
            for _ in range(self.max_depth):
                x = flat[row_base + self.feature[node]]
                node = self.first[node] + (x > self.threshold[node])
            out[start : start + m] = self.value[node].mean(axis=1)
        return out


class IsolationForestDetector(ThresholdMixin):
    """PyOD IForest on robust-scaled window features; score = PyOD ``decision_function``."""

    name = "iforest"

    def __init__(self, config: ForestConfig | None = None) -> None:
        self.config = config or ForestConfig()
        self.feature_names: tuple[str, ...] = ()
        self.scaler = RobustScaler(clip=self.config.clip)
        self.estimator_: Any = None  # sklearn.ensemble.IsolationForest; None once loaded
        self.arrays_: ForestArrays | None = None  # the fitted trees (what is saved)
        self._packed: _PackedForest | None = None
        self._tree_explainer: Any = None
        self._c = 1.0  # c(max_samples), the path-length normaliser
        self._offset = 0.0  # sklearn's offset_
        self.threshold_ = None
        self.fitted_ = False

    # -- fitting and scoring ------------------------------------------------------------
    def fit(self, X: np.ndarray, feature_names: tuple[str, ...]) -> IsolationForestDetector:
        from pyod.models.iforest import IForest

        arr = check_features(X, len(feature_names))
        if arr.shape[0] < 2:
            raise InputError("need at least 2 rows to fit an isolation forest")
        self.feature_names = tuple(feature_names)
        self.scaler = RobustScaler(clip=self.config.clip).fit(arr)
        Z, _ = self.scaler.transform(arr)
        model = IForest(
            n_estimators=self.config.n_estimators,
            max_samples=min(self.config.max_samples, Z.shape[0]),
            max_features=self.config.max_features,
            random_state=self.config.seed,
            n_jobs=1,
        )
        model.fit(Z)
        self._set_estimator(model.detector_)
        self.threshold_ = None
        self.fitted_ = True
        return self

    def _set_estimator(self, est: Any) -> None:
        self._set_arrays(ForestArrays.from_estimator(est))
        self.estimator_ = est

    def _set_arrays(self, arrays: ForestArrays) -> None:
        self.estimator_ = None
        self.arrays_ = arrays
        self._packed = _PackedForest.from_arrays(arrays)
        self._tree_explainer = None
        self._c = arrays.c
        self._offset = arrays.offset

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The scaled, imputed matrix the trees see."""
        self._check_fitted()
        Z, _ = self.scaler.transform(check_features(X, len(self.feature_names)))
        return Z

    def _score_from_path_length(self, h: np.ndarray) -> np.ndarray:
        # sklearn: score_samples = -2^(-h/c); decision_function = score_samples - offset_;
        # PyOD's decision_function = -(sklearn decision_function) = 2^(-h/c) + offset_.
        return np.power(2.0, -np.asarray(h, dtype=np.float64) / self._c) + self._offset

    def score(self, X: np.ndarray) -> np.ndarray:
        """PyOD ``decision_function`` of each row (float64, higher = more outlying)."""
        Z = self.transform(X)
        assert self._packed is not None
        return self._score_from_path_length(self._packed.mean_path_length(Z))

    def infer_threshold(self, X: np.ndarray, fpr: float) -> float:
        self.threshold_ = threshold_at_fpr(self.score(X), fpr)
        return self.threshold_

    def predict(self, X: np.ndarray) -> Prediction:
        threshold = self._check_threshold()
        s = self.score(X)
        return Prediction(score=s, threshold=threshold, is_anomaly=s > threshold)

    # -- explanations -------------------------------------------------------------------
    def path_length_shap(self, X: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """Raw TreeSHAP in the forest's output space, the mean path length E[h].

        Returns ``(phi, base, h)``: ``phi`` (n, d) with ``phi.sum(1) + base == h`` (exact,
        path-dependent TreeSHAP); note a *shorter* path means *more* anomalous.

        The values are those of ``shap.TreeExplainer(estimator)`` (path-dependent, no
        background data), computed by :func:`.attribution.path_dependent_tree_shap` from
        the fitted trees' arrays: identical to shap's to 1e-9 (tested against it), without
        importing shap, numba and matplotlib into the daemon (~80 MB of its 400 MB budget).
        """
        from detector.models.attribution import LeafPaths, path_dependent_tree_shap

        Z = self.transform(X)
        if self._tree_explainer is None:
            assert self.arrays_ is not None
            self._tree_explainer = LeafPaths.from_trees(self.arrays_.trees(),
                                                        self.arrays_.n_features)
        phi, base = path_dependent_tree_shap(self._tree_explainer, Z)
        assert self._packed is not None
        return phi, base, self._packed.mean_path_length(Z)

    def score_shap(self, X: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """TreeSHAP mapped into score space: ``(phi, base, score)``, ``phi.sum(1) + base == score``.

        The score is a monotone decreasing function of the mean path length, so each row's
        path-length attribution is rescaled by the secant slope of that function between the
        base path length and the row's (an exact-sum, sign-correct approximation: the
        attribution of a non-linear transform of an additive model is not unique). ``base`` is
        the score at the expected path length.
        """
        from detector.models.attribution import rescale_attribution

        self._check_fitted()
        phi_h, base_h, h = self.path_length_shap(X)
        base_s = float(self._score_from_path_length(np.array([base_h]))[0])
        s = self._score_from_path_length(h)
        slope_at = -math.log(2.0) / self._c * np.power(2.0, -h / self._c)
        phi_s = rescale_attribution(phi_h, base_h, h, base_s, s, slope_at)
        return phi_s, base_s, s

    def explain(self, X: np.ndarray) -> list[Attribution]:
        """One attribution per row, in score space (positive = towards anomalous)."""
        phi, base, _ = self.score_shap(X)
        return attributions(phi, base, self.feature_names)

    # -- persistence --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (everything but the trees)."""
        self._check_fitted()
        return array_state(_FORMAT, config=self.config, feature_names=self.feature_names,
                           scaler=self.scaler, threshold=self.threshold_)

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``forest.safetensors`` and ``forest.json`` into ``directory``; the paths."""
        from safetensors.numpy import save_file

        self._check_fitted()
        assert self.arrays_ is not None
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        weights_path, json_path = d / FOREST_WEIGHTS, d / FOREST_JSON
        save_file(self.arrays_.to_tensors(), str(weights_path),
                  metadata={"format": _TREES_FORMAT})
        json_path.write_text(json.dumps(self.state_dict(), indent=2, allow_nan=False))
        return [weights_path, json_path]

    @classmethod
    def load(cls, directory: str | Path) -> IsolationForestDetector:
        """Load what :meth:`save` wrote (numpy and safetensors only); ModelIntegrityError if
        anything is unreadable or inconsistent."""
        d = Path(directory)
        try:
            state = json.loads((d / FOREST_JSON).read_text())
        except (OSError, ValueError) as exc:
            raise ModelIntegrityError(f"cannot read {d / FOREST_JSON}: {exc}") from exc
        try:
            data = (d / FOREST_WEIGHTS).read_bytes()
        except OSError as exc:
            raise ModelIntegrityError(f"cannot read {d / FOREST_WEIGHTS}: {exc}") from exc
        return cls.from_state(state, read_tensors(data))

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], tensors: Mapping[str, np.ndarray]
    ) -> IsolationForestDetector:
        """Rebuild from :meth:`state_dict` output and the saved tree arrays (validated)."""
        checked = read_array_state(state, _FORMAT, "forest")
        try:
            det = cls(config_from_dict(ForestConfig, checked.config))
            det.scaler = RobustScaler.from_dict(checked.scaler)
        except ConfigError as exc:
            raise ModelIntegrityError(f"invalid forest state: {exc}") from exc
        det.feature_names = checked.feature_names
        if det.scaler.n_features != len(det.feature_names):
            raise ModelIntegrityError("forest: scaler and feature list disagree")
        arrays = ForestArrays.from_tensors(tensors, len(det.feature_names))
        if arrays.n_trees != det.config.n_estimators:
            raise ModelIntegrityError(f"forest: {arrays.n_trees} trees saved, the config says "
                                      f"{det.config.n_estimators}")
        det._set_arrays(arrays)
        det.threshold_ = checked.threshold
        det.fitted_ = True
        return det


def read_tensors(data: bytes, name: str = FOREST_WEIGHTS) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file's bytes (``name`` is for messages), not yet validated
    (the detectors' ``from_state`` do that); ModelIntegrityError if it is not one."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_tensors

    try:
        return load_tensors(data)
    except (SafetensorError, ValueError, TypeError, KeyError) as exc:  # KeyError: BF16
        raise ModelIntegrityError(f"{name}: not a numpy-readable safetensors file: {exc}") from exc


def iforest_tree_arrays(est: Any) -> list[TreeArrays]:
    """A fitted IsolationForest's trees as TreeSHAP reads them (as ``shap.TreeExplainer``
    does): leaf value = depth + c(n_samples), cover = the weighted node sizes, features
    remapped through ``estimators_features_``. (What :class:`ForestArrays` stores.)"""
    return ForestArrays.from_estimator(est).trees()


SPEC = DetectorSpec(
    name="iforest", cls=IsolationForestDetector, input="array", part_of="drift",
    example=lambda: IsolationForestDetector(ForestConfig(n_estimators=100)))
"""A part of the drift fusion (fitted, saved and judged by it; ``detector.models.registry``)."""
