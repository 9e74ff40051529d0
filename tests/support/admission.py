"""Installing and removing podguard's ValidatingAdmissionPolicies (and their bindings) on the
local API server, for the tests that run them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException


def install_policies(adm: client.AdmissionregistrationV1Api,
                     policies: Sequence[dict[str, Any]]) -> None:
    """Create each policy and binding of ``policies`` (rbac.admission_policies' documents)."""
    for doc in policies:
        if doc["kind"] == "ValidatingAdmissionPolicy":
            adm.create_validating_admission_policy(doc)  # type: ignore[arg-type]
        else:
            adm.create_validating_admission_policy_binding(doc)  # type: ignore[arg-type]


def remove_policies(adm: client.AdmissionregistrationV1Api,
                    policies: Sequence[dict[str, Any]]) -> None:
    """Delete each of ``policies``, those already gone (or never made) left alone."""
    for doc in policies:
        name = doc["metadata"]["name"]
        try:
            if doc["kind"] == "ValidatingAdmissionPolicy":
                adm.delete_validating_admission_policy(name)
            else:
                adm.delete_validating_admission_policy_binding(name)
        except ApiException:
            pass
