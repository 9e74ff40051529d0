"""Model store: bundle round trip, model card, atomic writes and pointer, integrity refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_tensors

from detector.errors import InputError, ModelIntegrityError
from detector.models.autoencoder import AutoencoderConfig, AutoencoderDetector
from detector.models.drift import DriftConfig, DriftDetector
from detector.models.forest import ForestConfig, IsolationForestDetector
from detector.models.store import (
    BUNDLE_FILES,
    CARD,
    CURRENT,
    card_created,
    load_bundle,
    promote,
    resolve_current,
    save_bundle,
    verify_bundle,
)
from detector.models.trend import TrendDetector
from detector.models.univariate import UnivariateDetector
from tests.support.drift_data import NAMES, drifted, healthy

torch.set_num_threads(1)

TREND = TrendDetector(u0=0.02)


def _dets(drift: DriftDetector, trend: TrendDetector = TREND) -> dict[str, object]:
    """The detectors of a bundle (the registered detectors with a bundle member)."""
    return {"drift": drift, "trend": trend, "univariate": UnivariateDetector()}


class Smuggled:
    """Stands for a malicious payload class."""


@pytest.fixture(scope="module")
def drift() -> DriftDetector:
    det = DriftDetector(
        DriftConfig(),
        AutoencoderDetector(AutoencoderConfig(max_epochs=10)),
        IsolationForestDetector(ForestConfig(n_estimators=50)),
    )
    det.fit(healthy(1500, seed=1), NAMES)
    det.infer_threshold(healthy(1000, seed=2), fpr=0.01)
    return det


@pytest.fixture
def bundle(tmp_path: Path, drift: DriftDetector) -> Path:
    return save_bundle(
        tmp_path / "models",
        _dets(drift),
        {
            "data_range": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-08T00:00:00Z"},
            "metrics": {"roc_auc": 0.97},
            "trained_by": "test",
        },
        version="v1",
    )


def _rewrite_card(path: Path, fname: str) -> None:
    """What an attacker who can also edit the card does: fix up the checksum (and the card's
    own seal, which is no signature either)."""
    from detector.models.store import card_digest

    card = json.loads((path / CARD).read_text())
    card["files"][fname]["sha256"] = hashlib.sha256((path / fname).read_bytes()).hexdigest()
    card["card_sha256"] = card_digest(card)
    (path / CARD).write_text(json.dumps(card))


# --------------------------------------------------------------------------- round trip


def test_round_trip_scores_identically(bundle: Path, drift: DriftDetector) -> None:
    loaded = load_bundle(bundle)
    x = np.vstack([healthy(200, seed=3), drifted(20, seed=4)])
    np.testing.assert_array_equal(loaded.drift.score(x), drift.score(x))
    assert loaded.drift.threshold_ == drift.threshold_
    assert loaded.trend_state == TREND.get_state() and loaded.trend.u0 == 0.02
    assert loaded.path == bundle


def test_model_card_contents(bundle: Path, drift: DriftDetector) -> None:
    card = json.loads((bundle / CARD).read_text())
    assert card["version"] == "v1"
    assert card["features"] == list(NAMES)
    assert card["thresholds"]["drift"] == drift.threshold_
    assert card["data_range"]["start"].startswith("2026-01-01")
    assert card["metrics"] == {"roc_auc": 0.97} and card["trained_by"] == "test"
    assert card["scaling"]["center"] == [float(v) for v in drift.autoencoder.scaler.center]
    assert {"torch", "numpy", "scikit-learn", "pyod", "safetensors", "python"} <= set(
        card["libraries"])
    assert set(card["files"]) == BUNDLE_FILES == {p.name for p in bundle.iterdir()} - {CARD}
    for fname, entry in card["files"].items():
        data = (bundle / fname).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_card_created_is_the_save_time(bundle: Path) -> None:
    before = time.time()
    created = card_created(bundle, "v1")  # a bundle directory
    assert created == card_created(bundle.parent, "v1")  # or its root, by version
    assert before - 3600 < created <= before  # saved by the fixture, just now (whole seconds)
    card = json.loads((bundle / CARD).read_text())
    assert created == datetime.fromisoformat(card["created"]).timestamp()


@pytest.mark.parametrize(("created", "version"), [
    ("2026-01-01T00:00:00", "v1"),  # no UTC offset: ambiguous
    ("yesterday", "v1"), (1767225600, "v1"), (None, "v1"),
    ("2026-01-01T00:00:00+00:00", "v2"),  # the card of another version
])
def test_card_created_refuses_what_it_cannot_trust(bundle: Path, created: object,
                                                  version: str) -> None:
    card = json.loads((bundle / CARD).read_text())
    card["created"] = created
    (bundle / CARD).write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError):
        card_created(bundle.parent if version == "v1" else bundle, version)


def test_bundle_is_readable_by_other_users(bundle: Path) -> None:
    assert bundle.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in bundle.iterdir())
    promote(bundle.parent, bundle.name)
    assert (bundle.parent / CURRENT).stat().st_mode & 0o777 == 0o644


def test_no_pickle_is_written(bundle: Path) -> None:
    for path in bundle.iterdir():
        data = path.read_bytes()
        assert not (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
        assert b"data.pkl" not in data


def test_default_version_names_sort_by_time(tmp_path: Path, drift: DriftDetector) -> None:
    a = save_bundle(tmp_path, _dets(drift))
    b = save_bundle(tmp_path, _dets(drift))
    assert a != b
    assert a.name[:16] <= b.name[:16]  # YYYYmmddTHHMMSSZ prefix
    assert {p.name for p in tmp_path.iterdir()} == {a.name, b.name}  # no temporaries left


# --------------------------------------------------------------------------- writing safely


def test_failed_save_leaves_nothing_behind(
    tmp_path: Path, drift: DriftDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: IsolationForestDetector, directory: Any) -> list[Path]:
        raise OSError("disk full")

    monkeypatch.setattr(IsolationForestDetector, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(tmp_path, _dets(drift), version="v9")
    assert list(tmp_path.iterdir()) == []


def _nan_trend() -> TrendDetector:
    det = TrendDetector()
    det.threshold_ = float("nan")
    return det


def test_invalid_inputs_are_refused(tmp_path: Path, drift: DriftDetector) -> None:
    with pytest.raises(InputError, match="may not set"):
        save_bundle(tmp_path, _dets(drift), {"files": {}})
    with pytest.raises(InputError, match="strict JSON"):
        save_bundle(tmp_path, _dets(drift, _nan_trend()))
    with pytest.raises(InputError, match="holds the detectors"):
        save_bundle(tmp_path, {"drift": drift})
    with pytest.raises(InputError, match="version"):
        save_bundle(tmp_path, _dets(drift), version="../escape")
    save_bundle(tmp_path, _dets(drift), version="v1")
    with pytest.raises(InputError, match="exists"):
        save_bundle(tmp_path, _dets(drift), version="v1")


def test_promote_and_resolve_current(tmp_path: Path, drift: DriftDetector) -> None:
    with pytest.raises(ModelIntegrityError, match="no current"):
        resolve_current(tmp_path)
    v1 = save_bundle(tmp_path, _dets(drift, TrendDetector(u0=0.01)), version="v1",
                     promote_now=True)
    assert resolve_current(tmp_path) == v1
    v2 = save_bundle(tmp_path, _dets(drift, TrendDetector(u0=0.03)), version="v2")
    assert resolve_current(tmp_path) == v1  # saving does not promote by default
    promote(tmp_path, "v2")
    assert resolve_current(tmp_path) == v2
    assert load_bundle(tmp_path).trend.u0 == 0.03  # the root resolves to current
    assert (tmp_path / CURRENT).read_text() == "v2\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_promote_refuses_a_tampered_bundle(tmp_path: Path, drift: DriftDetector) -> None:
    save_bundle(tmp_path, _dets(drift), version="good", promote_now=True)
    bad = save_bundle(tmp_path, _dets(drift), version="bad")
    (bad / "drift.json").write_text((bad / "drift.json").read_text() + " ")
    with pytest.raises(ModelIntegrityError, match="checksum"):
        promote(tmp_path, "bad")
    assert resolve_current(tmp_path).name == "good"


def test_current_pointing_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / CURRENT).write_text("../../etc\n")
    with pytest.raises(ModelIntegrityError, match="invalid version"):
        resolve_current(tmp_path)


# --------------------------------------------------------------------------- integrity


@pytest.mark.parametrize("fname", sorted(BUNDLE_FILES))
def test_tampered_file_is_refused(bundle: Path, fname: str) -> None:
    data = bytearray((bundle / fname).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / fname).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=f"checksum mismatch for {re.escape(fname)}"):
        load_bundle(bundle)


def test_tampered_card_checksum_is_refused(bundle: Path) -> None:
    card = json.loads((bundle / CARD).read_text())
    card["files"]["forest.safetensors"]["sha256"] = "0" * 64
    (bundle / CARD).write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match=r"checksum mismatch for forest\.safetensors"):
        verify_bundle(bundle)


def test_pickle_file_is_refused(bundle: Path) -> None:
    (bundle / "model.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelIntegrityError, match="pickle"):
        load_bundle(bundle)


def test_pickle_bytes_under_an_innocent_name_are_refused(bundle: Path) -> None:
    (bundle / "notes.bin").write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(ModelIntegrityError, match="pickle stream"):
        load_bundle(bundle)


def test_pickle_in_place_of_an_expected_file_is_refused_before_parsing(bundle: Path) -> None:
    (bundle / "forest.safetensors").write_bytes(pickle.dumps(Smuggled()))
    _rewrite_card(bundle, "forest.safetensors")
    with pytest.raises(ModelIntegrityError, match="pickle"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", ["autoencoder.pt", "extra.PTH", "last.ckpt"])
@pytest.mark.parametrize("payload", ["smuggled object", "tensors only", "not even torch"])
def test_torch_files_are_refused_by_name_unopened(bundle: Path, name: str, payload: str) -> None:
    """Whatever a torch file holds, it is refused as pickle without importing torch."""
    buf = io.BytesIO()
    if payload == "smuggled object":
        torch.save({"obj": Smuggled()}, buf)
    elif payload == "tensors only":
        torch.save({"w": torch.zeros(2)}, buf)
    else:
        buf.write(b"plain text")
    (bundle / name).write_bytes(buf.getvalue())
    with pytest.raises(ModelIntegrityError, match="torch pickle files are not accepted"):
        load_bundle(bundle)
    with pytest.raises(ModelIntegrityError, match="torch pickle files are not accepted"):
        verify_bundle(bundle)


def test_torch_archive_under_another_name_is_refused(bundle: Path) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    (bundle / "weights.zip").write_bytes(buf.getvalue())
    with pytest.raises(ModelIntegrityError, match="pickle member"):
        load_bundle(bundle)


def test_foreign_missing_and_linked_files_are_refused(bundle: Path, tmp_path: Path) -> None:
    (bundle / "README.txt").write_text("hello")
    with pytest.raises(ModelIntegrityError, match="foreign"):
        load_bundle(bundle)
    (bundle / "README.txt").unlink()
    os.symlink(bundle / "drift.json", bundle / "link.json")
    with pytest.raises(ModelIntegrityError, match="links"):
        load_bundle(bundle)
    (bundle / "link.json").unlink()
    (bundle / "trend.json").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        load_bundle(bundle)
    with pytest.raises(ModelIntegrityError, match="not a bundle"):
        load_bundle(tmp_path / "nowhere")


def test_forest_trees_that_would_loop_are_refused_even_with_a_valid_checksum(
    bundle: Path,
) -> None:
    """A child pointing back at its parent would make scoring loop: refused on load."""
    from safetensors.numpy import load

    tensors = dict(load((bundle / "forest.safetensors").read_bytes()))
    left = tensors["children_left"].copy()
    split = int(np.flatnonzero(left != -1)[1])
    left[split] = 0
    tensors["children_left"] = left
    (bundle / "forest.safetensors").write_bytes(save_tensors(tensors))
    _rewrite_card(bundle, "forest.safetensors")
    with pytest.raises(ModelIntegrityError, match="not after its parent"):
        load_bundle(bundle)


def test_a_bundle_of_the_older_skops_layout_says_to_retrain(bundle: Path) -> None:
    (bundle / "forest.safetensors").rename(bundle / "forest.skops")
    card = json.loads((bundle / CARD).read_text())
    card["files"]["forest.skops"] = card["files"].pop("forest.safetensors")
    (bundle / CARD).write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match=r"older podguard.*retrain"):
        load_bundle(bundle)


def test_safetensors_headers_are_not_mistaken_for_pickle(bundle: Path) -> None:
    """A safetensors file whose u64 header length starts 0x80 0x02..0x05 (like a pickle's
    PROTO opcode) still loads: the forest's header padded to such a length (0x0280, ...)."""
    from safetensors.numpy import load

    tensors = dict(load((bundle / "forest.safetensors").read_bytes()))
    for pad in range(300):
        data = save_tensors(tensors, metadata={"format": "podguard.iforest-trees/1",
                                               "pad": "x" * pad})
        if data[0] == 0x80 and 2 <= data[1] <= 5:
            break
    else:
        pytest.fail("no padding gave a header length of 0x0280, 0x0380, 0x0480 or 0x0580")
    (bundle / "forest.safetensors").write_bytes(data)
    _rewrite_card(bundle, "forest.safetensors")
    assert load_bundle(bundle).drift.forest.fitted_


def test_state_with_unknown_keys_is_refused_even_with_a_valid_checksum(bundle: Path) -> None:
    state = json.loads((bundle / "drift.json").read_text())
    state["backdoor"] = True
    (bundle / "drift.json").write_text(json.dumps(state))
    _rewrite_card(bundle, "drift.json")
    with pytest.raises(ModelIntegrityError, match="keys"):
        load_bundle(bundle)


def test_autoencoder_weights_torch_numpy_cannot_read_are_refused(bundle: Path) -> None:
    """bfloat16 weights (numpy has no such dtype) are a ModelIntegrityError, not a crash."""
    import safetensors.torch

    path = bundle / "autoencoder.safetensors"
    tensors = safetensors.torch.load(path.read_bytes())
    tensors["0.bias"] = tensors["0.bias"].to(torch.bfloat16)
    path.write_bytes(safetensors.torch.save(tensors))
    _rewrite_card(bundle, "autoencoder.safetensors")
    with pytest.raises(ModelIntegrityError, match=r"autoencoder\.safetensors"):
        load_bundle(bundle)


def test_artifact_sizes(bundle: Path) -> None:
    sizes = {p.name: p.stat().st_size for p in sorted(bundle.iterdir())}
    print("bundle file sizes (bytes, 50-tree test forest):", sizes)
    assert sizes["autoencoder.safetensors"] < 100_000
    assert sum(sizes.values()) < 5_000_000


def test_a_members_own_refusal_names_the_bundle(tmp_path: Path) -> None:
    """A member's state refused by its own check (here the custom-metric detector's, in the
    re-sealed card) names the bundle and the member, not only what was wrong."""
    from detector.models.store import card_digest
    from detector.pipeline import default_model_dir

    path = save_bundle(tmp_path, load_bundle(default_model_dir()).detectors, version="v1")
    card = json.loads((path / CARD).read_text())
    card["univariate"] = {"format": "somebody.else/1"}
    card["card_sha256"] = card_digest(card)
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match=f"^{re.escape(str(path))}: univariate: not a "
                                                  "podguard univariate state"):
        load_bundle(tmp_path / "v1")
