"""TLS and authentication towards a real Alertmanager (issue 14 item 9).

The Alertmanager is a second real one started with ``--web.config.file``: HTTPS with a test
CA that requires a client certificate signed by it (``deploy/local/web.py``). Bearer token and
tenant header (Mimir's multi-tenant Alertmanager) are checked by a gateway in front of it
(:class:`tests.support.gateway.Gateway`). Alerts are read back from the real Alertmanager.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deploy.local.web import WebFiles
from detector.settings import AlertingSettings, HttpClientSettings
from detector.sinks.alertmanager import AlertmanagerSink
from detector.verdicts import Explanation, Verdict
from tests.support.gateway import Gateway
from tests.support.stack_fixtures import AlertmanagerHandle

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def verdict(ns: str) -> Verdict:
    return Verdict(ts=time.time(), namespace=ns, pod="trainer-0", node="node-a",
                   is_anomaly=True, kind="memory_leak", score=2.5, threshold=1.0,
                   time_to_oom_s=3 * 3600.0, time_to_oom_range_s=None,
                   leak_rate_bytes_per_s=30_000.0,
                   explanation=Explanation("working set +100 MiB/h", {"a": 1.0}))


@pytest.fixture
def ns() -> str:
    return f"pg-amtls-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def web(secure_alertmanager: AlertmanagerHandle) -> WebFiles:
    files = secure_alertmanager.web_files()
    assert files is not None and secure_alertmanager.url.startswith("https://")
    return files


def mtls(web: WebFiles, **kw: object) -> HttpClientSettings:
    base: dict[str, object] = {"ca_file": web.ca_file, "cert_file": web.client_cert,
                               "key_file": web.client_key}
    base.update(kw)
    return HttpClientSettings.model_validate(base)


def sink(url: str, http: HttpClientSettings, fake: FakeSleep) -> AlertmanagerSink:
    return AlertmanagerSink([url], settings=AlertingSettings(alertmanager_http=http,
                                                             backoff_s=[1, 2], timeout_s=5),
                            background=False, sleep=fake)


def test_alerts_reach_it_over_mutual_tls(secure_alertmanager: AlertmanagerHandle,
                                         web: WebFiles, ns: str) -> None:
    fake = FakeSleep()
    s = sink(secure_alertmanager.url, mtls(web), fake)
    s.send([verdict(ns)])
    assert s.flush(0) and fake.waits == []
    got = secure_alertmanager.alerts(namespace=ns)
    assert [a["labels"]["alertname"] for a in got] == ["PodMemoryLeak"]
    assert s.targets[0].sent == 1


@pytest.mark.parametrize("missing", ["client certificate", "ca"])
def test_a_tls_failure_is_clear_keeps_the_alerts_and_does_not_retry(
        secure_alertmanager: AlertmanagerHandle, web: WebFiles, ns: str, missing: str,
        caplog: pytest.LogCaptureFixture) -> None:
    http = (mtls(web, cert_file="", key_file="") if missing == "client certificate"
            else mtls(web, ca_file=""))
    fake = FakeSleep()
    s = sink(secure_alertmanager.url, http, fake)
    s.send([verdict(ns)])
    with caplog.at_level(logging.ERROR, logger="podguard.sinks.alertmanager"):
        assert s.flush(0) is False
    assert fake.waits == []  # permanent: no retry storm
    assert s.pending() == {secure_alertmanager.url: 1}  # not the alerts' fault: kept
    assert s.targets[0].rejected == 0
    text = caplog.text
    assert "TLS handshake failed" in text and "stay queued until this is fixed" in text
    if missing == "ca":
        assert "set alerting.alertmanager_http.ca_file" in text
    assert secure_alertmanager.alerts(namespace=ns) == []
    # fixed configuration (as after a reload): the kept alert goes out
    s2 = sink(secure_alertmanager.url, mtls(web), fake)
    s2.targets[0].pending.update(s.targets[0].pending)
    assert s2.flush(0)
    assert len(secure_alertmanager.alerts(namespace=ns)) == 1


@pytest.fixture
def gateway(secure_alertmanager: AlertmanagerHandle, web: WebFiles) -> Iterator[Gateway]:
    upstream = requests.Session()
    upstream.trust_env = False
    upstream.verify = web.ca_file
    upstream.cert = (web.client_cert, web.client_key)
    tls = (str(Path(web.ca_file).with_name("server.crt")),
           str(Path(web.ca_file).with_name("server.key")))
    with Gateway(secure_alertmanager.url, upstream, tls=tls, token="am-token",
                 require_headers={"X-Scope-OrgID": "tenant-a"}) as gw:
        yield gw


def test_bearer_token_and_tenant_header_and_a_wrong_token(
        secure_alertmanager: AlertmanagerHandle, web: WebFiles, gateway: Gateway, ns: str,
        tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("am-token\n")
    http = HttpClientSettings(ca_file=web.ca_file, bearer_token_file=str(token),
                              headers={"X-Scope-OrgID": "tenant-a"})
    fake = FakeSleep()
    s = sink(gateway.url, http, fake)
    s.send([verdict(ns)])
    assert s.flush(0)
    assert gateway.seen[-1].headers["Authorization"] == "Bearer am-token"
    assert len(secure_alertmanager.alerts(namespace=ns)) == 1

    token.write_text("stale-token\n")
    s.escalate(ns, "trainer-0", "checkpoint timed out")  # a new state to send
    assert s.flush(0) is False
    assert gateway.statuses()[-1] == 401 and fake.waits == []
    assert s.pending() == {gateway.url: 2}  # the warning resolved, the critical fired: kept
