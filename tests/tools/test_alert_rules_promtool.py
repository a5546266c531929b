"""The alert rules of helm/cumi-pipeline/files/alerts.yaml, checked and unit-tested by promtool.

`promtool check rules` validates the file; `promtool test rules` runs the synthetic-series tests of
tests/alerts/*.test.yaml. Two mutants of the rules prove those tests have teeth for every alert:
with every expression made silent each alert must miss an expected firing, and with every
expression made to fire at once each alert must break an expected silence. The checks that only
read the files are in tests/unit/test_alert_rules.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures.chart import ALERT_RULES, Rule, alert_rules, alert_test_files, shipped_alert_rules
from fixtures.tools import tool

pytestmark = pytest.mark.tools


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return shipped_alert_rules()


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", ALERT_RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


class TestPromtoolUnitTests:
    """tests/alerts/*.test.yaml pass on the shipped rules and fail on broken ones."""

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


FAILURE = re.compile(r"alertname: (\w+), time: [^,]+, *\n\s*exp:(\[\])?")


def run_mutant(tmp_path: Path, *, expr: str, keep_for: bool) -> set[tuple[str, bool]]:
    """Run the promtool tests against a copy of the rules with every alert's expression replaced.

    Returns the failed expectations as (alertname, whether silence was expected).
    """
    document = yaml.safe_load(ALERT_RULES.read_text())
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
