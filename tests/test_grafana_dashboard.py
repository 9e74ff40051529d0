"""deploy/grafana/podguard.json: every query parses.

The dashboard (fleet view; one pod's incident: memory vs limit with the fitted trend and the
projected OOM, score vs threshold) is built from the daemon's per-pod gauges
(``podguard_pod_*``), its process metrics, cAdvisor's working set and kube-state-metrics'
limits. Every query (panel targets and the template variables' selectors), with the
variables filled in, passes ``promtool check rules``. That every query returns series from
a real Prometheus scraping a real daemon is in tests/stack/test_grafana_dashboard.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "podguard.json"


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d.get("panels", []):
        yield p
        yield from panels(p)


def queries(ns: str, pod: str) -> dict[str, str]:
    """Every query of the dashboard, variables filled in: "panel/refId" -> PromQL."""
    d = json.loads(DASHBOARD.read_text())
    out: dict[str, str] = {}

    def fill(expr: str) -> str:
        return (expr.replace("$namespace", ns).replace("$pod", pod)
                .replace("$__rate_interval", "1m"))

    for p in panels(d):
        for t in p.get("targets", []):
            out[f"{p['title']}/{t['refId']}"] = fill(t["expr"])
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])
            assert m, f"variable {var['name']}: not label_values(selector, label)"
            out[f"${var['name']}"] = fill(m.group(1))
    return out


def test_dashboard_is_grafana_json_with_both_views() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "podguard" and d["schemaVersion"] >= 36
    titles = [p["title"] for p in panels(d)]
    assert "Memory vs limit, fitted trend" in titles and "Score vs threshold" in titles
    assert "Projected OOM" in titles and "Flagged and near-threshold pods" in titles
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in d["templating"]["list"]}
    assert names == {"datasource", "namespace", "pod"}
    for p in panels(d):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]


def _promtool_check(exprs: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: make prepare"
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_every_query_parses(tmp_path: Path) -> None:
    qs = queries("ml", "trainer-0")
    assert len(qs) >= 25
    assert not any("$" in q for q in qs.values()), "a variable left unfilled"
    r = _promtool_check(qs, tmp_path / "rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    broken = {**qs, "bad": "max by (pod (podguard_pod_score)"}  # the check can fail
    assert _promtool_check(broken, tmp_path / "rules.yml").returncode != 0


# ============================================================================ real Prometheus


