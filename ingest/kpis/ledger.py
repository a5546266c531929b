"""The voicemail KPIs of the event log (docs/metrics.md, "Voicemail KPIs"): a pure fold, no I/O.

Records go through the one projection (`ingest.state.projection`), so duplicates, stale events,
same-USN changes and snapshots follow the fold's rules exactly; the ledger only watches what each
applied record did to the messages it touched, and keeps per message what folder state does not:
its priority, its arrival (known only when the log saw its NEW_MESSAGE) and whether the log has
seen it heard or deleted unheard — so each counter counts a message once, whatever repeats.

Every message the log knows to be heard is counted exactly once, in the time-to-first-listen
histogram (arrival known, first read seen as an event) or in the unknown counter (first seen in a
snapshot or a restatement, or read while no one listened: its read first shows in a snapshot).

Gauges (unread backlog, oldest unread age, urgent unread) are computed from the folder state at
evaluation time: `gauges(now)`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.events import (
    EventType,
    Folder,
    MailboxEvent,
    MailboxSnapshot,
    MessageInfo,
    Outcome,
    SnapshotMessage,
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

_READ_ASSERTIONS = frozenset({EventType.SAVED_MESSAGE, EventType.DELETED_MESSAGE_READ})
_INBOX = Folder.INBOX


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

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

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


@dataclass(slots=True)
class MessageKpi:
    """What the ledger remembers of one message besides its folder state."""

    priority: str
    arrival: float | None
    """Epoch seconds of its arrival; None: unknown to the log (first seen otherwise)."""
    folder: Folder
    """Folder as of the last record the ledger saw touch it (to see it leave the Inbox)."""
    heard: bool = False
    """Counted in the time-to-first-listen histogram or as unknown."""
    deleted_unheard: bool = False


@dataclass(frozen=True, slots=True)
class Gauges:
    """The state-derived KPIs at one evaluation time."""

    unread_messages: int
    oldest_unread_age: Histogram
    """One observation per mailbox with unread Inbox messages, all of known arrival."""
    unknown_age_mailboxes: int
    urgent_unread: dict[float, int]
    """Threshold (seconds) → mailboxes with an urgent unread Inbox message older than it."""


class KpiLedger:
    """The KPI counters of everything applied so far, and the fold they were derived with."""

    def __init__(self, urgent_thresholds: Sequence[float] = DEFAULT_URGENT_THRESHOLDS) -> None:
        self.projection = Projection()
        self.urgent_thresholds = tuple(sorted(urgent_thresholds))
        self.messages: dict[str, dict[str, MessageKpi]] = {}
        """Mailbox → message id → its KPI memory; the same messages as the fold holds."""
        self.received = {(t, p): 0 for t in MSG_TYPES for p in PRIORITIES}
        self.first_seen = dict.fromkeys(FIRST_SEEN_SOURCES, 0)
        self.time_to_first_listen = {p: Histogram() for p in PRIORITIES}
        self.first_listen_unknown = dict.fromkeys(PRIORITIES, 0)
        self.deleted_unheard = dict.fromkeys(PRIORITIES, 0)
        self.records = 0

    def apply(self, record: MailboxEvent | MailboxSnapshot) -> Outcome:
        self.records += 1
        if isinstance(record, MailboxSnapshot):
            return self._apply_snapshot(record)
        return self._apply_event(record)

    # -- events ---------------------------------------------------------------------------------

    def _apply_event(self, event: MailboxEvent) -> Outcome:
        state = self.projection.get(event.mailbox_id)
        before = {info.message_id: _placement(state, info.message_id) for info in event.messages}
        outcome = self.projection.apply(event)
        if outcome is not Outcome.APPLIED:
            return outcome  # duplicate or stale: the fold changed nothing
        state = self.projection.get(event.mailbox_id)
        assert state is not None
        kpis = self.messages.setdefault(event.mailbox_id, {})
        for info in event.messages:
            message = state.messages.get(info.message_id)
            if message is None:
                continue
            now = (message.folder, message.read)
            kpi = kpis.get(info.message_id)
            if kpi is None:
                kpi = kpis[info.message_id] = self._first_seen_in_event(event, info)
            elif now == before[info.message_id]:
                continue  # stale for this message of a multi-message event, or no change
            self._after_event(kpi, event, now[0], now[1])
        return outcome

    def _first_seen_in_event(self, event: MailboxEvent, info: MessageInfo) -> MessageKpi:
        priority = priority_label(info.priority)
        if event.event_type is EventType.NEW_MESSAGE:
            self.received[msg_type_label(info.msg_type), priority] += 1
            arrival = (info.receive_time or event.event_time).timestamp()
            return MessageKpi(priority, arrival, _INBOX)
        # a Notifier latest-status event after downtime: its arrival is not in the log
        self.first_seen["restatement"] += 1
        return MessageKpi(priority, None, _INBOX)

    def _after_event(
        self, kpi: MessageKpi, event: MailboxEvent, folder: Folder, read: bool
    ) -> None:
        if read and not kpi.heard:
            kpi.heard = True
            if kpi.arrival is not None and event.event_type in _READ_ASSERTIONS:
                waited = max(0.0, event.event_time.timestamp() - kpi.arrival)
                self.time_to_first_listen[kpi.priority].observe(waited)
            else:
                self.first_listen_unknown[kpi.priority] += 1
        if folder is not _INBOX and kpi.folder is _INBOX:
            self._left_inbox(kpi, read)
        kpi.folder = folder

    def _left_inbox(self, kpi: MessageKpi, read: bool) -> None:
        if not read and not kpi.heard and not kpi.deleted_unheard:
            kpi.deleted_unheard = True
            self.deleted_unheard[kpi.priority] += 1

    # -- snapshots ------------------------------------------------------------------------------

    def _apply_snapshot(self, snapshot: MailboxSnapshot) -> Outcome:
        outcome = self.projection.apply(snapshot)
        if outcome is not Outcome.APPLIED:
            return outcome
        state = self.projection.get(snapshot.mailbox_id)
        assert state is not None
        kpis = self.messages.setdefault(snapshot.mailbox_id, {})
        listed = _listed(snapshot.inbox, snapshot.deleted)
        for message_id in [mid for mid in kpis if mid not in state.messages]:
            # dropped by the snapshot: it left both folders while no one listened
            self._left_inbox(kpis.pop(message_id), read=False)
        for message_id, message in state.messages.items():
            kpi = kpis.get(message_id)
            if kpi is None:
                entry = listed.get(message_id)
                kpi = kpis[message_id] = MessageKpi(
                    priority_label(entry.priority if entry else None), None, message.folder
                )
                self.first_seen["snapshot"] += 1
            if message.read and not kpi.heard:  # first read only visible here: time unknown
                kpi.heard = True
                self.first_listen_unknown[kpi.priority] += 1
            if message.folder is not _INBOX and kpi.folder is _INBOX:
                self._left_inbox(kpi, message.read)
            kpi.folder = message.folder
        return outcome

    # -- reading --------------------------------------------------------------------------------

    def summary(self, now: float) -> dict[str, Any]:
        """Every KPI as of `now`, as plain data (JSON): what the demo prints and tests compare
        with the simulator's `/_sim/kpi-truth`. Histograms as `{count, sum, buckets}` with
        per-bucket (not cumulative) counts, the last above the largest bound."""
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
            kpis = self.messages.get(mailbox_id, {})
            count, oldest, oldest_urgent, blind = _unread(state, kpis)
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


def _unread(
    state: MailboxState, kpis: dict[str, MessageKpi]
) -> tuple[int, float | None, float | None, bool]:
    """Unread Inbox messages of a mailbox: how many, the oldest known arrival, the oldest known
    urgent arrival, and whether any has an unknown arrival (then the oldest is unknown)."""
    count, oldest, oldest_urgent, blind = 0, None, None, False
    for message_id, message in state.messages.items():
        if message.folder is not _INBOX or message.read:
            continue
        count += 1
        kpi = kpis.get(message_id)
        arrival = kpi.arrival if kpi is not None else None
        if arrival is None:
            blind = True
            continue
        oldest = arrival if oldest is None else min(oldest, arrival)
        if kpi is not None and kpi.priority == "urgent":
            oldest_urgent = arrival if oldest_urgent is None else min(oldest_urgent, arrival)
    return count, oldest, oldest_urgent, blind


def _placement(state: MailboxState | None, message_id: str) -> tuple[Folder, bool] | None:
    message = state.messages.get(message_id) if state is not None else None
    return None if message is None else (message.folder, message.read)


def _listed(
    inbox: Iterable[SnapshotMessage], deleted: Iterable[SnapshotMessage]
) -> dict[str, SnapshotMessage]:
    listed = {bare_message_id(m.message_id): m for m in inbox}
    listed.update((bare_message_id(m.message_id), m) for m in deleted)
    return listed
