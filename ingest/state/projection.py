"""Per-mailbox folder state from the event log (docs/design.md §4): a pure state machine, no I/O.

The state of a mailbox is a function of the *set* of its records, not of their order: whatever
order they arrive in, it is the state that applying them in USN order gives (the counters aside:
they say what each arrival did).

- Events sharing a USN are one change (the vendor's delete, undelete and hard-delete pairs): a
  set of EventTypes, applied as one. `resolve` (per message): NEW/SAVED/UNREAD and
  DELETED_MESSAGE_UNDELETE assert "in Inbox"; DELETED_MESSAGE_CREATE/READ/UNREAD assert "in
  Deleted". Asserting one folder takes the message out of the other: a message is in one folder
  (this is what makes the Notifier's after-downtime "latest status" events land right).
  DELETED_MESSAGE leaves Inbox; DELETED_MESSAGE_DELETE and _UNDELETE leave Deleted, and
  DELETED_MESSAGE_DELETE without an Inbox assertion in the same change also leaves Inbox: it is a
  hard delete (an undelete always carries its Inbox event at the same USN). Leaving beats arriving
  within one change (hard delete sent as one change ends gone); if both folders are asserted,
  Deleted wins. The read flag is what the change says about the folder the message ends in
  (SAVED/…_READ read; NEW/UNREAD/…_UNREAD unread, unread wins a conflict), else what it says
  about the other one (one change, one flag), else the flag before the change:
  DELETED_MESSAGE_CREATE and _UNDELETE carry it along (unread for a message never seen).
- A change with a *stating* EventType (NEW, SAVED, UNREAD, DELETED_MESSAGE_READ, _UNREAD: each
  names a folder and a flag) resolves to one state from every state before it, and stays so
  whatever else joins it at its USN. So a message keeps its changes since its latest stating one
  and no others (`earlier`, then the latest: `usn`, `applied`): an event older than that cannot
  matter and is STALE; one that lands among them is put in its place and the message re-folded;
  one already applied at its USN is a DUPLICATE. In the vendor's lifecycle a message keeps at most
  three changes (a stating one, the delete pair, the hard delete); one in the Inbox keeps one.
- A snapshot at USN S is the server's truth as of S: a change at S of every message. A listed
  message's state at S is the listed folder and flag, an unlisted one's is "absent". Changes at or
  below S are dropped, events at or below S are STALE whenever they arrive, and changes above S
  apply on top of the listed state (the message's `floor`) in USN order, whether they arrived
  before the snapshot or after it. A message with no change above S takes the listing, or is
  dropped (so snapshots also compact tombstones). Of two snapshots the higher USN wins; of two at
  the same USN the one taken later (`taken_at`); the same one again is a DUPLICATE.
- Events about messages never seen are applied (after Notifier downtime only the latest status of
  each message comes). A message in neither folder is kept as a GONE tombstone with its USN, so a
  late event cannot bring it back.
- Message info (caller, sender, times): an event at the message's latest USN overrides with the
  fields it has; an older one (late, or stale) only fills fields still empty.

The mailbox USN is the highest USN applied; `updated_at` the latest time of any of its records.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ingest import speedups
from ingest.events import (
    EventType,
    Folder,
    KeptChanges,
    MailboxEvent,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageChange,
    MessageInfo,
    MessageStateRecord,
    Outcome,
    SnapshotMessage,
    bare_message_id,
)

# The members as plain globals for the hot paths: `Outcome.APPLIED` is a lookup through the enum
# machinery, ≈ 0.15 µs each on the reference machine, several per event.
_APPLIED, _DUPLICATE, _STALE = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE
_GONE = Folder.GONE


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
STATING = frozenset(t for t, flag in (*_TO_INBOX.items(), *_TO_DELETED.items()) if flag is not None)
"""EventTypes that name both a folder and a read flag: a change with one of them resolves to one
state from every state before it (test_projection checks it for every change)."""

Change = tuple[int, frozenset[EventType]]
"""One change of a message: its USN and the EventTypes applied at it."""


def resolve(
    base_folder: Folder, base_read: bool, applied: Iterable[EventType]
) -> tuple[Folder, bool]:
    """Folder and read flag of a message after one change (all events at one USN), given its
    folder and read flag before the change. Order-free: the change is a set of EventTypes."""
    return _resolve_change(base_folder, base_read, frozenset(applied))


def _resolve_change(
    base_folder: Folder, base_read: bool, types: frozenset[EventType]
) -> tuple[Folder, bool]:
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
    # the folder it ends in first; else the change's other flag (a change says one flag): so a
    # change with a stating type never depends on the state before it, whatever joins it
    flags = [f for f in asserted if f is not None] or [
        f for f in (*to_inbox, *to_deleted) if f is not None
    ]
    return folder, (all(flags) if flags else base_read)


def is_stating(types: frozenset[EventType]) -> bool:
    """Whether a change resolves to the same state from every state before it."""
    return not types.isdisjoint(STATING)


def _joined_plain(types: frozenset[EventType], event_type: EventType) -> frozenset[EventType]:
    return types | {event_type}


_RESOLVED: dict[tuple[Folder, bool, frozenset[EventType]], tuple[Folder, bool]] = {}
"""`resolve`'s answers: at most 3 * 2 * 2**9 of them, and the fold asks for the same few a million
times (the dict lookup is a tenth of resolving again)."""
_STATING_SETS: dict[frozenset[EventType], bool] = {}
_SORTED: dict[frozenset[EventType], tuple[EventType, ...]] = {}
"""A change's EventTypes as the state record lists them (sorted), per change set."""
_JOINED: dict[tuple[frozenset[EventType], EventType], frozenset[EventType]] = {}
"""Change sets grown by one EventType, shared: a message holds one of ≤ 2**9 set objects, not a
copy of its own (and a frozenset caches its hash, which the lookups above reuse)."""


def _memoised_resolve(
    base_folder: Folder, base_read: bool, applied: frozenset[EventType]
) -> tuple[Folder, bool]:
    key = (base_folder, base_read, applied)
    answer = _RESOLVED.get(key)
    if answer is None:
        answer = _RESOLVED[key] = _resolve_change(base_folder, base_read, applied)
    return answer


def _memoised_stating(types: frozenset[EventType]) -> bool:
    answer = _STATING_SETS.get(types)
    if answer is None:
        answer = _STATING_SETS[types] = is_stating(types)
    return answer


def _memoised_sorted(types: frozenset[EventType]) -> tuple[EventType, ...]:
    answer = _SORTED.get(types)
    if answer is None:
        answer = _SORTED[types] = _sorted_plain(types)
    return answer


def _sorted_plain(types: frozenset[EventType]) -> tuple[EventType, ...]:
    return tuple(sorted(types))


def _memoised_join(types: frozenset[EventType], event_type: EventType) -> frozenset[EventType]:
    key = (types, event_type)
    joined = _JOINED.get(key)
    if joined is None:
        joined = _JOINED[key] = _interned(types | {event_type})
    return joined


_SHARED: dict[frozenset[EventType], frozenset[EventType]] = {}


def _interned(types: frozenset[EventType]) -> frozenset[EventType]:
    return _SHARED.setdefault(types, types) if speedups.ENABLED else types


_resolved: Callable[[Folder, bool, frozenset[EventType]], tuple[Folder, bool]]
_stating: Callable[[frozenset[EventType]], bool]
_joined: Callable[[frozenset[EventType], EventType], frozenset[EventType]]
_sorted: Callable[[frozenset[EventType]], tuple[EventType, ...]]
if speedups.ENABLED:
    _resolved, _stating = _memoised_resolve, _memoised_stating
    _joined, _sorted = _memoised_join, _memoised_sorted
else:
    _resolved, _stating, _joined, _sorted = (
        _resolve_change,
        is_stating,
        _joined_plain,
        _sorted_plain,
    )

_new_change = speedups.fast_constructor(MessageChange)
_new_kept = speedups.fast_constructor(KeptChanges)
"""The state records' parts, built for every kept message of every commit: without the frozen
dataclass's `__init__` (test_fast_constructor holds the two together)."""

_SOLO = {t: (_interned(frozenset((t,))), t in STATING) for t in EventType}
"""EventType → (the change made of it alone, whether it is stating): one lookup per event."""
_NOTHING: frozenset[EventType] = frozenset()
_UNLISTED: tuple[Folder, SnapshotMessage | None] = (Folder.GONE, None)
_usn_of = itemgetter(0)


@dataclass(slots=True)
class MessageState:
    """One message of a projected mailbox. A fresh one has never been seen (USN -1).

    Invariants: (`base_folder`, `base_read`) is the floor with the `earlier` changes applied, and
    (`folder`, `read`) that with `applied`; if a kept change is stating it is the first one.
    """

    folder: Folder = Folder.GONE
    read: bool = False
    usn: int = -1
    """USN of the latest change (of the listing that gave the state, if none came since)."""
    applied: frozenset[EventType] = _NOTHING
    """EventTypes applied at `usn`; empty: the state is the floor's (listed, or never seen)."""
    base_folder: Folder = Folder.GONE
    base_read: bool = False
    """Folder and read flag before the change at `usn`."""
    earlier: tuple[Change, ...] = ()
    """The changes before `usn` kept for late events to land among, oldest first: none if the
    latest change is stating, else back to the latest stating one or to the floor."""
    floor_folder: Folder = Folder.GONE
    floor_read: bool = False
    floor_usn: int = -1
    """The state the kept changes apply to, as of `floor_usn` (a listing; never seen: GONE,
    unread, -1): events at or below `floor_usn` are stale."""
    caller_ani: str | None = None
    sender: str | None = None
    msg_type: str | None = None
    priority: str | None = None
    receive_time: dt.datetime | None = None
    receive_time_raw: str | None = None

    def apply(self, event_type: EventType, usn: int) -> Outcome:
        if usn > self.usn:  # the usual case: a new latest change
            alone, stating = _SOLO[event_type]
            previous = self.applied
            if stating:
                if self.earlier:
                    self.earlier = ()
                if self.floor_usn != -1:
                    self._forget_floor()
            elif previous:  # the latest change becomes an earlier one, a stating one the first
                change = (self.usn, previous)
                if _stating(previous):
                    self.earlier = (change,)
                    self._forget_floor()
                else:
                    self.earlier = (*self.earlier, change)
            self.base_folder, self.base_read = self.folder, self.read
            self.applied, self.usn = alone, usn
            self.folder, self.read = _resolved(self.base_folder, self.base_read, alone)
            return _APPLIED
        applied = self.applied
        if usn == self.usn and applied:  # another event of the latest change
            if event_type in applied:
                return _DUPLICATE
            applied = self.applied = _joined(applied, event_type)
            if _stating(applied):
                self.earlier = ()
                self._forget_floor()
            self.folder, self.read = _resolved(self.base_folder, self.base_read, applied)
            return _APPLIED
        return self._apply_late(event_type, usn)

    def _apply_late(self, event_type: EventType, usn: int) -> Outcome:
        """An event older than the latest change: in its place among the kept ones, if it can
        matter at all."""
        applied = self.applied
        if not applied or usn <= self.floor_usn or _stating(applied):
            return _STALE
        changes = [*self.earlier, (self.usn, applied)]
        first_usn, first = changes[0]
        if usn < first_usn and _stating(first):
            return _STALE
        index = bisect_left(changes, usn, key=_usn_of)
        if changes[index][0] == usn:
            types = changes[index][1]
            if event_type in types:
                return _DUPLICATE
            changes[index] = (usn, _joined(types, event_type))
        else:
            changes.insert(index, (usn, _SOLO[event_type][0]))
        self._refold(changes)
        return _APPLIED

    def _refold(self, changes: list[Change]) -> None:
        """Set the state to the floor with `changes` (USN order, not empty) applied, keeping
        them from the latest stating one on."""
        for index in range(len(changes) - 1, -1, -1):
            if _stating(changes[index][1]):
                del changes[:index]
                self._forget_floor()
                break
        folder, read = self.floor_folder, self.floor_read
        for _, types in changes[:-1]:
            folder, read = _resolved(folder, read, types)
        self.earlier = tuple(changes[:-1])
        self.base_folder, self.base_read = folder, read
        self.usn, self.applied = changes[-1]
        self.folder, self.read = _resolved(folder, read, self.applied)

    def _forget_floor(self) -> None:
        """A stating change comes first: the floor cannot matter. Set to the default, so that
        two equal states are equal objects and write equal records."""
        self.floor_folder, self.floor_read, self.floor_usn = _GONE, False, -1

    def take_info(self, info: MessageInfo) -> None:
        """What the message's newest event says about it (present fields win)."""
        self.caller_ani = info.caller_ani or self.caller_ani
        self.sender = info.sender or self.sender
        self.msg_type = info.msg_type or self.msg_type
        self.priority = info.priority or self.priority
        self.receive_time = info.receive_time or self.receive_time
        self.receive_time_raw = info.receive_time_raw or self.receive_time_raw

    def fill_info(self, info: MessageInfo) -> None:
        """What an older event says about the message, where nothing newer said it."""
        self.caller_ani = self.caller_ani or info.caller_ani
        self.sender = self.sender or info.sender
        self.msg_type = self.msg_type or info.msg_type
        self.priority = self.priority or info.priority
        self.receive_time = self.receive_time or info.receive_time
        self.receive_time_raw = self.receive_time_raw or info.receive_time_raw

    def take_listing(self, folder: Folder, listed: SnapshotMessage, usn: int) -> None:
        """No change after the snapshot at `usn`: the listed state is the message's."""
        self.folder = self.base_folder = self.floor_folder = folder
        self.read = self.base_read = self.floor_read = listed.read
        self.usn = self.floor_usn = usn
        self.applied, self.earlier = _NOTHING, ()
        self.caller_ani = listed.caller_id or self.caller_ani
        self.sender = listed.sender or self.sender
        self.msg_type = listed.msg_type or self.msg_type
        self.priority = listed.priority or self.priority
        self.receive_time = listed.arrival_time or self.receive_time

    def rebase(self, folder: Folder, listed: SnapshotMessage | None, usn: int) -> None:
        """Changed after the snapshot at `usn`: those changes apply to the listed state (not
        listed: absent), the older ones are dropped."""
        if usn >= self.floor_usn:  # not older than what the kept changes apply to
            self.floor_folder, self.floor_read = (folder, listed.read) if listed else (_GONE, False)
            self.floor_usn = usn
        self._refold([c for c in (*self.earlier, (self.usn, self.applied)) if c[0] > usn])
        if listed is not None:
            self.caller_ani = self.caller_ani or listed.caller_id
            self.sender = self.sender or listed.sender
            self.msg_type = self.msg_type or listed.msg_type
            self.priority = self.priority or listed.priority
            self.receive_time = self.receive_time or listed.arrival_time

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
        earlier, applied = self.earlier, self.applied
        keeps = earlier or (applied and not _stating(applied))
        return MessageStateRecord(
            message_id=message_id,
            folder=self.folder,
            read=self.read,
            usn=self.usn,
            applied=_sorted(applied),
            base_folder=self.base_folder,
            base_read=self.base_read,
            caller_ani=self.caller_ani,
            sender=self.sender,
            msg_type=self.msg_type,
            priority=self.priority,
            receive_time=self.receive_time,
            receive_time_raw=self.receive_time_raw,
            # None when the base and USN say it all (`from_record`): most messages
            kept=self._kept() if keeps else None,
        )

    def _kept(self) -> KeptChanges:
        return _new_kept(
            tuple(_new_change(usn, _sorted(types)) for usn, types in self.earlier),
            self.floor_folder,
            self.floor_read,
            self.floor_usn,
        )

    @classmethod
    def from_record(cls, record: MessageStateRecord) -> MessageState:
        state = cls(
            folder=record.folder,
            read=record.read,
            usn=record.usn,
            applied=_interned(frozenset(record.applied)),
            base_folder=record.base_folder,
            base_read=record.base_read,
            caller_ani=record.caller_ani,
            sender=record.sender,
            msg_type=record.msg_type,
            priority=record.priority,
            receive_time=record.receive_time,
            receive_time_raw=record.receive_time_raw,
        )
        kept = record.kept
        if kept is not None:
            state.earlier = tuple((c.usn, _interned(frozenset(c.applied))) for c in kept.earlier)
            state.floor_folder, state.floor_read = kept.floor_folder, kept.floor_read
            state.floor_usn = kept.floor_usn
        elif not state.applied:  # the state is a listing's
            state.floor_folder, state.floor_read, state.floor_usn = (
                state.folder,
                state.read,
                state.usn,
            )
        elif not _stating(state.applied):
            # only from a record written before v3: the base sums up everything before the
            # latest change, so only events from its USN on can still be placed
            state.floor_folder, state.floor_read = state.base_folder, state.base_read
            state.floor_usn = state.usn - 1
        return state


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
    snapshot_taken_at: dt.datetime | None = None
    """When the snapshot at `snapshot_usn` was taken: of two at one USN the later one wins."""

    def apply(self, record: MailboxEvent | MailboxSnapshot) -> Outcome:
        if isinstance(record, MailboxSnapshot):
            return self.apply_snapshot(record)
        return self.apply_event(record)

    def apply_event(self, event: MailboxEvent) -> Outcome:
        outcome = _STALE
        usn = event.usn
        messages = event.messages
        if usn > self.snapshot_usn:
            if len(messages) == 1:  # the usual event: one message, no set of outcomes to build
                outcome = self._apply_to_message(event, messages[0])
            else:
                outcomes = {self._apply_to_message(event, info) for info in messages}
                if _APPLIED in outcomes:
                    outcome = _APPLIED
                elif outcomes == {_DUPLICATE}:
                    outcome = _DUPLICATE
        else:  # in USN order it came before the snapshot: its info, not its change, still counts
            for info in messages:
                known = self.messages.get(info.message_id)
                if known is not None:
                    known.fill_info(info)
        if outcome is _APPLIED:
            self.events_applied += 1
            self.usn = max(self.usn, usn)
        elif outcome is _DUPLICATE:
            self.duplicates += 1
        else:
            self.stale += 1
        self._seen(event.event_time)
        return outcome

    def _apply_to_message(self, event: MailboxEvent, info: MessageInfo) -> Outcome:
        message = self.messages.get(info.message_id)
        if message is None:  # never seen: nothing can be stale or duplicate yet
            message = self.messages[info.message_id] = MessageState()
        outcome = message.apply(event.event_type, event.usn)
        if outcome is _APPLIED and event.usn == message.usn:
            message.take_info(info)
        elif outcome is not _DUPLICATE:
            message.fill_info(info)
        return outcome

    def apply_snapshot(self, snapshot: MailboxSnapshot) -> Outcome:
        self._seen(snapshot.taken_at)
        usn = snapshot.usn
        if usn < self.snapshot_usn:
            self.stale += 1
            return _STALE
        if usn == self.snapshot_usn and not _later(snapshot.taken_at, self.snapshot_taken_at):
            self.duplicates += 1
            return _DUPLICATE
        listed: dict[str, tuple[Folder, SnapshotMessage | None]] = {}
        for folder, listing in ((Folder.INBOX, snapshot.inbox), (Folder.DELETED, snapshot.deleted)):
            for item in listing:  # listed in both (a race in the listing): Deleted wins
                listed[bare_message_id(item.message_id)] = (folder, item)
        for message_id, message in list(self.messages.items()):
            folder, entry = listed.get(message_id, _UNLISTED)
            if message.usn > usn:
                message.rebase(folder, entry, usn)
            elif entry is None:
                del self.messages[message_id]
            else:
                message.take_listing(folder, entry, usn)
        for message_id, (folder, entry) in listed.items():
            if entry is not None and message_id not in self.messages:
                self.messages[message_id] = message = MessageState()
                message.take_listing(folder, entry, usn)
        self.snapshot_usn, self.snapshot_taken_at = usn, snapshot.taken_at
        self.snapshots_applied += 1
        self.usn = max(self.usn, usn)
        return _APPLIED

    def _seen(self, moment: dt.datetime) -> None:
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
            snapshot_taken_at=self.snapshot_taken_at,
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
            snapshot_taken_at=record.snapshot_taken_at,
        )


def _later(moment: dt.datetime, than: dt.datetime | None) -> bool:
    return than is None or moment > than


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
