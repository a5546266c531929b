"""Mailboxes by group membership: ingest workers share the registry through Kafka's group protocol.

With `CUMI_MAILBOX_SOURCE=registry` every worker joins one consumer group (`KAFKA_WORKER_GROUP`)
on the registry topic (ingest.mailboxes.registry). The registry partitions the group assigns to a
worker define its mailboxes: the entries of those partitions that are enabled and meant for its
server. Kafka is the coordinator — membership, failure detection
(`KAFKA_WORKER_SESSION_TIMEOUT_MS`) and assignment are the group protocol's. No offsets are
committed: a worker re-reads the compacted topic whenever it is given a partition, so nothing it
remembered can be stale.

- Given a partition: read it from the beginning to the end offset seen at assignment (last value
  per key wins, a tombstone removes), then hand its mailboxes to the subscription manager:
  requestnotification, subscribe, gap repair (snapshot reason `startup` for the worker's first
  assignment, `assigned` afterwards — the mailbox was another worker's, or nobody's, until now).
- Lost a partition: its mailboxes' channels are unsubscribed at once.
- Owned partitions are followed live: a new or re-enabled entry is subscribed and repaired
  (`registered`); a tombstone or a disabled entry is unsubscribed.

Rebalancing. aiokafka 0.14 implements only the eager protocol: before every rebalance a member has
*all* its partitions revoked, afterwards it gets the whole new assignment — no cooperative /
incremental rebalancing (KIP-429), no new consumer protocol (KIP-848). Unsubscribing on every
revocation would turn each rebalance (a worker joining, leaving or dying) into a gap for every
mailbox. So revocation is deferred: a revoked partition stays watched until the rebalance's
assignment says whether this worker kept it (nothing happens — the sticky assignor keeps
partitions where they are) or lost it (unsubscribed then). The eager protocol's stop-the-world
pause stops the registry consumer, not the watching. A worker that gets no assignment within the
rebalance timeout (twice it, to be sure) of a revocation has been dropped from the group and its
partitions are someone else's: it unsubscribes everything and waits to be given partitions again.
(A worker cut off from Kafka altogether is never told of a rebalance: it keeps watching, unable to
produce — its bounded queue fills and it stops pulling from CometD — until it reconnects, rejoins
and gives up what moved. Meanwhile the new owners watch the same mailboxes: duplicates, no loss.)

Ownership can thus overlap for a moment — the new owner of a moved partition subscribes after
reading it, the old owner unsubscribes when its assignment arrives (normally first; a worker
dropped from the group keeps watching up to twice the rebalance timeout). An overlap only duplicates
events, which the projection ignores; a moment when nobody watches is a gap, which the new
owner's gap repair covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError

from ingest.cumi.credentials import Credential, CredentialsProvider
from ingest.errors import BrokerError, DecodeError
from ingest.eventlog.schema_registry import schema_ids
from ingest.events import MailboxRegistryEntry, RepairReason
from ingest.mailboxes.registry import decode_entry, ensure_registry_topic, watchable
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock
from ingest.ops.metrics import (
    WORKER_ASSIGNMENT_LOAD_SECONDS,
    WORKER_REBALANCES,
    WORKER_REGISTRY_MAILBOXES,
    WORKER_REGISTRY_PARTITIONS,
    WORKER_REGISTRY_SKIPPED,
)
from ingest.settings import KafkaSettings

log = logging.getLogger(__name__)

_POLL_MS = 200
"""How long one poll waits for registry records; also the latency of acting on an assignment."""
_RETRY_S = 1.0

ConsumerFactory = Callable[..., AIOKafkaConsumer]
"""Builds the group consumer: `AIOKafkaConsumer` itself (unit tests pass a fake)."""
EnsureTopic = Callable[[KafkaSettings], Awaitable[None]]


class MailboxTarget(Protocol):
    """What the assignment drives: the subscription manager."""

    def add(self, aliases: Iterable[str], repair: RepairReason | None) -> int: ...

    async def remove(self, aliases: Iterable[str]) -> int: ...


class CredentialRefs:
    """A credentials provider looking each mailbox up under its registry entry's
    `credentials_ref`, if it has one (wraps the file or directory provider)."""

    def __init__(self, inner: CredentialsProvider) -> None:
        self._inner = inner
        self.refs: dict[str, str] = {}

    async def credential_for(self, alias: str) -> Credential:
        return await self._inner.credential_for(self.refs.get(alias, alias))

    def forget(self, alias: str) -> None:
        self._inner.forget(self.refs.get(alias, alias))


@dataclass(slots=True)
class _Partition:
    """One owned registry partition."""

    reason: RepairReason
    """Why its mailboxes get a snapshot once it is loaded."""
    entries: dict[str, MailboxRegistryEntry] = field(default_factory=dict)
    position: int = 0
    """The next offset to read."""
    loading_until: int | None = -1
    """The end offset at assignment, to reach before the mailboxes are handed over (-1: not
    known yet); None once loaded."""


class RegistryAssignment:
    """The registry source of one worker; `start()` joins the group, `stop()` leaves it."""

    def __init__(
        self,
        kafka: KafkaSettings,
        target: MailboxTarget,
        *,
        group_id: str,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        server: str | None = None,
        credentials: CredentialRefs | None = None,
        reconcile_on_start: bool = True,
        consumer_factory: ConsumerFactory = AIOKafkaConsumer,
        ensure_topic: EnsureTopic = ensure_registry_topic,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._kafka = kafka
        self._clock = clock
        self._retry = Backoff(base=_RETRY_S, cap=30.0)
        self._topic = kafka.registry_topic
        self._ids = schema_ids(kafka.schema_registry)
        self._target = target
        self._group_id = group_id
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._server = server
        self._credentials = credentials
        self._reconcile_on_start = reconcile_on_start
        self._consumer_factory = consumer_factory
        self._ensure_topic = ensure_topic
        self._consumer: AIOKafkaConsumer | None = None
        # aiokafka's sticky assignor keeps a member's previous assignment in class attributes:
        # a class of its own per member, or two members in one process would share it
        self._assignor: Any = type("StickyPartitionAssignor", (StickyPartitionAssignor,), {})
        self._task: asyncio.Task[None] | None = None
        self._partitions: dict[int, _Partition] = {}
        self._where: dict[str, int] = {}  # alias → the partition its last record was read from
        self._watched: set[str] = set()  # what the target has been given
        self._dirty: dict[str, RepairReason] = {}  # aliases to re-check, with the repair reason
        self._assignments = 0
        self._assigned_at: float | None = None  # of an assignment whose partitions still load
        self._revoked_at: float | None = None  # of a revocation not yet followed by an assignment
        self.failed = asyncio.Event()
        self.fatal: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="registry-assignment")

    async def stop(self) -> None:
        """Leave the group (the others take the partitions over at once) and stop; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> RegistryAssignment:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        """Assigned at least once, and every assigned partition read to its end."""
        return self._assignments > 0 and all(
            p.loading_until is None for p in self._partitions.values()
        )

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._partitions)

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(self._watched)

    @property
    def rebalance_timeout_s(self) -> float:
        return self._session_timeout_ms / 1000

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._retrying(lambda: self._ensure_topic(self._kafka), "the registry topic")
            consumer = self._consumer_factory(
                group_id=self._group_id,
                client_id=f"cumi-worker-{self._group_id}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=self._heartbeat_interval_ms,
                rebalance_timeout_ms=self._session_timeout_ms,
                partition_assignment_strategy=(self._assignor,),
                metadata_max_age_ms=30_000,
                **self._kafka.client_kwargs(),
            )
            consumer.subscribe([self._topic], listener=_Listener(self, consumer))
            self._consumer = consumer
            try:
                await consumer.start()
                log.info("joined worker group %s on %s", self._group_id, self._topic)
                while True:
                    await self._poll(consumer)
            finally:
                self._consumer = None
                with contextlib.suppress(KafkaError):
                    await consumer.stop()  # LeaveGroup: a graceful exit moves partitions now
                await self._drop_all()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("the registry assignment failed")
            self.fatal = e
            self.failed.set()

    async def _retrying(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        attempt = 0
        while True:
            try:
                await step()
                return
            except (KafkaError, BrokerError, OSError) as e:
                attempt += 1
                delay = self._retry.delay(attempt)
                log.warning("%s: %s; retrying in %.1f s", what, e, delay)
                await self._clock.sleep(delay)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        await self._resolve_ends(consumer)
        try:
            batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=10_000)
        except KafkaError as e:
            log.warning("reading the registry: %s", e)
            batch = {}
            await self._clock.sleep(self._retry.delay(1))
        for tp, records in batch.items():
            part = self._partitions.get(tp.partition)
            if part is None:
                continue  # fetched just before it was taken away
            for record in records:
                part.position = record.offset + 1
                self._read(tp.partition, part, record.key, record.value)
        await self._finish_loading(consumer)
        self._check_revocation()
        await self._flush()

    async def _resolve_ends(self, consumer: AIOKafkaConsumer) -> None:
        unknown = [p for p, part in self._partitions.items() if part.loading_until == -1]
        if not unknown:
            return
        tps = [TopicPartition(self._topic, p) for p in unknown]
        try:
            ends = await consumer.end_offsets(tps)
        except KafkaError as e:
            log.warning("end offsets of the registry partitions %s: %s", unknown, e)
            return
        for tp, end in ends.items():
            part = self._partitions.get(tp.partition)
            if part is not None and part.loading_until == -1:
                part.loading_until = end

    def _read(
        self, partition: int, part: _Partition, key: bytes | None, value: bytes | None
    ) -> None:
        try:
            entry = decode_entry(key, value, self._ids)
        except DecodeError as e:
            reason = "key_mismatch" if "names mailbox" in str(e) else "undecodable"
            WORKER_REGISTRY_SKIPPED.labels(reason).inc()
            log.warning("registry record skipped (partition %d): %s", partition, e)
            return
        alias = (key or b"").decode("utf-8", "replace")
        if entry is None:
            part.entries.pop(alias, None)
        else:
            part.entries[alias] = entry
            if not watchable(entry, self._server) and entry.enabled:
                WORKER_REGISTRY_SKIPPED.labels("other_server").inc()
        self._where[alias] = partition
        if part.loading_until is None:  # loaded: a live change
            self._dirty[alias] = RepairReason.REGISTERED

    async def _finish_loading(self, consumer: AIOKafkaConsumer) -> None:
        for number, part in self._partitions.items():
            if part.loading_until is None or part.loading_until < 0:
                continue
            tp = TopicPartition(self._topic, number)
            if part.position < part.loading_until:
                if tp not in consumer.assignment():
                    continue  # a rebalance is under way: position() would wait for it
                try:  # the position also moves past compacted gaps and control records
                    part.position = max(part.position, await consumer.position(tp))
                except KafkaError:
                    continue
            if part.position >= part.loading_until:
                part.loading_until = None
                for alias in part.entries:
                    self._dirty.setdefault(alias, part.reason)
        if self._assigned_at is not None and self.ready:
            elapsed = self._clock.monotonic() - self._assigned_at
            self._assigned_at = None
            WORKER_ASSIGNMENT_LOAD_SECONDS.observe(elapsed)
            log.info(
                "registry partitions %s loaded in %.2f s: watching %d mailboxes",
                sorted(self._partitions),
                elapsed,
                sum(self._wanted(a) for a in self._where),
            )

    def _wanted(self, alias: str) -> bool:
        part = self._partitions.get(self._where.get(alias, -1))
        return (
            part is not None
            and part.loading_until is None
            and watchable(part.entries.get(alias), self._server)
        )

    async def _flush(self) -> None:
        """Tell the target what changed: removals first (in one unsubscribe request), then
        additions grouped by repair reason."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        gone = [a for a in dirty if a in self._watched and not self._wanted(a)]
        new: dict[RepairReason, list[str]] = {}
        for alias, reason in dirty.items():
            if alias not in self._watched and self._wanted(alias):
                new.setdefault(reason, []).append(alias)
        if self._credentials is not None:
            self._update_refs(dirty)
        if gone:
            self._watched.difference_update(gone)
            await self._target.remove(gone)
            log.info("registry: stopped watching %d mailboxes", len(gone))
        for reason, aliases in new.items():
            self._watched.update(aliases)
            repair: RepairReason | None = reason
            if reason is RepairReason.STARTUP and not self._reconcile_on_start:
                repair = None
            self._target.add(aliases, repair)
            log.info("registry: watching %d more mailboxes (%s)", len(aliases), reason.value)
        WORKER_REGISTRY_MAILBOXES.set(len(self._watched))

    def _update_refs(self, aliases: Iterable[str]) -> None:
        assert self._credentials is not None
        refs = self._credentials.refs
        for alias in aliases:
            part = self._partitions.get(self._where.get(alias, -1))
            entry = part.entries.get(alias) if part is not None else None
            if entry is not None and entry.credentials_ref:
                refs[alias] = entry.credentials_ref
            else:
                refs.pop(alias, None)

    def _check_revocation(self) -> None:
        if self._revoked_at is None or not self._partitions:
            return
        waited = self._clock.monotonic() - self._revoked_at
        # the assignment of a rebalance comes within its timeout (plus a SyncGroup round trip)
        if waited < 2 * self.rebalance_timeout_s:
            return
        log.warning(
            "no assignment %.0f s after a revocation: this worker is out of the group; "
            "giving up registry partitions %s until it is assigned again",
            waited,
            sorted(self._partitions),
        )
        self._revoked_at = None
        self._forget(list(self._partitions))

    def _forget(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            part = self._partitions.pop(number, None)
            if part is not None:
                for alias in part.entries:
                    self._dirty.setdefault(alias, part.reason)
                    if self._where.get(alias) == number:
                        del self._where[alias]
        WORKER_REGISTRY_PARTITIONS.set(len(self._partitions))

    async def _drop_all(self) -> None:
        self._forget(list(self._partitions))
        with contextlib.suppress(Exception):  # shutting down: the session goes away anyway
            await self._flush()

    # -- the rebalance listener (runs inside aiokafka's coordinator) ------------------------------

    def on_revoked(self) -> None:
        """Keep watching (see the module docstring); the assignment decides."""
        self._revoked_at = self._clock.monotonic()

    def on_assigned(self, consumer: AIOKafkaConsumer, assigned: Iterable[TopicPartition]) -> None:
        """Seek kept partitions to where this worker was, new ones to their beginning; the poll
        loop then loads the new ones and unsubscribes what was lost. No I/O here: the group's
        heartbeat does not run while this callback does."""
        self._revoked_at = None
        self._assignments += 1
        WORKER_REBALANCES.inc()
        # aiokafka never tells the sticky assignor the generation, so every member would claim its
        # partitions at generation -1 and a returning member's stale claims could win a tie
        generation = getattr(getattr(consumer, "_coordinator", None), "generation", None)
        if isinstance(generation, int):
            self._assignor.on_generation_assignment(generation)
        numbers = {tp.partition for tp in assigned if tp.topic == self._topic}
        lost = sorted(set(self._partitions) - numbers)
        self._forget(lost)
        reason = RepairReason.STARTUP if self._assignments == 1 else RepairReason.ASSIGNED
        new = []
        for number in sorted(numbers):
            tp = TopicPartition(self._topic, number)
            part = self._partitions.get(number)
            if part is None:
                part = self._partitions[number] = _Partition(reason)
                new.append(number)
            consumer.seek(tp, part.position)
        WORKER_REGISTRY_PARTITIONS.set(len(self._partitions))
        if new:
            self._assigned_at = self._clock.monotonic()
        log.info(
            "registry assignment #%d: %d partitions (new %s, lost %s)",
            self._assignments,
            len(numbers),
            new,
            lost,
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, assignment: RegistryAssignment, consumer: AIOKafkaConsumer) -> None:
        self._assignment = assignment
        self._consumer = consumer

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._assignment.on_revoked()

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._assignment.on_assigned(self._consumer, assigned)
