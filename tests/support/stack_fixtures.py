"""Session fixtures handing tests the real local services (registered in tests/conftest.py).

One fixture per service, so a test that needs only Prometheus does not wait for Kafka:

- ``local_prometheus`` -> :class:`ServiceHandle` of Prometheus (``PrometheusHandle``: URL,
  targets, query, backfill, restart; :func:`prometheus_client`: podguard's own Prometheus client)
- ``local_alertmanager`` -> :class:`ServiceHandle` of Alertmanager (``AlertmanagerHandle``)
- ``local_kafka`` -> :class:`KafkaHandle` (bootstrap address, admin client, restart)
- ``local_kubernetes`` -> :class:`KubernetesHandle` (KUBECONFIG), when
  ``deploy/local/kubernetes.py`` exists
- ``secure_prometheus`` (HTTPS + basic auth), ``secure_alertmanager`` (HTTPS + client
  certificates): private instances started with ``--web.config.file``
  (:mod:`deploy.local.web`), ``secure_kafka`` (SSL + SASL_SSL with SCRAM-SHA-512): for the
  TLS and auth tests

If a stack is already up (``PODGUARD_STACK_DIR`` or the pointer written by
``python -m deploy.local up``), its running services are reused and left running; services
it lacks are started in it. Without one, the session makes a private temporary state
directory. Either way the session stops, at its end, exactly the services it started (and
deletes the private directory). A service that cannot start fails the tests that need it,
with the reason and the command that shows more; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import pytest

from deploy.local import stack
from deploy.local._proc import StackError
from deploy.local._service import Service
from deploy.local.alertmanager import Alertmanager
from deploy.local.kafka import Kafka, KafkaSecurity
from deploy.local.prometheus import Prometheus
from deploy.local.web import WebSecurity
from detector.transport.prometheus import PrometheusClient


@dataclass
class StackSession:
    """The state directory this pytest session uses and the services it started there."""

    state: Path
    private: bool  # made by this session: deleted at its end
    started: list[Service] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def ensure(self, service: Service) -> None:
        """Reuse ``service`` if it runs in the state dir, else prepare and start it here."""
        if service.name in self.failed:
            pytest.fail(self.failed[service.name], pytrace=False)
        # A shared stack may be used by another pytest session or `up` at the same time.
        lock = contextlib.nullcontext() if self.private else stack.locked()
        try:
            with lock:
                if stack.is_up(service, self.state):
                    return
                service.prepare()
                service.start(self.state)
        except StackError as e:
            self.failed[service.name] = (
                f"the local {service.name} could not start: {e}\n"
                f"To see it yourself: python -m deploy.local up {service.name}  "
                f"(its log: {self.state / (service.name + '.log')}, kept); "
                f"to install what it needs: make prepare")
        if service.name in self.failed:
            pytest.fail(self.failed[service.name], pytrace=False)
        self.started.append(service)

    def close(self) -> None:
        for service in reversed(self.started):
            try:
                service.stop(self.state)
            except StackError as e:  # keep stopping the others
                print(f"could not stop {service.name}: {e}")
        self.started.clear()
        if self.private and not self.failed:  # keep the logs of a failed start
            shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[StackSession]:
    existing = stack.current_dir()
    session = (StackSession(existing, private=False) if existing is not None
               else StackSession(stack.new_dir(), private=True))
    try:
        yield session
    finally:
        session.close()


# --------------------------------------------------------------------------- HTTP services


class _HttpService(Service, Protocol):
    """A stack service reached at one URL (Prometheus, Alertmanager)."""

    def url(self, state: Path) -> str | None: ...

    def restart(self, state: Path) -> None: ...


S = TypeVar("S", bound=_HttpService)


@dataclass(frozen=True)
class ServiceHandle(Generic[S]):
    """A started HTTP service and the state directory it runs in.

    ``url``, ``start``, ``stop`` and ``restart`` are common to every service; any other
    public method of the service that takes the state directory first is offered with the
    state bound, e.g. ``handle.query(promql)`` calls ``service.query(state, promql)``.
    """

    service: S
    state: Path

    @property
    def url(self) -> str:
        url = self.service.url(self.state)
        assert url is not None, f"{self.service.name} has no recorded URL"
        return url

    def start(self) -> None:
        self.service.start(self.state)

    def stop(self) -> None:
        self.service.stop(self.state)

    def restart(self) -> None:
        self.service.restart(self.state)

    def __getattr__(self, name: str) -> functools.partial[Any]:
        if name.startswith("_"):  # dataclass/pickle/copy probes must not reach the service
            raise AttributeError(name)
        method = getattr(self.service, name, None)
        if not callable(method) or next(iter(inspect.signature(method).parameters), "") != "state":
            raise AttributeError(f"{type(self.service).__name__} has no method {name}(state, ...)")
        return functools.partial(method, self.state)


#: ``local_prometheus``: query, set_targets, remove_targets, wait_for_targets, backfill, ...
PrometheusHandle = ServiceHandle[Prometheus]
#: ``local_alertmanager``: alerts, set_webhook, ...
AlertmanagerHandle = ServiceHandle[Alertmanager]


def prometheus_client(prometheus: PrometheusHandle) -> PrometheusClient:
    """podguard's own Prometheus client (:mod:`detector.transport.prometheus`) for the
    stack's plain-HTTP Prometheus (no proxy: loopback)."""
    return PrometheusClient(prometheus.url, where="tests", timeout_s=30)


@pytest.fixture(scope="session")
def local_prometheus(local_stack: StackSession) -> PrometheusHandle:
    service = Prometheus()
    local_stack.ensure(service)
    return ServiceHandle(service, local_stack.state)


@pytest.fixture(scope="session")
def local_alertmanager(local_stack: StackSession) -> AlertmanagerHandle:
    service = Alertmanager()
    local_stack.ensure(service)
    return ServiceHandle(service, local_stack.state)


# --------------------------------------------------------------------------- TLS and auth


def _private(tmp_path_factory: pytest.TempPathFactory, service: S, what: str
             ) -> Iterator[ServiceHandle[S]]:
    """``service`` in a state directory of its own, started here and stopped at the end."""
    state = tmp_path_factory.mktemp(service.name + "-secure")
    try:
        service.prepare()
        service.start(state)
    except StackError as e:
        pytest.fail(f"the local {service.name} {what} could not start: {e}\n"
                    f"(its log: {state / (service.name + '.log')}); to install what it needs: "
                    f"make prepare", pytrace=False)
    try:
        yield ServiceHandle(service, state)
    finally:
        service.stop(state)


@pytest.fixture(scope="session")
def secure_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusHandle]:
    """A second real Prometheus behind ``--web.config.file``: HTTPS with a test CA and basic
    auth (``handle.web_files()``: CA, user, password file)."""
    yield from _private(tmp_path_factory, Prometheus(web=WebSecurity(
        tls=True, basic_auth_user="podguard")), "with TLS and basic auth")


@pytest.fixture(scope="session")
def secure_alertmanager(tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[AlertmanagerHandle]:
    """A second real Alertmanager behind ``--web.config.file``: HTTPS with a test CA that
    requires a client certificate signed by it (``handle.web_files()``)."""
    yield from _private(tmp_path_factory, Alertmanager(web=WebSecurity(
        tls=True, client_certs="require")), "with mutual TLS")


# --------------------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class KafkaHandle:
    service: Kafka
    state: Path

    @property
    def bootstrap(self) -> str:
        b = self.service.bootstrap(self.state)
        assert b is not None, "kafka has no recorded bootstrap address"
        return b

    def listener(self, name: str) -> str:
        """``host:port`` of listener ``name`` (SSL, SASL_SSL: on ``secure_kafka`` only)."""
        b = self.service.bootstrap(self.state, name)
        assert b is not None, f"kafka has no {name} listener"
        return b

    @property
    def security(self) -> dict[str, str]:
        """``ca_file``, ``username``, ``password_file`` of ``secure_kafka``."""
        return self.service.security_files(self.state)

    def admin(self) -> Any:
        """A new ``kafka.KafkaAdminClient`` (PLAINTEXT listener); close it when done."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="podguard-tests")

    def wait_for_partitions(self, topic: str, partitions: int, timeout: float = 60.0
                            ) -> dict[str, Any]:
        """Until the broker's metadata shows ``partitions`` partitions of ``topic``, each with
        a leader: a consumer that joins before then is assigned none of them (kafka-python:
        "No partition metadata for topic") until its next metadata refresh. Returns the
        topic's metadata (``describe_topics``)."""
        admin = self.admin()
        deadline = time.monotonic() + timeout
        seen: list[Any] = []
        try:
            while time.monotonic() < deadline:
                seen = [t for t in admin.describe_topics([topic]) if t.get("name") == topic]
                parts = seen[0].get("partitions", []) if seen else []
                if len(parts) == partitions and all(p["leader_id"] >= 0 for p in parts):
                    return dict(seen[0])
                time.sleep(0.2)
        finally:
            admin.close()
        raise AssertionError(f"topic {topic}: {partitions} partitions with leaders not in the "
                             f"broker's metadata after {timeout:.0f} s: {seen}")

    def stop(self) -> None:
        self.service.stop(self.state)

    def start(self) -> None:
        self.service.start(self.state)

    def restart(self) -> None:
        self.service.restart(self.state)


@pytest.fixture(scope="session")
def local_kafka(local_stack: StackSession) -> KafkaHandle:
    service = Kafka()
    local_stack.ensure(service)
    return KafkaHandle(service, local_stack.state)


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaHandle]:
    """A second real broker with SSL and SASL_SSL (SCRAM-SHA-512) listeners and a test CA
    (``handle.listener("SASL_SSL")``, ``handle.security``), owned by the session."""
    service = Kafka(security=KafkaSecurity())
    state = tmp_path_factory.mktemp("kafka-secure")
    try:
        service.prepare()
        service.start(state)
    except StackError as e:
        pytest.fail(f"the local kafka with SASL_SSL could not start: {e}\n(its log: "
                    f"{state / 'kafka.log'}); to install what it needs: make prepare",
                    pytrace=False)
    try:
        yield KafkaHandle(service, state)
    finally:
        service.stop(state)


# --------------------------------------------------------------------------- Kubernetes


@dataclass(frozen=True)
class KubernetesHandle:
    service: Service
    state: Path

    @property
    def env(self) -> dict[str, str]:
        return self.service.env(self.state)

    @property
    def kubeconfig(self) -> str:
        path = self.env.get("KUBECONFIG")
        assert path and os.path.exists(path), f"kubernetes gives no kubeconfig file ({path!r})"
        return path


@pytest.fixture(scope="session")
def local_kubernetes(local_stack: StackSession) -> KubernetesHandle:
    services = stack.registry()
    if "kubernetes" not in services:
        pytest.fail("deploy/local/kubernetes.py does not exist yet: the local Kubernetes "
                    "service is not part of the stack", pytrace=False)
    service = services["kubernetes"]
    local_stack.ensure(service)
    return KubernetesHandle(service, local_stack.state)
