"""Configuration of the local broker: free ports, server.properties, the JVM command line.

A node runs alone (`LocalBroker`) or as one of a quorum (`Quorum`, `LocalCluster`): the same
template either way, with the node id, the voters and the replication settings filled in.
"""

from __future__ import annotations

import base64
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ingest.devservices.kafka.runtime import KafkaRuntime, package_text
from ingest.devservices.process import HOST, free_ports
from ingest.errors import DevServiceError

HEAP_OPTIONS = ("-Xms512m", "-Xmx1g")
QUORUM_HEAP_OPTIONS = ("-Xms256m", "-Xmx512m")
"""Heap of a node in a quorum: three JVMs share a two-core machine with the suite's own broker."""
MAX_REPLICATION_FACTOR = 3
# Kafka's own launcher defaults (kafka-run-class.sh), minus what only matters for big heaps.
JVM_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)
JVM_OPTIONS_ENV = "CUMI_KAFKA_JVM_OPTS"
"""Extra JVM options, appended last (e.g. `-XX:TieredStopAtLevel=1`: starts faster, runs slower)."""


@dataclass(frozen=True, slots=True)
class BrokerPorts:
    """The two loopback ports of the single node."""

    port: int
    """PLAINTEXT listener: the bootstrap address clients use."""
    controller_port: int
    """CONTROLLER listener (KRaft quorum)."""

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass(frozen=True, slots=True)
class Quorum:
    """A node's place in a KRaft quorum on loopback where every node is broker and voter."""

    node_id: int
    """This node's `node.id`: its position in `controller_ports`, counted from 1."""
    controller_ports: tuple[int, ...]
    """Every voter's CONTROLLER port, node 1's first."""
    cluster_id: str
    """The id every node's storage is formatted with; nodes of different clusters never join."""

    def __post_init__(self) -> None:
        if not 1 <= self.node_id <= len(self.controller_ports):
            raise DevServiceError(f"node {self.node_id} is not one of {self.size} voters")

    @property
    def size(self) -> int:
        return len(self.controller_ports)

    @property
    def controller_port(self) -> int:
        return self.controller_ports[self.node_id - 1]

    @property
    def voters(self) -> str:
        """`controller.quorum.voters`: `1@127.0.0.1:<port>,2@…`."""
        return ",".join(f"{i}@{HOST}:{p}" for i, p in enumerate(self.controller_ports, start=1))

    @property
    def replication_factor(self) -> int:
        return min(self.size, MAX_REPLICATION_FACTOR)

    @property
    def min_insync_replicas(self) -> int:
        """One replica may be lost without refusing writes (2 of 3); 1 on a single node."""
        return max(1, self.replication_factor - 1)


def choose_ports(port: int | None = None, controller_port: int | None = None) -> BrokerPorts:
    """Given ports where set, free ones otherwise."""
    fresh = iter(free_ports(3))
    chosen = port if port is not None else next(fresh)
    if controller_port is None:
        controller_port = next(p for p in fresh if p != chosen)
    if controller_port == chosen:
        raise DevServiceError(f"the broker and controller ports must differ (both {chosen})")
    controller = controller_port
    return BrokerPorts(port=chosen, controller_port=controller)


def render_server_properties(
    ports: BrokerPorts, log_dirs: Path, quorum: Quorum | None = None
) -> str:
    """server.properties for a KRaft broker+controller node on 127.0.0.1: node 1 alone unless
    `quorum` names its place among several voters."""
    if quorum is None:
        quorum = Quorum(1, (ports.controller_port,), cluster_id="")
    elif quorum.controller_port != ports.controller_port:
        raise DevServiceError(
            f"node {quorum.node_id} listens on {ports.controller_port}, "
            f"its quorum expects {quorum.controller_port}"
        )
    text = string.Template(package_text("server.properties")).substitute(
        port=ports.port,
        controller_port=ports.controller_port,
        log_dirs=log_dirs,
        node_id=quorum.node_id,
        voters=quorum.voters,
        replication_factor=quorum.replication_factor,
        min_insync_replicas=quorum.min_insync_replicas,
    )
    if quorum.size > 1:
        text += "\n" + package_text("quorum.properties")
    return text


_LISTENERS = re.compile(r"^listeners=PLAINTEXT://[^:]+:(\d+),CONTROLLER://[^:]+:(\d+)\s*$", re.M)


def read_ports(server_properties: Path) -> BrokerPorts | None:
    """The ports a previously rendered server.properties used, if it is ours and readable."""
    try:
        match = _LISTENERS.search(server_properties.read_text(encoding="utf-8"))
    except OSError:
        return None
    if match is None:
        return None
    return BrokerPorts(port=int(match.group(1)), controller_port=int(match.group(2)))


def random_cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints: 16 random bytes, URL-safe base64, no padding.

    Generated here rather than by `StorageTool random-uuid` to save one JVM start (~1.3 s). Like
    Kafka's `Uuid.randomUuid()`, ids starting with "-" (unusable on a command line) are redrawn.
    """
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def extra_jvm_options() -> list[str]:
    return os.environ.get(JVM_OPTIONS_ENV, "").split()


def java_command(
    runtime: KafkaRuntime,
    main_class: str,
    args: Sequence[str],
    *,
    logs_dir: Path,
    log4j_config: Path,
    class_archive: Path | None = None,
    archive_at_exit: Path | None = None,
    heap: Sequence[str] = HEAP_OPTIONS,
) -> list[str]:
    """The full `java … <main class> <args>` command line."""
    argv = [str(runtime.java.path), *heap, *JVM_OPTIONS]
    if archive_at_exit is not None:
        argv.append(f"-XX:ArchiveClassesAtExit={archive_at_exit}")
    elif class_archive is not None:
        # -Xshare:auto (the default) falls back to no sharing if the archive does not fit this JVM
        argv.append(f"-XX:SharedArchiveFile={class_archive}")
    argv += [
        f"-Dkafka.logs.dir={logs_dir}",
        f"-Dlog4j2.configurationFile={log4j_config}",
        *extra_jvm_options(),
        "-cp",
        runtime.classpath,
        main_class,
        *args,
    ]
    return argv
