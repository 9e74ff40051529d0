"""podguard tests (a package, so `tests.support` imports the same way for pytest and mypy)."""
