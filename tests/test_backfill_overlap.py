"""The Kafka source's Prometheus backfill drops, per series, the Kafka samples at or before the
newest backfilled one (detector/sources/backfill.py); the real services are in
tests/stack/test_kafka_backfill.py."""

from __future__ import annotations

import logging

from detector.settings import PrometheusSourceSettings
from detector.sources.backfill import PrometheusBackfill
from detector.sources.base import SampleColumns

WS, RSS = "container_memory_working_set_bytes", "container_memory_rss"


def _cols(rows: list[tuple[float, str, str]]) -> SampleColumns:
    c = SampleColumns()
    for ts, pod, metric in rows:
        c.append(ts, "ml", pod, "main", "n1", metric, ts)
    return c


def test_overlap_is_dropped_per_series_until_the_backfill_leaves_the_window() -> None:
    now = [200.0]
    b = PrometheusBackfill(PrometheusSourceSettings(url="http://127.0.0.1:9"), window_s=3600,
                           logger=logging.getLogger("test"), clock=lambda: now[0])
    b._note(_cols([(100.0, "a", WS), (115.0, "a", WS), (130.0, "a", RSS), (90.0, "b", WS)]))
    got = _cols([(110.0, "a", WS), (115.0, "a", WS), (116.0, "a", WS), (120.0, "a", RSS),
                 (131.0, "a", RSS), (91.0, "b", WS), (50.0, "c", WS)])
    assert b.drop_overlap(got) == 3
    assert list(zip(got.timestamp, got.pod, got.metric, strict=True)) == [
        (116.0, "a", WS), (131.0, "a", RSS), (91.0, "b", WS), (50.0, "c", WS)]
    assert got.value == got.timestamp  # every column kept aligned
    assert b.overlap == 3 and b.cutoff
    assert b.drop_overlap(_cols([(131.0, "a", WS)])) == 0  # all newer: nothing to check
    # another partition's backlog after that: still de-duplicated
    assert b.drop_overlap(_cols([(99.0, "b", WS)])) == 0
    assert b.drop_overlap(_cols([(89.0, "b", WS)])) == 1
    now[0] = 130.0 + 3601
    assert b.drop_overlap(_cols([(89.0, "b", WS)])) == 0
    assert not b.cutoff  # every backfilled sample has left the window: no more checks


def test_the_backfill_window_is_the_daemons_window() -> None:
    b = PrometheusBackfill(PrometheusSourceSettings(url="http://127.0.0.1:9", backfill_s=60),
                           window_s=7200, logger=logging.getLogger("test"))
    assert b.settings.backfill_s == 7200 and b.settings.max_gap_backfill_s == 7200
    assert not b.finished and not b.succeeded
