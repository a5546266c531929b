"""The sink on the real broker: payloads admitted by the window, produced in order, never dropped
by a caller that gives up waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fixtures.vendor import vendor_example
from fixtures.worker import read_topic

from ingest.eventlog import codec
from ingest.eventlog.sink import Sink
from ingest.eventlog.topics import TopicNames
from ingest.events import MailboxEvent
from ingest.settings import KafkaSettings, SettingsSource, load_kafka

pytestmark = pytest.mark.integration


def payload(usns: range) -> list[dict[str, Any]]:
    """Bayeux event messages of one mailbox, one per USN."""
    return [
        {"channel": "/vmrest/mailbox/sub-1", "data": vendor_example() | {"USN": usn}}
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
