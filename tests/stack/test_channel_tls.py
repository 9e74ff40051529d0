"""The pod channel over TLS (``remediation.channel_tls_cert_file``), with real handshakes on
127.0.0.1 and the real API server's TokenReview behind it.

A throwaway CA and a server certificate for 127.0.0.1 / localhost are made with the openssl
CLI (``deploy/local/k8s_pki.py``'s helper). Both in-pod helpers reach the daemon through the
one in-pod client (:mod:`detector.podclient`): the diagnosis helper's
:class:`~detector.diagnosis.helper.DaemonChannel` and the checkpoint helper's
:class:`~detector.remediation.checkpoint.ChannelClient`. A client trusting another CA is
refused (the certificate does not verify: no token is sent), as is a name the certificate
does not carry and a plain-HTTP client on the TLS port; a rotated certificate is served to
new connections without a restart.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from deploy.local.k8s_pki import Pair
from deploy.local.k8s_pki import _cert as issue_cert
from detector.diagnosis import report as rp
from detector.diagnosis.helper import DaemonChannel
from detector.diagnosis.requester import ChannelRequests, DiagnosisRequester
from detector.errors import ConfigError
from detector.podclient import ChannelError, PodChannelClient
from detector.remediation.actuator import Actuator
from detector.remediation.channel import ChannelServer, ServerTls, TokenReviewer
from detector.remediation.checkpoint import ChannelClient, CheckpointResponder
from detector.settings import DiagnosisSettings, RemediationSettings
from tests.support.k8s_fixtures import Kube
from tests.support.pod_identity import pod_token
from tests.test_diagnosis_request import leak

CA_EXT = ["basicConstraints = critical, CA:TRUE",
          "keyUsage = critical, keyCertSign, cRLSign, digitalSignature",
          "subjectKeyIdentifier = hash"]
LEAF = ["basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature, keyEncipherment",
        "authorityKeyIdentifier = keyid", "extendedKeyUsage = serverAuth"]


def _pki(d: Path, name: str, sans: str = "IP:127.0.0.1, DNS:localhost") -> tuple[Pair, Pair]:
    """(CA, server pair signed by it)."""
    d.mkdir(parents=True, exist_ok=True)
    ca = issue_cert(d, f"{name}-ca", cn=f"podguard-channel-test-{name}", org="", ca=None,
                    ext=CA_EXT)
    server = issue_cert(d, f"{name}-server", cn="podguard-channel", org="", ca=ca,
                        ext=[*LEAF, f"subjectAltName = {sans}"])
    return ca, server


@pytest.fixture
def pod(kube: Kube) -> Iterator[client.V1Pod]:
    name = f"pg-tls-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield core.create_namespaced_pod(name, client.V1Pod(
            metadata=client.V1ObjectMeta(name="trainer-0"),
            spec=client.V1PodSpec(containers=[client.V1Container(
                name="main", image="registry.invalid/podguard/x:never")])))
    finally:
        core.delete_namespace(name)


def test_the_pod_channel_over_tls_with_the_one_in_pod_client(
        kube: Kube, pod: client.V1Pod, tmp_path: Path) -> None:
    assert pod.metadata is not None
    ns, name = str(pod.metadata.namespace), str(pod.metadata.name)
    ca, server_pair = _pki(tmp_path / "pki", "good", sans="IP:127.0.0.1")
    other_ca, _ = _pki(tmp_path / "pki", "other")
    token = tmp_path / "token"
    token.write_text(pod_token(kube.api, pod))
    chan = ChannelRequests()
    requester = DiagnosisRequester(chan, DiagnosisSettings(window_s=1))
    v = requester.decorate([leak(ns, name)])[0]
    assert v.diagnosis is not None
    rid = v.diagnosis["id"]
    reviewer = TokenReviewer(Actuator(kube.api, settings=RemediationSettings()))
    server = ChannelServer(reviewer, [chan.server_kind()], host="127.0.0.1", port=0,
                           tls_cert_file=str(server_pair.cert),
                           tls_key_file=str(server_pair.key)).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        port = server.url.rsplit(":", 1)[1]
        # the diagnosis helper's channel: sees its request over TLS
        diag = DaemonChannel(server.url, token, ca_file=ca.cert)
        text, _ = diag.read()
        assert text is not None and f'"{rid}"' in text
        # the checkpoint helper's client: the same client class, the same channel
        ckpt = ChannelClient(server.url, token, ca_file=ca.cert)
        assert isinstance(ckpt, PodChannelClient) and isinstance(diag.client, PodChannelClient)
        assert [r["id"] for r in ckpt.requests()] == [rid]
        responder = CheckpointResponder(directory=tmp_path / "ckpt", channel=ckpt)
        assert responder.pending(force=True) is None  # a diagnose request: not a checkpoint
        # the answer goes back over TLS and is taken
        result = {"id": rid, "status": "done", "version": rp.VERSION, "sentence": "x grows"}
        diag.write_result(rp.dumps(result))
        assert diag.refused == []
        deadline = time.monotonic() + 10
        while requester.state(ns, name)["status"] != "done":  # type: ignore[index]
            assert time.monotonic() < deadline, requester.state(ns, name)
            requester.poll()
            time.sleep(0.1)
        before = dict(server.stats)

        # a client that trusts another CA: the handshake fails, no token is sent
        wrong = ChannelClient(server.url, token, ca_file=other_ca.cert)
        with pytest.raises(ChannelError, match=r"TLS failed.*CERTIFICATE_VERIFY_FAILED"):
            wrong.requests()
        assert DaemonChannel(server.url, token, ca_file=other_ca.cert).client.ca_file
        with pytest.raises(ChannelError, match="TLS failed"):
            DaemonChannel(server.url, token, ca_file=other_ca.cert).read()
        # the right CA but a name the certificate does not carry
        with pytest.raises(ChannelError, match=r"TLS failed.*Hostname mismatch"):
            ChannelClient(f"https://localhost:{port}", token, ca_file=ca.cert).requests()
        # plain HTTP on the TLS port gets no answer from the channel
        with pytest.raises(ChannelError):
            ChannelClient(f"http://127.0.0.1:{port}", token).requests()
        # a CA file with a plain-http endpoint is a configuration error, said at once
        with pytest.raises(ValueError, match="plain http"):
            PodChannelClient(f"http://127.0.0.1:{port}", token, ca_file=ca.cert)
        assert dict(server.stats) == before  # none of them reached the API or a request kind

        # rotation: a new pair (another CA) under the same file names is served to new
        # connections without a restart; the old CA no longer verifies it
        ca2, pair2 = _pki(tmp_path / "pki2", "rotated")
        time.sleep(0.05)
        shutil.copy(pair2.key, server_pair.key)
        shutil.copy(pair2.cert, server_pair.cert)
        assert [r["id"] for r in ChannelClient(server.url, token, ca_file=ca2.cert)
                .requests()] == []
        with pytest.raises(ChannelError, match="CERTIFICATE_VERIFY_FAILED"):
            ChannelClient(server.url, token, ca_file=ca.cert).requests()
    finally:
        server.close()


def test_a_certificate_that_does_not_load_is_a_config_error(tmp_path: Path) -> None:
    _, pair = _pki(tmp_path, "x")
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("no key here\n")
    with pytest.raises(ConfigError, match=r"channel_tls_cert_file.*cannot load"):
        ServerTls(str(pair.cert), str(bad))
    with pytest.raises(ValueError, match="not a readable PEM CA file"):
        PodChannelClient("https://127.0.0.1:1", tmp_path / "token", ca_file=bad)
