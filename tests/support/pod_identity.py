"""Pod identities for tests: what the kubelet gives a pod, made with the admin client.

``pod_token`` is a TokenRequest bound to one pod (``boundObjectRef``), as the kubelet writes
into a projected ``serviceAccountToken`` volume: the API server's TokenReview then names the
pod (``authentication.kubernetes.io/pod-name`` / ``pod-uid``, and ``node-name`` once the pod
is scheduled). ``account_token`` is a bare TokenRequest of a ServiceAccount (no pod, no
node). ``api_for`` is an API client holding only a token.
"""

from __future__ import annotations

from kubernetes import client


def pod_token(admin: client.ApiClient, pod: client.V1Pod, *, audience: str | None = "podguard",
              seconds: int = 3600) -> str:
    m, spec = pod.metadata, pod.spec
    assert m is not None and spec is not None
    tr = client.CoreV1Api(admin).create_namespaced_service_account_token(
        str(spec.service_account_name or "default"), str(m.namespace),
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[audience] if audience else [], expiration_seconds=seconds,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=str(m.name), uid=str(m.uid)))))
    assert tr.status is not None and tr.status.token
    return str(tr.status.token)


def account_token(admin: client.ApiClient, namespace: str, account: str, *,
                  audience: str | None = None, seconds: int = 3600) -> str:
    tr = client.CoreV1Api(admin).create_namespaced_service_account_token(
        account, namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[audience] if audience else [], expiration_seconds=seconds)))
    assert tr.status is not None and tr.status.token
    return str(tr.status.token)


def api_for(admin: client.ApiClient, token: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = admin.configuration.host
    cfg.ssl_ca_cert = admin.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)
