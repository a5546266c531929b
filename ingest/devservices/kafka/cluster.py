"""`LocalCluster`: several real Kafka nodes on 127.0.0.1 forming one KRaft quorum.

Every node is a `LocalBroker` that is broker and controller (voter) at once, so the cluster keeps
working, metadata included, while a minority of its nodes is down. Topics get replication factor
min(size, 3) by default and `min.insync.replicas` one less (3 and 2 for the default three nodes),
internal topics too, so an acknowledged (acks=all) record is on at least two nodes. Tests stop
(`stop()`), crash (`kill()`) and restart (`start()`, same ports and data) single nodes through
`cluster.nodes[i]`, and wait for the outcome with `leader_of()` and `wait_healthy()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from ingest.devservices.jvm import LocalService, PortTaken
from ingest.devservices.kafka.config import Quorum, random_cluster_id
from ingest.devservices.kafka.node import READY_TIMEOUT_S, STOP_TIMEOUT_S, LocalBroker
from ingest.devservices.kafka.runtime import KafkaRuntime
from ingest.devservices.process import free_ports
from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

DEFAULT_SIZE = 3
HEALTHY_TIMEOUT_S = 120.0
LEADER_TIMEOUT_S = 60.0
_POLL_S = 0.2
_METADATA_TIMEOUT_MS = 5000
_T = TypeVar("_T")


class LocalCluster(LocalService):
    """Nodes on 127.0.0.1 in one quorum: `async with LocalCluster() as c: … c.bootstrap …`.

    `data_dir`: one sub-directory per node, kept across stop/start; a temporary one (deleted by
    `cleanup()` / `async with`) when not given. Ports are free ones, chosen anew per object.
    """

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        cache_dir: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        ready_timeout: float = READY_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        runtime: KafkaRuntime | None = None,
    ) -> None:
        if size < 1:
            raise DevServiceError(f"a cluster needs at least one node, not {size}")
        super().__init__(data_dir, temp_prefix="cumi-kafka-cluster-", ports_pinned=False)
        self._size = size
        self._cache_dir = cache_dir
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._runtime = runtime
        # only for fresh storage: formatted nodes keep the id they were formatted with
        self._cluster_id = random_cluster_id()
        self._nodes = self._make_nodes()

    def _make_nodes(self) -> tuple[LocalBroker, ...]:
        ports = free_ports(2 * self._size)
        client_ports, controller_ports = ports[: self._size], tuple(ports[self._size :])
        return tuple(
            LocalBroker(
                self._cache_dir,
                self._work_dir / f"node-{node_id}",
                client_ports[node_id - 1],
                ready_timeout=self._ready_timeout,
                stop_timeout=self._stop_timeout,
                runtime=self._runtime,
                quorum=Quorum(node_id, controller_ports, self._cluster_id),
            )
            for node_id in range(1, self._size + 1)
        )

    # -- what callers read ------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[LocalBroker, ...]:
        """The nodes; `nodes[i]` has `node.id` i + 1."""
        return self._nodes

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated, for `bootstrap_servers`."""
        return ",".join(node.bootstrap for node in self._nodes)

    @property
    def data_dir(self) -> Path:
        return self._work_dir

    @property
    def running(self) -> bool:
        """Whether any node runs."""
        return any(node.running for node in self._nodes)

    def __str__(self) -> str:
        return f"the Kafka cluster at {self.bootstrap}"

    def index_of(self, node_id: int) -> int:
        """Position in `nodes` of the node with this `node.id`."""
        for index, node in enumerate(self._nodes):
            if node.node_id == node_id:
                return index
        raise DevServiceError(f"no node {node_id} in this cluster")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every stopped node at once; return when each is ready. Running ones are kept.

        Nodes that are down together must start together: none is ready before a majority of
        the voters elects a controller, so starting them one by one would wait forever.
        """
        await self._start_on_free_ports(self._start_stopped, self._renew_nodes)

    def _renew_nodes(self) -> None:
        self._nodes = self._make_nodes()

    async def _start_stopped(self) -> None:
        stopped = [node for node in self._nodes if not node.running]
        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                for node in stopped:
                    group.create_task(node.start())
        except BaseException as e:
            # the others were cancelled (and stopped their own JVMs); stop those that made it
            await asyncio.gather(*(node.stop() for node in stopped))
            if isinstance(e, BaseExceptionGroup):
                raise _one_error(e) from e
            raise
        log.info(
            "%d of %d Kafka nodes started in %.1f s (%s)",
            len(stopped),
            self._size,
            time.monotonic() - started,
            self.bootstrap,
        )

    async def stop(self) -> None:
        """SIGTERM every node at once (controlled shutdown), SIGKILL after `stop_timeout` s.

        At once, because a node's controlled shutdown needs a controller: stopped one after the
        other, the last ones would find no quorum and wait out the timeout. Idempotent; keeps data.
        """
        await asyncio.gather(*(node.stop() for node in self._nodes))

    async def kill(self) -> None:
        """SIGKILL every node: a crash of the whole cluster. Idempotent; keeps data."""
        await asyncio.gather(*(node.kill() for node in self._nodes))

    # -- waiting for the cluster ------------------------------------------------------------

    async def leader_of(
        self, topic: str, partition: int, within_s: float = LEADER_TIMEOUT_S
    ) -> int:
        """Index in `nodes` of the partition's leader, once a running node names a running one.

        A dead node stays the leader in the metadata until the controller notices (seconds after
        a SIGKILL): such an answer is waited out rather than returned.
        """
        return await _poll(
            lambda: self._running_leader(topic, partition),
            within_s,
            f"no running leader of {topic}-{partition}",
        )

    async def wait_healthy(self, within_s: float = HEALTHY_TIMEOUT_S) -> None:
        """Wait until every node runs and, in every node's own metadata, all nodes are registered
        and every partition (internal topics too) has a leader and all its replicas in sync."""
        await _poll(self._healthy, within_s, "cluster not healthy")

    async def _running_leader(self, topic: str, partition: int) -> int | _Problem:
        problem = _Problem("no node is running")
        for node in self._nodes:
            if not node.running:
                continue
            view = await _metadata(node)
            if isinstance(view, _Problem):
                problem = view
                continue
            leader = _leader(view, topic, partition)
            if leader is not None and self._nodes[self.index_of(leader)].running:
                return self.index_of(leader)
            problem = _Problem(f"node {node.node_id} names leader {leader}")
        return problem

    async def _healthy(self) -> bool | _Problem:
        down = [node.node_id for node in self._nodes if not node.running]
        if down:
            return _Problem(f"nodes {down} are not running")
        wanted = {node.node_id for node in self._nodes}
        for node in self._nodes:
            view = await _metadata(node)
            if isinstance(view, _Problem):
                return view
            problem = _view_problem(view, wanted)
            if problem is not None:
                return _Problem(f"node {node.node_id} sees {problem}")
        return True


@dataclass(frozen=True, slots=True)
class _Problem:
    """Why a condition does not hold yet."""

    text: str


async def _poll(check: Callable[[], Awaitable[_T | _Problem]], within_s: float, what: str) -> _T:
    """`check()` every _POLL_S s until it answers; after `within_s` s (plus the check under way)
    raise DevServiceError with the last problem it reported."""
    deadline = time.monotonic() + within_s
    while True:
        answer = await check()
        if not isinstance(answer, _Problem):
            return answer
        if time.monotonic() >= deadline:
            raise DevServiceError(f"{what} after {within_s:.0f} s: {answer.text}")
        await asyncio.sleep(_POLL_S)


async def _metadata(node: LocalBroker) -> dict[str, Any] | _Problem:
    """The node's own view of the cluster (a metadata response), or why there is none."""
    client = AIOKafkaClient(
        bootstrap_servers=node.bootstrap, request_timeout_ms=_METADATA_TIMEOUT_MS
    )
    try:
        await client.bootstrap()
        response = await client.send(node.node_id, MetadataRequest(None))
    except (KafkaError, OSError, TimeoutError) as e:
        return _Problem(f"node {node.node_id} does not answer metadata requests ({e!r})")
    finally:
        await client.close()
    view: dict[str, Any] = response.to_object()
    return view


def _partitions(view: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    for topic in view["topics"]:
        for partition in topic["partitions"]:
            yield topic["topic"], partition


def _leader(view: dict[str, Any], topic: str, partition: int) -> int | None:
    for name, p in _partitions(view):
        if name == topic and p["partition"] == partition and p["leader"] >= 0:
            return int(p["leader"])
    return None


def _view_problem(view: dict[str, Any], node_ids: set[int]) -> str | None:
    registered = {int(broker["node_id"]) for broker in view["brokers"]}
    if not node_ids <= registered:
        return f"nodes {sorted(node_ids - registered)} not registered"
    for topic in view["topics"]:
        if topic["error_code"]:
            return f"{topic['topic']} with error {topic['error_code']}"
    for name, p in _partitions(view):
        where = f"{name}-{p['partition']}"
        if p["leader"] < 0:
            return f"{where} without a leader"
        if set(p["isr"]) != set(p["replicas"]):
            return f"{where} with {sorted(p['isr'])} of {sorted(p['replicas'])} in sync"
    return None


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A single error for nodes that failed to start: a PortTaken when that is all it was (the
    caller retries with other ports), else a DevServiceError naming each failure."""
    errors = [e for e in _leaves(group) if not isinstance(e, asyncio.CancelledError)]
    if errors and all(isinstance(e, PortTaken) for e in errors):
        return errors[0]
    if len(errors) == 1:
        return errors[0]
    return DevServiceError("\n\n".join(str(e) for e in errors) or "start was cancelled")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for e in group.exceptions:
        leaves += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return leaves
