"""The Kafka message decoder: both formats, every refusal reason, and a fuzz test."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.sources.base import SampleColumns
from detector.sources.kafka_codec import (
    REASONS,
    Decoder,
    Limits,
    dead_letter_record,
    encode_adapter,
    encode_batch,
)

LABELS = {"namespace": "ml", "pod": "trainer-0", "container": "main", "node": "node-a"}
WS = "container_memory_working_set_bytes"


def _decode(payload: bytes, limits: Limits | None = None) -> tuple[SampleColumns, object]:
    out = SampleColumns()
    res = Decoder(limits).decode(payload, out)
    return out, res


def test_adapter_message_as_the_remote_write_adapter_writes_it() -> None:
    msg = json.dumps({"timestamp": "2026-01-01T00:00:00Z", "value": "1.5", "name": WS,
                      "labels": {"__name__": WS, **LABELS}}).encode()
    out, res = _decode(msg)
    assert res.accepted == 1 and not res.rejected  # type: ignore[attr-defined]
    assert out.timestamp == [1767225600.0]
    assert (out.namespace, out.pod, out.container, out.node, out.metric, out.value) == (
        ["ml"], ["trainer-0"], ["main"], ["node-a"], [WS], [1.5])


def test_batch_round_trip_and_encode_adapter_round_trip() -> None:
    samples = [(1767225600.0 + 15 * i, 1e9 + i) for i in range(50)]
    out, res = _decode(encode_batch([(WS, LABELS, samples),
                                     ("container_cpu_usage_seconds_total", LABELS,
                                      [(1767225600.0, 3.0)])]))
    assert res.accepted == 51  # type: ignore[attr-defined]
    assert list(zip(out.timestamp[:50], out.value[:50])) == samples
    out2, res2 = _decode(encode_adapter(WS, LABELS, 1767225601.25, 42.0))
    assert res2.accepted == 1 and out2.timestamp == [1767225601.25]  # type: ignore[attr-defined]


def test_exported_labels_are_used_when_plain_ones_are_missing() -> None:
    labels = {"exported_namespace": "ml", "exported_pod": "p", "exported_container": "c"}
    out, _ = _decode(encode_batch([(WS, labels, [(1767225600.0, 1.0)])]))
    assert (out.namespace, out.pod, out.container) == (["ml"], ["p"], ["c"])


def test_kube_state_metrics_last_terminated_reason_becomes_the_oom_killed_flag() -> None:
    """Every reason of the series is read: OOMKilled -> 1, another reason -> 0, a 0 (no
    current reason, as some exporters write for the others) carries nothing; both formats."""
    name = "kube_pod_container_status_last_terminated_reason"
    flag = "kube_pod_container_status_last_terminated_reason_oomkilled"
    t = 1767225600.0
    out, res = _decode(encode_batch([
        (name, {**LABELS, "reason": "OOMKilled"}, [(t, 1.0), (t + 15, 1.0)]),
        (name, {**LABELS, "pod": "b", "reason": "Error"}, [(t, 1.0)]),
        (name, {**LABELS, "pod": "c", "reason": "OOMKilled"}, [(t, 0.0)]),
        (name, {**LABELS, "pod": "d", "reason": "OOMKilled"}, [(t, 7e300)])]))
    assert res.accepted == len(out) == 4 and res.ignored == 1  # type: ignore[attr-defined]
    assert out.metric == [flag] * 4
    assert list(zip(out.pod, out.value)) == [("trainer-0", 1.0), ("trainer-0", 1.0),
                                             ("b", 0.0), ("d", 1.0)]
    for reason, value, want in (("OOMKilled", 1.0, [1.0]), ("Completed", 1.0, [0.0]),
                                ("OOMKilled", 0.0, [])):
        out, res = _decode(encode_adapter(name, {**LABELS, "reason": reason}, t, value))
        assert out.value == want and res.accepted == len(want)  # type: ignore[attr-defined]
    # without a reason label it is no flag (an unknown infrastructure series, as before)
    out, _ = _decode(encode_adapter(name, LABELS, t, 1.0))
    assert out.metric == [name]


def _reasons(payload: bytes, limits: Limits | None = None) -> dict[str, int]:
    _, res = _decode(payload, limits)
    return dict(res.rejected)  # type: ignore[attr-defined]


def test_each_refusal_names_its_reason() -> None:
    ok_ts = 1767225600.0
    adapter = {"timestamp": "2026-01-01T00:00:00Z", "value": "1", "name": WS,
               "labels": dict(LABELS)}
    cases: list[tuple[bytes, str]] = [
        (b"\xff\xfe not json", "not_json"),
        (b"{not json", "not_json"),
        (b"[1, 2, 3]", "bad_shape"),
        (b'{"hello": "world"}', "bad_shape"),
        (json.dumps({**adapter, "value": "NaN"}).encode(), "non_finite_value"),
        (json.dumps({**adapter, "value": "+Inf"}).encode(), "non_finite_value"),
        (json.dumps({**adapter, "value": "twelve"}).encode(), "bad_value"),
        (json.dumps({**adapter, "value": [1]}).encode(), "bad_value"),
        (json.dumps({**adapter, "timestamp": "yesterday"}).encode(), "bad_timestamp"),
        (json.dumps({**adapter, "timestamp": "2026-01-01T00:00:00"}).encode(), "bad_timestamp"),
        (json.dumps({**adapter, "name": "bad-name"}).encode(), "bad_metric_name"),
        (json.dumps({**adapter, "name": 7}).encode(), "bad_type"),
        (json.dumps({**adapter, "labels": "ml/trainer"}).encode(), "bad_type"),
        (json.dumps({**adapter, "labels": {"pod": "x"}}).encode(), "missing_label"),
        (json.dumps({**adapter, "labels": {**LABELS, "pod": 3}}).encode(), "bad_type"),
        (json.dumps({**adapter, "labels": {**LABELS, "x": "y" * 5000}}).encode(),
         "label_too_long"),
        (json.dumps({**adapter, "labels": {**LABELS, **{f"l{i}": "v" for i in range(3000)}}})
         .encode(), "too_many_labels"),
        (json.dumps({**adapter, "name": "container_cpu_usage_seconds_total", "value": "-1"})
         .encode(), "negative_counter"),
        (json.dumps({**adapter, "value": "-5"}).encode(), "negative_value"),
        (encode_batch([(WS, LABELS, [(ok_ts, 1.0)])]).replace(b'"podguard":1', b'"podguard":2'),
         "bad_shape"),
        (json.dumps({"podguard": 1, "series": [{"name": WS, "labels": LABELS,
                                                "samples": [[ok_ts, "1"]]}]}).encode(),
         "bad_value"),
        (json.dumps({"podguard": 1, "series": [{"name": WS, "labels": LABELS,
                                                "samples": [[ok_ts, 10**400]]}]}).encode(),
         "bad_value"),
        (json.dumps({"podguard": 1, "series": [{"name": WS, "labels": LABELS,
                                                "samples": [[True, 1.0]]}]}).encode(),
         "bad_timestamp"),
        (json.dumps({"podguard": 1, "series": [{"name": WS, "labels": LABELS,
                                                "samples": [[ok_ts * 1000, 1.0]]}]}).encode(),
         "bad_timestamp"),
        (json.dumps({"podguard": 1, "series": [{"name": WS, "labels": LABELS,
                                                "samples": [[ok_ts]]}]}).encode(), "bad_type"),
        (b"[" * 100_000 + b"]" * 100_000, "not_json"),
    ]
    for payload, reason in cases:
        got = _reasons(payload)
        assert got == {reason: 1}, (payload[:120], got)
    assert _reasons(b"x" * (1 << 20 + 1)) == {"too_large": 1}
    assert _reasons(b'{"a": "' + b"x" * 2_000_000 + b'"}') == {"too_large": 1}
    many = encode_batch([(WS, LABELS, [(ok_ts + i, 1.0) for i in range(20)])])
    assert _reasons(many, Limits(max_samples_per_message=10)) == {"too_many_samples": 20}


def test_a_bad_sample_in_a_batch_keeps_the_good_ones() -> None:
    doc = {"podguard": 1, "series": [
        {"name": WS, "labels": LABELS,
         "samples": [[1767225600.0, 1.0], [1767225615.0, float("nan")], [1767225630.0, 2.0]]},
        {"name": WS, "labels": {"pod": "no-namespace"}, "samples": [[1767225600.0, 1.0]] * 4},
    ]}
    out, res = _decode(json.dumps(doc).encode())
    assert out.value == [1.0, 2.0]
    assert dict(res.rejected) == {"non_finite_value": 1, "missing_label": 4}  # type: ignore[attr-defined]
    record = json.loads(dead_letter_record(json.dumps(doc).encode(), res,  # type: ignore[arg-type]
                                           topic="t", partition=2, offset=17))
    assert record["reasons"] == {"non_finite_value": 1, "missing_label": 4}
    assert record["reason"] == "missing_label" and record["accepted_samples"] == 2
    assert record["source"] == {"topic": "t", "partition": 2, "offset": 17, "timestamp_ms": None}
    assert json.loads(record["payload"]) == json.loads(json.dumps(doc))


def test_dead_letter_record_of_a_huge_binary_message_is_bounded() -> None:
    payload = b"\xff" * 3_000_000
    _, res = _decode(payload)
    rec = json.loads(dead_letter_record(payload, res, topic="t", partition=0,  # type: ignore[arg-type]
                                        offset=1))
    assert rec["reason"] == "too_large" and rec["payload_truncated"] is True
    assert rec["payload_encoding"] == "base64" and len(rec["payload"]) < 100_000


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                      st.text(max_size=30))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=30)


def _mutated_docs() -> st.SearchStrategy[bytes]:
    adapter = st.fixed_dictionaries({
        "timestamp": st.one_of(st.just("2026-01-01T00:00:00Z"), json_leaf),
        "value": st.one_of(st.just("1.5"), json_leaf),
        "name": st.one_of(st.just(WS), json_leaf),
        "labels": st.one_of(st.just(LABELS), json_values,
                            st.dictionaries(st.text(max_size=20), json_leaf, max_size=8)),
    })
    batch = st.fixed_dictionaries({
        "podguard": st.one_of(st.just(1), json_leaf),
        "series": st.one_of(json_values, st.lists(st.fixed_dictionaries({
            "name": st.one_of(st.just(WS), json_leaf),
            "labels": st.one_of(st.just(LABELS), json_values),
            "samples": st.one_of(json_values, st.lists(st.lists(json_leaf, max_size=3),
                                                       max_size=5)),
        }), max_size=3)),
    })
    docs = st.one_of(adapter, batch, json_values)
    encoded = docs.map(lambda d: json.dumps(d, allow_nan=True).encode())
    return st.one_of(encoded, st.binary(max_size=200),
                     encoded.flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i])))


@settings(max_examples=600, deadline=None)
@given(_mutated_docs())
def test_fuzz_the_decoder_never_crashes_and_accounts_for_everything(payload: bytes) -> None:
    out = SampleColumns()
    res = Decoder(Limits(max_labels=8, max_label_bytes=64)).decode(payload, out)
    assert res.accepted == len(out)
    if res.accepted + res.n_rejected + res.ignored == 0:  # a batch without samples
        doc = json.loads(payload)
        assert doc["podguard"] == 1
        assert all(s["samples"] == [] for s in doc["series"]), payload
    assert set(res.rejected) <= set(REASONS)
    for t, v in zip(out.timestamp, out.value):
        assert math.isfinite(t) and 0 < t < 1e11 and math.isfinite(v)
    for ns, pod in zip(out.namespace, out.pod):
        assert ns and pod
    if res.rejected:
        rec = json.loads(dead_letter_record(payload, res, topic="t", partition=0, offset=0))
        assert rec["reason"] in REASONS


# ------------------------------------------------------------------ untrusted clocks and sizes

NOW = 1767225600.0  # the decoder's clock in these tests
YEAR_5100 = "5100-01-01T00:00:00Z"


def test_a_sample_beyond_the_clock_skew_is_refused_in_both_formats() -> None:
    dec = Decoder(Limits(max_future_s=300.0), clock=lambda: NOW)
    adapter = {"timestamp": YEAR_5100, "value": "1", "name": WS, "labels": dict(LABELS)}
    out = SampleColumns()
    res = dec.decode(json.dumps(adapter).encode(), out)
    assert dict(res.rejected) == {"future_timestamp": 1} and len(out) == 0
    batch = encode_batch([(WS, LABELS, [(NOW - 15, 1.0), (NOW + 299, 2.0), (NOW + 301, 3.0),
                                        (9.877e10, 4.0)])])
    res = dec.decode(batch, out)
    assert res.accepted == 2 and dict(res.rejected) == {"future_timestamp": 2}
    assert out.timestamp == [NOW - 15, NOW + 299]
    rec = json.loads(dead_letter_record(batch, res, topic="t", partition=0, offset=7))
    assert rec["reason"] == "future_timestamp" and rec["accepted_samples"] == 2
    assert "future_timestamp" in REASONS


def test_one_sample_in_the_year_5100_does_not_move_the_engine_clock() -> None:
    from detector.windows import WindowEngine

    dec = Decoder(Limits(max_future_s=300.0), clock=lambda: NOW)
    out = SampleColumns()
    for i in range(20):
        dec.decode(encode_adapter(WS, {**LABELS, "pod": f"p{i % 3}"}, NOW - 300 + 15 * i, 1e9),
                   out)
    dec.decode(json.dumps({"timestamp": YEAR_5100, "value": "1", "name": WS,
                           "labels": {**LABELS, "pod": "evil"}}).encode(), out)
    engine = WindowEngine()
    engine.ingest(out.columns())
    assert engine.clock == NOW - 300 + 15 * 19
    assert {k.pod for k in engine.pods()} == {"p0", "p1", "p2"}  # none dropped as vanished


def test_what_the_decoder_keeps_stays_bounded_under_crafted_messages() -> None:
    """~1,000 messages with a near-1 MiB timestamp string each used to stay in the cache
    (over 1 GiB); now a timestamp longer than 64 characters is refused and never kept."""
    dec = Decoder(clock=lambda: NOW)
    out = SampleColumns()
    for i in range(40):
        stamp = f"{i:06d}" + "9" * 900_000
        res = dec.decode(json.dumps({"timestamp": stamp, "value": "1", "name": WS,
                                     "labels": dict(LABELS)}).encode(), out)
        assert dict(res.rejected) == {"bad_timestamp": 1}
        numeric = json.dumps({"timestamp": "1" * 500_000, "value": "1", "name": WS,
                              "labels": dict(LABELS)}).encode()
        assert dict(dec.decode(numeric, out).rejected) == {"bad_timestamp": 1}
    for i in range(5000):  # more distinct valid names and times than the caches hold
        dec.decode(encode_adapter(f"m{i}", LABELS, NOW - i, 1.0), out)
    kept = sum(len(k) for k in dec._times) + sum(len(k) for k in dec._names)
    assert len(dec._times) <= 4096 and len(dec._names) <= 4096
    assert kept < 4096 * (64 + 1024), kept
    assert all(len(k) <= 64 for k in dec._times)
    assert all(len(s) <= 1024 for col in (out.namespace, out.pod, out.container, out.node,
                                          out.metric) for s in col)


def test_sample_columns_drop_after_keeps_rows_aligned() -> None:
    """What the Prometheus source applies to each answer (``now + max_future_s``)."""
    cols = SampleColumns()
    for i, t in enumerate([NOW, NOW + 1e6, NOW + 10, 9.8e10, NOW + 20]):
        cols.append(t, "ml", f"p{i}", "c", "n", WS, float(i))
    assert cols.drop_after(NOW + 300) == 2
    assert cols.timestamp == [NOW, NOW + 10, NOW + 20]
    assert cols.pod == ["p0", "p2", "p4"] and cols.value == [0.0, 2.0, 4.0]
    assert cols.drop_after(NOW + 300) == 0 and len(cols) == 3


def test_a_label_that_is_not_valid_unicode_is_refused_with_its_reason() -> None:
    evil = ('{"timestamp": "2026-01-01T00:00:00Z", "value": "1", "name": "' + WS
            + '", "labels": {"namespace": "ml", "pod": "trainer-\\udc80-0"}}')
    out = SampleColumns()
    res = Decoder(clock=lambda: NOW).decode(evil.encode(), out)
    assert dict(res.rejected) == {"bad_label_text": 1} and len(out) == 0
    fine = encode_adapter(WS, {**LABELS, "pod": "entraîneur-0"}, NOW - 60, 1.0)
    assert Decoder(clock=lambda: NOW).decode(fine, out).accepted == 1  # real Unicode is fine
    assert out.pod == ["entraîneur-0"]


def test_the_oom_flag_sent_under_its_trace_name_is_bounded_like_the_reasons() -> None:
    """A producer may send ``..._last_terminated_reason_oomkilled`` itself (the local
    source's and the traces' name): a negative value is refused (summed with another
    container's 1 it would hide that OOM kill), any other is a 0/1 flag."""
    from detector.sources.kafka_codec import Decoder, encode_batch

    name = "kube_pod_container_status_last_terminated_reason_oomkilled"
    labels = {"__name__": name, "namespace": "ml", "pod": "p", "container": "c", "node": "n"}
    got = []
    for v in ("-5", "1e300", "1", "0"):
        out = SampleColumns()
        msg = json.dumps({"timestamp": "2026-01-01T00:00:00Z", "value": v, "name": name,
                          "labels": labels}).encode()
        res = Decoder(clock=lambda: 1767225700.0).decode(msg, out)
        got.append((dict(res.rejected), out.value))
    assert got == [({"negative_value": 1}, []), ({}, [1.0]), ({}, [1.0]), ({}, [0.0])]
    out = SampleColumns()  # the batch format
    msg = encode_batch([(name, labels, [(1767225600.0, -2.0), (1767225601.0, 3.0)])])
    res = Decoder(clock=lambda: 1767225700.0).decode(msg, out)
    assert dict(res.rejected) == {"negative_value": 1} and out.value == [1.0]
