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
from typing import Any, Literal

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


class AlertingSettings(_Section):
    """Alerts to Alertmanager and Kubernetes Events (``detector.sinks.alertmanager``,
    ``detector.sinks.k8s_events``)."""

    alertmanager_urls: list[str] = Field(
        [], description="Alertmanager base URLs; every alert goes to each (an HA pair: two). "
                        "Empty: no Alertmanager sink.")
    resend_interval_s: float = Field(
        60, gt=0, description="An active alert is re-sent this often, seconds.")
    resolve_timeout_s: float = Field(
        300, gt=0, description="endsAt of an active alert is this far ahead of each send, so "
                               "alerts of a podguard that died expire by themselves, seconds.")
    gone_after_s: float = Field(
        600, gt=0, description="An alert whose pod had no judged verdict for this long is "
                               "resolved (pod gone or no data), seconds.")
    queue_max: int = Field(
        10000, ge=1, description="Alerts held per Alertmanager while it is unreachable (count); "
                                 "beyond it the oldest are dropped and counted.")
    batch_max: int = Field(500, ge=1, description="Alerts per POST (count).")
    timeout_s: float = Field(10, gt=0, description="HTTP timeout of one request, seconds.")
    backoff_s: list[float] = Field(
        [1, 2, 5, 10, 30], min_length=1,
        description="Waits between delivery attempts, seconds; after the last the alerts stay "
                    "queued and a new round starts (Retry-After is honoured).")
    critical_below_s: float = Field(
        3600, ge=0, description="Time to OOM under which severity is critical, seconds.")
    warning_below_s: float = Field(
        24 * 3600, ge=0, description="Time to OOM under which severity is warning (above: info), "
                                     "seconds.")
    runbook_url: str = Field(
        "https://github.com/podguard/podguard/blob/main/docs/runbooks.md#{alertname}",
        description="Runbook link; {alertname} is replaced by the alert's name.")
    kubernetes_events: bool = Field(
        True, description="Write an Event and the latest-verdict annotation on each flagged pod.")
    event_interval_s: float = Field(
        600, gt=0, description="The same Event on the same object is repeated (count+1) at most "
                               "this often, seconds.")


class RemediationSettings(_Section):
    """Checkpoint-then-reschedule remediation (``detector.remediation``); off by default."""

    enabled: bool = Field(False, description="Act on opted-in pods; off: alert only.")
    dry_run: bool = Field(False, description="Print the plan and change nothing in the cluster.")
    opt_in_label: str = Field(
        "podguard.io/remediate", description="Pods opt in with this label set to \"true\".")
    kinds: list[Literal["memory_leak", "gpu_memory_leak", "drift"]] = Field(
        ["memory_leak", "gpu_memory_leak", "drift"],
        description="Verdict kinds that start a remediation.")
    checkpoint_timeout_s: float = Field(
        300, gt=0, description="Wait for the checkpoint acknowledgement, seconds; then the pod "
                               "is not evicted (unless below the floor) and the alert escalates.")
    checkpoint_max_age_s: float = Field(
        900, gt=0, description="An acknowledged checkpoint older than this when eviction is "
                               "finally allowed is requested again, seconds.")
    evict_unacknowledged_below_s: float = Field(
        600, ge=0, description="Time to OOM under which a pod is evicted without an "
                               "acknowledged checkpoint (it dies anyway), seconds.")
    max_evictions_per_node: int = Field(
        1, ge=0, description="Evictions per node within budget_window_s (count).")
    max_evictions_per_namespace: int = Field(
        2, ge=0, description="Evictions per namespace within budget_window_s (count).")
    budget_window_s: float = Field(3600, gt=0, description="Window of the budgets, seconds.")
    cooldown_s: float = Field(
        3600, ge=0, description="Minimum time between two remediations of one workload, seconds.")
    retry_s: float = Field(
        60, gt=0, description="Wait before retrying an eviction refused by a "
                              "PodDisruptionBudget or deferred by a budget, seconds.")
    node_action: Literal["cordon", "taint", "none"] = Field(
        "cordon", description="For node-level causes: cordon the node, or taint it NoSchedule.")
    node_cause_min_pods: int = Field(
        2, ge=2, description="Flagged pods on one node that make the cause node-level (count).")
    avoid_node: bool = Field(
        True, description="For pod-level causes, taint the node PreferNoSchedule while the "
                          "replacement is scheduled, so it lands elsewhere if it can.")
    avoid_ttl_s: float = Field(
        900, gt=0, description="The PreferNoSchedule taint is removed after this at the latest, "
                               "seconds.")
    resync_s: float = Field(
        300, gt=0, description="Workloads are re-listed for remediation records this often, "
                               "seconds.")
    api_backoff_s: list[float] = Field(
        [0.5, 1, 2, 5, 10], min_length=1,
        description="Waits between retries of a Kubernetes API call answered 429/5xx or not "
                    "answered, seconds (Retry-After is honoured).")


class Settings(_Section):
    """The whole tree. Sections are added by the components that own them."""

    windows: WindowSettings = Field(default_factory=WindowSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)
    remediation: RemediationSettings = Field(default_factory=RemediationSettings)


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
