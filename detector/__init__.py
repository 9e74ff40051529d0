"""podguard: telemetry anomaly detection for ML workloads on Kubernetes.

The package is layered; lower layers never import higher ones:

* ``detector.errors`` / ``detector.traces`` / ``detector.windows`` - data in, per-pod windows out;
* ``detector.models`` - detectors on windows (never import Kubernetes or HTTP clients);
* ``detector.explain`` / ``detector.pipeline`` - verdicts with explanations;
* ``detector.replay`` / ``detector.evaluate`` / ``detector.bench`` / ``detector.cli`` -
  entry points.
"""

__version__ = "0.1.0"
