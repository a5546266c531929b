"""Each process exports only its own metrics, and every labelled counter from the first scrape.

The exposition texts come from a fresh interpreter (`generate_latest`, what `/metrics` serves), so
no other test's increments can stand in for the zeros: a series that exists there at 0 was created
by `ingest.ops.metrics` itself, at import or by the worker's start-up call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.cumi.rest import Endpoint
from ingest.cumi.session import LossReason
from ingest.events import EventType, Outcome, RejectReason, RepairReason
from ingest.ops import metrics

FRESH = """
import json
from prometheus_client import generate_latest
from ingest.ops import metrics
texts = {"worker_at_import": generate_latest(metrics.WORKER_REGISTRY).decode()}
import ingest.cumi.session  # their label values: LossReason, Endpoint
import ingest.cumi.rest
texts["worker"] = generate_latest(metrics.WORKER_REGISTRY).decode()
texts["projector"] = generate_latest(metrics.PROJECTOR_REGISTRY).decode()
texts["kpis"] = generate_latest(metrics.KPIS_REGISTRY).decode()
print(json.dumps(texts))
"""
OPEN_LABELS = {"cumi_worker_rest_requests_total"}
"""Labelled counters whose values are not a closed set (the HTTP status): born at first use."""

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, str] = json.loads(done.stdout)
    return result


def samples(text: str) -> Samples:
    """Sample name → label set → value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def series(found: Samples, name: str) -> dict[tuple[str, ...], float]:
    """The label values (in label-name order) → value of one sample name."""
    return {tuple(v for _, v in sorted(labels)): value for labels, value in found[name].items()}


def zeros(*values: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    return dict.fromkeys(values, 0.0)


class TestSeparateRegistries:
    """A worker's /metrics shows no projector series and a projector's no worker series."""

    def test_worker_text_has_no_projector_series(self, texts: Mapping[str, str]) -> None:
        assert "cumi_worker_ready 0.0" in texts["worker"]
        assert "cumi_projector_" not in texts["worker"]

    def test_projector_text_has_no_worker_series(self, texts: Mapping[str, str]) -> None:
        assert "cumi_projector_ready 0.0" in texts["projector"]
        assert "cumi_worker_" not in texts["projector"]

    def test_kpis_text_has_only_its_own_series(self, texts: Mapping[str, str]) -> None:
        assert "cumi_kpis_ready 0.0" in texts["kpis"]
        assert "cumi_worker_" not in texts["kpis"]
        assert "cumi_projector_" not in texts["kpis"]

    @pytest.mark.parametrize("process", ["worker", "projector", "kpis"])
    def test_each_has_the_process_collectors(self, texts: Mapping[str, str], process: str) -> None:
        found = samples(texts[process])
        assert "process_start_time_seconds" in found
        assert "python_info" in found

    @pytest.mark.parametrize("process", ["worker", "projector", "kpis"])
    def test_each_has_all_of_its_own_families(self, texts: Mapping[str, str], process: str) -> None:
        shown = {family.name for family in text_string_to_metric_families(texts[process])}
        defined = {
            wrapper._name
            for wrapper in vars(metrics).values()
            if str(getattr(wrapper, "_name", "")).startswith(f"cumi_{process}_")
        }
        assert defined
        assert defined <= shown


class TestLabelValuesAtZero:
    """Every known label value of a labelled counter is a series at 0 before anything happened."""

    def test_dead_letter_reasons_at_import(self, texts: Mapping[str, str]) -> None:
        text = texts["worker_at_import"]
        assert 'cumi_worker_events_dead_lettered_total{reason="not_json"} 0.0' in text
        found = series(samples(text), "cumi_worker_events_dead_lettered_total")
        assert found == zeros(*((r.value,) for r in RejectReason))

    def test_worker_counters(self, texts: Mapping[str, str]) -> None:
        found = samples(texts["worker"])
        assert series(found, "cumi_worker_events_published_total") == zeros(
            *((t.value,) for t in EventType)
        )
        assert series(found, "cumi_worker_session_restarts_total") == zeros(
            *((r.value,) for r in LossReason)
        )
        assert series(found, "cumi_worker_snapshots_published_total") == zeros(
            *((r.value,) for r in RepairReason)
        )
        assert series(found, "cumi_worker_reconcile_runs_total") == zeros(
            *((o, r.value) for r in RepairReason for o in ("failure", "success"))
        )
        assert series(found, "cumi_worker_rest_retries_total") == zeros(
            *((e.value,) for e in Endpoint)
        )
        assert series(found, "cumi_worker_handshakes_total") == zeros(("failure",), ("success",))
        assert series(found, "cumi_worker_producer_errors_total") == zeros(
            ("replaced",), ("resent",), ("fatal",), ("unacknowledged-at-shutdown",)
        )
        assert series(found, "cumi_worker_history_gaps_total") == zeros(("kafka-outage",))
        assert series(found, "cumi_worker_registry_records_skipped_total") == zeros(
            ("undecodable",), ("key_mismatch",), ("other_server",)
        )

    def test_projector_counters(self, texts: Mapping[str, str]) -> None:
        found = samples(texts["projector"])
        assert series(found, "cumi_projector_events_total") == zeros(
            *((t.value, o.value) for t in EventType for o in Outcome)
        )
        assert series(found, "cumi_projector_snapshots_total") == zeros(
            *((o.value,) for o in Outcome)
        )
        assert series(found, "cumi_projector_records_skipped_total") == zeros(
            ("undecodable",), ("unexpected_kind",)
        )
        assert series(found, "cumi_projector_transactions_total") == zeros(
            ("committed",), ("aborted",)
        )

    def test_kpis_counters(self, texts: Mapping[str, str]) -> None:
        found = samples(texts["kpis"])
        assert series(found, "cumi_kpis_records_total") == zeros(*((o.value,) for o in Outcome))
        assert series(found, "cumi_kpis_records_skipped_total") == zeros(
            ("undecodable",), ("unexpected_kind",)
        )

    def test_no_labelled_counter_is_left_out(self, texts: Mapping[str, str]) -> None:
        """A labelled counter added later must get its values initialised too (or be listed
        as open-ended here, with the reason)."""
        found = {
            **samples(texts["worker"]),
            **samples(texts["projector"]),
            **samples(texts["kpis"]),
        }
        labelled = {
            wrapper._name + "_total"
            for wrapper in vars(metrics).values()
            if getattr(wrapper, "_type", None) == "counter" and getattr(wrapper, "_labelnames", ())
        }
        assert len(labelled) > 10
        missing = {name for name in labelled - OPEN_LABELS if not found.get(name)}
        assert missing == set()
        assert not any(found.get(name) for name in OPEN_LABELS)
