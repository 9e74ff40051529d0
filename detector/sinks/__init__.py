"""Sinks: where verdicts go (console/JSON lines, Alertmanager, Kubernetes Events).

Every sink implements :class:`detector.sinks.base.Sink`. Sinks never import torch.
"""
