"""The ``podguard run`` arguments (light: the CLI builds its parser without heavy imports)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="settings YAML (default: none: the embedded default)")
    p.add_argument("--embedded", action="store_true",
                   help="use the embedded default source whatever the configuration says")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds and print a summary (default: run "
                        "until SIGTERM/SIGINT)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the verdicts file and workload logs of the embedded "
                        "default (default: out/run)")
    p.add_argument("--port", type=int, default=None, help="override server.port")
