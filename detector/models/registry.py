"""Every detector of podguard, registered once: one line per detector module's ``SPEC``.

The model store (its bundle members), training (``training.fit``: each detector's fit hook),
the pipeline (each detector's decider, in this order: leak, drift, custom metrics, each
judging the windows no earlier one flagged) and the contract suite
(``tests/test_detector_contract.py``: every spec, and a failure for a detector module left
out of this list) iterate :data:`REGISTRY`. Adding a
detector is its module (ending in ``SPEC = DetectorSpec(...)``, see
:mod:`detector.models.spec`) and one line here.
"""

from __future__ import annotations

from detector import kinds as kinds_table
from detector.models import autoencoder, drift, forest, trend, univariate
from detector.models.spec import DetectorSpec, Member

REGISTRY: tuple[DetectorSpec, ...] = (
    trend.SPEC,
    drift.SPEC,
    autoencoder.SPEC,
    forest.SPEC,
    univariate.SPEC,
)
"""Every registered detector; detectors that decide are judged in this order."""


def members() -> tuple[Member, ...]:
    """The bundle members of the registered detectors, in registry order."""
    return tuple(s.member for s in REGISTRY if s.member is not None)


def fitted() -> tuple[DetectorSpec, ...]:
    """The detectors training fits (each has a fit hook and a bundle member)."""
    return tuple(s for s in REGISTRY if s.fit is not None)


def check(registry: tuple[DetectorSpec, ...] | None = None) -> list[str]:
    """What is wrong with ``registry`` (default :data:`REGISTRY`; empty: nothing): duplicate
    names, a part of an unknown detector, a kind outside ``detector.kinds`` or decided twice,
    a kind of the kinds table no detector decides or that names another detector than the
    one deciding it, a decider that decides no kind, a top-level detector without a member or
    fit hook."""
    if registry is None:
        registry = REGISTRY
    names = [s.name for s in registry]
    problems = [f"detector {n!r} registered twice" for n in sorted(set(names))
                if names.count(n) > 1]
    problems += [f"{s.name!r} is a part of unregistered {s.part_of!r}" for s in registry
                 if s.part_of is not None and s.part_of not in names]
    decided = [k for s in registry for k in s.kinds]
    problems += [f"kind {k!r} is decided twice" for k in sorted(set(decided))
                 if decided.count(k) > 1]
    problems += [f"{s.name!r} decides {k!r}, which detector.kinds does not declare"
                 for s in registry for k in s.kinds if k not in kinds_table.BY_NAME]
    problems += [f"no registered detector decides kind {k!r}" for k in kinds_table.BY_NAME
                 if k not in decided]
    problems += [f"kind {k!r} names detector {kinds_table.BY_NAME[k].detector!r}, but "
                 f"{s.name!r} decides it" for s in registry for k in s.kinds
                 if k in kinds_table.BY_NAME
                 and kinds_table.BY_NAME[k].detector.split(" ")[0] != s.name]
    problems += [f"{s.name!r} has a pipeline decider but decides no kind" for s in registry
                 if s.decider is not None and not s.kinds]
    problems += [f"{s.name!r} needs a bundle member and a fit hook" for s in registry
                 if s.part_of is None and (s.member is None or s.fit is None)]
    return problems


def _check() -> None:
    problems = check()
    if problems:  # pragma: no cover - a broken registry fails at import, in every test
        raise ValueError("detector registry: " + "; ".join(problems))


_check()
