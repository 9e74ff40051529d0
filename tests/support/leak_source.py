"""A real Source (the ``detector.sources.base`` contract) over generated samples, for tests
that need a podguard daemon to flag a leak within seconds: a pod leaking 0.4 GiB/h towards a
4 GiB limit and a steady one, ten minutes of 15-s scrapes per poll (source clock, not wall
time). Used by tests/test_grafana_dashboard.py and tests/test_metrics.py.
"""

from __future__ import annotations

import random
from typing import Any

from detector.sources.base import Delivery, SourceStatus

GIB = 2.0**30
LIMIT = 4 * GIB


class LeakSource:
    """A real Source over generated samples: a pod leaking 0.4 GiB/h towards a 4 GiB limit
    and a steady one; each poll delivers 10 minutes of 15-s scrapes."""

    name = "generated"

    def __init__(self, ns: str, t0: float) -> None:
        self.ns, self.t0, self.t = ns, t0, t0
        self.rng = random.Random(7)
        self.pods = {"leaky", "steady"}  # the pods that still exist (a test may delete one)

    def start(self) -> None:
        pass

    def poll(self, timeout: float) -> Delivery:
        d = Delivery(messages=1)
        for _ in range(40):
            h = (self.t - self.t0) / 3600
            for pod, level in (("leaky", 1.0 + 0.4 * h), ("steady", 1.0)):
                if pod not in self.pods:
                    continue
                ws = level * GIB * (1 + self.rng.gauss(0, 0.003))
                for metric, value in (("container_memory_working_set_bytes", ws),
                                      ("container_memory_rss", 0.9 * ws),
                                      ("container_spec_memory_limit_bytes", LIMIT),
                                      ("container_cpu_usage_seconds_total",
                                       0.5 * (self.t - self.t0))):
                    d.samples.append(self.t, self.ns, pod, "main", "n1", metric, value)
            self.t += 15.0
        return d

    def commit(self, tokens: Any) -> None:
        pass

    def now(self) -> float:
        return self.t

    def clock_rate(self) -> float:
        return 1.0

    def status(self) -> SourceStatus:
        return SourceStatus(up=True, caught_up=True, lag_s=15.0)

    def close(self, timeout: float = 5.0) -> None:
        pass
