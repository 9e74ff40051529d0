"""The pod channel's TLS in the manifests: Kustomize's ``components/channel-tls`` on the
remediate overlay and Helm's ``channel.tls.existingSecret`` mount the same Secret at the same
place and point the daemon's settings at it (rendered with the pinned kustomize and helm;
the settings read back with ``load_settings`` and the environment the DaemonSet gives)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from deploy import render
from deploy.render import OVERLAYS, build
from detector.settings import load_settings

Doc = dict[str, Any]
MOUNT = "/var/run/secrets/podguard/channel-tls"


def _daemon(docs: list[Doc]) -> Doc:
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    spec: Doc = ds["spec"]["template"]["spec"]
    return spec


def _tls_parts(spec: Doc) -> tuple[list[Doc], list[Doc], dict[str, str]]:
    [c] = [c for c in spec["containers"] if c["name"] == "podguard"]
    vols = [v for v in spec["volumes"] if v["name"] == "channel-tls"]
    mounts = [m for m in c["volumeMounts"] if m["name"] == "channel-tls"]
    env = {e["name"]: e["value"] for e in c["env"] if "CHANNEL_TLS" in e["name"]}
    return vols, mounts, env


def _settings(docs: list[Doc], env: dict[str, str], tmp: Path) -> Any:
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    f = tmp / "config.yaml"
    f.write_text(cm["data"]["config.yaml"])
    return load_settings(f, environ=env)


def test_kustomize_component_serves_the_channel_over_tls(tmp_path: Path) -> None:
    work = tmp_path / "overlay"
    work.mkdir()
    (work / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(OVERLAYS["remediate"], work)],
        "components": [os.path.relpath(render.KUSTOMIZE_DIR / "components" / "channel-tls",
                                       work)]}))
    docs, plain = build(work), build(OVERLAYS["remediate"])
    vols, mounts, env = _tls_parts(_daemon(docs))
    assert vols == [{"name": "channel-tls", "secret": {"secretName": "podguard-channel-tls"}}]
    assert mounts == [{"name": "channel-tls", "mountPath": MOUNT, "readOnly": True}]
    rs = _settings(docs, env, tmp_path).remediation
    assert rs.enabled
    assert (rs.channel_tls_cert_file, rs.channel_tls_key_file) == (
        f"{MOUNT}/tls.crt", f"{MOUNT}/tls.key")
    assert _tls_parts(_daemon(plain)) == ([], [], {})  # off unless the component is added
    assert _settings(plain, {}, tmp_path).remediation.channel_tls_cert_file == ""


def test_helm_value_mounts_the_same_secret_as_the_component() -> None:
    on = render.helm_template({"mode": "remediate",
                               "channel": {"tls": {"existingSecret": "podguard-channel-tls"}}})
    vols, mounts, env = _tls_parts(_daemon(on))
    assert vols == [{"name": "channel-tls", "secret": {"secretName": "podguard-channel-tls"}}]
    assert mounts == [{"name": "channel-tls", "mountPath": MOUNT, "readOnly": True}]
    assert env == {"PODGUARD__REMEDIATION__CHANNEL_TLS_CERT_FILE": f"{MOUNT}/tls.crt",
                   "PODGUARD__REMEDIATION__CHANNEL_TLS_KEY_FILE": f"{MOUNT}/tls.key"}
    # alert-only has no channel: the value does nothing there
    off = render.helm_template({"channel": {"tls": {"existingSecret": "podguard-channel-tls"}}})
    assert _tls_parts(_daemon(off)) == ([], [], {})
