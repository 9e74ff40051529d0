"""The contract every service of the local stack implements.

A service object is cheap to make and holds no process handles: everything it needs to
find its running processes again (ports, URLs, PIDs) lives in the stack's state
directory, so ``status``, ``env`` and ``down`` work from another process than ``up``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ServiceStatus:
    """One line of ``python -m deploy.local status``."""

    name: str  # e.g. "prometheus", "kube-apiserver"
    url: str  # where clients reach it, e.g. "http://127.0.0.1:39211"
    ready: bool  # a real request answered (a query, a metadata call), not just a port
    pid: int | None
    rss_bytes: int | None
    detail: str = ""  # version, or why it is not ready


class Service(Protocol):
    name: str  # id on the command line: "prometheus", "alertmanager", "kafka", "kubernetes"

    def prepare(self) -> None:
        """Install/build/download what is missing into the per-user cache (idempotent).

        Raises :class:`deploy.local._proc.StackError` saying how to get it if that fails.
        """

    def start(self, state: Path) -> None:
        """Choose free ports, start the processes, return once truly ready (or raise StackError)."""

    def stop(self, state: Path) -> None:
        """Stop the processes this service started, by their recorded PIDs."""

    def status(self, state: Path) -> list[ServiceStatus]:
        """Current state of each process of the service."""

    def env(self, state: Path) -> dict[str, str]:
        """Environment variables clients need, e.g. {"PODGUARD_PROMETHEUS_URL": "http://..."}."""
