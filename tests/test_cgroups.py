"""The cgroup layer of the real-node harness on fake hierarchies (no root needed): detection of
v1/v2, v2 paths and files (memory.max, memory.events, cpu.max, subtree_control), parsing errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.cgroups import (
    CgroupError,
    CgroupV1,
    CgroupV2,
    cpu_max_line,
    detect,
    parse_flat_keyed,
    parse_limit_in_bytes,
    parse_memory_max,
)
from deploy.local.node import Workload, backoff_delay, relabel_configs

MIB = 1 << 20


def _v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_detect_prefers_v2_when_unified_with_memory(tmp_path: Path) -> None:
    assert isinstance(detect(_v2_root(tmp_path)), CgroupV2)


def test_detect_v1_and_none(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert isinstance(detect(tmp_path), CgroupV1)
    with pytest.raises(CgroupError, match="no memory cgroup hierarchy"):
        detect(tmp_path / "nothing")


def test_detect_v2_without_memory_controller_says_so(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    (root / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(CgroupError, match="without the memory controller"):
        detect(root)


def test_v2_create_writes_limits_and_delegates_controllers(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    cg = CgroupV2(root)
    # On a real v2 mount the kernel makes these files; a fake tree has to offer them.
    leaf = root / "podguard-node-1" / "ns" / "pod" / "main" / "0"
    for d in (leaf.parents[3], leaf.parents[2], leaf.parents[1], leaf.parents[0]):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.controllers").write_text("cpu memory\n")
        (d / "cgroup.subtree_control").write_text("")
    leaf.mkdir()
    for f in ("memory.swap.max", "memory.oom.group", "cpu.max"):
        (leaf / f).write_text("")
    cg.create("/podguard-node-1/ns/pod/main/0", memory_limit=200 * MIB, cpu_millicores=500)
    assert (leaf / "memory.max").read_text() == str(200 * MIB)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "memory.oom.group").read_text() == "1"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (root / "cgroup.subtree_control").read_text() in ("+memory", "+cpu")
    assert cg.dirs("/podguard-node-1/ns/pod/main/0") == [leaf]


def test_v2_memory_reads_events_and_current(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    d = root / "a"
    d.mkdir()
    (d / "memory.current").write_text("123456\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\n"
                                     "oom_group_kill 0\n")
    (d / "memory.stat").write_text("anon 1000\nfile 2000\nactive_file 5\n")
    (d / "memory.peak").write_text("777\n")
    m = CgroupV2(root).memory("/a")
    assert m.peak_bytes == 777
    assert (m.usage_bytes, m.limit_bytes, m.oom_kills, m.oom_events) == (123456, None, 1, 2)
    assert m.failcnt is None and m.stat["file"] == 2000


def test_v1_memory_reads_oom_control(tmp_path: Path) -> None:
    d = tmp_path / "memory" / "x"
    d.mkdir(parents=True)
    (d / "memory.usage_in_bytes").write_text("4096\n")
    (d / "memory.limit_in_bytes").write_text(f"{256 * MIB}\n")
    (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (d / "memory.failcnt").write_text("42\n")
    (d / "memory.max_usage_in_bytes").write_text("8192\n")
    (d / "memory.stat").write_text("cache 0\nrss 4096\n")
    m = CgroupV1(tmp_path).memory("/x")
    assert (m.usage_bytes, m.limit_bytes, m.oom_kills, m.failcnt) == (4096, 256 * MIB, 3, 42)
    assert m.peak_bytes == 8192


@pytest.mark.parametrize(("text", "match"), [
    ("oom_kill three\n", "not an integer"), ("oom_kill 1 2\n", "expected 'key value'")])
def test_flat_keyed_errors_name_file_and_line(text: str, match: str) -> None:
    with pytest.raises(CgroupError, match=match) as e:
        parse_flat_keyed("oom 0\n" + text, source="x/memory.events")
    assert "x/memory.events line 2" in str(e.value)


def test_limits_parse() -> None:
    assert parse_memory_max("max\n", source="f") is None
    assert parse_memory_max("1048576\n", source="f") == MIB
    with pytest.raises(CgroupError, match="bytes or 'max'"):
        parse_memory_max("lots", source="f")
    assert parse_limit_in_bytes("9223372036854771712", source="f") is None
    assert parse_limit_in_bytes(str(MIB), source="f") == MIB
    assert cpu_max_line(None) == "max 100000" and cpu_max_line(2000) == "200000 100000"
    with pytest.raises(ValueError):
        cpu_max_line(0)


def test_names_cannot_escape_the_hierarchy(tmp_path: Path) -> None:
    for bad in ("", "/", "/a/../b", "a/./b"):
        with pytest.raises(ValueError, match="invalid cgroup name"):
            CgroupV2(tmp_path).memory_dir(bad)


def test_workload_spec_rejects_unknown_fields() -> None:
    w = Workload("p", "leak", 200 * MIB, ("--rate-mib-min", "10"), leaky=True)
    assert Workload.from_json(w.to_json()) == w
    with pytest.raises(ValueError, match="unknown field"):
        Workload.from_json({**w.to_json(), "memory_limt": 1})


def test_relabelling_matches_incarnation_cgroups_only() -> None:
    import re

    rx = re.compile(relabel_configs()[0]["regex"])
    m = rx.fullmatch("/podguard-node-77/realnode/leaky/main/3")
    assert m is not None and m.groups() == ("realnode", "leaky", "main")
    for other in ("/", "/podguard-node-77", "/podguard-node-77/realnode/leaky/main",
                  "/system.slice/x/y/z/1", "/podguard-node-77/a/b/c/d/1"):
        assert rx.fullmatch(other) is None, other


def test_kubelet_backoff_doubles_to_its_cap() -> None:
    assert [backoff_delay(10, 300, n) for n in range(0, 8)] == [
        0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert backoff_delay(2, 2, 50) == 2.0  # the harness's fixed default
