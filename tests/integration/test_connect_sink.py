"""Kafka Connect reads the events topic of a registry-mode worker, knowing nothing of this project:
a standalone worker (connect-runtime from Maven Central) with Apicurio Registry's Avro converter
(reading the Confluent wire format by schema id) sinks every record into a file (FileStreamSink).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually
from fixtures.worker import read_topic, running_worker, settle, worker_env

from ingest.devservices.connect import LocalConnect, apicurio_avro_converter
from ingest.devservices.registry import LocalRegistry
from ingest.eventlog import codec
from ingest.eventlog.schema_registry import schema_ids
from ingest.eventlog.topics import TopicNames
from ingest.events import MailboxEvent, MailboxSnapshot
from ingest.settings import SchemaRegistrySettings

pytestmark = pytest.mark.integration

STRUCT = re.compile(r"^Struct\{mailbox_id=([^,]+),usn=(\d+),")
"""How FileStreamSink writes a Connect Struct (its toString): fields in schema order."""


def connect_worker(registry_url: str) -> dict[str, str]:
    """Keys as strings; values through the registry-aware Avro converter."""
    converter = apicurio_avro_converter(registry_url)
    return {
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "io.apicurio.registry.utils.converter.AvroConverter",
        **{f"value.converter.{key}": value for key, value in converter.items()},
    }


class TestFileSink:
    async def test_every_event_and_snapshot_reaches_the_file(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        local_registry: LocalRegistry,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=8, seed=175)
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            KAFKA_SCHEMA_REGISTRY_URL=local_registry.url,
        )
        async with running_worker(env) as worker:
            sim.emit(200)
            await settle(worker, sim)
        ids = schema_ids(SchemaRegistrySettings(local_registry.url))
        records = [
            codec.decode(r.value, ids)
            for r in await read_topic(kafka_bootstrap, fresh_topics.events)
            if r.value
        ]
        assert {type(r) for r in records} == {MailboxEvent, MailboxSnapshot}
        expected = Counter(
            (r.mailbox_id, r.usn) for r in records if isinstance(r, MailboxEvent | MailboxSnapshot)
        )
        sink = tmp_path / "events.txt"
        connector = {
            "name": "events-to-file",
            "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
            "tasks.max": "1",
            "topics": fresh_topics.events,
            "file": str(sink),
        }
        worker_settings = connect_worker(local_registry.url)
        async with LocalConnect(
            kafka_bootstrap, worker_settings, [connector], work_dir=tmp_path / "connect"
        ):

            def lines() -> list[str]:
                return sink.read_text().splitlines() if sink.exists() else []

            await eventually(
                lambda: len(lines()) >= len(records),
                within=120,
                what=f"{len(records)} records in the sink file",
            )
        written = lines()
        assert len(written) == len(records)
        parsed = [STRUCT.match(line) for line in written]
        assert all(parsed), [line for line, m in zip(written, parsed, strict=True) if not m][:3]
        assert Counter((m[1], int(m[2])) for m in parsed if m) == expected
        assert any("event_type=NEW_MESSAGE" in line for line in written)
        assert any(",reason=" in line and "inbox=[" in line for line in written)  # snapshots
