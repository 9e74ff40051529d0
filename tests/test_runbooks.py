"""docs/runbooks.md: every alert podguard raises or ships has a runbook section it links to.

The alerts: the sink's (``detector.sinks.alertmanager.ALERT_NAMES``, their ``runbook_url``
annotation as the real sink writes it) and every meta-alert of the rules (the Kustomize
PrometheusRule's plain copy ``deploy/prometheus/rules.yml``, the Helm chart's copy). Each
``runbook_url`` must point at docs/runbooks.md and its ``#anchor`` must exist there; each
section says what it means, how to confirm it, what podguard does and how to silence it; and
every PromQL line of the runbooks parses (``promtool check rules``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from deploy import render
from detector.settings import AlertingSettings
from detector.sinks.alertmanager import ALERT_NAMES, AlertmanagerSink
from detector.verdicts import Explanation, Verdict

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def anchors(text: str) -> set[str]:
    """Explicit ``<a id=...>`` anchors and GitHub's heading slugs."""
    ids = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        ids.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return ids


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (\S+)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def rule_alerts() -> dict[str, dict[str, str]]:
    """alert -> annotations, from every rules file podguard ships."""
    out: dict[str, dict[str, str]] = {}
    for path in (render.RULES_FILE, render.CHART_FILES / "prometheus-rules.yml"):
        for g in yaml.safe_load(path.read_text())["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    out[f"{path.name}:{r['alert']}"] = r.get("annotations", {})
    return out


def sink_alerts() -> dict[str, dict[str, str]]:
    sink = AlertmanagerSink(["http://127.0.0.1:9"], settings=AlertingSettings(),
                            background=False)
    out = {}
    for kind, name in ALERT_NAMES.items():
        v = Verdict(ts=0.0, namespace="ml", pod=f"p-{kind}", node="n", is_anomaly=True,
                    kind=kind, score=2.0, threshold=1.0,  # type: ignore[arg-type]
                    explanation=Explanation("x"))
        sink.send([v])
        payload = next(iter(sink.targets[0].pending.values()))
        sink.targets[0].pending.clear()
        out[name] = payload["annotations"]
    return out


def test_every_alert_links_to_an_existing_runbook_section() -> None:
    text = RUNBOOKS.read_text()
    have = anchors(text)
    alerts = {**sink_alerts(), **rule_alerts()}
    assert len(alerts) >= 3 + 2 * 14, sorted(alerts)
    for name, ann in alerts.items():
        url = ann.get("runbook_url")
        assert url, f"{name} has no runbook_url"
        parts = urlsplit(url)
        assert parts.path.endswith("/docs/runbooks.md"), (name, url)
        assert parts.fragment == name.split(":")[-1], (name, url)  # its own section
        assert parts.fragment in have, f"{name}: no anchor #{parts.fragment} in docs/runbooks.md"
    assert "DoesNotExist" not in have  # the check can fail


def test_every_section_says_meaning_confirmation_action_and_silencing() -> None:
    text = RUNBOOKS.read_text()
    names = {n.split(":")[-1] for n in [*sink_alerts(), *rule_alerts()]}
    secs = sections(text)
    assert names <= set(secs), sorted(names - set(secs))
    for name in names:
        body = secs[name]
        for part in ("**Meaning.**", "**Confirm.**", "**What podguard does.**",
                     "**Silence / opt out.**"):
            assert part in body, f"{name}: no {part}"
        assert "```promql" in body, f"{name}: no PromQL to confirm it"


def test_the_runbooks_promql_parses(tmp_path: Path) -> None:
    text = RUNBOOKS.read_text()
    exprs = [line.split("  #")[0].strip()
             for block in re.findall(r"```promql\n(.*?)```", text, flags=re.S)
             for line in block.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert len(exprs) > 30
    rules = [{"record": f"runbook:expr{i}", "expr": e.replace("NS", "ml").replace("POD", "p")}
             for i, e in enumerate(exprs)]
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: make prepare"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "runbooks", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    rules.append({"record": "runbook:bad", "expr": "sum(rate(x[5m])"})
    path.write_text(yaml.safe_dump({"groups": [{"name": "runbooks", "rules": rules}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          timeout=60).returncode != 0


@pytest.mark.parametrize("fragment", ["PodMemoryLeak", "podguardmodeltooold"])
def test_anchor_forms(fragment: str) -> None:
    assert fragment in anchors(RUNBOOKS.read_text())
