"""The worker's Kafka side: raw Comet payloads → events (or dead letters) → acknowledged records.

Every payload the CometD session hands over takes one slot of a bounded in-flight window
(CUMI_QUEUE_SIZE) until Kafka acknowledges its record. When the window is full `submit` waits, and
with it the CometD connect loop: the worker stops pulling from the server instead of growing memory
(see ingest.comet), and continues where it stopped once Kafka catches up.

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
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, ProducerClosed

from ingest import codec
from ingest.errors import BrokerError, InvalidEvent
from ingest.events import DeadLetter, MailboxEvent, MailboxSnapshot
from ingest.metrics import (
    WORKER_ACK_LATENCY,
    WORKER_BACKPRESSURE_SECONDS,
    WORKER_EVENT_LAG,
    WORKER_EVENTS_DEAD_LETTERED,
    WORKER_EVENTS_PUBLISHED,
    WORKER_EVENTS_RECEIVED,
    WORKER_LAST_EVENT,
    WORKER_PRODUCER_ERRORS,
    WORKER_QUEUE_CAPACITY,
    WORKER_QUEUE_EVENTS,
    WORKER_SNAPSHOTS_PUBLISHED,
)
from ingest.normalizer import TimeZones, dead_letter_for, parse_event
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
        if self.used < self.limit:
            self._room.set()
        if self.used == 0:
            self._empty.set()
            WORKER_QUEUE_EVENTS.set(0)

    async def drained(self) -> None:
        await self._empty.wait()


class _Pending:
    """One record on its way to Kafka, kept until acknowledged so it can be sent again."""

    __slots__ = ("event_time", "headers", "key", "label", "received", "timestamp", "topic", "value")

    def __init__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        headers: list[tuple[str, bytes]],
        timestamp: int,
        label: Any,
        received: float,
        event_time: float | None,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
        self.label = label
        """The metric child to increment on ack (events by type, dead letters by reason…)."""
        self.received = received
        self.event_time = event_time


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
    ) -> None:
        self._drain_timeout = drain_timeout
        self._kafka = kafka
        self._source = source
        self._zones = zones or TimeZones()
        self.window = Window(capacity)
        self._producer: AIOKafkaProducer | None = None
        self._retries: asyncio.Queue[_Pending] = asyncio.Queue()
        self._retry_task: asyncio.Task[None] | None = None
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._rng = random.Random()
        self._published_by_type: dict[str, Any] = {}
        self._dead_by_reason: dict[str, Any] = {}
        self._closing = False
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
                delay = self._backoff(attempt)
                log.warning("Kafka not reachable (%s); retrying in %.1f s", type(e).__name__, delay)
                await asyncio.sleep(delay)
                continue
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
                await asyncio.wait_for(self.window.drained(), timeout)
            except TimeoutError:
                log.error(
                    "%d records not acknowledged by Kafka at shutdown; the next start's gap "
                    "repair covers their mailboxes",
                    self.window.used,
                )
                WORKER_PRODUCER_ERRORS.labels("unacknowledged-at-shutdown").inc(self.window.used)
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
        """Comet event messages of one server payload → produced (not yet acknowledged)."""
        await self.window.acquire(len(messages))
        WORKER_EVENTS_RECEIVED.inc(len(messages))
        now = dt.datetime.now(dt.UTC)
        clock = lambda: now  # noqa: E731 - one clock reading per payload, not per event
        for message in messages:
            try:
                event = parse_event(message, zones=self._zones, source=self._source, now=clock)
                pending = self._event_record(event, received)
            except InvalidEvent as e:
                pending = self._dead_letter_record(message, e, now, received)
            except Exception as e:  # the encoder refused a valid-looking event
                pending = self._dead_letter_record(message, e, now, received)
            await self._send(pending)

    async def publish_snapshot(self, snapshot: MailboxSnapshot) -> None:
        """A gap-repair snapshot, on the events topic in line with the mailbox's events."""
        await self.window.acquire(1)
        value = codec.encode(snapshot)
        pending = _Pending(
            self._kafka.events_topic,
            snapshot.mailbox_id.encode(),
            value,
            headers=codec.kafka_headers(snapshot),
            timestamp=codec.timestamp_ms(snapshot),
            label=WORKER_SNAPSHOTS_PUBLISHED.labels(snapshot.reason),
            received=time.monotonic(),
            event_time=None,
        )
        await self._send(pending)

    def _event_record(self, event: MailboxEvent, received: float) -> _Pending:
        label = self._published_by_type.get(event.event_type)
        if label is None:
            label = WORKER_EVENTS_PUBLISHED.labels(event.event_type.value)
            self._published_by_type[event.event_type] = label
        return _Pending(
            self._kafka.events_topic,
            event.mailbox_id.encode(),
            codec.encode(event),
            headers=codec.kafka_headers(event),
            timestamp=codec.timestamp_ms(event),
            label=label,
            received=received,
            event_time=event.event_time.timestamp(),
        )

    def _dead_letter_record(
        self, message: Mapping[str, Any], error: Exception, now: dt.datetime, received: float
    ) -> _Pending:
        raw = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        letter: DeadLetter = dead_letter_for(raw, error, self._source, now)
        label = self._dead_by_reason.get(letter.reason)
        if label is None:
            label = WORKER_EVENTS_DEAD_LETTERED.labels(letter.reason)
            self._dead_by_reason[letter.reason] = label
        return _Pending(
            self._kafka.dlq_topic,
            letter.mailbox_id.encode() if letter.mailbox_id else None,
            codec.encode(letter),
            headers=codec.kafka_headers(letter),
            timestamp=int(letter.received_at.timestamp() * 1000),
            label=label,
            received=received,
            event_time=None,
        )

    # -- the way out -----------------------------------------------------------------------------

    async def _send(self, pending: _Pending) -> None:
        attempt = 0
        while True:
            producer = self._producer
            if producer is None or self.fatal is not None:
                raise BrokerError("the Kafka producer is not running")
            try:
                future = await producer.send(
                    pending.topic,
                    pending.value,
                    key=pending.key,
                    headers=pending.headers,
                    timestamp_ms=pending.timestamp,
                )
            except KafkaTimeoutError:
                # not appended: the producer's buffer stayed full; safe to try again
                attempt += 1
                WORKER_PRODUCER_ERRORS.labels("buffer-timeout").inc()
                await asyncio.sleep(self._backoff(attempt))
                continue
            except (KafkaError, ProducerClosed) as e:
                self._fail(e)
                raise BrokerError(f"Kafka send failed for good: {e!r}") from e
            future.add_done_callback(lambda f, p=pending: self._on_ack(p, f))
            return

    def _on_ack(self, pending: _Pending, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return  # the producer is closing; the record counts as unacknowledged
        error = future.exception()
        if error is not None:
            retriable = isinstance(error, KafkaConnectionError | KafkaTimeoutError) or getattr(
                error, "retriable", False
            )
            if not retriable:
                self._fail(error)
                return
            WORKER_PRODUCER_ERRORS.labels("resent").inc()
            self._retries.put_nowait(pending)
            return
        now = time.monotonic()
        pending.label.inc()
        WORKER_ACK_LATENCY.observe(now - pending.received)
        if pending.event_time is not None:
            wall = time.time()
            WORKER_EVENT_LAG.observe(max(0.0, wall - pending.event_time))
            WORKER_LAST_EVENT.set(wall)
        self.window.release(1)

    async def _resend_loop(self) -> None:
        while True:
            pending = await self._retries.get()
            await asyncio.sleep(self._backoff(1))
            try:
                await self._send(pending)
            except BrokerError:
                return

    def _fail(self, error: BaseException) -> None:
        if self.fatal is None:
            self.fatal = error
            WORKER_PRODUCER_ERRORS.labels("fatal").inc()
            log.error("Kafka producer failed for good: %r; the worker becomes unhealthy", error)
            self.failed.set()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._retry_cap, self._retry_base * 2 ** min(attempt, 16))
        return self._rng.uniform(ceiling / 2, ceiling)
