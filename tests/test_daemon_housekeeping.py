"""The daemon's housekeeping between scoring steps: the remediation controller is reconciled
every few seconds (not once a step), the Alertmanager sink is ticked, and a pod recreated by
a remediation gets a fresh window."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from detector.pipeline import Pipeline
from detector.runtime.build import make_engine
from detector.runtime.daemon import Daemon
from detector.runtime.metrics import DaemonMetrics, StateView
from detector.settings import Settings
from detector.verdicts import Verdict
from detector.windows import PodKey
from tests.test_daemon import StepSource

LOG = logging.getLogger("podguard.test.housekeeping")


class RecordingController:
    """Implements the remediation hook contract and records the daemon's calls."""

    def __init__(self) -> None:
        self.handled = 0
        self.reconciled = 0
        self.replaced: dict[tuple[str, str], float] = {}

    def handle(self, verdicts: Sequence[Verdict]) -> None:
        self.handled += 1

    def reconcile(self) -> None:
        self.reconciled += 1

    def replacements(self) -> dict[tuple[str, str], float]:
        return dict(self.replaced)


class RecordingSink:
    """Any sink (its name is not special to the daemon): records sends and ticks."""

    name = "recording"

    def __init__(self) -> None:
        self.sends: list[int] = []
        self.ticks = 0

    def send(self, verdicts: Sequence[Verdict]) -> None:
        self.sends.append(len(verdicts))

    def tick(self) -> None:
        self.ticks += 1

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        pass


def test_housekeeping_reconciles_between_steps_and_restarts_recreated_pods() -> None:
    clock = [0.0]
    settings = Settings.model_validate({"windows": {"horizon_s": 3600, "step_s": 60},
                                        "runtime": {"lateness_s": 0.0}})
    ctl, sink = RecordingController(), RecordingSink()
    daemon = Daemon(settings=settings, source=StepSource(pods=3, t0=1_800_000_000.0),
                    pipeline=Pipeline.load(None), engine=make_engine(settings), sinks=[sink],
                    metrics=DaemonMetrics(CollectorRegistry(), StateView(), process=False),
                    logger=LOG, remediation=ctl, monotonic=lambda: clock[0])
    for _ in range(8):  # 8 scrapes of 15 s = 2 scoring steps; 3 s of real time per turn
        daemon.turn()
        clock[0] += 3.0
    assert 1 <= ctl.handled <= 3  # once per scoring step (2-3 steps in 2 min of samples)
    assert ctl.reconciled >= 4 > ctl.handled  # every 5 s of real time, between steps too
    assert sink.ticks == ctl.reconciled  # every sink is ticked at each housekeeping pass
    assert len(sink.sends) == ctl.handled  # and sent verdicts only at scoring steps
    assert PodKey("ml", "p1") in daemon.engine.pods()
    ctl.replaced[("ml", "p1")] = 1_800_000_100.0
    clock[0] += 10.0
    daemon.turn()  # poll + fold, then housekeeping drops the recreated pod's old window
    assert PodKey("ml", "p1") not in daemon.engine.pods()
    assert PodKey("ml", "p0") in daemon.engine.pods()
    reconciled = ctl.reconciled
    clock[0] += 10.0
    daemon.turn()  # the next scrape refills it; the same replacement is not applied twice
    assert ctl.reconciled == reconciled + 1
    assert PodKey("ml", "p1") in daemon.engine.pods()
