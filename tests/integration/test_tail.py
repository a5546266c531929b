"""`ingest tail` end to end on the real broker: simulator → worker → Kafka → tail.

One pipeline run (a module fixture: 6 mailboxes, 150 scenario events with duplicates, injected
malformed payloads) fills the events and dead-letter topics; the state topic gets the projection
of that log written in a Kafka transaction, the registry topic a tombstone and a foreign record.
Every expectation is computed from the records read back independently (partition by partition)
or from the simulator's ground truth, never from tail's own output.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from fixtures.producing import delete_topics
from fixtures.simulator import FAST
from fixtures.vendor import vendor_example
from fixtures.worker import read_topic, running_worker, settle, worker_env

from ingest.commands.tail import StartAt, TailOptions, tail
from ingest.cumi.normalizer import parse_event
from ingest.devservices.kafka import LocalBroker
from ingest.errors import TopicMissing
from ingest.eventlog import codec
from ingest.eventlog.topics import (
    EVENTS_PARTITIONS,
    TopicNames,
    default_specs,
    ensure_topics,
    key_partition,
)
from ingest.events import EventType, MailboxEvent, MailboxSnapshot, RejectReason
from ingest.simulator import Simulator
from ingest.state.projection import Projection

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Pipeline:
    bootstrap: str
    topics: TopicNames
    events: list[Record]
    dead_letters: list[Record]
    truth: dict[str, Any]
    emitted: int
    """Comet events the simulator sent, duplicates included."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pipeline(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    topics = TopicNames.with_prefix(f"tail-{uuid.uuid4().hex[:10]}-")
    await ensure_topics(kafka_bootstrap, default_specs(topics))
    async with Simulator(FAST, mailboxes=6, seed=5, initial_messages=1) as sim:
        env = worker_env(sim, kafka_bootstrap, topics, tmp_path_factory.mktemp("tail"))
        async with running_worker(env) as worker:
            sim.duplicates(0.05)
            for alias in list(sim.accounts)[:3]:
                sim.inject_malformed(alias)
            sim.run_scenario(events=150)
            await settle(worker, sim)
        stats, truth = sim.stats, sim.truth()
    events = await read_topic(kafka_bootstrap, topics.events)
    await _write_state(kafka_bootstrap, topics.state, events)
    await _write_registry(kafka_bootstrap, topics.registry)
    yield Pipeline(
        kafka_bootstrap,
        topics,
        events,
        await read_topic(kafka_bootstrap, topics.dlq),
        truth,
        stats.emitted_total + stats.duplicates,
    )
    await delete_topics(kafka_bootstrap, topics.all())


async def _write_state(bootstrap: str, topic: str, events: list[Record]) -> None:
    """What the projector writes: one state record per mailbox, in a transaction; plus a
    tombstone for a removed mailbox."""
    projection = Projection()
    for record in events:
        value = codec.decode(record.value)
        assert isinstance(value, MailboxEvent | MailboxSnapshot)
        projection.apply(value)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=uuid.uuid4().hex)
    await producer.start()
    try:
        async with producer.transaction():
            for mailbox_id, state in projection.mailboxes.items():
                state_record = state.to_record()
                await producer.send(
                    topic,
                    codec.encode(state_record),
                    key=mailbox_id.encode(),
                    headers=codec.kafka_headers(state_record),
                )
            await producer.send(topic, None, key=b"removed-user")
    finally:
        await producer.stop()


FOREIGN = b'{"server": "cuc1", "enabled": true}'


async def _write_registry(bootstrap: str, topic: str) -> None:
    """The registry's record format is not defined yet: tail must cope with anything."""
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
        await producer.send_and_wait(topic, FOREIGN, key=b"abell")
        await producer.send_and_wait(topic, None, key=b"abell")


async def run_tail(bootstrap: str, options: TailOptions) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(30):
        printed = await tail(options, {"bootstrap_servers": bootstrap}, lines.append)
    assert printed == len(lines)
    return lines


async def tail_json(bootstrap: str, topic: str, **options: Any) -> list[dict[str, Any]]:
    options.setdefault("start", StartAt.BEGINNING)
    lines = await run_tail(bootstrap, TailOptions(topic=topic, as_json=True, **options))
    return [json.loads(line) for line in lines]


def positions(records: list[Record]) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in records}


@pytest.mark.asyncio(loop_scope="module")
class TestEventsTopic:
    """The events topic, as the worker wrote it."""

    async def test_json_lists_every_record_decoded(self, pipeline: Pipeline) -> None:
        objects = await tail_json(pipeline.bootstrap, pipeline.topics.events)
        assert {(o["partition"], o["offset"]) for o in objects} == positions(pipeline.events)
        kinds = [o["kind"] for o in objects]
        assert kinds.count("event") == pipeline.emitted
        reasons = Counter(o["value"]["reason"] for o in objects if o["kind"] == "snapshot")
        # one at start-up per mailbox, and a repair for a malformed payload that came after it
        assert reasons["startup"] == len(pipeline.truth)
        assert set(reasons) <= {"startup", "dead-letter"} and reasons["dead-letter"] <= 3
        by_position = {(r.partition, r.offset): r for r in pipeline.events}
        for o in objects:
            record = by_position[o["partition"], o["offset"]]
            assert o["key"] == record.key.decode() == o["value"]["mailbox_id"]
            assert o["timestamp"] == record.timestamp
            assert o["headers"]["cumi.kind"] == o["kind"]
            assert o["headers"]["cumi.schema_fingerprint"] == record.value[2:10].hex()
            moment = o["value"]["event_time" if o["kind"] == "event" else "taken_at"]
            assert round(dt.datetime.fromisoformat(moment).timestamp() * 1000) == o["timestamp"]
            assert o["time"] == moment
            if o["kind"] == "event":
                assert o["headers"]["cumi.event_type"] == o["value"]["event_type"]
                assert o["value"]["messages"] and o["value"]["usn"] > 0

    async def test_text_lines_are_one_per_record(self, pipeline: Pipeline) -> None:
        lines = await run_tail(
            pipeline.bootstrap, TailOptions(pipeline.topics.events, start=StartAt.BEGINNING)
        )
        assert len(lines) == len(pipeline.events)
        shape = re.compile(
            r"^\S+Z \S+\[(\d+)\]@(\d+) (\S+) "
            r"(?:(?P<type>[A-Z_]+) usn=(?P<usn>\d+) msg=\S+(?: \+\d+)?"
            r"|SNAPSHOT usn=(?P<susn>\d+) .*)$"
        )
        by_position = {(r.partition, r.offset): r for r in pipeline.events}
        for line in lines:
            match = shape.match(line)
            assert match, line
            value = codec.decode(by_position.pop((int(match[1]), int(match[2]))).value)
            assert isinstance(value, MailboxEvent | MailboxSnapshot), value
            assert match[3] == value.mailbox_id
            if isinstance(value, MailboxEvent):
                assert (match["type"], int(match["usn"])) == (value.event_type.value, value.usn)
            else:
                assert int(match["susn"]) == value.usn
        assert not by_position

    async def test_mailbox_reads_the_partition_of_its_key(self, pipeline: Pipeline) -> None:
        for alias in list(pipeline.truth)[:3]:
            own = [r for r in pipeline.events if r.key == alias.encode()]
            # the worker's producer (default partitioner) put them where tail looks
            assert {r.partition for r in own} == {key_partition(alias.encode(), EVENTS_PARTITIONS)}
            objects = await tail_json(pipeline.bootstrap, pipeline.topics.events, mailbox=alias)
            assert {(o["partition"], o["offset"]) for o in objects} == positions(own)

    async def test_since_starts_at_the_first_record_of_that_time(self, pipeline: Pipeline) -> None:
        stamps = sorted({r.timestamp for r in pipeline.events})
        since = stamps[len(stamps) // 2]
        expected: set[tuple[int, int]] = set()
        for partition in range(EVENTS_PARTITIONS):
            records = [r for r in pipeline.events if r.partition == partition]
            first = next((i for i, r in enumerate(records) if r.timestamp >= since), None)
            if first is not None:
                expected |= positions(records[first:])
        assert expected and expected != positions(pipeline.events)
        objects = await tail_json(
            pipeline.bootstrap, pipeline.topics.events, start=StartAt.TIME, since_ms=since
        )
        assert {(o["partition"], o["offset"]) for o in objects} == expected

    async def test_last_and_limit(self, pipeline: Pipeline) -> None:
        expected: set[tuple[int, int]] = set()
        for partition in range(EVENTS_PARTITIONS):
            expected |= positions([r for r in pipeline.events if r.partition == partition][-2:])
        objects = await tail_json(
            pipeline.bootstrap, pipeline.topics.events, start=StartAt.LAST, last=2
        )
        assert {(o["partition"], o["offset"]) for o in objects} == expected
        limited = await tail_json(pipeline.bootstrap, pipeline.topics.events, limit=7)
        assert len(limited) == 7


@pytest.mark.asyncio(loop_scope="module")
class TestOtherTopics:
    """Dead letters, the transactional state topic, the registry topic."""

    async def test_dead_letters(self, pipeline: Pipeline) -> None:
        assert len(pipeline.dead_letters) >= 3
        objects = await tail_json(pipeline.bootstrap, pipeline.topics.dlq)
        assert {(o["partition"], o["offset"]) for o in objects} == positions(pipeline.dead_letters)
        reasons = {r.value for r in RejectReason}
        for o in objects:
            assert o["kind"] == "dead_letter"
            assert o["value"]["reason"] in reasons
            assert isinstance(o["value"]["raw"], str) and o["value"]["raw"].startswith("{")
            # keyed by MailboxId when the payload had a readable one
            assert o["key"] == o["value"]["mailbox_id"]
            assert o["key"] is None or o["key"] in pipeline.truth

    async def test_state_topic_shows_committed_states(self, pipeline: Pipeline) -> None:
        lines = await run_tail(
            pipeline.bootstrap, TailOptions(pipeline.topics.state, start=StartAt.BEGINNING)
        )
        assert len(lines) == len(pipeline.truth) + 1  # the commit markers are not records
        summary = re.compile(r" (\S+) STATE usn=(\d+) inbox=(\d+)\((\d+) unread\) deleted=(\d+) ")
        seen = {}
        for line in lines:
            if line.endswith(" removed-user TOMBSTONE"):
                continue
            match = summary.search(line)
            assert match, line
            seen[match[1]] = tuple(int(g) for g in match.groups()[1:])
        expected = {
            alias: (
                mailbox["usn"],
                len(mailbox["inbox"]),
                sum(not m["read"] for m in mailbox["inbox"].values()),
                len(mailbox["deleted"]),
            )
            for alias, mailbox in pipeline.truth.items()
        }
        assert seen == expected

    async def test_registry_records_of_unknown_shape_are_printed(self, pipeline: Pipeline) -> None:
        objects = await tail_json(pipeline.bootstrap, pipeline.topics.registry)
        assert [o["kind"] for o in objects] == ["undecodable", "tombstone"]
        assert "C3 01" in objects[0]["error"] and objects[0]["size"] == len(FOREIGN)
        assert objects[1]["value"] is None and objects[1]["key"] == "abell"


def vendor_event(usn: int) -> MailboxEvent:
    return parse_event(vendor_example() | {"USN": usn}, source="test")


async def produce(bootstrap: str, topic: str, values: list[bytes | None]) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"abell")


class TestUndecodable:
    """A record that does not decode is printed with the reason; tail goes on."""

    async def test_bad_records_between_good_ones(
        self, kafka_bootstrap: str, fresh_topics: TopicNames
    ) -> None:
        good = codec.encode(vendor_event(1))
        unknown = b"\xc3\x01" + bytes(8) + good[10:]
        await produce(
            kafka_bootstrap,
            fresh_topics.events,
            [b"not avro at all", unknown, good[:-3], None, good],
        )
        objects = await tail_json(kafka_bootstrap, fresh_topics.events)
        assert [o["kind"] for o in objects] == [
            "undecodable",
            "undecodable",
            "undecodable",
            "tombstone",
            "event",
        ]
        assert "C3 01" in objects[0]["error"]
        assert "unknown schema fingerprint 0000000000000000" in objects[1]["error"]
        assert "DecodeError" in objects[2]["error"]
        assert objects[4]["value"]["event_type"] == EventType.SAVED_MESSAGE.value
        lines = await run_tail(
            kafka_bootstrap, TailOptions(fresh_topics.events, start=StartAt.BEGINNING)
        )
        assert [line.split(" ")[3] for line in lines] == [
            "UNDECODABLE",
            "UNDECODABLE",
            "UNDECODABLE",
            "TOMBSTONE",
            "SAVED_MESSAGE",
        ]


def cli_env(bootstrap: str, topics: TopicNames) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CUMI_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    env["KAFKA_TOPIC_PREFIX"] = topics.events.removesuffix("mailbox-events")
    return env


class TestCommandLine:
    """`python -m ingest tail` as people and scripts run it."""

    async def test_json_listing(self, kafka_bootstrap: str, fresh_topics: TopicNames) -> None:
        await produce(
            kafka_bootstrap, fresh_topics.events, [codec.encode(vendor_event(u)) for u in (1, 2, 3)]
        )
        env = cli_env(kafka_bootstrap, fresh_topics)
        code, out, err = await cli(env, "tail", "events", "--from-beginning", "--json")
        assert code == 0, err
        assert [json.loads(line)["value"]["usn"] for line in out.splitlines()] == [1, 2, 3]

    async def test_unknown_topic_is_an_error(self, kafka_bootstrap: str) -> None:
        with pytest.raises(TopicMissing, match="topic 'no-such-topic' does not exist"):
            await run_tail(kafka_bootstrap, TailOptions("no-such-topic"))

    async def test_follow_prints_new_records_until_sigterm(
        self, kafka_bootstrap: str, fresh_topics: TopicNames
    ) -> None:
        since = dt.datetime.now(dt.UTC).isoformat()
        env = cli_env(kafka_bootstrap, fresh_topics)
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "ingest", "tail", "events", "-f", "--json", "--since", since),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(30):
                # a record produced before tail read the end offsets is behind its start (its
                # EventTime, 2008, is before --since): keep producing until one shows up
                usn = 0
                line = b""
                while not line:
                    usn += 1
                    event = vendor_event(usn)
                    await produce(kafka_bootstrap, fresh_topics.events, [codec.encode(event)])
                    with contextlib.suppress(TimeoutError):
                        line = await asyncio.wait_for(process.stdout.readline(), 1.0)
                first = json.loads(line)
                assert first["kind"] == "event" and first["key"] == "abell"
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


class TestBrokerGone:
    async def test_follow_stays_quiet_and_ctrl_c_ends_cleanly(
        self,
        kafka_bootstrap: str,
        kafka_broker: LocalBroker,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        env = cli_env(kafka_bootstrap, fresh_topics) | {"CUMI_LOG_FORMAT": "text"}
        errors = tmp_path / "stderr.txt"
        with errors.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "ingest", "tail", "events", "-f", "--from-beginning"),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=ROOT,
            )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(60):
                await produce(kafka_bootstrap, fresh_topics.events, [codec.encode(vendor_event(1))])
                assert await process.stdout.readline()  # following
                await kafka_broker.stop()
                while "aiokafka" not in errors.read_text():  # noqa: ASYNC110 - a file
                    await asyncio.sleep(0.2)
                outage = time.monotonic()
                while time.monotonic() - outage < 8.0:  # noqa: ASYNC110 - the outage itself
                    await asyncio.sleep(0.2)
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await kafka_broker.start()
        text = errors.read_text()
        assert "Traceback" not in text, text[-3000:]
        # before issue 16: ~40 lines a second; now the first line of each kind, then one per 30 s
        assert len(text.splitlines()) <= 10, text


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
