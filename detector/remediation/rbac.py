"""The exact Kubernetes API access podguard's alerting and remediation use, as data.

The single source of the deploy manifests (tests/test_deploy_rbac.py compares them) and of
the end-to-end tests' identities:

* :data:`ALERTING_RULES` - the alert-only ClusterRole: read a flagged pod, write Events.
* :data:`CONTROLLER_RULES` - the remediate ClusterRole: that, plus eviction, node
  cordon/taint, read-only StatefulSets and Jobs, TokenReviews (the pod channel).
* :data:`STORE_RULES` - a Role in podguard's own namespace only: its Leases (the records).
* :func:`admission_policies` - two ValidatingAdmissionPolicies (+ bindings) confining each
  daemon's node changes and evictions to the node its own bound token names
  (``authentication.kubernetes.io/node-name``, present in tokens bound to a scheduled pod).
  A token of the same ServiceAccount without a node (a bare TokenRequest) may do neither.

Nothing patches or updates pods, StatefulSets or Jobs (annotations are not podguard's store
any more), nothing lists pods, nothing deletes pods: they leave only through the Eviction
subresource. Workloads need no access at all (the checkpoint helper talks to the daemon with
its projected token). Every rule says which call needs it.
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


ALERTING_RULES: tuple[Rule, ...] = (
    Rule(("",), ("pods",), ("get",),
         "read a flagged pod: its uid for the Event, its containers for the alert "
         "(actuator.read_pod; k8s_events.PodContainers); in remediate also its labels, owner "
         "and node, and a StatefulSet's replacement"),
    Rule(("",), ("events",), ("create", "patch"),
         "one Event per decision and per detection; patch raises the count of a repeated "
         "Event (actuator.event)"),
)
"""What alert-only needs (the alert-only overlay's ClusterRole)."""

CONTROLLER_RULES: tuple[Rule, ...] = (
    *ALERTING_RULES,
    Rule(("",), ("pods/eviction",), ("create",),
         "evict through the Eviction API so PodDisruptionBudgets are respected; confined to "
         "pods on the daemon's own node by the admission policy (actuator.evict)"),
    Rule(("",), ("nodes",), ("get", "patch"),
         "cordon or taint the daemon's own node for node-level causes, PreferNoSchedule "
         "taint while a pod is rescheduled away; confined to its own node by the admission "
         "policy (actuator.cordon / taint / hold_rescheduling_taint)"),
    Rule(("apps",), ("statefulsets",), ("get",),
         "the owner a pod names exists with that uid (controller._verified_owner)"),
    Rule(("batch",), ("jobs",), ("get",),
         "the same for Jobs, and whether a Job's replacement pod runs (controller._replacement)"),
    Rule(("authentication.k8s.io",), ("tokenreviews",), ("create",),
         "check the projected token a pod presents on the pod channel "
         "(channel.TokenReviewer)"),
)
"""What the podguard daemon's ClusterRole must grant for remediation."""

STORE_RULES: tuple[Rule, ...] = (
    Rule(("coordination.k8s.io",), ("leases",), ("get", "list", "create", "patch", "delete"),
         "podguard's remediation records, one Lease per workload, in its own namespace only "
         "(store.RecordStore); delete removes records older than the cooldown and budgets"),
)
"""What the podguard daemon's Role in its own namespace must grant (remediate only)."""

WORKLOAD_RULES: tuple[Rule, ...] = ()
"""What a training workload needs to use the checkpoint helper: nothing (its projected
token, audience podguard, is presented to the daemon, not to the API server)."""

NODE_NAME = "authentication.kubernetes.io/node-name"


def cluster_role(name: str = "podguard", rules: tuple[Rule, ...] = CONTROLLER_RULES
                 ) -> dict[str, Any]:
    """The daemon's ClusterRole as a manifest dict."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [r.as_manifest() for r in rules]}


def store_role(namespace: str, name: str = "podguard-records") -> dict[str, Any]:
    """The daemon's Role in its own namespace (its records) as a manifest dict."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [r.as_manifest() for r in STORE_RULES]}


def admission_policies(namespace: str, service_account: str = "podguard", *,
                       prefix: str = "podguard") -> list[dict[str, Any]]:
    """ValidatingAdmissionPolicies and bindings: the daemon ``namespace/service_account``
    changes only its own node and evicts only pods on its own node.

    Nodes: an UPDATE/PATCH of a node is allowed only if the node is the one the token names.
    Evictions: the Eviction object does not say where the pod runs, so the policy takes the
    pods of the eviction's namespace as parameters (``paramKind: Pod``, every pod: an empty
    selector) and requires the pod being evicted (``request.name``) to run on the token's
    node; no pod of that name (``parameterNotFoundAction: Deny`` when the namespace is empty)
    is refused too. Requests of anyone else are not matched.
    """
    user = f"system:serviceaccount:{namespace}:{service_account}"
    own = (f"'{NODE_NAME}' in request.userInfo.extra && "
           f"size(request.userInfo.extra['{NODE_NAME}']) == 1")
    node = f"request.userInfo.extra['{NODE_NAME}'][0]"
    match = [{"name": "podguard-daemon", "expression": f"request.userInfo.username == '{user}'"}]
    api = "admissionregistration.k8s.io/v1"
    nodes, evictions = f"{prefix}-own-node-only", f"{prefix}-evict-own-node-only"
    return [
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": nodes},
         "spec": {
             "failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": [{
                 "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                 "resources": ["nodes"]}]},
             "matchConditions": match,
             "validations": [{
                 "expression": f"{own} && request.name == {node}",
                 "messageExpression": (
                     "'podguard\\'s daemon may change only the node it runs on, not ' + "
                     "request.name"),
                 "reason": "Forbidden"}]}},
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": nodes},
         "spec": {"policyName": nodes, "validationActions": ["Deny"]}},
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": evictions},
         "spec": {
             "failurePolicy": "Fail",
             "paramKind": {"apiVersion": "v1", "kind": "Pod"},
             "matchConstraints": {"resourceRules": [{
                 "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                 "resources": ["pods/eviction"]}]},
             "matchConditions": match,
             "validations": [{
                 "expression": (f"{own} && (params.metadata.name != request.name || "
                                f"(has(params.spec.nodeName) && "
                                f"params.spec.nodeName == {node}))"),
                 "messageExpression": (
                     "'podguard\\'s daemon may evict only pods on the node it runs on; ' + "
                     "request.name + ' is not there'"),
                 "reason": "Forbidden"}]}},
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": evictions},
         "spec": {"policyName": evictions, "validationActions": ["Deny"],
                  "paramRef": {"selector": {}, "parameterNotFoundAction": "Deny"}}},
    ]
