"""Builds the control-plane binaries of the local Kubernetes into the per-user cache.

Called by :meth:`deploy.local.kubernetes.Kubernetes.prepare`. Every binary is compiled from
its published Go module with the Go toolchain on PATH (or /usr/local/go/bin), once per
machine and version:

- ``cache_dir()/k8s-v1.35.4/``: kube-apiserver, kube-controller-manager, kube-scheduler, from
  the build module in ``deploy/local/gobuild`` (k8s.io/kubernetes with its staging modules
  pinned to their published versions);
- ``cache_dir()/etcd-v3.6.16/etcd``: from ``deploy/local/gobuild/etcd`` (etcd's server
  module, whose main package sits at its root);
- ``cache_dir()/kwok-v0.8.0/kwok``: ``go install sigs.k8s.io/kwok/cmd/kwok@v0.8.0``, plus
  ``stages.yaml``, kwok's own "fast" stages (node initialise + lease heartbeat, pod
  ready/complete/delete) copied from the same module, which kwok needs to do anything.

Binaries are written to a temporary directory next to their final place and renamed into
place only once the build succeeded, so an interrupted build never looks like a good one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.local._proc import StackError, cache_dir

K8S_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"

GOBUILD = Path(__file__).resolve().parent / "gobuild"

_K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# kwok's "fast" stage set (kustomize/stage/fast in its repository), in its order.
_KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


@dataclass(frozen=True)
class Binaries:
    """Where the prepared binaries live (all under the per-user cache)."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path  # for the deploy tests (kustomize rendering), same release
    etcd: Path
    kwok: Path
    kwok_stages: Path

    def missing(self) -> list[Path]:
        return [p for p in (self.kube_apiserver, self.kube_controller_manager,
                            self.kube_scheduler, self.kubectl, self.etcd, self.kwok,
                            self.kwok_stages)
                if not p.is_file()]


def binaries() -> Binaries:
    base = cache_dir()
    k8s = base / f"k8s-{K8S_VERSION}"
    kwok = base / f"kwok-{KWOK_VERSION}"
    return Binaries(
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubectl=k8s / "kubectl",
        etcd=base / f"etcd-{ETCD_VERSION}" / "etcd",
        kwok=kwok / "kwok",
        kwok_stages=kwok / "stages.yaml",
    )


def go_binary() -> str:
    """The ``go`` command: from PATH, else the standard /usr/local/go install."""
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if not found:
        raise StackError(
            "the local Kubernetes is compiled from source and needs Go >= 1.26: install it "
            "from https://go.dev/dl/ (or your distribution) and put `go` on PATH")
    return found


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Static, reproducible binaries; the same flags every time so the build cache is reused.
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = "-trimpath -buildvcs=false"
    return env


def _run_go(args: list[str], *, cwd: Path, what: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [go_binary(), *args], cwd=cwd, env=env or _go_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )
    if proc.returncode != 0:
        raise StackError(
            f"building {what} failed (go {' '.join(args[:2])} in {cwd}, exit "
            f"{proc.returncode}):\n{proc.stdout[-4000:]}")
    return time.monotonic() - started


def _say(msg: str) -> None:
    print(f"[kubernetes] {msg}", file=sys.stderr, flush=True)


def _install(tmp: Path, final_dir: Path, names: tuple[str, ...]) -> None:
    """Rename complete binaries from ``tmp`` into ``final_dir`` (atomic per file)."""
    final_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        src = tmp / n
        if not src.is_file():
            raise StackError(f"build reported success but {src} is missing")
        os.replace(src, final_dir / n)


def _k8s_ldflags() -> str:
    major, minor = K8S_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    # What kubernetes' hack/lib/version.sh stamps, so /version reports the real release.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={K8S_VERSION}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean",
                  f"-X {pkg}.gitCommit="]
    return " ".join(flags)


def build_kubernetes(b: Binaries) -> float | None:
    final = b.kube_apiserver.parent
    if all((final / n).is_file() for n in _K8S_COMMANDS):
        return None
    _say(f"building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl "
         f"{K8S_VERSION} from source into {final} (Go build: 5-10 minutes on a cold 2-core "
         "machine, seconds to a minute once the Go build cache is warm) ...")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.partial-", dir=final.parent) as t:
        tmp = Path(t)
        secs = _run_go(
            ["build", f"-ldflags={_k8s_ldflags()}", "-o", str(tmp) + "/",
             *(f"k8s.io/kubernetes/cmd/{n}" for n in _K8S_COMMANDS)],
            cwd=GOBUILD, what=f"kubernetes {K8S_VERSION}")
        _install(tmp, final, _K8S_COMMANDS)
    _say(f"built kubernetes {K8S_VERSION} in {secs:.0f}s")
    return secs


def build_etcd(b: Binaries) -> float | None:
    if b.etcd.is_file():
        return None
    final = b.etcd.parent
    _say(f"building etcd {ETCD_VERSION} from source into {final} (1-3 minutes cold) ...")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.partial-", dir=final.parent) as t:
        tmp = Path(t)
        secs = _run_go(["build", "-ldflags=-s -w", "-o", str(tmp / "etcd"),
                        "go.etcd.io/etcd/server/v3"],
                       cwd=GOBUILD / "etcd", what=f"etcd {ETCD_VERSION}")
        _install(tmp, final, ("etcd",))
    _say(f"built etcd {ETCD_VERSION} in {secs:.0f}s")
    return secs


def _module_dir(module: str, version: str) -> Path:
    """Download (if needed) a module into the Go module cache and return its directory."""
    proc = subprocess.run(
        [go_binary(), "mod", "download", "-json", f"{module}@{version}"],
        env=_go_env(), capture_output=True, text=True, check=False,
        cwd=tempfile.gettempdir(),
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or "Dir" not in info:
        raise StackError(f"cannot download {module}@{version}: {info.get('Error') or proc.stderr}")
    return Path(info["Dir"])


def build_kwok(b: Binaries) -> float | None:
    final = b.kwok.parent
    secs: float | None = None
    final.parent.mkdir(parents=True, exist_ok=True)
    if not b.kwok.is_file():
        _say(f"building kwok {KWOK_VERSION} from source into {final} (1-3 minutes cold) ...")
        with tempfile.TemporaryDirectory(prefix=f".{final.name}.partial-",
                                         dir=final.parent) as t:
            tmp = Path(t)
            env = _go_env()
            env["GOBIN"] = str(tmp)
            secs = _run_go(
                ["install", f"-ldflags=-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}",
                 f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
                cwd=Path(tempfile.gettempdir()), what=f"kwok {KWOK_VERSION}", env=env)
            _install(tmp, final, ("kwok",))
        _say(f"built kwok {KWOK_VERSION} in {secs:.0f}s")
    if not b.kwok_stages.is_file():
        src = _module_dir("sigs.k8s.io/kwok", KWOK_VERSION)
        docs = [(src / f).read_text().strip() for f in _KWOK_STAGE_FILES]
        tmp_file = b.kwok_stages.with_name(f".{b.kwok_stages.name}.{os.getpid()}")
        tmp_file.write_text("\n---\n".join(docs) + "\n")
        os.replace(tmp_file, b.kwok_stages)
    return secs


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per cache (two test sessions may prepare at once)."""
    with open(cache_dir() / "k8s-build.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_partials() -> None:
    """Left-overs of builds that were killed (holding the lock, none is running)."""
    for d in cache_dir().glob(".*.partial-*"):
        shutil.rmtree(d, ignore_errors=True)


def prepare() -> dict[str, float]:
    """Build what is missing; return the seconds each build took (empty when all cached)."""
    b = binaries()
    took: dict[str, float] = {}
    if not b.missing():
        return took
    with _build_lock():
        _remove_partials()
        for name, step in (("kubernetes", build_kubernetes), ("etcd", build_etcd),
                           ("kwok", build_kwok)):
            secs = step(b)
            if secs is not None:
                took[name] = secs
    still = b.missing()
    if still:
        raise StackError(f"after building, still missing: {', '.join(map(str, still))}")
    return took
