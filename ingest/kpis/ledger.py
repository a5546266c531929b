"""The voicemail KPIs of the event log (docs/voicemail-kpis.md, "The definitions"): a pure fold, no
I/O.

The counters are a function of the *set* of each message's records, not of their order, exactly
as the DuckDB queries of `ingest export` compute them (ingest/export/queries/setup.sql): the
records about a message are ordered by USN (a snapshot's listing counts at the snapshot's USN,
after the events at that USN; then NEW_MESSAGE first; then log order), and

- the message is *received* when the log holds a NEW_MESSAGE event for it (whatever its fold
  outcome: one logged after the gap-repair snapshot that listed the message is stale for the fold
  but still tells the arrival); its arrival is the ReceiveTime of the first one. Otherwise it was
  first seen in a snapshot (a listing has the lowest USN) or a restatement (an event has);
- its *first listen* is the first record saying it read: known (timed) when the message is
  received and that record is an event, else unknown;
- it is *deleted unheard* when, after the first record placing it in the Inbox, the first record
  placing it out of the Inbox (Deleted, or a hard delete) comes before any record saying it read.

So a record logged late (an event delivered after the snapshot that already covers it) counts in
its place. Each record updates the message's facts and moves the message's contribution between
the counters if its classification changed (rare: a late record reclassifies it, e.g. from
"first seen in a snapshot" to "received"). The ledger keeps the facts of every message the log
has named (a few hundred bytes each).

Gauges (unread backlog, oldest unread age, urgent unread) are computed from the fold's folder state
(`ingest.state.projection`) at evaluation time: `gauges(now)`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.events import (
    EventType,
    Folder,
    MailboxEvent,
    MailboxSnapshot,
    Outcome,
    bare_message_id,
)
from ingest.state.projection import MailboxState, Projection

BUCKETS: tuple[float, ...] = (60, 300, 900, 3600, 14_400, 43_200, 86_400, 259_200, 604_800)
"""Upper bounds (seconds) of the time-to-first-listen and oldest-unread-age histograms: 1, 5,
15 min, 1, 4, 12, 24 h, 3 and 7 days."""
MSG_TYPES = ("voice", "fax", "email", "receipt", "other")
PRIORITIES = ("normal", "urgent", "other")
FIRST_SEEN_SOURCES = ("snapshot", "restatement")
DEFAULT_URGENT_THRESHOLDS: tuple[float, ...] = (3600, 14_400, 86_400)

E = EventType
_SAYS_READ = frozenset({E.SAVED_MESSAGE, E.DELETED_MESSAGE_READ})
_SAYS_UNREAD = frozenset({E.NEW_MESSAGE, E.UNREAD_MESSAGE, E.DELETED_MESSAGE_UNREAD})
_TO_INBOX = frozenset(
    {E.NEW_MESSAGE, E.SAVED_MESSAGE, E.UNREAD_MESSAGE, E.DELETED_MESSAGE_UNDELETE}
)
_OUT_OF_INBOX = frozenset(
    {E.DELETED_MESSAGE, E.DELETED_MESSAGE_CREATE, E.DELETED_MESSAGE_READ, E.DELETED_MESSAGE_UNREAD}
)
_INBOX = Folder.INBOX

Key = tuple[int, bool, bool, int]
"""Where a record stands among a message's records: (USN, from a listing, not a NEW_MESSAGE,
position in the log)."""
Point = tuple[int, bool]
"""(USN, from a listing): what "before" means between reads, placements and deletes."""


def msg_type_label(raw: str | None) -> str:
    """The vendor MsgType lower-cased, `other` for anything unknown or absent."""
    value = (raw or "").strip().lower()
    return value if value in MSG_TYPES else "other"


def priority_label(raw: str | None) -> str:
    """`Normal-Priority` → normal, `Urgent-Priority` → urgent, anything else → other."""
    value = (raw or "").strip().lower().removesuffix("-priority")
    return value if value in ("normal", "urgent") else "other"


def duration_label(seconds: float) -> str:
    """`older_than` label of a threshold: 3600 → "1h", 90 → "90s", 86400 → "24h"."""
    whole = int(seconds)
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"


@dataclass(slots=True)
class Histogram:
    """Observations per bucket of `BUCKETS` (last: above the largest bound), and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """`times=-1` takes an observation back (a message reclassified by a late record)."""
        self.counts[bisect.bisect_left(BUCKETS, value)] += times
        self.total += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.total, "buckets": list(self.counts)}

    def cumulative(self) -> list[tuple[float, int]]:
        """Prometheus buckets: (upper bound, observations at or below it), infinity last."""
        running, out = 0, []
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


Contribution = tuple[
    tuple[str, str] | str,  # (msg_type, priority) when received, else the first-seen source
    tuple[str, float | None] | None,  # (priority, seconds to first listen or None: unknown)
    str | None,  # priority, when deleted unheard
]


@dataclass(slots=True)
class MessageFacts:
    """What the log says about one message: each fact is the first of its kind in `Key` order,
    so the facts do not depend on the order the records came in."""

    msg_type: str | None = None
    msg_type_at: Key | None = None
    priority: str | None = None
    priority_at: Key | None = None
    new_at: Key | None = None
    arrival: float | None = None
    """Epoch seconds of its arrival (ReceiveTime of its first NEW_MESSAGE); None: unknown."""
    first_event_usn: int | None = None
    first_listing_usn: int | None = None
    event_read_at: Key | None = None
    event_read_time: float | None = None
    """EventTime of the first event saying it read."""
    listing_reads: list[Key] = field(default_factory=list)
    """Listings that show it read."""
    listed_flags: list[tuple[int, bool]] = field(default_factory=list)
    """(USN, read) of every listing of it."""
    flags: list[tuple[int, bool]] = field(default_factory=list)
    """(USN, read) of the events that say read or unread."""
    inbox_at: Point | None = None
    outs: list[Point] = field(default_factory=list)
    """Records placing it in Deleted (events, listings); hard deletes are in `deletes`."""
    deletes: list[int] = field(default_factory=list)
    """USNs of its DELETED_MESSAGE_DELETE events: a hard delete unless an Inbox event shares the
    USN (then the pair is an undelete)."""
    inbox_event_usns: list[int] = field(default_factory=list)

    def take_labels(self, at: Key, msg_type: str | None, priority: str | None) -> None:
        """The labels come from the first record (in key order) that carries each field."""
        if msg_type and (self.msg_type_at is None or at < self.msg_type_at):
            self.msg_type, self.msg_type_at = msg_type, at
        if priority and (self.priority_at is None or at < self.priority_at):
            self.priority, self.priority_at = priority, at

    def take_event(self, at: Key, event: MailboxEvent, receive_time: float | None) -> None:
        usn, event_type = event.usn, event.event_type
        if self.first_event_usn is None or usn < self.first_event_usn:
            self.first_event_usn = usn
        if event_type is E.NEW_MESSAGE and (self.new_at is None or at < self.new_at):
            self.new_at = at
            self.arrival = receive_time if receive_time is not None else _source_time(event)
        if event_type in _SAYS_READ:
            self.flags.append((usn, True))
            if self.event_read_at is None or at < self.event_read_at:
                self.event_read_at, self.event_read_time = at, _source_time(event)
        elif event_type in _SAYS_UNREAD:
            self.flags.append((usn, False))
        point = (usn, False)
        if event_type in _TO_INBOX:
            self.inbox_event_usns.append(usn)
            self._placed_in_inbox(point)
        elif event_type in _OUT_OF_INBOX:
            self.outs.append(point)
        elif event_type is E.DELETED_MESSAGE_DELETE:
            self.deletes.append(usn)

    def take_listing(self, at: Key, folder: Folder, read: bool) -> None:
        usn = at[0]
        if self.first_listing_usn is None or usn < self.first_listing_usn:
            self.first_listing_usn = usn
        self.listed_flags.append((usn, read))
        if read:
            self.listing_reads.append(at)
        if folder is _INBOX:
            self._placed_in_inbox((usn, True))
        else:
            self.outs.append((usn, True))

    def _placed_in_inbox(self, point: Point) -> None:
        if self.inbox_at is None or point < self.inbox_at:
            self.inbox_at = point

    # -- what it counts for ---------------------------------------------------------------------

    def deleted_at(self) -> Point | None:
        """The first placement out of the Inbox after the first one in it."""
        inbox = self.inbox_at
        if inbox is None:
            return None
        hard = [(u, False) for u in self.deletes if u not in self.inbox_event_usns]
        later = [p for p in (*self.outs, *hard) if p > inbox]
        return min(later, default=None)

    def first_read(self) -> tuple[Key, float | None] | None:
        """The first record saying it read, and its EventTime if it is an event. A listing at S
        is at least as new as S: when the log knew the message unread just before S and the next
        event after S about its flag says read, the listing was showing that read, and the event
        dates it; any other read a listing shows is the listing's own (the events never told
        it)."""
        reads: list[tuple[Key, float | None]] = [
            (at, None) for at in self.listing_reads if not self._told_later(at[0])
        ]
        if self.event_read_at is not None:
            reads.append((self.event_read_at, self.event_read_time))
        return min(reads, default=None)

    def _told_later(self, usn: int) -> bool:
        # positions: an event at u is 2u, a listing at S is 2S + 1 (after the events at S);
        # an undelete's Inbox event restores the flag the message had: it tells no read
        listing = 2 * usn + 1
        events = [(2 * u, read) for u, read in self.flags if u not in self.deletes]
        points = events + [(2 * u + 1, read) for u, read in self.listed_flags]
        before = max((p for p in points if p[0] < listing), default=None)
        after = [p for p in events if p[0] > listing]
        if before is None or before[1] or not after:
            return False
        nearest = min(after)[0]
        return all(read for position, read in after if position == nearest)

    def contribution(self) -> Contribution:
        priority = priority_label(self.priority)
        seen: tuple[str, str] | str
        if self.new_at is not None:
            seen = (msg_type_label(self.msg_type), priority)
        elif self.first_event_usn is None or (
            self.first_listing_usn is not None and self.first_listing_usn < self.first_event_usn
        ):
            seen = "snapshot"
        else:
            seen = "restatement"
        listen: tuple[str, float | None] | None = None
        first_read = self.first_read()
        if first_read is not None:
            arrival, read = self.arrival, first_read[1]
            waited = None if arrival is None or read is None else max(0.0, read - arrival)
            listen = (priority, waited)
        deleted = self.deleted_at()
        unheard = deleted is not None and (
            first_read is None or (first_read[0][0], first_read[0][1]) > deleted
        )
        return seen, listen, priority if unheard else None


class KpiLedger:
    """The KPI counters of everything applied so far, and the fold the gauges come from."""

    def __init__(self, urgent_thresholds: Sequence[float] = DEFAULT_URGENT_THRESHOLDS) -> None:
        self.projection = Projection()
        self.urgent_thresholds = tuple(sorted(urgent_thresholds))
        self.messages: dict[str, dict[str, MessageFacts]] = {}
        """Mailbox → message id → what the log says of it: every message the log named."""
        self.received = {(t, p): 0 for t in MSG_TYPES for p in PRIORITIES}
        self.first_seen = dict.fromkeys(FIRST_SEEN_SOURCES, 0)
        self.time_to_first_listen = {p: Histogram() for p in PRIORITIES}
        self.first_listen_unknown = dict.fromkeys(PRIORITIES, 0)
        self.deleted_unheard = dict.fromkeys(PRIORITIES, 0)
        self.reclassified = 0
        """Messages a late record moved between counters (each counter may go down by one)."""
        self.records = 0

    def apply(self, record: MailboxEvent | MailboxSnapshot) -> Outcome:
        """Fold one record; every record counts for the KPIs, whatever the fold's outcome (a
        stale or repeated record changes no fact that an earlier one did not already set)."""
        self.records += 1
        position = self.records
        known = self.messages.setdefault(record.mailbox_id, {})
        if isinstance(record, MailboxSnapshot):
            for folder, listing in ((Folder.INBOX, record.inbox), (Folder.DELETED, record.deleted)):
                for entry in listing:
                    at: Key = (record.usn, True, True, position)
                    facts, before = self._facts(known, bare_message_id(entry.message_id))
                    facts.take_labels(at, entry.msg_type, entry.priority)
                    facts.take_listing(at, folder, entry.read)
                    self._count(facts, before)
        else:
            at = (record.usn, False, record.event_type is not E.NEW_MESSAGE, position)
            for info in record.messages:
                facts, before = self._facts(known, info.message_id)
                facts.take_labels(at, info.msg_type, info.priority)
                received = info.receive_time.timestamp() if info.receive_time else None
                facts.take_event(at, record, received)
                self._count(facts, before)
        return self.projection.apply(record)

    def _facts(
        self, known: dict[str, MessageFacts], message_id: str
    ) -> tuple[MessageFacts, Contribution | None]:
        facts = known.get(message_id)
        if facts is None:
            facts = known[message_id] = MessageFacts()
            return facts, None
        return facts, facts.contribution()

    def _count(self, facts: MessageFacts, before: Contribution | None) -> None:
        after = facts.contribution()
        if after == before:
            return
        if before is not None:
            self.reclassified += any(
                was is not None and was != now for was, now in zip(before, after, strict=True)
            )
            self._add(before, -1)
        self._add(after, 1)

    def _add(self, contribution: Contribution, times: int) -> None:
        seen, listen, unheard = contribution
        if isinstance(seen, tuple):
            self.received[seen] += times
        else:
            self.first_seen[seen] += times
        if listen is not None:
            priority, waited = listen
            if waited is None:
                self.first_listen_unknown[priority] += times
            else:
                self.time_to_first_listen[priority].observe(waited, times)
        if unheard is not None:
            self.deleted_unheard[unheard] += times

    # -- reading --------------------------------------------------------------------------------

    def summary(self, now: float) -> dict[str, Any]:
        """Every KPI as of `now`, as plain data (JSON): what the demo prints and tests compare
        with the simulator's `/_sim/kpi-truth` and the DuckDB queries. Histograms as `{count,
        sum, buckets}` with per-bucket (not cumulative) counts, the last above the largest
        bound."""
        gauges = self.gauges(now)
        return {
            "received": {f"{t}/{p}": n for (t, p), n in sorted(self.received.items()) if n},
            "first_seen": dict(self.first_seen),
            "time_to_first_listen": {p: h.to_json() for p, h in self.time_to_first_listen.items()},
            "first_listen_unknown": dict(self.first_listen_unknown),
            "deleted_unheard": dict(self.deleted_unheard),
            "unread_messages": gauges.unread_messages,
            "oldest_unread_age": gauges.oldest_unread_age.to_json(),
            "unread_unknown_age_mailboxes": gauges.unknown_age_mailboxes,
            "mailboxes_with_urgent_unread": {
                duration_label(t): n for t, n in gauges.urgent_unread.items()
            },
        }

    # -- gauges ---------------------------------------------------------------------------------

    def gauges(self, now: float) -> Gauges:
        """The state-derived KPIs as of `now` (epoch seconds)."""
        unread = unknown = 0
        ages = Histogram()
        urgent = dict.fromkeys(self.urgent_thresholds, 0)
        for mailbox_id, state in self.projection.mailboxes.items():
            count, oldest, oldest_urgent, blind = _unread(state, self.messages.get(mailbox_id, {}))
            if not count:
                continue
            unread += count
            if blind:
                unknown += 1
            elif oldest is not None:
                ages.observe(max(0.0, now - oldest))
            if oldest_urgent is not None:
                for threshold in self.urgent_thresholds:
                    if now - oldest_urgent > threshold:
                        urgent[threshold] += 1
        return Gauges(unread, ages, unknown, urgent)


@dataclass(frozen=True, slots=True)
class Gauges:
    """The state-derived KPIs at one evaluation time."""

    unread_messages: int
    oldest_unread_age: Histogram
    """One observation per mailbox with unread Inbox messages, all of known arrival."""
    unknown_age_mailboxes: int
    urgent_unread: dict[float, int]
    """Threshold (seconds) → mailboxes with an urgent unread Inbox message older than it."""


def _unread(
    state: MailboxState, known: dict[str, MessageFacts]
) -> tuple[int, float | None, float | None, bool]:
    """Unread Inbox messages of a mailbox: how many, the oldest known arrival, the oldest known
    urgent arrival, and whether any has an unknown arrival (then the oldest is unknown)."""
    count, oldest, oldest_urgent, blind = 0, None, None, False
    for message_id, message in state.messages.items():
        if message.folder is not _INBOX or message.read:
            continue
        count += 1
        facts = known.get(message_id)
        arrival = facts.arrival if facts is not None and facts.new_at is not None else None
        if arrival is None or facts is None:
            blind = True
            continue
        oldest = arrival if oldest is None else min(oldest, arrival)
        if priority_label(facts.priority) == "urgent":
            oldest_urgent = arrival if oldest_urgent is None else min(oldest_urgent, arrival)
    return count, oldest, oldest_urgent, blind


def _source_time(event: MailboxEvent) -> float | None:
    """The server's EventTime of `event`; None when the worker could not read it (the record's
    `event_time` is then the time it was ingested, not when it happened: docs/voicemail-kpis.md)."""
    if any(u.field == "EventTime" for u in event.unparsed):
        return None
    return event.event_time.timestamp()
