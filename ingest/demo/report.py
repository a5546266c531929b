"""The end of `ingest demo`: the projection checked against the simulator's ground truth, a
per-mailbox summary, and where to look next.

`compare()` is the verdict (any difference in any source → exit code 1); the `render_*` functions
print with rich, to a terminal or, in plain mode, as plain text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from ingest.demo.view import Sample, View, print_timeline
from ingest.state.projection import diff_states

EXIT_MATCH, EXIT_MISMATCH = 0, 1
SHOWN_PROBLEMS = 20
"""Differences printed per source; the rest are counted."""


@dataclass(frozen=True, slots=True)
class MailboxCounts:
    """Messages per folder of one mailbox (or a total over many) and how many are unread."""

    mailbox_id: str
    inbox: int = 0
    inbox_unread: int = 0
    deleted: int = 0
    deleted_unread: int = 0
    usn: int = 0

    @property
    def messages(self) -> int:
        return self.inbox + self.deleted

    @classmethod
    def of(cls, mailbox_id: str, state: Mapping[str, Any]) -> MailboxCounts:
        """From a fold-format mailbox (`{"inbox": {id: {"read": …}}, "deleted": …, "usn": …}`)."""
        inbox, deleted = state.get("inbox") or {}, state.get("deleted") or {}
        return cls(
            mailbox_id=mailbox_id,
            inbox=len(inbox),
            inbox_unread=sum(1 for m in inbox.values() if not m.get("read")),
            deleted=len(deleted),
            deleted_unread=sum(1 for m in deleted.values() if not m.get("read")),
            usn=int(state.get("usn") or 0),
        )

    @classmethod
    def total(cls, label: str, rows: Iterable[MailboxCounts]) -> MailboxCounts:
        rows = list(rows)
        return cls(
            mailbox_id=label,
            inbox=sum(r.inbox for r in rows),
            inbox_unread=sum(r.inbox_unread for r in rows),
            deleted=sum(r.deleted for r in rows),
            deleted_unread=sum(r.deleted_unread for r in rows),
            usn=max((r.usn for r in rows), default=0),
        )


@dataclass(frozen=True, slots=True)
class Comparison:
    """One projection source (the read API, the state topic) against the truth."""

    source: str
    mailboxes: int
    """Mailboxes the source holds."""
    problems: tuple[str, ...]
    """`diff_states` lines; empty: a full match."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def mismatched_mailboxes(self) -> set[str]:
        return {line.split(":", 1)[0] for line in self.problems}


@dataclass(frozen=True, slots=True)
class Verdict:
    truth_mailboxes: int
    comparisons: tuple[Comparison, ...]
    kpi_differences: tuple[str, ...] = ()
    """The voicemail KPIs (`ingest kpis`) that differ from the simulator's (`KpiCheck`)."""

    @property
    def ok(self) -> bool:
        """A full match needs at least one source, no difference in any, and the KPIs equal."""
        return (
            bool(self.comparisons)
            and all(c.ok for c in self.comparisons)
            and not self.kpi_differences
        )

    def with_kpis(self, check: KpiCheck) -> Verdict:
        return dataclasses.replace(self, kpi_differences=tuple(check.differences()))

    @property
    def exit_code(self) -> int:
        return EXIT_MATCH if self.ok else EXIT_MISMATCH

    def mismatched_mailboxes(self) -> set[str]:
        return set().union(*(c.mismatched_mailboxes() for c in self.comparisons))


def compare(truth: Mapping[str, Any], projections: Mapping[str, Mapping[str, Any]]) -> Verdict:
    """Each projection (source name → fold-format state) against the simulator's truth."""
    return Verdict(
        truth_mailboxes=len(truth),
        comparisons=tuple(
            Comparison(source, len(state), tuple(diff_states(truth, state)))
            for source, state in projections.items()
        ),
    )


def summary_rows(
    state: Mapping[str, Any], top: int, first: Iterable[str] = ()
) -> tuple[list[MailboxCounts], int]:
    """The `top` mailboxes holding the most messages, those named in `first` ahead of them (the
    mismatched ones), and how many were left out."""
    everything = {mid: MailboxCounts.of(mid, s) for mid, s in state.items()}
    leading = [everything.get(mid) or MailboxCounts(mid) for mid in sorted(set(first))]
    largest = sorted(
        (c for mid, c in everything.items() if mid not in set(first)),
        key=lambda c: (-c.messages, c.mailbox_id),
    )
    rows = leading + largest[: max(0, top - len(leading))]
    return rows, len(everything) - len([r for r in rows if r.mailbox_id in everything])


# -- rendering -----------------------------------------------------------------------------------


def render_summary(
    console: Console,
    projection: Mapping[str, Any],
    truth: Mapping[str, Any],
    verdict: Verdict,
    top: int,
) -> None:
    mismatched = verdict.mismatched_mailboxes()
    rows, hidden = summary_rows(projection, top, mismatched)
    table = Table(
        title=f"Mailboxes (projection, read API): {len(rows)} of {len(projection)}, "
        "most messages first",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for header in ("mailbox", "inbox", "unread", "deleted", "unread", "usn", "vs truth"):
        table.add_column(header, justify="left" if header == "mailbox" else "right")

    def add(row: MailboxCounts, check: str, style: str | None = None) -> None:
        cells = (row.inbox, row.inbox_unread, row.deleted, row.deleted_unread, row.usn)
        table.add_row(row.mailbox_id, *(str(c) for c in cells), check, style=style)

    for row in rows:
        bad = row.mailbox_id in mismatched
        add(row, "DIFFERS" if bad else "ok", "red" if bad else None)
    if hidden:
        table.add_row(f"… {hidden} more", *[""] * 6, style="dim")
    table.add_section()
    projected = [MailboxCounts.of(mid, s) for mid, s in projection.items()]
    add(MailboxCounts.total(f"total ({len(projection)})", projected), "", "bold")
    expected = [MailboxCounts.of(mid, s) for mid, s in truth.items()]
    add(MailboxCounts.total(f"truth ({len(truth)})", expected), "", "dim")
    console.print(table)


def render_counters(console: Console, s: Sample) -> None:
    """What each process counted, end to end."""
    table = Table(title="Counters", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("process")
    table.add_column("")
    table.add_column("count", justify="right")
    restarts = ", ".join(f"{r} {n}" for r, n in sorted(s.session_restarts.items())) or "none"
    snapshots = ", ".join(f"{r} {n}" for r, n in sorted(s.snapshots.items())) or "none"
    rows = (
        ("simulator", "events published", s.emitted),
        ("", "  of them Notifier latest-status events", s.coalesced),
        ("", "withheld while the Notifier was down", s.withheld),
        ("", "lost: no subscription (after the restart)", s.lost),
        ("", "duplicates re-sent / malformed payloads", f"{s.duplicates} / {s.malformed}"),
        (
            "",
            "events sent broken instead (dead letters)",
            f"{s.corrupted} ({s.corrupted_malformed})",
        ),
        ("worker", "Comet messages received", s.received),
        ("", "events published to Kafka", s.published),
        ("", "dead letters", s.dead_letters),
        ("", f"gap-repair snapshots ({snapshots})", sum(s.snapshots.values())),
        ("", f"CometD sessions rebuilt ({restarts})", sum(s.session_restarts.values())),
        ("projector", "events and snapshots applied", s.applied),
        ("", "duplicates and stale records ignored", s.ignored),
        ("", "consumer lag", s.lag),
    )
    for process, what, count in rows:
        table.add_row(process, what, str(count))
    console.print(table)


def render_verdict(console: Console, verdict: Verdict) -> None:
    for comparison in verdict.comparisons:
        if comparison.ok:
            console.print(
                f"[green]MATCH[/]     {comparison.source}: {comparison.mailboxes} mailboxes, "
                "every message's folder and read flag and every USN as in the ground truth"
            )
            continue
        console.print(
            f"[bold red]MISMATCH[/]  {comparison.source}: {len(comparison.problems)} "
            f"differences in {len(comparison.mismatched_mailboxes())} mailboxes"
        )
        for line in comparison.problems[:SHOWN_PROBLEMS]:
            console.print(f"  {line}", markup=False, highlight=False)
        if len(comparison.problems) > SHOWN_PROBLEMS:
            console.print(f"  … and {len(comparison.problems) - SHOWN_PROBLEMS} more")
    if not verdict.comparisons:
        console.print("[bold red]MISMATCH[/]  no projection could be read")
    if verdict.kpi_differences:
        console.print(
            f"[bold red]MISMATCH[/]  voicemail KPIs: {', '.join(verdict.kpi_differences)}"
        )
    result = "[bold green]FULL MATCH[/]" if verdict.ok else "[bold red]MISMATCH[/]"
    console.print(f"Result: {result} (exit code {verdict.exit_code})")


@dataclass(frozen=True, slots=True)
class KpiCheck:
    """The KPI consumer's voicemail KPIs beside the simulator's, at one evaluation time."""

    kpis: Mapping[str, Any]
    """`GET /kpis` of `ingest kpis` ({} if it never answered)."""
    truth: Mapping[str, Any]
    """`/_sim/kpi-truth`, the same keys plus the simulator's own notes."""

    def differences(self) -> list[str]:
        """The KPIs that differ, or why none could be compared."""
        if not self.kpis:
            return ["the KPI consumer did not answer"]
        return [key for key in sorted(self.kpis) if self.kpis[key] != self.truth.get(key)]

    def details(self) -> list[str]:
        """Each differing KPI with both values."""
        return [
            f"{key}: ingest kpis {self.kpis.get(key)!r}, truth {self.truth.get(key)!r}"
            for key in self.differences()
            if key in self.kpis
        ]

    @property
    def ok(self) -> bool:
        return not self.differences()


def _listened(histogram: Mapping[str, Any]) -> str:
    """A histogram's count and the bucket bound its median falls at or below."""
    count = int(histogram.get("count") or 0)
    if not count:
        return "0"
    running = 0
    for bound, n in zip((*_BOUNDS, "more"), histogram.get("buckets") or [], strict=False):
        running += n
        if running * 2 >= count:
            return f"{count} (median ≤ {bound})"
    return str(count)


_BOUNDS = ("1 min", "5 min", "15 min", "1 h", "4 h", "12 h", "24 h", "3 d", "7 d")


def _kpi_rows(kpis: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A few KPIs of a `KpiLedger.summary`, as (what, value) rows."""
    if not kpis:
        return []
    timed = {p: h for p, h in (kpis.get("time_to_first_listen") or {}).items() if h.get("count")}
    urgent = kpis.get("mailboxes_with_urgent_unread") or {}
    return [
        ("messages received (NEW_MESSAGE)", str(sum((kpis.get("received") or {}).values()))),
        (
            "first seen in a snapshot / a restatement",
            " / ".join(str(v) for v in (kpis.get("first_seen") or {}).values()),
        ),
        *((f"first listens timed ({p})", _listened(h)) for p, h in sorted(timed.items())),
        (
            "first listens of unknown time",
            str(sum((kpis.get("first_listen_unknown") or {}).values())),
        ),
        ("deleted unheard", str(sum((kpis.get("deleted_unheard") or {}).values()))),
        ("unread messages now", str(kpis.get("unread_messages", 0))),
        (
            "mailboxes whose backlog cannot be dated",
            str(kpis.get("unread_unknown_age_mailboxes", 0)),
        ),
        (
            "mailboxes with urgent unread > " + ", ".join(urgent),
            " / ".join(map(str, urgent.values())),
        ),
    ]


def render_kpis(console: Console, check: KpiCheck) -> None:
    """A few voicemail KPIs from `ingest kpis`, beside the simulator's."""
    table = Table(title="Voicemail KPIs (ingest kpis)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("")
    table.add_column("ingest kpis", justify="right")
    table.add_column("truth", justify="right")
    truth = dict(_kpi_rows(check.truth))
    for what, value in _kpi_rows(check.kpis):
        table.add_row(what, value, truth.get(what, ""))
    console.print(table)
    delay = float(check.truth.get("listen_delay_by_downtime_seconds") or 0)
    reported = sum((check.truth.get("deleted_unheard") or {}).values())
    happened = check.truth.get("deleted_unheard_server_side", reported)
    if check.ok:
        console.print(
            "[green]MATCH[/]     KPIs: every voicemail KPI as the simulator computes it from what "
            f"it told (reads during the Notifier downtime are dated up to {delay:.0f} s late; "
            f"deleted unheard as told {reported}, as happened {happened}: docs/voicemail-kpis.md)"
        )
        return
    console.print(f"[bold red]MISMATCH[/]  KPIs: {', '.join(check.differences())}")
    for line in check.details():
        console.print(f"  {line}", markup=False, highlight=False)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the running pipeline can be looked at."""

    bootstrap: str
    read_api: str
    worker_metrics: str
    projector_metrics: str
    kpis: str
    simulator: str
    logs: str | None
    """The logs' directory, when it is kept."""
    restarted_at: str | None
    """When the Jetty restarted (ISO 8601), for an `ingest replay --at` example."""


def render_next_steps(
    console: Console, e: Endpoints, projection: Mapping[str, Any], *, running: bool
) -> None:
    """Commands to explore the run, on the mailbox with the most messages."""
    when = (
        "while the demo runs (Ctrl-C stops everything)"
        if running
        else "these work while a demo runs: `ingest demo --keep-running` leaves it up"
    )
    rows, _ = summary_rows(projection, 1)
    largest = rows[0] if rows else MailboxCounts("user0001")
    mid, kafka = largest.mailbox_id, f"--bootstrap {e.bootstrap}"
    # a USN between the mailbox's last snapshot and its end: the replay shows a state in between
    since = int((projection.get(mid) or {}).get("snapshot_usn", -1))
    usn = (since + largest.usn) // 2 if since >= 0 else largest.usn
    lines = [
        ("read API", f"curl {e.read_api}/mailboxes/{mid}"),
        ("", f"curl {e.read_api}/mailboxes?limit=20"),
        ("replay", f"ingest replay {kafka} --mailbox {mid} --usn {usn} --format table"),
    ]
    if e.restarted_at:
        at = f"--at {e.restarted_at}"
        lines.append(("", f"ingest replay {kafka} --mailbox {mid} {at}   (at the Jetty restart)"))
    lines += [
        ("tail", f"ingest tail events {kafka} --mailbox {mid} --from-beginning"),
        ("dead letters", f"ingest tail dlq {kafka} --from-beginning"),
        ("metrics", f"curl {e.worker_metrics}   (worker)"),
        ("", f"curl {e.projector_metrics}   (projector)"),
        ("KPIs", f"curl {e.kpis}/kpis   (ingest kpis; Prometheus: {e.kpis}/metrics)"),
        ("simulator", f"curl {e.simulator}/_sim/stats   (also /_sim/truth)"),
    ]
    if e.logs is not None:
        lines.append(("logs", f"{e.logs}/*.log"))
    console.print(f"Where to look next — {when}:")
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for label, text in lines:
        table.add_row(f"  {label}", Text(text))
    console.print(table)


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the end of a run prints."""

    verdict: Verdict
    projection: Mapping[str, Any]
    """From the read API (fold format with detail)."""
    truth: Mapping[str, Any]
    counters: Sample
    endpoints: Endpoints
    kpis: KpiCheck

    def render(self, view: View, *, top: int, running: bool) -> None:
        console = view.console
        console.print(Rule("cumi-pipeline demo: result"))
        print_timeline(console, view)
        console.print()
        render_counters(console, self.counters)
        render_kpis(console, self.kpis)
        render_summary(console, self.projection, self.truth, self.verdict, top)
        render_verdict(console, self.verdict)
        console.print()
        render_next_steps(console, self.endpoints, self.projection, running=running)
