"""Sources: where the daemon's samples come from (Prometheus, Kafka, the embedded default).

Every source implements :class:`detector.sources.base.Source`; the daemon
(:mod:`detector.runtime.daemon`) polls it, folds what it delivers into the window engine and
commits what was scored. Sources never import torch (the embedded workloads run torch in
child processes only).
"""
