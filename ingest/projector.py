"""The projector: the events topic folded into per-mailbox folder state, exactly once.

    ingest projector [--config FILE]

A consumer group member on the events topic (read_committed, no auto-commit). Records are decoded
and applied through `ingest.state.projection` — the same fold as `ingest fold` and `ingest replay` —
into one `Projection` per owned events partition. Every `CUMI_PROJECTOR_COMMIT_INTERVAL_MS` (or
`CUMI_PROJECTOR_COMMIT_MAX_RECORDS` records) each partition with changes commits one transaction:
the changed mailboxes' state records to the same partition of the compacted state topic *and* the
group's offset of that events partition. A crash at any point therefore restarts from a state and
an offset that belong together (see `ingest.state.store` for co-partitioning and zombie fencing).
Every `CUMI_PROJECTOR_CHECKPOINT_RECORDS` offsets (or `CUMI_PROJECTOR_CHECKPOINT_INTERVAL_SECONDS`)
such a transaction also carries a checkpoint of the partition's whole state
(`ingest.state.checkpoints`), which `ingest replay` starts from; a partition with neither committed
offsets nor state (a new group, a lost state topic) starts from its newest checkpoint.

Rebalancing (aiokafka's eager protocol: revoke everything, then assign):
- revoked: the open changes of every owned partition are committed (finished, not lost), the
  partitions folding in catch-up workers are dropped (their jobs cancelled), and nothing is
  applied or committed until the next assignment;
- assigned: the partitions' transactional producers are (re)initialised — fencing the previous
  owner and settling its open transaction — then the committed offsets are read and each newly
  owned partition is restored from the state topic; the consumer is positioned at the committed
  offset. A partition kept across the rebalance keeps its in-memory state only if nobody committed
  it meanwhile (its committed offset is still ours).

Records already accounted for (offset below the partition's next offset) are skipped, so a batch
fetched before a rebalance can never be applied twice. A fenced producer means another instance
owns the partition: the projector stops without writing anything more and exits with code 3.

Kafka going away is not a reason to exit: unreachable at start-up, or a transaction that fails
(or does not finish within half the transaction timeout, before the coordinator would time it out
and fence the producer), the projector is not ready, closes its consumer, transactional producers
and state reader, waits for the cluster with backoff (one log line when it goes, one when it is
back) and joins the group again — exactly what a restarted process would do, so it cannot fence a
partition's real owner: it re-initialises producers only for what the coordinator assigns it
anew, and restores them from the state topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerClosed, ProducerFenced

from ingest.errors import BrokerError, ConfigError, IngestError, KafkaAccessRefused
from ingest.eventlog.clients import access_refused, close_consumer, pace_metadata
from ingest.eventlog.schema_registry import schema_ids
from ingest.eventlog.topics import TopicSpec, checkpoints_spec, describe_topic, ensure_topics
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, wait_event
from ingest.ops.gc_tuning import CatchUpFreezer
from ingest.ops.http import OpsServer
from ingest.ops.metrics import (
    PROJECTOR_CATCHING_UP,
    PROJECTOR_CHECKPOINT_BYTES,
    PROJECTOR_CHECKPOINT_SECONDS,
    PROJECTOR_CHECKPOINTS,
    PROJECTOR_LAG,
    PROJECTOR_MAILBOXES,
    PROJECTOR_PARTITIONS,
    PROJECTOR_READY,
    PROJECTOR_REBALANCES,
    PROJECTOR_REGISTRY,
    PROJECTOR_RESTORE_SECONDS,
    PROJECTOR_RESTORED,
    PROJECTOR_SKIPPED,
    PROJECTOR_STATES_WRITTEN,
    PROJECTOR_TRANSACTION_SECONDS,
    PROJECTOR_TRANSACTIONS,
)
from ingest.ops.progress import LoggedProgress
from ingest.settings import (
    HttpTimeouts,
    KafkaSettings,
    ReadApiSettings,
    SettingsSource,
    load_kafka,
    load_process,
    load_read_api,
)
from ingest.state.catchup import Failed, Job, Pool, Segment, Tally
from ingest.state.checkpoints import (
    CheckpointPolicy,
    CheckpointReader,
    PendingCheckpoint,
    Tracker,
    prepare,
)
from ingest.state.packing import pack_states, unpack_states
from ingest.state.projection import MailboxState, Projection
from ingest.state.read_api import ReadApi
from ingest.state.replay import available_cpus
from ingest.state.store import (
    Fenced,
    StateReader,
    StateValue,
    StateWriter,
    TransactionFailed,
    state_value,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_FENCED = 0, 1, 2, 3
_MAX_POLL_RECORDS = 5000
_CATCHING_UP = 50_000
"""Records behind the end (all owned partitions) from which the projector is catching up: its
growing state is then spared from the collector's full passes (ops.gc_tuning.CatchUpFreezer),
and partitions commit _CATCH_UP_FACTOR times less often (the interval and the record count):
each commit encodes every mailbox changed since the last, and while catching up nearly all are."""
_CATCH_UP_FACTOR = 10
_APPLY_SLICE = 500
"""Records applied between two yields to the event loop (heartbeats, the read API)."""
_RECONNECT = Backoff(base=0.5, cap=10.0)
"""Retrying an unreachable cluster: at start-up and after losing it."""
_CLOSE_WITHIN = 10.0
"""Seconds a Kafka client may take to close (leave the group…) before it is given up."""


def _recoverable(error: BaseException) -> bool:
    """Kafka went away or a transaction failed: rejoining (as a restart would) cures it. Fenced
    (another instance owns a partition) and configuration errors do not."""
    return isinstance(error, KafkaError | BrokerError) and not isinstance(
        error, Fenced | ConfigError | ProducerFenced
    )


@dataclass(frozen=True, slots=True)
class ProjectorSettings:
    kafka: KafkaSettings
    group_id: str
    """CUMI_PROJECTOR_GROUP_ID: the consumer group of all projector instances."""
    transactional_id_prefix: str
    """CUMI_PROJECTOR_TRANSACTIONAL_ID_PREFIX (default: the group id); ids are `<prefix>.<events
    topic>.<partition>`, the same on every instance."""
    commit_interval_ms: int
    """CUMI_PROJECTOR_COMMIT_INTERVAL_MS: longest time an applied record waits for its commit."""
    commit_max_records: int
    """CUMI_PROJECTOR_COMMIT_MAX_RECORDS: a partition commits once it has this many uncommitted."""
    transaction_timeout_ms: int
    session_timeout_ms: int
    """CUMI_PROJECTOR_SESSION_TIMEOUT_MS: how long a silent instance keeps its partitions."""
    group_instance_id: str | None
    """CUMI_PROJECTOR_GROUP_INSTANCE_ID: static group membership (a stable name per instance, such
    as a StatefulSet pod name): a restarted instance takes its partitions back at once instead of
    waiting for the session timeout and a rebalance. Unset: dynamic membership."""
    http_host: str
    """CUMI_METRICS_HOST: /metrics and health (and the read API unless it has its own port)."""
    http_port: int
    """CUMI_METRICS_PORT."""
    shutdown_timeout_seconds: float
    log_level: str
    read_api: ReadApiSettings
    """CUMI_READ_API_*: the read API's listener, tokens and TLS."""
    http_timeouts: HttpTimeouts
    checkpoints: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    """CUMI_PROJECTOR_CHECKPOINT_RECORDS (0: none) and CUMI_PROJECTOR_CHECKPOINT_INTERVAL_SECONDS
    (ingest.state.checkpoints)."""
    catch_up_processes: int = 0
    """CUMI_PROJECTOR_CATCH_UP_PROCESSES: worker processes folding partitions that are far behind
    (ingest.state.catchup); default one per CPU, none on a single CPU. 0: fold everything here."""
    catch_up_records: int = 50_000
    """CUMI_PROJECTOR_CATCH_UP_RECORDS: how far behind a restored partition must be for its fold to
    go to a worker process."""

    @classmethod
    def load(
        cls, env: dict[str, str] | None = None, config_file: str | Path | None = None
    ) -> ProjectorSettings:
        s = SettingsSource.load(env, config_file)
        group = s.text("CUMI_PROJECTOR_GROUP_ID", "cumi-projector") or "cumi-projector"
        # the HTTP port, log level and shutdown bound are shared with the worker: one name each
        common = load_process(s)
        return cls(
            kafka=load_kafka(s),
            group_id=group,
            transactional_id_prefix=s.text("CUMI_PROJECTOR_TRANSACTIONAL_ID_PREFIX", group)
            or group,
            commit_interval_ms=s.integer(
                "CUMI_PROJECTOR_COMMIT_INTERVAL_MS", 500, minimum=10, maximum=60_000
            ),
            commit_max_records=s.integer("CUMI_PROJECTOR_COMMIT_MAX_RECORDS", 5000, minimum=1),
            transaction_timeout_ms=s.integer(
                "CUMI_PROJECTOR_TRANSACTION_TIMEOUT_MS", 60_000, minimum=1000, maximum=900_000
            ),
            session_timeout_ms=s.integer(
                "CUMI_PROJECTOR_SESSION_TIMEOUT_MS", 30_000, minimum=1000, maximum=300_000
            ),
            group_instance_id=s.text("CUMI_PROJECTOR_GROUP_INSTANCE_ID"),
            http_host=common.metrics_host,
            http_port=common.metrics_port,
            shutdown_timeout_seconds=common.shutdown_timeout_seconds,
            log_level=common.log_level or "INFO",
            read_api=load_read_api(s, common),
            http_timeouts=common.http_timeouts,
            checkpoints=CheckpointPolicy(
                records=s.integer("CUMI_PROJECTOR_CHECKPOINT_RECORDS", 25_000, minimum=0),
                interval_s=s.integer(
                    "CUMI_PROJECTOR_CHECKPOINT_INTERVAL_SECONDS", 86_400, minimum=1
                ),
            ),
            catch_up_processes=s.integer(
                "CUMI_PROJECTOR_CATCH_UP_PROCESSES", _default_catch_up_processes(), minimum=0
            ),
            catch_up_records=s.integer("CUMI_PROJECTOR_CATCH_UP_RECORDS", 50_000, minimum=1),
        )


def _default_catch_up_processes() -> int:
    cpus = available_cpus()
    return cpus if cpus > 1 else 0


@dataclass(slots=True)
class OwnedPartition:
    """What the projector holds for one events partition it owns."""

    number: int
    projection: Projection
    next_offset: int
    """Offset of the next record to apply; what the next commit stores."""
    committed_offset: int
    """The group's committed offset as of our last commit or restore (-1: none)."""
    dirty: set[str] = field(default_factory=set)
    """Mailboxes changed since the last commit."""
    pending: int = 0
    """Records consumed since the last commit."""
    since: float = 0.0
    """Monotonic time of the oldest uncommitted record."""
    checkpoint: Tracker = field(default_factory=lambda: Tracker(from_offset=0))
    """Where the partition's checkpoints are (ingest.state.checkpoints)."""
    encoded: dict[str, bytes] = field(default_factory=dict)
    """The last committed encoding of each mailbox's state: a checkpoint reuses those of the
    mailboxes not changed since (while catching up, nearly all) instead of encoding again."""
    folding_elsewhere: int | None = None
    """The generation of the catch-up job folding this partition in a worker process (its
    `projection` is then as of the job's start and the consumer leaves the partition paused)."""
    lag_unseen: bool = True
    """Restored, and no fetch has told its end offset yet: whether it goes to a worker is decided
    then, from what the fetch said, without a request of its own."""


class CatchUpFailed(IngestError):
    """A catch-up worker process failed or died: the projector exits (1) and a restart resumes
    from the committed offsets."""


class Projector:
    """The projector service: `async with Projector(settings) as p: await p.wait()`."""

    def __init__(self, settings: ProjectorSettings, *, instance: str | None = None) -> None:
        self.settings = settings
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        k = settings.kafka
        self._client = k.client_kwargs()
        self.events_topic, self.state_topic = k.events_topic, k.state_topic
        self.checkpoints_topic = k.checkpoints_topic
        self.partitions: dict[int, OwnedPartition] = {}
        self.partition_count = 0
        """Partitions of the events topic, known once started."""
        self.ready = False
        self.ops = OpsServer(
            settings.http_host,
            settings.http_port,
            live={"projector": lambda: self._failure is None},
            ready={"restored": lambda: self.ready},
            registry=PROJECTOR_REGISTRY,
            timeouts=settings.http_timeouts,
        )
        self.read_api = ReadApi(self, settings.read_api, self.ops, timeouts=settings.http_timeouts)
        self._ids = schema_ids(k.schema_registry)
        """Registry mode: the schema ids of Confluent-framed records (either framing is read)."""
        self._reader = StateReader(self.state_topic, ids=self._ids, **self._client)
        self._checkpoints = CheckpointReader(
            self.checkpoints_topic, self.events_topic, **self._client
        )
        self._writer = StateWriter(
            schema_registry=k.schema_registry,
            state_topic=self.state_topic,
            events_topic=self.events_topic,
            group_id=settings.group_id,
            transactional_id_prefix=settings.transactional_id_prefix,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            **self._client,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._trouble: BaseException | None = None
        """Kafka went away (a failed transaction, a lost cluster): rejoin once it is back."""
        self._lost_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._freezer = CatchUpFreezer()
        self._catching_up = False
        processes = settings.catch_up_processes
        self._pool = Pool(processes, settings.log_level) if processes > 0 else None
        self._draining: asyncio.Task[None] | None = None
        self._catch_up_progress: _CatchUpProgress | None = None

    # -- the read side (ingest.state.read_api) ---------------------------------------------------

    def find(self, mailbox_id: str) -> tuple[int, MailboxState] | None:
        for number, owned in self.partitions.items():
            state = owned.projection.get(mailbox_id)
            if state is not None and owned.folding_elsewhere is None:
                return number, state
        return None

    def projections(self) -> dict[int, Projection]:
        return {
            number: owned.projection
            for number, owned in self.partitions.items()
            if owned.folding_elsewhere is None
        }

    @property
    def catching_up(self) -> frozenset[int]:
        """Owned partitions being folded in a worker process: their state is not here yet."""
        return frozenset(n for n, o in self.partitions.items() if o.folding_elsewhere is not None)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving (health, metrics, read API) and connect to Kafka. A configuration error
        (topics; credentials or certificates Kafka refuses: `KafkaAccessRefused`) raises; an
        unreachable cluster does not: the projector stays not ready and keeps trying in the
        background (`_run`)."""
        if self._started:
            return
        self._started = True
        log.info(
            "projector %s starting: %s → %s, group %s",
            self.instance,
            self.events_topic,
            self.state_topic,
            self.settings.group_id,
        )
        await self.ops.start()
        try:
            await self.read_api.start()
            refusal = await access_refused(self._client)
            if refusal is not None:
                raise KafkaAccessRefused(f"Kafka at {self._client['bootstrap_servers']}: {refusal}")
            connected = await self._try_open()
        except BaseException:
            await self._close()
            raise
        self._task = asyncio.create_task(self._run(connected), name="projector")

    async def _try_open(self) -> bool:
        """One attempt at the Kafka side; False (and logged once per outage) if unreachable."""
        try:
            await self._open()
        except (KafkaError, BrokerError) as e:
            await self._close_kafka()
            self._kafka_lost(e)
            return False
        if self._lost_at is not None:
            log.info(
                "Kafka reachable again after %.0f s: projector rejoining the group",
                time.monotonic() - self._lost_at,
            )
            self._lost_at = None
        return True

    def _kafka_lost(self, error: BaseException) -> None:
        """One line when Kafka goes missing (not on every retry)."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            log.warning(
                "Kafka not reachable (%r): projector not ready, retrying with backoff up to %.0f s",
                error,
                _RECONNECT.cap,
            )

    async def _open(self) -> None:
        await self._writer.start()  # registry mode: a refused schema stops us here
        await self._ensure_state_topic()
        await self._reader.start()
        await self._checkpoints.start(self.partition_count)
        consumer = AIOKafkaConsumer(
            group_id=self.settings.group_id,
            client_id=f"projector-{self.instance}",
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=_MAX_POLL_RECORDS,
            # as `ingest replay` reads: fewer, bigger fetches while catching up
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(300, self.settings.session_timeout_ms // 10),
            group_instance_id=self.settings.group_instance_id,
            **self._client,
        )
        pace_metadata(consumer._client)
        self._consumer = consumer
        await consumer.start()
        consumer.subscribe([self.events_topic], listener=_Listener(self))

    async def _run(self, connected: bool) -> None:
        """Consume while connected; when Kafka goes away (at start-up, or a transaction fails),
        close every Kafka client, wait for the cluster with backoff and rejoin the group — what a
        restarted process would do, without the restart. Fenced and other errors end it."""
        attempt = 0
        while not self._stopping.is_set():
            if not connected:
                attempt += 1
                if await wait_event(SYSTEM_CLOCK, self._stopping, _RECONNECT.delay(attempt)):
                    return
                connected = await self._try_open()
                continue
            attempt = 0
            try:
                await self._consume()
                return
            except Exception as e:
                if not _recoverable(e):
                    return  # _consume recorded the failure
                self._kafka_lost(e)
                # still in trouble while closing: the old consumer's revoke commits nothing
                await self._close_kafka()
                self._trouble = None
                connected = False

    async def wait(self) -> int:
        """Until stopped or failed; the exit code."""
        if self._task is not None:
            await _settled(self._task)
        return self.exit_code

    @property
    def exit_code(self) -> int:
        if self._failure is None:
            return EXIT_OK
        return EXIT_FENCED if isinstance(self._failure, Fenced) else EXIT_FAILED

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Finish the batch in hand, commit what is open, leave the group. Idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.settings.shutdown_timeout_seconds)
            if not done:
                log.warning("projector did not drain in time; open changes are not committed")
                task.cancel()
            await _settled(task)
        await self._close()
        log.info("projector %s stopped (exit code %d)", self.instance, self.exit_code)

    async def __aenter__(self) -> Projector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _close(self) -> None:
        draining, self._draining = self._draining, None
        if draining is not None:
            draining.cancel()
            await _settled(draining)
        await self._close_kafka()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.stop)
        await self.read_api.stop()
        await self.ops.stop()

    async def _close_kafka(self) -> None:
        """Close the consumer, the transactional producers and the state reader (bounded: the
        cluster may be gone) and forget every partition."""
        self._freezer.release()
        self.ready = False
        PROJECTOR_READY.set(0)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer, _CLOSE_WITHIN)
        await self._writer.stop()
        await self._reader.stop()
        await self._checkpoints.stop()
        for number in list(self.partitions):
            self._drop(number)

    async def _ensure_state_topic(self) -> None:
        """Create the state topic if missing, co-partitioned with the events topic; refuse to run
        against a state topic with another partition count (restore would read the wrong data)."""
        events = await describe_topic(self.events_topic, **self._client)
        if events is None:
            raise ConfigError(f"the events topic {self.events_topic} does not exist")
        count, replication = events
        self.partition_count = count
        spec = TopicSpec(self.state_topic, count, replication, {"cleanup.policy": "compact"})
        specs = [spec, checkpoints_spec(self.checkpoints_topic, count, replication)]
        bootstrap = self._client["bootstrap_servers"]
        extra = {k: v for k, v in self._client.items() if k != "bootstrap_servers"}
        await ensure_topics(
            bootstrap, specs if self.settings.checkpoints.enabled else [spec], **extra
        )
        state = await describe_topic(self.state_topic, **self._client)
        if state is None or state[0] != count:
            raise ConfigError(
                f"state topic {self.state_topic} must have {count} partitions like "
                f"{self.events_topic}, has {state[0] if state else 0}"
            )

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        poll_ms = min(200, self.settings.commit_interval_ms)
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=poll_ms, max_records=_MAX_POLL_RECORDS)
                async with self._lock:
                    if self._failure is not None:
                        raise self._failure
                    if self._trouble is not None:
                        raise self._trouble
                    if not self.ready:
                        # revoked and not yet assigned again: nothing is ours to apply; the
                        # next assignment seeks back to the committed offsets
                        continue
                    # before applying: the fetch told the end offsets, the backlog is all there
                    self._fold_elsewhere(consumer)
                    for tp, records in batch.items():
                        for start in range(0, len(records), _APPLY_SLICE):
                            self._apply(tp, records[start : start + _APPLY_SLICE])
                            await asyncio.sleep(0)
                    await self._commit_due(force=False)
                self._catching_up = self._update_gauges(consumer) >= _CATCHING_UP
                self._freezer.after_batch(self._catching_up)
            async with self._lock:
                if self._failure is None and self._trouble is None:
                    await self._commit_due(force=True)
        except Exception as e:
            self._fail(e)
            raise

    def _apply(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        owned = self.partitions.get(tp.partition)
        if owned is None or tp.topic != self.events_topic or owned.folding_elsewhere is not None:
            return  # fetched before a rebalance took the partition away, or before it was paused
        tally, projection, dirty, ids = Tally(), owned.projection, owned.dirty, self._ids
        fresh = [m for m in records if m.offset >= owned.next_offset]
        for message in fresh:
            mailbox = tally.fold(projection, message.value, ids)
            if mailbox is not None:
                dirty.add(mailbox)
        if not fresh:
            return  # applied already (a batch fetched before the last restore)
        owned.next_offset = fresh[-1].offset + 1
        stamps = [m.timestamp for m in fresh]
        owned.checkpoint.saw(min(stamps), max(stamps))
        tally.publish()
        if not owned.pending:
            owned.since = time.monotonic()
        owned.pending += len(fresh)

    async def _commit_due(self, *, force: bool) -> None:
        now, s = time.monotonic(), self.settings
        factor = _CATCH_UP_FACTOR if self._catching_up else 1
        interval, most = factor * s.commit_interval_ms / 1000, factor * s.commit_max_records
        checkpoint_due, wall = self.settings.checkpoints.due, time.time()
        # a checkpoint that is due commits too: while catching up, commits are rarer than the
        # checkpoint interval, which must still bound the records a replay folds after one
        due = [
            owned
            for owned in self.partitions.values()
            if owned.pending
            and (
                force
                or owned.pending >= most
                or now - owned.since >= interval
                or checkpoint_due(owned.checkpoint, owned.next_offset, wall)
            )
        ]
        if not due:
            return
        results = await asyncio.gather(*(self._commit(o) for o in due), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        # Any failed transaction is fatal. Re-initialising the partition's producer to carry on
        # would fence its current owner if this instance is a zombie that does not know it yet;
        # a restart rejoins the group and takes back only what the coordinator assigns.
        for error in sorted(errors, key=lambda e: not isinstance(e, Fenced)):
            raise error

    async def _commit(self, owned: OwnedPartition) -> None:
        started = time.monotonic()
        states = []
        for mailbox_id in sorted(owned.dirty):
            states.append(state_value(owned.projection.mailboxes[mailbox_id]))
            await asyncio.sleep(0)  # a big mailbox takes milliseconds; let heartbeats through
        checkpoint = await self._checkpoint_due(owned, states)
        written = await self._transact(owned, states, owned.next_offset, checkpoint)
        PROJECTOR_TRANSACTION_SECONDS.observe(time.monotonic() - started)
        owned.dirty.clear()
        owned.pending = 0
        if self.settings.checkpoints.enabled:
            owned.encoded.update((s.mailbox_id, s.value) for s in states)
        if checkpoint is not None and written is not None:
            owned.encoded.update(
                (e.mailbox_id, e.state) for c in checkpoint.chunks for e in c.entries
            )
            owned.checkpoint.written(written)

    async def _transact(
        self,
        owned: OwnedPartition,
        states: Sequence[StateValue],
        next_offset: int,
        checkpoint: PendingCheckpoint | None,
    ) -> Any:
        """One transaction: `states`, the checkpoint if any, and the group's offset `next_offset`
        of the partition; the checkpoint's manifest as written (None without one)."""
        written: list[Any] = []

        async def also(producer: Any) -> None:
            if checkpoint is not None:
                written.append(await checkpoint.send(producer))

        try:
            # a transaction Kafka cannot finish (it went away) is given up well before the
            # coordinator would time it out and fence the producer: the partitions are rejoined
            async with asyncio.timeout(self.settings.transaction_timeout_ms / 2000):
                await self._writer.commit(owned.number, states, next_offset, also=also)
        except TimeoutError as e:
            PROJECTOR_TRANSACTIONS.labels("aborted").inc()
            raise TransactionFailed(
                f"state transaction of partition {owned.number} not finished in time"
            ) from e
        except (TransactionFailed, Fenced):
            PROJECTOR_TRANSACTIONS.labels("aborted").inc()
            raise
        PROJECTOR_TRANSACTIONS.labels("committed").inc()
        PROJECTOR_STATES_WRITTEN.inc(len(states))
        owned.committed_offset = next_offset
        if checkpoint is None or not written:
            return None
        PROJECTOR_CHECKPOINTS.inc()
        PROJECTOR_CHECKPOINT_BYTES.inc(checkpoint.size)
        return written[0]

    async def _checkpoint_due(
        self, owned: OwnedPartition, states: Sequence[StateValue]
    ) -> PendingCheckpoint | None:
        """The partition's checkpoint, encoded, if this commit (writing `states`) is to carry
        one. Mailboxes unchanged since their last commit keep that encoding."""
        if not self.settings.checkpoints.due(owned.checkpoint, owned.next_offset, time.time()):
            return None
        started = time.monotonic()
        fresh = {**owned.encoded, **{s.mailbox_id: s.value for s in states}}
        checkpoint = await prepare(
            topic=self.checkpoints_topic,
            events_topic=self.events_topic,
            partition=owned.number,
            events_partitions=self.partition_count,
            next_offset=owned.next_offset,
            tracker=owned.checkpoint,
            states=owned.projection.mailboxes,
            encoded=fresh,
        )
        PROJECTOR_CHECKPOINT_SECONDS.observe(time.monotonic() - started)
        return checkpoint

    def _update_gauges(self, consumer: AIOKafkaConsumer) -> int:
        """The lag gauges; the records behind in all owned partitions."""
        behind = 0
        for number, owned in self.partitions.items():
            high = consumer.highwater(TopicPartition(self.events_topic, number))
            if high is not None:
                lag = max(0, high - owned.next_offset)
                PROJECTOR_LAG.labels(str(number)).set(lag)
                behind += lag
        PROJECTOR_MAILBOXES.set(sum(len(o.projection.mailboxes) for o in self.partitions.values()))
        return behind

    def _fail(self, error: BaseException) -> None:
        if _recoverable(error) and not self._stopping.is_set():
            # Kafka went away: `_run` rejoins once it is back (no exit)
            if self._trouble is None:
                self._trouble = error
            self.ready = False
            PROJECTOR_READY.set(0)
            return
        if self._failure is None:
            self._failure = error
            if isinstance(error, Fenced):
                log.error("projector fenced, stopping without writing more: %s", error)
            else:
                log.error("projector failed: %r", error, exc_info=error)
        self.ready = False
        PROJECTOR_READY.set(0)
        self._stopping.set()

    # -- rebalancing -----------------------------------------------------------------------

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Finish (commit) the open changes before the partitions can move."""
        if self._failure is not None or self._trouble is not None:
            return
        try:
            async with self._lock:
                self.ready = False
                PROJECTOR_READY.set(0)
                await self._commit_due(force=True)
                # a segment committed after this point could race the partition's next owner
                # (fenced: exit 3); the next assignment restores them from Kafka instead
                for number in self.catching_up:
                    self._drop(number)
        except Exception as e:
            self._fail(e)

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if self._failure is not None or self._trouble is not None or self._stopping.is_set():
            return  # nothing more is consumed: leave the partitions to the next owner
        PROJECTOR_REBALANCES.inc()
        numbers = sorted(tp.partition for tp in assigned if tp.topic == self.events_topic)
        try:
            async with self._lock:
                for number in set(self.partitions) - set(numbers):
                    self._drop(number)
                await self._writer.close(set(self._writer.partitions) - set(numbers))
                await self._restore(numbers)
                self.ready = True
                PROJECTOR_READY.set(1)
        except Exception as e:
            self._fail(e)

    async def _start_from_checkpoint(self, owned: OwnedPartition, manifest: Any) -> None:
        """No offsets, no state (a new group, a lost state topic): begin at the newest checkpoint
        instead of the log's beginning; its states go to the state topic with the first commit."""
        states = await self._checkpoints.states(manifest)
        owned.projection.mailboxes.update(states)
        owned.next_offset = manifest.next_offset
        owned.dirty.update(states)
        owned.pending = 1  # committed at the first chance, even if no record follows
        owned.since = time.monotonic()
        log.info(
            "partition %d has neither offsets nor state: starting from its checkpoint at offset "
            "%d (%d mailboxes)",
            owned.number,
            manifest.next_offset,
            len(states),
        )

    def _drop(self, number: int) -> None:
        owned = self.partitions.pop(number)
        if owned.folding_elsewhere is not None and self._pool is not None:
            self._pool.cancel(number)
            PROJECTOR_CATCHING_UP.set(len(self.catching_up))
        with contextlib.suppress(KeyError):
            PROJECTOR_LAG.remove(str(number))

    async def _restore(self, numbers: Sequence[int]) -> None:
        """Fence the partitions' previous owners, then take state and offset from Kafka."""
        consumer = self._consumer
        if consumer is None or not numbers:
            PROJECTOR_PARTITIONS.set(len(self.partitions))
            return
        started = time.monotonic()
        await self._writer.open(numbers)
        committed: dict[int, int] = {}
        for number in numbers:
            offset = await consumer.committed(TopicPartition(self.events_topic, number))
            committed[number] = -1 if offset is None else offset
        stale = [
            n
            for n in numbers
            if n not in self.partitions
            or self.partitions[n].pending
            or self.partitions[n].committed_offset != committed[n]
        ]
        restored = await self._reader.read(stale)
        newest = await self._checkpoints.manifests(stale)
        for number in stale:
            projection = Projection()
            for record in restored[number].values():
                projection.load(record)
            PROJECTOR_RESTORED.inc(len(restored[number]))
            start = max(0, committed[number])
            latest = newest[number][-1] if newest[number] else None
            owned = OwnedPartition(number, projection, start, committed[number])
            if committed[number] < 0 and not restored[number] and latest is not None:
                await self._start_from_checkpoint(owned, latest)
            owned.checkpoint = Tracker.resumed(owned.next_offset, latest)
            self.partitions[number] = owned
        for number in numbers:
            tp = TopicPartition(self.events_topic, number)
            consumer.resume(tp)
            if self.partitions[number].next_offset > 0:
                consumer.seek(tp, self.partitions[number].next_offset)
            else:
                await consumer.seek_to_beginning(tp)
        PROJECTOR_PARTITIONS.set(len(self.partitions))
        PROJECTOR_RESTORE_SECONDS.observe(time.monotonic() - started)
        log.info(
            "partitions %s owned (%s restored from %s, %d mailboxes) in %.2f s",
            numbers,
            stale,
            self.state_topic,
            sum(len(restored[n]) for n in stale),
            time.monotonic() - started,
        )

    # -- catching up in worker processes (ingest.state.catchup) -----------------------------

    def _fold_elsewhere(self, consumer: AIOKafkaConsumer) -> None:
        """Hand the restored partitions whose first fetch shows them at least `catch_up_records`
        behind to the worker processes (a fetch tells the end offset: no request of its own,
        which during a leader election would retry and log until the partition had a leader)."""
        pool = self._pool
        if pool is None:
            return
        for owned in self.partitions.values():
            if not owned.lag_unseen:
                continue
            tp = TopicPartition(self.events_topic, owned.number)
            end = consumer.last_stable_offset(tp)  # read_committed: what may be read
            if end is None:
                continue
            owned.lag_unseen = False
            lag = end - owned.next_offset
            if owned.folding_elsewhere is not None or lag < self.settings.catch_up_records:
                continue
            generation = pool.begin(owned.number, self.partition_count)
            if generation is None:
                continue
            consumer.pause(tp)
            owned.folding_elsewhere = generation
            pool.submit(self._job(owned, end))
            owned.dirty.clear()  # applied, not committed: the first segment writes them
            owned.pending = 0
            log.info(
                "partition %d is %d records behind: folding it in a worker process",
                owned.number,
                lag,
            )
            if self._catch_up_progress is None:
                self._catch_up_progress = _CatchUpProgress()
            self._catch_up_progress.behind(lag)
        PROJECTOR_CATCHING_UP.set(len(self.catching_up))
        if pool.started and self._draining is None:
            self._draining = asyncio.create_task(self._drain(pool), name="catch-up results")

    def _job(self, owned: OwnedPartition, stop: int) -> Job:
        assert owned.folding_elsewhere is not None
        s = self.settings
        return Job(
            partition=owned.number,
            generation=owned.folding_elsewhere,
            start=owned.next_offset,
            stop=stop,
            state=pack_states(owned.projection),
            dirty=tuple(owned.dirty),
            encoded=dict(owned.encoded),
            tracker=owned.checkpoint,
            kafka=s.kafka,
            events_topic=self.events_topic,
            checkpoints_topic=self.checkpoints_topic,
            partition_count=self.partition_count,
            policy=s.checkpoints,
            segment_records=_CATCH_UP_FACTOR * s.commit_max_records,
        )

    async def _drain(self, pool: Pool) -> None:
        """Commit the workers' segments as they come, for as long as the projector runs."""
        while not self._stopping.is_set():
            result = await asyncio.to_thread(pool.next_result, 0.5)
            try:
                if result is None:
                    dead = pool.dead()
                    if dead:
                        raise CatchUpFailed(f"catch-up worker processes ended: {', '.join(dead)}")
                    continue
                async with self._lock:
                    await self._take(result)
            except Exception as e:
                self._fail(e)
                if self._failure is not None:
                    return

    async def _take(self, result: Segment | Failed) -> None:
        owned = self.partitions.get(result.partition)
        if owned is None or owned.folding_elsewhere != result.generation:
            return  # cancelled: the partition moved, or was restored afresh
        if self._failure is not None or self._trouble is not None or not self.ready:
            return
        if isinstance(result, Failed):
            raise CatchUpFailed(
                f"catch-up of partition {result.partition} failed in a worker process: "
                f"{result.error}"
            )
        started = time.monotonic()
        written = await self._transact(owned, result.states, result.next_offset, result.checkpoint)
        PROJECTOR_TRANSACTION_SECONDS.observe(time.monotonic() - started)
        owned.next_offset = result.next_offset
        owned.checkpoint = result.tracker
        if written is not None:
            owned.checkpoint.written(written)
        _count(result)
        if self._catch_up_progress is not None:
            self._catch_up_progress.folded(result.records)
        if result.checkpoint is not None:
            PROJECTOR_CHECKPOINT_SECONDS.observe(result.checkpoint_seconds)
        if result.final is not None:
            self._take_back(owned, result)

    def _take_back(self, owned: OwnedPartition, last: Segment) -> None:
        """The worker's job is done: its state is the partition's, consumed here again."""
        assert last.final is not None
        projection = Projection()
        unpack_states(last.final, projection)
        owned.projection = projection
        owned.encoded = dict(last.encoded) if self.settings.checkpoints.enabled else {}
        owned.folding_elsewhere = None
        PROJECTOR_CATCHING_UP.set(len(self.catching_up))
        if not self.catching_up and self._catch_up_progress is not None:
            self._catch_up_progress.close()
            self._catch_up_progress = None
        consumer = self._consumer
        if consumer is not None:
            tp = TopicPartition(self.events_topic, owned.number)
            consumer.seek(tp, owned.next_offset)
            consumer.resume(tp)
        log.info(
            "partition %d folded by a worker process up to offset %d (%d mailboxes): "
            "consuming it here again",
            owned.number,
            owned.next_offset,
            len(projection.mailboxes),
        )


class _CatchUpProgress:
    """Log lines while partitions fold in worker processes (`kubectl logs` during a rebuild):
    records folded of those the jobs had to fold, every 10 % and at least every 10 s."""

    def __init__(self) -> None:
        self._total = self._done = 0
        self._progress = LoggedProgress("catch-up: records folded in worker processes", 0)

    def behind(self, records: int) -> None:
        self._total += records
        self._progress.update(self._done, self._total)

    def folded(self, records: int) -> None:
        self._done += records
        self._progress.update(self._done, self._total)

    def close(self) -> None:
        self._progress.close()


def _count(segment: Segment) -> None:
    segment.tally.publish()
    for reason, count in segment.skipped.items():
        if count:
            PROJECTOR_SKIPPED.labels(reason).inc(count)


async def _settled(task: asyncio.Task[None]) -> None:
    """Wait for `task` without taking on its outcome (a failure is in `Projector._failure`);
    unlike `await task` this lets a cancellation of the caller through."""
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._projector.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._projector.on_assigned(assigned)


# -- the sub-command ------------------------------------------------------------------------


async def serve(settings: ProjectorSettings, *, handle_signals: bool = True) -> int:
    """Run until SIGTERM/SIGINT (drain, commit, exit 0) or a failure (exit non-zero)."""
    projector = Projector(settings)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_fenced_futures)
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, projector.request_stop)
    try:
        async with projector:
            return await projector.wait()
    finally:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def _quiet_fenced_futures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A fenced aiokafka producer fails every internal future of its transaction (batches, the
    transaction waiter) that nobody will await once the projector stops; asyncio would log each
    as "never retrieved". The fencing itself is logged once, as an error, by the projector. So
    does a producer abandoned during an outage (ProducerClosed when the process exits): the
    outage was logged when it began."""
    if isinstance(
        context.get("exception"), ProducerFenced | ProducerClosed
    ) and "never retrieved" in str(context.get("message", "")):
        log.debug("fenced producer future dropped: %s", context.get("future"))
        return
    loop.default_exception_handler(context)
