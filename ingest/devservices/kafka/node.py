"""`LocalBroker`: one real Kafka node (KRaft broker + controller) on 127.0.0.1.

It formats a storage directory, runs `kafka.Kafka` from the jars `ingest broker fetch` cached, and
is ready only when the log says `Kafka Server started`, a metadata request lists the node and the
partitions it has to serve answer: every partition when it runs alone; in a quorum
(`LocalCluster`) only those it leads or is next in line for, since others may lead the rest or be
down. Ports are free ones chosen once; `stop()` then `start()` reuses them and the data, so tests
can stop the broker mid-stream. The lifecycle is `LocalJvm`'s (ingest.devservices.jvm).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ingest.devservices import process
from ingest.devservices.jvm import LocalJvm
from ingest.devservices.kafka.config import (
    HEAP_OPTIONS,
    QUORUM_HEAP_OPTIONS,
    BrokerPorts,
    Quorum,
    choose_ports,
    java_command,
    random_cluster_id,
    read_ports,
    render_server_properties,
)
from ingest.devservices.kafka.runtime import KafkaRuntime, fetch_jars, kafka_version, package_text
from ingest.devservices.maven import locked
from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
FORMAT_TIMEOUT_S = 120.0
STARTED_LINE = "Kafka Server started"
_JVM_MAIN = "kafka.Kafka"


def ensure_runtime(cache_dir: str | os.PathLike[str] | None = None) -> KafkaRuntime:
    """Fetch the jars if needed and train the class-data archive once (both idempotent)."""
    runtime = fetch_jars(cache_dir)
    if not runtime.class_archive.exists():
        with locked(runtime.home):
            if not runtime.class_archive.exists():
                process.run_sync(_train_class_archive(runtime))
    return runtime


async def _train_class_archive(runtime: KafkaRuntime) -> None:
    """Start and stop a throw-away broker once, recording the classes it loads (AppCDS).

    Later JVMs map that archive instead of loading and verifying ~5,000 classes from jars, which
    takes about 1.5 s off every broker start on two cores. A failure only costs that speed-up.
    """
    log.info("training a class-data archive for faster broker starts (first run only)")
    partial = runtime.class_archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="cumi-kafka-cds-") as tmp:
        broker = _TrainingBroker(data_dir=tmp, runtime=runtime, archive=partial)
        try:
            await broker.start()
        except DevServiceError as e:
            log.warning("class-data archive not built, starts stay slower: %s", e)
        finally:
            await broker.stop()
    if partial.exists():
        partial.rename(runtime.class_archive)


class LocalBroker(LocalJvm):
    """One Kafka node on 127.0.0.1: `async with LocalBroker() as broker: … broker.bootstrap …`.

    `data_dir`: kept across stop/start; a temporary one (deleted by `cleanup()` / `async with`)
    when not given. `port`: the client port, free one when not given; an existing data dir's
    previous ports are reused when still free. `detach`: the JVM gets a session of its own and
    survives this process (`ingest broker start`). `quorum`: the node's place among several voters
    (`LocalCluster` builds it); the controller port is the quorum's then. `restart()` keeps the
    ports and the data; `kill()` is a crash (the next start recovers the logs).
    """

    name = "Kafka"
    port_taken = "Address already in use"

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        detach: bool = False,
        runtime: KafkaRuntime | None = None,
        quorum: Quorum | None = None,
    ) -> None:
        if quorum is not None and controller_port is None:
            controller_port = quorum.controller_port
        super().__init__(
            data_dir,
            temp_prefix="cumi-kafka-",
            ready_timeout=ready_timeout,
            stop_timeout=stop_timeout,
            detach=detach,
            ports_pinned=port is not None or controller_port is not None,
        )
        self._cache_dir = cache_dir
        self._runtime = runtime
        self._quorum = quorum
        saved = read_ports(self.server_properties)
        if not self._ports_pinned and saved is not None and _both_free(saved):
            self._ports = saved
        else:
            self._ports = choose_ports(port, controller_port)

    # -- what callers read ------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:<port>`, for `bootstrap_servers`."""
        return self._ports.bootstrap

    @property
    def address(self) -> str:
        return self.bootstrap

    @property
    def ports(self) -> BrokerPorts:
        return self._ports

    @property
    def loopback_ports(self) -> tuple[int, ...]:
        return (self._ports.port, self._ports.controller_port)

    @property
    def port(self) -> int:
        return self._ports.port

    @property
    def node_id(self) -> int:
        return 1 if self._quorum is None else self._quorum.node_id

    @property
    def data_dir(self) -> Path:
        return self._work_dir

    @property
    def server_properties(self) -> Path:
        return self._work_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        """Kafka's own log (Log4j 2)."""
        return self._work_dir / "logs" / "server.log"

    @property
    def stdout_path(self) -> Path:
        """The JVM's stdout and stderr: crashes before logging starts end up here."""
        return self._work_dir / "kafka.out"

    @property
    def identity(self) -> tuple[str, ...]:
        # the data dir on the command line tells our broker from a process that reused the pid
        return (_JVM_MAIN, str(self._work_dir))

    @property
    def title(self) -> str:
        return f"Kafka {kafka_version()}, data {self._work_dir}"

    # -- LocalJvm's hooks -------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Fetch the runtime, write the configuration and format the storage directory unless
        already formatted."""
        if self._runtime is None:
            self._runtime = await asyncio.to_thread(ensure_runtime, self._cache_dir)
        runtime = self._runtime
        (self._work_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self._work_dir / "log4j2.properties").write_text(
            package_text("log4j2.properties"), encoding="utf-8"
        )
        self._write_server_properties()
        if (self._kraft_dir / "meta.properties").exists():
            return
        cluster_id = random_cluster_id() if self._quorum is None else self._quorum.cluster_id
        argv = self._java(
            runtime, "kafka.tools.StorageTool", "format", "-t", cluster_id, *self._format_options()
        )
        argv += ["-c", str(self.server_properties)]
        pid = process.spawn(argv, self.stdout_path, detach=False)
        done = await process.wait_exit(pid, FORMAT_TIMEOUT_S)
        if not done or not (self._kraft_dir / "meta.properties").exists():
            await process.terminate(pid, 1.0)
            raise DevServiceError(
                f"formatting {self._kraft_dir} failed:\n{process.tail(self.stdout_path)}"
            )
        log.debug("formatted %s for cluster %s", self._kraft_dir, cluster_id)

    def _command(self) -> list[str]:
        if self._runtime is None:
            raise DevServiceError("the Kafka runtime is not fetched yet: start() first")
        self._write_server_properties()  # the ports may be new ones
        return self._java(self._runtime, _JVM_MAIN, str(self.server_properties))

    async def _ready(self, output: str) -> bool:
        if STARTED_LINE not in output:
            return False
        return await _serves_clients(
            self.bootstrap, self.port, self.node_id, alone=self._quorum is None
        )

    def _choose_ports(self) -> None:
        self._ports = choose_ports()

    def _format_options(self) -> list[str]:
        """More `kafka-storage format` options (a test broker adds SCRAM users with
        `--add-scram`); applied once, when the storage directory is formatted."""
        return []

    # -- internals --------------------------------------------------------------------------

    @property
    def _kraft_dir(self) -> Path:
        return self._work_dir / "kraft"

    def _write_server_properties(self) -> None:
        text = render_server_properties(self._ports, self._kraft_dir, self._quorum)
        self.server_properties.write_text(text, encoding="utf-8")

    def _java(self, runtime: KafkaRuntime, main_class: str, *args: str) -> list[str]:
        archive = runtime.class_archive if runtime.class_archive.exists() else None
        return java_command(
            runtime,
            main_class,
            args,
            logs_dir=self.log_path.parent,
            log4j_config=self._work_dir / "log4j2.properties",
            class_archive=archive,
            heap=HEAP_OPTIONS if self._quorum is None else QUORUM_HEAP_OPTIONS,
        )


class _TrainingBroker(LocalBroker):
    """A broker whose JVM writes the classes it loaded to an AppCDS archive when it exits."""

    def __init__(self, *, data_dir: str, runtime: KafkaRuntime, archive: Path) -> None:
        super().__init__(data_dir=data_dir, runtime=runtime)
        self._archive = archive

    def _java(self, runtime: KafkaRuntime, main_class: str, *args: str) -> list[str]:
        return java_command(
            runtime,
            main_class,
            args,
            logs_dir=self.log_path.parent,
            log4j_config=self.data_dir / "log4j2.properties",
            archive_at_exit=self._archive if main_class == _JVM_MAIN else None,
        )


def _both_free(ports: BrokerPorts) -> bool:
    return process.port_is_free(ports.port) and process.port_is_free(ports.controller_port)


async def _serves_clients(bootstrap: str, port: int, node_id: int, *, alone: bool) -> bool:
    """Whether the metadata lists this node and the partitions it must serve answer.

    After a restart the metadata answers before the partitions' logs are loaded: clients would
    start with NotLeaderForPartition errors. Asking each partition's end offset (aiokafka retries
    until its leader answers) waits that out, so `start()` returning means ready for clients.
    Alone, that is every partition. In a quorum it is only those this node leads or that wait for
    it (no leader, this node in sync): a partition led elsewhere is not this node's to answer for,
    and one whose in-sync replicas are all down would keep a restarted node from ever being ready.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        topics = await admin.describe_topics()
    except (KafkaError, OSError, TimeoutError) as e:
        log.debug("metadata request to %s failed: %s", bootstrap, e)
        return False
    finally:
        await admin.close()
    brokers = cluster.get("brokers", [])
    if not any(int(b["port"]) == port and int(b["node_id"]) == node_id for b in brokers):
        return False
    partitions = [
        TopicPartition(t["topic"], p["partition"])
        for t in topics
        for p in t["partitions"]
        if alone or _waits_for(p, node_id)
    ]
    if not partitions:
        return True
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10_000
    )
    try:
        await consumer.start()
        await consumer.end_offsets(partitions)
    except (KafkaError, OSError, TimeoutError) as e:
        log.debug("partitions of %s not served yet: %s", bootstrap, e)
        return False
    finally:
        await consumer.stop()
    return True


def _waits_for(partition: dict[str, Any], node_id: int) -> bool:
    """Whether a partition (metadata) is this node's to serve: it leads it, or it has no leader
    and this node is in sync, so the controller will elect it once it is registered."""
    leader = int(partition["leader"])
    return leader == node_id or (leader < 0 and node_id in partition["isr"])
