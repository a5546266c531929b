"""The alert rules of helm/cumi-pipeline/files/alerts.yaml and their promtool tests, read as data.

Every alert carries what on-call needs, and tests/alerts/*.test.yaml test each one firing and
quiet. promtool itself (checking the rules, running those tests and their mutants) runs in
tests/tools/test_alert_rules_promtool.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from fixtures.chart import (
    ALERT_RULES,
    REPO,
    Rule,
    alert_test_files,
    expectations,
    shipped_alert_rules,
)

METRICS_DOC = REPO / "docs" / "metrics.md"
SEVERITIES = {"critical", "warning"}
COMPONENTS = {"pipeline", "worker", "projector", "kpis", "voicemail"}
ANNOTATIONS = {"summary", "description", "runbook_url"}
DURATION = re.compile(r"^(\d+[smhd])+$")


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return shipped_alert_rules()


class TestRuleFile:
    """Every alert carries what on-call needs."""

    def test_alert_names_are_unique(self, rules: list[Rule]) -> None:
        names = [rule["alert"] for rule in rules]
        assert len(names) == len(set(names)), names

    def test_every_alert_has_severity_component_and_for(self, rules: list[Rule]) -> None:
        for rule in rules:
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            assert rule["labels"]["component"] in COMPONENTS, rule["alert"]
            assert DURATION.match(str(rule.get("for", ""))), f"{rule['alert']}: no `for:`"

    def test_every_alert_has_summary_description_runbook(self, rules: list[Rule]) -> None:
        for rule in rules:
            annotations = rule["annotations"]
            assert set(annotations) == ANNOTATIONS, rule["alert"]
            assert all(str(v).strip() for v in annotations.values()), rule["alert"]

    def test_runbook_urls_point_at_sections_of_the_metrics_doc(self, rules: list[Rule]) -> None:
        anchors = {
            github_anchor(heading)
            for heading in re.findall(r"^#+ +(.+?) *$", METRICS_DOC.read_text(), re.MULTILINE)
        }
        for rule in rules:
            url = rule["annotations"]["runbook_url"]
            assert url == f"docs/metrics.md#{rule['alert'].lower()}", url
            assert url.partition("#")[2] in anchors, f"no section for {rule['alert']} in docs"

    def test_rules_select_only_this_job(self, rules: list[Rule]) -> None:
        """Every selector names job="cumi-pipeline": other jobs' series never fire these."""
        for rule in rules:
            selectors = re.findall(r"[a-z_:]+\{([^}]*)\}", rule["expr"])
            assert selectors, rule["alert"]
            for matchers in selectors:
                assert 'job="cumi-pipeline"' in matchers, f"{rule['alert']}: {{{matchers}}}"


def github_anchor(heading: str) -> str:
    """The fragment GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


class TestPromtoolTestFiles:
    """tests/alerts/*.test.yaml cover the shipped rules, every alert both ways."""

    def test_they_load_the_shipped_rule_file(self) -> None:
        for path in alert_test_files():
            document: dict[str, Any] = yaml.safe_load(path.read_text())
            loaded = [(path.parent / f).resolve() for f in document["rule_files"]]
            assert loaded == [ALERT_RULES.resolve()], path.name

    def test_they_name_only_existing_alerts(self, rules: list[Rule]) -> None:
        names = {rule["alert"] for rule in rules}
        for path in alert_test_files():
            for case in expectations(path):
                assert case["alertname"] in names, f"{path.name}: {case['alertname']}"

    def test_every_alert_is_tested_firing_and_quiet(self, rules: list[Rule]) -> None:
        cases = [case for path in alert_test_files() for case in expectations(path)]
        for rule in rules:
            mine = [case for case in cases if case["alertname"] == rule["alert"]]
            assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} never fires"
            assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} never quiet"
