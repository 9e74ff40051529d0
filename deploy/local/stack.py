"""The local real stack as a whole: which services exist, where their state lives, up/down.

Called by the CLI (``python -m deploy.local``) and by the pytest fixtures in
``tests/support/stack_fixtures.py``. Each service (``prometheus.py``, ``alertmanager.py``,
``kafka.py`` and, when present, ``kubernetes.py``) implements
:class:`deploy.local._service.Service`; this module only orders them, finds the state
directory, and offers the small helpers they share (records of chosen ports, port reuse,
HTTP on loopback without proxies, Debian packages).

The state directory
    ``up`` creates a fresh temporary directory (``$TMPDIR/podguard-stack-*``) unless
    ``PODGUARD_STACK_DIR`` names one, and writes its path into the pointer file
    ``cache_dir()/stack-dir`` so that ``status``, ``env`` and ``down`` run from another shell
    find it. ``PODGUARD_STACK_DIR`` always wins over the pointer. Inside it every service
    keeps ``<name>.pid``, ``<name>.log``, ``<name>.json`` (its ports and URLs) and a
    ``<name>/`` directory with its configuration and data.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from deploy.local import _proc
from deploy.local._proc import LOOPBACK, StackError, cache_dir, free_port
from deploy.local._service import Service, ServiceStatus

ENV_STACK_DIR = "PODGUARD_STACK_DIR"
"""Environment variable naming the state directory; wins over the pointer file."""

POINTER_NAME = "stack-dir"
"""File in :func:`cache_dir` holding the path of the stack started by the last ``up``."""

CREATED_MARKER = ".created-by-podguard-up"
"""Present in a state directory that ``up`` created itself, so ``down`` may delete it."""

ORDER = ("prometheus", "alertmanager", "kafka", "kubernetes", "cadvisor")
"""Start order; ``down`` stops in reverse."""


# --------------------------------------------------------------------------- registry


def registry() -> dict[str, Service]:
    """Every service of the stack, in start order, keyed by its command-line name.

    ``kubernetes`` is included when ``deploy/local/kubernetes.py`` exists (it is built by
    its own module); an import error in it is not hidden.
    """
    # Imported here, not at module level: the service modules import the helpers below.
    from deploy.local.alertmanager import Alertmanager
    from deploy.local.cadvisor import Cadvisor
    from deploy.local.kafka import Kafka
    from deploy.local.prometheus import Prometheus

    services: dict[str, Service] = {
        "prometheus": Prometheus(),
        "alertmanager": Alertmanager(),
        "kafka": Kafka(),
        "cadvisor": Cadvisor(),  # the real-node harness's (deploy/local/node.py)
    }
    if importlib.util.find_spec("deploy.local.kubernetes") is not None:
        module = importlib.import_module("deploy.local.kubernetes")
        services["kubernetes"] = module.Kubernetes()
    return {n: services[n] for n in ORDER if n in services}


def select(names: Sequence[str]) -> list[Service]:
    """The named services in start order (all of them when ``names`` is empty)."""
    services = registry()
    unknown = [n for n in names if n not in services]
    if unknown:
        raise StackError(
            f"unknown service(s) {', '.join(unknown)}; known: {', '.join(services)}"
        )
    wanted = set(names) or set(services)
    return [s for n, s in services.items() if n in wanted]


# --------------------------------------------------------------------------- state dir


def pointer_file() -> Path:
    return cache_dir() / POINTER_NAME


def current_dir() -> Path | None:
    """The state directory of the running stack: ``PODGUARD_STACK_DIR``, else the pointer.

    ``None`` when neither names an existing directory.
    """
    env = os.environ.get(ENV_STACK_DIR)
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    try:
        text = pointer_file().read_text().strip()
    except OSError:
        return None
    if text and Path(text).is_dir():
        return Path(text)
    return None


def dir_for_up() -> Path:
    """Where ``up`` puts the stack: ``PODGUARD_STACK_DIR``, the pointed-to dir, or a new one."""
    env = os.environ.get(ENV_STACK_DIR)
    if env:
        p = Path(env)
        p.mkdir(parents=True, exist_ok=True)
        return p
    existing = current_dir()
    if existing is not None:
        return existing
    return new_dir()


def new_dir() -> Path:
    """A fresh temporary state directory, marked as ours so ``down`` may delete it."""
    p = Path(tempfile.mkdtemp(prefix="podguard-stack-"))
    (p / CREATED_MARKER).write_text("")
    return p


def write_pointer(state: Path) -> None:
    atomic_write(pointer_file(), f"{state}\n")


def clear_pointer(state: Path) -> None:
    """Remove the pointer file if it points at ``state``."""
    try:
        if Path(pointer_file().read_text().strip()) == state:
            pointer_file().unlink()
    except OSError:
        pass


@contextlib.contextmanager
def locked(what: str = "stack") -> Iterator[None]:
    """Serialise ``up``/``down``/builds between processes with a lock file in the cache."""
    path = cache_dir() / f"{what}.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- helpers for services


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary name beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(state: Path, name: str) -> dict[str, Any]:
    """What a service recorded about itself in ``<state>/<name>.json`` (empty if nothing)."""
    try:
        data = json.loads((state / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def process_status(name: str, state: Path, *, ready: Callable[[], bool],
                   url: Callable[[dict[str, Any]], str], not_ready: str) -> ServiceStatus:
    """The status line of a one-process service: alive (by its recorded PID), ready (a real
    request answered: ``ready()``), its URL from its record, and why it is not ready."""
    pid = _proc.pid_of(name, state)
    alive = _proc.alive(pid)
    rec = read_record(state, name)
    is_ready = alive and ready()
    detail = str(rec.get("version", ""))
    if not alive:
        detail = "not running" if rec else "never started"
    elif not is_ready:
        detail = f"{not_ready} (log: {state / (name + '.log')})"
    return ServiceStatus(name, url(rec), is_ready, pid if alive else None,
                         _proc.rss_bytes(pid) if alive else None, detail)


def write_record(state: Path, name: str, record: Mapping[str, Any]) -> None:
    atomic_write(state / f"{name}.json", json.dumps(dict(record), indent=2, sort_keys=True))


def port_available(port: int) -> bool:
    """True if a server could bind 127.0.0.1:``port`` now.

    Uses SO_REUSEADDR as Go and Java servers do, so a port left in TIME_WAIT by a service
    we just stopped counts as available (restarts keep their port).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def reuse_port(recorded: object, *, taken: Sequence[int] = ()) -> int:
    """The recorded port if it is still free (a restart keeps its address), else a new one."""
    if isinstance(recorded, int) and recorded not in taken and port_available(recorded):
        return recorded
    while True:
        port = free_port()
        if port not in taken:
            return port


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Requests to the stack never go through a proxy, whatever the environment says."""


def http(method: str, url: str, *, body: bytes | None = None, timeout: float = 5.0,
         content_type: str = "application/json", context: ssl.SSLContext | None = None,
         headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request on loopback; returns (status, body) also for 4xx/5xx answers.

    ``context`` verifies an HTTPS service (and may carry a client certificate); ``headers``
    are added (e.g. basic auth), for services started with a web config (``deploy.local.web``).
    """
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", content_type)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    opener = _NO_PROXY if context is None else urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def http_json(method: str, url: str, *, payload: object = None, timeout: float = 5.0,
              context: ssl.SSLContext | None = None,
              headers: Mapping[str, str] | None = None) -> Any:
    """An HTTP request expecting a 2xx JSON answer; raises StackError otherwise."""
    body = None if payload is None else json.dumps(payload).encode()
    status, data = http(method, url, body=body, timeout=timeout, context=context,
                        headers=headers)
    if not 200 <= status < 300:
        raise StackError(f"{method} {url} answered {status}: {data[:500].decode(errors='replace')}")
    return json.loads(data) if data else None


def ensure_debian_package(package: str, binary: str) -> str:
    """Path of ``binary``; installs Debian's ``package`` when it is missing (as root).

    Installs with ``--no-install-recommends`` and with ``policy-rc.d`` refusing service
    starts, so the package's own init script does not start a daemon on its default
    (non-loopback) address; we start our own instance by hand.
    """
    found = shutil.which(binary)
    if found:
        return found
    cmd = f"apt-get update && apt-get install -y --no-install-recommends {package}"
    if os.geteuid() != 0:
        raise StackError(f"{binary} is not installed; install it with: sudo sh -c '{cmd}'")
    if shutil.which("apt-get") is None:
        raise StackError(f"{binary} is not installed and there is no apt-get here; "
                         f"install Debian's {package} package ({cmd})")
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# podguard: no service starts during install\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for argv in (["apt-get", "update"],
                     ["apt-get", "install", "-y", "--no-install-recommends", package]):
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
                raise StackError(f"{' '.join(argv)} failed ({proc.returncode}); "
                                 f"run it by hand: {cmd}\n{tail}")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    found = shutil.which(binary)
    if not found:
        raise StackError(f"installed {package} but {binary} is still not on PATH")
    return found


def foreign_instances(binary: str, marker: str) -> list[int]:
    """PIDs running ``binary`` whose command line lacks ``marker`` (not started by us).

    Used to notice a daemon started by systemd or the package's init script.
    """
    real = os.path.realpath(binary)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.path.realpath(entry / "exe") != real:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker not in cmdline:
            pids.append(int(entry.name))
    return pids


def is_up(service: Service, state: Path) -> bool:
    """Every process of ``service`` is alive and answered a real request."""
    statuses = service.status(state)
    return bool(statuses) and all(s.ready and s.pid for s in statuses)


# --------------------------------------------------------------------------- orchestration


def up(names: Sequence[str] = (), *, report: Callable[[str], None] = print) -> Path:
    """Prepare and start the named services (all when empty); a running service is left alone.

    Preparation (installs, downloads, builds) runs one service after the other; the starts
    then run side by side, as the services do not depend on each other. Returns the state
    directory and records it in the pointer file. Raises StackError naming every service
    that failed; the others keep running.
    """
    services = select(names)
    with locked():
        state = dir_for_up()
        if not os.environ.get(ENV_STACK_DIR):
            write_pointer(state)
        report(f"stack dir: {state}")
        todo = []
        for svc in services:
            if is_up(svc, state):
                report(f"{svc.name}: already running")
                continue
            t0 = time.monotonic()
            svc.prepare()
            if time.monotonic() - t0 > 1.0:
                report(f"{svc.name}: prepared in {time.monotonic() - t0:.1f}s")
            todo.append(svc)

        def start(svc: Service) -> str:
            t0 = time.monotonic()
            svc.start(state)
            return f"{svc.name}: started in {time.monotonic() - t0:.1f}s"

        errors = []
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            futures = {pool.submit(start, svc): svc for svc in todo}
            for fut in as_completed(futures):
                try:
                    report(fut.result())
                except StackError as e:
                    errors.append(f"{futures[fut].name}: {e}")
                    report(f"{futures[fut].name}: FAILED")
        if errors:
            raise StackError("\n".join(errors))
    return state


def down(names: Sequence[str] = (), *, keep: bool = False,
         report: Callable[[str], None] = print) -> Path | None:
    """Stop the named services (all when empty) by their recorded PIDs.

    Stopping all of them also forgets the pointer and deletes a state directory that ``up``
    created itself, unless ``keep``.
    """
    state = current_dir()
    if state is None:
        report("no local stack is recorded; nothing to stop")
        return None
    services = select(names)
    with locked():
        for svc in reversed(services):
            svc.stop(state)
            report(f"{svc.name}: stopped")
        if not names:
            clear_pointer(state)
            if not keep and (state / CREATED_MARKER).exists():
                shutil.rmtree(state, ignore_errors=True)
                report(f"removed {state}")
            else:
                report(f"kept {state}")
    return state


def statuses(state: Path, names: Sequence[str] = ()) -> list[ServiceStatus]:
    rows: list[ServiceStatus] = []
    for svc in select(names):
        rows.extend(svc.status(state))
    return rows


def environment(state: Path, names: Sequence[str] = ()) -> dict[str, str]:
    """Client environment of the named services (each gives nothing when it never started)."""
    env: dict[str, str] = {}
    for svc in select(names):
        env.update(svc.env(state))
    return env
