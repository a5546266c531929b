"""The projector service in-process: read API, metrics, restore on restart, topic checks."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fixtures.producing import fold, generate, produce, state_differences, wait_committed
from fixtures.waiting import holds

from ingest.devservices.kafka import LocalBroker
from ingest.errors import ConfigError
from ingest.eventlog.topics import TopicNames, partition_for
from ingest.ops.metrics import PROJECTOR_REGISTRY
from ingest.projector import Projector, ProjectorSettings
from ingest.state.store import read_state_topic

pytestmark = pytest.mark.integration


def settings(bootstrap: str, topics: TopicNames, group: str) -> ProjectorSettings:
    return ProjectorSettings.load(
        env={
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_EVENTS_TOPIC": topics.events,
            "KAFKA_STATE_TOPIC": topics.state,
            "CUMI_PROJECTOR_GROUP_ID": group,
            "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": "100",
            "CUMI_METRICS_HOST": "127.0.0.1",
            "CUMI_METRICS_PORT": "0",
        }
    )


def sample(name: str, **labels: str) -> float:
    return PROJECTOR_REGISTRY.get_sample_value(name, labels) or 0.0


def applied_total() -> float:
    return sum(
        s.value
        for metric in PROJECTOR_REGISTRY.collect()
        if metric.name in ("cumi_projector_events", "cumi_projector_snapshots")
        for s in metric.samples
        if s.name.endswith("_total")
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get(http: aiohttp.ClientSession, projector: Projector, path: str) -> tuple[int, Any]:
    async with http.get(f"http://127.0.0.1:{projector.ops.port}{path}") as resp:
        text = await resp.text()  # problem+json too
        body = json.loads(text) if "json" in resp.content_type else text
        return resp.status, body


async def until_ready(projector: Projector) -> None:
    for _ in range(300):
        if projector.ready:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("projector not ready within 30 s")


class TestReadApiAndMetrics:
    """Serves every mailbox it owns with counts; metrics count every record once; a restarted
    projector restores the same state from the state topic without re-applying anything."""

    async def test_serve_count_restore(
        self, kafka_bootstrap: str, fresh_topics: TopicNames, http: aiohttp.ClientSession
    ) -> None:
        stream = generate(events=3000, mailboxes=25, seed=3)
        await produce(kafka_bootstrap, fresh_topics.events, stream.records, stream.values)
        expected = fold(stream.records)
        group = f"svc-{uuid.uuid4().hex[:8]}"
        config = settings(kafka_bootstrap, fresh_topics, group)
        before = applied_total()
        async with Projector(config) as projector:
            await until_ready(projector)
            await wait_committed(kafka_bootstrap, group, fresh_topics.events, within=60)
            assert applied_total() - before == len(stream.records)
            await self._check_api(http, projector, expected)
            assert sample("cumi_projector_mailboxes") == len(expected.mailboxes)
            assert sample("cumi_projector_partitions_assigned") == 12
            assert sample("cumi_projector_ready") == 1
            assert sample("cumi_projector_transactions_total", outcome="committed") > 0
            lags = [sample("cumi_projector_consumer_lag", partition=str(p)) for p in range(12)]
            assert lags == [0.0] * 12
            status, _ = await get(http, projector, "/healthz/ready")
            assert status == 200
            _, text = await get(http, projector, "/metrics")  # only its own registry
            assert "cumi_projector_ready 1.0" in text and "process_start_time_seconds" in text
            assert "cumi_worker_" not in text
        state = await read_state_topic(fresh_topics.state, bootstrap_servers=kafka_bootstrap)
        assert state_differences(expected, state) == []

        restored_before, applied_before = (
            sample("cumi_projector_restored_mailboxes_total"),
            (applied_total()),
        )
        async with Projector(config) as again:
            await until_ready(again)
            restored = sample("cumi_projector_restored_mailboxes_total") - restored_before
            assert restored == len(expected.mailboxes)
            # the committed offsets were the end: nothing left to apply
            await holds(lambda: applied_total() == applied_before, "nothing re-applied", 0.5)
            await self._check_api(http, again, expected)

    async def _check_api(
        self, http: aiohttp.ClientSession, projector: Projector, expected: Any
    ) -> None:
        status, page = await get(http, projector, "/mailboxes?limit=10")
        assert status == 200
        assert page["total"] == len(expected.mailboxes)
        assert [m["mailbox_id"] for m in page["mailboxes"]] == sorted(expected.mailboxes)[:10]
        first = page["mailboxes"][0]
        state = expected.mailboxes[first["mailbox_id"]]
        inbox = state.to_json()["inbox"]
        assert first["counts"]["inbox"] == len(inbox)
        assert first["counts"]["inbox_unread"] == sum(not m["read"] for m in inbox.values())
        assert first["partition"] == partition_for(first["mailbox_id"], 12)
        for mailbox_id, mailbox in expected.mailboxes.items():
            status, body = await get(http, projector, f"/mailboxes/{mailbox_id}")
            assert status == 200
            assert body["usn"] == mailbox.usn
            assert body["counters"] == mailbox.to_json(detail=True)["counters"]
            assert body["inbox"] == mailbox.to_json(detail=True)["inbox"]
        status, body = await get(http, projector, "/mailboxes/no-such-mailbox")
        assert status == 404
        assert body["type"] == "urn:cumi-pipeline:problem:unknown-mailbox"
        assert (body["mailbox_id"], body["partition"], body["owned"]) == (
            "no-such-mailbox",
            partition_for("no-such-mailbox", 12),
            True,
        )
        for bad in ("0", "1001", "ten"):
            status, body = await get(http, projector, f"/mailboxes?limit={bad}")
            assert (status, body["status"]) == (400, 400)


class TestTopics:
    """The state topic is created co-partitioned; a mismatched one is refused."""

    async def test_creates_a_missing_state_topic_like_the_events_topic(
        self, kafka_bootstrap: str, fresh_topics: TopicNames
    ) -> None:
        topics = TopicNames(events=fresh_topics.events, state=f"{fresh_topics.state}-new")
        async with Projector(settings(kafka_bootstrap, topics, "create-test")) as projector:
            await until_ready(projector)
            assert projector.partition_count == 12
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            (state,) = await admin.describe_topics([topics.state])
            configs = await admin.describe_configs(
                [_config_resource(topics.state)], include_synonyms=False
            )
            await admin.delete_topics([topics.state])
        finally:
            await admin.close()
        assert len(state["partitions"]) == 12
        entries = {
            entry[0]: entry[1]
            for response in configs
            for *_, _name, resource_entries in response.resources
            for entry in resource_entries
        }
        assert entries["cleanup.policy"] == "compact"

    async def test_refuses_a_state_topic_with_another_partition_count(
        self, kafka_bootstrap: str, fresh_topics: TopicNames
    ) -> None:
        wrong = f"{fresh_topics.state}-3"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(wrong, 3, 1)])
            topics = TopicNames(events=fresh_topics.events, state=wrong)
            projector = Projector(settings(kafka_bootstrap, topics, "wrong-test"))
            with pytest.raises(ConfigError, match="must have 12 partitions"):
                await projector.start()
            await projector.stop()
            await admin.delete_topics([wrong])
        finally:
            await admin.close()


def _config_resource(topic: str) -> ConfigResource:
    return ConfigResource(ConfigResourceType.TOPIC, topic)


class TestKafkaAway:
    """Kafka unreachable at start-up: the projector serves health (not ready), retries with
    backoff logging once, and becomes ready when the broker is back — no exit."""

    async def test_waits_for_kafka_at_start_up(
        self,
        kafka_bootstrap: str,
        kafka_broker: LocalBroker,
        fresh_topics: TopicNames,
        http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # the recovery line is INFO: captured whatever level earlier tests left on the root logger
        caplog.set_level(logging.INFO, logger="ingest.projector")
        await kafka_broker.stop()
        try:
            projector = Projector(settings(kafka_bootstrap, fresh_topics, uuid.uuid4().hex))
            async with projector:
                async with asyncio.timeout(30):
                    while "Kafka not reachable" not in caplog.text:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                assert not projector.ready
                status, _ = await get(http, projector, "/healthz/ready")
                assert status == 503
                await kafka_broker.start()
                await until_ready(projector)
                assert "Kafka reachable again" in caplog.text
            assert projector.exit_code == 0
        finally:
            await kafka_broker.start()
        assert caplog.text.count("Kafka not reachable") == 1, "one line per state change"
