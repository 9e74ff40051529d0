"""podguard: telemetry anomaly detection for ML workloads on Kubernetes.

The package is layered; lower layers never import higher ones (enforced by import-linter's
``layers`` contract in ``pyproject.toml``; modules of one layer may import each other):

* ``detector.channels`` / ``detector.kinds`` / ``detector.errors`` - the channel table, the
  verdict kinds, the error types;
* ``detector.traces`` / ``detector.settings`` - the trace format, the settings tree;
* ``detector.windows`` - samples in, per-pod windows out;
* ``detector.models`` - detectors on windows and their attribution maths (never import
  Kubernetes or HTTP clients, nor anything above);
* ``detector.pipeline`` / ``detector.explain`` / ``detector.verdicts`` - verdicts with
  explanations;
* ``detector.transport`` - HTTP, Prometheus and Kafka clients, retries; ``detector.podclient``
  - the pod's end of the pod channel (standard library only, run inside training pods);
* ``detector.sources`` / ``sinks`` / ``remediation`` / ``diagnosis`` - the cluster side;
* ``detector.runtime`` - the daemon;
* ``detector.cli`` and the entry points (``replay``, ``evaluate``, ``bench``, ``demo``...) with
  the data sets they generate or read (``scenarios``, ``exathlon``, ``nab``).
"""

__version__ = "0.1.0"
