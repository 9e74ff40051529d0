"""In-pod leak diagnosis: what grows inside a training process, attached to leak alerts.

Two halves, one wire format (:mod:`detector.diagnosis.report`):

* in the pod (standard library and torch only, importable without podguard's daemon
  dependencies): :mod:`detector.diagnosis.inpod` takes two snapshots of the process and says
  what grew; :mod:`detector.diagnosis.helper` is the per-step hook a training loop calls, which
  answers podguard's requests at a safe point of the loop;
* in the daemon: :mod:`detector.diagnosis.requester` asks a flagged pod for a diagnosis, waits
  for the answer (or times out: a pod without the helper), and attaches it to the pod's
  verdicts, hence to the alert, the Event and the verdict JSON.

This package's ``__init__`` imports nothing, so ``import detector.diagnosis.inpod`` in a
training pod pulls in neither numpy nor the Kubernetes client.
"""
