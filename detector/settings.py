"""One settings tree for podguard, validated, unknown keys rejected.

Every field has a default and a description that gives its unit. Loaded from one YAML
file (``load_settings``) plus environment overrides ``PODGUARD__SECTION__FIELD=value``
(double underscores separate levels). Callers receive the settings object explicitly;
nothing reads globals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from detector.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class WindowSettings(_Section):
    horizon_s: float = Field(4 * 3600, gt=0, description="Length of a pod window, seconds.")
    step_s: float = Field(
        60, gt=0, description="Grid step of a window and evaluation period, seconds."
    )
    pod_ttl_s: float = Field(
        900, gt=0, description="A pod with no sample for this long is dropped, seconds."
    )


class DetectionSettings(_Section):
    leak_fpr: float = Field(
        1e-4, gt=0, lt=1,
        description="Target false-alarm rate per healthy window of the leak detector (fraction).",
    )
    drift_fpr: float = Field(
        1e-4, gt=0, lt=1,
        description="Target false-alarm rate per healthy window of the drift detector (fraction).",
    )
    confirm_steps: int = Field(
        2, ge=1,
        description="Consecutive positive evaluations needed before a verdict is raised (count).",
    )
    oom_floor_s: float = Field(
        600, ge=0,
        description="Time to OOM under which a leak is critical, seconds.",
    )
    explain: bool = Field(True, description="Attach SHAP explanations to positive verdicts.")


class Settings(_Section):
    """The whole tree. Sections are added by the components that own them."""

    windows: WindowSettings = Field(default_factory=WindowSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)


ENV_PREFIX = "PODGUARD__"


def _apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not path:
            raise ConfigError(f"environment variable {key} names no setting")
        node = tree
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"environment variable {key}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else raw
    return tree


def load_settings(path: str | Path | None = None, *,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from a YAML file (optional) and ``PODGUARD__...`` overrides.

    Raises :class:`ConfigError` naming every invalid or unknown field.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read configuration {path}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"configuration {path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration {path} must be a mapping at the top level")
        tree = loaded
    tree = _apply_env(tree, os.environ if environ is None else environ)
    try:
        return Settings.model_validate(tree)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {problems}") from e


def defaults_yaml() -> str:
    """The default configuration as commented YAML (for ``podguard config --print-defaults``)."""
    lines: list[str] = []

    def emit(model: type[BaseModel], indent: int) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            pad = "  " * indent
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                lines.append(f"{pad}{name}:")
                emit(ann, indent + 1)
                continue
            if field.description:
                lines.append(f"{pad}# {field.description}")
            value = yaml.safe_dump(field.default, default_flow_style=True).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{name}: {value}")

    emit(Settings, 0)
    return "\n".join(lines) + "\n"
