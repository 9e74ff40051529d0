"""cAdvisor for the real-node harness: built from its Go library module, run on 127.0.0.1.

The command module ``github.com/google/cadvisor/cmd`` is not served by the Go module proxy;
the library ``github.com/google/cadvisor/lib`` is. ``deploy/local/gobuild/cadvisor`` holds a
~100-line main over the library's manager, raw cgroup factory and Prometheus collector
(``/metrics``), built once per machine into ``cache_dir()/cadvisor-<version>/cadvisor``
(:func:`prepare`, called by ``python -m deploy.local prepare`` through :class:`Cadvisor`).

cAdvisor reports only the cgroups whose path starts with a prefix of its allow-list (plus
``/``); the harness passes ``/podguard-node-`` (:data:`deploy.local.cgroups.OWNED_PREFIX`), so
it reports the harness's own cgroups and nothing else of the machine. Series carry the
cgroup path as ``id``; :mod:`deploy.local.node` relabels it into namespace/pod/container in
Prometheus, as a kubelet's cAdvisor would label them.

As a stack service (``python -m deploy.local up cadvisor``) its port is recorded in
``<state>/cadvisor.json``; :func:`start_instance` runs a private one for a harness.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from deploy.local import _proc
from deploy.local._proc import LOOPBACK, StackError, cache_dir
from deploy.local._service import ServiceStatus
from deploy.local.cgroups import OWNED_PREFIX
from deploy.local.k8s_build import _run_go
from deploy.local.stack import http, process_status, read_record, write_record

VERSION = "v0.60.6"
"""Version of github.com/google/cadvisor/lib pinned in gobuild/cadvisor/go.mod."""

GOBUILD = Path(__file__).resolve().parent / "gobuild" / "cadvisor"


def binary() -> Path:
    return cache_dir() / f"cadvisor-{VERSION}" / "cadvisor"


def prepare() -> float | None:
    """Build the binary if it is not cached; the seconds the build took (None: cached)."""
    final = binary()
    if final.is_file():
        return None
    final.parent.mkdir(parents=True, exist_ok=True)
    print(f"[cadvisor] building cAdvisor {VERSION} (github.com/google/cadvisor/lib) into "
          f"{final.parent} (1-3 minutes cold) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=".cadvisor.partial-", dir=final.parent) as t:
        out = Path(t) / "cadvisor"
        secs = _run_go(["build", "-ldflags=-s -w", "-o", str(out), "."], cwd=GOBUILD,
                       what=f"cadvisor {VERSION}")
        if not out.is_file():
            raise StackError(f"the cAdvisor build reported success but {out} is missing")
        os.replace(out, final)
    print(f"[cadvisor] built in {secs:.0f}s", file=sys.stderr, flush=True)
    return secs


def metrics_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}/metrics"


def start_instance(name: str, state: Path, *, prefixes: tuple[str, ...] = ("/" + OWNED_PREFIX,),
                   timeout: float = 30.0) -> int:
    """Start cAdvisor as process ``name`` (PID/log in ``state``); return its port once ready."""
    prepare()
    port_file = state / f"{name}.port"
    port_file.unlink(missing_ok=True)
    _proc.start(name, [str(binary()), "-listen", f"{LOOPBACK}:0", "-port_file", str(port_file),
                       "-raw_cgroup_prefix_whitelist", ",".join(prefixes)], state)

    def ready() -> bool:
        try:
            port = int(port_file.read_text())
        except (OSError, ValueError):
            return False
        status, body = http("GET", metrics_url(port), timeout=5)
        return status == 200 and b"container_memory_working_set_bytes" in body

    try:
        _proc.wait_until(ready, timeout=timeout, what="cAdvisor serving /metrics", name=name,
                         state=state)
    except StackError:
        _proc.stop(name, state)
        raise
    return int(port_file.read_text())


class Cadvisor:
    """cAdvisor as a service of the local stack (implements ``Service``)."""

    name = "cadvisor"

    def prepare(self) -> None:
        prepare()

    def start(self, state: Path) -> None:
        if _proc.alive(_proc.pid_of(self.name, state)) and self._ready(state):
            return
        port = start_instance(self.name, state)
        write_record(state, self.name, {"port": port, "url": metrics_url(port),
                                        "version": VERSION, "started_at": time.time()})

    def stop(self, state: Path) -> None:
        _proc.stop(self.name, state)

    def _ready(self, state: Path) -> bool:
        url = read_record(state, self.name).get("url")
        if not isinstance(url, str):
            return False
        try:
            return http("GET", url, timeout=3)[0] == 200
        except OSError:
            return False

    def status(self, state: Path) -> list[ServiceStatus]:
        return [process_status(self.name, state, ready=lambda: self._ready(state),
                               url=lambda rec: str(rec.get("url", "")),
                               not_ready="not serving /metrics")]

    def env(self, state: Path) -> dict[str, str]:
        url = read_record(state, self.name).get("url")
        return {"PODGUARD_CADVISOR_URL": url} if isinstance(url, str) else {}
