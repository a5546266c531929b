"""Reading the events topic: its records decoded, fast, for the projector and replay (and the
mailbox states checkpoints hold: `decode_state_record`).

`decode_log_record(value)` returns the `MailboxEvent` or `MailboxSnapshot` a record of the events
topic holds, None for anything else (a dead letter or state record that does not belong there).
It is `ingest.eventlog.codec.decode` with one shortcut: records written with today's MailboxEvent or
MailboxSnapshot schema are read by straight-line decoders instead of fastavro's generic reader
plus the dict-to-dataclass step, which was most of the cost of folding the log (on the reference
machine ≈ 40 µs per event with fastavro, ≈ 9 µs here with the caches below; ≈ 0.4 ms per snapshot
of a few dozen messages, half that here). They mirror the codec's fast event *writer* and are
used only while the schemas have the fingerprints they were written for (the event decoder also
reads the first release of the MailboxEvent schema, so a log written before v2 folds as fast).
They read only the
canonical encoding a writer produces (short lengths, in-range values); anything else — something
they do not recognise, or cannot read to the last byte — goes to `codec.decode`, which decides
(and raises `DecodeError` for what nobody can read). Unit tests and hypothesis properties check
both paths give equal records, or both fail.

Both framings (ingest.eventlog.wire) are read: a Confluent-framed record's schema id is mapped to
its fingerprint by the `SchemaIds` given (cached: one dict lookup), and the same fast decoders
read its body, five bytes in instead of ten.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from prometheus_client import Counter

from ingest import speedups
from ingest.errors import DecodeError
from ingest.eventlog import codec, wire
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
    RepairReason,
    SnapshotMessage,
    UnparsedField,
)
from ingest.speedups import fast_constructor

_log = logging.getLogger(__name__)

_START = wire.HEADER_SIZE
_HEADER = wire.header(wire.FAST_EVENT_SCHEMA)
_CONFLUENT_START = wire.CONFLUENT_HEADER_SIZE
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLI = dt.timedelta(milliseconds=1)
_MISREAD = (IndexError, ValueError, UnicodeDecodeError, OverflowError)
"""How the readers fail on bytes they cannot read (then the codec judges them)."""


def decode_log_record(
    value: bytes, ids: codec.SchemaIds | None = None
) -> MailboxEvent | MailboxSnapshot | None:
    """The event or snapshot in `value`; None for another record type. Raises `DecodeError`.

    `ids` resolves the schema ids of Confluent-framed records (registry mode)."""
    reader, start = None, _START
    if value.startswith(_HEADER):  # today's events: nearly every record
        reader = _FAST_EVENT_READER
    elif value[:2] == wire.MAGIC:
        reader = _FAST.get(value[2:_START])
    elif value[:1] == wire.CONFLUENT_MAGIC and ids is not None and len(value) > _CONFLUENT_START:
        reader = _FAST.get(ids.fingerprint(int.from_bytes(value[1:_CONFLUENT_START], "big")))
        start = _CONFLUENT_START
    if reader is not None:
        try:
            return reader(value, start)
        except _MISREAD:
            pass  # let the codec say what is wrong with it
    record = codec.decode(value, ids)
    return record if isinstance(record, MailboxEvent | MailboxSnapshot) else None


def decode_consumed(
    value: bytes | None, ids: codec.SchemaIds | None, skipped: Counter
) -> MailboxEvent | MailboxSnapshot | None:
    """What a consumer of the events topic folds from `value`: the record, or None for a value
    it skips, counted in `skipped` by reason (`undecodable`, `unexpected_kind`). An undecodable
    value is logged and skipped, not raised: a poison record must not stop the projection of
    every other mailbox."""
    if value is None:
        skipped.labels("undecodable").inc()
        return None
    try:
        record = decode_log_record(value, ids)
    except DecodeError as e:
        _log.error("undecodable record on the events topic skipped: %s", e)
        skipped.labels("undecodable").inc()
        return None
    if record is None:
        skipped.labels("unexpected_kind").inc()
    return record


_TYPES: tuple[EventType, ...] = tuple(EventType)


# records built without the frozen __init__'s per-field object.__setattr__ (half the cost)
_MailboxEvent = fast_constructor(MailboxEvent)
_MessageInfo = fast_constructor(MessageInfo)
_SnapshotMessage = fast_constructor(SnapshotMessage)


def _events_readable() -> bool:
    symbols = codec.load_schema("mailbox_event.avsc")["fields"][2]["type"]["symbols"]
    return codec.fingerprint(MailboxEvent) == wire.FAST_EVENT_SCHEMA and symbols == [
        t.value for t in _TYPES
    ]


def _snapshots_readable() -> bool:
    return codec.fingerprint(MailboxSnapshot) == wire.FAST_SNAPSHOT_SCHEMA


_CACHE_SIZE = 65_536
"""Entries per cache below before it starts again: enough for the repeats close together in a
partition (the events of one message, of one second), small enough to stay in memory and to keep
a replay from living off repeats far apart."""

_moments: dict[int, dt.datetime] = {}
"""timestamp-millis → datetime; a dict hit costs a fraction of building the datetime."""


def _moment(millis: int) -> dt.datetime:
    moment = _moments.get(millis)
    if moment is None:
        if len(_moments) >= _CACHE_SIZE:
            _moments.clear()
        moment = _moments[millis] = _EPOCH + millis * _MILLI
    return moment


_STAMP = 6
"""Bytes of a timestamp-millis varint from mid-1970 to 2039 (zig-zag of 2³⁴ … 2⁴¹ - 1 ms)."""
_stamps: dict[bytes, dt.datetime] = {}
"""Such varints, as they are on the wire → datetime: EventTimes repeat (one-second resolution,
several events per change), and one dict lookup replaces a six-turn Python loop."""
_infos: dict[bytes, MessageInfo] = {}
"""Encoded MessageInfos → decoded: every event about a message repeats its MessageInfo (caller,
sender, type, priority, receive time), so most are found here by their bytes."""


# A key found in these caches was read in full before, to its exact length; the same bytes at
# another position read the same way, to the same end (a reader looks at nothing past what it
# consumes). So how a key is cut does not matter for correctness: a badly cut one just misses.

# The readers inline the usual case of each field — a string shorter than 64 bytes has its length
# in one byte, an optional field's branch is one byte — and call the general helpers for the rest.
# A position past the end is not checked at every field: positions only grow, so it surfaces as an
# IndexError or as the final `pos != len(data)`.


def _read_event(data: bytes, start: int = _START, v1: bool = False) -> MailboxEvent:  # noqa: PLR0912, PLR0915 - one straight line, inlined on purpose
    """The body after the header (`start` bytes), field by field as mailbox_event.avsc orders
    them; `v1`: as its first release did (event_time_raw and subscription_id plain strings, no
    `unparsed`)."""
    size = data[start]
    if size & 0x81:
        mailbox_id, pos = _string(data, start)
    else:
        pos = start + 1 + (size >> 1)
        mailbox_id = data[start + 1 : pos].decode()
    usn, pos = _long(data, pos)
    kind = data[pos]
    if kind & 0x81 or kind >= 2 * len(_TYPES):  # one byte, zig-zag, a known symbol
        raise ValueError("event type index")
    event_time, pos = _stamp(data, pos + 1)
    # v2: both optional strings, nearly always there (v1: plain strings, no union branch)
    event_time_raw: str | None
    if v1 or data[pos] == 2:
        at = pos if v1 else pos + 1
        size = data[at]
        if size & 0x81:
            event_time_raw, pos = _string(data, at)
        else:
            pos = at + 1 + (size >> 1)
            event_time_raw = data[at + 1 : pos].decode()
    else:  # null, or a bad branch (`_optional_string` says which)
        event_time_raw, pos = _optional_string(data, pos)
    subscription_id: str | None
    if v1 or data[pos] == 2:
        at = pos if v1 else pos + 1
        size = data[at]
        if size & 0x81:
            subscription_id, pos = _string(data, at)
        else:
            pos = at + 1 + (size >> 1)
            subscription_id = data[at + 1 : pos].decode()
    else:
        subscription_id, pos = _optional_string(data, pos)
    if data[pos] == 0:
        display_name: str | None = None
        pos += 1
    else:
        display_name, pos = _optional_string(data, pos)
    if data[pos] == 2:  # one block of one message: nearly every event
        info, pos = _message(data, pos + 1)
        messages: tuple[MessageInfo, ...] = (info,)
        if data[pos]:
            raise ValueError("one block of one message, then more")
        pos += 1
    else:
        messages, pos = _messages(data, pos)
    ingested_at, pos = _stamp(data, pos)
    if data[pos] == 0:
        source = None
        pos += 1
    else:
        source, pos = _optional_string(data, pos)
    unparsed: tuple[UnparsedField, ...] = ()
    if v1:
        pass  # v1 ends with the source
    elif data[pos] == 0:  # nearly always: no field the worker could not read
        pos += 1
    else:
        unparsed, pos = _unparsed(data, pos)
    if pos != len(data):
        raise ValueError("not exactly one MailboxEvent")
    return _MailboxEvent(
        mailbox_id,
        usn,
        _TYPES[kind >> 1],
        event_time,
        event_time_raw,
        subscription_id,
        messages,
        ingested_at,
        display_name,
        source,
        unparsed,
    )


def _read_event_v1(data: bytes, start: int = _START) -> MailboxEvent:
    return _read_event(data, start, v1=True)


def _unparsed(data: bytes, pos: int) -> tuple[tuple[UnparsedField, ...], int]:
    """The `unparsed` array in any block layout (rare: not worth a cache)."""
    fields = []
    count, pos = _long(data, pos)
    while count:
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            field, pos = _string(data, pos)
            raw, pos = _optional_string(data, pos)
            fields.append(UnparsedField(field, raw))
        count, pos = _long(data, pos)
    return tuple(fields), pos


def _stamp(data: bytes, pos: int) -> tuple[dt.datetime, int]:
    """A timestamp-millis."""
    end = pos + _STAMP
    key = data[pos:end]
    moment = _stamps.get(key)
    if moment is not None:
        return moment, end
    millis, end = _long(data, pos)
    moment = _moment(millis)
    if end - pos == _STAMP:
        if len(_stamps) >= _CACHE_SIZE:
            _stamps.clear()
        _stamps[key] = moment
    return moment, end


def _messages(data: bytes, pos: int) -> tuple[tuple[MessageInfo, ...], int]:
    """The MessageInfo array in any block layout."""
    messages = []
    count, pos = _long(data, pos)
    while count:
        if count < 0:  # a block that also gives its size in bytes, which we do not need
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            info, pos = _message(data, pos)
            messages.append(info)
        count, pos = _long(data, pos)
    return tuple(messages), pos


def _message(data: bytes, pos: int) -> tuple[MessageInfo, int]:
    """One MessageInfo: from the cache if its bytes were read before."""
    try:  # where it ends if every field has its usual size
        end = pos + 1 + (data[pos] >> 1)  # message_id
        for _ in range(4):  # caller_ani, sender, msg_type, priority
            end += 2 + (data[end + 1] >> 1) if data[end] else 1
        end += 1 + _STAMP if data[end] else 1  # receive_time
        end += 2 + (data[end + 1] >> 1) if data[end] else 1  # receive_time_raw
    except IndexError:  # an unusual size misled us
        end = pos
    info = _infos.get(data[pos:end])
    if info is not None:
        return info, end
    info, end = _read_message(data, pos)
    if len(_infos) >= _CACHE_SIZE:
        _infos.clear()
    _infos[data[pos:end]] = info
    return info, end


def _read_message(data: bytes, pos: int) -> tuple[MessageInfo, int]:
    message_id, pos = _string(data, pos)
    caller_ani, pos = _optional_string(data, pos)
    sender, pos = _optional_string(data, pos)
    msg_type, pos = _optional_string(data, pos)
    priority, pos = _optional_string(data, pos)
    receive_time, pos = _optional_moment(data, pos)
    receive_time_raw, pos = _optional_string(data, pos)
    info = _MessageInfo(
        message_id, caller_ani, sender, msg_type, priority, receive_time, receive_time_raw
    )
    return info, pos


def _read_snapshot(data: bytes, start: int = _START) -> MailboxSnapshot:
    """The body after the header, field by field as mailbox_snapshot.avsc orders them."""
    mailbox_id, pos = _string(data, start)
    usn, pos = _long(data, pos)
    millis, pos = _long(data, pos)
    reason, pos = _string(data, pos)
    inbox, pos = _listing(data, pos)
    deleted, pos = _listing(data, pos)
    source, pos = _optional_string(data, pos)
    if pos != len(data):
        raise ValueError("not exactly one MailboxSnapshot")
    return MailboxSnapshot(
        mailbox_id, usn, _moment(millis), RepairReason(reason), inbox, deleted, source
    )


def _listing(data: bytes, pos: int) -> tuple[tuple[SnapshotMessage, ...], int]:
    """A SnapshotMessage array in any block layout."""
    entries = []
    count, pos = _long(data, pos)
    while count:
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            message_id, pos = _string(data, pos)
            read = data[pos]
            if read > 1:
                raise ValueError("not a boolean")
            if data[pos + 1]:
                arrival_time, pos = _optional_moment(data, pos + 1)
            else:
                arrival_time, pos = None, pos + 2
            sender, pos = _optional_string(data, pos)
            caller_id, pos = _optional_string(data, pos)
            priority, pos = _optional_string(data, pos)
            msg_type, pos = _optional_string(data, pos)
            entries.append(
                _SnapshotMessage(
                    message_id, read == 1, arrival_time, sender, caller_id, priority, msg_type
                )
            )
        count, pos = _long(data, pos)
    return tuple(entries), pos


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro long: base-128 varint, then zig-zag; at most 64 bits, as every Avro reader reads."""
    byte = data[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    pos += 1
    n, shift = byte & 0x7F, 7
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise ValueError("varint longer than 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def _string(data: bytes, pos: int) -> tuple[str, int]:
    size = data[pos]
    if size & 0x81:  # negative, or a length of 64 bytes or more
        size, pos = _long(data, pos)
        if size < 0:
            raise ValueError("negative string length")
    else:
        size >>= 1
        pos += 1
    end = pos + size
    return data[pos:end].decode(), end


def _optional_string(data: bytes, pos: int) -> tuple[str | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:  # zig-zag 1: the second union branch
        raise ValueError("bad union branch")
    size = data[pos + 1]
    if size & 0x81:
        return _string(data, pos + 1)
    end = pos + 2 + (size >> 1)
    return data[pos + 2 : end].decode(), end


def _optional_moment(data: bytes, pos: int) -> tuple[dt.datetime | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise ValueError("bad union branch")
    millis, pos = _long(data, pos + 1)
    return _moment(millis), pos


# --- states (the checkpoints' entries) ------------------------------------------------------

_FOLDERS: tuple[Folder, ...] = tuple(Folder)
_MailboxStateRecord = fast_constructor(MailboxStateRecord)
_MessageStateRecord = fast_constructor(MessageStateRecord)
_KeptChanges = fast_constructor(KeptChanges)
_MessageChange = fast_constructor(MessageChange)
_applied_sets: dict[bytes, tuple[EventType, ...]] = {}
"""Encoded `applied` arrays → decoded: a handful of distinct ones (the EventTypes of one change)."""


def decode_state_record(value: bytes) -> MailboxStateRecord:
    """The MailboxState in a single-object encoded value (any released version). Raises
    `DecodeError`. Today's schema (v3) and v2 are read by a straight-line reader (a few times
    faster than fastavro plus the dict-to-dataclass step); anything else goes to `codec.decode`."""
    read = _FAST_STATE.get(value[2:_START]) if value[:2] == wire.MAGIC else None
    if read is not None:
        try:
            return read(value, _START)
        except _MISREAD:
            pass  # let the codec say what is wrong with it
    record = codec.decode(value)
    if not isinstance(record, MailboxStateRecord):
        raise DecodeError(f"a {type(record).__name__} record, not a MailboxState")
    return record


def _read_state(data: bytes, pos: int, v2: bool = False) -> MailboxStateRecord:
    """The body after the header, field by field as mailbox_state.avsc (v3) orders them; `v2`:
    as v2 did (no `kept` per message, no `snapshot_taken_at`: both read as their null default,
    as the codec's schema resolution does)."""
    mailbox_id, pos = _string(data, pos)
    usn, pos = _long(data, pos)
    snapshot_usn, pos = _long(data, pos)
    updated_at, pos = _optional_moment(data, pos)
    messages: list[MessageStateRecord] = []
    count, pos = _long(data, pos)
    while count:
        if count < 0:  # a block that gives its size in bytes too
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            message, pos = _read_message_state(data, pos, v2)
            messages.append(message)
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
    return _MailboxStateRecord(
        mailbox_id,
        usn,
        tuple(messages),
        snapshot_usn,
        updated_at,
        events_applied,
        duplicates,
        stale,
        snapshots_applied,
        snapshot_taken_at,
    )


def _read_state_v2(data: bytes, pos: int) -> MailboxStateRecord:
    return _read_state(data, pos, v2=True)


def _read_message_state(data: bytes, pos: int, v2: bool) -> tuple[MessageStateRecord, int]:
    size = data[pos]
    if size & 0x81:
        message_id, pos = _string(data, pos)
    else:  # the usual short id: its length in one byte
        start, pos = pos + 1, pos + 1 + (size >> 1)
        message_id = data[start:pos].decode()
    folder = _FOLDERS[_index(data[pos])]
    read = data[pos + 1]
    if read > 1:
        raise ValueError("not a boolean")
    usn, pos = _long(data, pos + 2)
    applied, pos = _applied(data, pos)
    base_folder = _FOLDERS[_index(data[pos])]
    base_read = data[pos + 1]
    if base_read > 1:
        raise ValueError("not a boolean")
    base_read_usn, pos = _long(data, pos + 2)
    # the message info: strings that repeat (senders, types), then the receive time
    caller_ani, pos = _optional_string(data, pos)
    sender, pos = _optional_string(data, pos)
    msg_type, pos = _optional_string(data, pos)
    priority, pos = _optional_string(data, pos)
    receive_time: dt.datetime | None
    if data[pos] == 2 and pos + 1 + _STAMP <= len(data):
        receive_time, pos = _stamp(data, pos + 1)
    else:
        receive_time, pos = _optional_moment(data, pos)
    receive_time_raw, pos = _optional_string(data, pos)
    kept: KeptChanges | None = None
    if v2:
        pass  # v2 ends with receive_time_raw
    elif data[pos] == 0:  # most messages keep nothing
        pos += 1
    elif data[pos] == 2:
        kept, pos = _kept(data, pos + 1)
    else:
        raise ValueError("bad union branch")
    message = _MessageStateRecord(
        message_id,
        folder,
        read == 1,
        usn,
        applied,
        base_folder,
        base_read == 1,
        base_read_usn,
        caller_ani,
        sender,
        msg_type,
        priority,
        receive_time,
        receive_time_raw,
        kept,
    )
    return message, pos


def _kept(data: bytes, pos: int) -> tuple[KeptChanges, int]:
    """A KeptChanges record: the earlier changes in any block layout, then the floor."""
    earlier: list[MessageChange] = []
    count, pos = _long(data, pos)
    while count:
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            usn, pos = _long(data, pos)
            applied, pos = _applied(data, pos)
            earlier.append(_MessageChange(usn, applied))
        count, pos = _long(data, pos)
    floor_folder = _FOLDERS[_index(data[pos])]
    floor_read = data[pos + 1]
    if floor_read > 1:
        raise ValueError("not a boolean")
    floor_usn, pos = _long(data, pos + 2)
    return _KeptChanges(tuple(earlier), floor_folder, floor_read == 1, floor_usn), pos


def _applied(data: bytes, pos: int) -> tuple[tuple[EventType, ...], int]:
    """An array of EventType symbols, in the one-block layout a writer uses (else the general
    way)."""
    count = data[pos]
    if not count & 0x81 and count:  # one block of fewer than 64 one-byte symbols, then 0
        end = pos + 1 + (count >> 1)
        if data[end] == 0:
            key = data[pos : end + 1]
            found = _applied_sets.get(key)
            if found is None:
                found = tuple(_TYPES[_index(b)] for b in key[1:-1])
                _applied_sets[key] = found
            return found, end + 1
    types: list[EventType] = []
    count, pos = _long(data, pos)
    while count:
        if count < 0:
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            index, pos = _long(data, pos)
            if index < 0:
                raise ValueError("enum index")
            types.append(_TYPES[index])
        count, pos = _long(data, pos)
    return tuple(types), pos


def _index(byte: int) -> int:
    """An enum symbol's index written in one byte (zig-zag, < 64)."""
    if byte & 0x81:
        raise ValueError("enum index")
    return byte >> 1


def _states_readable() -> bool:
    schema = codec.load_schema("mailbox_state.avsc")
    message = schema["fields"][4]["type"]["items"]
    return (
        codec.fingerprint(MailboxStateRecord) == wire.FAST_STATE_SCHEMA
        and message["fields"][1]["type"]["symbols"] == [f.value for f in _FOLDERS]
        and message["fields"][4]["type"]["items"]["symbols"] == [t.value for t in _TYPES]
    )


_FAST_EVENTS = speedups.ENABLED and _events_readable()
_FAST_SNAPSHOTS = speedups.ENABLED and _snapshots_readable()
_FAST: dict[bytes, Callable[[bytes, int], MailboxEvent | MailboxSnapshot]] = {}
"""Writer schema fingerprint → the straight-line decoder of its records."""
if _FAST_EVENTS:
    _FAST[wire.FAST_EVENT_SCHEMA] = _read_event
    _FAST[wire.FAST_EVENT_SCHEMA_V1] = _read_event_v1
if _FAST_SNAPSHOTS:
    _FAST[wire.FAST_SNAPSHOT_SCHEMA] = _read_snapshot
_FAST_EVENT_READER = _FAST.get(wire.FAST_EVENT_SCHEMA)
_FAST_STATES = speedups.ENABLED and _states_readable()
_FAST_STATE: dict[bytes, Callable[[bytes, int], MailboxStateRecord]] = {}
"""Writer schema fingerprint → the straight-line decoder of its MailboxState records."""
if _FAST_STATES:
    _FAST_STATE[wire.FAST_STATE_SCHEMA] = _read_state
    _FAST_STATE[wire.FAST_STATE_SCHEMA_V2] = _read_state_v2
