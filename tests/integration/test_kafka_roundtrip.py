"""Avro records through the real broker: what goes in keyed by MailboxId comes back equal, in order.

Events are made the way the worker makes them: raw Comet JSON through `parse_event`, encoded by
the codec, produced with an idempotent `acks=all` aiokafka producer.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from fixtures.worker import decode_as, read_topic

from ingest.cumi.normalizer import dead_letter_for, parse_event
from ingest.errors import InvalidEvent
from ingest.eventlog import codec
from ingest.eventlog.topics import TopicNames
from ingest.events import EventType, MailboxEvent, RecordKind

pytestmark = pytest.mark.integration

MAILBOXES = ("abell", "tedison", "ntesla", "mcurie", "aturing", "glovelace", "hlamarr")
START = dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC)


def comet_event(mailbox: str, usn: int, event_type: EventType, at: dt.datetime) -> dict[str, Any]:
    """A notification as the server sends it (the vendor document's shape and time format)."""
    stamp = at.strftime("%I:%M:%S %p %m/%d/%Y")
    return {
        "MessageInfo": [
            {
                "CallerAni": "null",
                "Sender": "null",
                "MessageId": f"{mailbox}-msg-{usn}",
                "ReceiveTime": stamp,
                "Priority": "Normal-Priority",
                "MsgType": "Voice",
            }
        ],
        "USN": usn,
        "EventTime": stamp,
        "SubscriptionId": f"sub-{mailbox}",
        "MailboxId": mailbox,
        "EventType": event_type.value,
        "DisplayName": mailbox.title(),
    }


def make_events(count: int, seed: int = 7) -> list[MailboxEvent]:
    """Interleaved activity of several mailboxes; per mailbox, USN and EventTime only grow."""
    rng = random.Random(seed)
    usn: defaultdict[str, int] = defaultdict(lambda: 100)
    clock = itertools.count()
    events = []
    for _ in range(count):
        mailbox = rng.choice(MAILBOXES)
        usn[mailbox] += rng.randint(1, 3)
        at = START + dt.timedelta(seconds=next(clock) * 7)
        raw = json.dumps(comet_event(mailbox, usn[mailbox], rng.choice(list(EventType)), at))
        events.append(parse_event(raw, source="cuc1"))
    return events


async def produce(bootstrap: str, topic: str, records: list[Any], key: Any) -> None:
    async with AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all"
    ) as producer:
        sent = [
            await producer.send(
                topic,
                codec.encode(record),
                key=key(record),
                headers=codec.kafka_headers(record),
                timestamp_ms=codec.timestamp_ms(record),
            )
            for record in records
        ]
        for future in sent:
            await future


class TestEventRoundTrip:
    """The event log contract other consumers rely on."""

    async def test_events_come_back_equal_keyed_ordered_and_stamped(
        self, kafka_bootstrap: str, fresh_topics: TopicNames
    ) -> None:
        events = make_events(300)
        await produce(
            kafka_bootstrap, fresh_topics.events, events, key=lambda e: e.mailbox_id.encode()
        )
        records = await read_topic(kafka_bootstrap, fresh_topics.events)

        assert len(records) == len(events)
        decoded = [decode_as(MailboxEvent, r.value) for r in records]
        assert sorted(decoded, key=events.index) == events  # equal, none lost or doubled

        by_mailbox: dict[str, list[tuple[int, int, MailboxEvent]]] = defaultdict(list)
        for record, event in zip(records, decoded, strict=True):
            assert isinstance(event, MailboxEvent)
            assert record.key == event.mailbox_id.encode()
            assert record.timestamp == codec.timestamp_ms(event)
            assert record.timestamp == int(event.event_time.timestamp() * 1000)
            assert record.timestamp_type == 0  # CreateTime: the producer's EventTime is kept
            assert list(record.headers) == codec.kafka_headers(event)
            by_mailbox[event.mailbox_id].append((record.partition, record.offset, event))

        partitioner = DefaultPartitioner()
        partitions = list(range(12))
        assert set(by_mailbox) == set(MAILBOXES)
        for mailbox, placed in by_mailbox.items():
            assert {partition for partition, _, _ in placed} == {
                partitioner(mailbox.encode(), partitions, partitions)
            }, f"{mailbox}: one partition, the one every Kafka client's murmur2 picks"
            in_log_order = [event for _, _, event in sorted(placed, key=lambda p: p[1])]
            assert in_log_order == [e for e in events if e.mailbox_id == mailbox]

    async def test_dead_letters_keep_the_raw_payload(
        self, kafka_bootstrap: str, fresh_topics: TopicNames
    ) -> None:
        raw = b'{"MailboxId": "abell", "EventType": "NEW_MESSAGE", "USN": "not a number"}'
        with pytest.raises(InvalidEvent) as rejected:
            parse_event(raw)
        letter = dead_letter_for(raw, rejected.value, source="cuc1")
        await produce(kafka_bootstrap, fresh_topics.dlq, [letter], key=lambda _: b"abell")

        (record,) = await read_topic(kafka_bootstrap, fresh_topics.dlq)
        assert codec.decode(record.value) == letter
        assert letter.raw == raw
        assert record.timestamp == codec.timestamp_ms(letter)
        assert list(record.headers) == codec.kafka_headers(letter)
        assert dict(record.headers)["cumi.kind"] == RecordKind.DEAD_LETTER.value.encode()
