"""Per-mailbox folder state from the event log (docs/design.md §4): a pure state machine, no I/O.

Events are *state assertions* about messages, applied per mailbox in USN order:

- An event whose USN is lower than the message's USN is STALE and changes nothing (a late repeat
  must not roll state back). An EventType already applied to the message at its USN is a DUPLICATE.
- Events sharing a USN are one change (the vendor's delete, undelete and hard-delete pairs). The
  message remembers its state *before* that change (`base_folder`, `base_read`) and the set of
  EventTypes applied at the USN, and its state is always `resolve(base, types)`. So the events of a
  change commute and repeat harmlessly by construction, whatever order they arrive in.
- `resolve` (per message): NEW/SAVED/UNREAD and DELETED_MESSAGE_UNDELETE assert "in Inbox";
  DELETED_MESSAGE_CREATE/READ/UNREAD assert "in Deleted". Asserting one folder takes the message
  out of the other: a message is in one folder (this is what makes the Notifier's after-downtime
  "latest status" events land right). DELETED_MESSAGE leaves Inbox; DELETED_MESSAGE_DELETE and
  _UNDELETE leave Deleted, and DELETED_MESSAGE_DELETE without an Inbox assertion in the same change
  also leaves Inbox: it is a hard delete (an undelete always carries its Inbox event at the same
  USN). Leaving beats arriving within one change (hard delete sent as one change ends gone); if
  both folders are asserted, Deleted wins. The read flag comes from the assertions about the folder
  the message ends in (SAVED/…_READ read; NEW/UNREAD/…_UNREAD unread, unread wins a conflict);
  DELETED_MESSAGE_CREATE and _UNDELETE keep the known flag (unread for a message never seen).
- Events about messages never seen are applied (after Notifier downtime only the latest status of
  each message comes). A message in neither folder is kept as a GONE tombstone with its USN.
- A snapshot at USN S is the server's truth as of S: messages changed after S keep their state,
  every other listed message takes the listed folder and read flag at USN S, and every other
  message is dropped. A message changed after S whose read flag was last asserted first-hand at
  or before S (`read_known_usn`) takes the listed flag, though: its later changes kept the flag
  (e.g. a delete), so the flag is still what it was at S, which the listing shows, while the
  projection's own flag may predate a gap (the message was read while no one listened, then
  deleted just after the repair read S). Then S becomes the mailbox's
  `snapshot_usn`: every event at or below it is STALE, which keeps dropped messages dropped (so
  snapshots also compact tombstones). An older snapshot than the last applied one is STALE, the
  same one again a DUPLICATE.

The mailbox USN is the highest USN applied.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest import speedups
from ingest.events import (
    EventType,
    Folder,
    MailboxEvent,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageInfo,
    MessageStateRecord,
    Outcome,
    SnapshotMessage,
    bare_message_id,
)

# The members as plain globals for the hot paths: `Outcome.APPLIED` is a lookup through the enum
# machinery, ≈ 0.15 µs each on the reference machine, several per event.
_APPLIED, _DUPLICATE, _STALE = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE


# EventType → the read flag it asserts (None: keeps the known flag)
_TO_INBOX: dict[EventType, bool | None] = {
    EventType.NEW_MESSAGE: False,
    EventType.SAVED_MESSAGE: True,
    EventType.UNREAD_MESSAGE: False,
    EventType.DELETED_MESSAGE_UNDELETE: None,
}
_TO_DELETED: dict[EventType, bool | None] = {
    EventType.DELETED_MESSAGE_CREATE: None,
    EventType.DELETED_MESSAGE_READ: True,
    EventType.DELETED_MESSAGE_UNREAD: False,
}
_LEAVE_DELETED = frozenset({EventType.DELETED_MESSAGE_DELETE, EventType.DELETED_MESSAGE_UNDELETE})


def resolve(
    base_folder: Folder, base_read: bool, applied: Iterable[EventType]
) -> tuple[Folder, bool]:
    """Folder and read flag of a message after one change (all events at one USN), given its
    folder and read flag before the change. Order-free: the change is a set of EventTypes."""
    folder, read, _ = _resolve_change(base_folder, base_read, frozenset(applied))
    return folder, read


def _resolve_change(
    base_folder: Folder, base_read: bool, types: frozenset[EventType]
) -> tuple[Folder, bool, bool]:
    """`resolve`, and whether the change asserted the read flag (else it kept `base_read`)."""
    to_inbox = [_TO_INBOX[t] for t in types if t in _TO_INBOX]
    to_deleted = [_TO_DELETED[t] for t in types if t in _TO_DELETED]
    in_inbox = bool(to_inbox) or (base_folder is Folder.INBOX and not to_deleted)
    in_deleted = bool(to_deleted) or (base_folder is Folder.DELETED and not to_inbox)
    hard_delete = EventType.DELETED_MESSAGE_DELETE in types and not to_inbox
    if EventType.DELETED_MESSAGE in types or hard_delete:
        in_inbox = False
    if not types.isdisjoint(_LEAVE_DELETED):
        in_deleted = False
    if in_deleted:
        folder, asserted = Folder.DELETED, to_deleted
    elif in_inbox:
        folder, asserted = Folder.INBOX, to_inbox
    else:
        folder, asserted = Folder.GONE, to_inbox + to_deleted
    flags = [flag for flag in asserted if flag is not None]
    return folder, (all(flags) if flags else base_read), bool(flags)


_ALONE = {t: frozenset((t,)) for t in EventType}
"""The change made of one EventType (shared: frozensets are immutable)."""
_RESOLVED: dict[tuple[Folder, bool, frozenset[EventType]], tuple[Folder, bool, bool]] = {}
"""`resolve`'s answers: at most 3 * 2 * 2**9 of them, and the fold asks for the same few a million
times (the dict lookup is a tenth of resolving again)."""


def _memoised_resolve(
    base_folder: Folder, base_read: bool, applied: frozenset[EventType]
) -> tuple[Folder, bool, bool]:
    key = (base_folder, base_read, applied)
    answer = _RESOLVED.get(key)
    if answer is None:
        answer = _RESOLVED[key] = _resolve_change(base_folder, base_read, applied)
    return answer


_resolved = _memoised_resolve if speedups.ENABLED else _resolve_change


@dataclass(slots=True)
class MessageState:
    """One message of a projected mailbox. A fresh one has never been seen (USN -1)."""

    folder: Folder = Folder.GONE
    read: bool = False
    usn: int = -1
    applied: frozenset[EventType] = frozenset()
    """EventTypes applied at `usn`."""
    base_folder: Folder = Folder.GONE
    base_read: bool = False
    base_read_usn: int = -1
    """USN at which `base_read` was last asserted first-hand (an event saying read or unread, or
    a listing); -1: never, `base_read` is the default."""
    read_asserted: bool = field(default=False, compare=False, repr=False)
    """Whether the change at `usn` said read or unread: derived from the above (not stored), kept
    to spare a `resolve` lookup per event."""
    caller_ani: str | None = None
    sender: str | None = None
    msg_type: str | None = None
    priority: str | None = None
    receive_time: dt.datetime | None = None
    receive_time_raw: str | None = None

    def apply(self, event_type: EventType, usn: int) -> Outcome:
        if usn < self.usn:
            return _STALE
        if usn == self.usn:
            applied = self.applied
            if event_type in applied:
                return _DUPLICATE
            applied = self.applied = applied | {event_type}
        else:
            if self.read_asserted:
                self.base_read_usn = self.usn
            self.base_folder, self.base_read = self.folder, self.read
            applied = self.applied = _ALONE[event_type]
            self.usn = usn
        self.folder, self.read, self.read_asserted = _resolved(
            self.base_folder, self.base_read, applied
        )
        return _APPLIED

    def take_info(self, info: MessageInfo) -> None:
        """Remember what the event says about the message (present fields win)."""
        self.caller_ani = info.caller_ani or self.caller_ani
        self.sender = info.sender or self.sender
        self.msg_type = info.msg_type or self.msg_type
        self.priority = info.priority or self.priority
        self.receive_time = info.receive_time or self.receive_time
        self.receive_time_raw = info.receive_time_raw or self.receive_time_raw

    def read_known_usn(self) -> int:
        """USN at which the read flag was last asserted first-hand: the latest change if it said
        read or unread, else whatever its base flag came from."""
        return self.usn if self.read_asserted else self.base_read_usn

    def learn_read(self, read: bool, usn: int) -> None:
        """The read flag the message had before its latest change, from a listing at `usn`."""
        self.base_read, self.base_read_usn = read, usn
        self.folder, self.read, _ = _resolved(self.base_folder, self.base_read, self.applied)

    def take_listing(self, folder: Folder, listed: SnapshotMessage, usn: int) -> None:
        self.folder = self.base_folder = folder
        self.read = self.base_read = listed.read
        self.usn = self.base_read_usn = usn
        self.applied = frozenset()
        self.read_asserted = False
        self.caller_ani = listed.caller_id or self.caller_ani
        self.sender = listed.sender or self.sender
        self.msg_type = listed.msg_type or self.msg_type
        self.priority = listed.priority or self.priority
        self.receive_time = listed.arrival_time or self.receive_time

    def to_json(self, detail: bool = False) -> dict[str, Any]:
        if not detail:
            return {"read": self.read}
        return {
            "read": self.read,
            "usn": self.usn,
            "caller_ani": self.caller_ani,
            "sender": self.sender,
            "msg_type": self.msg_type,
            "priority": self.priority,
            "receive_time": self.receive_time.isoformat() if self.receive_time else None,
            "receive_time_raw": self.receive_time_raw,
        }

    def to_record(self, message_id: str) -> MessageStateRecord:
        return MessageStateRecord(
            message_id=message_id,
            folder=self.folder,
            read=self.read,
            usn=self.usn,
            applied=tuple(sorted(self.applied)),
            base_folder=self.base_folder,
            base_read=self.base_read,
            base_read_usn=self.base_read_usn,
            caller_ani=self.caller_ani,
            sender=self.sender,
            msg_type=self.msg_type,
            priority=self.priority,
            receive_time=self.receive_time,
            receive_time_raw=self.receive_time_raw,
        )

    @classmethod
    def from_record(cls, record: MessageStateRecord) -> MessageState:
        applied = frozenset(record.applied)
        _, _, read_asserted = _resolved(record.base_folder, record.base_read, applied)
        return cls(
            folder=record.folder,
            read=record.read,
            usn=record.usn,
            applied=applied,
            base_folder=record.base_folder,
            base_read=record.base_read,
            base_read_usn=record.base_read_usn,
            read_asserted=read_asserted,
            caller_ani=record.caller_ani,
            sender=record.sender,
            msg_type=record.msg_type,
            priority=record.priority,
            receive_time=record.receive_time,
            receive_time_raw=record.receive_time_raw,
        )


@dataclass(slots=True)
class MailboxState:
    """The folder state of one mailbox, with counters of what was applied."""

    mailbox_id: str
    usn: int = 0
    snapshot_usn: int = -1
    updated_at: dt.datetime | None = None
    messages: dict[str, MessageState] = field(default_factory=dict)
    events_applied: int = 0
    duplicates: int = 0
    stale: int = 0
    snapshots_applied: int = 0

    def apply(self, record: MailboxEvent | MailboxSnapshot) -> Outcome:
        if isinstance(record, MailboxSnapshot):
            return self.apply_snapshot(record)
        return self.apply_event(record)

    def apply_event(self, event: MailboxEvent) -> Outcome:
        outcome = _STALE
        usn = event.usn
        if usn > self.snapshot_usn:
            messages = event.messages
            if len(messages) == 1:  # the usual event: one message, no set of outcomes to build
                outcome = self._apply_to_message(event, messages[0])
            else:
                outcomes = {self._apply_to_message(event, info) for info in messages}
                if _APPLIED in outcomes:
                    outcome = _APPLIED
                elif outcomes == {_DUPLICATE}:
                    outcome = _DUPLICATE
        if outcome is _APPLIED:
            self.events_applied += 1
            self._advance(usn, event.event_time)
        elif outcome is _DUPLICATE:
            self.duplicates += 1
        else:
            self.stale += 1
        return outcome

    def _apply_to_message(self, event: MailboxEvent, info: MessageInfo) -> Outcome:
        message = self.messages.get(info.message_id)
        if message is None:  # never seen: nothing can be stale or duplicate yet
            message = self.messages[info.message_id] = MessageState()
        outcome = message.apply(event.event_type, event.usn)
        if outcome is _APPLIED:
            message.take_info(info)
        return outcome

    def apply_snapshot(self, snapshot: MailboxSnapshot) -> Outcome:
        if snapshot.usn < self.snapshot_usn:
            self.stale += 1
            return Outcome.STALE
        if snapshot.usn == self.snapshot_usn:
            self.duplicates += 1
            return Outcome.DUPLICATE
        listed: dict[str, tuple[Folder, SnapshotMessage]] = {}
        for folder, listing in ((Folder.INBOX, snapshot.inbox), (Folder.DELETED, snapshot.deleted)):
            for entry in listing:  # listed in both (a race in the listing): Deleted wins
                listed[bare_message_id(entry.message_id)] = (folder, entry)
        for message_id, message in list(self.messages.items()):
            if message.usn <= snapshot.usn and message_id not in listed:
                del self.messages[message_id]
        for message_id, (folder, entry) in listed.items():
            message = self.messages.setdefault(message_id, MessageState())
            if message.usn <= snapshot.usn:
                message.take_listing(folder, entry, snapshot.usn)
            elif message.read_known_usn() <= snapshot.usn:  # no event after S said read/unread
                message.learn_read(entry.read, snapshot.usn)
        self.snapshot_usn = snapshot.usn
        self.snapshots_applied += 1
        self._advance(snapshot.usn, snapshot.taken_at)
        return Outcome.APPLIED

    def _advance(self, usn: int, moment: dt.datetime) -> None:
        self.usn = max(self.usn, usn)
        updated_at = self.updated_at
        # `is`: decoded times are shared objects, and comparing aware datetimes is not cheap
        if updated_at is None or (moment is not updated_at and moment > updated_at):
            self.updated_at = moment

    def folder(self, folder: Folder) -> dict[str, MessageState]:
        """The messages now in `folder` (GONE: the tombstones), by message id."""
        return {mid: m for mid, m in self.messages.items() if m.folder is folder}

    def to_json(self, detail: bool = False) -> dict[str, Any]:
        """`{"inbox": {id: {"read": bool}}, "deleted": {…}, "usn": int}` (docs/topics.md);
        `detail` adds message info and USNs, the tombstones (`gone`) and the counters."""
        folders: dict[Folder, dict[str, Any]] = {folder: {} for folder in Folder}
        for message_id in sorted(self.messages):
            message = self.messages[message_id]
            folders[message.folder][message_id] = message.to_json(detail)
        result: dict[str, Any] = {
            "inbox": folders[Folder.INBOX],
            "deleted": folders[Folder.DELETED],
            "usn": self.usn,
        }
        if detail:
            result["gone"] = folders[Folder.GONE]
            result["snapshot_usn"] = self.snapshot_usn
            result["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
            result["counters"] = {
                "events_applied": self.events_applied,
                "duplicates": self.duplicates,
                "stale": self.stale,
                "snapshots_applied": self.snapshots_applied,
            }
        return result

    def to_record(self) -> MailboxStateRecord:
        return MailboxStateRecord(
            mailbox_id=self.mailbox_id,
            usn=self.usn,
            messages=tuple(self.messages[mid].to_record(mid) for mid in sorted(self.messages)),
            snapshot_usn=self.snapshot_usn,
            updated_at=self.updated_at,
            events_applied=self.events_applied,
            duplicates=self.duplicates,
            stale=self.stale,
            snapshots_applied=self.snapshots_applied,
        )

    @classmethod
    def from_record(cls, record: MailboxStateRecord) -> MailboxState:
        return cls(
            mailbox_id=record.mailbox_id,
            usn=record.usn,
            snapshot_usn=record.snapshot_usn,
            updated_at=record.updated_at,
            messages={m.message_id: MessageState.from_record(m) for m in record.messages},
            events_applied=record.events_applied,
            duplicates=record.duplicates,
            stale=record.stale,
            snapshots_applied=record.snapshots_applied,
        )


class Projection:
    """The folder state of every mailbox seen, built by applying records in log order."""

    __slots__ = ("mailboxes",)

    def __init__(self) -> None:
        self.mailboxes: dict[str, MailboxState] = {}

    def apply(self, record: MailboxEvent | MailboxSnapshot) -> Outcome:
        state = self.mailboxes.get(record.mailbox_id)
        if state is None:
            state = self.mailboxes[record.mailbox_id] = MailboxState(record.mailbox_id)
        if type(record) is MailboxEvent:  # the hot path of a replay: one call less
            return state.apply_event(record)
        return state.apply(record)

    def get(self, mailbox_id: str) -> MailboxState | None:
        return self.mailboxes.get(mailbox_id)

    def load(self, record: MailboxStateRecord) -> MailboxState:
        """Restore one mailbox from the state topic, replacing what was projected for it."""
        state = self.mailboxes[record.mailbox_id] = MailboxState.from_record(record)
        return state

    def to_json(self, detail: bool = False) -> dict[str, Any]:
        """`{"<MailboxId>": MailboxState.to_json(), …}`: the `ingest fold` output."""
        return {mid: self.mailboxes[mid].to_json(detail) for mid in sorted(self.mailboxes)}


def diff_states(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Differences between two fold-format states (folder membership, read flags, USN), one line
    each, for comparing a projection with the simulator's truth. A mailbox missing on one side
    counts as an empty mailbox at USN 0. Empty list: equal."""
    problems = []
    for mailbox_id in sorted(set(expected) | set(actual)):
        want, got = expected.get(mailbox_id) or {}, actual.get(mailbox_id) or {}
        if want.get("usn", 0) != got.get("usn", 0):
            problems.append(
                f"{mailbox_id}: usn expected {want.get('usn', 0)}, actual {got.get('usn', 0)}"
            )
        want_messages, got_messages = _placements(want), _placements(got)
        for message_id in sorted(set(want_messages) | set(got_messages)):
            wanted, found = want_messages.get(message_id, []), got_messages.get(message_id, [])
            if wanted != found:
                problems.append(
                    f"{mailbox_id}: message {message_id} expected {_describe(wanted)}, "
                    f"actual {_describe(found)}"
                )
    return problems


def _placements(mailbox: Mapping[str, Any]) -> dict[str, list[str]]:
    """message id → sorted ["inbox read", …] (a list: a broken state may list it twice)."""
    placements: dict[str, list[str]] = {}
    for folder in ("inbox", "deleted"):
        for message_id, entry in (mailbox.get(folder) or {}).items():
            read = entry.get("read") if isinstance(entry, Mapping) else None
            flag = "read" if read is True else "unread" if read is False else f"read={read!r}"
            placements.setdefault(message_id, []).append(f"{folder} {flag}")
    return {message_id: sorted(where) for message_id, where in placements.items()}


def _describe(placement: list[str]) -> str:
    return " and ".join(placement) if placement else "absent"
