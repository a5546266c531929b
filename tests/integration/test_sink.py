"""The sink on the real broker: payloads admitted by the window, produced in order, never dropped
by a caller that gives up waiting."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from fixtures.vendor import vendor_example
from fixtures.waiting import eventually
from fixtures.worker import read_topic

from ingest.devservices.kafka import LocalBroker
from ingest.eventlog import codec
from ingest.eventlog.sink import Sink
from ingest.eventlog.topics import TopicNames
from ingest.events import MailboxEvent
from ingest.settings import KafkaSettings, SettingsSource, load_kafka

pytestmark = pytest.mark.integration


def payload(usns: range, mailboxes: int = 1) -> list[dict[str, Any]]:
    """Bayeux event messages, one per USN, spread over `mailboxes` mailboxes (and partitions),
    stamped now (the vendor example's 2008 stamp is older than the topic's retention)."""
    now = {"EventTime": dt.datetime.now(dt.UTC).strftime("%I:%M:%S %p %m/%d/%Y")}
    return [
        {
            "channel": "/vmrest/mailbox/sub-1",
            "data": vendor_example() | {"USN": usn, "MailboxId": f"mb-{usn % mailboxes}", **now},
        }
        for usn in usns
    ]


@pytest.fixture
def kafka(kafka_bootstrap: str, fresh_topics: TopicNames) -> KafkaSettings:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_EVENTS_TOPIC": fresh_topics.events,
        "KAFKA_DLQ_TOPIC": fresh_topics.dlq,
    }
    return load_kafka(SettingsSource(env))


class TestAdmission:
    async def test_in_order_and_a_cancelled_wait_still_produces(self, kafka: KafkaSettings) -> None:
        sink = Sink(kafka, capacity=5)
        await sink.start()
        try:
            await sink.submit(payload(range(1, 6)), 0.0)  # fills the window
            assert sink.window.used == 5
            waiting = asyncio.create_task(sink.submit(payload(range(6, 9)), 0.0))
            await asyncio.sleep(0)
            waiting.cancel()  # the session closing while the window is full
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await sink.submit(payload(range(9, 12)), 0.0)  # admitted after the one given up
        finally:
            await sink.stop()
        assert sink.window.used == 0
        records = await read_topic(kafka.bootstrap_servers, kafka.events_topic)
        events = [codec.decode(r.value) for r in records if r.value is not None]
        assert all(isinstance(e, MailboxEvent) for e in events)
        usns = [e.usn for e in events if isinstance(e, MailboxEvent)]
        assert usns == list(range(1, 12)), "every received payload produced, in order"
        assert {r.partition for r in records} == {records[0].partition}


class TestOutage:
    """The broker away for longer than KAFKA_REQUEST_TIMEOUT_MS: nothing received is lost."""

    async def test_outage_longer_than_the_request_timeout(
        self, kafka_bootstrap: str, kafka_broker: LocalBroker, fresh_topics: TopicNames
    ) -> None:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_EVENTS_TOPIC": fresh_topics.events,
            "KAFKA_DLQ_TOPIC": fresh_topics.dlq,
            "KAFKA_REQUEST_TIMEOUT_MS": "3000",
        }
        kafka = load_kafka(SettingsSource(env))
        sink = Sink(kafka, capacity=1000, retry_cap=1.0)
        await sink.start()
        usn = 0
        done = asyncio.Event()

        async def produce() -> None:
            nonlocal usn
            while not done.is_set() and sink.fatal is None:
                await sink.submit(payload(range(usn + 1, usn + 2), mailboxes=4), 0.0)
                usn += 1
                await asyncio.sleep(0.01)

        producing = asyncio.create_task(produce())
        try:
            await eventually(
                lambda: usn >= 100, within=30, what="produced before the outage", interval=0.05
            )
            await kafka_broker.stop()
            outage = time.monotonic()
            # three request timeouts: aiokafka expires the batches of leaderless partitions
            await eventually(
                lambda: time.monotonic() - outage >= 9.0, within=30, what="outage", interval=0.05
            )
            assert sink.in_outage and sink.window.used > 0, "the outage is noticed, records held"
            await kafka_broker.start()
            resumed = usn
            await eventually(
                lambda: usn >= resumed + 300 or sink.fatal is not None,
                within=60,
                what="producing again",
                interval=0.05,
            )
            done.set()
            await producing
            await eventually(
                lambda: sink.window.used == 0 or sink.fatal is not None,
                within=60,
                what="all acknowledged",
                interval=0.05,
            )
        finally:
            done.set()
            await sink.stop()
        assert sink.fatal is None, f"the sink gave up: {sink.fatal!r}"
        assert sink.replacements >= 1, "the producer with expired batches was replaced"
        records = await read_topic(kafka.bootstrap_servers, kafka.events_topic)
        events = [codec.decode(r.value) for r in records if r.value is not None]
        usns = {e.usn for e in events if isinstance(e, MailboxEvent)}
        assert usns == set(range(1, usn + 1)), f"{usn - len(usns)} received records lost"
        # a re-sent batch may repeat records, but each mailbox's first sightings stay in order
        for mailbox in {e.mailbox_id for e in events if isinstance(e, MailboxEvent)}:
            seen: list[int] = []
            for e in events:
                if isinstance(e, MailboxEvent) and e.mailbox_id == mailbox and e.usn not in seen:
                    seen.append(e.usn)
            assert seen == sorted(seen), f"{mailbox}: out of order"
