"""Every metric the dashboard and the alert rules query is one the code exports.

The exported names come from the real registries (`ingest.ops.metrics.WORKER_REGISTRY` and
`PROJECTOR_REGISTRY`, one per process; a query may name either): each registered family
in every sample-name form Prometheus will store (`_total`/`_created` of counters, `_bucket`/
`_count`/`_sum`/`_created` of histograms, …), plus the series Prometheus itself makes (`up`,
`ALERTS`, …). The referenced names are parsed out of every PromQL expression (panel targets,
template-variable queries, alert `expr`s) by a small PromQL tokenizer: strings, comments, label
matchers, grouping clauses, function calls, keywords and durations are told apart, so a label
name, a function or a Grafana variable is never mistaken for a metric. Label matchers written on a
metric are checked against that metric's label names too: a typo there empties a panel just as
surely as a wrong metric name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Metric

from ingest.cumi.rest import Endpoint
from ingest.cumi.session import LossReason
from ingest.cumi.subscriptions import SubState
from ingest.events import LENIENT_FIELDS, EventType, RejectReason, RepairReason
from ingest.kpis.exposition import FAMILIES as KPI_FAMILIES
from ingest.kpis.exposition import families as kpi_families
from ingest.kpis.ledger import KpiLedger
from ingest.ops import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = [
    REPO / "helm" / "cumi-pipeline" / "files" / name
    for name in ("dashboard.json", "voicemail-dashboard.json")
]
RULES = REPO / "helm" / "cumi-pipeline" / "files" / "alerts.yaml"

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
COUNTER_LIKE = ("_bucket", "_count", "_sum", "_gcount", "_gsum")
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
GAUGE_FUNCTIONS = {"deriv", "delta", "idelta", "predict_linear"}
APPLIED = re.compile(
    rf"\b({'|'.join(sorted(COUNTER_FUNCTIONS | GAUGE_FUNCTIONS))})\(\s*([A-Za-z_][\w:]*)"
)
"""A range function applied directly to a selector: `rate(metric{…}[…])`."""
IMPLICIT_LABELS = {"_bucket": {"le"}, "": {"quantile"}}
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
}
"""Series Prometheus makes itself, per target or per alert."""
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
"""Labels Prometheus (and the Operator's ServiceMonitor) attach to every scraped series."""
ALERT_LABELS = {"alertname", "alertstate", "severity", "component"}

KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
"""Aggregation operators may put their `by (…)` clause between the name and the body."""
TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*
                 (?:\d+(?:ms|[smhdwy]))*)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@:])
    """,
    re.VERBOSE,
)
GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|__\w+|\w+)|\[\[\w+\]\]")


@dataclass(frozen=True, slots=True)
class Reference:
    """A metric named in a query, with the label names matched on it right there."""

    metric: str
    labels: frozenset[str]


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot tokenize PromQL at {expr[position:]!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            yield kind, match.group()


def references(expr: str) -> set[Reference]:
    """The metrics a PromQL expression selects (Grafana variables allowed in it)."""
    # a variable in a range or a number position must still tokenize; in strings it is harmless
    toks = list(tokens(GRAFANA_VARIABLE.sub("5m", expr)))
    found: set[Reference] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in GROUPING and following == "(":
            i = skip_group(toks, i + 1)  # label names, not metrics
            continue
        if kind == "op" and text == "{":  # a selector with no metric name before it
            names, i = matchers(toks, i)
            if "__name__" in names:
                found.add(Reference(names.pop("__name__"), frozenset(names)))
            continue
        if kind == "ident" and text in AGGREGATIONS and following in GROUPING:
            i += 1
            continue
        if kind == "ident" and text not in KEYWORDS and text not in GROUPING and following != "(":
            labels: frozenset[str] = frozenset()
            i += 1
            if following == "{":
                names, i = matchers(toks, i)
                labels = frozenset(names)
            found.add(Reference(text, labels))
            continue
        i += 1
    return found


def grouping_labels(expr: str) -> set[str]:
    """Label names of the `by`/`without`/`on`/`ignoring`/`group_*` clauses of an expression."""
    toks = list(tokens(GRAFANA_VARIABLE.sub("5m", expr)))
    labels: set[str] = set()
    for i, (kind, text) in enumerate(toks[:-1]):
        if kind == "ident" and text in GROUPING and toks[i + 1][1] == "(":
            end = skip_group(toks, i + 1)
            labels |= {t for k, t in toks[i + 2 : end - 1] if k == "ident"}
    return labels


def skip_group(toks: list[tuple[str, str]], start: int) -> int:
    """Index after the `( … )` label list that starts at `start`."""
    end = start
    while toks[end][1] != ")":
        end += 1
    return end + 1


def matchers(toks: list[tuple[str, str]], start: int) -> tuple[dict[str, str], int]:
    """Label names of the `{ … }` at `start` (with the value of a `__name__=` matcher), and the
    index after the closing brace."""
    names: dict[str, str] = {}
    i = start + 1
    while toks[i][1] != "}":
        kind, text = toks[i]
        if kind in ("ident", "string") and toks[i + 1][1] in ("=", "!=", "=~", "!~"):
            label = text.strip("\"'`")
            value = toks[i + 2][1].strip("\"'`")
            names[label] = value if label == "__name__" and toks[i + 1][1] == "=" else ""
            i += 3
            continue
        i += 1
    return names, i + 1


def label_values_argument(query: str) -> str:
    """The PromQL inside a Grafana `label_values(<selector>, <label>)` variable query."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
    if match:
        return match.group(1)
    match = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
    return match.group(1) if match else query


def families() -> Iterator[Metric]:
    """The families of every process's registry (the process collectors' thrice), and the KPI
    consumer's `cumi_voicemail_*` families (a collector of its own, every label value at 0)."""
    for registry in (metrics.WORKER_REGISTRY, metrics.PROJECTOR_REGISTRY, metrics.KPIS_REGISTRY):
        yield from registry.collect()
    yield from kpi_families(KpiLedger(), 0.0)


def exported() -> dict[str, frozenset[str]]:
    """Every sample name `/metrics` can show, with its label names."""
    labels_of = {
        wrapper._name: frozenset(wrapper._labelnames)  # private: the public API hides labels
        for wrapper in vars(metrics).values()
        if hasattr(wrapper, "_labelnames") and hasattr(wrapper, "_name")
    }
    names: dict[str, frozenset[str]] = {}
    family: Metric
    for family in families():
        own = labels_of.get(family.name, frozenset())
        own |= {label for sample in family.samples for label in sample.labels}
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = own | IMPLICIT_LABELS.get(suffix, frozenset())
    return names


def counters() -> set[str]:
    """Sample names that only ever go up (until a restart): what rate() and increase() take."""
    names = set()
    for family in families():
        for suffix in SUFFIXES.get(family.type, ("",)):
            if (family.type == "counter" and suffix == "_total") or suffix in COUNTER_LIKE:
                names.add(family.name + suffix)
    return names


def misapplied(queries: list[tuple[str, str]]) -> list[str]:
    """Counter functions applied to gauges, and gauge functions applied to counters."""
    monotonic = counters()
    problems = []
    for where, expr in queries:
        for function, metric in APPLIED.findall(expr):
            if (function in COUNTER_FUNCTIONS) != (metric in monotonic):
                problems.append(f"{where}: {function}() of {metric}")
    return problems


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable of the dashboard."""
    return [(where, expr) for where, expr, _ in dashboard_targets()]


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(where, PromQL, legend format) of every panel target and template variable of every
    dashboard of the chart."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in all_panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                where = f"{path.name}: panel {panel['title']!r} {target['refId']}"
                queries.append((where, target["expr"], target.get("legendFormat", "")))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query
                where = f"{path.name}: variable {variable['name']}"
                queries.append((where, label_values_argument(text), ""))
    return queries


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def rule_queries() -> list[tuple[str, str]]:
    document = yaml.safe_load(RULES.read_text())
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in document["groups"]
        for rule in group["rules"]
    ]


def unknown(queries: list[tuple[str, str]], legends: dict[str, str] | None = None) -> list[str]:
    """Problems: metrics not exported, label names a metric does not have (in its matchers), and
    grouping-clause or legend labels that no metric of the query has."""
    known = exported()
    problems = []
    for where, expr in queries:
        refs = references(expr)
        in_query = set(TARGET_LABELS | ALERT_LABELS)
        for ref in refs:
            in_query |= known.get(ref.metric, frozenset())
        used = grouping_labels(expr) | set(
            re.findall(r"\{\{\s*(\w+)\s*\}\}", (legends or {}).get(where, ""))
        )
        for label in sorted(used - in_query):
            problems.append(f"{where}: no metric of the query has a label {label!r}")
        for ref in sorted(refs, key=lambda r: r.metric):
            if ref.metric in PROMETHEUS_SERIES:
                allowed: Set[str] = TARGET_LABELS | ALERT_LABELS
            elif ref.metric in known:
                allowed = known[ref.metric] | TARGET_LABELS
            else:
                problems.append(f"{where}: {ref.metric} is not exported by ingest.ops.metrics")
                continue
            for label in sorted(ref.labels - allowed):
                problems.append(f"{where}: {ref.metric} has no label {label!r}")
    return problems


class TestParser:
    """The PromQL reference parser finds metrics, and only metrics."""

    def test_grouping_matchers_functions_and_keywords_are_not_metrics(self) -> None:
        expr = (
            'sum by (le, endpoint) (rate(foo_bucket{job="x", le!="+Inf"}[5m] offset 1h)) '
            "/ on (instance) group_left (pod) bar:ratio5m > bool 0.5 "
            "and ignoring(state) baz unless without_metric "
            "or max_over_time(deriv(qux[15m:1m])[1h:]) @ end()"
        )
        assert references(expr) == {
            Reference("foo_bucket", frozenset({"job", "le"})),
            Reference("bar:ratio5m", frozenset()),
            Reference("baz", frozenset()),
            Reference("without_metric", frozenset()),
            Reference("qux", frozenset()),
        }

    def test_aggregation_clause_after_the_body(self) -> None:
        expr = "sum(rate(a_total[1m])) without (reason) * on() group_right count(b)"
        assert {r.metric for r in references(expr)} == {"a_total", "b"}

    def test_strings_comments_and_grafana_variables(self) -> None:
        expr = (
            'label_replace(x{instance=~"$instance", a="b,c{d}"}, "dst", "$1", "src", "(.*)")'
            "  # not_a_metric here\n"
            "+ rate(y_total[$__rate_interval]) + z{__name__=~'re.*'} "
            '+ {__name__="named", job="j"} + ${factor} * 2e3 + 1h30m'
        )
        assert references(expr) == {
            Reference("x", frozenset({"instance", "a"})),
            Reference("y_total", frozenset()),
            Reference("z", frozenset({"__name__"})),
            Reference("named", frozenset({"job"})),
        }

    def test_rate_of_a_gauge_and_deriv_of_a_counter_are_reported(self) -> None:
        problems = misapplied(
            [
                ("gauge", "rate(cumi_worker_queue_events[5m])"),
                ("counter", "deriv(cumi_worker_events_received_total[5m])"),
                ("fine", "rate(cumi_worker_ack_latency_seconds_bucket[5m]) + deriv(up[5m])"),
            ]
        )
        assert problems == [
            "gauge: rate() of cumi_worker_queue_events",
            "counter: deriv() of cumi_worker_events_received_total",
        ]

    def test_label_values_variable_query(self) -> None:
        query = 'label_values(up{job="cumi-pipeline", namespace=~"$namespace"}, instance)'
        assert references(label_values_argument(query)) == {
            Reference("up", frozenset({"job", "namespace"}))
        }

    def test_a_missing_metric_and_a_wrong_label_are_reported(self) -> None:
        problems = unknown(
            [
                ("probe", "rate(cumi_worker_no_such_thing_total[5m])"),
                ("probe", 'cumi_worker_subscriptions{stat="active"}'),
                ("probe", "cumi_worker_events_received_total"),  # fine
                ("grouped", "sum by (event_typ) (cumi_worker_events_published_total)"),
                ("legend", "sum by (event_type) (cumi_worker_events_published_total)"),
            ],
            {"legend": "{{ event_type }} on {{pod}} in {{ zone }}"},
        )
        assert problems == [
            "probe: cumi_worker_no_such_thing_total is not exported by ingest.ops.metrics",
            "probe: cumi_worker_subscriptions has no label 'stat'",
            "grouped: no metric of the query has a label 'event_typ'",
            "legend: no metric of the query has a label 'zone'",
        ]


class TestExported:
    """The exported-name set is built from the real registry, in every stored sample form."""

    def test_suffix_forms(self) -> None:
        names = exported()
        assert "cumi_worker_events_published_total" in names
        assert "cumi_worker_events_published" not in names  # a counter is stored as _total
        assert {
            "cumi_worker_ack_latency_seconds_bucket",
            "cumi_worker_ack_latency_seconds_sum",
        } <= (set(names))
        assert names["cumi_worker_ack_latency_seconds_bucket"] >= {"le"}
        assert names["cumi_worker_events_published_total"] >= {"event_type"}
        assert "process_start_time_seconds" in names


class TestReferences:
    """The shipped dashboard and alert rules query only what the code exports."""

    def test_dashboard_references_are_exported(self) -> None:
        targets = dashboard_targets()
        legends = {where: legend for where, _, legend in targets}
        assert unknown(dashboard_queries(), legends) == []

    def test_alert_rule_references_are_exported(self) -> None:
        assert unknown(rule_queries()) == []

    @pytest.mark.parametrize("source", ["dashboard", "rules"])
    def test_counter_functions_take_counters_and_gauge_functions_gauges(self, source: str) -> None:
        queries = dashboard_queries() if source == "dashboard" else rule_queries()
        assert misapplied(queries) == []

    @pytest.mark.parametrize("source", ["dashboard", "rules"])
    def test_every_query_references_a_metric(self, source: str) -> None:
        """Guards the parser: an expression it reads as metric-free is a parser bug."""
        queries = dashboard_queries() if source == "dashboard" else rule_queries()
        assert queries
        for where, expr in queries:
            assert references(expr), where

    def test_dashboard_covers_every_cumi_metric_family(self) -> None:
        """A metric the code exports but no panel shows is a gap in the dashboard."""
        shown = {ref.metric for _, expr in dashboard_queries() for ref in references(expr)}
        missing = {
            family.name
            for family in families()
            if family.name.startswith("cumi_")
            and not shown & {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        }
        assert missing == set()


CATALOGUE = REPO / "docs" / "metrics.md"
CATALOGUE_ROW = re.compile(r"^\| `(cumi_\w+)` \| (\w+) \| ([^|]*) \|", re.MULTILINE)
FORBIDDEN_LABELS = {
    "mailbox",
    "mailbox_id",
    "alias",
    "user",
    "user_id",
    "message",
    "message_id",
    "msg_id",
    "subscription",
    "subscription_id",
    "channel",
    "url",
    "path",
}
"""Unbounded identities: a label with one of these names would grow a series per mailbox."""
UNIT_SUFFIXES = ("_seconds", "_bytes")


def cumi_wrappers() -> dict[str, Any]:
    """The prometheus-client metric objects of ingest.ops.metrics, by the name queried."""
    found = {}
    for wrapper in vars(metrics).values():
        if hasattr(wrapper, "_labelnames") and str(getattr(wrapper, "_name", "")).startswith(
            "cumi_"
        ):
            suffix = "_total" if wrapper._type == "counter" else ""
            found[wrapper._name + suffix] = wrapper
    return found


class TestCatalogue:
    """docs/metrics.md lists exactly the exported metrics, with their type and labels."""

    def test_rows_match_the_code(self) -> None:
        rows = {
            name: (kind, sorted(re.findall(r"`(\w+)`", labels)))
            for name, kind, labels in CATALOGUE_ROW.findall(CATALOGUE.read_text())
        }
        code = {
            name: (wrapper._type, sorted(wrapper._labelnames))
            for name, wrapper in cumi_wrappers().items()
        }
        code |= {name: (kind, sorted(labels)) for name, (kind, _, labels) in KPI_FAMILIES.items()}
        assert rows == code


class TestConventions:
    """Prometheus naming conventions and bounded labels, on every cumi metric."""

    def test_names_say_their_process(self) -> None:
        for name in cumi_wrappers():
            assert name.startswith(("cumi_worker_", "cumi_projector_", "cumi_kpis_")), name

    def test_kpi_families(self) -> None:
        """The KPI consumer's own collector: one prefix, base units, no identity labels."""
        for name, (kind, _, labels) in KPI_FAMILIES.items():
            assert name.startswith("cumi_voicemail_"), name
            assert (kind == "counter") == name.endswith("_total"), name
            assert "histogram" not in kind or name.endswith(UNIT_SUFFIXES), name
            assert not set(labels) & FORBIDDEN_LABELS, name

    def test_histograms_are_in_base_units(self) -> None:
        for name, wrapper in cumi_wrappers().items():
            if wrapper._type == "histogram":
                assert name.endswith(UNIT_SUFFIXES), name

    def test_gauges_do_not_pose_as_counters(self) -> None:
        for name, wrapper in cumi_wrappers().items():
            if wrapper._type == "gauge":
                assert not name.endswith(("_total", "_count", "_sum", "_bucket")), name

    def test_no_identity_labels(self) -> None:
        for name, wrapper in cumi_wrappers().items():
            assert not set(wrapper._labelnames) & FORBIDDEN_LABELS, name


LABEL_VALUE_ROW = re.compile(r"^\| (`\w+`(?: \([\w ]+\))?) \| [^|]* \| ([^|]*) \|$", re.MULTILINE)


def label_value_enums() -> dict[str, set[str]]:
    """Documented label-value rows whose values are a closed set in the code."""
    enums: dict[str, Any] = {
        "`event_type`": EventType,
        "`reason` (dead letters)": RejectReason,
        "`reason` (gap repair)": RepairReason,
        "`reason` (sessions)": LossReason,
        "`state`": SubState,
        "`endpoint`": Endpoint,
        # closed sets that are literals at their call sites, listed in ingest.ops.metrics
        "`reason` (projector)": metrics.PROJECTOR_SKIP_REASONS,
        "`kind`": metrics.PRODUCER_ERROR_KINDS,
        "`field`": LENIENT_FIELDS,
        "`outcome` (repair after dead letters)": metrics.DEAD_LETTER_REPAIR_OUTCOMES,
    }
    return {row: {str(member) for member in enum} for row, enum in enums.items()}


class TestLabelValues:
    """The documented label values are the code's enums, value for value."""

    def test_documented_values_match_the_enums(self) -> None:
        documented = {
            row: {v for v in re.findall(r"`([^`]+)`", values) if "." not in v}
            for row, values in LABEL_VALUE_ROW.findall(CATALOGUE.read_text())
        }
        for row, values in label_value_enums().items():
            assert documented.get(row) == values, row
