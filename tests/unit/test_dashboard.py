"""The Grafana dashboard of helm/cumi-pipeline/files/dashboard.json is well-formed and complete.

Which metrics its queries name is tests/unit/test_metric_references.py's business; this checks
the shape Grafana needs (data source variable, unique ids, a grid without overlaps), PromQL habits
that silently give wrong numbers, and that the panels operators were promised are there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "cumi-pipeline" / "files" / "dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
SELECTOR = re.compile(r"\b(cumi_[a-z_]+|up)\{([^}]*)\}")

# Panels promised in issue 7 and docs/metrics.md ("Dashboard guide"): title → metrics it must use.
REQUIRED_PANELS = {
    "Events in / out per second by type": {
        "cumi_worker_events_received_total",
        "cumi_worker_events_published_total",
    },
    "Dead letters by reason": {"cumi_worker_events_dead_lettered_total"},
    "Latency: receive → Kafka ack": {"cumi_worker_ack_latency_seconds_bucket"},
    "Latency: EventTime → Kafka ack": {"cumi_worker_event_lag_seconds_bucket"},
    "Subscriptions by state": {"cumi_worker_subscriptions"},
    "Handshakes, session restarts, stalls": {
        "cumi_worker_handshakes_total",
        "cumi_worker_session_restarts_total",
        "cumi_worker_stalls_total",
    },
    "REST requests by status": {"cumi_worker_rest_requests_total"},
    "Reconciliation runs": {"cumi_worker_reconcile_runs_total"},
    "Events applied / duplicate / stale by type": {"cumi_projector_events_total"},
    "Consumer lag per partition": {"cumi_projector_consumer_lag"},
    "Transactions": {"cumi_projector_transactions_total"},
    "Mailboxes in state and partitions owned": {"cumi_projector_mailboxes"},
    "Replay progress": {"cumi_projector_replay_progress_ratio"},
}

Panel = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(items: list[Panel]) -> Iterator[Panel]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def graphs(dashboard: dict[str, Any]) -> list[Panel]:
    return [p for p in panels(dashboard["panels"]) if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in graphs(dashboard):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


class TestShape:
    """What Grafana and its dashboard sidecar need."""

    def test_identity(self, dashboard: dict[str, Any]) -> None:
        assert dashboard["uid"] == "cumi-pipeline"
        assert dashboard["title"]
        assert 36 <= dashboard["schemaVersion"] <= 41

    def test_datasource_is_a_template_variable(self, dashboard: dict[str, Any]) -> None:
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE, variable["name"]

    def test_every_panel_and_target_uses_the_variable(self, dashboard: dict[str, Any]) -> None:
        for panel in graphs(dashboard):
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, panel["title"]

    def test_panel_ids_and_ref_ids_are_unique(self, dashboard: dict[str, Any]) -> None:
        ids = [p["id"] for p in panels(dashboard["panels"])]
        assert len(ids) == len(set(ids))
        for panel in graphs(dashboard):
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]

    def test_grid_has_no_overlaps(self, dashboard: dict[str, Any]) -> None:
        taken: dict[tuple[int, int], str] = {}
        for panel in panels(dashboard["panels"]):
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= GRID_WIDTH, panel["title"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                    taken[(x, y)] = panel["title"]

    def test_every_panel_says_what_it_shows(self, dashboard: dict[str, Any]) -> None:
        for panel in graphs(dashboard):
            assert len(panel.get("description", "")) > 20, panel["title"]
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


class TestTemplateVariables:
    """Grafana's dashboard linter conventions (template-job-rule, template-instance-rule): `job`
    and `instance` are multi-select Prometheus queries on the data source variable, with `.+` as
    their all-value, so the dashboard serves any job name a scrape config gives."""

    @pytest.mark.parametrize("name", ["job", "instance"])
    def test_linter_rules(self, dashboard: dict[str, Any], name: str) -> None:
        (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == name]
        assert variable["label"] == name.title()
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["multi"] is True and variable["includeAll"] is True
        assert variable["allValue"] == ".+"
        assert variable["query"]["query"].startswith("label_values(")

    def test_job_defaults_to_the_charts_job_label(self, dashboard: dict[str, Any]) -> None:
        (job,) = [v for v in dashboard["templating"]["list"] if v["name"] == "job"]
        assert job["current"]["value"] == ["cumi-pipeline"]

    def test_no_fixed_job(self, dashboard: dict[str, Any]) -> None:
        assert 'job=\\"cumi-pipeline\\"' not in DASHBOARD.read_text()
        assert 'job="cumi-pipeline"' not in json.dumps(dashboard["templating"])

    def test_variables_chain(self, dashboard: dict[str, Any]) -> None:
        """Each variable's choices are narrowed by the ones before it."""
        names = [v["name"] for v in dashboard["templating"]["list"]]
        assert names == ["datasource", "job", "namespace", "instance"]
        queries = {v["name"]: v["query"]["query"] for v in dashboard["templating"]["list"][1:]}
        assert 'job=~"$job"' in queries["namespace"]
        assert 'job=~"$job", namespace=~"$namespace"' in queries["instance"]


class TestQueries:
    """PromQL habits whose mistakes give plausible but wrong graphs."""

    def test_every_selector_is_scoped_to_the_variables(self, dashboard: dict[str, Any]) -> None:
        for title, expr in exprs(dashboard):
            for metric, matchers in SELECTOR.findall(expr):
                assert 'job=~"$job"' in matchers, f"{title}: {metric}"
                assert 'instance=~"$instance"' in matchers, f"{title}: {metric}"
                assert 'namespace=~"$namespace"' in matchers, f"{title}: {metric}"

    def test_rates_use_the_rate_interval(self, dashboard: dict[str, Any]) -> None:
        """Fixed short windows break at long scrape intervals; long ones (1h) are deliberate."""
        for title, expr in exprs(dashboard):
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window in ("", "$__rate_interval", "1h"), f"{title}: [{window}]"

    def test_histogram_quantiles_aggregate_buckets_by_le(self, dashboard: dict[str, Any]) -> None:
        found = 0
        for title, expr in exprs(dashboard):
            for call in re.findall(r"histogram_quantile\(([^,]+), (sum by \(([^)]*)\))", expr):
                found += 1
                assert "le" in [label.strip() for label in call[2].split(",")], title
            if "histogram_quantile" in expr:
                assert "_bucket{" in expr, title
        assert found >= 5

    def test_promised_panels_exist_with_their_metrics(self, dashboard: dict[str, Any]) -> None:
        by_title = {
            p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in graphs(dashboard)
        }
        for title, metrics in REQUIRED_PANELS.items():
            assert title in by_title, f"missing panel {title!r}"
            for metric in metrics:
                assert metric in by_title[title], f"{title!r} does not query {metric}"
