"""The stack tests' one polling wait (tests/support/waiting.py): what it returns and reports."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from tests.support.waiting import wait_for


def test_returns_the_first_truthy_answer_and_retries_transient_errors() -> None:
    answers: list[object] = [ApiException(status=503), None, 0, "ready", "later"]

    def check() -> object:
        got = answers.pop(0)
        if isinstance(got, BaseException):
            raise got
        return got

    assert wait_for(check, timeout=5, what="x", interval=0) == "ready"
    assert answers == ["later"]


def test_a_timeout_names_what_it_waited_for_what_it_saw_and_the_last_error() -> None:
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ApiException(status=500, reason="etcd slow")

    with pytest.raises(pytest.fail.Exception) as err:
        wait_for(check, timeout=0.05, what="the budget's status", interval=0.01,
                 describe=lambda: {"current_healthy": 0})
    text = str(err.value)
    assert "the budget's status" in text and "{'current_healthy': 0}" in text, text
    assert "etcd slow" in text and calls["n"] >= 2  # polled once more after the error


def test_a_guard_fails_the_wait_at_once() -> None:
    def dead() -> None:
        pytest.fail("the daemon exited with 1")

    with pytest.raises(pytest.fail.Exception, match="daemon exited"):
        wait_for(lambda: None, timeout=60, what="never", guard=dead)


def test_a_check_error_that_is_not_transient_is_raised() -> None:
    def broken() -> None:
        raise KeyError("a test bug")

    with pytest.raises(KeyError):
        wait_for(broken, timeout=60, what="never")
