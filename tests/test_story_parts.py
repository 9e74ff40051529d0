"""The story's pure parts, without a server: quantities, mount-path rewriting, the relabelling of
both cgroup layouts, and the story's own check, which must fail on a story that went wrong
(tests/stack/real/test_story.py runs the real thing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.local import story
from deploy.local.node import relabel_configs
from deploy.local.story_kubelet import _rewrite, quantity


@pytest.mark.parametrize(("text", "value"), [
    ("768Mi", 768 * 2**20), ("1Gi", 2**30), ("500m", 0.5), ("2", 2.0), ("1G", 1e9),
    ("64Ki", 65536)])
def test_quantity(text: str, value: float) -> None:
    assert quantity(text) == value


def test_quantity_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        quantity("lots")


def test_mount_paths_are_rewritten_to_the_volume_directory() -> None:
    mounts = {"/data": Path("/node/hostpath/pv-1"), "/data/cache": Path("/node/empty")}
    assert _rewrite("/data/checkpoints", mounts) == "/node/hostpath/pv-1/checkpoints"
    assert _rewrite("/data", mounts) == "/node/hostpath/pv-1"
    assert _rewrite("/data/cache/x", mounts) == "/node/empty/x"  # the longest mount wins
    assert _rewrite("/database", mounts) == "/database"  # a prefix is not a mount
    assert _rewrite("http://127.0.0.1:1/data", mounts) == "http://127.0.0.1:1/data"


@pytest.mark.parametrize(("cgroup", "labels"), [
    ("/podguard-node-1/realnode/fast-leak/main/3", ("realnode", "fast-leak", "main")),
    ("/podguard-node-1/story-ab/trainer-0/pod7d0fca40-0b1c-4e2f-9a3b-1234567890ab/trainer/0",
     ("story-ab", "trainer-0", "trainer")),
])
def test_both_cgroup_layouts_get_kubelet_labels(cgroup: str, labels: tuple[str, ...]) -> None:
    keep, *targets = relabel_configs()
    rx = re.compile(keep["regex"])  # (RE2 and Python agree on this pattern)
    m = rx.fullmatch(cgroup)
    assert m is not None
    got = tuple(m.expand(t["replacement"].replace("$", "\\")) for t in targets)
    assert got == labels


@pytest.mark.parametrize("cgroup", [
    "/podguard-node-1/story-ab/trainer-0/pod7d0fca40/trainer",  # a pod level, no incarnation
    "/podguard-node-1/realnode/fast-leak/main",
    "/other/realnode/fast-leak/main/0",
])
def test_levels_that_are_not_an_incarnation_are_dropped(cgroup: str) -> None:
    assert re.fullmatch(relabel_configs()[0]["regex"], cgroup) is None


def _told() -> story.Story:
    s = story.Story(namespace="story-x", limit_bytes=768 * 2**20, first_uid="a",
                    second_uid="b", first_node="kwok-node-0", second_node="kwok-node-1")
    s.statefulset_created, s.pod_running, s.process_started = 99.0, 100.0, 100.0
    s.leak_onset, s.first_verdict, s.first_verdict_kind = 130.0, 440.0, "memory_leak"
    s.time_to_oom_s, s.checkpoint_requested, s.acknowledged = 300.0, 441.0, 442.0
    s.ack_step, s.checkpoint, s.evicted = 1754, "/x/ckpt-000001754-r.pt", 445.0
    s.first_exit, s.first_exit_reason, s.first_oom_kills = 450.0, "Stopped", 0
    s.second_running, s.resumed, s.resumed_from_step = 446.0, 455.0, 1754
    s.steps_first, s.steps_second, s.first_new_step = [0, 1, 1754], [1755, 1756], 1755
    s.would_oom = 860.0
    return s


def test_check_passes_a_story_told_as_it_should_be() -> None:
    assert story.check(_told()) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"first_oom_kills": 1}, "OOM-killed"),
    ({"oom_kill_events": 1}, "OOM-killed"),
    ({"resumed_from_step": 1700}, "resumed from step 1700"),
    ({"first_new_step": 0}, "first step is 0"),
    ({"forced": True}, "without the checkpoint"),
    ({"acknowledged": None}, "no acknowledgement"),
    ({"first_verdict_kind": "drift"}, "not memory_leak"),
    ({"evicted": 900.0}, "after the extrapolated OOM"),
    ({"checkpoint_requested": 400.0}, "came before"),
])
def test_check_fails_a_story_that_went_wrong(change: dict[str, object], expected: str) -> None:
    s = _told()
    for k, v in change.items():
        setattr(s, k, v)
    problems = story.check(s)
    assert any(expected in p for p in problems), problems


def test_the_table_names_every_step() -> None:
    text = _told().table()
    for name, _, _ in _told().timeline():
        assert name in text
    assert "+340.0" in text  # the first verdict, from the first process's start
