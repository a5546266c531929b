"""The sink's record for an event: key, Avro value, Kafka timestamp and headers, whatever the
per-EventType and per-EventTime shortcuts it takes on the way."""

from __future__ import annotations

import dataclasses
import datetime as dt

from ingest.eventlog import codec
from ingest.eventlog.sink import Sink
from ingest.events import EventType, MailboxEvent, MessageInfo
from ingest.settings import Settings

T1 = dt.datetime(2026, 11, 25, 19, 0, 1, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 11, 25, 19, 0, 2, tzinfo=dt.UTC)


def _sink() -> Sink:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "CUMI_SERVER_URL": "http://127.0.0.1:1",
        "CUMI_MAILBOXES_FILE": __file__,
        "CUMI_CREDENTIALS_FILE": __file__,
    }
    return Sink(Settings.load(env).kafka)  # never started: no broker is needed to build records


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
        sink = _sink()
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
            topic, (key, value, timestamp, headers), _, second = sink._event_record(event)
            assert topic == sink._kafka.events_topic
            assert key == event.mailbox_id.encode()
            assert value == codec.encode(event)
            assert timestamp == codec.timestamp_ms(event), event.mailbox_id
            assert second == timestamp // 1000
            assert headers == codec.kafka_headers(event), event.mailbox_id
