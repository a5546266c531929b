"""`ingest demo`'s verdict and report: any difference from the truth is a mismatch (exit 1), the
summary counts what the projection holds, the probe reads Prometheus text, the timeline merges."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from rich.console import Console

from ingest.demo.probe import parse_metrics, sample_of
from ingest.demo.report import (
    EXIT_MATCH,
    EXIT_MISMATCH,
    MailboxCounts,
    compare,
    render_summary,
    render_verdict,
    summary_rows,
)
from ingest.demo.view import PlainView, Sample
from ingest.simulator import Simulator, SimulatorConfig


@pytest.fixture(scope="module")
def truth() -> dict[str, Any]:
    """The ground truth of a simulator after some random activity (no sockets needed)."""
    sim = Simulator(SimulatorConfig(mailboxes=6, seed=11, initial_messages=3))
    sim.emit(400)
    return sim.truth()


def some_message(state: dict[str, Any], folder: str) -> tuple[str, str]:
    for mailbox_id, mailbox in sorted(state.items()):
        if mailbox[folder]:
            return mailbox_id, next(iter(mailbox[folder]))
    raise AssertionError(f"no message in any {folder}")


def render(function: Any, *args: Any) -> str:
    out = io.StringIO()
    function(Console(file=out, width=120, no_color=True), *args)
    return out.getvalue()


class TestCompare:
    """Every source must equal the truth in every folder, read flag and USN."""

    def test_an_equal_projection_is_a_full_match(self, truth: dict[str, Any]) -> None:
        verdict = compare(truth, {"read API": copy.deepcopy(truth)})
        assert verdict.ok
        assert verdict.exit_code == EXIT_MATCH
        assert verdict.comparisons[0].mailboxes == len(truth) == verdict.truth_mailboxes

    def test_a_flipped_read_flag_is_a_mismatch(self, truth: dict[str, Any]) -> None:
        wrong = copy.deepcopy(truth)
        mailbox_id, message_id = some_message(wrong, "inbox")
        entry = wrong[mailbox_id]["inbox"][message_id]
        entry["read"] = not entry["read"]
        verdict = compare(truth, {"read API": wrong})
        assert not verdict.ok
        assert verdict.exit_code == EXIT_MISMATCH
        (problem,) = verdict.comparisons[0].problems
        assert problem.startswith(f"{mailbox_id}: message {message_id}")
        assert verdict.mismatched_mailboxes() == {mailbox_id}

    def test_a_message_in_the_wrong_folder_is_a_mismatch(self, truth: dict[str, Any]) -> None:
        wrong = copy.deepcopy(truth)
        mailbox_id, message_id = some_message(wrong, "deleted")
        wrong[mailbox_id]["inbox"][message_id] = wrong[mailbox_id]["deleted"].pop(message_id)
        assert compare(truth, {"state topic": wrong}).exit_code == EXIT_MISMATCH

    def test_a_missing_mailbox_and_a_lagging_usn_are_mismatches(
        self, truth: dict[str, Any]
    ) -> None:
        wrong = copy.deepcopy(truth)
        gone = sorted(wrong)[0]
        del wrong[gone]
        behind = sorted(wrong)[0]
        wrong[behind]["usn"] -= 1
        verdict = compare(truth, {"read API": wrong})
        assert verdict.mismatched_mailboxes() == {gone, behind}

    def test_one_bad_source_fails_the_run(self, truth: dict[str, Any]) -> None:
        wrong = copy.deepcopy(truth)
        mailbox_id, message_id = some_message(wrong, "inbox")
        del wrong[mailbox_id]["inbox"][message_id]
        verdict = compare(truth, {"read API": copy.deepcopy(truth), "state topic": wrong})
        assert [c.ok for c in verdict.comparisons] == [True, False]
        assert verdict.exit_code == EXIT_MISMATCH

    def test_no_source_at_all_is_not_a_match(self, truth: dict[str, Any]) -> None:
        assert compare(truth, {}).exit_code == EXIT_MISMATCH


class TestRendering:
    """The report names every difference and the result."""

    def test_mismatch_report_lists_the_differences(self, truth: dict[str, Any]) -> None:
        wrong = copy.deepcopy(truth)
        mailbox_id, message_id = some_message(wrong, "inbox")
        wrong[mailbox_id]["inbox"][message_id]["read"] ^= True
        text = render(render_verdict, compare(truth, {"read API": wrong}))
        assert "MISMATCH" in text
        assert f"{mailbox_id}: message {message_id}" in text
        assert "exit code 1" in text
        assert "FULL MATCH" not in text

    def test_match_report(self, truth: dict[str, Any]) -> None:
        text = render(render_verdict, compare(truth, {"read API": truth}))
        assert "FULL MATCH" in text
        assert "exit code 0" in text

    def test_summary_shows_totals_and_flags_the_mismatched_mailbox(
        self, truth: dict[str, Any]
    ) -> None:
        wrong = copy.deepcopy(truth)
        quietest = min(wrong, key=lambda m: (len(wrong[m]["inbox"]) + len(wrong[m]["deleted"]), m))
        wrong[quietest]["usn"] += 5
        verdict = compare(truth, {"read API": wrong})
        text = render(render_summary, wrong, truth, verdict, 2)
        rows = [line.split() for line in text.splitlines()]
        flagged = [r for r in rows if r[-1:] == ["DIFFERS"]]
        assert [r[0] for r in flagged] == [quietest]  # shown although it is the quietest
        inbox = sum(len(m["inbox"]) for m in truth.values())
        total = next(r for r in rows if r[:2] == ["total", f"({len(truth)})"])
        assert int(total[2]) == inbox
        assert f"… {len(truth) - 2} more" in text


class TestSummaryRows:
    """The mailboxes with the most messages, with the mismatched ones first."""

    def test_largest_first_and_mismatched_ahead(self, truth: dict[str, Any]) -> None:
        size = {m: len(s["inbox"]) + len(s["deleted"]) for m, s in truth.items()}
        largest = sorted(truth, key=lambda m: (-size[m], m))
        rows, hidden = summary_rows(truth, 3, first=[largest[-1]])
        assert [r.mailbox_id for r in rows] == [largest[-1], largest[0], largest[1]]
        assert hidden == len(truth) - 3

    def test_counts(self) -> None:
        state = {
            "inbox": {"a": {"read": True}, "b": {"read": False}},
            "deleted": {"c": {"read": False}},
            "usn": 9,
        }
        assert MailboxCounts.of("x", state) == MailboxCounts("x", 2, 1, 1, 1, 9)


class TestProbe:
    """Prometheus text exposition → one Sample, summed over labels."""

    def test_sample_of_real_exposition(self) -> None:
        worker, projector = CollectorRegistry(), CollectorRegistry()
        published = Counter(
            "cumi_worker_events_published", "", ["event_type"], registry=worker
        )  # the client adds _total
        published.labels("NEW_MESSAGE").inc(7)
        published.labels("SAVED_MESSAGE").inc(5)
        snapshots = Counter("cumi_worker_snapshots_published", "", ["reason"], registry=worker)
        snapshots.labels("startup").inc(60)
        snapshots.labels("server-restart").inc(58)
        subscriptions = Gauge("cumi_worker_subscriptions", "", ["state"], registry=worker)
        subscriptions.labels("active").set(58)
        subscriptions.labels("pending").set(2)
        Gauge("cumi_worker_ready", "", registry=worker).set(1)
        events = Counter("cumi_projector_events", "", ["event_type", "outcome"], registry=projector)
        events.labels("NEW_MESSAGE", "applied").inc(10)
        events.labels("NEW_MESSAGE", "duplicate").inc(2)
        lag = Gauge("cumi_projector_consumer_lag", "", ["partition"], registry=projector)
        lag.labels("0").set(3)
        lag.labels("5").set(4)
        sim = {"emitted_total": 100, "coalesced": 10, "withheld": 25, "malformed": 1}
        sample = sample_of(
            1.5,
            sim,
            parse_metrics(generate_latest(worker).decode()),
            parse_metrics(generate_latest(projector).decode()),
        )
        assert sample.published == 12
        assert sample.snapshots == {"startup": 60, "server-restart": 58}
        assert sample.subscribed == 58
        assert sample.worker_ready and not sample.projector_ready
        assert (sample.applied, sample.ignored, sample.lag) == (10, 2, 7)
        assert sample.generated == 115
        assert not sample.drained(58)


class TestPlainView:
    """Plain lines: faults at once, reactions merged into one timeline entry per burst."""

    def test_snapshot_burst_is_one_entry(self) -> None:
        out = io.StringIO()
        view = PlainView("demo", 3, 10, Console(file=io.StringIO()), out)
        view.event("Connection Jetty restarted")
        view.update(Sample(at=1.0, snapshots={"server-restart": 1}))
        view.update(Sample(at=2.0, snapshots={"server-restart": 3}))
        assert [e.text for e in view.timeline] == [
            "Connection Jetty restarted",
            "worker: gap repair (server-restart), 3 snapshot records",
        ]
        printed = out.getvalue()
        assert "Connection Jetty restarted" in printed
        assert "subscriptions 0/3" in printed
