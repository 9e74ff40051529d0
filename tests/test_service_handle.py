"""The generic handle the stack fixtures give tests (no service is started here)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from deploy.local.alertmanager import Alertmanager
from deploy.local.prometheus import Prometheus
from tests.support.stack_fixtures import ServiceHandle


def test_methods_taking_the_state_are_offered_with_it_bound(tmp_path: Path) -> None:
    prom = ServiceHandle(Prometheus(), tmp_path)
    assert prom.query.func == prom.service.query
    assert prom.query.args == (tmp_path,)
    am = ServiceHandle(Alertmanager(), tmp_path)
    assert am.set_webhook.args == (tmp_path,) and am.alerts.args == (tmp_path,)


def test_other_names_are_attribute_errors(tmp_path: Path) -> None:
    prom = ServiceHandle(Prometheus(), tmp_path)
    for name in ("prepare", "name", "no_such_method", "_url"):  # no state / not a method / private
        with pytest.raises(AttributeError):
            getattr(prom, name)
    with pytest.raises(AttributeError, match="Alertmanager has no method backfill"):
        ServiceHandle(Alertmanager(), tmp_path).backfill  # noqa: B018


def test_url_of_a_service_never_started_fails_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="alertmanager has no recorded URL"):
        ServiceHandle(Alertmanager(), tmp_path).url  # noqa: B018


def test_handle_copies(tmp_path: Path) -> None:
    prom = ServiceHandle(Prometheus(), tmp_path)
    assert copy.deepcopy(prom).state == tmp_path
