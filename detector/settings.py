"""One settings tree for podguard, validated, unknown keys rejected.

Every field has a default and a description that gives its unit. Loaded from one YAML
file (``load_settings``) plus environment overrides ``PODGUARD__SECTION__FIELD=value``
(double underscores separate levels, the variable's name in any case), both pydantic-settings
sources; the environment wins. Callers receive the settings object explicitly; nothing reads
globals (``Settings()`` is the defaults).

Validation (what ``podguard config --check`` reports, every problem at once, each naming the
file or the environment variable and the key): unknown keys (with "did you mean" when a known
key is close), YAML errors with their line and column, a file that is not UTF-8 text; numbers
are finite; every duration (a field ending ``_s``) is a number of seconds or a duration string
read by :func:`parse_duration` (``90s``, ``15m``, ``1h30m``, ``500ms``, ``7d``), between 1 ms
and one year, with tighter ranges where a value drives a loop or a grid (``windows.step_s``
1 s to 1 h, at most 50,000 points per window); hosts are IP addresses or DNS names; URLs are
``http``/``https`` with a valid host and port; the source named by ``sources.kind`` has what
it needs (a Prometheus URL, Kafka bootstrap servers).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from detector.channels import read_metrics
from detector.errors import ConfigError, InputError
from detector.kinds import ALERT_KINDS, LEAK_KINDS, AlertKind, LeakKind

MIN_DURATION_S = 1e-3
MAX_DURATION_S = 366 * 86400.0
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d|w)")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from a number or a duration string as Prometheus writes them: ``"90s"``,
    ``"15m"``, ``"1h30m"``, ``"500ms"``, ``"7d"``, ``"2w"`` (a bare number is seconds).

    The one duration parser (settings, ``podguard train --since``). :class:`InputError` (a
    ``ValueError``) for anything else, NaN and infinities included."""
    if isinstance(value, bool):
        raise InputError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            if not text or _DURATION_RE.sub("", text) != "":
                raise InputError(f"not a duration: {value!r} (seconds, or e.g. 90s, 15m, "
                                 f"1h30m, 500ms, 7d)") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_RE.findall(text))
    else:
        raise InputError(f"not a duration: {value!r}")
    if not math.isfinite(seconds):
        raise InputError(f"a duration must be finite, got {value!r}")
    return seconds


_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS name, else ValueError saying why."""
    h = host.strip()
    if h != host or not h:
        raise ValueError(f"{host!r} is not a host: give an IP address or a DNS name "
                         f"(0.0.0.0 or :: for every interface)")
    try:
        ipaddress.ip_address(h.strip("[]") if h.startswith("[") else h)
        return host
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", h):
        raise ValueError(f"{host!r} is not a valid IPv4 address (four numbers 0-255)")
    if ":" in h:
        raise ValueError(f"{host!r} is not a valid IPv6 address")
    labels = h.rstrip(".").split(".")
    if len(h) > 253 or not all(_HOST_LABEL.match(x) for x in labels):
        raise ValueError(f"{host!r} is not a valid host name (letters, digits, '-' and '.')")
    return host


def check_url(url: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """``url`` if it is an absolute URL of one of ``schemes`` with a valid host and port."""
    if any(c.isspace() for c in url):
        raise ValueError(f"{url!r} is not a URL (it contains white space)")
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{url!r} is not a URL podguard can use: the scheme must be "
                         f"{' or '.join(s + '://' for s in schemes)}, e.g. http://prometheus:9090")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host (e.g. http://prometheus:9090)")
    check_host(parts.hostname)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port (1-65535)") from None
    if port == 0:
        raise ValueError(f"{url!r} has port 0")
    return url


def _is_duration(name: str | None) -> bool:
    return bool(name) and name.endswith("_s") and not name.endswith("_per_s")  # type: ignore[union-attr]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _read_durations(cls, v: Any, info: ValidationInfo) -> Any:
        """Every ``*_s`` field takes seconds or a duration string (one parser)."""
        if not _is_duration(info.field_name):
            return v
        if isinstance(v, str):
            return parse_duration(v)
        if isinstance(v, list):
            return [parse_duration(x) if isinstance(x, str) else x for x in v]
        return v

    @field_validator("*", mode="after")
    @classmethod
    def _duration_range(cls, v: Any, info: ValidationInfo) -> Any:
        if not _is_duration(info.field_name):
            return v
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, bool) or not isinstance(x, int | float):
                continue
            if x > MAX_DURATION_S:
                raise ValueError(f"{x:g} s is more than a year ({MAX_DURATION_S:g} s)")
            if 0 < x < MIN_DURATION_S:
                raise ValueError(f"{x:g} s is shorter than 1 ms")
        return v


MAX_WINDOW_POINTS = 50_000


class WindowSettings(_Section):
    horizon_s: float = Field(4 * 3600, gt=0, le=31 * 86400,
                             description="Length of a pod window, seconds.")
    step_s: float = Field(
        60, ge=1, le=3600, description="Grid step of a window and evaluation period, seconds."
    )
    pod_ttl_s: float = Field(
        900, gt=0, description="A pod with no sample for this long is dropped, seconds."
    )

    @model_validator(mode="after")
    def _grid(self) -> WindowSettings:
        points = self.horizon_s / self.step_s
        if points < 4:
            raise ValueError(f"horizon_s ({self.horizon_s:g} s) must be at least 4 steps "
                             f"(step_s is {self.step_s:g} s)")
        if points > MAX_WINDOW_POINTS:
            raise ValueError(f"horizon_s / step_s is {points:,.0f} points per window; at most "
                             f"{MAX_WINDOW_POINTS:,} (raise step_s or shorten horizon_s)")
        return self


class DetectionSettings(_Section):
    leak_fpr: float = Field(
        1e-4, gt=0, lt=1,
        description="Target false-alarm rate per healthy window of the leak detector (fraction).",
    )
    drift_fpr: float = Field(
        1e-5, gt=0, lt=1,
        description="Target false-alarm rate per healthy window of the drift detector "
                    "(fraction; 1e-4 would page ~6 windows per 1,000 healthy pod-h at a 60 s "
                    "step, above a target of 1 episode).",
    )
    confirm_steps: int = Field(
        2, ge=1,
        description="Consecutive positive evaluations needed before a verdict is raised "
                    "(count); a leak whose projected OOM comes before one step after the "
                    "confirmation is raised at once.",
    )
    leak_horizon_s: float = Field(
        86400, gt=0,
        description="A growing pod is raised as a leak only once its projected time to OOM is "
                    "within this horizon (slow growth that would need days to reach the limit, "
                    "e.g. a daily cycle seen through a 4 h window, is watched, not paged), "
                    "seconds.",
    )
    oom_floor_s: float = Field(
        600, ge=0,
        description="Time to OOM under which a leak is critical, seconds.",
    )
    explain: bool = Field(True, description="Attach SHAP explanations to positive verdicts.")


# ---------------------------------------------------------------- transport (TLS, auth)
# Owned by ``detector.transport``: how podguard reaches Prometheus, Alertmanager and Kafka.


class HttpClientSettings(_Section):
    """TLS and authentication of an HTTP client (``detector.transport.http``), as in
    Prometheus's own ``http_config``. Verification is on; secrets come from files, which are
    re-read when they change (Kubernetes rotates projected tokens and mounted secrets)."""

    ca_file: str = Field(
        "", description="PEM file of the CA(s) that sign the server's certificate; empty: the "
                        "system's CAs (path).")
    cert_file: str = Field("", description="Client certificate (PEM) for mutual TLS; needs "
                                           "key_file (path).")
    key_file: str = Field("", description="Private key (PEM) of cert_file (path).")
    insecure_skip_verify: bool = Field(
        False, description="Accept any server certificate (no verification; only for tests).")
    bearer_token_file: str = Field(
        "", description="File holding a bearer token sent as 'Authorization: Bearer' (e.g. "
                        "a projected service-account token); re-read when it changes (path).")
    username: str = Field("", description="Basic-auth user name; needs password_file.")
    password_file: str = Field(
        "", description="File holding the basic-auth password; re-read when it changes (path).")
    headers: dict[str, str] = Field(
        {}, description="Extra headers sent with every request, e.g. X-Scope-OrgID: tenant-1 "
                        "(Mimir, Cortex, Thanos tenants).")


class KafkaSecuritySettings(_Section):
    """TLS and SASL of the Kafka clients (``detector.transport.kafka``)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol of the listener podguard talks to.")
    ca_file: str = Field(
        "", description="PEM file of the CA(s) that sign the brokers' certificates; empty: "
                        "the system's CAs (SSL, SASL_SSL; path).")
    cert_file: str = Field("", description="Client certificate (PEM) for mutual TLS (path).")
    key_file: str = Field("", description="Private key (PEM) of cert_file (path).")
    check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to.")
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_SSL, SASL_PLAINTEXT).")
    username: str = Field("", description="SASL user name.")
    password_file: str = Field("", description="File holding the SASL password (path).")


class AlertingSettings(_Section):
    """Alerts to Alertmanager and Kubernetes Events (``detector.sinks.alertmanager``,
    ``detector.sinks.k8s_events``)."""

    alertmanager_urls: list[str] = Field(
        [], description="Alertmanager base URLs; every alert goes to each (an HA pair: two). "
                        "Empty: no Alertmanager sink.")
    alertmanager_http: HttpClientSettings = Field(
        default_factory=HttpClientSettings,
        description="TLS and authentication towards the Alertmanagers.")

    @field_validator("alertmanager_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [check_url(u) for u in v]

    resend_interval_s: float = Field(
        60, gt=0, description="An active alert is re-sent this often, seconds.")
    resolve_timeout_s: float = Field(
        300, gt=0, description="endsAt of an active alert is this far ahead of each send, so "
                               "alerts of a podguard that died expire by themselves, seconds.")
    gone_after_s: float = Field(
        600, gt=0, description="An alert whose pod had no judged verdict for this long is "
                               "resolved (pod gone or no data); keep it above windows.step_s, "
                               "seconds.")
    healthy_to_resolve: int = Field(
        2, ge=1, description="Consecutive healthy verdicts that resolve an alert (count); as "
                             "detection.confirm_steps, so a restarted podguard does not flap.")
    queue_max: int = Field(
        10000, ge=1, description="Alerts held per Alertmanager while it is unreachable (count); "
                                 "beyond it the oldest are dropped and counted.")
    batch_max: int = Field(500, ge=1, description="Alerts per POST (count).")
    timeout_s: float = Field(10, gt=0, description="HTTP timeout of one request, seconds.")
    backoff_s: list[float] = Field(
        [1, 2, 5, 10, 30], min_length=1,
        description="Waits between delivery attempts, seconds; after the last the alerts stay "
                    "queued and a new round starts (Retry-After is honoured).")
    critical_below_s: float = Field(
        3600, ge=0, description="Time to OOM under which an incident starts critical, or gets "
                                "its critical alert beside the first (escalation), seconds.")
    warning_below_s: float = Field(
        24 * 3600, ge=0, description="Time to OOM under which an incident starts (or escalates "
                                     "to) warning; above: info, seconds.")
    runbook_url: str = Field(
        "https://github.com/podguard/podguard/blob/main/docs/runbooks.md#{alertname}",
        description="Runbook link; {alertname} is replaced by the alert's name.")
    kubernetes_events: bool = Field(
        True, description="Write an Event and the latest-verdict annotation on each flagged pod.")
    event_interval_s: float = Field(
        600, gt=0, description="The same Event on the same object is repeated (count+1) at most "
                               "this often, seconds.")


class RemediationSettings(_Section):
    """Checkpoint-then-reschedule remediation (``detector.remediation``); off by default."""

    enabled: bool = Field(False, description="Act on opted-in pods; off: alert only.")
    dry_run: bool = Field(False, description="Print the plan and change nothing in the cluster.")
    opt_in_label: str = Field(
        "podguard.io/remediate", description="Pods opt in with this label set to \"true\".")
    kinds: list[AlertKind] = Field(
        list(ALERT_KINDS),
        description="Verdict kinds that start a remediation.")
    checkpoint_timeout_s: float = Field(
        300, gt=0, description="Wait for the checkpoint acknowledgement, seconds; then the pod "
                               "is not evicted (unless below the floor) and the alert escalates.")
    checkpoint_max_age_s: float = Field(
        900, gt=0, description="An acknowledged checkpoint older than this when eviction is "
                               "finally allowed is requested again, seconds.")
    evict_unacknowledged_below_s: float = Field(
        600, ge=0, description="Time to OOM under which a pod is evicted without an "
                               "acknowledged checkpoint (it dies anyway), seconds.")
    max_evictions_per_node: int = Field(
        1, ge=0, description="Evictions per node within budget_window_s (count).")
    max_evictions_per_namespace: int = Field(
        2, ge=0, description="Evictions per namespace within budget_window_s (count).")
    budget_window_s: float = Field(3600, gt=0, description="Window of the budgets, seconds.")
    cooldown_s: float = Field(
        3600, ge=0, description="Minimum time between two remediations of one workload, seconds.")
    retry_s: float = Field(
        60, gt=0, description="Wait before retrying an eviction refused by a "
                              "PodDisruptionBudget or deferred by a budget, seconds.")
    node_action: Literal["cordon", "taint", "none"] = Field(
        "cordon", description="For node-level causes: cordon the node, or taint it NoSchedule.")
    node_cause_min_pods: int = Field(
        2, ge=2, description="Pods on one node flagged with pre-failure drift in one "
                             "evaluation that make the cause node-level (count).")
    avoid_node: bool = Field(
        True, description="For pod-level causes, taint the node PreferNoSchedule while the "
                          "replacement is scheduled, so it lands elsewhere if it can.")
    avoid_ttl_s: float = Field(
        900, gt=0, description="The PreferNoSchedule taint is removed after this at the latest, "
                               "seconds.")
    resync_s: float = Field(
        300, gt=0, description="Workloads are re-listed for remediation records this often, "
                               "seconds.")
    namespace: str = Field(
        "", description="podguard's own namespace, where its remediation records (Leases) "
                        "live; empty: the POD_NAMESPACE environment variable (downward API).")
    channel_host: str = Field(
        "0.0.0.0", description="Address of the pod channel (checkpoint requests and answers, "
                               "authenticated by the pods' projected service-account tokens).")
    channel_port: int = Field(
        9847, ge=0, le=65535, description="Port of the pod channel (behind the node-local "
                                          "Service podguard-channel; 0: any free port).")
    channel_tls_cert_file: str = Field(
        "", description="Certificate (PEM) the pod channel is served with over HTTPS; it must "
                        "name the Service the pods call (podguard-channel.<namespace>.svc); "
                        "re-read when it changes; empty: plain HTTP (path).")
    channel_tls_key_file: str = Field(
        "", description="Private key (PEM) of channel_tls_cert_file (path).")
    channel_audience: str = Field(
        "podguard", min_length=1, description="Audience the pods' projected tokens must have.")
    api_backoff_s: list[float] = Field(
        [0.5, 1, 2, 5, 10], min_length=1,
        description="Waits between retries of a Kubernetes API call answered 429/5xx or not "
                    "answered, seconds (Retry-After is honoured).")

    @model_validator(mode="after")
    def _channel_tls_pair(self) -> RemediationSettings:
        if self.channel_tls_key_file and not self.channel_tls_cert_file:
            raise ValueError("channel_tls_key_file is set but channel_tls_cert_file is empty: "
                             "give the certificate the pod channel is served with")
        return self


# ---------------------------------------------------------------- daemon sections
# Owned by the daemon (``detector.sources``, ``detector.runtime``): sources, server, runtime,
# model.

# The series of each exporter the channel and limit tables read (detector.channels).
CADVISOR_METRICS: tuple[str, ...] = read_metrics("cadvisor")
KSM_METRICS: tuple[str, ...] = read_metrics("kube-state-metrics")
DCGM_METRICS: tuple[str, ...] = read_metrics("dcgm")


class _SourceSection(_Section):
    """A source's settings (a section of ``sources``): ``module`` is the module that builds
    the source (its ``SOURCE``, a :class:`detector.sources.base.SourceSpec`); a new source is
    its module, its section class here and its field (and kind) in :class:`SourcesSettings`."""

    module: ClassVar[str]

    def incomplete(self, sources: SourcesSettings) -> str | None:
        """What this source lacks when it is the chosen one (None: nothing)."""
        return None


class PrometheusSourceSettings(_SourceSection):
    """Pull from Prometheus (``detector.sources.prometheus``)."""

    module: ClassVar[str] = "detector.sources.prometheus"

    def incomplete(self, sources: SourcesSettings) -> str | None:
        if not self.url:
            return ("sources.kind is prometheus but sources.prometheus.url is empty: give the "
                    "Prometheus base URL, e.g. http://prometheus:9090")
        return None

    url: str = Field("", description="Prometheus base URL, e.g. http://prometheus:9090 "
                                     "(required when sources.kind is prometheus).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_url(v) if v else v

    node_name: str = Field(
        "", description="Node whose pods are watched; empty: the NODE_NAME environment variable "
                        "(downward API); neither: every pod Prometheus has.")

    def node(self, environ: Mapping[str, str] | None = None) -> str:
        """The node this daemon judges: ``node_name``, else ``NODE_NAME`` of ``environ``
        (default: the process environment); "" if neither is set."""
        env = os.environ if environ is None else environ
        return self.node_name or env.get("NODE_NAME", "")
    node_matcher: str = Field(
        'node="{node}"', description="PromQL label matcher scoping series to the node; "
                                     "{node} is replaced by the node name.")
    extra_matchers: str = Field(
        "", description="More PromQL label matchers added to every query, comma-separated "
                        "(e.g. namespace!=\"kube-system\").")
    metrics: list[str] = Field(
        [*CADVISOR_METRICS, *KSM_METRICS, *DCGM_METRICS],
        min_length=1,
        description="Series read (cAdvisor, kube-state-metrics, DCGM); limits of "
                    "kube_pod_container_resource_limits are read for resource=memory only; "
                    "kube_pod_container_status_last_terminated_reason_oomkilled is read from "
                    "kube_pod_container_status_last_terminated_reason (every reason).")
    query_step_s: float = Field(
        15, ge=1, le=3600,
        description="Resolution of range queries (use the scrape interval), seconds.")
    poll_s: float = Field(
        15, ge=1, description="How often new samples are pulled, seconds.")
    backfill_s: float = Field(
        4 * 3600, ge=0, description="History pulled at start (use windows.horizon_s), seconds.")
    backfill_chunk_s: float = Field(
        1800, gt=0, description="History (at start, or a gap after an outage) is delivered in "
                                "slices of at most this much time, oldest first, one per poll, "
                                "so memory stays bounded; seconds.")
    max_points: int = Field(
        10000, ge=10, le=11000,
        description="Points per series per range query (Prometheus refuses more than 11,000); "
                    "longer ranges are chunked, count.")
    max_gap_backfill_s: float = Field(
        4 * 3600, ge=0, description="The longest outage whose gap is backfilled on recovery; an "
                                    "older gap is skipped, seconds.")
    max_future_s: float = Field(
        300, gt=0, le=7 * 86400,
        description="Samples stamped more than this ahead of the daemon's clock are dropped "
                    "and counted (reason future_timestamp); seconds.")
    timeout_s: float = Field(15, gt=0, description="HTTP timeout of one query, seconds.")
    http: HttpClientSettings = Field(
        default_factory=HttpClientSettings,
        description="TLS and authentication towards Prometheus (or Mimir, Thanos, Cortex).")
    backoff_s: list[float] = Field(
        [1, 2, 5, 10, 30], min_length=1,
        description="Waits between attempts while Prometheus is down or slow, seconds; after "
                    "the last the last wait repeats (the daemon never exits for it).")


class KafkaSourceSettings(_SourceSection):
    """Consume samples from Kafka (``detector.sources.kafka``, formats in
    ``detector.sources.kafka_codec``)."""

    module: ClassVar[str] = "detector.sources.kafka"

    def incomplete(self, sources: SourcesSettings) -> str | None:
        if not self.bootstrap_servers:
            return ("sources.kind is kafka but sources.kafka.bootstrap_servers is empty: give "
                    "at least one host:port")
        if self.backfill_prometheus and not sources.prometheus.url:
            return ("sources.kafka.backfill_prometheus is on but sources.prometheus.url is "
                    "empty: give the Prometheus to backfill from, e.g. http://prometheus:9090")
        return None

    bootstrap_servers: list[str] = Field(
        [], description="Kafka bootstrap host:port list (required when sources.kind is kafka).")

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        for hp in v:
            host, sep, port = hp.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{hp!r} is not host:port (e.g. kafka-0.kafka:9092)")
            check_host(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        return v

    topic: str = Field("podguard-samples", min_length=1, description="Topic of metric samples.")
    group_id: str = Field("podguard", min_length=1,
                          description="Consumer group; daemons of one group share partitions.")
    dead_letter_topic: str = Field(
        "podguard-dead-letter", description="Malformed input goes here with its reason; "
                                            "empty: counted and logged only.")
    max_pending_dead_letters: int = Field(
        1000, ge=1, le=100_000,
        description="Dead-letter copies (at most 64 KiB of payload each) held while the broker "
                    "has not acknowledged them; at this many, reading pauses until it does, so "
                    "memory stays bounded and nothing is committed past them (count).")
    client_id: str = Field("podguard", description="Kafka client id.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without a committed offset starts.")
    rewind_s: float | None = Field(
        None, ge=0, description="On partition assignment (a start or restart), re-read this "
                                "much history before the committed offset, so windows are "
                                "full again at once instead of after a whole window; the "
                                "source reports not caught up (windows stale, no alarm from "
                                "a half-filled window) until it has read back to where the "
                                "partition ended; null (default): windows.horizon_s; 0: "
                                "resume exactly at the commit; seconds.")
    backfill_prometheus: bool = Field(
        False, description="At start, before reading Kafka, fill each pod's window "
                           "(windows.horizon_s) from the Prometheus of sources.prometheus (url, "
                           "http, node scope, metrics), so the daemon judges at once; Kafka "
                           "samples that overlap are dropped; a Prometheus that does not answer "
                           "falls back to rewind_s.")
    max_poll_records: int = Field(5000, ge=1, description="Records per poll (count).")
    max_message_bytes: int = Field(
        1 << 20, ge=1024, description="Larger messages are dead-lettered, bytes.")
    max_samples_per_message: int = Field(
        100_000, ge=1, description="Batch messages with more samples are dead-lettered (count).")
    max_labels: int = Field(64, ge=4, description="Samples with more labels are dead-lettered "
                                                  "(count).")
    max_label_bytes: int = Field(
        1024, ge=16, description="Samples with a longer label name or value are dead-lettered, "
                                 "bytes.")
    max_future_s: float = Field(
        300, gt=0, le=7 * 86400,
        description="Samples stamped more than this ahead of the daemon's clock are "
                    "dead-lettered (reason future_timestamp), so one bad clock cannot move the "
                    "window engine's clock; seconds.")
    session_timeout_s: float = Field(
        10, gt=0, description="Group session timeout: a dead consumer's partitions move after "
                              "this, seconds.")
    request_timeout_s: float = Field(30, gt=0, description="Kafka request timeout, seconds.")
    metadata_max_age_s: float = Field(
        30, gt=0, le=3600,
        description="Refresh the topic's metadata at least this often, so partitions added to "
                    "the topic (or a topic created after the daemon subscribed, whose first "
                    "join saw no partitions) are assigned within about this long "
                    "(kafka-python's own default: 300); seconds.")
    security: KafkaSecuritySettings = Field(
        default_factory=KafkaSecuritySettings, description="TLS and SASL towards the brokers.")
    backoff_s: list[float] = Field(
        [1, 2, 5, 10], min_length=1,
        description="Waits between attempts to commit or dead-letter while the broker is "
                    "unreachable, seconds; the last wait repeats.")


class LocalSourceSettings(_SourceSection):
    """The embedded default (``detector.sources.local``): real workloads as child processes,
    sampled from /proc, in compressed time."""

    module: ClassVar[str] = "detector.sources.local"

    time_scale: float = Field(
        60, gt=0, description="Model seconds per real second: at 60 a real minute is an hour "
                              "of telemetry, so the leak detector's hour-long views fill in "
                              "minutes (ratio).")
    sample_interval_s: float = Field(
        0.25, gt=0, description="Real time between two samples of the workloads, seconds "
                                "(15 model seconds at the default time scale).")
    healthy_workloads: int = Field(2, ge=0, le=8,
                                   description="Healthy training loops started (count).")
    leaky_workloads: int = Field(1, ge=0, le=4, description="Leaking training loops started "
                                                            "(count).")
    leak_after_s: float = Field(
        20, ge=0, description="Real time before a leaky loop starts keeping its losses, "
                              "seconds.")
    leak_bytes_per_s: float = Field(
        6 * 2**20, gt=0, description="Approximate real growth of a leaky loop, bytes per real "
                                     "second (the default fills the limit about 3 real minutes "
                                     "after the leak begins: an OOM about 3 model hours ahead, "
                                     "which the fast path warns of within the 150 s demo).")
    memory_limit_bytes: int = Field(
        3 << 29, gt=0, description="Memory limit given to each pseudo-pod (a torch process "
                                   "starts near 550 MiB); a workload whose RSS passes it is "
                                   "killed and restarted (its OOM), bytes.")
    steps_per_s: float = Field(2, gt=0, le=50, description="Training steps per real second of "
                                                           "each workload (rate).")
    namespace: str = Field("local", min_length=1, description="Namespace of the pseudo-pods.")
    node: str = Field("", description="Node label of the pseudo-pods; empty: this host's name.")


class SourcesSettings(_Section):
    """Where samples come from."""

    kind: Literal["local", "prometheus", "kafka"] = Field(
        "local", description="local (the embedded default workloads), prometheus or kafka.")
    prometheus: PrometheusSourceSettings = Field(default_factory=PrometheusSourceSettings)
    kafka: KafkaSourceSettings = Field(default_factory=KafkaSourceSettings)
    local: LocalSourceSettings = Field(default_factory=LocalSourceSettings)

    @model_validator(mode="after")
    def _chosen_source_is_complete(self) -> SourcesSettings:
        section = getattr(self, self.kind)
        problem = section.incomplete(self) if isinstance(section, _SourceSection) else None
        if problem:
            raise ValueError(problem)
        return self


class ServerSettings(_Section):
    """The daemon's HTTP endpoints: /metrics, /healthz, /readyz (``detector.runtime.server``)."""

    enabled: bool = Field(True, description="Serve the endpoints.")
    host: str = Field("127.0.0.1", description="Address to bind (0.0.0.0 in a pod).")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)

    port: int = Field(0, ge=0, le=65535,
                      description="Port; 0: a free port chosen at start and logged (number).")
    stall_after_s: float = Field(
        120, gt=0, description="/healthz fails when the main loop made no progress for this "
                               "long, seconds.")
    timeout_s: float = Field(
        10, gt=0, le=300, description="Socket timeout of each HTTP connection: a client that "
                                      "sends or reads nothing for this long is dropped, "
                                      "seconds.")
    max_connections: int = Field(
        16, ge=1, le=1024, description="HTTP connections served at once (one thread each); "
                                       "more are answered 503 and closed (count).")
    pod_metrics_min_ratio: float = Field(
        0.8, ge=0, description="Per-pod gauges (podguard_pod_*) are exported for pods with a "
                               "positive verdict or a score at least this fraction of the "
                               "threshold (ratio); 0: every judged pod.")
    pod_metrics_max_pods: int = Field(
        200, ge=0, description="Hard cap on the pods with per-pod gauges; the most anomalous "
                               "(score / threshold) are kept, the rest counted in "
                               "podguard_pod_metrics_omitted (count).")


class RuntimeSettings(_Section):
    """The daemon loop (``detector.runtime.daemon``)."""

    lateness_s: float = Field(
        0.5, ge=0, description="A window is scored this long after its end, so samples stamped "
                               "at the boundary arrive first, seconds (of the source's clock).")
    grace_period_s: float = Field(
        20, gt=0, description="On SIGTERM: flush sinks and commit within this, seconds (keep "
                              "it under the pod's terminationGracePeriodSeconds).")
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON objects "
                                                                    "or plain text.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged.")
    console: bool = Field(True, description="Print positive verdicts on stdout.")
    verdicts_path: str = Field(
        "podguard-verdicts.jsonl", description="JSON-lines file of positive verdicts; empty: "
                                               "none.")
    remediation_dry_run: bool = Field(
        True, description="Print the remediation each positive verdict would start (the "
                          "embedded default has no cluster to act on).")


class ModelSettings(_Section):
    """Which model scores and how a new one is picked up (``detector.runtime.models``)."""

    root: str = Field("", description="Model root with a 'current' pointer file (written by "
                                      "training's promote) or one bundle directory; empty: the "
                                      "shipped default model.")
    watch_s: float = Field(
        10, gt=0, description="How often the 'current' pointer is checked for a new version, "
                              "seconds.")


class DiagnosisSettings(_Section):
    """Asking a pod flagged with a leak what grows inside it (:mod:`detector.diagnosis`)."""

    enabled: bool = Field(True, description="Ask flagged pods for an in-pod diagnosis (pods "
                                            "without the podguard helper answer nothing; the "
                                            "alert says so after the timeout).")
    kinds: list[LeakKind] = Field(
        list(LEAK_KINDS), description="Verdict kinds that ask for one.")
    window_s: float = Field(60, ge=1, le=600, description="Time between the pod's two "
                                                          "snapshots, seconds.")
    timeout_s: float = Field(120, gt=0, description="Wait for the answer after the window; "
                                                    "then the diagnosis is 'unavailable', "
                                                    "seconds.")
    repeat_s: float = Field(3600, gt=0, description="Ask the same pod again after, seconds.")


ENV_PREFIX = "PODGUARD__"


class Settings(BaseSettings):
    """The whole tree. Sections are added by the components that own them.

    ``Settings()`` is the defaults plus its arguments and reads nothing else;
    :func:`load_settings` adds the YAML file and the environment."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=True,
                                      allow_inf_nan=False, env_prefix=ENV_PREFIX,
                                      env_nested_delimiter="__", case_sensitive=False)

    windows: WindowSettings = Field(default_factory=WindowSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)
    remediation: RemediationSettings = Field(default_factory=RemediationSettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    diagnosis: DiagnosisSettings = Field(default_factory=DiagnosisSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # no globals: load_settings passes the file and environment


class _NotYaml:
    """An override whose text is not YAML: validation fails at its key, naming the variable."""

    def __init__(self, text: str, problem: str) -> None:
        self.text, self.problem = text, problem

    def __repr__(self) -> str:
        return repr(self.text)


class _EnvSource(EnvSettingsSource):
    """``PODGUARD__SECTION__FIELD`` overrides from ``environ``, split by pydantic-settings'
    nested delimiter. A string setting takes the text as it is (``::``); any other value is
    read as YAML (``9464``, ``[1s, 1m]``, ``true``); an empty value stays ``''``. ``origin``
    records which variable set each key, so an error names the variable, not the file."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(Settings)
        self.env_vars = {k.lower(): v for k, v in environ.items()}
        n = len(ENV_PREFIX)
        self.origin = {tuple(k[n:].lower().split("__")): k for k in sorted(environ)
                       if k.upper().startswith(ENV_PREFIX)}

    def field_is_complex(self, field: FieldInfo) -> bool:
        return field.annotation is not str

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as e:
            return _NotYaml(value, f"not a valid YAML value: {_one_line(e)}")

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        for path, var in self.origin.items():
            if not any(path):
                raise ConfigError(f"environment variable {var} names no setting")
            if path[0] not in Settings.model_fields:  # an unknown section: "did you mean"
                data[path[0]] = self.env_vars[var.lower()]
        return data


class _YamlFileSource(PydanticBaseSettingsSource):
    """The YAML file, read by :func:`_read_yaml` (errors name the file, line and column)."""

    def __init__(self, path: Path) -> None:
        super().__init__(Settings)
        self.tree = _read_yaml(path)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.tree.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.tree


def _one_line(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e)
    return " ".join(str(problem).split())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read configuration {path}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"configuration {path} is not UTF-8 text (byte {e.start} is "
                          f"0x{data[e.start]:02x}): is it a binary file?") from e
    if "\x00" in text:
        raise ConfigError(f"configuration {path} contains NUL bytes: is it a binary file?")
    try:
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"configuration {path}{where}: not valid YAML: "
                          f"{_one_line(e)}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"configuration {path} is not valid YAML: {_one_line(e)}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"configuration {path} must be a mapping at the top level "
                          f"(sources:, windows:, ...), not a {type(loaded).__name__}")
    return loaded


def _section_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The settings class that holds the field at ``loc`` (for "did you mean")."""
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _problem(err: Any, origin: Mapping[tuple[str, ...], str], path: Path | None) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        model = _section_at(loc[:-1])
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        msg = "unknown key" + (f"; did you mean {close[0]!r}?" if close else
                               (f" (known here: {', '.join(known)})" if known else ""))
    elif isinstance(err.get("input"), _NotYaml):
        msg = f"{err['input'].problem} (got {err['input']!r})"
    elif "input" in err and err["type"] not in ("missing", "value_error") and not isinstance(
            err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    # the variable that set this key or a section above it, or one that wrote below a value
    var = next((v for k, v in origin.items() if loc[:len(k)] == k
                or (k[:len(loc)] == loc and _section_at(loc) is None)), None)
    if var is not None:
        return f"environment variable {var}: {key}: {msg}"
    where = f"{path}: " if path is not None else ""
    return f"{where}{key or '(top level)'}: {msg}"


def load_settings(path: str | Path | None = None, *,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from a YAML file (optional) and ``PODGUARD__...`` overrides.

    Raises :class:`ConfigError` naming every invalid or unknown field, each with the file
    (or the environment variable that set it) and the key.
    """
    p = Path(path) if path is not None else None
    env = _EnvSource(os.environ if environ is None else environ)
    sources: tuple[PydanticBaseSettingsSource, ...] = (env,) + (
        (_YamlFileSource(p),) if p is not None else ())  # the environment wins over the file
    try:
        return Settings(_build_sources=(sources, {}))
    except ValidationError as e:
        problems = [_problem(err, env.origin, p) for err in e.errors()]
        if len(problems) == 1:
            raise ConfigError(f"invalid configuration: {problems[0]}") from e
        raise ConfigError(f"invalid configuration ({len(problems)} problems):\n  - "
                          + "\n  - ".join(problems)) from e


def defaults_yaml() -> str:
    """The default configuration as commented YAML (for ``podguard config --print-defaults``)."""
    lines: list[str] = []

    def emit(model: type[BaseModel], indent: int) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            pad = "  " * indent
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                lines.append(f"{pad}{name}:")
                emit(ann, indent + 1)
                continue
            if field.description:
                lines.append(f"{pad}# {field.description}")
            default = (field.default_factory() if field.default_factory is not None  # type: ignore[call-arg]
                       else field.default)
            value = yaml.safe_dump(default, default_flow_style=True, width=10**6).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{name}: {value}")

    emit(Settings, 0)
    return "\n".join(lines) + "\n"
