"""The three-node local Kafka cluster for real: quorum, replication, and acknowledged records that
survive a killed leader, a rolling restart, a majority down and a crash of every node.

An idempotent acks=all producer runs through each fault; afterwards every partition must hold each
acknowledged record exactly once, in the order it was sent, and nothing that was never sent. The
figures (start-to-ready, RSS per node, failover) are logged under `cluster.measure` and attached
to the test report (`record_property`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fixtures.worker import read_topic

from ingest.devservices.kafka import LocalCluster
from ingest.errors import DevServiceError

pytestmark = pytest.mark.integration

measure = logging.getLogger("cluster.measure")

PARTITIONS = 3
SEND_PAUSE_S = 0.004
"""Between sends: a few hundred records a second, load without starving three JVMs of CPU."""
MAX_UNACKED = 2000
ACKS_BETWEEN_FAULTS = 300
WAIT_S = 120.0


@dataclass
class Sent:
    """What the load producer sent and what the cluster acknowledged, per partition."""

    order: dict[int, list[int]] = field(default_factory=lambda: {p: [] for p in range(PARTITIONS)})
    """Sequence numbers in the order they were handed to the producer."""
    acked: dict[int, set[int]] = field(
        default_factory=lambda: {p: set() for p in range(PARTITIONS)}
    )
    ack_times: list[tuple[float, float, int]] = field(default_factory=list)
    """(acked at, sent at, partition), monotonic clock."""
    failed: list[BaseException] = field(default_factory=list)

    @property
    def acked_total(self) -> int:
        return sum(len(s) for s in self.acked.values())


class LoadProducer:
    """An idempotent acks=all producer sending numbered records round-robin to the partitions."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.sent = Sent()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            # a batch must outlive the longest outage here: aiokafka fails it after this long
            request_timeout_ms=int(WAIT_S * 1000),
        )
        self._room = asyncio.Semaphore(MAX_UNACKED)
        self._progress = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoadProducer:
        await self._producer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop sending and wait (bounded) until everything sent is acknowledged or failed."""
        self._stopping = True
        self._room.release()  # a send loop waiting for room sees the stop
        if self._task is not None:
            await self._task
            self._task = None
        async with asyncio.timeout(WAIT_S):
            await self._producer.stop()

    async def _run(self) -> None:
        seq = 0
        while True:
            await self._room.acquire()
            if self._stopping:
                return
            partition = seq % PARTITIONS
            future = await self._producer.send(self.topic, str(seq).encode(), partition=partition)
            self.sent.order[partition].append(seq)
            future.add_done_callback(
                functools.partial(self._done, partition, seq, time.monotonic())
            )
            seq += 1
            await asyncio.sleep(SEND_PAUSE_S)

    def _done(
        self, partition: int, seq: int, sent_at: float, future: asyncio.Future[object]
    ) -> None:
        self._room.release()
        if future.cancelled():
            return
        if (error := future.exception()) is not None:
            self.sent.failed.append(error)
            return
        self.sent.acked[partition].add(seq)
        self.sent.ack_times.append((time.monotonic(), sent_at, partition))
        self._progress.set()

    async def acks(self, count: int, within_s: float = WAIT_S) -> None:
        """Wait until `count` more records are acknowledged."""
        target = self.sent.acked_total + count
        async with asyncio.timeout(within_s):
            while self.sent.acked_total < target:
                self._progress.clear()
                await self._progress.wait()

    async def first_ack_of_send_after(self, moment: float, within_s: float = WAIT_S) -> float:
        """When the first record handed over after `moment` was acknowledged."""
        async with asyncio.timeout(within_s):
            while True:
                times = [acked for acked, sent, _ in self.sent.ack_times if sent > moment]
                if times:
                    return min(times)
                self._progress.clear()
                await self._progress.wait()


async def check_read_back(bootstrap: str, load: LoadProducer) -> None:
    """Every acknowledged record exactly once, per partition in send order, nothing invented."""
    records = await read_topic(bootstrap, load.topic)
    read: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for record in records:
        read[record.partition].append(int(record.value or b"-1"))
    for partition in range(PARTITIONS):
        got, sent = read[partition], load.sent.order[partition]
        assert len(got) == len(set(got)), f"duplicates in partition {partition}"
        position = {seq: i for i, seq in enumerate(sent)}
        assert set(got) <= set(sent), f"partition {partition} holds records never sent"
        assert [position[s] for s in got] == sorted(position[s] for s in got), (
            f"partition {partition} out of send order"
        )
        missing = load.sent.acked[partition] - set(got)
        assert not missing, f"{len(missing)} acknowledged records lost in partition {partition}"
    assert load.sent.acked_total > 0


async def create_topic(bootstrap: str) -> str:
    name = f"cluster-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, replication_factor=3)])
    finally:
        await admin.close()
    return name


def rss_mib(pid: int | None) -> float:
    assert pid is not None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


RecordProperty = Callable[[str, object], None]


def record_rss(cluster: LocalCluster, record_property: RecordProperty, when: str) -> None:
    sizes = [round(rss_mib(node.pid)) for node in cluster.nodes]
    measure.info("RSS per node %s: %s MiB", when, sizes)
    record_property(f"rss_mib_{when}", sizes)


# -- fixtures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    cluster: LocalCluster
    seconds: float


@pytest.fixture(scope="module")
def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """One cluster for the module (three JVMs take seconds to start); data in pytest's tmp."""
    cluster = LocalCluster(size=3, data_dir=tmp_path_factory.mktemp("kafka-cluster"))
    begun = time.monotonic()
    try:
        cluster.start_sync()
    except DevServiceError as e:
        pytest.fail(f"the local Kafka cluster could not start: {e}", pytrace=False)
    try:
        yield Started(cluster, time.monotonic() - begun)
    finally:
        cluster.stop_sync()


@pytest.fixture
async def cluster(_cluster: Started) -> AsyncIterator[LocalCluster]:
    """The module's cluster, healthy; nodes a test leaves down are started again afterwards."""
    await _cluster.cluster.wait_healthy()
    yield _cluster.cluster
    await _cluster.cluster.start()
    await _cluster.cluster.wait_healthy()


# -- tests --------------------------------------------------------------------------------------


class TestQuorum:
    """Three nodes, one quorum, replication 3 and min.insync.replicas 2 everywhere."""

    async def test_every_node_registered_and_configured(
        self,
        _cluster: Started,
        cluster: LocalCluster,
        record_property: RecordProperty,
    ) -> None:
        measure.info("cluster start-to-ready: %.1f s", _cluster.seconds)
        record_property("start_to_ready_s", round(_cluster.seconds, 1))
        record_rss(cluster, record_property, "idle")
        assert [node.node_id for node in cluster.nodes] == [1, 2, 3]
        assert cluster.bootstrap.split(",") == [node.bootstrap for node in cluster.nodes]
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_cluster()
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, str(n.node_id)) for n in cluster.nodes]
            )
        finally:
            await admin.close()
        assert sorted(b["node_id"] for b in described["brokers"]) == [1, 2, 3]
        wanted = {
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "unclean.leader.election.enable": "false",
        }
        for response in configs:
            for _code, _msg, _type, _name, entries in response.resources:
                values = {entry[0]: entry[1] for entry in entries}
                assert {key: values[key] for key in wanted} == wanted

    async def test_topic_and_internal_topics_get_three_replicas_in_sync(
        self, cluster: LocalCluster
    ) -> None:
        topic = await create_topic(cluster.bootstrap)
        # a committed group offset and a transaction create the two internal topics
        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap, transactional_id=f"tx-{topic}"
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"in a transaction", partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=f"g-{topic}")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): 1})
        finally:
            await consumer.stop()
        await cluster.wait_healthy()
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(
                [topic, "__consumer_offsets", "__transaction_state"]
            )
        finally:
            await admin.close()
        assert {t["topic"] for t in described} == {
            topic,
            "__consumer_offsets",
            "__transaction_state",
        }
        for t in described:
            for p in t["partitions"]:
                assert sorted(p["replicas"]) == [1, 2, 3], t["topic"]
                assert sorted(p["isr"]) == [1, 2, 3], t["topic"]
        assert 0 <= await cluster.leader_of(topic, 0) < 3


class TestFaultsUnderLoad:
    """An idempotent acks=all producer keeps every acknowledged record through each fault."""

    async def test_leader_killed(
        self, cluster: LocalCluster, record_property: RecordProperty
    ) -> None:
        async def kill_the_leader(load: LoadProducer) -> None:
            record_rss(cluster, record_property, "under_load")
            victim = await cluster.leader_of(load.topic, 0)
            killed_at = time.monotonic()
            await cluster.nodes[victim].kill()
            failover = await load.first_ack_of_send_after(killed_at) - killed_at
            measure.info("leader failover (kill to next ack): %.2f s", failover)
            record_property("leader_failover_s", round(failover, 2))
            assert await cluster.leader_of(load.topic, 0) != victim

        await survives(cluster, kill_the_leader)

    async def test_rolling_restart(self, cluster: LocalCluster) -> None:
        async def restart_one_by_one(load: LoadProducer) -> None:
            for node in cluster.nodes:
                await node.stop()
                await load.acks(ACKS_BETWEEN_FAULTS)  # two nodes keep taking writes
                await node.start()
                await cluster.wait_healthy()

        await survives(cluster, restart_one_by_one)

    async def test_majority_down_holds_writes_until_it_returns(self, cluster: LocalCluster) -> None:
        async def kill_two(load: LoadProducer) -> None:
            survivor = await cluster.leader_of(load.topic, 0)
            first, second = (n for i, n in enumerate(cluster.nodes) if i != survivor)
            await first.kill()
            await second.kill()
            down_at = time.monotonic()
            # one of three in sync is below min.insync.replicas: acks=all must not succeed
            with pytest.raises(TimeoutError):
                await load.first_ack_of_send_after(down_at, within_s=5.0)
            # alone with the survivor: ready although the partitions `second` led have no
            # working leader yet, and two in sync is enough for acks=all again
            restarted_at = time.monotonic()
            await first.start()
            resumed = await load.first_ack_of_send_after(down_at) - restarted_at
            measure.info("majority back: node start to next ack %.1f s", resumed)
            await second.start()
            await cluster.wait_healthy()

        await survives(cluster, kill_two)

    async def test_every_node_killed(self, cluster: LocalCluster) -> None:
        async def crash_all(load: LoadProducer) -> None:
            await cluster.kill()
            killed_at = time.monotonic()
            await cluster.start()
            resumed = await load.first_ack_of_send_after(killed_at) - killed_at
            measure.info("every node killed: restart to next ack %.1f s", resumed)
            await cluster.wait_healthy()

        await survives(cluster, crash_all)


async def survives(cluster: LocalCluster, fault: Callable[[LoadProducer], Awaitable[None]]) -> None:
    """Run `fault` while the load producer writes to a new topic (acknowledged records before and
    after it), then check what the topic holds."""
    topic = await create_topic(cluster.bootstrap)
    async with LoadProducer(cluster.bootstrap, topic) as load:
        await load.acks(ACKS_BETWEEN_FAULTS)
        await fault(load)
        await load.acks(ACKS_BETWEEN_FAULTS)
    assert not load.sent.failed
    await check_read_back(cluster.bootstrap, load)
