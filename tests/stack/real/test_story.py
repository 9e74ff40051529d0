"""The whole story once, on the real kernel and the local control plane (issue 13, item 4).

One run of :func:`deploy.local.story.run` (module fixture, ~8-10 minutes): a StatefulSet's pod
on a kwok node runs as a real PyTorch trainer with the kept-loss leak in a real memory cgroup of
the real-node harness (limit 896 MiB; the leak would fill it 12-20 minutes after the start;
the shipped fast path judges a new incarnation from its first ~6-9 minutes on);
``podguard run`` with remediation on reads the harness's Prometheus, flags the leak, asks the
trainer for a checkpoint over the pod channel (the trainer's projected token, checked with a
TokenReview), evicts the pod once it is acknowledged; the StatefulSet recreates the pod, the
harness starts its process, which resumes from the checkpoint. The tests read what happened
from the kernel (the cgroup's ``oom_kill`` count), the supervisor's records, the trainer's own
step log, podguard's verdicts and its remediation record (a Lease), and the API server.

Needs root with a writable memory cgroup hierarchy, and ``make prepare`` (Kubernetes, kwok,
cAdvisor, Prometheus); without them the fixture fails saying so (nothing is skipped).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.local import cgroups, story
from tests.support.k8s_fixtures import Kube

pytestmark = [pytest.mark.stack, pytest.mark.realnode, pytest.mark.slow,
              pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def told(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[story.Story]:
    try:
        cgroups.detect()
    except cgroups.CgroupError as e:
        pytest.fail(f"the real-node harness needs a writable memory cgroup hierarchy (root): "
                    f"{e}", pytrace=False)
    state = tmp_path_factory.mktemp("story")
    got = story.run(state, kubeconfig=kube.kubeconfig, report=print)
    print("\n" + got.table())
    yield got


def test_the_story_is_told_without_a_failure(told: story.Story) -> None:
    assert story.check(told) == [], told.table()


def test_podguard_flags_the_leak_with_a_time_to_oom_before_it_would_oom(
        told: story.Story) -> None:
    assert told.first_verdict_kind == "memory_leak", told.verdict_log[:3]
    assert told.time_to_oom_s is not None and told.time_to_oom_s > 0
    assert told.leak_onset is not None and told.first_verdict is not None
    assert told.first_verdict > told.leak_onset
    assert told.would_oom is not None, "no extrapolation of the working set"
    assert told.first_verdict < told.would_oom
    assert told.evicted is not None and told.evicted < told.would_oom


def test_checkpoint_is_acknowledged_before_the_eviction(told: story.Story) -> None:
    assert told.checkpoint_requested is not None and told.acknowledged is not None
    assert told.evicted is not None
    assert told.checkpoint_requested <= told.acknowledged <= told.evicted
    assert not told.forced
    assert told.checkpoint.endswith(".pt") and f"-{told.ack_step:09d}-" in told.checkpoint


def test_the_kernel_never_oom_kills_the_trainer(told: story.Story) -> None:
    assert told.first_exit is not None, "the first process never ended"
    assert told.first_oom_kills == 0, told.first_oom_kills
    assert told.oom_kill_events == 0
    assert told.first_exit_reason == "Stopped"  # by the eviction, not by the kernel
    assert told.evicted is not None and told.first_exit >= told.evicted


def test_the_recreated_pod_resumes_at_the_next_step(told: story.Story) -> None:
    assert told.second_uid and told.second_uid != told.first_uid
    assert told.ack_step is not None and told.resumed_from_step == told.ack_step
    first, second = told.steps_first, told.steps_second
    assert first == list(range(first[0], first[-1] + 1)), "the first trainer skipped steps"
    assert first[-1] == told.ack_step, "completed steps after the checkpoint were lost"
    assert second[:3] == [told.ack_step + 1, told.ack_step + 2, told.ack_step + 3]
    assert told.second_node != told.first_node  # the PreferNoSchedule taint while moving
