"""The model store: versioned, checksummed model bundles and an atomic ``current`` pointer.

A bundle is one directory ``<root>/<version>/`` holding exactly:

* ``model_card.json`` - version, creation time, data range, features and scaling, thresholds,
  metrics, library versions and the sha256 of every other file;
* the files of each registered detector (:func:`detector.models.registry.members`):
  ``autoencoder.json`` + ``autoencoder.safetensors``, ``forest.json`` +
  ``forest.safetensors``, ``drift.json`` - the
  :class:`~detector.models.drift.DriftDetector` (config + state); ``trend.json`` - the
  :class:`~detector.models.trend.TrendDetector`'s JSON state; the custom-metric detector
  (:mod:`detector.models.univariate`) has no file: its state is the card's ``univariate``.

The store is generic over its detectors: each is a :class:`~detector.models.spec.Member`
(its files, how it is written and read back, the card entries it owns) of a registered
detector (:data:`detector.models.registry.REGISTRY`), and :func:`save_bundle` /
:func:`load_bundle` take and give them by name (``{"drift": ..., "trend": ...,
"univariate": ...}``); a new detector in the bundle is its module and one registry line.

:func:`save_bundle` writes everything into a temporary directory under ``root`` (removed again
if anything fails), fsyncs it and renames it into place, so a reader never sees half a bundle.
:func:`promote` switches ``<root>/current`` (a small text file naming the version) by writing a
temporary file and ``os.replace``-ing it. :func:`load_bundle` reads each file once, refuses
pickle in any form (``*.pkl``/``*.pickle``/``*.joblib``, any ``*.pt``/``*.pth``/``*.ckpt``
torch file - a bundle never holds one, so it is refused by its name, unopened -, a zip holding
a ``.pkl`` member, a file starting with a pickle protocol header), foreign, missing or linked
files and checksum mismatches, all with :class:`~detector.errors.ModelIntegrityError`, then
builds the detector from the verified bytes. The checksums detect corruption and tampering by
anyone who cannot also rewrite the card; they are not a signature.

The card itself is checked too: its ``version`` must be the name of its directory (a card
claiming another version is refused, so a bundle cannot be served under a name it is not
stored under), and ``card_sha256`` - the sha256 of the card's canonical JSON without that key,
see :func:`card_digest` - must match (cards written before it existed have none; they are
still read, with the version check).

Loading needs numpy and safetensors only: the autoencoder's weights and the forest's trees
are arrays read with ``safetensors.numpy`` and validated; torch, shap, scikit-learn, scipy,
PyOD and skops are never imported (the daemon's image does not have them). A bundle of the
older layout (the forest as ``forest.skops``) is refused with a message saying to retrain.

Called by training (to publish a model) and the daemon (to load the current one).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from detector.errors import InputError, ModelIntegrityError
from detector.models import registry
from detector.models.drift import DriftDetector
from detector.models.spec import CARD, Member, write_files
from detector.models.state import CardHead, CardTime, read_state
from detector.models.trend import TrendDetector
from detector.models.univariate import UnivariateDetector

__all__ = [
    "BUNDLE_FILES",
    "CARD",
    "CURRENT",
    "Bundle",
    "Member",
    "card_created",
    "load_bundle",
    "promote",
    "resolve_current",
    "save_bundle",
    "verify_bundle",
]

CURRENT = "current"
_FORMAT = "podguard.model-bundle/1"
_OLD_FOREST = "forest.skops"  # the forest's file before 0.2 (a pickled sklearn estimator)
_FILE_MODE = 0o644  # a daemon running as another user must be able to read the model
_DIR_MODE = 0o755
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
_MEMBER_CARD_KEYS = frozenset({"features", "scaling", "thresholds"})
"""The card keys members share (``thresholds`` merged over them); any other key a member's
``card`` gives is its own (e.g. ``univariate``) and goes after ``card_extra``."""
_RESERVED_CARD_KEYS = frozenset(
    {"format", "version", "created", "features", "scaling", "thresholds", "libraries", "files",
     "card_sha256"}
)
_LIBRARIES = (
    "podguard",
    "torch",
    "numpy",
    "scikit-learn",
    "pyod",
    "safetensors",
)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: its detectors by member name (the registered ones)."""

    detectors: Mapping[str, Any]
    card: dict[str, Any]
    path: Path

    @property
    def drift(self) -> DriftDetector:
        det: DriftDetector = self.detectors["drift"]
        return det

    @property
    def trend(self) -> TrendDetector:
        det: TrendDetector = self.detectors["trend"]
        return det

    @property
    def univariate(self) -> UnivariateDetector:
        det: UnivariateDetector = self.detectors["univariate"]
        return det

    @property
    def trend_state(self) -> dict[str, Any]:
        """The leak detector's JSON state (what ``trend.json`` holds)."""
        return self.trend.get_state()


# --------------------------------------------------------------------------- helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    write_files(path.parent, {path.name: data})


def _check_version_name(version: str) -> str:
    if not _VERSION_RE.match(version) or version in (".", "..", CURRENT):
        raise InputError(f"invalid bundle version name {version!r}")
    return version


def _library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _is_safetensors(data: bytes) -> bool:
    """A safetensors layout: a little-endian u64 header length, then that much JSON object."""
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return data[8:9] == b"{" and 8 + n <= len(data) and data[8 : 8 + n].rstrip().endswith(b"}")


def _pickle_reason(name: str, data: bytes) -> str | None:
    """Why ``data`` (a file called ``name``) is pickle-based, or None if it is not."""
    lower = name.lower()
    if lower.endswith(_PICKLE_SUFFIXES):
        return "a pickle file (by its name)"
    if lower.endswith(".safetensors") and _is_safetensors(data):
        return None  # its 8-byte header length can start 0x80 0x02..0x05 like a pickle
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return f"a pickle stream (protocol {data[1]} header)"
    if lower.endswith(_TORCH_SUFFIXES):
        # torch.save's format is a pickle; a bundle never holds one, so it is not opened
        # (nor torch imported to try weights_only=True on it).
        return "a torch file (by its name): torch pickle files are not accepted"
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = zf.namelist()
        except zipfile.BadZipFile:
            members = []
        pickled = [m for m in members if m.lower().endswith(_PICKLE_SUFFIXES)]
        if pickled:
            return f"an archive holding pickle member(s) {pickled[:3]} (torch.save format?)"
    return None


# --------------------------------------------------------------------------- writing


def save_bundle(
    root: str | Path,
    detectors: Mapping[str, Any],
    card_extra: Mapping[str, Any] | None = None,
    *,
    version: str | None = None,
    promote_now: bool = False,
) -> Path:
    """Write a new bundle of ``detectors`` (member name -> detector, one per member of
    :func:`detector.models.registry.members`) under ``root`` and return its directory.

    ``card_extra`` goes into the model card; by convention ``data_range`` (e.g. ``{"start":
    iso, "end": iso}``) and ``metrics`` (a dict of numbers); it may not override the keys the
    store writes. ``version`` defaults to ``<UTC time>-<random hex>`` (sortable). With
    ``promote_now`` the new bundle also becomes ``current``.
    """
    root_p = Path(root)
    extra = dict(card_extra or {})
    clash = sorted(_RESERVED_CARD_KEYS & set(extra))
    if clash:
        raise InputError(f"card_extra may not set {clash}: the store writes them")
    members = _members()
    names = [m.name for m in members]
    if sorted(detectors) != sorted(names):
        raise InputError(f"a bundle holds the detectors {names}, got {sorted(detectors)}")
    files_of = {m.name: m.encode(detectors[m.name]) for m in members}  # strict JSON checked
    now = datetime.now(UTC)
    name = _check_version_name(version or f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}")
    final = root_p / name
    if final.exists():
        raise InputError(f"bundle {final} already exists")
    root_p.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root_p))
    try:
        for m in members:
            m.write(detectors[m.name], tmp, files_of[m.name])
        written = sorted(p.name for p in tmp.iterdir())
        if set(written) != _bundle_files():
            raise ModelIntegrityError(f"bundle writer produced {written}, expected the format's")
        files = {}
        for fname in written:
            data = (tmp / fname).read_bytes()
            with open(tmp / fname, "rb+") as fh:
                os.fsync(fh.fileno())
            files[fname] = {"sha256": _sha256(data), "bytes": len(data)}
        entries: dict[str, Any] = {"thresholds": {}}
        for m in members:
            for key, value in m.card(detectors[m.name]).items():
                if key == "thresholds":
                    entries["thresholds"].update(value)
                elif key in entries or key in _RESERVED_CARD_KEYS - _MEMBER_CARD_KEYS:
                    raise InputError(f"detector {m.name!r} writes card key {key!r}, which "
                                     "another member or the store writes")
                else:
                    entries[key] = value
        clash = sorted(set(extra) & set(entries))
        if clash:
            raise InputError(f"card_extra may not set {clash}: the detectors write them")
        own = {k: v for k, v in entries.items() if k not in _MEMBER_CARD_KEYS}
        card: dict[str, Any] = {
            "format": _FORMAT,
            "version": name,
            "created": now.isoformat(timespec="seconds"),
            "data_range": extra.pop("data_range", None),
            **{k: entries[k] for k in ("features", "scaling") if k in entries},
            "thresholds": entries["thresholds"],
            "metrics": extra.pop("metrics", {}),
            "libraries": _library_versions(),
            "files": files,
            **extra,
            **own,
        }
        card["card_sha256"] = card_digest(card)
        _write_file(tmp / CARD, json.dumps(card, indent=2, allow_nan=False).encode())
        for path in tmp.iterdir():  # mkdtemp/mkstemp are private (0700/0600); models are not
            os.chmod(path, _FILE_MODE)
        os.chmod(tmp, _DIR_MODE)
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(root_p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if promote_now:
        promote(root_p, name)
    return final


def promote(root: str | Path, version: str) -> Path:
    """Make ``version`` the current bundle (after verifying it); atomic via ``os.replace``."""
    root_p = Path(root)
    target = root_p / _check_version_name(version)
    _read_verified(target)  # refuse to point at a broken bundle
    fd, tmp_name = tempfile.mkstemp(prefix=".current-", dir=root_p)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(f"{version}\n".encode())
            fh.flush()
            os.fchmod(fh.fileno(), _FILE_MODE)
            os.fsync(fh.fileno())
        os.replace(tmp_name, root_p / CURRENT)
        _fsync_dir(root_p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return target


def resolve_current(root: str | Path) -> Path:
    """The directory the ``current`` pointer names; ModelIntegrityError if none or invalid."""
    root_p = Path(root)
    try:
        version = (root_p / CURRENT).read_text().strip()
    except OSError as exc:
        raise ModelIntegrityError(f"no current model under {root_p}: {exc}") from exc
    try:
        return root_p / _check_version_name(version)
    except InputError as exc:
        raise ModelIntegrityError(f"{root_p / CURRENT} names an invalid version") from exc


# --------------------------------------------------------------------------- reading


def card_digest(card: Mapping[str, Any]) -> str:
    """The sha256 of ``card``'s canonical JSON (sorted keys, no spaces) without
    ``card_sha256``: what a card's ``card_sha256`` must be."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelIntegrityError(f"{CARD} is not strict JSON: {exc}") from exc
    return _sha256(text.encode())


def _check_card(path: Path, card: dict[str, Any]) -> None:
    """The card belongs to this directory and is as it was written (see module docstring)."""
    if "card_sha256" in card and card["card_sha256"] != card_digest(card):
        raise ModelIntegrityError(f"{path / CARD}: checksum mismatch (card_sha256): the card "
                                  f"was changed after it was written")
    version = card.get("version")
    if version != path.name:
        raise ModelIntegrityError(f"{path / CARD} claims version {version!r} but lies in "
                                  f"{path.name!r}: a card must be served under its own "
                                  f"directory's name")


def _read_verified(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read the card and every file once; refuse anything not exactly as the card says."""
    if path.is_symlink() or not path.is_dir():
        raise ModelIntegrityError(f"{path} is not a bundle directory")
    contents: dict[str, bytes] = {}
    for entry in sorted(path.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            raise ModelIntegrityError(f"{entry.name}: links and sub-directories are refused")
        data = entry.read_bytes()
        reason = _pickle_reason(entry.name, data)
        if reason:
            raise ModelIntegrityError(f"{entry.name} is {reason}; pickle is never loaded")
        contents[entry.name] = data
    if CARD not in contents:
        raise ModelIntegrityError(f"{path}: no {CARD}; not a podguard bundle")
    try:
        card = json.loads(contents.pop(CARD))
    except ValueError as exc:
        raise ModelIntegrityError(f"{CARD} is not valid JSON: {exc}") from exc
    listed = read_state(CardHead, card, CARD, fmt=_FORMAT).files
    if _OLD_FOREST in listed:
        raise ModelIntegrityError(f"{path}: a bundle of an older podguard (the forest as "
                                  f"{_OLD_FOREST}, which needs scikit-learn and skops); "
                                  f"retrain it with this version (podguard train)")
    absent = [m.name for m in _members() if m.files and not m.files & set(listed)]
    if absent:  # a detector registered after the bundle was trained
        raise ModelIntegrityError(f"{path}: the bundle has no files of detector(s) {absent} "
                                  "(registered after it was trained); retrain it with this "
                                  "version (podguard train)")
    if set(listed) != _bundle_files():
        raise ModelIntegrityError(f"{CARD} must list exactly {sorted(_bundle_files())}")
    foreign = sorted(set(contents) - _bundle_files())
    if foreign:
        raise ModelIntegrityError(f"foreign file(s) in the bundle: {foreign}")
    missing = sorted(_bundle_files() - set(contents))
    if missing:
        raise ModelIntegrityError(f"missing file(s) in the bundle: {missing}")
    for fname in sorted(_bundle_files()):
        if _sha256(contents[fname]) != listed[fname].sha256:
            raise ModelIntegrityError(f"checksum mismatch for {fname}: tampered or corrupt")
    _check_card(path, card)
    return card, contents


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check a bundle without building models; returns its card."""
    card, _ = _read_verified(Path(path))
    return card


def card_created(root_or_bundle: str | Path, version: str) -> float:
    """Unix seconds of the card's ``created`` of bundle ``version``.

    ``root_or_bundle`` is a bundle directory, or a model root holding ``<version>/`` (the
    directory is named, not resolved through ``current``, so a pointer switched meanwhile
    cannot pair one bundle's model with another's card). Reads the card only (a bundle is
    immutable once renamed into place; :func:`load_bundle` verified it). A missing card, a
    card of another version or a ``created`` that is not an ISO-8601 time with a UTC offset
    is a :class:`ModelIntegrityError`.
    """
    p = Path(root_or_bundle)
    if not (p / CARD).exists():
        p = p / _check_version_name(version)
    try:
        card = json.loads((p / CARD).read_text())
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"cannot read {p / CARD}: {exc}") from exc
    head = read_state(CardTime, card, str(p / CARD))
    if head.version != version:
        raise ModelIntegrityError(f"{p / CARD} is not the card of version {version!r}")
    return head.created.timestamp()


# --------------------------------------------------------------------------- members

def _members() -> tuple[Member, ...]:
    """The detectors of a bundle: the registered detectors' members, read from
    :data:`detector.models.registry.REGISTRY` at each call (a new detector is its module and
    one line there)."""
    return registry.members()


def _bundle_files() -> frozenset[str]:
    return frozenset().union(*(m.files for m in _members()))


BUNDLE_FILES: frozenset[str] = _bundle_files()
"""Every file of a bundle except the card, which lists their checksums."""


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle directory, or ``root``'s current one if given the root."""
    p = Path(path)
    if not (p / CARD).exists() and (p / CURRENT).exists():
        p = resolve_current(p)
    card, contents = _read_verified(p)
    detectors = {}
    for m in _members():
        try:
            detectors[m.name] = m.read(contents, card)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelIntegrityError(f"malformed {m.name} state in {p}: {exc!r}") from exc
        except ModelIntegrityError as exc:  # the member's own check: say which bundle
            raise ModelIntegrityError(f"{p}: {m.name}: {exc}") from exc
    return Bundle(detectors=detectors, card=card, path=p)
