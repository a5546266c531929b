"""Reading the events topic: its records decoded, fast, for the projector and replay.

`decode_log_record(value)` returns the `MailboxEvent` or `MailboxSnapshot` a record of the events
topic holds, None for anything else (a dead letter or state record that does not belong there).
It is `ingest.codec.decode` with one shortcut: records written with today's MailboxEvent schema
are read by a straight-line decoder instead of fastavro's generic reader plus the dict-to-
dataclass step, which is most of the cost of folding the log (≈ 50 µs per event with fastavro,
≈ 10 µs here on the reference machine). It mirrors the codec's fast event *writer* and is used
only while mailbox_event.avsc has the fingerprint it was written for; anything it does not
recognise, or cannot read to the last byte, goes to `codec.decode`, which decides (and raises
`DecodeError` for what nobody can read). A unit test checks both paths give equal records.
"""

from __future__ import annotations

import datetime as dt
import functools

from ingest import codec
from ingest.events import EventType, MailboxEvent, MailboxSnapshot, MessageInfo

_FAST_FINGERPRINT = bytes.fromhex("5be9f43649860e88")
"""The MailboxEvent schema the fast reader below was written for."""
_HEADER = codec.MAGIC + _FAST_FINGERPRINT
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def decode_log_record(value: bytes) -> MailboxEvent | MailboxSnapshot | None:
    """The event or snapshot in `value`; None for another record type. Raises `DecodeError`."""
    if _FAST and value.startswith(_HEADER):
        try:
            return _read_event(value)
        except (IndexError, ValueError, UnicodeDecodeError):
            pass  # let the codec say what is wrong with it
    record = codec.decode(value)
    return record if isinstance(record, MailboxEvent | MailboxSnapshot) else None


def _fast_available() -> bool:
    symbols = codec.load_schema("mailbox_event.avsc")["fields"][2]["type"]["symbols"]
    return codec.fingerprint(MailboxEvent) == _FAST_FINGERPRINT and symbols == [
        t.value for t in _TYPES
    ]


_TYPES: tuple[EventType, ...] = tuple(EventType)


@functools.lru_cache(maxsize=8192)
def _moment(millis: int) -> dt.datetime:
    """timestamp-millis → aware UTC datetime; EventTimes repeat (one-second resolution)."""
    return _EPOCH + dt.timedelta(milliseconds=millis)


def _read_event(data: bytes) -> MailboxEvent:
    """The body after the 10-byte header, field by field as mailbox_event.avsc orders them.
    (Module-level helpers returning (value, position) measured faster than closures.)"""
    mailbox_id, pos = _string(data, len(_HEADER))
    usn, pos = _long(data, pos)
    kind, pos = _long(data, pos)
    millis, pos = _long(data, pos)
    event_time_raw, pos = _string(data, pos)
    subscription_id, pos = _string(data, pos)
    display_name, pos = _optional_string(data, pos)
    messages = []
    count, pos = _long(data, pos)
    while count:
        if count < 0:  # a block that also gives its size in bytes, which we do not need
            count = -count
            _, pos = _long(data, pos)
        for _ in range(count):
            message_id, pos = _string(data, pos)
            caller_ani, pos = _optional_string(data, pos)
            sender, pos = _optional_string(data, pos)
            msg_type, pos = _optional_string(data, pos)
            priority, pos = _optional_string(data, pos)
            receive_time, pos = _optional_moment(data, pos)
            receive_time_raw, pos = _optional_string(data, pos)
            messages.append(
                MessageInfo(
                    message_id,
                    caller_ani,
                    sender,
                    msg_type,
                    priority,
                    receive_time,
                    receive_time_raw,
                )
            )
        count, pos = _long(data, pos)
    ingested, pos = _long(data, pos)
    source, pos = _optional_string(data, pos)
    if pos != len(data) or kind < 0:
        raise ValueError("not exactly one MailboxEvent")
    return MailboxEvent(
        mailbox_id=mailbox_id,
        usn=usn,
        event_type=_TYPES[kind],
        event_time=_moment(millis),
        event_time_raw=event_time_raw,
        subscription_id=subscription_id,
        messages=tuple(messages),
        ingested_at=_moment(ingested),
        display_name=display_name,
        source=source,
    )


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro long: base-128 varint, then zig-zag."""
    byte = data[pos]
    pos += 1
    n, shift = byte & 0x7F, 7
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _string(data: bytes, pos: int) -> tuple[str, int]:
    size = data[pos]
    if size < 0x80 and not size & 1:  # the usual short string: its length in one byte
        size >>= 1
        pos += 1
    else:
        size, pos = _long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise ValueError("string runs past the record")
    return data[pos:end].decode(), end


def _optional_string(data: bytes, pos: int) -> tuple[str | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:  # zig-zag 1: the second union branch
        raise ValueError("bad union branch")
    size = data[pos + 1]
    if size < 0x80 and not size & 1:  # _string's short case, inlined: the hottest path
        end = pos + 2 + (size >> 1)
        if end > len(data):
            raise ValueError("string runs past the record")
        return data[pos + 2 : end].decode(), end
    return _string(data, pos + 1)


def _optional_moment(data: bytes, pos: int) -> tuple[dt.datetime | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise ValueError("bad union branch")
    millis, pos = _long(data, pos + 1)
    return _moment(millis), pos


_FAST = _fast_available()
