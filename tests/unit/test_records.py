"""ingest.eventlog.records: the record for a Comet message — key, Avro value, Kafka timestamp and
headers, whatever the per-EventType and per-EventTime shortcuts it takes — or its dead letter."""

from __future__ import annotations

import dataclasses
import datetime as dt

from ingest.eventlog import codec
from ingest.eventlog.records import RecordWriter
from ingest.events import DeadLetter, EventType, MailboxEvent, MessageInfo, RejectReason

T1 = dt.datetime(2026, 11, 25, 19, 0, 1, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 11, 25, 19, 0, 2, tzinfo=dt.UTC)


def _writer() -> RecordWriter:
    return RecordWriter("events", "dlq", source="test")


def _event(mailbox: str, event_type: EventType, event_time: dt.datetime) -> MailboxEvent:
    return MailboxEvent(
        mailbox_id=mailbox,
        usn=7,
        event_type=event_type,
        event_time=event_time,
        event_time_raw="07:00:01 PM 11/25/2026",
        subscription_id="sub-1",
        messages=(MessageInfo("m1"),),
        ingested_at=T2,
    )


class TestEventRecord:
    """Every record equals what the codec says, in any order of EventTimes and EventTypes."""

    def test_records_match_the_codec(self) -> None:
        writer = _writer()
        same_moment_other_object = T1 + dt.timedelta(0)
        assert same_moment_other_object is not T1
        events = [
            _event("a", EventType.NEW_MESSAGE, T1),
            _event("b", EventType.NEW_MESSAGE, T1),
            _event("c", EventType.DELETED_MESSAGE, T2),
            _event("d", EventType.SAVED_MESSAGE, same_moment_other_object),
            _event("e", EventType.NEW_MESSAGE, T1),
            dataclasses.replace(_event("f", EventType.DELETED_MESSAGE, T2), usn=8),
        ]
        for event in events:
            topic, (key, value, timestamp, headers), _, second = writer.for_event(event)
            assert topic == "events"
            assert key == event.mailbox_id.encode()
            assert value == codec.encode(event)
            assert timestamp == codec.timestamp_ms(event), event.mailbox_id
            assert second == timestamp // 1000
            assert headers == codec.kafka_headers(event), event.mailbox_id


class TestDeadLetterRecord:
    """Whatever the parser or the encoder refuses becomes a dead letter with the raw payload."""

    def test_unparsable_message_becomes_a_keyed_dead_letter(self) -> None:
        message = {"channel": "/vmrest/mailbox/s1", "data": {"MailboxId": "abell", "USN": "x"}}
        topic, (key, value, timestamp, _), _, second = _writer().for_message(message, T1)
        letter = codec.decode(value)
        assert topic == "dlq"
        assert isinstance(letter, DeadLetter)
        assert letter.reason in set(RejectReason)
        assert b'"USN":"x"' in letter.raw
        assert key == b"abell"
        assert (timestamp, second) == (int(T1.timestamp() * 1000), None)
