"""Pods of two containers on a real kernel, held out: ``data/real/sidecars-holdout``.

Recorded after the change that reads a young container incarnation's growth and projects the
binding container's own series (``detector.windows.assemble``), its parameters drawn by a seed
(``deploy.local.node_record.sidecar_holdout_mix``) and written down before the recording, scored
once: nothing was tuned on it. A main container crash-looping every 3.5 min beside a restarting
shipper, a shipper leaking beside a main container warming up, a slow main leak, a shipper
crash-looping under its own 128 MiB beside a flat main, and two healthy pods (both containers
warming up together; a page-cache reader beside a restarting shipper). Replayed through the
default model at a 15 s step, against issue 13's targets: every kernel OOM kill is warned
first as a memory leak with a time to OOM, nothing is raised on the healthy pods, warning time
captured >= 0.7; and the time to OOM at the first alarm within +-30 % of the real one for at
least 90 % of the kills (19 of 20 when recorded: the leaking shipper's second life stated
20.5 min with 6.4 left; the code before the change: 18 of 20 kills warned, 15 of 18)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from deploy.local.node_report import Row
from deploy.local.node_soak import check
from tests.support.real_traces import replay


@pytest.fixture(scope="module")
def replayed() -> tuple[dict[str, Any], pd.DataFrame, list[Row]]:
    return replay("sidecars-holdout")


def test_the_trace_holds_two_container_pods_and_the_kernels_kills(
        replayed: tuple[dict[str, Any], pd.DataFrame, list[Row]]) -> None:
    labels, _, rows = replayed
    pods = labels["pods"]
    assert set(pods) == {"sh-crashloop", "sh-sidecar-leak", "sh-main-leak", "sh-sidecar-loop",
                         "sh-healthy", "sh-pagecache"}
    assert all(info.get("sidecars") for info in pods.values())
    assert pods["sh-sidecar-loop"]["container"] == "shipper"
    assert not pods["sh-healthy"]["oom_kills"] and not pods["sh-pagecache"]["oom_kills"]
    assert sum(r.killed is not None for r in rows) >= 18


def test_every_kill_is_warned_and_the_healthy_pods_are_silent(
        replayed: tuple[dict[str, Any], pd.DataFrame, list[Row]]) -> None:
    _, _, rows = replayed
    assert check(rows) == []
    assert sum(not r.meant_to_leak for r in rows) == 2


def test_warning_time_captured_and_time_to_oom_at_the_first_alarm(
        replayed: tuple[dict[str, Any], pd.DataFrame, list[Row]]) -> None:
    _, _, rows = replayed
    killed = [r for r in rows if r.killed is not None]
    captured = [r.captured(r.first_alarm if r.warned else None) or 0.0 for r in killed]
    assert sum(captured) / len(captured) >= 0.7, captured
    close = [r for r in killed if r.warned and r.tto_estimate_s is not None
             and r.tto_real_s is not None and abs(r.tto_estimate_s - r.tto_real_s)
             <= 0.3 * r.tto_real_s]
    assert len(close) >= 0.9 * len(killed), [
        (r.pod, r.incarnation, r.tto_estimate_s, r.tto_real_s) for r in killed
        if r not in close]
