"""Root conftest: makes the repository importable and registers shared fixture plugins.

Kept small and generic; fixtures of one area live in that area's conftest or in a plugin
under ``tests/support`` registered here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `deploy` and `tests.support` are not installed packages
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.support.stack_fixtures", "tests.support.k8s_fixtures"]

#: The folder of the tests that run against real services (``make prepare``): everything in it
#: carries the ``stack`` marker, and no test outside it may use a real service.
STACK_DIRS = ("stack",)
#: The fixture modules that start real services.
STACK_FIXTURE_MODULES = ("tests.support.stack_fixtures", "tests.support.k8s_fixtures")


def _uses_stack(item: pytest.Item) -> list[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return sorted(name for name, defs in info.name2fixturedefs.items()
                  if any(getattr(d.func, "__module__", "") in STACK_FIXTURE_MODULES
                         for d in defs))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One folder and one marker for the real-service tests: mark what sits in them, refuse a
    real-service test anywhere else (so ``make unit`` never needs the stack)."""
    tests = ROOT / "tests"
    misplaced = []
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(tests)
        if rel.parts[0] in STACK_DIRS:
            if item.get_closest_marker("stack") is None:
                item.add_marker(pytest.mark.stack)
            continue
        uses = _uses_stack(item)
        if uses or item.get_closest_marker("stack") is not None:
            misplaced.append(f"{item.nodeid} ({', '.join(uses) or 'marked stack'})")
    if misplaced:
        raise pytest.UsageError(
            "tests against the real stack belong under tests/stack/ (the real-kernel ones in "
            "tests/stack/real/); move: " + "; ".join(misplaced))
