"""Pods of several containers on a real kernel: ``data/real/sidecars`` (see data/real/README).

Each scored container runs beside a log shipper that exits with an error every 3 min (a sidecar
failing its liveness probe) or, in ``sc-sidecar-leak``, beside a healthy 512 MiB main while the
160 MiB shipper itself leaks until the kernel kills it. Replayed through the default model at a
15 s step: every kernel OOM kill is warned first as a memory leak with a time to OOM, the warm-up
pod beside its flapping shipper raises nothing, and the leaking sidecar is projected against its
own 160 MiB limit, not the pod's sum (the pod-level limit stated 40.5 min against 3.5 real)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from deploy.local.node_report import Row
from deploy.local.node_soak import check
from tests.support.real_traces import replay


@pytest.fixture(scope="module")
def replayed() -> tuple[dict[str, Any], pd.DataFrame, list[Row]]:
    return replay("sidecars")


def test_the_trace_holds_the_sidecars_and_the_kernels_kills(
        replayed: tuple[dict[str, Any], pd.DataFrame, list[Row]]) -> None:
    labels, _, rows = replayed
    pods = labels["pods"]
    assert set(pods) == {"sc-leak", "sc-crashloop", "sc-healthy", "sc-sidecar-leak"}
    assert all(info.get("sidecars") for info in pods.values())
    assert pods["sc-sidecar-leak"]["container"] == "shipper"
    assert len(pods["sc-crashloop"]["oom_kills"]) >= 4
    assert len(pods["sc-sidecar-leak"]["oom_kills"]) >= 1
    assert sum(r.killed is not None for r in rows) >= 5


def test_every_kill_is_warned_and_the_healthy_pod_is_silent(
        replayed: tuple[dict[str, Any], pd.DataFrame, list[Row]]) -> None:
    _, _, rows = replayed
    assert check(rows) == []
    assert any(not r.meant_to_leak for r in rows)


def test_a_leaking_sidecar_is_projected_against_its_own_limit(
        replayed: tuple[dict[str, Any], pd.DataFrame, list[Row]]) -> None:
    _, verdicts, rows = replayed
    first = next(r for r in rows if r.pod == "sc-sidecar-leak" and r.incarnation == 0)
    real = first.tto_real_s
    assert first.warned and first.tto_estimate_s is not None and real is not None
    assert abs(first.tto_estimate_s - real) <= 0.3 * real, (first.tto_estimate_s, real)
    leak = verdicts[verdicts["is_anomaly"].astype(bool) & (verdicts["pod"] == "sc-sidecar-leak")
                    & (verdicts["kind"] == "memory_leak")].sort_values("ts")
    text = str(leak.iloc[0]["explanation"]["text"])
    assert "160 MiB limit of container shipper" in text, text
