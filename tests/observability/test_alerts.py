"""The alert rules: one file (deploy/helm/skillcoach/files/alerts/skillcoach.rules.yaml) checked
by promtool, unit-tested by promtool (alerts_test.yaml: every alert firing and not firing),
embedded unchanged in the chart's PrometheusRule, and documented (runbook and observability)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from skillcoach_devstack.packages import find_binary
from tests.deploy.test_chart import copy_chart, find
from tests.deploy.tooling import ROOT as REPO
from tests.deploy.tooling import Helm, validate_prometheus

RULES = REPO / "deploy" / "helm" / "skillcoach" / "files" / "alerts" / "skillcoach.rules.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RUNBOOK = REPO / "docs" / "runbook.md"
OBSERVABILITY = REPO / "docs" / "observability.md"
# An expression that never returns a sample: the alert can never fire.
SILENCED = "vector(1) < 0"


def _promtool() -> str:
    binary = find_binary("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (Debian package prometheus): run `make test`")
    return binary


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in _groups() for r in g["rules"] if "alert" in r}


def _unit_tests() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(UNIT_TESTS.read_text())
    return doc


def test_the_chart_folder_holds_the_one_rules_file() -> None:
    # The template gathers every file of the folder: a second one would be a second source.
    assert sorted(p.name for p in RULES.parent.iterdir()) == [RULES.name]
    assert (UNIT_TESTS.parent / _unit_tests()["rule_files"][0]).resolve() == RULES


def test_promtool_checks_the_rules() -> None:
    result = _run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in _groups())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _run("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _unit_tests()["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert len(alerts) >= 17
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a case where they stay quiet"
    assert (firing | quiet) - alerts == set(), "cases of alerts that do not exist"


def test_a_silenced_alert_fails_its_unit_tests(tmp_path: Path) -> None:
    """The firing cases bite: with any one alert's expression replaced by one that never
    returns a sample, promtool's tests of that alert fail."""
    tests = _unit_tests()
    for name in _alerts():
        groups = _groups()
        for group in groups:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    rule["expr"] = SILENCED
        rules = tmp_path / f"{name}.rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        cases = [
            case
            for case in tests["tests"]
            if any(c["alertname"] == name for c in case.get("alert_rule_test", []))
        ]
        unit = tmp_path / f"{name}.test.yaml"
        unit.write_text(
            yaml.safe_dump(
                {
                    "rule_files": [rules.name],
                    "evaluation_interval": tests["evaluation_interval"],
                    "tests": cases,
                },
                sort_keys=False,
            )
        )
        result = _run("test", "rules", unit.name, cwd=tmp_path)
        assert result.returncode != 0, f"silencing {name} did not fail its tests"
        assert f"alertname: {name}" in result.stdout + result.stderr


def test_every_alert_says_what_and_where_to_look() -> None:
    runbook = RUNBOOK.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^## (.+)$", runbook, flags=re.M)}
    listed = OBSERVABILITY.read_text()
    for name, rule in _alerts().items():
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert annotations["runbook"] == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbook.md has no section `## {name}`"
        assert f"`{name}`" in listed, f"docs/observability.md does not list {name}"
    section = runbook.split("\n## ")
    for part in section[1:]:
        title = part.splitlines()[0]
        if title in _alerts():
            for needle in ("Meaning", "First checks", "Fixes"):
                assert f"**{needle}.**" in part, f"{title}: no {needle}"


def _anchor(heading: str) -> str:
    """The anchor a markdown renderer gives a heading (lower case, punctuation dropped)."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_the_chart_embeds_the_rules_file_unchanged(helm: Helm, tmp_path: Path) -> None:
    chart = copy_chart(helm, tmp_path)
    docs = helm.template(chart, sets={"metrics.prometheusRule.enabled": "true"})
    rule = find(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == _groups()
    assert validate_prometheus(helm.tools, [rule]) == 1
    off = helm.template(chart)
    assert not [d for d in off if d["kind"] == "PrometheusRule"]
