"""State-topic bytes straight to a `MailboxState`, without the records in between (issue 20).

The reference mapping (`ingest.state.store.decode_state` with the speedups off) is
`MailboxState.from_record(decode_state_record(value))`: the log reader builds a
`MailboxStateRecord` with a `MessageStateRecord` per message, then `from_record` builds the
fold's objects from them — two object graphs per state, ≈ 40 % of `ingest replay --all --at T`
from checkpoints. `state_decoder()` reads the same single-object encoded values (state schema v3,
today's, and v2) field by field as the log reader's `_read_state` does, and builds the
`MessageState`s and the `MailboxState` as `from_record` does: the change sets as the fold's
interned frozensets, the kept changes and the floor (a v2 record's floor from its base).

It reads what the log reader's `_read_state` reads (any block layout, the value to its last
byte) and refuses what it refuses, raising one of `UNREADABLE`: the store then takes the
reference path, which reads the value or says what is wrong with it. It is bound to the schemas
and the constructors' field orders it was written for (`readable()`).
tests/unit/test_state_decoding.py holds its states equal to the reference's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from ingest.eventlog import wire

# the log reader's own primitives and checks: the one home of reading Avro (its caches too)
from ingest.eventlog.reader import (
    _MISREAD,
    _applied,
    _long,
    _optional_moment,
    _optional_string,
    _stamp,
    _states_readable,
    _string,
)
from ingest.events import EventType, Folder
from ingest.state.projection import MailboxState, MessageState, _interned, is_stating

StateDecoder = Callable[[bytes], MailboxState]

UNREADABLE = _MISREAD
"""What the reader raises for a value it does not read (the reference path decides)."""

_FOLDERS: tuple[Folder, ...] = tuple(Folder)
_NOTHING = _interned(frozenset())
_GONE = Folder.GONE
_STAMP = 6
"""Bytes of a timestamp-millis varint from mid-1970 to 2039 (the reader's `_stamp` key)."""
_CACHE_SIZE = 4096
"""Encoded `applied` arrays remembered: a writer writes ≤ 2**9 distinct ones (sorted, each type
once); the bound only keeps odd but readable values from growing the cache."""

_MESSAGE_FIELDS = (
    "folder",
    "read",
    "usn",
    "applied",
    "base_folder",
    "base_read",
    "earlier",
    "floor_folder",
    "floor_read",
    "floor_usn",
    "caller_ani",
    "sender",
    "msg_type",
    "priority",
    "receive_time",
    "receive_time_raw",
)
_MAILBOX_FIELDS = (
    "mailbox_id",
    "usn",
    "snapshot_usn",
    "updated_at",
    "messages",
    "events_applied",
    "duplicates",
    "stale",
    "snapshots_applied",
    "snapshot_taken_at",
)
"""The constructors' positional orders the reader calls them with."""


def readable() -> bool:
    """Whether the state schemas and the projection's classes are those it was written for."""
    return (
        _states_readable()
        and tuple(f.name for f in dataclasses.fields(MessageState)) == _MESSAGE_FIELDS
        and tuple(f.name for f in dataclasses.fields(MailboxState)) == _MAILBOX_FIELDS
    )


_changes: dict[bytes, tuple[frozenset[EventType], bool]] = {}
"""Encoded `applied` arrays (one block, then its end) → (the change, interned as `from_record`
interns it; whether it is stating)."""


def _change(data: bytes, pos: int) -> tuple[frozenset[EventType], bool, int]:
    """An `applied` array: the change set, whether it is stating, the position after it."""
    count = data[pos]
    if count == 0:  # no change: the state is a listing's
        return _NOTHING, False, pos + 1
    end = pos + 2 + (count >> 1)  # the usual layout: one block of one-byte symbols, then 0
    found = _changes.get(data[pos:end]) if not count & 0x81 else None
    if found is not None:
        return found[0], found[1], end
    types, after = _applied(data, pos)  # reads (and checks) any layout
    change = _interned(frozenset(types))
    if after == end and data[end - 1] == 0:  # the usual layout: remember it by its bytes
        if len(_changes) >= _CACHE_SIZE:
            _changes.clear()
        _changes[data[pos:end]] = (change, is_stating(change))
    return change, is_stating(change), after


def _folder(byte: int) -> Folder:
    if byte & 0x81:
        raise ValueError("enum index")
    return _FOLDERS[byte >> 1]


def _kept(
    data: bytes, pos: int
) -> tuple[tuple[tuple[int, frozenset[EventType]], ...], Folder, bool, int, int]:
    """A KeptChanges record: the earlier changes (any block layout), then the floor."""
    earlier: list[tuple[int, frozenset[EventType]]] = []
    count = data[pos]
    if count & 0x81:  # not the usual one-byte count: the general reading
        count, pos = _long(data, pos)
    else:
        count, pos = count >> 1, pos + 1
    while count:
        if count < 0:  # a block that gives its size in bytes too
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            usn, pos = _long(data, pos)
            change, _, pos = _change(data, pos)
            earlier.append((usn, change))
        if data[pos] == 0:  # the usual end: one block
            count, pos = 0, pos + 1
        else:
            count, pos = _long(data, pos)
    floor_folder = _folder(data[pos])
    floor_read = data[pos + 1]
    if floor_read > 1:
        raise ValueError("not a boolean")
    if data[pos + 2] == 1:  # floor_usn -1: a stating change first, or never seen
        floor_usn, pos = -1, pos + 3
    else:
        floor_usn, pos = _long(data, pos + 2)
    return tuple(earlier), floor_folder, floor_read == 1, floor_usn, pos


def _message(data: bytes, pos: int, v2: bool) -> tuple[str, MessageState, int]:  # noqa: PLR0912, PLR0915 - one straight line, inlined on purpose
    """One MessageState record, as `MessageState.from_record` makes it: its id, the state, the
    position after it."""
    size = data[pos]
    if size & 0x81:
        message_id, pos = _string(data, pos)
    else:  # the usual short id: its length in one byte
        start, pos = pos + 1, pos + 1 + (size >> 1)
        message_id = data[start:pos].decode()
    byte = data[pos]
    if byte & 0x81:
        raise ValueError("enum index")
    folder = _FOLDERS[byte >> 1]
    read = data[pos + 1]
    if read > 1:
        raise ValueError("not a boolean")
    pos += 2
    # the USN inline up to three bytes (below 2**20: most), else the reader's
    byte = data[pos]
    if byte < 0x80:
        usn, pos = (byte >> 1) ^ -(byte & 1), pos + 1
    elif (second := data[pos + 1]) < 0x80:
        n = byte & 0x7F | second << 7
        usn, pos = (n >> 1) ^ -(n & 1), pos + 2
    elif (third := data[pos + 2]) < 0x80:
        n = byte & 0x7F | (second & 0x7F) << 7 | third << 14
        usn, pos = (n >> 1) ^ -(n & 1), pos + 3
    else:
        usn, pos = _long(data, pos)
    applied, stating, pos = _change(data, pos)
    byte = data[pos]
    if byte & 0x81:
        raise ValueError("enum index")
    base_folder = _FOLDERS[byte >> 1]
    base_read = data[pos + 1]
    if base_read > 1:
        raise ValueError("not a boolean")
    pos += 2
    if data[pos] == 1:  # base_read_usn: -1 since v3, unread
        pos += 1
    else:
        _, pos = _long(data, pos)
    # the optional strings inline when present and short (nearly always), else the reader's
    caller_ani: str | None
    sender: str | None
    msg_type: str | None
    priority: str | None
    receive_time_raw: str | None
    if data[pos] == 2 and not (size := data[pos + 1]) & 0x81:
        start, pos = pos + 2, pos + 2 + (size >> 1)
        caller_ani = data[start:pos].decode()
    else:
        caller_ani, pos = _optional_string(data, pos)
    if data[pos] == 2 and not (size := data[pos + 1]) & 0x81:
        start, pos = pos + 2, pos + 2 + (size >> 1)
        sender = data[start:pos].decode()
    else:
        sender, pos = _optional_string(data, pos)
    if data[pos] == 2 and not (size := data[pos + 1]) & 0x81:
        start, pos = pos + 2, pos + 2 + (size >> 1)
        msg_type = data[start:pos].decode()
    else:
        msg_type, pos = _optional_string(data, pos)
    if data[pos] == 2 and not (size := data[pos + 1]) & 0x81:
        start, pos = pos + 2, pos + 2 + (size >> 1)
        priority = data[start:pos].decode()
    else:
        priority, pos = _optional_string(data, pos)
    receive_time: dt.datetime | None
    if data[pos] == 2 and pos + 1 + _STAMP <= len(data):
        receive_time, pos = _stamp(data, pos + 1)
    else:
        receive_time, pos = _optional_moment(data, pos)
    if data[pos] == 2 and not (size := data[pos + 1]) & 0x81:
        start, pos = pos + 2, pos + 2 + (size >> 1)
        receive_time_raw = data[start:pos].decode()
    else:
        receive_time_raw, pos = _optional_string(data, pos)
    earlier: tuple[tuple[int, frozenset[EventType]], ...] = ()
    floor_folder, floor_read, floor_usn = _GONE, False, -1
    kept = 0 if v2 else data[pos]  # v2 ends with receive_time_raw: it keeps nothing
    if kept == 2:
        earlier, floor_folder, floor_read, floor_usn, pos = _kept(data, pos + 1)
    elif kept:
        raise ValueError("bad union branch")
    else:  # most messages keep nothing: the floor follows from the rest, as in `from_record`
        if not v2:
            pos += 1
        if not applied:  # the state is a listing's
            floor_folder, floor_read, floor_usn = folder, read == 1, usn
        elif not stating:  # a record written before v3: the base sums up what came before
            floor_folder, floor_read, floor_usn = base_folder, base_read == 1, usn - 1
    state = MessageState(
        folder,
        read == 1,
        usn,
        applied,
        base_folder,
        base_read == 1,
        earlier,
        floor_folder,
        floor_read,
        floor_usn,
        caller_ani,
        sender,
        msg_type,
        priority,
        receive_time,
        receive_time_raw,
    )
    return message_id, state, pos


def _read(data: bytes, pos: int, v2: bool) -> MailboxState:
    """The body after the header, as mailbox_state.avsc (v3, or `v2`) orders it."""
    mailbox_id, pos = _string(data, pos)
    usn, pos = _long(data, pos)
    snapshot_usn, pos = _long(data, pos)
    updated_at, pos = _optional_moment(data, pos)
    messages: dict[str, MessageState] = {}
    count, pos = _long(data, pos)
    while count:
        if count < 0:  # a block that gives its size in bytes too
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            message_id, message, pos = _message(data, pos, v2)
            messages[message_id] = message  # a repeated id: the last one, as `from_record`
        count, pos = _long(data, pos)
    events_applied, pos = _long(data, pos)
    duplicates, pos = _long(data, pos)
    stale, pos = _long(data, pos)
    snapshots_applied, pos = _long(data, pos)
    snapshot_taken_at = None
    if not v2:
        snapshot_taken_at, pos = _optional_moment(data, pos)
    if pos != len(data):
        raise ValueError("not exactly one MailboxState")
    return MailboxState(
        mailbox_id,
        usn,
        snapshot_usn,
        updated_at,
        messages,
        events_applied,
        duplicates,
        stale,
        snapshots_applied,
        snapshot_taken_at,
    )


def state_decoder() -> StateDecoder | None:
    """The direct reader of single-object encoded states (v3 and v2), or None if the schemas or
    classes are not those it was written for (whatever `speedups.ENABLED` says: the store
    decides whether to use it, the tests compare it either way). It raises one of `UNREADABLE`
    for a value of another schema, or one it cannot read."""
    if not readable():
        return None
    start = wire.HEADER_SIZE
    v3, v2 = wire.header(wire.FAST_STATE_SCHEMA), wire.header(wire.FAST_STATE_SCHEMA_V2)

    def read(value: bytes) -> MailboxState:
        header = value[:start]
        if header == v3:
            return _read(value, start, False)
        if header == v2:
            return _read(value, start, True)
        raise ValueError("not a state schema the direct reader reads")

    return read
