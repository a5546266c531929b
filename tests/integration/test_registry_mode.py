"""Registry mode end to end, judged by a standard client that knows nothing of this project.

A real worker (simulator → CometD → Kafka) and a real projector run with KAFKA_SCHEMA_REGISTRY_URL
pointing at the project's Apicurio Registry; confluent-kafka's `SchemaRegistryClient` and
`AvroDeserializer` then decode every record of the events, dead-letter and state topics, and what
they read is what our own codec reads. A topic can change modes while running: a log written
half single-object, half Confluent-framed, folds to the truth. The registry refuses a schema
change that breaks compatibility, and a worker whose schema is refused stops at start with one
line, having written nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fixtures.producing import REPO, end_offsets, state_differences, wait_committed
from fixtures.simulator import MakeSimulator
from fixtures.worker import fold_records, read_topic, running_worker, settle, worker_env

from ingest.commands.tail import StartAt, TailOptions, tail
from ingest.devservices.registry import LocalRegistry
from ingest.eventlog import codec, wire
from ingest.eventlog.reader import decode_log_record
from ingest.eventlog.schema_registry import schema_ids, subject_name
from ingest.eventlog.topics import TopicNames
from ingest.events import (
    DeadLetter,
    EventType,
    MailboxEvent,
    MailboxRegistryEntry,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageInfo,
)
from ingest.mailboxes.registry import RegistryWriter, read_registry
from ingest.projector import Projector, ProjectorSettings
from ingest.settings import SchemaRegistrySettings, SettingsSource, load_kafka
from ingest.simulator.comet import bayeux_message, channel_of, event_data
from ingest.state.projection import Projection, diff_states
from ingest.state.replay import replay
from ingest.state.store import read_state_topic

pytestmark = pytest.mark.integration


def plain(value: Any) -> Any:
    """One of our records as the plain dict an Avro deserializer returns."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


async def read_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed value of `topic` (transaction markers included in the way: the state topic
    is written in transactions, so its end offset is past its last record)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            tps = [TopicPartition(topic, p) for p in (await end_offsets(bootstrap, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        values: list[bytes] = []
        async with asyncio.timeout(60):
            while pending := [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                values += [r.value for records in batch.values() for r in records if r.value]
        return values
    finally:
        await consumer.stop()


def standard_decode(
    client: SchemaRegistryClient, topic: str, values: list[bytes]
) -> list[dict[str, Any]]:
    """confluent-kafka's deserializer, with the writer schema it fetches by the record's id."""
    deserializer = AvroDeserializer(client)
    context = SerializationContext(topic, MessageField.VALUE)
    decoded = []
    for value in values:
        record = deserializer(value, context)
        assert isinstance(record, dict)
        decoded.append(record)
    return decoded


@dataclasses.dataclass(frozen=True)
class Registry:
    url: str
    """The Confluent-compatible base URL of the project's registry."""
    client: SchemaRegistryClient
    """confluent-kafka's client on it."""


@pytest.fixture
def registry(local_registry: LocalRegistry) -> Iterator[Registry]:
    with SchemaRegistryClient({"url": local_registry.url}) as client:
        yield Registry(local_registry.url, client)


def projector_settings(
    bootstrap: str, topics: TopicNames, group: str, registry: str | None, **extra: str
) -> ProjectorSettings:
    env = {
        **extra,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_EVENTS_TOPIC": topics.events,
        "KAFKA_STATE_TOPIC": topics.state,
        "CUMI_PROJECTOR_GROUP_ID": group,
        "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": "100",
        "CUMI_METRICS_HOST": "127.0.0.1",
        "CUMI_METRICS_PORT": "0",
    }
    if registry is not None:
        env["KAFKA_SCHEMA_REGISTRY_URL"] = registry
    return ProjectorSettings.load(env=env)


def broken_event(sim: Any, alias: str) -> dict[str, Any]:
    """A notification without a USN: the worker dead-letters it."""
    data = event_data(
        infos=[{"MessageId": "ghost", "MsgType": "Voice"}],
        usn=1,
        event_time="11:15:40 PM 10/30/2008",
        subscription_id=sim.subscriptions.of_mailbox(alias)[0],
        mailbox_id=alias,
        event_type="NEW_MESSAGE",
        display_name="Ghost",
    )
    del data["USN"]
    return data


class TestStandardClients:
    """Every record a registry-mode worker and projector write, read by confluent-kafka."""

    async def test_events_dead_letters_and_states(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        registry: Registry,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=12, seed=171)
        url = registry.url
        env = worker_env(
            sim, kafka_bootstrap, fresh_topics, tmp_path, KAFKA_SCHEMA_REGISTRY_URL=url
        )
        async with running_worker(env) as worker:
            sim.emit(250)
            alias = next(iter(sim.accounts))
            for subscription in sim.subscriptions.of_mailbox(alias):
                channel = channel_of(subscription)
                message = bayeux_message(channel, broken_event(sim, alias))
                assert sim.bayeux.deliver(channel, message) == 1
            await settle(worker, sim)
        group = f"g-{fresh_topics.events}"
        settings = projector_settings(kafka_bootstrap, fresh_topics, group, url)
        async with Projector(settings) as projector:
            await wait_committed(kafka_bootstrap, group, fresh_topics.events, 120)
            await projector.stop()

        ids = schema_ids(SchemaRegistrySettings(url))
        for topic, kinds in (
            (fresh_topics.events, (MailboxEvent, MailboxSnapshot)),
            (fresh_topics.dlq, (DeadLetter,)),
            (fresh_topics.state, (MailboxStateRecord,)),
        ):
            values = await read_values(kafka_bootstrap, topic)
            assert values, f"nothing written to {topic}"
            assert all(v[0] == 0 for v in values), f"a value on {topic} is not Confluent-framed"
            ours = [codec.decode(v, ids) for v in values]
            assert {type(r) for r in ours} <= set(kinds)
            assert standard_decode(registry.client, topic, values) == [plain(r) for r in ours]
            for kind in {type(r) for r in ours}:  # subjects by TopicRecordNameStrategy, BACKWARD
                subject = subject_name(topic, kind)
                assert registry.client.get_latest_version(subject).schema_id is not None
                assert registry.client.get_compatibility(subject) == "BACKWARD"

        events = [
            codec.decode(r.value, ids)
            for r in await read_topic(kafka_bootstrap, fresh_topics.events)
            if r.value
        ]
        assert diff_states(sim.truth(), fold_records(events)) == []
        states = await read_state_topic(
            fresh_topics.state, ids=ids, bootstrap_servers=kafka_bootstrap
        )
        expected = Projection()
        for record in events:
            assert isinstance(record, MailboxEvent | MailboxSnapshot)
            expected.apply(record)
        assert state_differences(expected, states) == []

    async def test_mailbox_registry_entries(
        self,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        registry: Registry,
    ) -> None:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_EVENTS_TOPIC": fresh_topics.events,
            "KAFKA_REGISTRY_TOPIC": fresh_topics.registry,
            "KAFKA_SCHEMA_REGISTRY_URL": registry.url,
        }
        kafka = load_kafka(SettingsSource(env))
        entry = MailboxRegistryEntry("abell", dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "cuc1")
        async with RegistryWriter(kafka) as writer:
            await writer.put(entry)
        assert await read_registry(kafka) == {"abell": entry}
        (record,) = await read_topic(kafka_bootstrap, fresh_topics.registry)
        assert record.value is not None and record.value[0] == 0
        assert standard_decode(registry.client, fresh_topics.registry, [record.value]) == [
            plain(entry)
        ]


class TestReaders:
    """replay, tail and the example consumer read registry mode, and say what they miss without
    a registry."""

    async def test_replay_tail_and_the_example(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        registry: Registry,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=8, seed=176)
        env = worker_env(
            sim, kafka_bootstrap, fresh_topics, tmp_path, KAFKA_SCHEMA_REGISTRY_URL=registry.url
        )
        async with running_worker(env) as worker:
            sim.emit(150)
            await settle(worker, sim)
        topic, settings = fresh_topics.events, SchemaRegistrySettings(registry.url)
        folded = await replay(kafka_bootstrap, topic, schema_registry=settings)
        assert diff_states(sim.truth(), folded.to_json()) == []
        # without a registry each record is skipped, with a warning saying why (tail shows it)
        assert (await replay(kafka_bootstrap, topic)).mailboxes == {}

        blind = TailOptions(topic, start=StartAt.BEGINNING, as_json=True)
        informed = dataclasses.replace(blind, ids=schema_ids(settings))
        seen = [json.loads(line) for line in await tail_lines(kafka_bootstrap, informed)]
        unread = [json.loads(line) for line in await tail_lines(kafka_bootstrap, blind)]
        assert {line["kind"] for line in seen} == {"event", "snapshot"}
        assert {line["kind"] for line in unread} == {"undecodable"}
        assert all("KAFKA_SCHEMA_REGISTRY_URL" in line["error"] for line in unread)

        events = sum(line["kind"] == "event" for line in seen)
        report = await run_example(kafka_bootstrap, topic, "--schema-registry", registry.url)
        assert report["counts"]["events"] == events and "undecodable" not in report["counts"]
        report = await run_example(kafka_bootstrap, topic)
        assert report["counts"]["undecodable"] == len(seen)


async def tail_lines(bootstrap: str, options: TailOptions) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(30):
        await tail(options, {"bootstrap_servers": bootstrap}, lines.append)
    return lines


async def run_example(bootstrap: str, topic: str, *args: str) -> dict[str, Any]:
    """examples/analytics_consumer.py as its own process; its JSON report."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, str(REPO / "examples" / "analytics_consumer.py")),
        *("--bootstrap", bootstrap, "--topic", topic, "--schemas", str(REPO / "schemas")),
        *("--json", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return report


class TestModeChange:
    """A topic moves from single-object encoding to registry mode while its projector runs."""

    async def test_mixed_log_folds_to_the_truth(
        self,
        *,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        registry: Registry,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        sim = await make_simulator(mailboxes=10, seed=172)
        group = f"g-{fresh_topics.events}"
        settings = projector_settings(kafka_bootstrap, fresh_topics, group, registry.url)
        async with Projector(settings) as projector:
            single = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
            async with running_worker(single) as worker:
                sim.emit(150)
                await settle(worker, sim)
            framed = dict(single, KAFKA_SCHEMA_REGISTRY_URL=registry.url)
            async with running_worker(framed) as worker:
                sim.emit(150)
                await settle(worker, sim)
            await wait_committed(kafka_bootstrap, group, fresh_topics.events, 120)
            await projector.stop()
        values = [
            r.value for r in await read_topic(kafka_bootstrap, fresh_topics.events) if r.value
        ]
        assert {v[0] for v in values} == {0x00, 0xC3}  # both framings on one topic
        ids = schema_ids(SchemaRegistrySettings(registry.url))
        events = [codec.decode(v, ids) for v in values]
        assert diff_states(sim.truth(), fold_records(events)) == []
        states = await read_state_topic(
            fresh_topics.state, ids=ids, bootstrap_servers=kafka_bootstrap
        )
        truth = Projection()
        for record in events:
            assert isinstance(record, MailboxEvent | MailboxSnapshot)
            truth.apply(record)
        assert state_differences(truth, states) == []

        # a rebuild of the mixed log by catch-up worker processes (they resolve schema ids too)
        rebuilt = dataclasses.replace(fresh_topics, state=f"{fresh_topics.state}-workers")
        again = projector_settings(
            kafka_bootstrap,
            rebuilt,
            f"{group}-workers",
            registry.url,
            CUMI_PROJECTOR_CATCH_UP_RECORDS="1",
            CUMI_PROJECTOR_CATCH_UP_PROCESSES="2",
        )
        with caplog.at_level(logging.INFO, logger="ingest.projector"):
            async with Projector(again) as projector:
                await wait_committed(kafka_bootstrap, f"{group}-workers", rebuilt.events, 120)
                await projector.stop()
        assert "folding it in a worker process" in caplog.text
        states = await read_state_topic(rebuilt.state, ids=ids, bootstrap_servers=kafka_bootstrap)
        assert state_differences(truth, states) == []


INCOMPATIBLE = {
    "type": "record",
    "name": "MailboxEvent",
    "namespace": "cumi.pipeline",
    "fields": [{"name": "legacy_id", "type": "long"}],
}
"""An earlier 'MailboxEvent' that today's schema cannot read (mailbox_id has no default)."""


class TestCompatibility:
    """BACKWARD on our subjects: a breaking change is refused, by the registry and at start."""

    async def test_breaking_change_refused_by_the_registry(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        registry: Registry,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=2, seed=173)
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            KAFKA_SCHEMA_REGISTRY_URL=registry.url,
        )
        async with running_worker(env):
            pass  # registered at start
        subject = subject_name(fresh_topics.events, MailboxEvent)
        _, ours = codec.schema_text(MailboxEvent)
        schema = json.loads(ours)
        schema["fields"].append({"name": "priority_score", "type": "int"})  # no default
        with pytest.raises(SchemaRegistryError) as refused:
            registry.client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
        assert refused.value.http_status_code == 409
        # a compatible change (a field with a default) is accepted
        schema["fields"][-1]["default"] = 0
        assert registry.client.register_schema(subject, Schema(json.dumps(schema), "AVRO")) > 0

    async def test_new_release_registered_over_the_previous(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        registry: Registry,
        tmp_path: Path,
    ) -> None:
        """A subject holding the first release of MailboxEvent (what an earlier worker
        registered) takes today's as a new version under BACKWARD, and a record written with
        the old id still decodes, fast, into today's record."""
        subject = subject_name(fresh_topics.events, MailboxEvent)
        v1 = (REPO / "schemas" / "history" / "mailbox_event.v1.avsc").read_text(encoding="utf-8")
        v1_schema = json.loads(v1)
        old_id = registry.client.register_schema(
            subject, Schema(json.dumps(v1_schema, separators=(",", ":")), "AVRO")
        )
        registry.client.set_compatibility(subject, "BACKWARD")
        sim = await make_simulator(mailboxes=2, seed=174)
        env = worker_env(
            sim, kafka_bootstrap, fresh_topics, tmp_path, KAFKA_SCHEMA_REGISTRY_URL=registry.url
        )
        async with running_worker(env):
            pass  # registered at start
        assert registry.client.get_versions(subject) == [1, 2]
        latest = registry.client.get_latest_version(subject)
        new_id, text = latest.schema_id, latest.schema.schema_str
        assert new_id is not None and new_id != old_id and text is not None
        assert json.loads(text) == json.loads(codec.schema_text(MailboxEvent)[1])
        ids = schema_ids(SchemaRegistrySettings(registry.url))
        assert ids is not None
        assert ids.fingerprint(old_id) == wire.FAST_EVENT_SCHEMA_V1
        assert ids.fingerprint(new_id) == wire.FAST_EVENT_SCHEMA
        event = MailboxEvent(
            mailbox_id="abell",
            usn=2265,
            event_type=EventType.SAVED_MESSAGE,
            event_time=dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC),
            event_time_raw="11:15:40 PM 10/30/2008",
            subscription_id="sub-1",
            messages=(MessageInfo("m1"),),
            ingested_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        )
        datum = codec._event_to_avro(event)
        del datum["unparsed"]
        body = io.BytesIO()
        fastavro.schemaless_writer(body, fastavro.parse_schema(v1_schema, named_schemas={}), datum)
        value = wire.confluent_header(old_id) + body.getvalue()
        assert decode_log_record(value, ids) == codec.decode(value, ids) == event

    async def test_worker_stops_at_start_with_one_line(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        registry: Registry,
        tmp_path: Path,
    ) -> None:
        subject = subject_name(fresh_topics.events, MailboxEvent)
        registry.client.set_compatibility(subject, "BACKWARD")
        registry.client.register_schema(subject, Schema(json.dumps(INCOMPATIBLE), "AVRO"))
        sim = await make_simulator(mailboxes=2, seed=174)
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            KAFKA_SCHEMA_REGISTRY_URL=registry.url,
            CUMI_LOG_FORMAT="text",
        )
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ingest",
            "worker",
            env=inherited | env,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 2
        errors = [line for line in output.decode().splitlines() if "ERROR" in line]
        assert len(errors) == 1, output.decode()
        assert f"refused schema cumi.pipeline.MailboxEvent for subject '{subject}'" in errors[0]
        assert "Traceback" not in output.decode()
        for topic in (fresh_topics.events, fresh_topics.dlq):
            assert sum((await end_offsets(kafka_bootstrap, topic)).values()) == 0
