"""Root conftest: makes the repository importable and registers shared fixture plugins.

Kept small and generic; fixtures of one area live in that area's conftest or in a plugin
under ``tests/support`` registered here.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `deploy` and `tests.support` are not installed packages
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.support.stack_fixtures", "tests.support.k8s_fixtures"]
