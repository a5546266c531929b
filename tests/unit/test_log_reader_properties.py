"""Properties of `decode_log_record`: the straight-line readers and their caches never disagree
with `codec.decode` (fastavro) — on any event or snapshot, and on any corruption of one."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import codec
from ingest.errors import DecodeError
from ingest.events import EventType, MailboxEvent, MailboxSnapshot, MessageInfo, SnapshotMessage
from ingest.log_reader import _read_event, _read_snapshot, decode_log_record

CHECKS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# short and long strings (a length of 64 bytes or more takes two bytes), unicode included
texts = st.text(max_size=12) | st.text(min_size=60, max_size=90)
ids = st.sampled_from(["m-1", "m-2", "4b6c4f5e-0e0c-4b8a-9e4e-0c1d2e3f4a5b"]) | texts
moments = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
)
message_infos = st.builds(
    MessageInfo,
    message_id=ids,
    caller_ani=st.none() | texts,
    sender=st.none() | texts,
    msg_type=st.none() | st.sampled_from(["Voice", "Fax", "Email"]),
    priority=st.none() | texts,
    receive_time=st.none() | moments,
    receive_time_raw=st.none() | texts,
)
mailbox_events = st.builds(
    MailboxEvent,
    mailbox_id=ids,
    usn=st.integers(0, 2**63 - 1) | st.integers(0, 5000),
    event_type=st.sampled_from(EventType),
    event_time=moments,
    event_time_raw=texts,
    subscription_id=texts,
    messages=st.lists(message_infos, max_size=4).map(tuple),
    ingested_at=moments,
    display_name=st.none() | texts,
    source=st.none() | texts,
)
snapshot_messages = st.builds(
    SnapshotMessage,
    message_id=ids.map(lambda i: f"0:{i}") | ids,
    read=st.booleans(),
    arrival_time=st.none() | moments,
    sender=st.none() | texts,
    caller_id=st.none() | texts,
    priority=st.none() | texts,
    msg_type=st.none() | texts,
)
snapshots = st.builds(
    MailboxSnapshot,
    mailbox_id=ids,
    usn=st.integers(0, 2**63 - 1) | st.integers(0, 5000),
    taken_at=moments,
    reason=st.sampled_from(["startup", "session-lost", "resubscribe"]) | texts,
    inbox=st.lists(snapshot_messages, max_size=6).map(tuple),
    deleted=st.lists(snapshot_messages, max_size=6).map(tuple),
    source=st.none() | texts,
)
records = mailbox_events | snapshots


def expected(value: bytes) -> MailboxEvent | MailboxSnapshot | type[DecodeError] | None:
    """What the codec makes of `value`, as `decode_log_record` must return it."""
    try:
        record = codec.decode(value)
    except DecodeError:
        return DecodeError
    return record if isinstance(record, MailboxEvent | MailboxSnapshot) else None


def actual(value: bytes) -> MailboxEvent | MailboxSnapshot | type[DecodeError] | None:
    try:
        return decode_log_record(value)
    except DecodeError:
        return DecodeError


class TestSameAsCodec:
    @CHECKS
    @given(mailbox_events)
    def test_events_by_the_straight_line_reader(self, event: MailboxEvent) -> None:
        value = codec.encode(event)
        assert _read_event(value) == codec.decode(value)  # no fallback: the reader itself
        assert decode_log_record(value) == codec.decode(value)  # again, from the caches

    @CHECKS
    @given(snapshots)
    def test_snapshots_by_the_straight_line_reader(self, snapshot: MailboxSnapshot) -> None:
        value = codec.encode(snapshot)
        assert _read_snapshot(value) == codec.decode(value)
        assert decode_log_record(value) == codec.decode(value)

    @CHECKS
    @given(st.lists(mailbox_events, min_size=2, max_size=6), st.data())
    def test_records_sharing_messages(
        self, events: list[MailboxEvent], data: st.DataObject
    ) -> None:
        """Message infos read from the cache are those of *this* record, not of a similar one."""
        shared = [m for e in events for m in e.messages]
        for original in events:
            event = original
            if shared:
                picked = data.draw(st.lists(st.sampled_from(shared), max_size=3))
                event = MailboxEvent(**{**_fields(original), "messages": tuple(picked)})
            value = codec.encode(event)
            assert decode_log_record(value) == codec.decode(value)


class TestCorruption:
    """Whatever the bytes, both give the same record, or both refuse with a DecodeError."""

    @CHECKS
    @given(records, st.data())
    def test_overwritten_bytes(
        self, record: MailboxEvent | MailboxSnapshot, data: st.DataObject
    ) -> None:
        value = bytearray(codec.encode(record))
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(codec.HEADER_SIZE, len(value) - 1))
            value[at] = data.draw(st.integers(0, 255))
        assert actual(bytes(value)) == expected(bytes(value))

    @CHECKS
    @given(records, st.data())
    def test_cut_or_extended(
        self, record: MailboxEvent | MailboxSnapshot, data: st.DataObject
    ) -> None:
        value = codec.encode(record)
        cut = data.draw(st.integers(codec.HEADER_SIZE, len(value)))
        tail = data.draw(st.binary(max_size=12))
        changed = value[:cut] + tail
        assert actual(changed) == expected(changed)


def _fields(event: MailboxEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__slots__}
