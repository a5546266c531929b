"""The alert rules of helm/cumi-pipeline/files/alerts.yaml, checked and unit-tested by promtool.

`promtool check rules` validates the file; `promtool test rules` runs the synthetic-series tests of
tests/alerts/*.test.yaml. Two mutants of the rules prove those tests have teeth for every alert:
with every expression made silent each alert must miss an expected firing, and with every
expression made to fire at once each alert must break an expected silence. promtool comes from
`make tools` ($CUMI_CACHE_DIR/bin); a missing binary fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "helm" / "cumi-pipeline" / "files" / "alerts.yaml"
TESTS = REPO / "tests" / "alerts"
METRICS_DOC = REPO / "docs" / "metrics.md"
SEVERITIES = {"critical", "warning"}
COMPONENTS = {"pipeline", "worker", "projector"}
ANNOTATIONS = {"summary", "description", "runbook_url"}
DURATION = re.compile(r"^(\d+[smhd])+$")

Rule = dict[str, Any]


def promtool() -> str:
    """promtool from `make tools`: $CUMI_CACHE_DIR/bin first, then PATH, then the default cache."""
    cache = Path(os.environ.get("CUMI_CACHE_DIR", Path.home() / ".cache" / "cumi-pipeline"))
    for candidate in (cache / "bin" / "promtool", shutil.which("promtool")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"promtool not found in {cache / 'bin'} or on PATH: run `make tools`")


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules(document: dict[str, Any]) -> list[Rule]:
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def alert_test_files() -> list[Path]:
    files = sorted(TESTS.glob("*.test.yaml"))
    assert files, f"no promtool tests in {TESTS}"
    return files


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return alert_rules(yaml.safe_load(RULES.read_text()))


class TestRuleFile:
    """The shipped rule file is valid and every alert carries what on-call needs."""

    def test_promtool_check_rules(self) -> None:
        result = run_promtool("check", "rules", RULES)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

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


class TestPromtoolUnitTests:
    """tests/alerts/*.test.yaml exercise the shipped rules, every alert both ways."""

    def test_they_load_the_shipped_rule_file(self) -> None:
        for path in alert_test_files():
            document = yaml.safe_load(path.read_text())
            loaded = [(path.parent / f).resolve() for f in document["rule_files"]]
            assert loaded == [RULES.resolve()], path.name

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

    def test_promtool_test_rules(self) -> None:
        result = run_promtool("test", "rules", *alert_test_files())
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("SUCCESS") == len(alert_test_files()), result.stdout

    def test_a_silenced_alert_fails_its_tests(self, rules: list[Rule], tmp_path: Path) -> None:
        failures = run_mutant(tmp_path, expr="vector(1) == 2", keep_for=True)
        missed = {name for name, expected_silence in failures if not expected_silence}
        assert missed == {rule["alert"] for rule in rules}

    def test_an_always_firing_alert_fails_its_tests(
        self, rules: list[Rule], tmp_path: Path
    ) -> None:
        failures = run_mutant(tmp_path, expr="vector(1)", keep_for=False)
        broken = {name for name, expected_silence in failures if expected_silence}
        assert broken == {rule["alert"] for rule in rules}


def expectations(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [case for group in document["tests"] for case in group.get("alert_rule_test", [])]


FAILURE = re.compile(r"alertname: (\w+), time: [^,]+, *\n\s*exp:(\[\])?")


def run_mutant(tmp_path: Path, *, expr: str, keep_for: bool) -> set[tuple[str, bool]]:
    """Run the promtool tests against a copy of the rules with every alert's expression replaced.

    Returns the failed expectations as (alertname, whether silence was expected).
    """
    document = yaml.safe_load(RULES.read_text())
    for rule in alert_rules(document):
        rule["expr"] = expr
        if not keep_for:
            rule.pop("for", None)
    mutant_rules = tmp_path / "alerts.yaml"
    mutant_rules.write_text(yaml.safe_dump(document))
    copies = []
    for path in alert_test_files():
        tests = yaml.safe_load(path.read_text())
        tests["rule_files"] = [str(mutant_rules)]
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(tests))
        copies.append(copy)
    result = run_promtool("test", "rules", *copies)
    assert result.returncode != 0, "the mutant passed every test"
    output = result.stdout + result.stderr
    return {(name, bool(empty)) for name, empty in FAILURE.findall(output)}
