"""The compacted state topic: restoring projected mailboxes from it, and writing them to it in one
Kafka transaction with the projector's consumer offsets.

Co-partitioning. The state topic has as many partitions as the events topic, and the state of a
mailbox whose events are in events partition p is written to state partition p — explicitly, not
through a partitioner. The producer's default partitioner would put it there anyway (the same key
hashed with murmur2 over the same partition count), so readers looking a mailbox up by key find it
too; writing the partition explicitly makes restore independent of that arithmetic. The instance
that owns events partition p therefore restores exactly state partition p, read to its end.

Transactions and zombies. aiokafka's `send_offsets_to_transaction` speaks TxnOffsetCommit v0, which
carries no consumer-group generation, so the group coordinator cannot tell a zombie's offset commit
from the owner's (KIP-447 fencing is not available). Fencing therefore comes from the transactional
id, as in Kafka's original exactly-once design: one transactional producer per *events partition*,
with an id derived from the group and the partition (`<prefix>.<events topic>.<p>`), identical on
whichever instance owns p. When an instance takes p over it initialises that id: the coordinator
bumps the producer epoch, aborts (or completes) any transaction the previous owner left open, and
from then on rejects the previous owner's producer with ProducerFenced. Only after that does the
new owner read state partition p and the committed offset, so both reflect every transaction the
previous owner committed and none it did not.

Registry mode (KAFKA_SCHEMA_REGISTRY_URL): `StateWriter.start()` registers the state schema under
`<state topic>-cumi.pipeline.MailboxState` and writes the Confluent wire format; the reader takes
both framings (ingest.eventlog.schema_registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from ingest import speedups
from ingest.errors import BrokerError, DecodeError, IngestError
from ingest.eventlog import codec, wire
from ingest.eventlog.clients import abandon, close_consumer, pace_metadata
from ingest.eventlog.reader import decode_state_record
from ingest.eventlog.schema_registry import register_writers
from ingest.eventlog.topics import describe_topic
from ingest.events import MailboxStateRecord
from ingest.settings import SchemaRegistrySettings
from ingest.state import decoding, encoding
from ingest.state.projection import MailboxState

log = logging.getLogger(__name__)

_CLOSE_WITHIN = 5.0
"""Seconds a transactional producer may take to close before it is abandoned."""

_FETCH_MS = 500
_RESTORE_MAX_RECORDS = 5000


class Fenced(IngestError):
    """Another instance took over a partition's transactional id: this one is a zombie and must
    not write anything more. Not retriable in-process; the service exits non-zero."""


class TransactionFailed(BrokerError):
    """A state transaction was aborted (or could not be committed). Nothing of it is visible; the
    partition's in-memory state is ahead of the committed one and must be restored."""


def transactional_id(prefix: str, events_topic: str, partition: int) -> str:
    """Stable per events partition, the same on every instance (see the module docstring)."""
    return f"{prefix}.{events_topic}.{partition}"


# --- one mapping: a mailbox's state ⇄ a state-topic value ---------------------------------------


def encode_state(state: MailboxState) -> bytes:
    """A mailbox's folded state as a state-topic value (Avro single-object encoding). Whatever
    else stores states (checkpoints) stores these bytes, so the state schema has one mapping:
    `codec.encode(state.to_record())`, which the straight-line writer (ingest.state.encoding)
    writes byte for byte ~4 times faster, without the record."""
    if _FAST_WRITE is not None:
        try:
            return _FAST_WRITE(state)
        except encoding.UNWRITABLE:
            pass  # the reference path writes it, or says what is wrong with it
    return codec.encode(state.to_record())


_FAST_WRITE = encoding.state_writer() if speedups.ENABLED else None
_FAST_READ = decoding.state_decoder() if speedups.ENABLED else None


@dataclass(frozen=True, slots=True)
class StateValue:
    """One mailbox's state, encoded once (`state_value`) for the state topic and checkpoints."""

    mailbox_id: str
    value: bytes
    """`encode_state`: single-object encoding (the writer reframes it in registry mode)."""
    timestamp_ms: int
    """The record timestamp: the state's `updated_at`."""


def state_value(state: MailboxState) -> StateValue:
    return StateValue(state.mailbox_id, encode_state(state), codec.epoch_ms(state.updated_at))


def decode_state(value: bytes, ids: codec.SchemaIds | None = None) -> MailboxState:
    """The state in a state-topic value of any released state schema, either framing. Raises
    `DecodeError` for anything else. The reference mapping is `MailboxState.from_record` of the
    decoded record; the direct reader (ingest.state.decoding) builds the same state from
    today's (v3) and v2 single-object values without the record, ≈ 1.7 times as fast."""
    if ids is None:  # single-object, as checkpoints hold them: the fast readers' case
        if _FAST_READ is not None:
            try:
                return _FAST_READ(value)
            except decoding.UNREADABLE:
                pass  # the reference path reads it, or says what is wrong with it
        return MailboxState.from_record(decode_state_record(value))
    record = codec.decode(value, ids)
    if not isinstance(record, MailboxStateRecord):
        raise DecodeError(f"a {type(record).__name__} record, not a MailboxState")
    return MailboxState.from_record(record)


# --- reading ---------------------------------------------------------------------------------


class StateReader:
    """Reads state partitions to their end (read_committed): the restore path of the projector.

    One group-less consumer, reassigned for every restore. `ids` resolves the schema ids of
    Confluent-framed records (registry mode).
    """

    def __init__(self, topic: str, *, ids: codec.SchemaIds | None = None, **client_kwargs: Any):
        self.topic = topic
        self._ids = ids
        self._client_kwargs = client_kwargs
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            # reading to a known end: a fetch that finds nothing new need not wait for more
            fetch_max_wait_ms=50,
            **self._client_kwargs,
        )
        pace_metadata(consumer._client)
        try:
            await consumer.start()
        except BaseException:
            with contextlib.suppress(KafkaError):
                await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer)

    async def __aenter__(self) -> StateReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def read(self, partitions: Collection[int]) -> dict[int, dict[str, MailboxStateRecord]]:
        """The latest committed state record of every mailbox in `partitions`, by partition."""
        consumer = self._require()
        result: dict[int, dict[str, MailboxStateRecord]] = {p: {} for p in partitions}
        if not partitions:
            return result
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # with read_committed, the end is the last stable offset: nothing still in flight
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        started, count = time.monotonic(), 0
        while pending:
            batch = await consumer.getmany(
                *pending, timeout_ms=_FETCH_MS, max_records=_RESTORE_MAX_RECORDS
            )
            for tp, records in batch.items():
                states = result[tp.partition]
                for record in records:
                    count += 1
                    _keep(states, record.key, record.value, self._ids)
            for tp in list(pending):
                # a transaction marker is the last offset of every committed batch: `position`
                # moves past it even though no record is returned for it
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        # Paused, not unsubscribed: aiokafka's fetcher swallows a cancellation that lands while it
        # tears down a lost assignment, so unsubscribe() right before stop() can hang stop().
        # The next read() assigns its own partitions anyway.
        consumer.pause(*tps)
        log.info(
            "read %d state records of %s partitions %s in %.2f s",
            count,
            self.topic,
            sorted(partitions),
            time.monotonic() - started,
        )
        return result

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("StateReader is not started")
        return self._consumer


def _keep(
    states: dict[str, MailboxStateRecord],
    key: bytes | None,
    value: bytes | None,
    ids: codec.SchemaIds | None,
) -> None:
    if value is None:  # a tombstone (the projector never writes one, operators might)
        if key is not None:
            states.pop(key.decode(), None)
        return
    try:
        record = codec.decode(value, ids)
    except DecodeError as e:
        log.error("state record for key %r cannot be decoded, skipped: %s", key, e)
        return
    if not isinstance(record, MailboxStateRecord):
        log.error("unexpected %s record on the state topic, skipped", type(record).__name__)
        return
    states[record.mailbox_id] = record


async def read_state_topic(
    topic: str, *, ids: codec.SchemaIds | None = None, **client_kwargs: Any
) -> dict[str, MailboxStateRecord]:
    """Every mailbox's committed state on `topic` (all partitions): for tools and tests."""
    described = await describe_topic(topic, **client_kwargs)
    if described is None:
        return {}
    async with StateReader(topic, ids=ids, **client_kwargs) as reader:
        by_partition = await reader.read(range(described[0]))
    return {mid: rec for states in by_partition.values() for mid, rec in states.items()}


# --- writing ---------------------------------------------------------------------------------


class StateWriter:
    """One transactional producer per owned events partition (see the module docstring).

    `open(p)` fences any previous owner of p; `commit(p, states, next_offset)` writes the states to
    state partition p and commits events offset `next_offset` for the group, atomically. `start()`
    registers the state schema first in registry mode (`schema_registry`).
    """

    def __init__(
        self,
        *,
        state_topic: str,
        events_topic: str,
        group_id: str,
        transactional_id_prefix: str,
        transaction_timeout_ms: int = 60_000,
        schema_registry: SchemaRegistrySettings | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.state_topic = state_topic
        self._schema_registry = schema_registry
        self._encoder: codec.Encoder | None = None
        self.events_topic = events_topic
        self.group_id = group_id
        self._prefix = transactional_id_prefix
        self._timeout_ms = transaction_timeout_ms
        self._client_kwargs = client_kwargs
        self._producers: dict[int, AIOKafkaProducer] = {}

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._producers)

    async def start(self) -> None:
        """Choose the framing: register the state schema in registry mode (raises
        `SchemaRefused` if the registry refuses it, `SchemaRegistryUnavailable` if it stays
        unreachable for about a minute)."""
        if self._encoder is None:
            # bounded: a projector that cannot start exits and is restarted
            self._encoder = await register_writers(
                self._schema_registry, {self.state_topic: (MailboxStateRecord,)}, attempts=8
            )

    async def open(self, partitions: Iterable[int]) -> None:
        """(Re)initialise the producers of `partitions`, fencing their previous owners. A producer
        this instance already had is replaced too: someone may have owned p in between."""
        wanted = list(partitions)
        await self.close(wanted)
        producers = {p: self._new_producer(p) for p in wanted}
        results = await asyncio.gather(
            *(producer.start() for producer in producers.values()), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        self._producers.update(producers)
        if failures:
            await self.close(wanted)
            raise BrokerError(f"initialising transactional producers: {failures[0]!r}") from (
                failures[0]
            )

    async def close(self, partitions: Iterable[int]) -> None:
        stopping = [self._producers.pop(p) for p in list(partitions) if p in self._producers]
        for producer in stopping:
            try:
                await asyncio.wait_for(producer.stop(), _CLOSE_WITHIN)
            except KafkaError:
                pass
            except TimeoutError:  # the cluster is gone: stop() would wait for it for ever
                await abandon(producer)

    async def stop(self) -> None:
        await self.close(list(self._producers))

    async def commit(
        self,
        partition: int,
        states: Sequence[StateValue],
        next_offset: int,
        *,
        also: Callable[[AIOKafkaProducer], Awaitable[object]] | None = None,
    ) -> None:
        """One transaction: `states` to state partition `partition`, and the group's committed
        offset of events partition `partition` set to `next_offset`. Raises `Fenced` when another
        instance owns the partition now, `TransactionFailed` when the transaction was aborted.

        `also` sends more records in the same transaction (a checkpoint), after the states are
        acknowledged and before the offset: all of it is committed, or none."""
        producer = self._producers.get(partition)
        if producer is None:
            raise TransactionFailed(f"no producer for partition {partition} (not owned)")
        offsets = {TopicPartition(self.events_topic, partition): next_offset}
        frame = self._framing()
        headers = codec.kafka_headers(_HEADERS_OF)
        sent: list[asyncio.Future[Any]] = []
        try:
            await producer.begin_transaction()
            for state in states:
                sent.append(
                    await producer.send(
                        self.state_topic,
                        frame + state.value[wire.HEADER_SIZE :] if frame else state.value,
                        key=state.mailbox_id.encode(),
                        partition=partition,
                        timestamp_ms=state.timestamp_ms or None,
                        headers=headers,
                    )
                )
                await asyncio.sleep(0)  # encoding is CPU work: let heartbeats through
            await asyncio.gather(*sent)
            if also is not None:
                await also(producer)
            await producer.send_offsets_to_transaction(offsets, self.group_id)
            await producer.commit_transaction()
        except ProducerFenced as e:
            _consume_failures(sent)
            await self.close([partition])
            raise Fenced(
                f"transactional id of partition {partition} was taken over by another instance"
            ) from e
        except KafkaError as e:
            _consume_failures(sent)
            await self._abort(partition, producer)
            raise TransactionFailed(f"state transaction of partition {partition}: {e!r}") from e

    def _framing(self) -> bytes:
        """b"": values go as they are (single-object); else the Confluent header that replaces
        their single-object one (registry mode: the Avro body is the same bytes)."""
        if self._encoder is None:
            raise RuntimeError("StateWriter is not started")
        if not self._encoder.confluent:
            return b""
        return wire.confluent_header(self._encoder.schema_ids[MailboxStateRecord])

    async def _abort(self, partition: int, producer: AIOKafkaProducer) -> None:
        try:
            await producer.abort_transaction()
        except ProducerFenced as e:
            await self.close([partition])
            raise Fenced(f"partition {partition} fenced while aborting") from e
        except Exception:  # the producer is unusable; reopening the partition re-initialises it
            log.warning("aborting the transaction of partition %d failed", partition, exc_info=True)
            await self.close([partition])

    def _new_producer(self, partition: int) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            transactional_id=transactional_id(self._prefix, self.events_topic, partition),
            transaction_timeout_ms=self._timeout_ms,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            **self._client_kwargs,
        )
        pace_metadata(producer.client)
        return producer


_HEADERS_OF = MailboxStateRecord("", 0, ())
"""Any state record: the headers (kind, fingerprint) are the same for all."""


def _consume_failures(futures: Iterable[asyncio.Future[Any]]) -> None:
    """The delivery futures of an abandoned transaction fail too; their errors are the one being
    raised, so mark them retrieved rather than have asyncio log each as never retrieved."""
    for future in futures:
        if future.done():
            _retrieve(future)
        else:
            future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
