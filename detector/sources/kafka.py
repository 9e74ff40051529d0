"""The Kafka source: metric samples from a topic, in a consumer group, at least once.

Built by :func:`detector.runtime.build.make_source` for ``sources.kind: kafka`` and polled by
the daemon loop. Records are decoded by :mod:`detector.sources.kafka_codec` (the remote-write
adapter's JSON or the podguard batch); producers should key records by ``namespace/pod`` so a
pod's samples stay in one partition (then several daemons in one group split the pods by
partition and each sees whole pods).

At-least-once: offsets are committed only by :meth:`KafkaSource.commit`, which the daemon calls
after the samples were folded into windows and the verdicts of that step were handed to the
sinks; a crash replays from the last commit and the window engine absorbs the duplicates (same
series and timestamp). A record with refused samples is copied to the dead-letter topic with
the reasons (:func:`~detector.sources.kafka_codec.dead_letter_record`); its offset is committed
only once the dead-letter copy is acknowledged by the broker, so nothing is lost silently.
A bad record never raises and never stalls its partition. While the broker is away the
consumer reconnects by itself and commits are retried on the next step (finite backoff per
attempt, pending offsets kept and merged). TLS and SASL (SCRAM) come from
``sources.kafka.security`` (:mod:`detector.transport.kafka`).

Restarts: a partition newly assigned (a start, a restart, a rebalance) is rewound by
``rewind_s`` (default: the window length, ``windows.horizon_s``, handed in as ``window_s``)
before its committed offset, so a restarted daemon's windows are full again within the time it
takes to read them back, instead of staying stale for a whole window. Until the consumer has
read up to where each such partition ended at assignment, :meth:`KafkaSource.status` reports
``caught_up`` False, so the daemon marks windows stale meanwhile: a half-refilled window raises
no alarm and resolves none. The re-read samples are duplicates the window engine absorbs.

Backfill from Prometheus (``backfill_prometheus``, :mod:`detector.sources.backfill`): at start,
before any record is consumed, the windows are filled from the Prometheus of
``sources.prometheus`` over the window length, so the daemon judges at once; the assignment
at start is then not rewound (resumed at the commit), and Kafka samples at or before the
newest backfilled sample of their series are dropped as overlap. A Prometheus that does not
answer is a logged warning, and the start falls back to the rewind above.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener

from detector.errors import ConfigError
from detector.settings import KafkaSourceSettings, Settings
from detector.sources.base import Delivery, SourceSpec, SourceStatus, next_wait
from detector.sources.kafka_codec import Decoder, Limits, dead_letter_record
from detector.transport.kafka import classify, client_config, connection_failures, probe
from detector.transport.retry import retrying

if TYPE_CHECKING:
    from detector.sources.backfill import PrometheusBackfill


@dataclass
class _PendingDLQ:
    partition_key: tuple[str, int]
    offset: int
    key: bytes | None
    value: bytes
    future: Any = None


class KafkaSource:
    """Consumes ``settings.topic`` as member of ``settings.group_id`` (see module docstring)."""

    name = "kafka"

    def __init__(self, settings: KafkaSourceSettings, *, logger: logging.Logger,
                 clock: Callable[[], float] = time.time,
                 window_s: float | None = None,
                 backfill: PrometheusBackfill | None = None) -> None:
        if not settings.bootstrap_servers:
            raise ConfigError("sources.kafka.bootstrap_servers is empty: name at least one "
                              "host:port of the Kafka cluster")
        self.settings = settings
        self.log = logger
        self.clock = clock
        self.rewind_s = settings.rewind_s if settings.rewind_s is not None else (window_s or 0.0)
        self._catch_up: dict[Any, int] = {}  # TopicPartition -> end offset at assignment
        self._floor: dict[Any, int] = {}  # TopicPartition -> committed offset when rewound
        self._to_rewind: set[Any] = set()  # assigned, not yet rewound (done in poll)
        self.backfill = backfill  # windows from Prometheus at start, before Kafka is read
        self._first_assignment = True
        self.decoder = Decoder(Limits(
            max_message_bytes=settings.max_message_bytes,
            max_samples_per_message=settings.max_samples_per_message,
            max_labels=settings.max_labels,
            max_label_bytes=settings.max_label_bytes,
            max_future_s=settings.max_future_s,
        ), clock=clock)
        self._consumer: Any = None
        self._producer: Any = None
        self._uncommitted: dict[Any, int] = {}  # TopicPartition -> next offset to commit
        self._dlq: list[_PendingDLQ] = []
        self._dlq_full = False  # reading paused: too many dead-letter copies unacknowledged
        self._newest_ts: float | None = None
        self._up = True
        self._commit_failures = 0
        self._next_commit_try = 0.0
        self._seen_reasons: set[str] = set()
        self.committed_total = 0  # commits that went through (for tests and logs)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connects, retried by the one retry policy along ``backoff_s``:
        ServiceUnavailableError if the brokers never answer; AuthError or TlsError at once
        when they refuse the credentials or the certificate does not verify."""
        servers = ", ".join(self.settings.bootstrap_servers)

        def connect() -> None:
            with connection_failures() as logged:
                try:
                    probe(self.settings.bootstrap_servers,
                          client_config(self.settings.security, where="sources.kafka.security"),
                          what=f"Kafka at {servers}", where="sources.kafka.security",
                          timeout_s=min(10.0, self.settings.request_timeout_s))
                    self._connect()
                except Exception as e:  # NoBrokersAvailable, connection, SASL and TLS errors
                    self.close(timeout=1.0)
                    raise classify(e, what=f"Kafka at {servers}",
                                   where="sources.kafka.security", logged=logged) from e

        retrying(connect, delays=self.settings.backoff_s, what=f"connecting to Kafka at {servers}",
                 log=self.log)

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        s = self.settings
        common = {"bootstrap_servers": list(s.bootstrap_servers), "client_id": s.client_id,
                  "request_timeout_ms": int(s.request_timeout_s * 1000),
                  "reconnect_backoff_max_ms": 2000,
                  "metadata_max_age_ms": int(s.metadata_max_age_s * 1000),
                  "bootstrap_timeout_ms": int(s.request_timeout_s * 1000),
                  **client_config(s.security, where="sources.kafka.security")}
        self._consumer = KafkaConsumer(
            group_id=s.group_id, enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset, max_poll_records=s.max_poll_records,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(s.session_timeout_s * 1000 / 3)),
            fetch_max_bytes=max(52_428_800, s.max_message_bytes * 4),
            max_partition_fetch_bytes=max(1_048_576, s.max_message_bytes * 2),
            **common)
        self._known_partitions()
        self._consumer.subscribe([s.topic], listener=_Rebalance(self))
        if s.dead_letter_topic:
            self._producer = KafkaProducer(acks="all", linger_ms=20, retries=5,
                                           max_request_size=max(1_048_576, 2 * 65536 + 4096),
                                           **common)
        self.log.info("kafka source started", extra={"topic": s.topic, "group": s.group_id,
                                                      "bootstrap": list(s.bootstrap_servers)})

    def _known_partitions(self) -> None:
        """Loads the topic's partitions into the consumer's metadata before it joins its
        group: a member whose join raced its first metadata answer was assigned nothing
        ("No partition metadata for topic") and held no partition for minutes (CI, twice:
        a daemon that read nothing for 60 s). Waits up to ``request_timeout_s``; a topic
        that does not exist yet is subscribed to all the same (warned), and read once
        it appears (the metadata refresh, ``metadata_max_age_s``)."""
        assert self._consumer is not None
        s = self.settings
        deadline = time.monotonic() + s.request_timeout_s
        parts: set[int] = set()
        while True:
            parts = self._consumer.partitions_for_topic(s.topic) or set()
            if parts or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if not parts:
            self.log.warning("kafka topic has no partitions yet; subscribing anyway",
                             extra={"topic": s.topic})

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        if self.backfill is not None:
            self.backfill.close()
        if self._producer is not None:
            self._producer.close(timeout=max(0.1, deadline - time.monotonic()))
            self._producer = None
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as e:  # closing must not mask the shutdown
                self.log.warning("closing the kafka consumer failed", extra={"error": repr(e)})
            self._consumer = None

    # ------------------------------------------------------------------ the contract

    def now(self) -> float:
        return self.clock()

    def clock_rate(self) -> float:
        return 1.0  # wall time

    def poll(self, timeout: float) -> Delivery:
        out = Delivery()
        if self._consumer is None:
            time.sleep(timeout)
            return out
        if self.backfill is not None and not self.backfill.finished:
            return self.backfill.step()  # the windows first: no record is consumed meanwhile
        if self._to_rewind:
            self._rewind()
        if len(self._dlq) >= self.settings.max_pending_dead_letters:
            # back-pressure: copies the broker has not acknowledged stay in memory, so no
            # more is read until they are (the offsets behind them stay uncommitted)
            self._settle_dead_letters()
            if len(self._dlq) >= self.settings.max_pending_dead_letters:
                if not self._dlq_full:
                    self.log.warning("dead-letter copies not acknowledged; reading paused",
                                     extra={"pending": len(self._dlq)})
                self._dlq_full = True
                time.sleep(min(timeout, 1.0))
                return out
        self._dlq_full = False
        try:
            polled = self._consumer.poll(timeout_ms=int(max(0.0, timeout) * 1000),
                                         max_records=self.settings.max_poll_records)
            self._up = True
        except Exception as e:  # kafka-python raises KafkaError subclasses; keep running
            self._up = False
            self.log.warning("kafka poll failed; retrying", extra={"error": repr(e)})
            time.sleep(min(timeout, 1.0))
            return out
        token: dict[Any, int] = {}
        cols = out.samples
        for tp, records in polled.items():
            for r in records:
                out.messages += 1
                decoded = self.decoder.decode(r.value, cols)
                if decoded.rejected:
                    out.rejected.update(decoded.rejected)
                    self._dead_letter(tp, r, decoded)
                    out.dead_lettered += 1
                token[tp] = r.offset + 1
        if token:
            out.token = token
        if self.backfill is not None and self.backfill.cutoff:
            self.backfill.drop_overlap(cols)  # already in the windows from Prometheus
        newest = cols.newest()
        if newest is not None:
            self._newest_ts = newest if self._newest_ts is None else max(self._newest_ts, newest)
        if self._catch_up:
            self._check_caught_up()
            out.backfill = True
        return out

    def _rewind(self) -> None:
        """Seeks the partitions assigned since the last poll ``rewind_s`` back from their
        committed offsets (never forward), and notes where each ended (see module docstring)."""
        assert self._consumer is not None
        tps, self._to_rewind = set(self._to_rewind), set()
        tps &= set(self._consumer.assignment())
        if not tps:
            return
        first, self._first_assignment = self._first_assignment, False
        if first and self.backfill is not None and self.backfill.succeeded:
            # the windows came from Prometheus: resume at the commit, nothing to re-read
            self._resume(tps)
            return
        since_ms = int((self.clock() - self.rewind_s) * 1000)
        rewound: dict[int, int] = {}
        try:
            found = self._consumer.offsets_for_times({tp: since_ms for tp in tps})
            ends = self._consumer.end_offsets(list(tps))
            for tp, ot in found.items():
                committed = self._consumer.committed(tp)
                if ot is None or committed is None:
                    continue  # nothing that recent, or no commit: auto_offset_reset decides
                if ot.offset < committed:
                    self._consumer.seek(tp, ot.offset)
                    self._floor[tp] = committed
                    rewound[tp.partition] = committed - ot.offset
                    if ends.get(tp) is not None:
                        self._catch_up[tp] = ends[tp]
        except Exception as e:  # rewinding is a convenience: resume at the commit instead
            self.log.warning("kafka rewind failed; resuming at the committed offsets",
                             extra={"error": repr(e)})
        finally:
            self._resume(tps)
        if rewound:
            self.log.info("kafka partitions rewound to refill the windows",
                          extra={"rewind_s": self.rewind_s, "records": rewound})

    def _resume(self, tps: set[Any]) -> None:
        assert self._consumer is not None
        try:
            self._consumer.resume(*tps)
        except Exception as e:
            self.log.warning("resuming kafka partitions failed", extra={"error": repr(e)})

    def _check_caught_up(self) -> None:
        """Drops the partitions whose position reached their end offset at assignment."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, end in list(self._catch_up.items()):
            if tp not in assigned:
                del self._catch_up[tp]
                continue
            try:
                pos = self._consumer.position(tp, timeout_ms=0)
            except Exception:  # position unknown while the broker is away: ask again later
                continue
            if pos is not None and pos >= end:
                del self._catch_up[tp]
        if not self._catch_up:
            self.log.info("kafka source caught up after the rewind")

    def commit(self, tokens: Sequence[Any]) -> None:
        for tok in tokens:
            if tok:
                for tp, off in tok.items():
                    self._uncommitted[tp] = max(self._uncommitted.get(tp, -1), off)
        if not self._uncommitted or self._consumer is None:
            return
        if time.monotonic() < self._next_commit_try:
            return
        from kafka.structs import OffsetAndMetadata

        limits = self._settle_dead_letters()
        assigned = self._consumer.assignment()
        offsets = {}
        for tp, off in list(self._uncommitted.items()):
            if tp not in assigned:  # revoked: the new owner replays from the last commit
                del self._uncommitted[tp]
                continue
            if off <= self._floor.get(tp, -1):  # re-read history: the commit stays ahead
                del self._uncommitted[tp]
                continue
            cap = limits.get((tp.topic, tp.partition))
            offsets[tp] = OffsetAndMetadata(min(off, cap) if cap is not None else off, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, timeout_ms=int(
                self.settings.request_timeout_s * 1000))
        except Exception as e:
            self._commit_failures += 1
            wait = next_wait(self.settings.backoff_s, self._commit_failures - 1)
            self._next_commit_try = time.monotonic() + wait
            self._up = False
            self.log.warning("kafka commit failed; offsets kept for the next attempt",
                             extra={"error": repr(e), "attempt": self._commit_failures,
                                    "retry_in_s": wait})
            return
        self._commit_failures = 0
        self._up = True
        self.committed_total += 1
        for tp, meta in offsets.items():
            if self._uncommitted.get(tp) == meta.offset:
                del self._uncommitted[tp]

    def status(self) -> SourceStatus:
        lag = None if self._newest_ts is None else max(0.0, self.clock() - self._newest_ts)
        extra: dict[str, float] = {"pending_dead_letters": float(len(self._dlq))}
        if self._consumer is not None:
            behind = 0
            try:
                for tp in self._consumer.assignment():
                    hw = self._consumer.highwater(tp)
                    pos = self._consumer.position(tp, timeout_ms=0) if hw is not None else None
                    if hw is not None and pos is not None:
                        behind += max(0, hw - pos)
                extra["lag_records"] = float(behind)
                extra["partitions"] = float(len(self._consumer.assignment()))
            except Exception:  # position() may need a round trip while the broker is away
                pass
        catching_up = bool(self._catch_up or self._to_rewind)
        if catching_up:
            extra["rewind_partitions"] = float(len(self._catch_up))
        backfilling = self.backfill is not None and not self.backfill.finished
        if self.backfill is not None:
            extra["backfill_samples"] = float(self.backfill.samples)
            extra["backfill_overlap_samples"] = float(self.backfill.overlap)
        detail = "" if self._up else "broker unreachable or commit failing"
        if catching_up and self._up:
            detail = "re-reading the window after an assignment"
        if backfilling:
            catching_up = True
            detail = "backfilling the windows from prometheus"
        if self._dlq_full:
            detail = "reading paused: dead-letter copies not acknowledged by the broker"
        return SourceStatus(up=self._up and not self._dlq_full, caught_up=not catching_up,
                            lag_s=lag, extra=extra, detail=detail)

    # ------------------------------------------------------------------ internals

    def assignment(self) -> list[int]:
        """Partitions of the topic this member holds now."""
        if self._consumer is None:
            return []
        return sorted(tp.partition for tp in self._consumer.assignment())

    def _dead_letter(self, tp: Any, r: Any, decoded: Any) -> None:
        new = set(decoded.rejected) - self._seen_reasons
        if new:
            self._seen_reasons |= new
            self.log.warning("malformed kafka record dead-lettered (first of its kind)",
                             extra={"reasons": dict(decoded.rejected), "partition": tp.partition,
                                    "offset": r.offset})
        if self._producer is None:
            return
        value = dead_letter_record(r.value, decoded, topic=tp.topic, partition=tp.partition,
                                   offset=r.offset, timestamp_ms=getattr(r, "timestamp", None))
        item = _PendingDLQ((tp.topic, tp.partition), r.offset, r.key, value)
        self._send(item)
        self._dlq.append(item)

    def _send(self, item: _PendingDLQ) -> None:
        try:
            item.future = self._producer.send(self.settings.dead_letter_topic, key=item.key,
                                              value=item.value)
        except Exception as e:  # buffer full or broker gone: retried at commit time
            item.future = None
            self.log.warning("dead-letter send failed; will retry", extra={"error": repr(e)})

    def _settle_dead_letters(self) -> dict[tuple[str, int], int]:
        """Waits for dead-letter copies; re-sends failed ones. Returns, per partition, the
        first offset whose copy is not yet acknowledged (commits must stay below it)."""
        if not self._dlq or self._producer is None:
            return {}
        try:
            self._producer.flush(timeout=self.settings.request_timeout_s)
        except Exception as e:
            self.log.warning("dead-letter flush failed", extra={"error": repr(e)})
        still: list[_PendingDLQ] = []
        for item in self._dlq:
            f = item.future
            if f is not None and f.is_done and f.succeeded():
                continue
            if f is None or f.is_done:
                self._send(item)  # failed: try again, keep the source offset uncommitted
            still.append(item)
        self._dlq = still
        caps: dict[tuple[str, int], int] = {}
        for item in still:
            k = item.partition_key
            caps[k] = min(caps.get(k, item.offset), item.offset)
        return caps


class _Rebalance(ConsumerRebalanceListener):
    """Rewinds newly assigned partitions by ``rewind_s`` (refilling windows after a restart)
    and drops the pending offsets of revoked ones."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.source._uncommitted.pop(tp, None)
            self.source._catch_up.pop(tp, None)
            self.source._floor.pop(tp, None)
            self.source._to_rewind.discard(tp)
        self.source.log.info("kafka partitions revoked",
                             extra={"partitions": sorted(tp.partition for tp in revoked)})

    def on_partitions_assigned(self, assigned: Any) -> None:
        src = self.source
        src.log.info("kafka partitions assigned",
                     extra={"partitions": sorted(tp.partition for tp in assigned)})
        if not assigned or src.rewind_s <= 0 or src._consumer is None:
            return
        # The listener runs on the client's IO thread, where blocking calls (offsets_for_times,
        # committed, end_offsets) are refused: pause the partitions and rewind them at the
        # start of the next poll, on the daemon's thread.
        src._to_rewind |= set(assigned)
        try:
            src._consumer.pause(*assigned)
        except Exception as e:  # records read meanwhile are re-read: duplicates, absorbed
            src.log.debug("pausing for the rewind failed", extra={"error": repr(e)})


def _build(settings: Settings, logger: logging.Logger, out_dir: Path | None) -> KafkaSource:
    backfill = None
    if settings.sources.kafka.backfill_prometheus:
        from detector.sources.backfill import PrometheusBackfill

        backfill = PrometheusBackfill(settings.sources.prometheus, logger=logger,
                                      window_s=settings.windows.horizon_s)
    return KafkaSource(settings.sources.kafka, logger=logger,
                       window_s=settings.windows.horizon_s, backfill=backfill)


SOURCE = SourceSpec("kafka", _build)
"""``sources.kind: kafka``: a member of a consumer group owns partitions, not a node (it
adopts no node's alerts); ``backfill_prometheus`` fills each pod's window at start."""
