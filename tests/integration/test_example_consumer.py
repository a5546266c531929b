"""examples/analytics_consumer.py end to end: simulator → worker → real Kafka → the example, run as
its own process with nothing but the schema files, checked against the simulator's ground truth."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import importlib.util
import io
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import pytest
from aiokafka import AIOKafkaProducer
from fixtures.simulator import MakeSimulator
from fixtures.vendor_histories import LogCase, vendor_logs
from fixtures.vendor_histories import event as vendor_event
from fixtures.worker import decode_as, running_worker, settle, worker_env
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.cumi.normalizer import parse_event
from ingest.eventlog import codec
from ingest.eventlog.topics import TopicNames
from ingest.events import EventType, LogRecord, MailboxEvent
from ingest.simulator import Simulator
from ingest.simulator.mailbox import Message
from ingest.state.projection import Projection

NEW, SAVED = EventType.NEW_MESSAGE, EventType.SAVED_MESSAGE
DM, DMC = EventType.DELETED_MESSAGE, EventType.DELETED_MESSAGE_CREATE
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "analytics_consumer.py"


def hour(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:00Z")


def arrival_hour(message: Message) -> str:
    return hour(dt.datetime.fromtimestamp(message.arrival_ms / 1000, dt.UTC))


async def drive(sim: Simulator, events: int) -> list[tuple[str, Message]]:
    """What `Simulator.emit` does, noting each new message (mailbox, message) on the way."""
    new: list[tuple[str, Message]] = []
    done = 0
    while done < events:
        change = sim.scenario.step(events - done)
        new += [(change.mailbox.alias, m) for m, before in change.before if before is None]
        sim.notifier.publish(change)
        done += len(change.notices)
        await asyncio.sleep(0)
    return new


async def run_example(bootstrap: str, topic: str, schemas: Path, cwd: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, str(EXAMPLE), "--bootstrap", bootstrap, "--topic", topic),
        *("--schemas", str(schemas), "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    report["stderr"] = err.decode()
    return report


@pytest.mark.integration
class TestAgainstTheSimulator:
    """The example's numbers equal the simulator's truth."""

    async def test_unread_counts_and_hourly_arrivals(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=8, seed=21, initial_messages=2)
        heard = [
            m
            for mailbox in sim.scenario.mailboxes.values()
            for m in (*mailbox.inbox.values(), *mailbox.deleted.values())
        ]
        async with running_worker(worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)) as w:
            sim.duplicates(0.1)
            heard += [m for _, m in await drive(sim, 150)]
            await settle(w, sim)
            # Notifier downtime: afterwards only the latest status of each changed message comes,
            # and a message that came and went meanwhile is never heard of
            sim.notifier_down()
            meanwhile = await drive(sim, 60)
            heard += [
                m for alias, m in meanwhile if sim.scenario.mailboxes[alias].where(m.message_id)
            ]
            assert sim.notifier_up() > 0
            heard += [m for _, m in await drive(sim, 60)]
            await settle(w, sim)
        stats = sim.stats
        assert stats.duplicates > 0 and stats.coalesced > 0

        report = await run_example(kafka_bootstrap, fresh_topics.events, ROOT / "schemas", tmp_path)

        assert report["mailboxes"] == {
            alias: {
                "inbox": len(mailbox["inbox"]),
                "unread": sum(not m["read"] for m in mailbox["inbox"].values()),
                "deleted": len(mailbox["deleted"]),
            }
            for alias, mailbox in sorted(sim.truth().items())
        }
        assert report["received_per_hour"] == dict(
            sorted(Counter(arrival_hour(m) for m in heard).items())
        )
        assert report["counts"] == {
            "events": stats.emitted_total + stats.duplicates,
            "records": stats.emitted_total + stats.duplicates + len(sim.accounts),
            "snapshots": len(sim.accounts),
        }


def raw_event(usn: int, event_type: str, message_id: str, received: str) -> dict[str, Any]:
    """A Comet event shaped like the vendor's example."""
    return {
        "MessageInfo": [
            {
                "CallerAni": "4085550100",
                "Sender": "null",
                "MessageId": message_id,
                "ReceiveTime": received,
                "Priority": "Normal-Priority",
                "MsgType": "Voice",
            }
        ],
        "USN": usn,
        "EventTime": received,
        "SubscriptionId": "00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c",
        "MailboxId": "abell",
        "EventType": event_type,
        "DisplayName": "Alexander Bell",
    }


def encode_v0(event: dict[str, Any]) -> bytes:
    """A NEW_MESSAGE as a producer still on the pre-release schema would have written it."""
    schema = json.loads((ROOT / "tests/fixtures/schemas/mailbox_event.v0.avsc").read_text())
    current = decode_as(MailboxEvent, codec.encode(parse_event(event)))
    datum = {
        "mailbox_id": current.mailbox_id,
        "usn": current.usn,
        "event_type": current.event_type.value,
        "event_time": current.event_time,
        "event_time_raw": current.event_time_raw,
        "subscription_id": current.subscription_id,
        "display_name": current.display_name,
        "messages": [
            {"message_id": m.message_id, "caller_ani": m.caller_ani, "receive_time": m.receive_time}
            for m in current.messages
        ],
        "ingested_at": current.ingested_at,
    }
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema, named_schemas={}), datum)
    return codec.MAGIC + codec.schema_fingerprint(schema) + body.getvalue()


@pytest.mark.integration
class TestSchemaVersionsAndBadRecords:
    """Records written with an older released schema are read; undecodable ones are skipped."""

    async def test_history_schema_stale_repeat_and_garbage(
        self, kafka_bootstrap: str, fresh_topics: TopicNames, tmp_path: Path
    ) -> None:
        schemas = tmp_path / "schemas"
        shutil.copytree(ROOT / "schemas", schemas)
        shutil.copy(
            ROOT / "tests/fixtures/schemas/mailbox_event.v0.avsc",
            schemas / "history" / "mailbox_event.v0.avsc",
        )
        a, b = "72204bd7-e5c3-446e-adb6-ae5f80db26fb", "0c6f2a9e-1111-4bb2-9d55-5c1e0e3b7a10"
        values = [
            encode_v0(raw_event(10, "NEW_MESSAGE", a, "11:15:40 PM 10/30/2008")),
            codec.encode(parse_event(raw_event(11, "SAVED_MESSAGE", a, "11:15:40 PM 10/30/2008"))),
            codec.encode(parse_event(raw_event(12, "NEW_MESSAGE", b, "01:02:03 AM 10/31/2008"))),
            b"\x01 in neither framing",
            codec.encode(parse_event(raw_event(10, "NEW_MESSAGE", a, "11:15:40 PM 10/30/2008"))),
        ]
        async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
            for value in values:
                await producer.send_and_wait(fresh_topics.events, value, key=b"abell")

        report = await run_example(kafka_bootstrap, fresh_topics.events, schemas, tmp_path)

        # the late repeat of NEW_MESSAGE (USN 10) does not make message a unread again
        assert report["mailboxes"] == {"abell": {"inbox": 2, "unread": 1, "deleted": 0}}
        assert report["received_per_hour"] == {"2008-10-30T23:00Z": 1, "2008-10-31T01:00Z": 1}
        assert report["counts"] == {"events": 4, "records": 5, "undecodable": 1}
        assert "neither Avro single-object encoding nor the Confluent" in report["stderr"]

        # without the old release in its schema directory the v0 record is unreadable
        plain = await run_example(kafka_bootstrap, fresh_topics.events, ROOT / "schemas", tmp_path)
        assert plain["counts"] == {"events": 3, "records": 5, "undecodable": 2}
        assert "unknown schema fingerprint" in plain["stderr"]


class TestStandalone:
    """The example depends on aiokafka, fastavro and the standard library only."""

    def test_imports(self) -> None:
        tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
        roots = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert roots - sys.stdlib_module_names == {"aiokafka", "fastavro"}

    def test_a_gap_repair_gives_the_flag_a_delete_carried(self) -> None:
        # read during a gap (that event lost), listed read at S = 20, deleted at 21 before the
        # snapshot record: the delete carries the listed flag (the projection's rule, same case)
        example = load_example()

        def event(event_type: str, usn: int) -> dict[str, Any]:
            info = {"message_id": "m", "receive_time": None}
            return {"mailbox_id": "abell", "usn": usn, "event_type": event_type, "messages": [info]}

        listed = [{"message_id": "m", "read": True, "arrival_time": None}]
        analytics = example.Analytics()
        for usn, event_type in (
            (10, "NEW_MESSAGE"),
            (21, "DELETED_MESSAGE"),
            (21, "DELETED_MESSAGE_CREATE"),
        ):
            analytics.apply_event(event(event_type, usn))
        taken = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        analytics.apply_snapshot(
            {"mailbox_id": "abell", "usn": 20, "taken_at": taken, "inbox": listed, "deleted": []}
        )
        message = analytics.mailboxes["abell"].messages["m"]
        assert message.state() == (example.DELETED, True)

    def test_a_late_event_takes_its_place(self) -> None:
        # issue 19: read at 2, deleted at 3, the read arriving last: deleted *and read*
        records: list[LogRecord] = [vendor_event(NEW, 1, "m"), vendor_event(DM, 3, "m")]
        records += [vendor_event(DMC, 3, "m"), vendor_event(SAVED, 2, "m")]
        assert example_counts(records) == {"abell": {"inbox": 0, "unread": 0, "deleted": 1}}
        message = fold_example(records).mailboxes["abell"].messages["m"]
        assert message.state() == ("DELETED", True)

    @settings(max_examples=200)
    @given(vendor_logs(), st.randoms(use_true_random=False))
    def test_any_arrival_order_gives_the_projections_answer(self, case: LogCase, rnd: Any) -> None:
        arrival = list(case.records)
        rnd.shuffle(arrival)
        projection = Projection()
        for record in arrival:
            projection.apply(record)
        expected = {
            mailbox_id: {
                "inbox": len(state["inbox"]),
                "unread": sum(not m["read"] for m in state["inbox"].values()),
                "deleted": len(state["deleted"]),
            }
            for mailbox_id, state in projection.to_json().items()
        }
        assert example_counts(arrival) == expected


_EXAMPLE: dict[str, Any] = {}


def load_example() -> Any:
    """The example as a module (once), as a user would run it: its own file, nothing else."""
    if "module" not in _EXAMPLE:
        spec = importlib.util.spec_from_file_location("analytics_consumer", EXAMPLE)
        assert spec is not None and spec.loader is not None
        example = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = example  # dataclasses look their module up
        spec.loader.exec_module(example)
        _EXAMPLE["module"] = example
    return _EXAMPLE["module"]


def fold_example(records: list[LogRecord]) -> Any:
    """The example's fold of `records`, each read the way it reads them off the topic."""
    example = load_example()
    schemas, analytics = example.Schemas(ROOT / "schemas"), example.Analytics()
    for record in records:
        analytics.apply(*schemas.decode(codec.encode(record)))
    return analytics


def example_counts(records: list[LogRecord]) -> dict[str, Any]:
    report: dict[str, Any] = fold_example(records).report()["mailboxes"]
    return report
