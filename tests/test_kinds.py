"""Verdict kinds are declared once (detector.kinds): the verdicts, the settings' kind lists,
the Alertmanager and Event sinks read that table."""

from __future__ import annotations

import pydantic
import pytest

from detector import kinds, verdicts
from detector.settings import DiagnosisSettings, RemediationSettings
from detector.sinks import alertmanager, k8s_events


def test_every_reader_takes_the_kinds_from_the_table() -> None:
    assert verdicts.KINDS == kinds.KINDS == (
        "memory_leak", "gpu_memory_leak", "drift", "metric_anomaly", "none")
    assert verdicts.DETECTOR_OF_KIND["gpu_memory_leak"] == "trend"
    assert "none" not in verdicts.DETECTOR_OF_KIND
    assert alertmanager.ALERT_NAMES is kinds.ALERT_NAMES
    assert k8s_events.EVENT_REASONS is kinds.EVENT_REASONS
    assert set(kinds.ALERT_NAMES) == set(kinds.EVENT_REASONS) == {
        "memory_leak", "gpu_memory_leak", "drift"}  # metric_anomaly is not alerted
    assert RemediationSettings().kinds == list(kinds.ALERT_KINDS)
    assert DiagnosisSettings().kinds == list(kinds.LEAK_KINDS)
    assert kinds.KIND_WORDS["drift"] == "Pre-failure drift"


@pytest.mark.parametrize("section, bad", [(RemediationSettings, "metric_anomaly"),
                                          (DiagnosisSettings, "drift"),
                                          (RemediationSettings, "memory_leek")])
def test_settings_refuse_kinds_outside_their_set(section: type, bad: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=bad):
        section(kinds=[bad])
