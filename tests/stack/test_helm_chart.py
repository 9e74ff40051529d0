"""The Helm chart installed on the local real control plane.

``helm install`` against kube-apiserver with three kwok nodes: the DaemonSet runs one pod per
node, the RBAC objects are the rendered ones; ``helm uninstall`` removes everything but the
kept claim, which the test deletes with the namespace. Lint, render and the comparison with
Kustomize are in tests/test_helm_chart.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from deploy import render
from tests.stack.test_deploy_manifests import crds, d_, models_pv, wait_for
from tests.support.k8s_fixtures import Kube
from tests.test_deploy_manifests import one
from tests.test_helm_chart import MODES, Doc, helm, kustomized

__all__ = ["crds"]  # the module fixture installing the project's CRD copies


@pytest.mark.stack
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", list(MODES))
def test_helm_install_on_the_real_control_plane(kube: Kube, crds: list[Doc], mode: str,
                                                tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    release, ns = f"podguard-{tag}", f"pg-helm-{mode}-{tag}"
    core, apps = client.CoreV1Api(kube.api), client.AppsV1Api(kube.api)
    rbac_api = client.RbacAuthorizationV1Api(kube.api)
    values = {**MODES[mode], "models": {"persistence": {"storageClassName": ""}}}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    claim = f"{release}-models"
    pv = models_pv(ns, claim, claim)
    core.create_persistent_volume(pv)  # type: ignore[arg-type]  # a manifest dict
    try:
        r = helm("install", release, str(render.CHART), "--namespace", ns,
                 "--create-namespace", "-f", str(tmp_path / "values.yaml"),
                 kubeconfig=kube.kubeconfig)
        assert "STATUS: deployed" in r.stdout, r.stdout
        nodes = set(kube.nodes)

        def running() -> dict[str, str] | None:
            items = d_(core.list_namespaced_pod(
                ns, label_selector=f"app.kubernetes.io/instance={release}"))["items"]
            by_node = {p["spec"]["node_name"]: p["status"]["phase"] for p in items
                       if p["metadata"]["labels"].get("app.kubernetes.io/name") == "podguard"}
            ok = set(by_node) == nodes and all(ph == "Running" for ph in by_node.values())
            return by_node if ok else None

        wait_for(running, timeout=180, what=f"one Running podguard pod per kwok node in {ns}")
        ds = d_(apps.read_namespaced_daemon_set(release, ns))
        assert ds["status"]["desired_number_scheduled"] == len(nodes)
        pvc = d_(core.read_namespaced_persistent_volume_claim(claim, ns))
        assert pvc["status"]["phase"] == "Bound"
        role = d_(rbac_api.read_cluster_role(release))
        want = one(kustomized(mode), "ClusterRole")["rules"]
        assert [{"apiGroups": x["api_groups"], "resources": x["resources"],
                 "verbs": x["verbs"]} for x in role["rules"]] == want
        crb = d_(rbac_api.read_cluster_role_binding(release))
        assert crb["subjects"] == [{"kind": "ServiceAccount", "name": release,
                                    "namespace": ns, "api_group": None}]
        cm = d_(core.read_namespaced_config_map(f"{release}-config", ns))
        assert yaml.safe_load(cm["data"]["config.yaml"])["remediation"]["enabled"] == \
            (mode == "remediate")
        status = helm("status", release, "--namespace", ns, kubeconfig=kube.kubeconfig)
        assert "STATUS: deployed" in status.stdout
        if mode == "alert-only":  # switching modes is one `helm upgrade`
            before = ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            helm("upgrade", release, str(render.CHART), "--namespace", ns, "--reuse-values",
                 "--set", "mode=remediate", kubeconfig=kube.kubeconfig)
            role = d_(rbac_api.read_cluster_role(release))
            assert [{"apiGroups": x["api_groups"], "resources": x["resources"],
                     "verbs": x["verbs"]} for x in role["rules"]] == \
                one(kustomized("remediate"), "ClusterRole")["rules"]
            cm = d_(core.read_namespaced_config_map(f"{release}-config", ns))
            assert yaml.safe_load(cm["data"]["config.yaml"])["remediation"]["enabled"] is True
            after = d_(apps.read_namespaced_daemon_set(release, ns))["spec"]["template"][
                "metadata"]["annotations"]["checksum/config"]
            assert after != before  # the pods roll with the new settings
    finally:
        helm("uninstall", release, "--namespace", ns, kubeconfig=kube.kubeconfig,
             check=False)
        for delete in (lambda: core.delete_namespace(ns),
                       lambda: core.delete_persistent_volume(claim)):
            try:
                delete()
            except client.exceptions.ApiException as e:
                if e.status != 404:
                    raise
    with pytest.raises(client.exceptions.ApiException) as gone:
        rbac_api.read_cluster_role(release)  # helm uninstall removed the cluster objects
    assert gone.value.status == 404

