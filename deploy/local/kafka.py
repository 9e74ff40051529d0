"""Kafka of the local stack: one Apache Kafka 4 broker in KRaft mode (broker + controller).

prepare
    Resolves ``org.apache.kafka:kafka_2.13:<KAFKA_VERSION>`` and its runtime dependencies
    (plus a log4j2 binding for slf4j) from Maven Central with
    ``mvn dependency:copy-dependencies`` on ``deploy/local/kafka-jars/pom.xml`` into
    ``cache_dir()/kafka-<version>/libs``, once per machine and version (written to a
    temporary directory and renamed into place, so an interrupted download never counts).
start
    Writes ``server.properties`` (PLAINTEXT and CONTROLLER listeners on 127.0.0.1, ports
    chosen at the first start and kept afterwards, replication factors of 1) and a log4j2
    configuration into ``<state>/kafka/``, formats the storage with ``kafka.tools.StorageTool``
    the first time, and runs ``java -cp 'libs/*' kafka.Kafka server.properties``. Ready means
    a kafka-python admin client gets the cluster description with an unfenced broker.
    Stopping (SIGTERM, a clean shutdown) and starting again keeps data, ports and cluster id.

``Kafka(security=KafkaSecurity())`` adds an ``SSL`` listener (mutual TLS: a client certificate
of the test CA is required) and a ``SASL_SSL`` listener (SCRAM-SHA-512, a user with a random
password added when the storage is formatted); what a client needs is in the record
(:meth:`Kafka.security_files`, :meth:`Kafka.bootstrap`).

Used by :mod:`deploy.local.stack` (CLI) and ``tests/support/stack_fixtures.py``.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy.local import _proc
from deploy.local._proc import LOOPBACK, StackError, cache_dir
from deploy.local._service import ServiceStatus
from deploy.local.k8s_pki import _cert as issue_cert
from deploy.local.stack import (
    atomic_write,
    locked,
    process_status,
    read_record,
    reuse_port,
    write_record,
)

KAFKA_VERSION = os.environ.get("PODGUARD_KAFKA_VERSION", "4.4.0")
"""Kafka version resolved from Maven Central (4.x; its broker needs Java 17 or newer)."""

MIN_JAVA = 17
DEFAULT_JVM_OPTIONS = ("-Xms32m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
"""Small and quick to start on a shared 2-core machine: serial GC, C1 JIT only (measured
faster to ready and ~50 MiB smaller than G1 with C2; throughput is ample for tests)."""
POM = Path(__file__).resolve().parent / "kafka-jars" / "pom.xml"
NODE_ID = 1


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}" / "libs"


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH, checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    hint = ("install a JDK/JRE 17+: apt-get install -y --no-install-recommends "
            "openjdk-17-jre-headless (or set JAVA_HOME)")
    if not java or not Path(java).exists():
        raise StackError(f"java not found; {hint}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True,
                         check=False, timeout=60)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise StackError(f"cannot tell the version of {java}: {out.stderr.strip()}; {hint}")
    major = int(m.group(1)) if m.group(1) != "1" else int(m.group(2) or 0)
    if major < MIN_JAVA:
        raise StackError(f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs {MIN_JAVA}+; {hint}")
    return java


@dataclass(frozen=True)
class KafkaSecurity:
    """Extra listeners of a protected broker (the PLAINTEXT one stays, for the stack's own
    probe and inter-broker traffic): ``SSL`` and ``SASL_SSL`` with SCRAM-SHA-512 users made
    at storage format time (``--add-scram``, as KRaft wants), with a server certificate of a
    test CA (``deploy.local.web``'s openssl helpers) in a PKCS#12 keystore."""

    scram_user: str = "podguard"
    client_certs: bool = True  # the SSL listener requires a client certificate of the CA


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class Kafka:
    """The Kafka broker of the local stack (implements ``Service``)."""

    name = "kafka"

    def __init__(self, *, version: str = KAFKA_VERSION, heap: str = "512m",
                 jvm_options: tuple[str, ...] = DEFAULT_JVM_OPTIONS,
                 ready_timeout: float = 120.0, security: KafkaSecurity | None = None) -> None:
        self.security = security  # None: PLAINTEXT only
        self.version = version
        self.heap = heap  # -Xmx
        self.jvm_options = jvm_options
        self.ready_timeout = ready_timeout

    @staticmethod
    def home(state: Path) -> Path:
        return state / "kafka"

    @classmethod
    def data_dir(cls, state: Path) -> Path:
        return cls.home(state) / "data"

    def bootstrap(self, state: Path, listener: str = "PLAINTEXT") -> str | None:
        """``host:port`` of ``listener`` (PLAINTEXT; SSL and SASL_SSL on a protected one)."""
        rec = read_record(state, self.name)
        key = {"PLAINTEXT": "broker_port", "SSL": "ssl_port", "SASL_SSL": "sasl_ssl_port"}
        port = rec.get(key.get(listener, ""))
        return f"{LOOPBACK}:{port}" if isinstance(port, int) else None

    def security_files(self, state: Path) -> dict[str, str]:
        """``ca_file``, ``username``, ``password_file`` of a protected broker (else empty)."""
        sec = read_record(state, self.name).get("security")
        return {str(k): str(v) for k, v in sec.items()} if isinstance(sec, dict) else {}

    # ------------------------------------------------------------------ Service

    def prepare(self) -> None:
        java_binary()
        libs = libs_dir(self.version)
        if (libs / ".complete").exists():
            return
        with locked(f"kafka-{self.version}"):
            if (libs / ".complete").exists():
                return
            mvn = shutil.which("mvn")
            if not mvn:
                raise StackError("mvn not found (needed once to fetch the Kafka jars); install "
                                 "it: apt-get install -y --no-install-recommends maven")
            libs.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".libs-", dir=libs.parent))
            argv = [mvn, "-B", "-q", "-f", str(POM), f"-Dkafka.version={self.version}",
                    "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
                    "-DincludeScope=runtime"]
            try:
                t0 = time.monotonic()
                proc = subprocess.run(argv, capture_output=True, text=True,
                                      check=False, timeout=1800)
                if proc.returncode != 0:
                    raise StackError(
                        f"resolving Kafka {self.version} jars from Maven Central failed "
                        f"({proc.returncode}); command: {' '.join(argv)}\n"
                        f"{(proc.stdout + proc.stderr).strip()[-3000:]}")
                jar = tmp / f"kafka_2.13-{self.version}.jar"
                if not jar.exists():
                    raise StackError(f"Maven finished but {jar.name} is missing in {tmp}")
                (tmp / ".complete").write_text(f"resolved in {time.monotonic() - t0:.1f}s\n")
                if libs.exists():
                    shutil.rmtree(libs)
                tmp.rename(libs)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def start(self, state: Path) -> None:
        if _proc.alive(_proc.pid_of(self.name, state)):
            if self._ready(state):
                return
            self.stop(state)
        java = java_binary()
        libs = libs_dir(self.version)
        if not (libs / ".complete").exists():
            raise StackError(f"Kafka {self.version} jars are not in {libs}; "
                             f"run: python -m deploy.local prepare kafka")
        rec = read_record(state, self.name)
        broker = reuse_port(rec.get("broker_port"))
        controller = reuse_port(rec.get("controller_port"), taken=[broker])
        extra: dict[str, int] = {}
        if self.security is not None:
            extra["ssl_port"] = reuse_port(rec.get("ssl_port"), taken=[broker, controller])
            extra["sasl_ssl_port"] = reuse_port(rec.get("sasl_ssl_port"),
                                                taken=[broker, controller, extra["ssl_port"]])
        cluster_id = rec.get("cluster_id")
        if not isinstance(cluster_id, str):
            cluster_id = new_cluster_id()
        home = self.home(state)
        self.data_dir(state).mkdir(parents=True, exist_ok=True)
        props = home / "server.properties"
        tls = self._tls(state) if self.security is not None else None
        atomic_write(props, self._properties(state, broker, controller, extra, tls))
        log4j = home / "log4j2.properties"
        atomic_write(log4j, _LOG4J2)
        record: dict[str, object] = {
            "broker_port": broker, "controller_port": controller, "cluster_id": cluster_id,
            "bootstrap": f"{LOOPBACK}:{broker}", "version": f"kafka {self.version}", **extra}
        if tls is not None:
            record["security"] = {k: v for k, v in tls.items() if k != "keystore_password"}
        write_record(state, self.name, record)
        classpath = f"{libs}/*"
        jvm = [java, f"-Xmx{self.heap}", *self.jvm_options, "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
               "-cp", classpath]
        if not (self.data_dir(state) / "meta.properties").exists():
            scram: list[str] = []
            if tls is not None:
                password = Path(tls["password_file"]).read_text().strip()
                scram = ["--add-scram",
                         f"SCRAM-SHA-512=[name={tls['username']},password={password}]"]
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format",
                 f"--cluster-id={cluster_id}",  # an id may start with "-": not a flag
                 "-c", str(props),
                 *scram], capture_output=True, text=True, check=False, timeout=300)
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage in {self.data_dir(state)} failed: "
                                 f"{(fmt.stdout + fmt.stderr).strip()[-2000:]}")
        _proc.start(self.name, [*jvm, "kafka.Kafka", str(props)], state, cwd=home)
        try:
            _proc.wait_until(lambda: self._probe(state), timeout=self.ready_timeout,
                             what="a metadata request answered by an unfenced broker",
                             name=self.name, state=state, interval=0.5)
        except StackError:
            self.stop(state)  # leave nothing half-started behind
            raise

    def stop(self, state: Path) -> None:
        _proc.stop(self.name, state, grace=60.0)

    def status(self, state: Path) -> list[ServiceStatus]:
        return [process_status(
            self.name, state, ready=lambda: self._ready(state), not_ready="no metadata answer",
            url=lambda rec: f"kafka://{rec['bootstrap']}" if "bootstrap" in rec else "")]

    def env(self, state: Path) -> dict[str, str]:
        b = self.bootstrap(state)
        return {"PODGUARD_KAFKA_BOOTSTRAP": b} if b else {}

    # ------------------------------------------------------------------ extras for tests

    def restart(self, state: Path) -> None:
        """Stop the broker cleanly and start it again on the same data, ports and cluster id."""
        self.stop(state)
        self.start(state)

    # ------------------------------------------------------------------ internals

    def _tls(self, state: Path) -> dict[str, str]:
        """Test CA, broker certificate in a PKCS#12 keystore, SCRAM user and password: made
        once under ``<state>/kafka/tls`` (the SCRAM credential lives in the formatted
        storage, so the password must stay the same across restarts)."""
        assert self.security is not None
        d = (self.home(state) / "tls").resolve()
        out = {"ca_file": str(d / "ca.crt"), "keystore": str(d / "broker.p12"),
               "client_cert": str(d / "client.crt"), "client_key": str(d / "client.key"),
               "username": self.security.scram_user, "password_file": str(d / "password"),
               "keystore_password_file": str(d / "keystore-password")}
        if all(Path(out[k]).exists() for k in ("ca_file", "keystore", "password_file",
                                                "keystore_password_file", "client_cert")):
            out["keystore_password"] = Path(out["keystore_password_file"]).read_text().strip()
            return out
        d.mkdir(parents=True, exist_ok=True)
        ca_ext = ["basicConstraints = critical, CA:TRUE",
                  "keyUsage = critical, keyCertSign, cRLSign, digitalSignature",
                  "subjectKeyIdentifier = hash"]
        ca = issue_cert(d, "ca", cn="podguard-kafka-test-ca", org="", ca=None, ext=ca_ext)
        server = issue_cert(d, "broker", cn="127.0.0.1", org="", ca=ca, ext=[
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
            "authorityKeyIdentifier = keyid", "extendedKeyUsage = serverAuth",
            "subjectAltName = IP:127.0.0.1, DNS:localhost"])
        issue_cert(d, "client", cn="podguard", org="", ca=ca, ext=[
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
            "authorityKeyIdentifier = keyid", "extendedKeyUsage = clientAuth"])
        store_pw = secrets.token_urlsafe(18)
        proc = subprocess.run(
            ["openssl", "pkcs12", "-export", "-in", str(server.cert), "-inkey", str(server.key),
             "-certfile", str(ca.cert), "-name", "broker", "-out", out["keystore"],
             "-passout", f"pass:{store_pw}"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StackError(f"openssl pkcs12 failed: {proc.stderr.strip()}")
        for key, value in (("keystore_password_file", store_pw),
                           ("password_file", secrets.token_urlsafe(18))):
            f = Path(out[key])
            f.write_text(value + "\n")
            f.chmod(0o600)
        out["keystore_password"] = store_pw
        return out

    def _properties(self, state: Path, broker: int, controller: int,
                    extra: dict[str, int] | None = None,
                    tls: dict[str, str] | None = None) -> str:
        extra = extra or {}
        listeners = [f"PLAINTEXT://{LOOPBACK}:{broker}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        secure: dict[str, str] = {}
        if tls is not None:
            listeners += [f"SSL://{LOOPBACK}:{extra['ssl_port']}",
                          f"SASL_SSL://{LOOPBACK}:{extra['sasl_ssl_port']}"]
            protocols += ["SSL:SSL", "SASL_SSL:SASL_SSL"]
            secure = {
                "ssl.keystore.type": "PKCS12",
                "ssl.keystore.location": tls["keystore"],
                "ssl.keystore.password": tls["keystore_password"],
                "ssl.key.password": tls["keystore_password"],
                "ssl.client.auth": "none",
                "ssl.truststore.type": "PEM",  # the CA that signs client certificates
                "ssl.truststore.location": tls["ca_file"],
                "listener.name.ssl.ssl.client.auth": (
                    "required" if self.security is not None and self.security.client_certs
                    else "none"),
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            }
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{LOOPBACK}:{controller}",
            "listeners": ",".join([*listeners, f"CONTROLLER://{LOOPBACK}:{controller}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            **secure,
            "log.dirs": str(self.data_dir(state)),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.retention.hours": "168",
            "auto.create.topics.enable": "true",
        }
        head = "# written by deploy/local/kafka.py at each start\n"
        return head + "".join(f"{k}={v}\n" for k, v in props.items())

    def _ready(self, state: Path) -> bool:
        try:
            return self._probe(state)
        except Exception:
            return False

    def _probe(self, state: Path) -> bool:
        """One metadata round trip; False while the port is closed, raises on other failures."""
        bootstrap = self.bootstrap(state)
        if bootstrap is None:
            return False
        host, port = bootstrap.rsplit(":", 1)
        try:  # cheap check first: an admin client against a closed port only logs noise
            with socket.create_connection((host, int(port)), timeout=1.0):
                pass
        except OSError:
            return False
        from kafka import KafkaAdminClient  # kafka-python, only needed once a port answers

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="podguard-stack",
                                 request_timeout_ms=5000)
        try:
            cluster = admin.describe_cluster()
        finally:
            admin.close()
        brokers = cluster.get("brokers") or []
        return any(b.get("broker_id") == NODE_ID and not b.get("is_fenced") for b in brokers)


_LOG4J2 = """\
# written by deploy/local/kafka.py: INFO to stdout (the service log), config dumps quiet
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.kafkaconfig.name = kafka.server.KafkaConfig
logger.kafkaconfig.level = WARN
"""
