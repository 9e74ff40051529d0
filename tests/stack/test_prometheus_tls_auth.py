"""TLS and authentication towards a real Prometheus (issue 14 item 9), for the daemon's source
and for retraining, through the one Prometheus client.

The Prometheus here is a second real one started with ``--web.config.file`` (HTTPS with a
test CA, basic auth with a bcrypt-hashed random password; ``deploy/local/web.py``). Bearer
tokens and tenant headers are what a gateway in front of Prometheus checks (Mimir's,
kube-rbac-proxy): :class:`tests.support.gateway.Gateway`, itself HTTPS with a certificate of
the same CA, forwards to the real one. 429/503 with ``Retry-After`` come from the same
gateway's script. Waits are recorded, not slept.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deploy.local.prometheus import Series, to_openmetrics
from deploy.local.web import WebFiles
from detector.errors import AuthError, ConfigError, ServiceUnavailableError, TlsError
from detector.settings import HttpClientSettings, PrometheusSourceSettings
from detector.sources.prometheus import PrometheusSource
from detector.traces import WORKING_SET
from detector.transport.prometheus import PrometheusClient
from detector.transport.retry import http_date
from tests.support.gateway import Gateway
from tests.support.stack_fixtures import PrometheusHandle
from training.history import pull_history

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

LOG = logging.getLogger("test.prometheus_tls")
STEP = 15.0
N = 121  # 30 min at 15 s


@dataclass(frozen=True)
class History:
    prom: PrometheusHandle
    web: WebFiles
    ns: str
    ts: list[float]

    @property
    def selector(self) -> str:
        return f'{WORKING_SET}{{namespace="{self.ns}"}}'

    def http(self, **kw: object) -> HttpClientSettings:
        base: dict[str, object] = {"ca_file": self.web.ca_file, "username": self.web.username,
                                   "password_file": self.web.password_file}
        base.update(kw)
        return HttpClientSettings.model_validate(base)

    def upstream_session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.web.ca_file
        s.auth = (self.web.username, self.web.password)
        return s

    def pull(self, url: str, http: HttpClientSettings, **kw: object) -> object:
        return pull_history(url, start=self.ts[0], end=self.ts[-1], step=STEP,
                            metrics=(WORKING_SET,), matcher=f'namespace="{self.ns}"',
                            incidents=False, http=http, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def history(secure_prometheus: PrometheusHandle) -> History:
    web = secure_prometheus.web_files()
    assert web is not None and web.scheme == "https" and secure_prometheus.url.startswith(
        "https://")
    ns = f"tls-{uuid.uuid4().hex[:8]}"
    base = (int(time.time()) // 60) * 60 - 2 * 3600
    ts = [float(base + STEP * i) for i in range(N)]
    labels = {"namespace": ns, "pod": "trainer-0", "container": "main", "node": "node-a"}
    assert secure_prometheus.backfill(to_openmetrics(
        [Series(WORKING_SET, labels, [(t, 1e9 + 4096.0 * i) for i, t in enumerate(ts)])]))
    return History(secure_prometheus, web, ns, ts)


def _values(df: object) -> list[float]:
    import pandas as pd

    assert isinstance(df, pd.DataFrame)
    return df.sort_values("timestamp")["value"].tolist()


# ------------------------------------------------------------------ verification on by default


def test_verification_is_on_a_server_of_an_unknown_ca_is_refused_with_a_clear_error(
        history: History) -> None:
    slept: list[float] = []
    no_ca = history.http(ca_file="")
    with pytest.raises(TlsError) as e:
        history.pull(history.prom.url, no_ca, sleep=slept.append)
    msg = str(e.value)
    assert "certificate verify failed" in msg
    assert "set sources.prometheus.http.ca_file" in msg
    assert slept == []  # permanent: not retried

    client = PrometheusClient(history.prom.url, no_ca, where="sources.prometheus.http",
                              timeout_s=5)
    with pytest.raises(TlsError, match="TLS handshake failed"):
        client.query_range(history.selector, history.ts[0], history.ts[-1], STEP)


def test_plain_http_to_the_tls_port_and_a_skip_verify_opt_out(history: History) -> None:
    # insecure_skip_verify is the explicit opt-out (tests only); with it the data comes back
    insecure = history.http(ca_file="", insecure_skip_verify=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning: that is the point
        df = history.pull(history.prom.url, insecure)
    assert len(_values(df)) == N
    with pytest.raises(ConfigError, match="contradict"):
        history.pull(history.prom.url, history.http(insecure_skip_verify=True))


# ------------------------------------------------------------------ basic auth


def test_basic_auth_with_the_ca_reads_the_whole_history(history: History) -> None:
    df = history.pull(history.prom.url, history.http(), max_points=40)  # 4 chunks
    assert _values(df) == [1e9 + 4096.0 * i for i in range(N)]


def test_the_source_backfills_over_tls_with_basic_auth(history: History) -> None:
    clock = [history.ts[-1] + 1.0]
    source = PrometheusSource(PrometheusSourceSettings(
        url=history.prom.url, http=history.http(), extra_matchers=f'namespace="{history.ns}"',
        metrics=[WORKING_SET], query_step_s=STEP, poll_s=STEP, backfill_s=N * STEP,
        backfill_chunk_s=N * STEP + STEP, timeout_s=10, backoff_s=[1]),
        logger=LOG, clock=lambda: clock[0], sleep=lambda s: None)
    source.start()
    try:
        d = source.poll(1.0)
    finally:
        source.close()
    assert source.status().up, source.status().detail
    assert sorted(d.samples.value) == [1e9 + 4096.0 * i for i in range(N)]


def test_a_wrong_password_is_a_permanent_auth_error_and_no_retry_storm(
        history: History, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    slept: list[float] = []
    with pytest.raises(AuthError) as e:
        history.pull(history.prom.url, history.http(password_file=str(wrong)),
                     sleep=slept.append)
    assert "HTTP 401" in str(e.value) and "sources.prometheus.http.password_file" in str(e.value)
    assert slept == []
    with pytest.raises(AuthError, match="wants credentials"):
        history.pull(history.prom.url, history.http(username="", password_file=""))

    # the daemon's source keeps running but waits the longest backoff, and says why once
    clock = [history.ts[-1]]
    source = PrometheusSource(PrometheusSourceSettings(
        url=history.prom.url, http=history.http(password_file=str(wrong)),
        extra_matchers=f'namespace="{history.ns}"', metrics=[WORKING_SET], query_step_s=STEP,
        backfill_s=600, timeout_s=5, backoff_s=[1, 2, 30]),
        logger=LOG, clock=lambda: clock[0], sleep=lambda s: None)
    source.start()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        source.poll(1.0)
        assert source._due == clock[0] + 30  # not 1 s: the same credentials fail again
        clock[0] += 30
        source.poll(1.0)
    source.close()
    st = source.status()
    assert not st.up and "HTTP 401" in st.detail
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR


# ------------------------------------------------------------------ bearer token, tenant header


def _rotate(link_dir: Path, token: str) -> None:
    """Write ``token`` the way the kubelet updates a projected volume: a new timestamped
    directory, then an atomic flip of the ``..data`` symlink the file name points through."""
    new = link_dir / f"..{time.time_ns()}"
    new.mkdir()
    (new / "token").write_text(token)
    tmp = link_dir / "..data_tmp"
    os.symlink(new.name, tmp)
    os.replace(tmp, link_dir / "..data")
    if not (link_dir / "token").is_symlink():
        os.symlink("..data/token", link_dir / "token")


@pytest.fixture
def gateway(history: History) -> Iterator[Gateway]:
    tls = (str(Path(history.web.ca_file).with_name("server.crt")),
           str(Path(history.web.ca_file).with_name("server.key")))
    with Gateway(history.prom.url, history.upstream_session(), tls=tls, token="token-1",
                 require_headers={"X-Scope-OrgID": "tenant-a"}) as gw:
        yield gw


def test_bearer_token_file_and_tenant_header_and_the_token_is_reread_when_rotated(
        history: History, gateway: Gateway, tmp_path: Path) -> None:
    tokens = tmp_path / "serviceaccount"
    tokens.mkdir()
    _rotate(tokens, "token-1\n")
    http = HttpClientSettings(ca_file=history.web.ca_file,
                              bearer_token_file=str(tokens / "token"),
                              headers={"X-Scope-OrgID": "tenant-a"})
    client = PrometheusClient(gateway.url, http, where="sources.prometheus.http", timeout_s=10)
    first = client.query_range(history.selector, history.ts[0], history.ts[-1], STEP)
    assert len(first[0]["values"]) == N
    seen = gateway.seen[-1]
    assert seen.headers["Authorization"] == "Bearer token-1"
    assert seen.headers["X-Scope-OrgID"] == "tenant-a"

    gateway.token = "token-2"  # the issuer rotated; the old token is refused from now on
    _rotate(tokens, "token-2\n")
    again = client.query_range(history.selector, history.ts[0], history.ts[-1], STEP)
    assert again == first
    assert gateway.seen[-1].headers["Authorization"] == "Bearer token-2"
    assert gateway.statuses()[-2:] == [200, 200]

    gateway.token = "token-3"  # rotated at the issuer, not (yet) in the file: refused, clearly
    with pytest.raises(AuthError, match="bearer_token_file"):
        client.query_range(history.selector, history.ts[0], history.ts[-1], STEP)
    client.close()


def test_a_missing_tenant_header_is_refused_not_retried(history: History, gateway: Gateway,
                                                         tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("token-1")
    slept: list[float] = []
    with pytest.raises(AuthError, match="HTTP 403"):
        history.pull(gateway.url, HttpClientSettings(ca_file=history.web.ca_file,
                                                     bearer_token_file=str(token)),
                     sleep=slept.append)
    assert slept == [] and gateway.statuses() == [403]


# ------------------------------------------------------------------ 429 / 503 and Retry-After


def test_retry_after_of_429_and_503_is_honoured_by_history_and_the_source(
        history: History) -> None:
    script = [(503, {"Retry-After": "7"}), (429, {"Retry-After": http_date(time.time() + 20)}),
              (503, {})]
    with Gateway(history.prom.url, history.upstream_session(), script=script) as gw:
        slept: list[float] = []
        df = history.pull(gw.url, HttpClientSettings(), sleep=slept.append)
        assert gw.statuses() == [503, 429, 503, 200]
        assert len(_values(df)) == N
        assert slept[0] == 7 and 17 <= slept[1] <= 20 and slept[2] == 2.0  # backoff 0.5, 1, 2

        gw.script = [(503, {"Retry-After": "40"})]
        clock = [history.ts[-1]]
        source = PrometheusSource(PrometheusSourceSettings(
            url=gw.url, extra_matchers=f'namespace="{history.ns}"', metrics=[WORKING_SET],
            query_step_s=STEP, backfill_s=600, timeout_s=5, backoff_s=[1, 2]),
            logger=LOG, clock=lambda: clock[0], sleep=lambda s: None)
        source.start()
        source.poll(1.0)
        assert not source.status().up and "HTTP 503" in source.status().detail
        assert source._due == clock[0] + 40  # Retry-After, longer than the 1 s backoff
        clock[0] += 40
        d = source.poll(1.0)
        source.close()
        assert source.status().up and len(d.samples) > 0


def test_retries_are_finite_and_say_so(history: History) -> None:
    with Gateway(history.prom.url, history.upstream_session(),
                 script=[(503, {"Retry-After": "1"})] * 10) as gw:
        slept: list[float] = []
        with pytest.raises(ServiceUnavailableError, match="gave up after 6 attempts"):
            history.pull(gw.url, HttpClientSettings(), sleep=slept.append)
        assert gw.statuses() == [503] * 6
        assert slept == [1.0, 1.0, 2.0, 4.0, 8.0]


def test_podguard_train_takes_tls_and_auth_from_the_settings_file(history: History,
                                                                   tmp_path: Path) -> None:
    import argparse

    import yaml

    from training import job

    cfg = tmp_path / "podguard.yaml"
    cfg.write_text(yaml.safe_dump({"sources": {"prometheus": {"http": {
        "ca_file": history.web.ca_file, "username": history.web.username,
        "password_file": history.web.password_file}}}}))
    args = argparse.Namespace(prometheus=history.prom.url, traces=None, config=cfg,
                              since=f"{int(time.time() - history.ts[0]) + 60}s", step=STEP,
                              matcher=f'namespace="{history.ns}"', no_progress=True)
    df = job.load_history(args)
    got = df[df["metric"] == WORKING_SET]  # evaluated on a grid from now - since: each
    # sample once (the grid and the samples are 15 s apart), then the 5 min lookback
    assert sorted(set(got["value"])) == [1e9 + 4096.0 * i for i in range(N)]
    args.config = None  # without it: verification on, the test CA unknown
    with pytest.raises(TlsError):
        job.load_history(args)
