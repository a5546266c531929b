"""`ingest topics check|apply` against the real broker: creation, the safe fixes, the refusals,
and the command's output and exit codes (`ingest.eventlog.provision`, `ingest.commands.topics`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fixtures.commands import ingest
from fixtures.producing import delete_topics

from ingest.commands._exits import Exit
from ingest.eventlog.provision import Fix, apply, check, inspect
from ingest.eventlog.topics import TopicNames, default_specs

pytestmark = pytest.mark.integration


@pytest.fixture
async def names(kafka_bootstrap: str) -> AsyncIterator[TopicNames]:
    """A unique prefix with no topics yet; whatever the test made is deleted afterwards."""
    names = TopicNames.with_prefix(f"prov-{uuid.uuid4().hex[:10]}-")
    yield names
    await delete_topics(kafka_bootstrap, names.all())


async def create(bootstrap: str, name: str, partitions: int, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


async def write_one(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", key=b"abell")
    finally:
        await producer.stop()


def prefix_env(names: TopicNames, bootstrap: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": names.events.removesuffix("mailbox-events"),
    }


class TestCommand:
    """From nothing to the four topics as specified, through the command line."""

    async def test_apply_then_check(self, kafka_bootstrap: str, names: TopicNames) -> None:
        env = prefix_env(names, kafka_bootstrap)
        before = await ingest("topics", "check", "--json", env=env)
        assert before.code == Exit.DRIFT, before.err
        report = json.loads(before.out)
        assert [t["exists"] for t in report["topics"]] == [False] * 5
        assert f"ingest topics: {names.events}: missing; `ingest topics apply` creates it" in (
            before.err
        )

        applied = await ingest("topics", "apply", env=env)
        assert applied.code == Exit.OK, applied.err
        assert f"ingest topics: {names.dlq}: created" in applied.err

        after = await ingest("topics", "check", env=env)
        assert after.code == Exit.OK, after.err
        rows = [line for line in after.out.splitlines() if names.events in line]
        assert len(rows) == 2 and all(" ok " in row for row in rows), after.out  # events, dlq
        states = await inspect(list(names.all()), {"bootstrap_servers": kafka_bootstrap})
        assert {n: (s.partitions, s.configs["cleanup.policy"]) for n, s in states.items() if s} == {
            names.events: (12, "delete"),
            names.dlq: (1, "delete"),
            names.state: (12, "compact"),
            names.registry: (24, "compact"),
            names.checkpoints: (24, "delete"),
        }

    async def test_refused_difference_is_one_line_and_exit_4(
        self, kafka_bootstrap: str, names: TopicNames
    ) -> None:
        await create(kafka_bootstrap, names.events, 3, **{"retention.ms": "-1"})
        await write_one(kafka_bootstrap, names.events)
        env = prefix_env(names, kafka_bootstrap)
        applied = await ingest("topics", "apply", env=env)
        assert applied.code == Exit.DRIFT
        # all or nothing: no state topic with 12 partitions beside 3 of events
        assert (await inspect([names.state], {"bootstrap_servers": kafka_bootstrap})) == {
            names.state: None
        }
        assert (
            f"ingest topics: {names.events}: partitions is 3, wanted 12; refused: the topic "
            "holds data" in applied.err
        )
        assert "Traceback" not in applied.err
        # the operator states the count the topic has: nothing left to do
        fitted = await ingest("topics", "apply", "--events-partitions", "3", env=env)
        assert fitted.code == Exit.OK, fitted.err


class TestApply:
    """The safe fixes, straight through the library."""

    async def test_partitions_added_to_an_empty_topic(
        self, kafka_bootstrap: str, names: TopicNames
    ) -> None:
        await create(kafka_bootstrap, names.state, 4, **{"cleanup.policy": "compact"})
        client = {"bootstrap_servers": kafka_bootstrap}
        report, fixed = await apply(default_specs(names), client)
        assert report.in_line, report.differences
        assert [(d.topic, d.fix) for d in fixed if d.fix is not Fix.CREATE] == [
            (names.state, Fix.ADD_PARTITIONS)
        ]

    async def test_config_fixed_only_when_asked_and_other_overrides_kept(
        self, kafka_bootstrap: str, names: TopicNames
    ) -> None:
        week = str(7 * 86_400_000)
        await create(
            kafka_bootstrap,
            names.events,
            12,
            **{"retention.ms": week, "max.message.bytes": "2000000"},
        )
        await write_one(kafka_bootstrap, names.events)
        specs = default_specs(names)
        client = {"bootstrap_servers": kafka_bootstrap}
        report, _ = await apply(specs, client)
        (left,) = report.differences
        assert (left.item, left.actual, left.fix) == ("retention.ms", week, Fix.SET_CONFIG)
        report, fixed = await apply(specs, client, fix_configs=True)
        assert report.in_line and [d.item for d in fixed] == ["retention.ms"]
        configs = await topic_overrides(kafka_bootstrap, names.events)
        assert configs["retention.ms"] == "-1" and configs["max.message.bytes"] == "2000000"

    async def test_check_changes_nothing(self, kafka_bootstrap: str, names: TopicNames) -> None:
        client = {"bootstrap_servers": kafka_bootstrap}
        await check(default_specs(names), client)
        assert set((await inspect(list(names.all()), client)).values()) == {None}


async def topic_overrides(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = response.to_object()["resources"]
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


class TestUnreachableBroker:
    """Kafka down: one line that says what to check, exit 1, no reprs or warnings."""

    @pytest.mark.parametrize(
        "argv",
        [
            ("topics", "check"),
            ("mailboxes", "list"),
            ("replay", "--all"),
            ("tail", "events"),
        ],
        ids=lambda argv: " ".join(argv) if isinstance(argv, Sequence) else argv,
    )
    async def test_one_line(self, argv: tuple[str, ...]) -> None:
        run = await ingest(*argv, env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
        assert run.code == Exit.FAILED
        assert run.err == (
            f"ingest {argv[0]}: cannot reach Kafka at 127.0.0.1:1: check --bootstrap / "
            "KAFKA_BOOTSTRAP_SERVERS and that the brokers are up\n"
        )
