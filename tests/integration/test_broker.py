"""The local Kafka broker for real: metadata, topics, stop/start with data kept, the CLI."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fixtures.worker import read_topic

from ingest.devservices.kafka import LocalBroker
from ingest.errors import DevServiceError
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics

pytestmark = pytest.mark.integration


async def describe(bootstrap: str, topics: list[str]) -> dict[str, dict[str, object]]:
    """Partition count and the topic configs the broker reports, per topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        metadata = await admin.describe_topics(topics)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
        )
    finally:
        await admin.close()
    result: dict[str, dict[str, object]] = {
        t["topic"]: {"partitions": len(t["partitions"])} for t in metadata
    }
    for response in configs:
        for _code, _msg, _type, name, entries in response.resources:
            result[name].update({entry[0]: entry[1] for entry in entries})
    return result


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class TestBroker:
    """One KRaft node that answers metadata requests as soon as start() returns."""

    async def test_metadata_names_this_node_and_cluster(self, kafka_broker: LocalBroker) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
        finally:
            await admin.close()
        assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [
            ("127.0.0.1", kafka_broker.port)
        ]
        meta = (kafka_broker.data_dir / "kraft" / "meta.properties").read_text()
        assert f"cluster.id={cluster['cluster_id']}" in meta
        assert "Kafka Server started" in kafka_broker.log_path.read_text()

    async def test_stop_start_keeps_ports_and_data(
        self, kafka_broker: LocalBroker, fresh_topics: TopicNames
    ) -> None:
        bootstrap, old_pid = kafka_broker.bootstrap, kafka_broker.pid
        async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
            for n in range(3):
                await producer.send_and_wait(fresh_topics.events, b"v%d" % n, key=b"abell")

        await kafka_broker.stop()
        assert not kafka_broker.running
        assert not accepts_connections(kafka_broker.port)
        await kafka_broker.stop()  # idempotent

        await kafka_broker.start()
        assert kafka_broker.bootstrap == bootstrap
        assert kafka_broker.pid != old_pid
        records = await read_topic(bootstrap, fresh_topics.events)
        assert [r.value for r in records] == [b"v0", b"v1", b"v2"]

    async def test_a_taken_port_is_a_clear_error(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            broker = LocalBroker(data_dir=tmp_path / "kafka", controller_port=port)
            with pytest.raises(DevServiceError, match="Address already in use"):
                await broker.start()
            assert not broker.running
            await broker.stop()


class TestTopics:
    """ensure_topics creates the pipeline topics once, with their policies."""

    async def test_created_once_with_their_policies(
        self, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        names = TopicNames.with_prefix(f"topics-{os.getpid()}-")
        specs = default_specs(names)
        assert sorted(await ensure_topics(kafka_bootstrap, specs)) == sorted(names.all())
        assert await ensure_topics(kafka_bootstrap, specs) == []

        described = await describe(kafka_bootstrap, list(names.all()))
        assert described[names.events]["partitions"] == 12
        assert described[names.events]["retention.ms"] == "-1"
        assert described[names.dlq]["retention.ms"] == "2592000000"
        assert described[names.state]["partitions"] == 12
        assert described[names.state]["cleanup.policy"] == "compact"
        assert described[names.registry]["cleanup.policy"] == "compact"

        with caplog.at_level(logging.WARNING, logger="ingest.eventlog.topics"):
            again = await ensure_topics(kafka_bootstrap, default_specs(names, events_partitions=4))
        assert again == []
        mismatches = [r.getMessage() for r in caplog.records if "partitions" in r.getMessage()]
        assert len(mismatches) == 3  # events, state and checkpoints; left as they are
        described = await describe(kafka_bootstrap, [names.events])
        assert described[names.events]["partitions"] == 12

    async def test_fresh_topics_are_unique_and_exist(
        self, kafka_bootstrap: str, fresh_topics: TopicNames
    ) -> None:
        assert fresh_topics.events.startswith("t-")
        assert fresh_topics != TopicNames()
        described = await describe(kafka_bootstrap, list(fresh_topics.all()))
        assert set(described) == set(fresh_topics.all())


class TestCli:
    """`ingest broker start|status|stop` in a separate process, found again through its state."""

    def ingest(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest", "broker", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            check=False,
        )

    def test_start_status_stop(self, kafka_bootstrap: str, tmp_path: Path) -> None:
        # kafka_bootstrap: the runtime is fetched, so this start does not race the session's
        where = ["--state-file", str(tmp_path / "state.json")]
        assert self.ingest("status", *where).returncode == 1

        started = self.ingest("start", *where, "--data-dir", str(tmp_path / "data"))
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        try:
            assert bootstrap.startswith("127.0.0.1:") and bootstrap != kafka_bootstrap
            status = self.ingest("status", *where)
            assert status.returncode == 0
            assert status.stdout.startswith(f"running {bootstrap} ")
            assert "does not answer" not in status.stdout
            again = self.ingest("start", *where)
            assert again.stdout.strip() == bootstrap  # already running: same broker
        finally:
            stopped = self.ingest("stop", *where)
        assert stopped.returncode == 0
        assert stopped.stdout.strip() == f"stopped {bootstrap}"
        assert not accepts_connections(int(bootstrap.rpartition(":")[2]))
        assert self.ingest("status", *where).stdout.strip() == "not running"

    def test_fetch_again_needs_no_maven(self, kafka_bootstrap: str, tmp_path: Path) -> None:
        # only java on PATH: a complete cache must not run Maven again
        java = subprocess.run(
            ["sh", "-c", "command -v java"], capture_output=True, text=True, check=True
        ).stdout.strip()
        (tmp_path / "java").symlink_to(java)
        env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | {"PATH": str(tmp_path)}
        fetched = self.ingest("fetch", env=env)
        assert fetched.returncode == 0, fetched.stderr
        assert " jars in " in fetched.stdout

    def test_missing_java_is_one_clear_error(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | {"PATH": str(tmp_path)}
        fetched = self.ingest("fetch", env=env)
        assert fetched.returncode == 2
        assert fetched.stderr.startswith("error: the local Kafka broker needs Java >= 17")
        assert "apt-get install openjdk-17-jre-headless maven" in fetched.stderr
