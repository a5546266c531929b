"""A mailbox's state as state-topic bytes, written straight from the projection (issue 20).

The reference mapping (`ingest.state.store.encode_state` with the speedups off) is
`codec.encode(state.to_record())`: a MessageStateRecord built for every message, then fastavro's
generic writer over the whole record — ≈ 600 µs for a mailbox of 52 messages on the reference
machine, a fifth of the projector's catch-up CPU. `state_writer()` writes the same bytes from the
`MailboxState` itself, field by field as schemas/mailbox_state.avsc (v3) orders them (its mirror
is the reader's `decode_state_record`). It serves only the schema it was written for
(`wire.FAST_STATE_SCHEMA`, with the enums' symbols in the order it has them); a value it cannot
write as fastavro would (a number outside Avro's long, a value of another type) raises one of
`UNWRITABLE`, and the store takes the reference path, which writes it or says what is wrong with
it. tests/unit/test_state_encoding.py holds its bytes equal to fastavro's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from ingest.eventlog import codec, wire
from ingest.eventlog.codec import avro_optional_string, avro_string, remember_string
from ingest.events import EventType, Folder, MailboxStateRecord
from ingest.state.projection import MailboxState, MessageState, is_stating

StateWriter = Callable[[MailboxState], bytes]

UNWRITABLE = (AttributeError, KeyError, OverflowError, TypeError, ValueError)
"""What the writer raises for a state it cannot write canonically (UnicodeEncodeError, for a
string that is not UTF-8 encodable, is a ValueError)."""

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_ONE_BYTE = tuple(bytes([i]) for i in range(128))
_NULL = b"\x00"  # union branch 0 ("null"); also an empty array, and the end of a non-empty one
_SOME = b"\x02"  # union branch 1
_FALSE, _TRUE = b"\x00", b"\x01"
_NO_BASE_READ_USN = b"\x01"  # base_read_usn, superseded in v3: always -1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def _long(n: int) -> bytes:
    """Avro long: zig-zag, then base-128 varint. Outside 64 bits fastavro raises OverflowError:
    so does this, and the reference path raises it again."""
    if 0 <= n < 64:
        return _ONE_BYTE[n << 1]
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    n = (n << 1) ^ (n >> 63)
    if n < 128:
        return _ONE_BYTE[n]
    # the usual sizes without the loop: USNs take two or three bytes, times six
    if n < 1 << 14:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 1 << 21:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if 1 << 35 <= n < 1 << 42:  # timestamp-millis from 1970-07 to 2039-09
        return bytes(
            (
                n & 0x7F | 0x80,
                n >> 7 & 0x7F | 0x80,
                n >> 14 & 0x7F | 0x80,
                n >> 21 & 0x7F | 0x80,
                n >> 28 & 0x7F | 0x80,
                n >> 35,
            )
        )
    out = bytearray()
    while n > 127:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _optional_moment(moment: dt.datetime | None) -> bytes:
    """Avro ["null", timestamp-millis]; naive datetimes mean UTC (as the codec's `_utc`)."""
    if moment is None:
        return _NULL
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return _SOME + _long((moment - _EPOCH) // _MS)


_REPEATED: dict[str | None, bytes] = {None: _NULL}
"""Encoded msg_type and priority: a handful of distinct values, so a lookup instead of encoding.
Emptied when full, so it never holds more than `_REPEATED_MAX` entries."""
_REPEATED_MAX = 1024


def _repeated(text: str | None) -> bytes:
    return remember_string(_REPEATED, _REPEATED_MAX, text)


def writable() -> bool:
    """Whether today's state schema is the one the writer was written for."""
    message = codec.load_schema("mailbox_state.avsc")["fields"][4]["type"]["items"]
    return (
        codec.fingerprint(MailboxStateRecord) == wire.FAST_STATE_SCHEMA
        and message["fields"][1]["type"]["symbols"] == list(Folder)
        and message["fields"][4]["type"]["items"]["symbols"] == list(EventType)
    )


def state_writer() -> StateWriter | None:
    """The straight-line writer of today's state schema, or None if the schema is another one
    than it was written for (whatever `speedups.ENABLED` says: the store decides whether to use
    it, the tests compare it either way)."""
    if not writable():
        return None
    header = wire.header(wire.FAST_STATE_SCHEMA)
    folders = {folder: _ONE_BYTE[i << 1] for i, folder in enumerate(Folder)}
    type_index = {event_type: _ONE_BYTE[i << 1] for i, event_type in enumerate(EventType)}
    changes: dict[frozenset[EventType], tuple[bytes, bool]] = {}
    """A change's EventTypes → (its `applied` array, sorted as `to_record` sorts them; whether
    it needs its message to keep it): ≤ 2**9 change sets, each met over and over."""

    def change(types: frozenset[EventType]) -> tuple[bytes, bool]:
        found = changes.get(types)
        if found is None:
            listed = sorted(types)
            array = b"".join((_long(len(listed)), *(type_index[t] for t in listed)))
            found = changes[types] = (
                array + _NULL if listed else array,  # one block, then the end; or empty
                bool(listed) and not is_stating(types),
            )
        return found

    def kept(message: MessageState) -> list[bytes]:
        """The `kept` branch: the changes before the latest one, then the floor."""
        parts = [_SOME, _long(len(message.earlier))]
        for usn, types in message.earlier:
            parts += (_long(usn), (changes.get(types) or change(types))[0])
        if message.earlier:
            parts.append(_NULL)
        parts += (
            folders[message.floor_folder],
            _TRUE if message.floor_read else _FALSE,
            _long(message.floor_usn),
        )
        return parts

    def write(state: MailboxState) -> bytes:
        messages = state.messages
        parts = [
            header,
            avro_string(state.mailbox_id),
            _long(state.usn),
            _long(state.snapshot_usn),
            _optional_moment(state.updated_at),
            _long(len(messages)),
        ]
        repeated, one_byte = _REPEATED, _ONE_BYTE
        for message_id in sorted(messages):
            m = messages[message_id]
            applied, keeps = changes.get(m.applied) or change(m.applied)  # a call on a miss
            msg_type, priority = m.msg_type, m.priority
            caller_ani, sender = m.caller_ani, m.sender
            mid = message_id.encode()  # the strings inline: a call each was a tenth of the time
            parts += (
                one_byte[len(mid) << 1] if len(mid) < 64 else _long(len(mid)),
                mid,
                folders[m.folder],
                _TRUE if m.read else _FALSE,
                _long(m.usn),
                applied,
                folders[m.base_folder],
                _TRUE if m.base_read else _FALSE,
                _NO_BASE_READ_USN,
                _NULL if caller_ani is None else _SOME + avro_string(caller_ani),
                _NULL if sender is None else _SOME + avro_string(sender),
                repeated.get(msg_type) or _repeated(msg_type),
                repeated.get(priority) or _repeated(priority),
                _optional_moment(m.receive_time),
                avro_optional_string(m.receive_time_raw),
            )
            if m.earlier or keeps:
                parts += kept(m)
            else:  # most messages keep nothing
                parts.append(_NULL)
        if messages:
            parts.append(_NULL)
        parts += (
            _long(state.events_applied),
            _long(state.duplicates),
            _long(state.stale),
            _long(state.snapshots_applied),
            _optional_moment(state.snapshot_taken_at),
        )
        return b"".join(parts)

    return write
