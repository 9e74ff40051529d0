"""Memory (and cpu) cgroups for the real-node harness, on cgroup v1 or v2.

Called by the workload supervisor (:mod:`deploy.local.node`), which plays the kubelet's part:
one cgroup per container incarnation, with a memory limit, and the kernel's own account of
what happened in it (OOM kills) as ground truth.

Which hierarchy is used is detected from the mounts (:func:`detect`):

- **v2** (unified): ``/sys/fs/cgroup`` is a cgroup2 mount with ``cgroup.controllers``; one
  directory carries ``memory.max``, ``memory.events`` (``oom_kill N``) and ``cpu.max``;
  controllers must be enabled for children in the parent's ``cgroup.subtree_control``;
- **v1** (legacy or hybrid): ``/sys/fs/cgroup/memory`` carries ``memory.limit_in_bytes`` and
  ``memory.oom_control`` (``oom_kill N``), and ``/sys/fs/cgroup/cpu`` (when mounted and
  writable) ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, plus ``cpuacct`` when it is a
  hierarchy of its own (cAdvisor reads CPU time there); a process joins each hierarchy.

Everything the harness creates lives under one parent it owns (``podguard-node-<pid>``
by default, see :func:`owned_parent_name`); :meth:`Cgroups.remove_tree` removes only that
parent's tree (the processes left in it are ours: they are killed first) and nothing else is
ever written. Paths inside a hierarchy are given as cgroup names (``/podguard-node-1/a/b``),
which is also how cAdvisor names them (its ``id`` label).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
OWNED_PREFIX = "podguard-node-"
"""Every parent cgroup the harness creates starts with this (cAdvisor's allow-list)."""


class CgroupError(RuntimeError):
    """The cgroup hierarchy is missing, not writable, or a file in it is malformed."""


def owned_parent_name(tag: str | int | None = None) -> str:
    """The name of the harness's parent cgroup: ``podguard-node-<tag or pid>``."""
    return f"{OWNED_PREFIX}{os.getpid() if tag is None else tag}"


# ---------------------------------------------------------------------- parsing (pure)


def parse_flat_keyed(text: str, *, source: str) -> dict[str, int]:
    """``key value`` lines (``memory.events``, ``memory.oom_control``, ``memory.stat``)."""
    out: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise CgroupError(f"{source} line {n}: expected 'key value', got {line!r}")
        try:
            out[parts[0]] = int(parts[1])
        except ValueError:
            raise CgroupError(f"{source} line {n}: {parts[1]!r} is not an integer") from None
    return out


def parse_memory_max(text: str, *, source: str) -> int | None:
    """``memory.max`` (v2): bytes, or None for ``max`` (no limit)."""
    t = text.strip()
    if t == "max":
        return None
    try:
        v = int(t)
    except ValueError:
        raise CgroupError(f"{source}: expected bytes or 'max', got {t!r}") from None
    if v < 0:
        raise CgroupError(f"{source}: negative limit {v}")
    return v


def parse_limit_in_bytes(text: str, *, source: str) -> int | None:
    """``memory.limit_in_bytes`` (v1): bytes, or None for the "unlimited" page-rounded max."""
    try:
        v = int(text.strip())
    except ValueError:
        raise CgroupError(f"{source}: expected bytes, got {text.strip()!r}") from None
    return None if v >= (1 << 62) else v


def cpu_max_line(millicores: int | None, period_us: int = 100_000) -> str:
    """The ``cpu.max`` (v2) line for a CPU limit in millicores (``max P`` for none)."""
    if millicores is None:
        return f"max {period_us}"
    if millicores <= 0:
        raise ValueError(f"cpu limit must be > 0 millicores, got {millicores}")
    return f"{max(1000, millicores * period_us // 1000)} {period_us}"


def _valid_name(name: str) -> str:
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid cgroup name {name!r}")
    return "/" + "/".join(parts)


# ---------------------------------------------------------------------- stats


@dataclass(frozen=True)
class MemoryState:
    """What the kernel says about one cgroup's memory, at one moment."""

    usage_bytes: int
    limit_bytes: int | None
    oom_kills: int  # processes killed by the OOM killer in this cgroup (kernel count)
    oom_events: int  # times the cgroup hit OOM (v1: under_oom transitions are not counted)
    failcnt: int | None  # v1 only: times usage hit the limit
    stat: dict[str, int]  # memory.stat
    peak_bytes: int | None = None  # highest usage (v1 max_usage_in_bytes, v2 memory.peak)


# ---------------------------------------------------------------------- the hierarchies


class Cgroups:
    """One memory(+cpu) cgroup hierarchy: create, limit, join, read, remove."""

    version: int = 0

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root

    # subclass hooks ------------------------------------------------------
    def memory_dir(self, name: str) -> Path:
        raise NotImplementedError

    def cpu_dir(self, name: str) -> Path | None:
        raise NotImplementedError

    def create(self, name: str, *, memory_limit: int, cpu_millicores: int | None = None
               ) -> None:
        raise NotImplementedError

    def memory(self, name: str) -> MemoryState:
        raise NotImplementedError

    # shared --------------------------------------------------------------
    def dirs(self, name: str) -> list[Path]:
        d = [self.memory_dir(name)]
        c = self.cpu_dir(name)
        if c is not None and c != d[0]:
            d.append(c)
        return d

    def add(self, name: str, pid: int) -> None:
        """Move ``pid`` into the cgroup (every hierarchy it has)."""
        for d in self.dirs(name):
            _write(d / "cgroup.procs", str(pid))

    def pids(self, name: str) -> list[int]:
        try:
            text = (self.memory_dir(name) / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(x) for x in text.split()]

    def exists(self, name: str) -> bool:
        return self.memory_dir(name).is_dir()

    def remove_tree(self, name: str, *, timeout: float = 10.0) -> None:
        """Kill what is left in ``name``'s tree (ours) and remove it, deepest first."""
        name = _valid_name(name)
        for base in self.dirs(name):
            if not base.is_dir():
                continue
            deeper = sorted((p for p in base.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True)
            subdirs = [*deeper, base]
            for d in subdirs:
                _kill_members(d, timeout)
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise CgroupError(f"cannot remove cgroup {d}: {e}") from e


class CgroupV1(Cgroups):
    version = 1

    def memory_dir(self, name: str) -> Path:
        return self.root / "memory" / _valid_name(name).lstrip("/")

    def cpu_dir(self, name: str) -> Path | None:
        cpu = self.root / "cpu"
        if not (cpu / "cpu.cfs_quota_us").is_file() or not os.access(cpu, os.W_OK):
            return None
        return cpu / _valid_name(name).lstrip("/")

    def cpuacct_dir(self, name: str) -> Path | None:
        """cpuacct, when mounted apart from cpu (cAdvisor reads CPU time there)."""
        acct = self.root / "cpuacct"
        if (not (acct / "cpuacct.usage").is_file() or not os.access(acct, os.W_OK)
                or (self.root / "cpu" / "cpuacct.usage").is_file()):
            return None
        return acct / _valid_name(name).lstrip("/")

    def dirs(self, name: str) -> list[Path]:
        d = super().dirs(name)
        acct = self.cpuacct_dir(name)
        return [*d, acct] if acct is not None else d

    def create(self, name: str, *, memory_limit: int, cpu_millicores: int | None = None
               ) -> None:
        mem = self.memory_dir(name)
        mem.mkdir(parents=True, exist_ok=True)
        _write(mem / "memory.limit_in_bytes", str(int(memory_limit)))
        # No swap: a leak must hit the limit, as on a kubelet node (swap off).
        memsw = mem / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            try:
                _write(memsw, str(int(memory_limit)))
            except CgroupError:
                pass
        swp = mem / "memory.swappiness"
        if swp.exists():
            try:
                _write(swp, "0")
            except CgroupError:
                pass
        acct = self.cpuacct_dir(name)
        if acct is not None:
            acct.mkdir(parents=True, exist_ok=True)
        cpu = self.cpu_dir(name)
        if cpu is not None:
            cpu.mkdir(parents=True, exist_ok=True)
            if cpu_millicores is not None:
                period = 100_000
                _write(cpu / "cpu.cfs_period_us", str(period))
                _write(cpu / "cpu.cfs_quota_us", str(max(1000, cpu_millicores * period // 1000)))

    def memory(self, name: str) -> MemoryState:
        d = self.memory_dir(name)
        oc = parse_flat_keyed(_read(d / "memory.oom_control"), source=str(d / "memory.oom_control"))
        stat = parse_flat_keyed(_read(d / "memory.stat"), source=str(d / "memory.stat"))
        return MemoryState(
            usage_bytes=int(_read(d / "memory.usage_in_bytes").strip()),
            limit_bytes=parse_limit_in_bytes(_read(d / "memory.limit_in_bytes"),
                                             source=str(d / "memory.limit_in_bytes")),
            oom_kills=oc.get("oom_kill", 0),
            oom_events=oc.get("oom_kill", 0),
            failcnt=int(_read(d / "memory.failcnt").strip()),
            stat=stat,
            peak_bytes=int(_read(d / "memory.max_usage_in_bytes").strip()),
        )


class CgroupV2(Cgroups):
    version = 2

    def memory_dir(self, name: str) -> Path:
        return self.root / _valid_name(name).lstrip("/")

    def cpu_dir(self, name: str) -> Path | None:
        return self.memory_dir(name)

    def create(self, name: str, *, memory_limit: int, cpu_millicores: int | None = None
               ) -> None:
        rel = _valid_name(name).lstrip("/").split("/")
        d = self.root
        for part in rel:
            # Children get the controllers only once the parent delegates them.
            _enable_controllers(d, ("memory", "cpu"))
            d = d / part
            d.mkdir(exist_ok=True)
        _write(d / "memory.max", str(int(memory_limit)))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        if (d / "memory.oom.group").exists():
            _write(d / "memory.oom.group", "1")  # the kubelet sets it: the container dies whole
        if cpu_millicores is not None and (d / "cpu.max").exists():
            _write(d / "cpu.max", cpu_max_line(cpu_millicores))

    def memory(self, name: str) -> MemoryState:
        d = self.memory_dir(name)
        events = parse_flat_keyed(_read(d / "memory.events"), source=str(d / "memory.events"))
        stat = parse_flat_keyed(_read(d / "memory.stat"), source=str(d / "memory.stat"))
        return MemoryState(
            usage_bytes=int(_read(d / "memory.current").strip()),
            limit_bytes=parse_memory_max(_read(d / "memory.max"), source=str(d / "memory.max")),
            oom_kills=events.get("oom_kill", 0),
            oom_events=events.get("oom", 0),
            failcnt=None,
            stat=stat,
            peak_bytes=(int(_read(d / "memory.peak").strip()) if (d / "memory.peak").exists()
                        else None),
        )


def detect(root: Path = ROOT) -> Cgroups:
    """The writable memory hierarchy of this machine, v2 first; CgroupError if there is none."""
    if (root / "cgroup.controllers").is_file():
        controllers = _read(root / "cgroup.controllers").split()
        if "memory" not in controllers:
            raise CgroupError(f"{root} is cgroup v2 without the memory controller "
                              f"(controllers: {' '.join(controllers) or 'none'})")
        if not os.access(root, os.W_OK):
            raise CgroupError(f"{root} (cgroup v2) is not writable: run as root, or in a "
                              "delegated cgroup (systemd-run --user --scope -p Delegate=yes)")
        return CgroupV2(root)
    mem = root / "memory"
    if (mem / "memory.limit_in_bytes").is_file():
        if not os.access(mem, os.W_OK):
            raise CgroupError(f"{mem} (cgroup v1 memory) is not writable: run as root")
        return CgroupV1(root)
    raise CgroupError(f"no memory cgroup hierarchy under {root} (neither cgroup v2 with the "
                      "memory controller nor cgroup v1 at memory/); the real-node harness "
                      "needs one, writable (root)")


# ---------------------------------------------------------------------- file helpers


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError as e:
        raise CgroupError(f"cannot read {p}: {e}") from e


def _write(p: Path, text: str) -> None:
    try:
        with open(p, "w") as f:
            f.write(text)
    except OSError as e:
        raise CgroupError(f"cannot write {text!r} to {p}: {e}") from e


def _enable_controllers(d: Path, wanted: tuple[str, ...]) -> None:
    sub = d / "cgroup.subtree_control"
    if not sub.exists():
        return
    have = set(_read(d / "cgroup.controllers").split())
    on = set(_read(sub).split())
    for c in wanted:
        if c in have and c not in on:
            _write(sub, f"+{c}")


def _kill_members(d: Path, timeout: float) -> None:
    procs = d / "cgroup.procs"
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        try:
            pids = [int(x) for x in procs.read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise CgroupError(f"processes {pids} do not leave {d}")
            sig, deadline = signal.SIGKILL, time.monotonic() + 5.0
        time.sleep(0.1)
