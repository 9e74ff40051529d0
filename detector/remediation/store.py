"""podguard's remediation records, one Lease per workload in podguard's own namespace.

``kubectl get leases -n <podguard namespace> -l podguard.io/record=remediation`` lists them;
``kubectl get lease <name> -o jsonpath='{.metadata.annotations.podguard\\.io/remediation}'``
shows one record (:class:`detector.remediation.protocol.Remediation`). Only podguard's Role
in its namespace may write there: no workload can forge, stall or use up anything.

Every record read back is validated (:func:`~detector.remediation.protocol.parse_remediation`);
a bad one is skipped, logged once per resourceVersion with the reason, and counted in
:attr:`RecordStore.invalid`; it never stops the others. Writes carry the resourceVersion
read (optimistic concurrency): a conflict returns None and the caller reads again. All writes
go through the :class:`~detector.remediation.actuator.Actuator` (dry-run, retries).
Used by :mod:`detector.remediation.controller`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from detector.remediation import protocol as proto
from detector.remediation.actuator import Actuator

log = logging.getLogger("podguard.remediation.store")

SELECTOR = f"{proto.RECORD_LABEL}=remediation"


@dataclass(frozen=True)
class Stored:
    """A record as read, with the Lease's name and resourceVersion (for the next write)."""

    name: str
    record: proto.Remediation
    resource_version: str


class RecordStore:
    """Reads and writes podguard's records (see the module docstring)."""

    def __init__(self, actuator: Actuator, namespace: str, *,
                 logger: logging.Logger | None = None) -> None:
        if not namespace:
            raise ValueError("the record store needs podguard's namespace "
                             "(remediation.namespace or POD_NAMESPACE)")
        self.actuator = actuator
        self.namespace = namespace
        self.log = logger if logger is not None else log
        self.invalid = 0  # records skipped because they did not validate (count)
        self._reported: set[tuple[str, str]] = set()

    def _parse(self, lease: object) -> tuple[str, str, proto.Remediation | None]:
        m = getattr(lease, "metadata", None)
        name = str(getattr(m, "name", "") or "")
        rv = str(getattr(m, "resource_version", "") or "")
        text = (getattr(m, "annotations", None) or {}).get(proto.REMEDIATION)
        try:
            return name, rv, proto.parse_remediation(text)
        except proto.BadRecord as e:
            self.invalid += 1
            if (name, rv) not in self._reported:
                self._reported.add((name, rv))
                self.log.warning("remediation record %s/%s skipped: %s", self.namespace, name,
                                 e)
            return name, rv, None

    def list(self) -> list[Stored]:
        """Every valid record (bad ones skipped and counted)."""
        out = []
        for lease in self.actuator.list_leases(self.namespace, label_selector=SELECTOR):
            name, rv, rec = self._parse(lease)
            if rec is not None and name == proto.lease_name(rec.workload_kind, rec.namespace,
                                                             rec.workload):
                out.append(Stored(name, rec, rv))
            elif rec is not None:
                self.invalid += 1
                self.log.warning("remediation record %s/%s skipped: it is about %s in %s, "
                                 "not what its name says", self.namespace, name,
                                 rec.workload_ref, rec.namespace)
        return out

    def get(self, workload_kind: str, namespace: str, workload: str
            ) -> tuple[proto.Remediation | None, str | None]:
        """(the workload's record or None, the Lease's resourceVersion or None if none)."""
        name = proto.lease_name(workload_kind, namespace, workload)
        lease = self.actuator.read_lease(self.namespace, name)
        if lease is None:
            return None, None
        _, rv, rec = self._parse(lease)
        return rec, rv

    def put(self, rec: proto.Remediation, resource_version: str | None) -> str | None:
        """Writes ``rec`` if its Lease is unchanged since read (None: create it). Returns
        the new resourceVersion, or None on a conflict."""
        name = proto.lease_name(rec.workload_kind, rec.namespace, rec.workload)
        return self.actuator.write_lease(
            self.namespace, name, labels=proto.MANAGED_BY,
            annotations={proto.REMEDIATION: rec.to_json(),
                         "podguard.io/workload": f"{rec.workload_ref} in {rec.namespace}"},
            holder=f"podguard/{rec.node}", resource_version=resource_version)

    def delete(self, stored: Stored) -> bool:
        return self.actuator.delete_lease(self.namespace, stored.name, stored.resource_version)
