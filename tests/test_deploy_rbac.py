"""The daemon's RBAC and admission policies in deploy/kustomize, against rbac.py and the code.

The remediate overlay's ClusterRole is exactly ``CONTROLLER_RULES`` of
detector/remediation/rbac.py, its Role (podguard's records) exactly ``STORE_RULES``, its
admission policies exactly ``admission_policies("podguard", "podguard")``; the alert-only
ClusterRole exactly ``ALERTING_RULES`` (pods get, events create/patch), a subset. The same
roles used by a real ServiceAccount token on the real API server are in
tests/stack/test_deploy_rbac.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from deploy.render import OVERLAYS
from detector.remediation import rbac
from detector.remediation.rbac import CONTROLLER_RULES, cluster_role
from tests.test_deploy_manifests import one, overlay

Doc = dict[str, Any]

ALERTING_RULES: list[Doc] = cluster_role(rules=rbac.ALERTING_RULES)["rules"]


def _triples(rules: list[Doc]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def test_remediate_cluster_role_is_exactly_rbac_py() -> None:
    docs = overlay("remediate")
    rules = one(docs, "ClusterRole")["rules"]
    assert rules == cluster_role()["rules"]
    assert len(rules) == len(CONTROLLER_RULES)
    assert one(docs, "Role")["rules"] == rbac.store_role("podguard")["rules"]
    rb = one(docs, "RoleBinding")
    assert rb["roleRef"]["name"] == one(docs, "Role")["metadata"]["name"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "podguard",
                               "namespace": "podguard"}]
    policies = [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    want = rbac.admission_policies("podguard", "podguard")
    def key(d: Doc) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    assert sorted(policies, key=key) == sorted(
        yaml.safe_load(yaml.safe_dump(want)), key=key)


def test_alert_only_cluster_role_is_what_alerting_calls() -> None:
    rules = one(overlay("alert-only"), "ClusterRole")["rules"]
    assert rules == ALERTING_RULES
    assert _triples(ALERTING_RULES) < _triples(cluster_role()["rules"])
    assert not {("", "pods", "list"), ("", "nodes", "patch"), ("", "pods/eviction", "create"),
                ("", "pods", "patch")} & _triples(rules)


@pytest.mark.parametrize("name", list(OVERLAYS))
def test_no_wildcards_no_delete_no_secrets_no_workload_writes(name: str) -> None:
    docs = overlay(name)
    assert [d["kind"] for d in docs].count("ClusterRole") == 1
    roles = [d for d in docs if d["kind"] == "Role"]
    assert len(roles) == (1 if name == "remediate" else 0)
    for r in one(docs, "ClusterRole")["rules"]:
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
        assert not {"delete", "deletecollection", "update", "escalate", "bind",
                    "impersonate", "watch", "list"} & set(r["verbs"])
        assert "patch" not in r["verbs"] or r["resources"] in (["events"], ["nodes"])
        assert "secrets" not in r["resources"]
    for role in roles:  # only podguard's own Leases, in its own namespace
        assert [r["resources"] for r in role["rules"]] == [["leases"]]


# ============================================================================ real API server


