"""deploy/: the alert rules pass promtool's check and unit tests, and the dashboard and
the rules use only metrics the dispatcher exports."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dispatcher.telemetry.metrics import REGISTRY

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dispatcher.json"

#: Served by the API from its snapshot (dispatcher/api/metrics.py), and Prometheus's own.
SNAPSHOT_GAUGES = {
    "dispatcher_delivery_due",
    "dispatcher_delivery_oldest_due_age_seconds",
    "dispatcher_delivery_in_flight",
    "dispatcher_dead_letters",
    "dispatcher_snapshot_age_seconds",
    "dispatcher_ready",
}
PROMETHEUS = {"up"}
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported() -> set[str]:
    """Every sample name the process can export, whether or not a label set exists yet."""
    names = set(SNAPSHOT_GAUGES)
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def referenced(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that start with dispatcher_)."""
    names = set(re.findall(r"\b(dispatcher_[a-z_]+)\b", expr))
    names.update(n for n in re.findall(r"\b([a-z_]+)\{", expr) if n in PROMETHEUS)
    return names


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (scripts/services.sh installs it)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


@pytest.mark.parametrize(
    "args",
    [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]],
    ids=["check", "unit-tests"],
)
def test_promtool_accepts_the_rules_and_their_unit_tests(args: list[str]) -> None:
    """promtool check rules and promtool test rules (one case per alert) pass."""
    done = subprocess.run(
        [promtool(), *args],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_runbook_and_a_unit_test() -> None:
    """Each rule carries runbook text and a link, and alerts.test.yml exercises it."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())
    tested = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case["exp_alerts"]
    }
    for rule in rules:
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        assert rule["annotations"]["runbook_url"].startswith("docs/"), rule["alert"]
        assert rule["alert"] in tested
    assert {r["alert"] for r in rules} == tested


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    """Every metric name in an alert or a dashboard panel is one the dispatcher exports."""
    names = exported() | PROMETHEUS
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [r["expr"] for r in rules] + [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]
    used = set().union(*(referenced(e) for e in exprs))
    assert used - names == set()
    assert dashboard["uid"] == "dispatcher"
    assert all(p["datasource"]["uid"] == "prometheus" for p in dashboard["panels"])
    # Every family the dispatcher defines appears on the dashboard.
    families = {
        f.name for f in REGISTRY.collect() if f.name.startswith("dispatcher_")
    } | SNAPSHOT_GAUGES
    shown = {
        n.removesuffix(s) if n.endswith(s) else n for n in used for s in _SUFFIXES
    } | used
    assert families - shown == set()
