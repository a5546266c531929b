"""The worker's Kafka side: raw Comet payloads → events (or dead letters) → acknowledged records.

Every payload the CometD session hands over takes slots of a bounded in-flight window
(CUMI_QUEUE_SIZE) until Kafka acknowledges its records. Payloads are processed one after the
other, in order, while the session already fetches the next one. Its records go out as one record
batch per partition (one append per record, one acknowledgement per batch); a partition holds at
most one queued batch besides the one in flight. When the window is full (Kafka is slow or away),
`submit` waits — and with it the CometD connect loop: the worker stops pulling from the server
instead of growing memory (see ingest.cumi.session), and continues where it stopped once Kafka
catches up.

Records are produced by an idempotent producer (`acks=all`, `enable_idempotence=True`): aiokafka
retries a batch until the broker takes it, with sequence numbers that let the broker drop the
duplicates a retry could create, and keeps per-partition order. Every batch is kept here until it
is acknowledged. A Kafka outage of any length is ridden out, never fatal:

- A producer that has become unusable is replaced by a new one (a new producer id): a batch that
  failed (aiokafka expires a batch whose partition has no leader for KAFKA_REQUEST_TIMEOUT_MS and
  keeps the sequence numbers it gave it, so the partition's next batch would be refused with
  OutOfOrderSequenceNumber), a batch refused for its producer state (OutOfOrderSequenceNumber,
  UnknownProducerId, InvalidProducerEpoch/ProducerFenced…), a queue slot not freed within
  KAFKA_REQUEST_TIMEOUT_MS. While the cluster is unreachable the new producer's start is retried
  with backoff (ops.backoff, up to `reconnect_cap` seconds); nothing is sent meanwhile.
- On the new producer every unacknowledged batch is sent again, in the order they were first
  handed over (so each partition keeps its order), before anything new. A batch the old producer
  had delivered without its acknowledgement arriving is then written twice, under two producer
  ids: duplicates are possible across a replacement (never within one producer). The projection
  folds a repeated event or snapshot to the same state (docs/design.md), so a repeat costs nothing
  but space; `ingest tail` shows it.
- While records wait, the in-flight window fills and the CometD connect loop stops (backpressure).
  A long outage then outlives the server's CometD session: when Kafka is back the session is
  re-established and gap repair snapshots each mailbox. The sink logs such an outage as a
  possible history gap, counts it (`cumi_worker_history_gaps_total{reason="kafka-outage"}`) and
  labels the repair snapshots that follow it `kafka-outage`, so that a consumer of the log sees
  where the history may be incomplete.

The outage is logged once when it starts, summarised every 30 s (how long, records held,
replacements) and once when it ends; `cumi_worker_kafka_outage_seconds` says how long it has
lasted. Only an error that no new producer can cure (a record too large, authorization…) is fatal:
it is logged, counted, and makes the worker unhealthy so that it exits and is restarted (its
start-up gap repair then covers what was in flight).

Invalid payloads go to the dead-letter topic with the raw bytes and the reason, and are handed to
`on_dead_letter` (the worker repairs the mailbox they name); the worker goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.producer.message_accumulator import BatchBuilder

from ingest.cumi.normalizer import TimeZones
from ingest.errors import BrokerError, KafkaAccessRefused
from ingest.eventlog.clients import abandon, access_refused, pace_metadata
from ingest.eventlog.codec import Encoder
from ingest.eventlog.outage import Outage
from ingest.eventlog.records import OnDeadLetter, Record, RecordWriter
from ingest.eventlog.topics import Partitioner
from ingest.eventlog.window import Window
from ingest.events import MailboxSnapshot, RepairReason
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock
from ingest.ops.metrics import (
    WORKER_ACK_LATENCY,
    WORKER_BACKPRESSURE_SECONDS,
    WORKER_EVENT_LAG,
    WORKER_EVENTS_RECEIVED,
    WORKER_KAFKA_OUTAGE_SECONDS,
    WORKER_LAST_EVENT,
    WORKER_PRODUCER_ERRORS,
    observe_many,
)
from ingest.settings import Compression, KafkaSettings

log = logging.getLogger(__name__)


_PRODUCER_STATE_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
    ProducerClosed,
    KafkaTimeoutError,
)
"""Errors that say this producer (its id, epoch or sequence numbers) is unusable, not the record:
a new producer cures them. Retriable errors (connection, no leader, request timed out…) are
treated alike: aiokafka gave up on them, which only happens when it expired the batch."""

_SESSION_LOSS = frozenset(
    {RepairReason.SESSION_LOST, RepairReason.SERVER_RESTART, RepairReason.CONNECT_FAILED}
)
"""Repair reasons that a CometD session held back by a Kafka outage ends in."""


def _curable(error: BaseException) -> bool:
    """True if a new producer may succeed where this error failed (never fatal)."""
    return isinstance(error, _PRODUCER_STATE_ERRORS) or bool(getattr(error, "retriable", False))


class _Batch:
    """Records of one payload for one partition: one record batch, one acknowledgement.

    Kept until acknowledged so it can be sent again; the metric children to increment on the ack
    are counted per batch, not per record.
    """

    __slots__ = (
        "acked",
        "builder",
        "event_seconds",
        "handed",
        "labels",
        "partition",
        "received",
        "records",
        "sent_by",
        "topic",
    )

    def __init__(self, topic: str, partition: int, received: float, builder: BatchBuilder) -> None:
        self.topic = topic
        self.partition = partition
        self.received = received
        self.builder: BatchBuilder | None = builder
        self.records: list[Record] = []
        self.labels: dict[Any, int] = {}
        self.event_seconds: dict[int, int] = {}
        self.acked = False
        self.sent_by = -1
        """The producer generation that has it (-1: none yet)."""
        self.handed = 0.0
        """Monotonic time it was first handed to a producer."""

    def add(self, record: Record, label: Any, event_second: int | None) -> bool:
        """Append to the open record batch; False when it is full (start another)."""
        assert self.builder is not None
        key, value, timestamp, headers = record
        if self.builder.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
            return False
        self.records.append(record)
        self.labels[label] = self.labels.get(label, 0) + 1
        if event_second is not None:
            self.event_seconds[event_second] = self.event_seconds.get(event_second, 0) + 1
        return True


class Sink:
    """Idempotent producers for the events and dead-letter topics, with the in-flight window: one
    at a time, replaced when it becomes unusable (see the module docstring)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        capacity: int = 10_000,
        source: str | None = None,
        zones: TimeZones | None = None,
        retry_base: float = 0.2,
        retry_cap: float = 10.0,
        drain_timeout: float = 20.0,
        outage_after: float = 5.0,
        repair_grace: float = 300.0,
        clock: Clock = SYSTEM_CLOCK,
        encoder: Encoder | None = None,
        on_dead_letter: OnDeadLetter | None = None,
    ) -> None:
        self._drain_timeout = drain_timeout
        self._kafka = kafka
        self._source = source
        self._zones = zones or TimeZones()
        self.window = Window(capacity)
        self._producer: AIOKafkaProducer | None = None
        self._template: AIOKafkaProducer | None = None
        self._generation = 0
        self._unacked: dict[_Batch, None] = {}
        """Batches handed over and not acknowledged, in the order they were first handed over."""
        self._usable = asyncio.Event()
        """Set while the current producer takes batches; clear during a replacement."""
        self._broken = asyncio.Event()
        """Set when the current producer is found unusable; the keeper replaces it."""
        self._partition = Partitioner()
        self._records = RecordWriter(
            kafka.events_topic,
            kafka.dlq_topic,
            source=source,
            zones=zones,
            encoder=encoder,
            on_dead_letter=on_dead_letter,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff = Backoff(retry_base, retry_cap)
        self._clock = clock
        self._outage = Outage(clock)
        self._outage_after = outage_after
        self._repair_grace = repair_grace
        self._relabel_until = 0.0
        self._closing = False
        self._submitting: set[asyncio.Future[None]] = set()
        self._last_submitted: asyncio.Future[None] | None = None
        self.replacements = 0
        """Producers replaced so far (each one a new producer id)."""
        self.fatal: BaseException | None = None
        self.failed = asyncio.Event()
        """Set when a send failed for good; the worker then stops and reports unhealthy."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, *, attempts: int | None = None) -> None:
        """Connect the producer, retrying with backoff while the cluster is unreachable; raise
        `KafkaAccessRefused` at once if it refuses our credentials or certificates."""
        refusal = await access_refused(self._kafka.client_kwargs())
        if refusal is not None:
            raise KafkaAccessRefused(f"Kafka at {self._kafka.bootstrap_servers}: {refusal}")
        producer = await self._connect(attempts=attempts, starting=True)
        try:
            # the default partitioner's choice, computed once per key
            for topic in (self._kafka.events_topic, self._kafka.dlq_topic):
                self._partition.learn(topic, await producer.partitions_for(topic))
        except KafkaError as e:
            await producer.stop()
            raise BrokerError(
                f"Kafka topic {topic!r} is not available: run `ingest topics apply` "
                f"({type(e).__name__})"
            ) from e
        except BaseException:  # stopped while starting: no "Unclosed AIOKafkaProducer"
            await producer.stop()
            raise
        self._producer = self._template = producer
        self._usable.set()
        self._tasks = [
            asyncio.create_task(self._keep(), name="sink-keeper"),
            asyncio.create_task(self._watch(), name="sink-watch"),
        ]
        log.info("Kafka producer up (%s)", self._kafka.bootstrap_servers)

    async def _connect(self, *, attempts: int | None = None, starting: bool) -> AIOKafkaProducer:
        """A started producer (bootstrap + a new producer id); retried with backoff, quietly:
        the first failure is logged (at start-up; an outage has its own lines), then one line
        per `ops.logs` period."""
        attempt = 0
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as e:
                with contextlib.suppress(KafkaError, TimeoutError):
                    await asyncio.wait_for(producer.stop(), 5.0)
                attempt += 1
                if attempts is not None and attempt >= attempts:
                    raise BrokerError(
                        f"Kafka unreachable at {self._kafka.bootstrap_servers}"
                    ) from e
                delay = self._backoff.delay(attempt)
                if starting and attempt == 1:
                    log.warning(
                        "Kafka not reachable (%s); retrying with backoff up to %.0f s",
                        type(e).__name__,
                        self._backoff.cap,
                    )
                await self._clock.sleep(delay)
                continue
            return producer

    def _new_producer(self) -> AIOKafkaProducer:
        k = self._kafka
        producer = AIOKafkaProducer(
            enable_idempotence=True,
            acks="all",
            linger_ms=k.linger_ms,
            max_batch_size=k.max_batch_bytes,
            compression_type=None if k.compression is Compression.NONE else k.compression.value,
            request_timeout_ms=k.request_timeout_ms,
            **k.client_kwargs(),
        )
        pace_metadata(producer.client)
        return producer

    async def stop(self) -> None:
        """Wait (bounded) for everything in flight to be acknowledged, then flush and close."""
        timeout = self._drain_timeout
        if self._closing:
            return
        self._closing = True
        if self._producer is not None and self.fatal is None:
            try:
                async with asyncio.timeout(timeout):
                    while self._submitting:  # payloads received before the session closed
                        await asyncio.wait(set(self._submitting))
                    await self.window.drained()
            except TimeoutError:
                log.error(
                    "%d records not acknowledged by Kafka at shutdown; the next start's gap "
                    "repair covers their mailboxes",
                    self.window.used,
                )
                WORKER_PRODUCER_ERRORS.labels("unacknowledged-at-shutdown").inc(self.window.used)
        leftovers = list(self._submitting)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._usable.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), max(1.0, timeout / 4))
            except (TimeoutError, KafkaError) as e:
                log.warning("Kafka producer did not close cleanly: %r", e)
        WORKER_KAFKA_OUTAGE_SECONDS.set(0)

    async def __aenter__(self) -> Sink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        """The producer takes records (false during an outage's replacement and after a fatal
        error)."""
        return self._usable.is_set() and self.fatal is None and not self._closing

    @property
    def in_outage(self) -> bool:
        return self._outage.active

    # -- the way in ------------------------------------------------------------------------------

    async def submit(self, messages: list[dict[str, Any]], received: float) -> None:
        """Admit the Comet event messages of one server payload: returns once the in-flight window
        has room for them (this wait is the backpressure on the CometD connect loop).

        They are parsed, encoded and handed to the producer by a task of their own, after the
        previous payload's (payloads stay in order), so the session's next connect goes out — and
        the server prepares the next payload — while this one is processed. Their records go out
        as one record batch per partition: one append per record, one acknowledgement (and one
        set of metric updates) per batch. A received payload is produced even if the caller is
        cancelled while it waits for room (the CometD session closing at shutdown): `stop()`
        waits for it.
        """
        admission = asyncio.ensure_future(self._admit(messages, received))
        self._track(admission)
        await asyncio.shield(admission)

    async def _admit(self, messages: list[dict[str, Any]], received: float) -> None:
        await self.window.acquire(len(messages))
        # no await from here on: the next admission cannot come between
        task = asyncio.ensure_future(self._submit(messages, received, self._last_submitted))
        self._last_submitted = task
        self._track(task)

    def _track(self, task: asyncio.Future[None]) -> None:
        self._submitting.add(task)
        task.add_done_callback(self._submitted)

    def _submitted(self, task: asyncio.Future[None]) -> None:
        self._submitting.discard(task)
        if self._last_submitted is task:
            self._last_submitted = None
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, BrokerError):
            # nobody awaits the task: report it here so it is never silent
            log.error("a Comet payload was not produced: %r", error)

    async def _submit(
        self,
        messages: list[dict[str, Any]],
        received: float,
        previous: asyncio.Future[None] | None,
    ) -> None:
        handed = 0  # records the producer has: their acknowledgements release the window
        try:
            if previous is not None:
                await asyncio.wait({previous})  # its outcome is its own
            WORKER_EVENTS_RECEIVED.inc(len(messages))
            for batch in self._batches(messages, received):
                await self._send(batch)
                handed += len(batch.records)
        except BaseException:
            self.window.release(len(messages) - handed)
            raise

    def _batches(self, messages: list[dict[str, Any]], received: float) -> list[_Batch]:
        """Parse, encode and group one payload's records into record batches, in order."""
        now = self._clock.utc_now()  # of the dead letters; events take the normalizer's
        open_batches: dict[tuple[str, int], _Batch] = {}
        ready: list[_Batch] = []
        for message in messages:
            topic, record, label, second = self._records.for_message(message, now)
            partition = self._partition(topic, record[0])
            batch = open_batches.get((topic, partition))
            if batch is None or not batch.add(record, label, second):
                if batch is not None:
                    ready.append(batch)  # full: it goes first, keeping the partition's order
                batch = _Batch(topic, partition, received, self._builder())
                if not batch.add(record, label, second):
                    raise BrokerError(f"a record of {len(record[1])} bytes exceeds the batch size")
                open_batches[topic, partition] = batch
        ready.extend(open_batches.values())
        return ready

    async def publish_snapshot(self, snapshot: MailboxSnapshot) -> None:
        """A gap-repair snapshot, on the events topic in line with the mailbox's events.

        After an outage that held the CometD session back, the repair of a lost session is what
        closes the history gap: it is published with reason `kafka-outage` (module docstring).
        """
        if snapshot.reason in _SESSION_LOSS and self._clock.monotonic() < self._relabel_until:
            snapshot = dataclasses.replace(snapshot, reason=RepairReason.KAFKA_OUTAGE)
        await self.window.acquire(1)
        try:
            topic, record, label, _ = self._records.for_snapshot(snapshot)
            partition = self._partition(topic, record[0])
            batch = _Batch(topic, partition, self._clock.monotonic(), self._builder())
            if not batch.add(record, label, None):
                raise BrokerError(f"a snapshot of {len(record[1])} bytes exceeds KAFKA_BATCH_BYTES")
            await self._send(batch)
        except BaseException:
            self.window.release(1)
            raise

    def _builder(self) -> BatchBuilder:
        # any producer builds the same batches (size, compression): the latest one, even while
        # it is being replaced
        assert self._template is not None
        return self._template.create_batch()

    # -- the way out -----------------------------------------------------------------------------

    async def _send(self, batch: _Batch) -> None:
        """Hand a batch to the producer (its acknowledgement releases the window). Returns once a
        producer has it; during a replacement, once the new producer has it."""
        batch.handed = self._clock.monotonic()
        self._unacked[batch] = None  # its place in a replay
        while True:
            await self._usable.wait()
            if batch.acked or batch.sent_by == self._generation:
                return  # the replay after a replacement sent it
            if self.fatal is not None or self._producer is None:
                raise BrokerError("the Kafka producer is not running")
            if await self._hand_over(batch):
                return

    async def _hand_over(self, batch: _Batch) -> bool:
        """One attempt on the current producer; False if it turned out unusable meanwhile."""
        producer, generation = self._producer, self._generation
        assert producer is not None
        builder = batch.builder or self._rebuild(batch.records)
        batch.builder = None  # a builder is sent once; a re-send builds a new one
        started = time.monotonic()
        try:
            builder.close()
            future = await producer.send_batch(builder, batch.topic, partition=batch.partition)
        except AssertionError:
            # aiokafka asserts that an explicit partition is in its metadata, which is being
            # refreshed: not queued, so safe to try again
            await self._clock.sleep(self._backoff.delay(1))
            return False
        except KafkaError as e:
            if not _curable(e):
                self._fail(e)
                raise BrokerError(f"Kafka send failed for good: {e!r}") from e
            self._break(generation, e)
            return False
        waited = time.monotonic() - started
        if waited > 0.001:  # the partition's previous batch was not delivered yet
            WORKER_BACKPRESSURE_SECONDS.inc(waited)
        batch.sent_by = generation
        future.add_done_callback(lambda f, b=batch, g=generation: self._on_ack(b, g, f))
        return True

    def _rebuild(self, records: Sequence[Record]) -> BatchBuilder:
        builder = self._builder()
        for key, value, timestamp, headers in records:
            builder.append(key=key, value=value, timestamp=timestamp, headers=headers)
        return builder

    def _on_ack(self, batch: _Batch, generation: int, future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        if batch.acked:
            return  # a copy sent by another producer was acknowledged first
        if future.cancelled() or error is not None:
            if generation != self._generation or future.cancelled():
                return  # a replaced producer's: the replay sent it again
            assert error is not None
            if _curable(error):
                self._break(generation, error)
            else:
                self._fail(error)
            return
        batch.acked = True
        del self._unacked[batch]
        count = len(batch.records)
        for label, n in batch.labels.items():
            label.inc(n)
        observe_many(WORKER_ACK_LATENCY, time.monotonic() - batch.received, count)
        if batch.event_seconds:
            wall = self._clock.wall()
            for second, n in batch.event_seconds.items():
                observe_many(WORKER_EVENT_LAG, max(0.0, wall - second), n)
            WORKER_LAST_EVENT.set(wall)
        self.window.release(count)

    # -- replacing an unusable producer ----------------------------------------------------------

    def _break(self, generation: int, error: BaseException) -> None:
        """The producer of `generation` is unusable: have the keeper replace it (once)."""
        if generation != self._generation or self._broken.is_set() or self.fatal is not None:
            return
        self._usable.clear()
        self._broken.set()
        self._outage.begin(f"the producer is unusable ({error!r})", self.window.used)

    async def _keep(self) -> None:
        """Replace the producer whenever it is found unusable."""
        while True:
            await self._broken.wait()
            await self._replace()

    async def _replace(self) -> None:
        while True:
            self._generation += 1  # whatever the old producer reports from now on is ignored
            old, self._producer = self._producer, None
            if old is not None:
                await abandon(old)
            self._broken.clear()
            self._producer = await self._connect(starting=False)
            self._template = self._producer
            self.replacements += 1
            self._outage.replacements += 1
            WORKER_PRODUCER_ERRORS.labels("replaced").inc()
            log.info(
                "new Kafka producer: %d unacknowledged batches to send again", len(self._unacked)
            )
            if await self._replay():
                break
        self._usable.set()

    async def _replay(self) -> bool:
        """Send every unacknowledged batch again, in order; False if the producer broke."""
        generation = self._generation
        for batch in list(self._unacked):
            if self._broken.is_set():
                return False
            if batch.acked or batch.sent_by == generation:
                continue
            if batch.sent_by >= 0:
                WORKER_PRODUCER_ERRORS.labels("resent").inc(len(batch.records))
                self._outage.resent += len(batch.records)
            if not await self._hand_over(batch):
                return False
        return not self._broken.is_set()

    # -- watching for outages --------------------------------------------------------------------

    async def _watch(self, period: float = 1.0) -> None:
        """Once a second: is Kafka away (nothing acknowledged for `outage_after` while records
        wait, or a replacement under way), and is it back?"""
        while True:
            await self._clock.sleep(period)
            oldest = next(iter(self._unacked), None)
            now = self._clock.monotonic()
            waited = now - oldest.handed if oldest is not None else 0.0
            stuck = waited >= self._outage_after
            if not self._outage.active and stuck:
                self._outage.begin(f"nothing acknowledged for {waited:.0f} s", self.window.used)
            elif self._outage.active and self._usable.is_set() and not stuck:
                if self._outage.end():
                    self._relabel_until = now + self._repair_grace
                continue
            self._outage.tick(self.window.used, self.window.waiting > 0)

    def _fail(self, error: BaseException) -> None:
        if self.fatal is None:
            self.fatal = error
            WORKER_PRODUCER_ERRORS.labels("fatal").inc()
            log.error("Kafka producer failed for good: %r; the worker becomes unhealthy", error)
            self._usable.set()  # wake the senders waiting for a producer: they fail
            self.failed.set()
