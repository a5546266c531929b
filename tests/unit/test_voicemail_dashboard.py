"""The "Voicemail" Grafana dashboard (helm/cumi-pipeline/files/voicemail-dashboard.json).

Which metrics it queries is tests/unit/test_metric_references.py's business (with the other
dashboard); this checks the shape Grafana needs, the `job`/`instance` variables every selector
uses, and that each KPI of docs/metrics.md has its panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.kpis.exposition import FAMILIES

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "helm/cumi-pipeline/files/voicemail-dashboard.json"
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SELECTOR = re.compile(r"\b(cumi_[a-z_]+)\{([^}]*)\}")

Panel = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def graphs(dashboard: dict[str, Any]) -> list[Panel]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in graphs(dashboard):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


class TestShape:
    """What Grafana and its dashboard sidecar need."""

    def test_identity(self, dashboard: dict[str, Any]) -> None:
        assert (dashboard["uid"], dashboard["title"]) == ("cumi-voicemail", "Voicemail")
        assert 36 <= dashboard["schemaVersion"] <= 41

    def test_variables(self, dashboard: dict[str, Any]) -> None:
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert list(variables) == ["datasource", "job", "instance"]
        assert variables["job"]["current"]["value"] == "cumi-pipeline"
        assert variables["instance"]["allValue"] == ".+"
        for name in ("job", "instance"):
            assert variables[name]["datasource"] == DATASOURCE

    def test_panels(self, dashboard: dict[str, Any]) -> None:
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        taken: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            cells = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & taken, f"{panel['title']} overlaps"
            taken |= cells
        for panel in graphs(dashboard):
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert len(panel.get("description", "")) > 20, panel["title"]
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]


class TestQueries:
    """Every selector is scoped to the variables; every KPI is shown."""

    def test_selectors_use_job_and_instance(self, dashboard: dict[str, Any]) -> None:
        for title, expr in exprs(dashboard):
            for metric, matchers in SELECTOR.findall(expr):
                assert 'job="$job"' in matchers, f"{title}: {metric}"
                assert 'instance=~"$instance"' in matchers, f"{title}: {metric}"

    def test_windows(self, dashboard: dict[str, Any]) -> None:
        for title, expr in exprs(dashboard):
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window in ("$__rate_interval", "$__range", "1h"), f"{title}: [{window}]"

    def test_quantiles_aggregate_by_le(self, dashboard: dict[str, Any]) -> None:
        for title, expr in exprs(dashboard):
            for grouping in re.findall(r"histogram_quantile\([^,]+, sum by \(([^)]*)\)", expr):
                assert "le" in [g.strip() for g in grouping.split(",")], title

    def test_every_kpi_has_a_panel(self, dashboard: dict[str, Any]) -> None:
        text = " ".join(expr for _, expr in exprs(dashboard))
        for name in FAMILIES:
            assert re.search(rf"\b{name}(_bucket|_count)?\{{", text), name
