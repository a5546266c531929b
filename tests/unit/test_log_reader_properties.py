"""Properties of `decode_log_record`: the straight-line readers and their caches never disagree
with `codec.decode` (fastavro) — on any event or snapshot, and on any corruption of one."""

from __future__ import annotations

import dataclasses

from fixtures.record_strategies import mailbox_events, records, snapshots
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import DecodeError
from ingest.eventlog import codec
from ingest.eventlog.reader import _read_event, _read_snapshot, decode_log_record
from ingest.events import MailboxEvent, MailboxSnapshot

CHECKS = settings(max_examples=150)
"""More than the profile's 100: the decoder's fast paths have many branches to reach."""


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
                event = dataclasses.replace(original, messages=tuple(picked))
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
