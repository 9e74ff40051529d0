"""``python -m deploy.local up|down|status|env|prepare [SERVICE...]``.

up       prepare and start the services (all when none named); prints the state directory
         and records it in ``cache_dir()/stack-dir``; a running service is left alone
down     stop the services by their recorded PIDs; with no service named, also forget the
         stack and delete its temporary directory (``--keep`` keeps it)
status   one line per process: URL, readiness (a real request answered), PID, RSS
env      ``export`` lines for clients (eval "$(python -m deploy.local env)")
prepare  install/download/build what the services need into the per-user cache

``PODGUARD_STACK_DIR`` names the state directory instead of the pointer file.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from deploy.local import stack
from deploy.local._proc import StackError


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "env", "prepare"])
    parser.add_argument("services", nargs="*", metavar="SERVICE",
                        help="prometheus, alertmanager, kafka, kubernetes, cadvisor (default: all)")
    parser.add_argument("--keep", action="store_true",
                        help="down: keep the state directory (data) of the stack")
    args = parser.parse_args(argv)
    # kafka-python logs every refused connection while the broker starts; not news here.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return _run(args.command, args.services, keep=args.keep)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(command: str, services: list[str], *, keep: bool) -> int:
    if command == "prepare":
        for svc in stack.select(services):
            svc.prepare()
            print(f"{svc.name}: prepared")
        return 0
    if command == "up":
        state = stack.up(services)
        print(f'state in {state}; clients: eval "$(python -m deploy.local env)"')
        return 0
    if command == "down":
        stack.down(services, keep=keep)
        return 0
    current = stack.current_dir()
    if current is None:
        raise StackError("no local stack is up (no PODGUARD_STACK_DIR, no pointer in "
                         f"{stack.pointer_file()}); start one: python -m deploy.local up")
    state = current
    if command == "env":
        for k, v in stack.environment(state, services).items():
            print(f"export {k}={shlex.quote(v)}")
        return 0
    rows = stack.statuses(state, services)
    print(f"stack dir: {state}")
    fmt = "{:<24} {:<28} {:<6} {:>8} {:>9}  {}"
    print(fmt.format("SERVICE", "URL", "READY", "PID", "RSS", "DETAIL"))
    for r in rows:
        print(fmt.format(r.name, r.url or "-", "yes" if r.ready else "no",
                         r.pid or "-", _mib(r.rss_bytes), r.detail))
    return 0 if rows and all(r.ready for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
