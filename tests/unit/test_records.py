"""ingest.eventlog.records: the record for a Comet message — key, Avro value, Kafka timestamp and
headers, whatever the per-EventType and per-EventTime shortcuts it takes — or its dead letter."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from fakes import sample
from fixtures.vendor import VENDOR_EXAMPLE

from ingest.eventlog import codec
from ingest.eventlog.records import UNPARSED_LOGGER, RecordWriter
from ingest.events import DeadLetter, EventType, MailboxEvent, MessageInfo, RejectReason
from ingest.ops.logs import RepeatLimiter

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

    def test_each_dead_letter_is_handed_on_with_its_payload(self) -> None:
        """on_dead_letter (the worker's gap repair) gets the letter, keyed leniently, and the
        payload it was made of (its channel names the subscription)."""
        seen: list[tuple[DeadLetter, Mapping[str, Any]]] = []
        writer = RecordWriter("events", "dlq", on_dead_letter=lambda *a: seen.append(a))
        message = {"channel": "/vmrest/mailbox/s1", "data": {"MailboxId": 4711, "USN": 1}}
        writer.for_message(message, T1)
        writer.for_message(
            {"channel": "/vmrest/mailbox/s1", "data": json.loads(VENDOR_EXAMPLE)}, T1
        )
        ((letter, payload),) = seen  # the valid one is no dead letter
        assert (letter.mailbox_id, payload) == ("4711", message)


def tolerated(**info: object) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VENDOR_EXAMPLE)
    data["MessageInfo"][0].update(info)
    return data


class TestUnparsedFields:
    """An event with fields the worker could not read is published, counted by field, logged at
    DEBUG at most once per field and 30 s (the loggers ops.logs rate-limits)."""

    def test_published_and_counted_by_field(self) -> None:
        before = {
            f: sample("cumi_worker_fields_unparsed_total", field=f)
            for f in ("ReceiveTime", "CallerAni", "EventTime")
        }
        writer = _writer()
        message = tolerated(ReceiveTime="N/A", CallerAni=4085550100)
        for _ in range(3):
            topic, (_, value, _, _), _, _ = writer.for_message(message, T1)
            assert topic == "events"
        event = codec.decode(value)
        assert isinstance(event, MailboxEvent)
        assert [f.field for f in event.unparsed] == [
            "MessageInfo[0].CallerAni",
            "MessageInfo[0].ReceiveTime",
        ]
        after = {f: sample("cumi_worker_fields_unparsed_total", field=f) for f in before}
        assert after == before | {
            "ReceiveTime": before["ReceiveTime"] + 3,
            "CallerAni": before["CallerAni"] + 3,
        }

    def test_logged_at_debug_one_logger_per_field(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG, UNPARSED_LOGGER):
            _writer().for_message(tolerated(ReceiveTime="30/10/2008 16:15:40"), T1)
            _writer().for_message(json.loads(VENDOR_EXAMPLE) | {"SubscriptionId": None}, T1)
        lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
        assert lines == [
            (
                f"{UNPARSED_LOGGER}.ReceiveTime",
                logging.DEBUG,
                "mailbox abell USN 2265: MessageInfo[0].ReceiveTime unreadable "
                "('30/10/2008 16:15:40'); published without it",
            ),
            (
                f"{UNPARSED_LOGGER}.SubscriptionId",
                logging.DEBUG,
                "mailbox abell USN 2265: no SubscriptionId; published without it",
            ),
        ]

    def test_the_lines_are_rate_limited_per_field(self) -> None:
        limiter = RepeatLimiter(period=30.0, clock=lambda: 0.0)

        def line(field: str, usn: int) -> logging.LogRecord:
            return logging.LogRecord(
                f"{UNPARSED_LOGGER}.{field}",
                logging.DEBUG,
                __file__,
                1,
                "mailbox %s USN %d: %s unreadable (%.80r); published without it",
                ("abell", usn, field, "N/A"),
                None,
            )

        passed = [limiter.filter(line(f, usn)) for usn in range(10) for f in ("A", "B")]
        assert passed.count(True) == 2
