"""The mailbox registry: which mailboxes the ingest workers watch, on a compacted Kafka topic.

One record per mailbox, keyed by MailboxId; the value is a `MailboxRegistryEntry` (Avro,
schemas/mailbox_registry.avsc: server, credentials reference, enabled) and a tombstone removes the
mailbox. Compaction keeps the newest record per key, so reading the topic to its end, last value
per key winning, gives the registry. Workers with `CUMI_MAILBOX_SOURCE=registry` share it through
the Kafka group protocol (ingest.mailboxes.assignment); this module writes and reads it
(`ingest mailboxes` is `ingest.commands.mailboxes`). In registry mode (KAFKA_SCHEMA_REGISTRY_URL)
the writer registers the entry schema when it starts and writes the Confluent wire format;
readers take both framings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ingest.errors import BrokerError, ConfigError, DecodeError, TopicMissing
from ingest.eventlog import codec
from ingest.eventlog.schema_registry import register_writers, schema_ids
from ingest.eventlog.topics import (
    REGISTRY_PARTITIONS,
    TopicSpec,
    describe_topic,
    ensure_topics,
    topic_partitions,
)
from ingest.events import MailboxRegistryEntry
from ingest.settings import KafkaSettings

log = logging.getLogger(__name__)

Registry = dict[str, MailboxRegistryEntry]
"""MailboxId → its entry (enabled or not); removed mailboxes are absent."""

_READ_TIMEOUT_S = 60.0


def watchable(entry: MailboxRegistryEntry | None, server: str | None) -> bool:
    """Whether a worker of `server` (its CUMI_SERVER_NAME) watches this entry."""
    return (
        entry is not None
        and entry.enabled
        and (entry.server is None or server is None or entry.server == server)
    )


# --- the topic ----------------------------------------------------------------------------------


async def ensure_registry_topic(kafka: KafkaSettings) -> None:
    """Create the registry topic if it is missing: compacted, REGISTRY_PARTITIONS partitions,
    replicated like the events topic (1 if that does not exist either). An existing topic is
    left as it is, whatever its partition count (see ingest.eventlog.topics)."""
    client = kafka.client_kwargs()
    events = await describe_topic(kafka.events_topic, **client)
    replication = events[1] if events else 1
    spec = TopicSpec(
        kafka.registry_topic, REGISTRY_PARTITIONS, replication, {"cleanup.policy": "compact"}
    )
    bootstrap = client.pop("bootstrap_servers")
    await ensure_topics(bootstrap, [spec], **client)


def decode_entry(
    key: bytes | None, value: bytes | None, ids: codec.SchemaIds | None = None
) -> MailboxRegistryEntry | None:
    """One registry record: its entry, or None for a tombstone. Raises DecodeError for a value
    that is not a registry entry of the same mailbox as the key. `ids`: registry mode."""
    if key is None:
        raise DecodeError("registry record without a key")
    if value is None:
        return None
    record = codec.decode(value, ids)
    if not isinstance(record, MailboxRegistryEntry):
        raise DecodeError(f"a {type(record).__name__} is not a registry entry")
    if record.mailbox_id.encode() != key:
        raise DecodeError(f"key {key!r} but the entry names mailbox {record.mailbox_id!r}")
    return record


async def read_registry(kafka: KafkaSettings) -> Registry:
    """The whole registry: every partition read to the end offsets seen at the start."""
    try:
        partitions = await topic_partitions(kafka.registry_topic, kafka.client_kwargs(), within_s=5)
    except TopicMissing as e:
        raise TopicMissing(f"{e} (`ingest mailboxes add` makes it)") from e
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **kafka.client_kwargs())
    try:
        await consumer.start()
        tps = [TopicPartition(kafka.registry_topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        registry: Registry = {}
        ids = schema_ids(kafka.schema_registry)
        remaining = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(_READ_TIMEOUT_S):
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < ends[tp]:
                            _apply(registry, record, tp, ids)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        return registry
    finally:
        await consumer.stop()


def _apply(registry: Registry, record: Any, tp: Any, ids: codec.SchemaIds | None) -> None:
    try:
        entry = decode_entry(record.key, record.value, ids)
    except DecodeError as e:
        log.warning("registry record %s@%d skipped: %s", tp, record.offset, e)
        return
    alias = (record.key or b"").decode("utf-8", "replace")
    if entry is None:
        registry.pop(alias, None)
    else:
        registry[alias] = entry


class RegistryWriter:
    """An idempotent producer of registry records (entries and tombstones), keyed by MailboxId
    so that Kafka's default partitioner places them (and the workers read them) by key. Registry
    mode: `start()` registers the entry schema first (a refusal raises `SchemaRefused`)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[asyncio.Future[Any]] = []
        self._encoder: codec.Encoder | None = None

    async def start(self) -> None:
        if self._encoder is None:
            self._encoder = await register_writers(
                self._kafka.schema_registry,
                {self._kafka.registry_topic: (MailboxRegistryEntry,)},
                attempts=5,
            )
        if self._producer is None:
            producer = AIOKafkaProducer(
                acks="all", enable_idempotence=True, linger_ms=5, **self._kafka.client_kwargs()
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()  # else "Unclosed AIOKafkaProducer" at exit
                raise
            self._producer = producer

    async def stop(self) -> None:
        """Waits for every record to be acknowledged (raising if one failed), then closes."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await self.flush()
        finally:
            await producer.stop()

    async def __aenter__(self) -> RegistryWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def put(self, entry: MailboxRegistryEntry) -> None:
        if self._encoder is None:
            raise RuntimeError("RegistryWriter.start() first")
        await self._send(
            entry.mailbox_id,
            self._encoder.encode(entry),
            timestamp=codec.timestamp_ms(entry),
            headers=codec.kafka_headers(entry),
        )

    async def remove(self, alias: str) -> None:
        """A tombstone: the mailbox is no longer watched, and compaction forgets it."""
        await self._send(alias, None, timestamp=None, headers=[])

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            await asyncio.gather(*pending)
        except KafkaError as e:
            raise BrokerError(f"writing to the registry topic: {e!r}") from e

    async def _send(
        self,
        alias: str,
        value: bytes | None,
        *,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        if self._producer is None:
            raise RuntimeError("RegistryWriter.start() first")
        if not alias:
            raise ConfigError("a mailbox id must not be empty")
        future = await self._producer.send(
            self._kafka.registry_topic,
            value,
            key=alias.encode(),
            timestamp_ms=timestamp,
            headers=headers,
        )
        self._pending.append(future)


# --- changes ------------------------------------------------------------------------------------


def changes(
    current: Mapping[str, MailboxRegistryEntry],
    wanted: Mapping[str, MailboxRegistryEntry],
    *,
    prune: bool = False,
) -> tuple[list[MailboxRegistryEntry], list[str]]:
    """What to write so the registry holds `wanted` (and, with `prune`, nothing else): the
    entries that are new or differ (the timestamp aside), and the aliases to remove."""
    puts = [
        entry
        for alias, entry in wanted.items()
        if alias not in current or replace(current[alias], updated_at=entry.updated_at) != entry
    ]
    removes = sorted(set(current) - set(wanted)) if prune else []
    return puts, removes


async def apply_changes(
    kafka: KafkaSettings, puts: Iterable[MailboxRegistryEntry], removes: Iterable[str]
) -> None:
    await ensure_registry_topic(kafka)
    async with RegistryWriter(kafka) as writer:
        for entry in puts:
            await writer.put(entry)
        for alias in removes:
            await writer.remove(alias)
