"""The worker's Kafka side: raw Comet payloads → events (or dead letters) → acknowledged records.

Every payload the CometD session hands over takes slots of a bounded in-flight window
(CUMI_QUEUE_SIZE) until Kafka acknowledges its records. Payloads are processed one after the
other, in order, while the session already fetches the next one. Its records go out as one record
batch per partition (one append per record, one acknowledgement per batch); a partition holds at
most one queued batch besides the one in flight. When the window is full (Kafka is slow, or a
partition's queued batch cannot be delivered and the payloads behind it wait), `submit` waits —
and with it the CometD connect loop: the worker stops pulling from the server instead of growing
memory (see ingest.cumi.session), and continues where it stopped once Kafka catches up.

Records are produced by one idempotent producer (`acks=all`, `enable_idempotence=True`): aiokafka
then retries a batch until the broker takes it, with sequence numbers that let the broker drop the
duplicates a retry could create, and keeps per-partition order (one in-flight batch per partition).
A record aiokafka still gives up on (a partition without a leader for longer than
KAFKA_REQUEST_TIMEOUT_MS) is sent again by this module, never dropped; such a re-send can land after
records that were produced later (the projection tolerates it: events are USN-stamped assertions).
Only an error that no retry can cure (the producer fenced, a record too large…) is fatal: it is
logged, counted, and makes the worker unhealthy so that it exits and is restarted (its start-up gap
repair then covers what was in flight).

Invalid payloads go to the dead-letter topic with the raw bytes and the reason; the worker goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, ProducerClosed
from aiokafka.producer.message_accumulator import BatchBuilder

from ingest.cumi.normalizer import TimeZones
from ingest.errors import BrokerError
from ingest.eventlog.codec import Encoder
from ingest.eventlog.records import Record, RecordWriter
from ingest.eventlog.topics import Partitioner
from ingest.events import MailboxSnapshot
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock
from ingest.ops.metrics import (
    WORKER_ACK_LATENCY,
    WORKER_BACKPRESSURE_SECONDS,
    WORKER_EVENT_LAG,
    WORKER_EVENTS_RECEIVED,
    WORKER_LAST_EVENT,
    WORKER_PRODUCER_ERRORS,
    WORKER_QUEUE_CAPACITY,
    WORKER_QUEUE_EVENTS,
    observe_many,
)
from ingest.settings import Compression, KafkaSettings

log = logging.getLogger(__name__)


class Window:
    """A counting bound on records in flight; `acquire` waits while it is full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        """The most records ever in flight at once (≤ limit, or one payload larger than it)."""
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        WORKER_QUEUE_CAPACITY.set(limit)

    async def acquire(self, count: int) -> None:
        # a payload larger than the whole window is let in alone rather than never
        if self.used and self.used + count > self.limit:
            started = time.monotonic()
            while self.used and self.used + count > self.limit:
                self._room.clear()
                await self._room.wait()
            WORKER_BACKPRESSURE_SECONDS.inc(time.monotonic() - started)
        self.used += count
        self.peak = max(self.peak, self.used)
        self._empty.clear()
        WORKER_QUEUE_EVENTS.set(self.used)

    def release(self, count: int = 1) -> None:
        self.used -= count
        WORKER_QUEUE_EVENTS.set(self.used)
        if self.used < self.limit:
            self._room.set()
        if self.used == 0:
            self._empty.set()

    async def drained(self) -> None:
        await self._empty.wait()


class _Batch:
    """Records of one payload for one partition: one record batch, one acknowledgement.

    Kept until acknowledged so it can be sent again; the metric children to increment on the ack
    are counted per batch, not per record.
    """

    __slots__ = ("builder", "event_seconds", "labels", "partition", "received", "records", "topic")

    def __init__(self, topic: str, partition: int, received: float, builder: BatchBuilder) -> None:
        self.topic = topic
        self.partition = partition
        self.received = received
        self.builder: BatchBuilder | None = builder
        self.records: list[Record] = []
        self.labels: dict[Any, int] = {}
        self.event_seconds: dict[int, int] = {}

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
    """One idempotent producer for the events and dead-letter topics, with the in-flight window."""

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
        clock: Clock = SYSTEM_CLOCK,
        encoder: Encoder | None = None,
    ) -> None:
        self._drain_timeout = drain_timeout
        self._kafka = kafka
        self._source = source
        self._zones = zones or TimeZones()
        self.window = Window(capacity)
        self._producer: AIOKafkaProducer | None = None
        self._retries: asyncio.Queue[_Batch] = asyncio.Queue()
        self._partition = Partitioner()
        self._records = RecordWriter(
            kafka.events_topic, kafka.dlq_topic, source=source, zones=zones, encoder=encoder
        )
        self._retry_task: asyncio.Task[None] | None = None
        self._backoff = Backoff(retry_base, retry_cap)
        self._clock = clock
        self._closing = False
        self._submitting: set[asyncio.Future[None]] = set()
        self._last_submitted: asyncio.Future[None] | None = None
        self.fatal: BaseException | None = None
        self.failed = asyncio.Event()
        """Set when a send failed for good; the worker then stops and reports unhealthy."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, *, attempts: int | None = None) -> None:
        """Connect the producer, retrying with backoff while the cluster is unreachable."""
        attempt = 0
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as e:
                await producer.stop()
                attempt += 1
                if attempts is not None and attempt >= attempts:
                    raise BrokerError(
                        f"Kafka unreachable at {self._kafka.bootstrap_servers}"
                    ) from e
                delay = self._backoff.delay(attempt)
                log.warning("Kafka not reachable (%s); retrying in %.1f s", type(e).__name__, delay)
                await self._clock.sleep(delay)
                continue
            try:
                # the default partitioner's choice, computed once per key
                for topic in (self._kafka.events_topic, self._kafka.dlq_topic):
                    self._partition.learn(topic, await producer.partitions_for(topic))
            except KafkaError as e:
                await producer.stop()
                raise BrokerError(
                    f"Kafka topic {topic!r} is not available (create the topics first): {e!r}"
                ) from e
            self._producer = producer
            break
        self._retry_task = asyncio.create_task(self._resend_loop(), name="sink-resend")
        log.info("Kafka producer up (%s)", self._kafka.bootstrap_servers)

    def _new_producer(self) -> AIOKafkaProducer:
        k = self._kafka
        return AIOKafkaProducer(
            enable_idempotence=True,
            acks="all",
            linger_ms=k.linger_ms,
            max_batch_size=k.max_batch_bytes,
            compression_type=None if k.compression is Compression.NONE else k.compression.value,
            request_timeout_ms=k.request_timeout_ms,
            **k.client_kwargs(),
        )

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
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), max(1.0, timeout / 4))
            except (TimeoutError, KafkaError) as e:
                log.warning("Kafka producer did not close cleanly: %r", e)

    async def __aenter__(self) -> Sink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        return self._producer is not None and self.fatal is None and not self._closing

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
        """A gap-repair snapshot, on the events topic in line with the mailbox's events."""
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
        assert self._producer is not None
        return self._producer.create_batch()

    # -- the way out -----------------------------------------------------------------------------

    async def _send(self, batch: _Batch) -> None:
        """Hand a batch to the producer (its acknowledgement releases the window)."""
        attempt = 0
        while True:
            producer = self._producer
            if producer is None or self.fatal is not None:
                raise BrokerError("the Kafka producer is not running")
            builder = batch.builder or self._rebuild(batch.records)
            batch.builder = None  # a builder is sent once; a re-send builds a new one
            started = time.monotonic()
            try:
                builder.close()
                future = await producer.send_batch(builder, batch.topic, partition=batch.partition)
            except (KafkaError, AssertionError) as e:
                # not queued, so safe to try again: the partition's previous batch stayed
                # undelivered (timeout), or the topic's metadata is being refreshed (aiokafka
                # asserts that an explicit partition is in its metadata)
                if (
                    isinstance(e, KafkaError)
                    and not e.retriable
                    and not isinstance(e, KafkaTimeoutError)
                ):
                    self._fail(e)
                    raise BrokerError(f"Kafka send failed for good: {e!r}") from e
                attempt += 1
                WORKER_BACKPRESSURE_SECONDS.inc(time.monotonic() - started)
                WORKER_PRODUCER_ERRORS.labels("buffer-timeout").inc()
                await self._clock.sleep(self._backoff.delay(attempt))
                continue
            except ProducerClosed as e:
                self._fail(e)
                raise BrokerError(f"Kafka send failed for good: {e!r}") from e
            waited = time.monotonic() - started
            if waited > 0.001:  # the partition's previous batch was not delivered yet
                WORKER_BACKPRESSURE_SECONDS.inc(waited)
            future.add_done_callback(lambda f, b=batch: self._on_ack(b, f))
            return

    def _rebuild(self, records: Sequence[Record]) -> BatchBuilder:
        builder = self._builder()
        for key, value, timestamp, headers in records:
            builder.append(key=key, value=value, timestamp=timestamp, headers=headers)
        return builder

    def _on_ack(self, batch: _Batch, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return  # the producer is closing; the records count as unacknowledged
        error = future.exception()
        if error is not None:
            retriable = isinstance(error, KafkaConnectionError | KafkaTimeoutError) or getattr(
                error, "retriable", False
            )
            if not retriable:
                self._fail(error)
                return
            WORKER_PRODUCER_ERRORS.labels("resent").inc(len(batch.records))
            self._retries.put_nowait(batch)
            return
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

    async def _resend_loop(self) -> None:
        while True:
            batch = await self._retries.get()
            try:
                await self._clock.sleep(self._backoff.delay(1))
                await self._send(batch)
            except BrokerError:  # fatal: the worker is stopping
                self.window.release(len(batch.records))
                return
            except BaseException:
                self.window.release(len(batch.records))
                raise

    def _fail(self, error: BaseException) -> None:
        if self.fatal is None:
            self.fatal = error
            WORKER_PRODUCER_ERRORS.labels("fatal").inc()
            log.error("Kafka producer failed for good: %r; the worker becomes unhealthy", error)
            self.failed.set()
