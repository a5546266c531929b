"""The mailbox registry: which mailboxes the ingest workers watch, on a compacted Kafka topic.

One record per mailbox, keyed by MailboxId; the value is a `MailboxRegistryEntry` (Avro,
schemas/mailbox_registry.avsc: server, credentials reference, enabled) and a tombstone removes the
mailbox. Compaction keeps the newest record per key, so reading the topic to its end, last value
per key winning, gives the registry. Workers with `CUMI_MAILBOX_SOURCE=registry` share it through
the Kafka group protocol (ingest.mailboxes.assignment); this module writes and reads it, and is
`ingest mailboxes`:

    ingest mailboxes add abell bwayne --server cuc1
    ingest mailboxes remove bwayne
    ingest mailboxes list [--json] [--all]
    ingest mailboxes import mailboxes.txt [--prune]

`import` reads the one mailbox-list format (`ingest.mailboxes.mailbox_file`). It writes only
what changes; `--prune` also removes registered mailboxes the file does not list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ingest.errors import BrokerError, ConfigError, DecodeError, TopicMissing
from ingest.eventlog import codec
from ingest.eventlog.topics import (
    REGISTRY_PARTITIONS,
    TopicSpec,
    describe_topic,
    ensure_topics,
    topic_partitions,
)
from ingest.events import MailboxRegistryEntry
from ingest.mailboxes.mailbox_file import parse_mailbox_file
from ingest.ops.clock import SYSTEM_CLOCK
from ingest.settings import KafkaSettings, SettingsSource, load_kafka

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


def decode_entry(key: bytes | None, value: bytes | None) -> MailboxRegistryEntry | None:
    """One registry record: its entry, or None for a tombstone. Raises DecodeError for a value
    that is not a registry entry of the same mailbox as the key."""
    if key is None:
        raise DecodeError("registry record without a key")
    if value is None:
        return None
    record = codec.decode(value)
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
    await consumer.start()
    try:
        tps = [TopicPartition(kafka.registry_topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        registry: Registry = {}
        remaining = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(_READ_TIMEOUT_S):
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < ends[tp]:
                            _apply(registry, record.key, record.value, tp, record.offset)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        return registry
    finally:
        await consumer.stop()


def _apply(
    registry: Registry, key: bytes | None, value: bytes | None, tp: Any, offset: int
) -> None:
    try:
        entry = decode_entry(key, value)
    except DecodeError as e:
        log.warning("registry record %s@%d skipped: %s", tp, offset, e)
        return
    alias = (key or b"").decode("utf-8", "replace")
    if entry is None:
        registry.pop(alias, None)
    else:
        registry[alias] = entry


class RegistryWriter:
    """An idempotent producer of registry records (entries and tombstones), keyed by MailboxId
    so that Kafka's default partitioner places them (and the workers read them) by key."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                acks="all", enable_idempotence=True, linger_ms=5, **self._kafka.client_kwargs()
            )
            await producer.start()
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
        await self._send(
            entry.mailbox_id,
            codec.encode(entry),
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


# --- the sub-command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,…]",
        help="Kafka servers (default $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="settings file, as for the worker (default $CUMI_CONFIG)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register mailboxes (or change their entries)")
    add.add_argument("aliases", nargs="+", metavar="MAILBOX_ID")
    _entry_options(add)
    remove = actions.add_parser("remove", help="unregister mailboxes (tombstones)")
    remove.add_argument("aliases", nargs="+", metavar="MAILBOX_ID")
    listing = actions.add_parser("list", help="print the registry")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument(
        "--all", action="store_true", help="include disabled entries (default: enabled only)"
    )
    imports = actions.add_parser("import", help="register every mailbox a file lists")
    imports.add_argument("file", type=Path, metavar="FILE")
    imports.add_argument(
        "--prune", action="store_true", help="also remove registered mailboxes the file omits"
    )
    _entry_options(imports)


def _entry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        help="Connection server whose workers watch them (their CUMI_SERVER_NAME; default "
        "$CUMI_SERVER_NAME, else any server's workers)",
    )
    parser.add_argument(
        "--credentials-ref",
        metavar="NAME",
        help="name of the secret in the workers' credentials provider (default: the mailbox id)",
    )
    parser.add_argument("--disabled", action="store_true", help="register but do not watch (yet)")


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap
    try:
        source = SettingsSource.load(env, args.config)
        kafka = load_kafka(source)
        return asyncio.run(_run(args, kafka, source.text("CUMI_SERVER_NAME"), sys.stdout))
    except ConfigError as e:
        hint = " (or pass --bootstrap)" if "KAFKA_BOOTSTRAP_SERVERS is required" in str(e) else ""
        print(f"ingest mailboxes: {e}{hint}", file=sys.stderr)
        return 2
    except (BrokerError, KafkaError) as e:
        print(f"ingest mailboxes: Kafka error: {e}", file=sys.stderr)
        return 1


async def _run(
    args: argparse.Namespace, kafka: KafkaSettings, default_server: str | None, out: TextIO
) -> int:
    if args.action == "list":
        registry = await read_registry(kafka)
        for alias in sorted(registry):
            entry = registry[alias]
            if entry.enabled or args.all:
                out.write(_render(entry, as_json=args.json) + "\n")
        return 0
    if args.action == "remove":
        await apply_changes(kafka, [], list(dict.fromkeys(args.aliases)))
        print(f"removed {len(set(args.aliases))} mailboxes", file=sys.stderr)
        return 0
    server = args.server if args.server is not None else default_server
    options = {"server": server, "credentials_ref": args.credentials_ref}
    if args.action == "add":
        stamp = SYSTEM_CLOCK.utc_now()
        wanted = {
            a: MailboxRegistryEntry(a, stamp, enabled=not args.disabled, **options)
            for a in args.aliases
        }
        await apply_changes(kafka, wanted.values(), [])
        print(f"registered {len(wanted)} mailboxes", file=sys.stderr)
        return 0
    wanted = parse_mailbox_file(args.file, enabled=not args.disabled, **options)
    await ensure_registry_topic(kafka)
    puts, removes = changes(await read_registry(kafka), wanted, prune=args.prune)
    await apply_changes(kafka, puts, removes)
    print(
        f"{len(wanted)} mailboxes in {args.file}: {len(puts)} written, {len(removes)} removed, "
        f"{len(wanted) - len(puts)} unchanged",
        file=sys.stderr,
    )
    return 0


def _render(entry: MailboxRegistryEntry, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {
                "mailbox_id": entry.mailbox_id,
                "server": entry.server,
                "credentials_ref": entry.credentials_ref,
                "enabled": entry.enabled,
                "updated_at": entry.updated_at.isoformat(timespec="milliseconds"),
            }
        )
    state = "enabled" if entry.enabled else "disabled"
    return (
        f"{entry.mailbox_id} {state} server={entry.server or '*'} "
        f"credentials_ref={entry.credentials_ref or '-'} "
        f"updated_at={entry.updated_at.isoformat(timespec='seconds')}"
    )
