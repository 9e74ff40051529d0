"""The real-node harness's plain workloads run as the supervisor starts them (the
kernel-facing behaviour is in tests/stack/real/)."""

from __future__ import annotations

import time

import pytest

from deploy.local import node_workloads


def test_a_flapping_sidecar_holds_its_memory_then_exits_with_an_error() -> None:
    """``flap``: exit status 1 (the supervisor's reason ``Error``, not an OOM kill) after
    ``--period-s``."""
    t = time.monotonic()
    assert node_workloads.main(["flap", "--base-mib", "1", "--period-s", "0.2"]) == 1
    assert time.monotonic() - t >= 0.2


def test_an_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(SystemExit):
        node_workloads.main(["flop"])
