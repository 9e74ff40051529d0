"""Remediation: checkpoint-then-reschedule of training pods that podguard flags.

- :mod:`.protocol` - the annotations that carry every piece of state (request, acknowledgement,
  remediation phase, workload record, latest verdict) and their JSON records;
- :mod:`.actuator` - the ONE place where podguard mutates the cluster (Events, annotations,
  evictions, cordons, taints), with dry-run, eviction budgets and cooldowns;
- :mod:`.controller` - the state machine the daemon drives with ``handle(verdicts)`` and
  ``reconcile()``;
- :mod:`.checkpoint` - the helper a PyTorch training loop calls to honour checkpoint requests;
- :mod:`.rbac` - the exact API verbs all of this uses, as data, for the deploy manifests.

Nothing here imports torch (the checkpoint helper takes the save function from its caller).
"""
