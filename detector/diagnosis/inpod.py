"""The in-pod diagnoser: two snapshots of a training process, then what grew between them.

Standard library and torch only (torch is never imported here: it is taken from
``sys.modules`` if the process has it), so a training image needs nothing of podguard's daemon.
Called by :mod:`detector.diagnosis.helper` at a safe point of the training loop (between two
steps, in the training thread)::

    d = Diagnoser()
    d.begin()            # snapshot A; tracemalloc (and the CUDA allocation history) start
    ...                  # training goes on for the window (seconds to minutes)
    result = d.finish()  # snapshot B; both stop; a bounded dict with a "sentence"

What each snapshot holds and what the result says grew:

* **live objects by type** (``gc.get_objects`` after a ``gc.collect``);
* **torch tensors** grouped by (device, dtype, shape, requires_grad, grad_fn name), with the
  bytes of their storages (each storage counted once) plus the bytes the autograd graph keeps
  alive for them: the saved tensors (``grad_fn._saved_*``) along the ``next_functions`` chain,
  not counting storages that belong to live tensors (parameters). Graphs are walked for at most
  :attr:`Diagnoser.graph_budget_s` per snapshot, the rest extrapolated (``graph_estimated``);
* for the group that grew most: the **referrer chain** from one of its new tensors up to a name
  (``gc.get_referrers`` walked to a frame local, a module global or an attribute) and the
  **code location that made it**: the allocation site whose surviving allocations match the
  group's growth in count (a tensor's Python object is one traced allocation at the line that
  made it; ``tracemalloc.get_object_traceback`` cannot be used: Python 3.11 returns None for
  objects with a managed dict, tensors included);
* the **Python heap by allocation site**: tracemalloc runs only between ``begin`` and
  ``finish`` (``nframes`` frames, default 4) and is stopped afterwards (unless it was already
  running); each allocation is attributed to its innermost frame outside the standard library
  and site-packages;
* **GPU memory**: ``torch.cuda.memory_stats`` per device and, where available,
  ``torch.cuda.memory._record_memory_history`` for the window: the allocations made and not
  freed, by their innermost user frame (only when CUDA is initialised in this process);
* **DataLoader workers**: every child process's RSS from ``/proc`` (a DataLoader iterator's
  workers are named as such), so a leak inside the workers is named as one.

Cost: each snapshot pauses the loop once (measured and reported as ``pause_s``; the referrer
walk stops at :attr:`Diagnoser.budget_s`); tracemalloc slows allocations only inside the window.
"""

from __future__ import annotations

import ast
import gc
import linecache
import os
import sys
import sysconfig
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from detector.diagnosis import report as rp

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_LIB_DIRS = tuple(sorted({os.path.abspath(p) for k in ("stdlib", "platstdlib", "purelib",
                                                         "platlib")
                          if (p := sysconfig.get_paths().get(k))}, key=len, reverse=True))

GroupKey = tuple[str, str, tuple[int, ...], bool, str]


@dataclass
class TensorGroup:
    count: int = 0
    bytes: int = 0  # storages first seen through a tensor of this group
    graph_bytes: int = 0  # saved-tensor storages reachable through grad_fn (extrapolated)
    graph_nodes: int = 0
    with_graph: int = 0  # tensors of the group that have a grad_fn
    walked: int = 0  # of those, how many had their graph walked


@dataclass
class ProcInfo:
    pid: int
    name: str
    rss: int
    anon: int


@dataclass
class Snapshot:
    wall: float
    mono: float
    rss: int
    anon: int
    types: Counter[type]
    groups: dict[GroupKey, TensorGroup]
    tensor_ids: set[int]
    children: dict[int, ProcInfo]
    dataloader_workers: dict[int, int]  # pid -> worker index
    cuda: dict[str, dict[str, int]]
    n_objects: int
    n_tensors: int
    n_internal: int = 0  # tensors kept alive inside autograd graphs (counted with the root)
    pause_s: float = 0.0
    graph_truncated: bool = False
    samples: dict[GroupKey, list[Any]] = field(default_factory=dict)  # new tensors (B only)


# ---------------------------------------------------------------------- /proc


def proc_memory(pid: int | str = "self") -> tuple[int, int] | None:
    """(VmRSS, RssAnon) bytes of a process; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            text = fh.read()
    except OSError:
        return None
    rss = anon = 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("RssAnon:"):
            anon = int(line.split()[1]) * 1024
    return rss, anon


def children_of(pid: int) -> dict[int, ProcInfo]:
    """The live child processes of ``pid`` with their memory (from ``/proc``)."""
    out: dict[int, ProcInfo] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        close = stat.rfind(")")
        parts = stat[close + 2:].split()
        if len(parts) < 2 or parts[1] != str(pid):
            continue
        mem = proc_memory(e)
        if mem is None:
            continue
        name = stat[stat.find("(") + 1:close]
        out[int(e)] = ProcInfo(int(e), name, mem[0], mem[1])
    return out


# ---------------------------------------------------------------------- tensors


def _storage(t: Any) -> tuple[str, int, int] | None:
    try:
        s = t.untyped_storage()
        return str(s.device), int(s.data_ptr()), int(s.nbytes())
    except Exception:  # sparse, nested, meta or fake tensors have no plain storage
        return None


def _fn_name(t: Any) -> str:
    fn = t.grad_fn
    if fn is not None:
        try:
            return str(fn.name())
        except Exception:
            return type(fn).__name__
    return "leaf" if t.requires_grad else ""


_SAVED: dict[type, tuple[str, ...]] = {}


def _saved_attrs(node: Any) -> tuple[str, ...]:
    tp = type(node)
    names = _SAVED.get(tp)
    if names is None:
        names = tuple(a for a in dir(node) if a.startswith("_saved_")
                      and not a.endswith(("_sym_sizes", "_sym_strides", "_sym_numel",
                                          "_sym_argsize_0", "_sym_argsize_1")))
        _SAVED[tp] = names
    return names


def _walk_graph(fn: Any, tensor_type: type, visited: dict[int, Any], live_ids: set[int]
                ) -> tuple[list[tuple[str, int, int]], set[int], int]:
    """What ``fn``'s graph keeps alive: (storages of its saved tensors, ids of live tensor
    objects among them, nodes visited). Nodes already in ``visited`` (another root's graph)
    are not entered again."""
    storages: list[tuple[str, int, int]] = []
    saved_live: set[int] = set()
    nodes = 0
    stack = [fn]
    while stack:
        n = stack.pop()
        if n is None or id(n) in visited:
            continue
        visited[id(n)] = n  # held until the snapshot ends, so ids stay unique
        nodes += 1
        for attr in _saved_attrs(n):
            try:
                v = getattr(n, attr)
            except Exception:  # freed by a backward pass, or not a tensor slot
                continue
            for x in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(x, tensor_type):
                    if id(x) in live_ids:
                        saved_live.add(id(x))
                    st = _storage(x)
                    if st is not None:
                        storages.append(st)
        try:
            stack.extend(f for f, _ in n.next_functions)
        except Exception:
            pass
    return storages, saved_live, nodes


def _seq(t: Any) -> int:
    try:
        return int(t.grad_fn._sequence_nr())
    except Exception:
        return 0


def _cuda_stats(torch: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if not _cuda_ready(torch):
        return out
    keys = ("allocated_bytes.all.current", "reserved_bytes.all.current",
            "active_bytes.all.current", "allocation.all.current", "num_alloc_retries",
            "num_ooms")
    for i in range(torch.cuda.device_count()):
        try:
            st = torch.cuda.memory_stats(i)
        except Exception:
            continue
        out[f"cuda:{i}"] = {k: int(st.get(k, 0)) for k in keys}
    return out


def _cuda_ready(torch: Any) -> bool:
    try:
        return bool(torch is not None and torch.cuda.is_available()
                    and torch.cuda.is_initialized())
    except Exception:
        return False


def take_snapshot(*, graph_budget_s: float = 0.4, prev_ids: set[int] | None = None,
                  samples: int = 3) -> Snapshot:
    """One snapshot of this process (see the module docstring); pauses the caller.

    Tensors are grouped and their bytes counted in three passes: (1) the autograd graphs are
    walked from the newest root down (descending ``grad_fn`` sequence number), so a tensor
    whose ``grad_fn`` lies inside another tensor's graph, or that another graph saved, is an
    *internal* tensor of that graph (PyTorch keeps the Python objects of saved tensors alive),
    counted with the root, not as a group of its own; (2) every other tensor's storage goes to
    its group; (3) each root's saved storages not yet counted are its group's graph bytes.
    Walking stops after ``graph_budget_s``; the graph bytes of the roots left are
    extrapolated from the walked ones of their group. With ``prev_ids`` (the ids of the
    previous snapshot's tensors), up to ``samples`` new tensors per group are kept in
    ``Snapshot.samples`` for the referrer walk."""
    t0 = time.perf_counter()
    gc.collect()
    objs = gc.get_objects()
    types = Counter(map(type, objs))
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None) if torch is not None else None
    tensors = [o for o in objs if isinstance(o, tensor_type)] if tensor_type else []
    dl_mod = sys.modules.get("torch.utils.data.dataloader")
    dl_cls = getattr(dl_mod, "_MultiProcessingDataLoaderIter", None)
    workers: dict[int, int] = {}
    if dl_cls is not None and types.get(dl_cls):
        for it in (o for o in objs if type(o) is dl_cls):
            for i, w in enumerate(getattr(it, "_workers", None) or []):
                pid = getattr(w, "pid", None)
                if isinstance(pid, int):
                    workers[pid] = i
    n_objects = len(objs)
    del objs
    keyed: list[tuple[Any, GroupKey]] = []
    for t in tensors:
        try:
            key: GroupKey = (str(t.device), str(t.dtype).replace("torch.", ""),
                             tuple(int(d) for d in t.shape), bool(t.requires_grad),
                             _fn_name(t))
        except Exception:
            continue
        keyed.append((t, key))
    del tensors
    ids = {id(t) for t, _ in keyed}
    # (1) graphs, newest root first
    visited: dict[int, Any] = {}
    internal: set[int] = set()
    roots: list[tuple[GroupKey, list[tuple[str, int, int]], int]] = []
    unwalked: Counter[GroupKey] = Counter()
    deadline = time.thread_time() + graph_budget_s
    truncated = False
    with_fn = sorted(((t, k) for t, k in keyed if t.grad_fn is not None),
                     key=lambda tk: -_seq(tk[0]))
    for t, key in with_fn:
        fn = t.grad_fn
        if id(fn) in visited or id(t) in internal:
            internal.add(id(t))
            continue
        if time.thread_time() > deadline:
            truncated = True
            unwalked[key] += 1
            continue
        storages, saved_live, nodes = _walk_graph(fn, tensor_type, visited,  # type: ignore[arg-type]
                                                  ids)
        internal |= saved_live - {id(t)}
        roots.append((key, storages, nodes))
    del with_fn
    # (2) own storages of the tensors that are not internal to a graph
    groups: dict[GroupKey, TensorGroup] = {}
    seen: set[tuple[str, int]] = set()
    kept: dict[GroupKey, list[Any]] = {}
    n_internal = 0
    for t, key in keyed:
        if id(t) in internal:
            n_internal += 1
            continue
        g = groups.get(key)
        if g is None:
            g = groups[key] = TensorGroup()
        g.count += 1
        if t.grad_fn is not None:
            g.with_graph += 1
        st = _storage(t)
        if st is not None and (st[0], st[1]) not in seen:
            seen.add((st[0], st[1]))
            g.bytes += st[2]
        if prev_ids is not None and id(t) not in prev_ids:
            lst = kept.setdefault(key, [])
            if len(lst) < samples:
                lst.append(t)
    # (3) what each root's graph keeps alive that no live tensor owns
    for key, storages, nodes in roots:
        g = groups.get(key)
        if g is None:
            continue
        for dev, ptr, nb in storages:
            if (dev, ptr) not in seen:
                seen.add((dev, ptr))
                g.graph_bytes += nb
        g.graph_nodes += nodes
        g.walked += 1
    for key, n in unwalked.items():
        g = groups.get(key)
        if g is not None and g.walked:
            g.graph_bytes = int(g.graph_bytes * (g.walked + n) / g.walked)
    visited.clear()
    del keyed
    mem = proc_memory() or (0, 0)
    snap = Snapshot(
        wall=time.time(), mono=time.monotonic(), rss=mem[0], anon=mem[1], types=types,
        groups=groups, tensor_ids=ids, children=children_of(os.getpid()),
        dataloader_workers=workers, cuda=_cuda_stats(torch), n_objects=n_objects,
        n_tensors=len(ids), n_internal=n_internal, graph_truncated=truncated, samples=kept)
    snap.pause_s = time.perf_counter() - t0
    return snap


# ---------------------------------------------------------------------- code locations


def _is_ours(filename: str) -> bool:
    return os.path.dirname(os.path.abspath(filename)) == _PKG_DIR


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):
        return True
    path = os.path.abspath(filename)
    return path.startswith(_LIB_DIRS) or _is_ours(filename) or "/site-packages/" in path


def short_path(filename: str) -> str:
    """A file as a person would name it: relative to the working directory when under it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return rel if not rel.startswith("..") else filename


_DEFS: dict[str, list[tuple[int, int, str]]] = {}


def function_at(filename: str, lineno: int) -> str:
    """The innermost ``def`` (or class) of ``filename`` containing ``lineno`` ("" if none);
    each file is parsed once."""
    defs = _DEFS.get(filename)
    if defs is None:
        defs = []
        try:
            tree = ast.parse("".join(linecache.getlines(filename)))
        except (SyntaxError, ValueError, MemoryError):
            tree = None
        if tree is not None:
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defs.append((node.lineno, getattr(node, "end_lineno", None) or node.lineno,
                                 node.name))
        _DEFS[filename] = defs
    best, best_start = "", -1
    for start, end, name in defs:
        if start <= lineno <= end and start > best_start:
            best, best_start = name, start
    return best


def _site(filename: str, lineno: int) -> dict[str, Any]:
    return {"file": short_path(filename), "line": lineno,
            "function": function_at(filename, lineno),
            "code": rp.clean_text(linecache.getline(filename, lineno).strip(), 120)}


def _user_frame(tb: tracemalloc.Traceback) -> tracemalloc.Frame:
    """The innermost frame of ``tb`` outside the standard library, site-packages and this
    package (the innermost frame if all are)."""
    frames = list(tb)  # oldest first
    for fr in reversed(frames):
        if not _is_library(fr.filename):
            return fr
    return frames[-1]


def heap_sites(snap: tracemalloc.Snapshot) -> list[tuple[str, int, int, int]]:
    """Allocations alive in ``snap`` by their innermost user frame, largest first:
    (filename, line, bytes, count)."""
    by: dict[tuple[str, int], list[int]] = {}
    lib: dict[str, bool] = {}
    for stat in snap.statistics("traceback"):  # identical tracebacks grouped first
        frames = stat.traceback  # oldest first
        fr = frames[-1]
        for f in reversed(frames):
            is_lib = lib.get(f.filename)
            if is_lib is None:
                is_lib = lib[f.filename] = _is_library(f.filename)
            if not is_lib:
                fr = f
                break
        if lib.get(fr.filename) and (_is_ours(fr.filename) or fr.filename == tracemalloc.__file__):
            continue
        acc = by.setdefault((fr.filename, fr.lineno), [0, 0])
        acc[0] += stat.size
        acc[1] += stat.count
    return [(f, ln, size, count)
            for (f, ln), (size, count) in sorted(by.items(), key=lambda kv: -kv[1][0])]


# ---------------------------------------------------------------------- referrers


def _live_frames() -> list[Any]:
    frames = []
    for top in sys._current_frames().values():
        f: Any = top
        while f is not None:
            if not _is_ours(f.f_code.co_filename):
                frames.append(f)
            f = f.f_back
    return frames


def _describe(obj: Any) -> str:
    tp = type(obj)
    name = tp.__qualname__ if tp.__module__ in ("builtins", "collections") else (
        f"{tp.__module__}.{tp.__qualname__}")
    try:
        return f"{name} of {len(obj):,}"
    except Exception:
        return name


def _key_text(k: Any) -> str:
    return rp.clean_text(repr(k), 40)


def holder_chain(target: Any, *, exclude: set[int], deadline: float,
                 max_depth: int = 8) -> dict[str, Any]:
    """Who holds ``target``: a chain of containers up to a named root (a frame local, a
    module global or an attribute of a module-level object), as far as the deadline allows.

    Returns ``{"holder": "list `losses`", "expr": "losses", "root": {...}, "chain": [...]}``.
    """
    modules = {id(vars(m)): name for name, m in list(sys.modules.items())
               if m is not None and hasattr(m, "__dict__")}
    frames = _live_frames()
    steps: list[dict[str, Any]] = []  # from the target upwards: (holder, accessor)
    accessors: list[str] = []  # how each holder reaches the object below it
    holders: list[Any] = []
    exclude = exclude | {id(frames), id(modules), id(steps), id(accessors), id(holders)}
    obj = target
    root: dict[str, Any] | None = None
    for _ in range(max_depth):
        for fr in frames:
            try:
                loc = fr.f_locals
            except Exception:
                continue
            for name, val in loc.items():
                if val is obj:
                    root = {"kind": "local", "name": name, "function": fr.f_code.co_name,
                            "file": short_path(fr.f_code.co_filename), "line": fr.f_lineno}
                    break
            if root:
                break
        if root or time.thread_time() > deadline:
            break
        refs = gc.get_referrers(obj)
        exclude.add(id(refs))
        nxt = None
        acc = ""
        for r in refs:
            if id(r) in exclude or type(r).__name__ == "frame":
                continue
            if isinstance(r, dict):
                mod = modules.get(id(r))
                if mod is not None:
                    gname = next((k for k, v in r.items() if v is obj), "?")
                    root = {"kind": "global", "name": f"{mod}.{gname}", "module": mod}
                    break
                owners = [o for o in gc.get_referrers(r)
                          if id(o) not in exclude and getattr(o, "__dict__", None) is r]
                key = next((k for k, v in r.items() if v is obj), None)
                if owners:
                    nxt, acc = owners[0], f".{key}"
                else:
                    nxt, acc = r, f"[{_key_text(key)}]"
                break
            if isinstance(r, (list, tuple, set, frozenset)) or type(r).__name__ == "deque":
                nxt, acc = r, "[...]" if isinstance(r, (list, tuple)) else "{...}"
                break
            d = getattr(r, "__dict__", None)
            if isinstance(d, dict):
                attr = next((k for k, v in d.items() if v is obj), None)
                if attr is not None:
                    nxt, acc = r, f".{attr}"
                    break
            if nxt is None:
                nxt, acc = r, "(?)"
        del refs
        if root is not None or nxt is None:
            break
        steps.append({"holder": _describe(nxt), "via": acc})
        holders.append(nxt)
        accessors.append(acc)
        obj = nxt
    # the container that directly holds the target, named from the root down
    out: dict[str, Any] = {"chain": steps[:6], "root": root}
    if not holders:
        if root is not None:
            out["holder"] = f"{root['kind']} `{root['name']}`"
            out["expr"] = root["name"]
        return out
    base = root["name"] if root is not None else _describe(holders[-1])
    expr = base
    for acc in reversed(accessors[1:]):  # from the root's child down to the direct holder
        expr += acc if acc.startswith((".", "[")) and acc != "[...]" else f"{acc}"
    tp = type(holders[0]).__name__
    out["expr"] = expr
    out["holder"] = f"{tp} `{expr}`" if root is not None else f"{tp} ({_describe(holders[-1])})"
    return out


# ---------------------------------------------------------------------- the diagnoser


def _group_dict(key: GroupKey, a: TensorGroup | None, b: TensorGroup) -> dict[str, Any]:
    a = a or TensorGroup()
    return {"device": key[0], "dtype": key[1], "shape": list(key[2])[:8],
            "requires_grad": key[3], "grad_fn": key[4] or None,
            "count": b.count, "new": b.count - a.count,
            "bytes": (b.bytes + b.graph_bytes) - (a.bytes + a.graph_bytes),
            "own_bytes": b.bytes - a.bytes, "graph_bytes": b.graph_bytes - a.graph_bytes,
            "graph_estimated": b.walked < b.with_graph}


@dataclass
class Diagnoser:
    """Two snapshots and their difference (see the module docstring)."""

    nframes: int = 4  # tracemalloc frames per allocation (12 cost a PyTorch loop +40 %)
    graph_budget_s: float = 0.3  # CPU seconds of autograd-graph walking per snapshot
    budget_s: float = 0.4  # CPU seconds the referrer walk may take in the second snapshot
    min_bytes: int = 2 << 20  # a group, site or worker "grows" from this many bytes
    min_count: int = 256  # ... or a tensor group from this many new tensors
    cuda_history: bool = True  # record the CUDA allocator's history in the window
    cuda_max_entries: int = 100_000
    _a: Snapshot | None = field(default=None, repr=False)
    _own_tracing: bool = field(default=False, repr=False)
    _cuda_recording: bool = field(default=False, repr=False)
    _tm_bytes: int = field(default=0, repr=False)
    _cpu_a: float = field(default=0.0, repr=False)

    @property
    def active(self) -> bool:
        return self._a is not None

    def begin(self) -> float:
        """Snapshot A; starts tracemalloc and the CUDA history. Returns the pause, seconds."""
        t0 = time.perf_counter()
        self._cpu_a = time.thread_time()
        self._a = take_snapshot(graph_budget_s=self.graph_budget_s)
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.nframes)
            self._own_tracing = True
        torch = sys.modules.get("torch")
        if self.cuda_history and torch is not None and _cuda_ready(torch):
            rec = getattr(getattr(torch.cuda, "memory", None), "_record_memory_history", None)
            if rec is not None:
                try:
                    rec(enabled="all", context="alloc", stacks="python",
                        max_entries=self.cuda_max_entries)
                    self._cuda_recording = True
                except Exception:
                    self._cuda_recording = False
        pause = time.perf_counter() - t0
        self._a.pause_s = pause
        self._cpu_a = time.thread_time() - self._cpu_a
        return pause

    def abort(self) -> None:
        """Stops what :meth:`begin` started, without a result."""
        self._stop()
        self._a = None

    def _stop(self) -> None:
        if self._own_tracing and tracemalloc.is_tracing():
            tracemalloc.stop()
        self._own_tracing = False
        if self._cuda_recording:
            torch = sys.modules.get("torch")
            try:
                torch.cuda.memory._record_memory_history(enabled=None)  # type: ignore[union-attr]
            except Exception:
                pass
            self._cuda_recording = False

    def finish(self) -> dict[str, Any]:
        """Snapshot B and the difference; stops tracemalloc and the CUDA history first (so
        the snapshot itself runs untraced)."""
        if self._a is None:
            raise RuntimeError("finish() without begin()")
        a = self._a
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        try:
            heap = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
            traced = tracemalloc.get_traced_memory()[0] if heap is not None else 0
            self._tm_bytes = tracemalloc.get_tracemalloc_memory() if heap is not None else 0
            cuda_snapshot = None
            if self._cuda_recording:
                try:
                    cuda_snapshot = sys.modules["torch"].cuda.memory._snapshot()
                except Exception:
                    cuda_snapshot = None
            self._stop()
            b = take_snapshot(graph_budget_s=self.graph_budget_s, prev_ids=a.tensor_ids)
            result = self._compare(a, b, heap, traced, cuda_snapshot,
                                   deadline=time.thread_time() + self.budget_s)
            b.samples.clear()
        finally:
            self._stop()
            self._a = None
        b_pause = time.perf_counter() - t0
        result["cost"] = {"pause_s": [round(a.pause_s, 3), round(b_pause, 3)],
                          "pause_cpu_s": [round(self._cpu_a, 3),
                                          round(time.thread_time() - cpu0, 3)],
                          "objects": b.n_objects, "tensors": b.n_tensors,
                          "graph_internal_tensors": b.n_internal,
                          "tracemalloc_frames": self.nframes}
        return result

    # ------------------------------------------------------------------ the difference

    def _compare(self, a: Snapshot, b: Snapshot, heap: tracemalloc.Snapshot | None,
                 traced: int, cuda_snapshot: Any, *, deadline: float) -> dict[str, Any]:
        window = max(1e-9, b.mono - a.mono)
        growing: list[dict[str, Any]] = []

        # objects by type (this module's own left out)
        types = []
        for tp, n in b.types.items():
            d = n - a.types.get(tp, 0)
            if d > 0 and tp.__module__ != __name__:
                types.append((d, tp))
        types.sort(key=lambda x: (-x[0], x[1].__qualname__))
        objects = [{"type": f"{tp.__module__}.{tp.__qualname__}", "new": d,
                    "count": b.types[tp]} for d, tp in types[:8]]

        # tensor groups
        tgroups = []
        for key, g in b.groups.items():
            gd = _group_dict(key, a.groups.get(key), g)
            total = gd["bytes"]
            if gd["new"] > 0 or total > 0:
                tgroups.append((total, gd["new"], key, gd))
        tgroups.sort(key=lambda x: (-x[0], -x[1]))
        tensors = [gd for *_, gd in tgroups[:6]]

        # heap sites (raw), resolved to readable sites for the few shown
        raw_sites = heap_sites(heap) if heap is not None else []

        # the top tensor group: who holds it, where it was made
        made_at: tuple[str, int] | None = None
        if tgroups:
            total, new, key, gd = tgroups[0]
            if new > 0 and (total >= self.min_bytes or new >= self.min_count):
                graph = gd["grad_fn"] not in (None, "leaf")
                extra = (b.n_internal - a.n_internal) if graph else 0
                if graph and (a.graph_truncated or b.graph_truncated):
                    extra = 7 * new  # internals of unwalked roots are not counted
                match = _match_site(raw_sites, new, internal=max(0, extra))
                if match is not None:
                    made_at = (match[0], match[1])
                    gd["created_at"] = {**_site(match[0], match[1]),
                                        "how": "allocation count"}
                samples = b.samples.get(key) or []
                if samples:
                    held = holder_chain(samples[-1], exclude={id(samples), id(b.samples)},
                                        deadline=deadline)
                    gd["held_by"] = held.get("holder")
                    gd["root"] = held.get("root")
                    gd["chain"] = held.get("chain")
                    del held
                del samples
                growing.append({"kind": "tensors", **gd})

        # Python heap: sites (other than the tensor group's creation site) over min_bytes
        sites = []
        for f, ln, size, count in raw_sites[:8]:
            site = {**_site(f, ln), "bytes": size, "count": count}
            sites.append(site)
            if size >= self.min_bytes and (f, ln) != made_at:
                growing.append({"kind": "python_heap", **site})

        # DataLoader workers and other children
        workers: list[dict[str, Any]] = []
        for pid, pb in b.children.items():
            pa = a.children.get(pid)
            grow = pb.rss - pa.rss if pa is not None else None
            workers.append({"pid": pid, "name": pb.name,
                            "worker": b.dataloader_workers.get(pid, a.dataloader_workers.get(
                                pid)), "rss": pb.rss, "rss_growth": grow,
                            "anon_growth": pb.anon - pa.anon if pa is not None else None})
        workers.sort(key=lambda w: -(w["rss_growth"] or 0))
        # tracemalloc's own memory (its traces) is in this process's RSS: left out
        main_growth = b.rss - a.rss - self._tm_bytes
        for w in workers:
            wg = int(w["rss_growth"] or 0)
            if wg >= self.min_bytes and wg >= 0.25 * max(main_growth, 0):
                growing.append({"kind": "worker", "bytes": wg, **w})

        # CUDA
        cuda: dict[str, Any] = {"available": bool(b.cuda) or bool(a.cuda)}
        for dev, sb in b.cuda.items():
            sa = a.cuda.get(dev, {})
            cuda[dev] = {k: v - sa.get(k, 0) for k, v in sb.items()}
            cuda[dev]["allocated_bytes"] = sb.get("allocated_bytes.all.current", 0)
        if cuda_snapshot is not None:
            cuda["sites"] = cuda_sites(cuda_snapshot)[:6]
            for s in cuda["sites"]:
                if s["bytes"] >= self.min_bytes:
                    growing.append({"kind": "cuda", **s})

        growing.sort(key=lambda g: -int(g.get("bytes") or 0))
        result: dict[str, Any] = {
            "version": rp.VERSION, "status": "done", "pid": os.getpid(),
            "window_s": round(window, 2), "started": a.wall, "ended": b.wall,
            "rss": [a.rss, b.rss], "rss_growth": main_growth,
            "tracemalloc_bytes": self._tm_bytes,
            "workers_rss_growth": sum(w["rss_growth"] or 0 for w in workers),
            "python_heap_traced": traced,
            "growing": growing[:6], "tensors": tensors, "objects": objects,
            "heap": sites[:6], "workers": workers[:8], "cuda": cuda,
            "graph_estimated": a.graph_truncated or b.graph_truncated,
        }
        result["sentence"] = sentence(result, min_bytes=self.min_bytes)
        return result


def _match_site(sites: list[tuple[str, int, int, int]], new: int, *, internal: int = 0
                ) -> tuple[str, int, int, int] | None:
    """The allocation site that made ``new`` tensors. A tensor's Python object is one small
    traced allocation at the line that created it, so that line's surviving allocations
    number about k times ``new``: k = 1 for plain tensors; for graph roots the same line also
    made (most of) the ``internal`` tensors their graphs keep, so k may reach
    1 + internal/new, and the largest such k wins (an input made on another line, saved by
    the graph, has k = 1). Then user code before libraries, then the closest multiple."""
    if new <= 0:
        return None
    max_k = 1 + round(internal / new)
    best, best_score = None, None
    for s in sites[:200]:
        f, _, size, count = s
        if count < 0.8 * new or size / count > 2048:
            continue
        k = round(count / new)
        if k < 1 or k > max_k or abs(count - k * new) > 0.2 * new:
            continue
        score = (_is_library(f), -k, abs(count - k * new) / new)
        if best_score is None or score < best_score:
            best, best_score = s, score
    return best


def cuda_sites(snapshot: Any) -> list[dict[str, Any]]:
    """Allocations recorded in a ``torch.cuda.memory._snapshot()`` history and still not
    freed at its end, by innermost user frame, largest first."""
    live: dict[tuple[int, int], tuple[int, tuple[str, int, str]]] = {}
    traces = snapshot.get("device_traces", []) if isinstance(snapshot, dict) else []
    for dev, events in enumerate(traces):
        for ev in events or []:
            action = ev.get("action")
            addr = ev.get("addr")
            if action == "alloc":
                frames = ev.get("frames") or []
                where = ("?", 0, "")
                for fr in frames:  # innermost first
                    fn = str(fr.get("filename", ""))
                    if fn and not _is_library(fn):
                        where = (fn, int(fr.get("line", 0)), str(fr.get("name", "")))
                        break
                live[(dev, addr)] = (int(ev.get("size", 0)), where)
            elif action in ("free_requested", "free_completed"):
                live.pop((dev, addr), None)
    by: dict[tuple[int, str, int, str], list[int]] = {}
    for (dev, _), (size, where) in live.items():
        acc = by.setdefault((dev, *where), [0, 0])
        acc[0] += size
        acc[1] += 1
    out = []
    for (dev, fn, line, name), (size, count) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        site = _site(fn, line) if fn != "?" else {"file": "?", "line": 0, "function": name,
                                                  "code": ""}
        if not site["function"]:
            site["function"] = name
        out.append({**site, "device": f"cuda:{dev}", "bytes": size, "count": count})
    return out


# ---------------------------------------------------------------------- the sentence


def _where(site: dict[str, Any] | None) -> str:
    if not site:
        return ""
    fn = f" in {site['function']}" if site.get("function") else ""
    return f"{site['file']}:{site['line']}{fn}"


def sentence(r: dict[str, Any], *, min_bytes: int) -> str:
    """One sentence saying what grew most (or that nothing did)."""
    dur = rp.human_duration(r["window_s"])
    head = f"{rp.human_bytes(r['rss_growth'], sign=True)} in {dur}"
    growing = r["growing"]
    if not growing:
        return (f"no growing group: RSS {head}; no tensor group, Python allocation site, "
                f"DataLoader worker or CUDA allocation grew by {rp.human_bytes(min_bytes)} "
                f"or more")
    g = growing[0]
    kind = g["kind"]
    if kind == "tensors":
        new = g["new"]
        own = g["own_bytes"] / max(1, new)
        graph = g["graph_bytes"] / max(1, new)
        shape = "[" + ", ".join(str(d) for d in g["shape"]) + "]"
        desc = f"{g['dtype']}, shape {shape}"
        if g["device"] != "cpu":
            desc += f", {g['device']}"
        if g.get("grad_fn") and g["grad_fn"] != "leaf":
            desc += f", grad_fn={g['grad_fn']}"
        desc += f", {rp.human_bytes(own)} each"
        if graph >= 1:
            desc += f" + {rp.human_bytes(graph)} of autograd graph"
        text = f"{head}: {new:,} new torch.Tensor objects ({desc})"
        if g.get("held_by"):
            text += f" held by {g['held_by']}"
        if g.get("created_at"):
            text += f" created at {_where(g['created_at'])}"
        return text
    if kind == "python_heap":
        code = f" (`{g['code']}`)" if g.get("code") else ""
        return (f"{head}: Python heap {rp.human_bytes(g['bytes'], sign=True)} at "
                f"{_where(g)}{code}")
    if kind == "worker":
        n = sum(1 for w in r["workers"] if w.get("worker") is not None)
        who = (f"DataLoader worker {g['worker']}" if g.get("worker") is not None
               else f"child process {g['name']}")
        total = r["workers_rss_growth"]
        return (f"{rp.human_bytes(total, sign=True)} in {dur} in the DataLoader workers, "
                f"main process {rp.human_bytes(r['rss_growth'], sign=True)}: {who} (pid "
                f"{g['pid']}) RSS {rp.human_bytes(g['bytes'], sign=True)}"
                + (f" ({n} workers)" if n > 1 else "")
                + ": the leak is inside the workers (what the Dataset keeps or touches in "
                  "each worker, e.g. a cache or copy-on-read of Python objects)")
    if kind == "cuda":
        return (f"GPU memory {rp.human_bytes(g['bytes'], sign=True)} in {dur} on "
                f"{g['device']}: {g['count']:,} allocations not freed, made at {_where(g)}")
    return head
