"""The exact Kubernetes API verbs podguard's alerting and remediation use, as data.

The deploy manifests generate their ClusterRole (daemon) and Role (workloads using the
checkpoint helper) from these lists; the end-to-end test binds exactly these rules to the
daemon's and the trainer's service accounts, so a verb missing here fails that test.
Every rule says which call needs it. Nothing here deletes or updates pods directly: pods
leave only through the Eviction subresource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def as_manifest(self) -> dict[str, Any]:
        """The rule as a ``rules:`` entry of a (Cluster)Role."""
        return {"apiGroups": list(self.api_groups), "resources": list(self.resources),
                "verbs": list(self.verbs)}


CONTROLLER_RULES: tuple[Rule, ...] = (
    Rule(("",), ("pods",), ("get", "list", "patch"),
         "read flagged pods (labels, owner, node); list opted-in pods to continue remediations "
         "after a restart; patch annotations: checkpoint request, remediation state, latest "
         "verdict (actuator.read_pod / list_pods / annotate_pod)"),
    Rule(("",), ("pods/eviction",), ("create",),
         "evict through the Eviction API so PodDisruptionBudgets are respected (actuator.evict)"),
    Rule(("",), ("events",), ("create", "patch"),
         "one Event per decision and per detection; patch raises the count of a repeated "
         "Event (actuator.event)"),
    Rule(("",), ("nodes",), ("get", "patch"),
         "cordon or taint a node for node-level causes, PreferNoSchedule taint while a pod is "
         "rescheduled away (actuator.cordon / taint / hold_rescheduling_taint)"),
    Rule(("apps",), ("statefulsets",), ("get", "list", "patch"),
         "owner check, per-workload cooldown and the remediation record (annotation), "
         "re-listed after a restart (actuator.workload_record / list_workload_records / "
         "annotate_workload)"),
    Rule(("batch",), ("jobs",), ("get", "list", "patch"),
         "the same for pods owned by a Job"),
)
"""What the podguard daemon's ClusterRole must grant for alerting Events and remediation."""

WORKLOAD_RULES: tuple[Rule, ...] = (
    Rule(("",), ("pods",), ("get", "patch"),
         "the checkpoint helper reads its own pod's request annotation and patches the "
         "acknowledgement (CheckpointResponder.pending / acknowledge); with a downward-API "
         "annotations file only patch is needed"),
)
"""What a training workload's Role (in its namespace) must grant to use the helper."""


def cluster_role(name: str = "podguard") -> dict[str, Any]:
    """The daemon's ClusterRole as a manifest dict."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [r.as_manifest() for r in CONTROLLER_RULES]}


def workload_role(namespace: str, name: str = "podguard-checkpoint") -> dict[str, Any]:
    """A training workload's Role as a manifest dict."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [r.as_manifest() for r in WORKLOAD_RULES]}
