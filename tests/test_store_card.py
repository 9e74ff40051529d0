"""The model card is matched to its directory and checksummed: a card claiming another version,
or a card changed after it was written, is refused with ModelIntegrityError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detector.errors import ModelIntegrityError
from detector.models.store import (
    CARD,
    card_digest,
    load_bundle,
    promote,
    resolve_current,
    save_bundle,
    verify_bundle,
)
from detector.pipeline import Pipeline, default_model_dir


def _shipped() -> Path:
    return resolve_current(default_model_dir())


def test_a_card_claiming_another_version_is_refused(tmp_path: Path) -> None:
    src = _shipped()
    root = tmp_path / "models"
    fake = root / "v999-promoted-by-nobody"
    shutil.copytree(src, fake)  # every file and checksum intact; only the name differs
    with pytest.raises(ModelIntegrityError, match=r"claims version .* but lies in "
                                                  r"'v999-promoted-by-nobody'"):
        load_bundle(fake)
    with pytest.raises(ModelIntegrityError, match="claims version"):
        verify_bundle(fake)
    (root / "current").write_text("v999-promoted-by-nobody\n")
    with pytest.raises(ModelIntegrityError, match="claims version"):
        Pipeline.load(root)
    with pytest.raises(ModelIntegrityError, match="claims version"):
        promote(root, "v999-promoted-by-nobody")


def test_a_saved_card_is_sealed_and_a_changed_card_is_refused(tmp_path: Path) -> None:
    shipped = load_bundle(_shipped())
    bundle = save_bundle(tmp_path, shipped.detectors, version="v2")
    card = json.loads((bundle / CARD).read_text())
    assert card["card_sha256"] == card_digest(card)
    assert load_bundle(bundle).card["version"] == "v2"
    for change in ({"thresholds": {**card["thresholds"], "drift": 1e9}},
                   {"metrics": {"recall": 1.0}}, {"version": "v3"}):
        (bundle / CARD).write_text(json.dumps({**card, **change}))
        with pytest.raises(ModelIntegrityError, match="card_sha256"):
            load_bundle(bundle)
    # renaming the directory to the card's new claim does not help either
    (bundle / CARD).write_text(json.dumps({**card, "version": "v3"}))
    bundle.rename(tmp_path / "v3")
    with pytest.raises(ModelIntegrityError, match="card_sha256"):
        load_bundle(tmp_path / "v3")
