"""`ingest tail TOPIC`: decode and print the records of a pipeline topic, for people and scripts.

    ingest tail events                          # the last 10 records of each partition
    ingest tail events --from-beginning --json  # everything, one JSON object per line
    ingest tail events --mailbox abell -f       # one mailbox, then keep following
    ingest tail dlq --since 2h                  # dead letters of the last two hours

TOPIC is `events`, `dlq`, `state` or `registry` (the configured names, prefix included) or any
topic name. Connection settings are the worker's (`KAFKA_BOOTSTRAP_SERVERS`, TLS/SASL, topic
names, `CUMI_CONFIG`); `--bootstrap` overrides the servers. Without `--follow` the command stops at
the end offsets it saw when it started, so its output is a finite, repeatable listing.

A record that does not decode is printed as such, with the reason: this is a diagnostic tool and
the bad record is usually what one is looking for.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import enum
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ingest.commands._exits import exit_code, explain
from ingest.commands._times import parse_moment, to_millis
from ingest.errors import ConfigError, IngestError
from ingest.eventlog import codec
from ingest.eventlog.clients import close_consumer, pace_metadata
from ingest.eventlog.schema_registry import schema_ids
from ingest.eventlog.topics import key_partition, topic_partitions
from ingest.events import (
    DeadLetter,
    Folder,
    MailboxEvent,
    MailboxRegistryEntry,
    MailboxSnapshot,
    MailboxStateRecord,
    RecordKind,
    SnapshotMessage,
)
from ingest.settings import KafkaSettings, SettingsSource, load_kafka

log = logging.getLogger(__name__)

DEFAULT_LAST = 10
POLL_MS = 200
_TOPIC_ALIASES = ("events", "dlq", "state", "registry")
_UNKNOWN_TOPIC = 3  # Kafka error code UNKNOWN_TOPIC_OR_PARTITION


class StartAt(enum.StrEnum):
    BEGINNING = "beginning"
    TIME = "time"
    LAST = "last"


@dataclass(frozen=True, slots=True)
class TailOptions:
    """What to read and how to print it (the parsed command line, minus the connection)."""

    topic: str
    start: StartAt = StartAt.LAST
    since_ms: int | None = None
    last: int = DEFAULT_LAST
    """With StartAt.LAST: start this many offsets before the end of each partition."""
    mailbox: str | None = None
    follow: bool = False
    limit: int | None = None
    as_json: bool = False
    ids: codec.SchemaIds | None = None
    """Registry mode: resolves the schema ids of Confluent-framed records."""


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "topic",
        metavar="TOPIC",
        help="events | dlq | state | registry (the configured names) or any topic name",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record of the topic"
    )
    start.add_argument(
        "--since",
        metavar="TIME",
        type=parse_since,
        help="start at the first record stamped at or after TIME: ISO 8601 (UTC unless it has a "
        "zone), epoch milliseconds, or an age like 90s, 15m, 2h, 3d",
    )
    start.add_argument(
        "--last",
        metavar="N",
        type=_positive,
        default=DEFAULT_LAST,
        help=f"start N offsets before the end of each partition (default {DEFAULT_LAST})",
    )
    parser.add_argument(
        "--mailbox",
        metavar="ID",
        help="only this MailboxId: reads the one partition its key hashes to, filters by key",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new records until interrupted"
    )
    parser.add_argument("--limit", metavar="N", type=_positive, help="stop after N records")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,…]",
        help="Kafka servers (default $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="settings file, as for the worker (default $CUMI_CONFIG)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        kafka = _kafka_settings(args.bootstrap, args.config)
    except ConfigError as e:
        hint = " (or pass --bootstrap)" if "KAFKA_BOOTSTRAP_SERVERS is required" in str(e) else ""
        print(f"ingest tail: {e}{hint}", file=sys.stderr)
        return 2
    options = TailOptions(
        topic=resolve_topic(args.topic, kafka),
        start=StartAt.BEGINNING
        if args.from_beginning
        else StartAt.TIME
        if args.since is not None
        else StartAt.LAST,
        since_ms=args.since,
        last=args.last,
        mailbox=args.mailbox,
        follow=args.follow,
        limit=args.limit,
        as_json=args.json,
        ids=schema_ids(kafka.schema_registry),
    )
    write = _stdout_writer(flush=options.follow)
    try:
        asyncio.run(_main(options, kafka.client_kwargs(), write))
    except (IngestError, KafkaError) as e:
        print(f"ingest tail: {explain(e, kafka.bootstrap_servers)}", file=sys.stderr)
        return exit_code(e)
    except BrokenPipeError:
        # the reader went away (`| head`): not an error; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _kafka_settings(bootstrap: str | None, config_file: str | None) -> KafkaSettings:
    env = dict(os.environ)
    if bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return load_kafka(SettingsSource.load(env, config_file))


def resolve_topic(name: str, kafka: KafkaSettings) -> str:
    """`events`/`dlq`/`state`/`registry` → the configured topic name; anything else as given."""
    if name in _TOPIC_ALIASES:
        topic: str = getattr(kafka, f"{name}_topic")
        return topic
    return name


def parse_since(text: str, now: Callable[[], dt.datetime] | None = None) -> int:
    """`--since` → epoch milliseconds (argparse type: raises ArgumentTypeError on nonsense)."""
    return to_millis(parse_moment(text, now))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _stdout_writer(*, flush: bool) -> Callable[[str], None]:
    def write(line: str) -> None:
        sys.stdout.write(line + "\n")
        if flush:
            sys.stdout.flush()

    return write


# --- reading ------------------------------------------------------------------------------------


async def _main(
    options: TailOptions, client_kwargs: Mapping[str, Any], write: Callable[[str], None]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await tail(options, client_kwargs, write, stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def tail(
    options: TailOptions,
    client_kwargs: Mapping[str, Any],
    write: Callable[[str], None],
    stop: asyncio.Event | None = None,
) -> int:
    """Print the records `options` select with `write` (one line each); returns how many.

    Ends at the end offsets seen at start, at `options.limit`, or — with `follow` — when `stop`
    is set.
    """
    stop = stop or asyncio.Event()
    partitions = await topic_partitions(options.topic, client_kwargs)
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False,
        group_id=None,
        # the state topic is written in transactions: show what its readers see
        isolation_level="read_committed",
        **client_kwargs,
    )
    pace_metadata(consumer._client)  # no busy loop while the broker is away
    try:
        await consumer.start()
        if options.follow:
            # following is a long watch: a later outage is news only the client's own
            # (rate-limited) lines give; a failed start was one line of ours (ingest.cli)
            logging.getLogger("aiokafka").setLevel(logging.WARNING)
        tps = _assign(consumer, options, partitions)
        end = await consumer.end_offsets(tps)
        for tp, offset in (await _start_offsets(consumer, tps, options, end)).items():
            consumer.seek(tp, offset)
        return await _pump(consumer, end, options, write, stop)
    finally:
        await close_consumer(consumer)


def _assign(
    consumer: AIOKafkaConsumer, options: TailOptions, partitions: Sequence[int]
) -> list[TopicPartition]:
    ids = list(partitions)
    if options.mailbox is not None:
        ids = [key_partition(options.mailbox.encode(), len(ids))]
    tps = [TopicPartition(options.topic, p) for p in ids]
    consumer.assign(tps)
    return tps


async def _start_offsets(
    consumer: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    options: TailOptions,
    end: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    begin: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
    if options.start is StartAt.BEGINNING:
        return dict(begin)
    if options.start is StartAt.LAST:
        return {tp: max(begin[tp], end[tp] - options.last) for tp in tps}
    assert options.since_ms is not None
    found = await consumer.offsets_for_times({tp: options.since_ms for tp in tps})
    # no record that recent in a partition: nothing to print there (until new ones come)
    return {tp: found[tp].offset if found.get(tp) else end[tp] for tp in tps}


async def _pump(
    consumer: AIOKafkaConsumer,
    end: Mapping[TopicPartition, int],
    options: TailOptions,
    write: Callable[[str], None],
    stop: asyncio.Event,
) -> int:
    key = options.mailbox.encode() if options.mailbox is not None else None
    remaining = [tp for tp in end if options.follow or await consumer.position(tp) < end[tp]]
    printed = 0
    while remaining and not stop.is_set():
        batch = await consumer.getmany(*remaining, timeout_ms=POLL_MS)
        for tp in sorted(batch, key=lambda t: t.partition):
            for record in batch[tp]:
                if not options.follow and record.offset >= end[tp]:
                    break
                if key is not None and record.key != key:
                    continue
                write(render(record, as_json=options.as_json, ids=options.ids))
                printed += 1
                if options.limit is not None and printed >= options.limit:
                    return printed
        if not options.follow:
            # control records and compaction leave offset gaps: compare positions, not offsets
            remaining = [tp for tp in remaining if await consumer.position(tp) < end[tp]]
    return printed


# --- printing -----------------------------------------------------------------------------------


def render(record: Any, *, as_json: bool, ids: codec.SchemaIds | None = None) -> str:
    """One consumer record as a line: readable text, or a JSON object (`--json`)."""
    value, error = decode_value(record.value, ids)
    if as_json:
        return json.dumps(record_json(record, value, error), ensure_ascii=False)
    return record_text(record, value, error)


def decode_value(data: bytes | None, ids: codec.SchemaIds | None = None) -> tuple[Any, str | None]:
    """(decoded record or None, error text or None); None and None is a tombstone."""
    if data is None:
        return None, None
    try:
        return codec.decode(data, ids), None
    except Exception as e:  # a diagnostic tool reports anything a bad record triggers
        return None, f"{type(e).__name__}: {e}"


def kind_of(value: Any, error: str | None) -> str:
    if error is not None:
        return "undecodable"
    if value is None:
        return "tombstone"
    kinds: dict[type, RecordKind] = {
        MailboxEvent: RecordKind.EVENT,
        MailboxSnapshot: RecordKind.SNAPSHOT,
        DeadLetter: RecordKind.DEAD_LETTER,
        MailboxStateRecord: RecordKind.STATE,
        MailboxRegistryEntry: RecordKind.REGISTRY,
    }
    kind = kinds.get(type(value))
    return kind.value if kind else _snake(type(value).__name__)


def record_json(record: Any, value: Any, error: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "time": _iso_ms(record.timestamp),
        "key": _text(record.key),
        "headers": {name: _text(raw) for name, raw in record.headers or ()},
        "kind": kind_of(value, error),
        "value": to_json(value),
    }
    if error is not None:
        out["error"] = error
        out["size"] = len(record.value)
    return out


def to_json(value: Any) -> Any:
    """Records → JSON values: datetimes as ISO 8601 UTC, enums as their value, bytes as UTF-8 text
    (or `{"base64": …}` when they are not UTF-8)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, bytes):
        return _bytes_json(value)
    return value


def _bytes_json(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def record_text(record: Any, value: Any, error: str | None) -> str:
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    key = _text(record.key) or "-"
    return f"{_iso_ms(record.timestamp)} {where} {key} {summary(value, error, record.value)}"


def summary(value: Any, error: str | None, data: bytes | None) -> str:
    if error is not None:
        head = (data or b"")[:16].hex()
        return f"UNDECODABLE {len(data or b'')} bytes ({error}) {head}…"
    if value is None:
        return "TOMBSTONE"
    return _SUMMARIES.get(type(value), _generic_summary)(value)


def _event_summary(event: MailboxEvent) -> str:
    ids = [m.message_id for m in event.messages]
    more = f" +{len(ids) - 2}" if len(ids) > 2 else ""
    return f"{event.event_type.value} usn={event.usn} msg={','.join(ids[:2])}{more}"


def _snapshot_summary(snapshot: MailboxSnapshot) -> str:
    return (
        f"SNAPSHOT usn={snapshot.usn} reason={snapshot.reason} "
        f"inbox={_folder(snapshot.inbox)} deleted={_folder(snapshot.deleted)}"
    )


def _dead_letter_summary(letter: DeadLetter) -> str:
    field = f" field={letter.field}" if letter.field else ""
    raw = letter.raw[:120].decode("utf-8", "backslashreplace")
    return f"DEAD_LETTER {letter.reason}{field}: {letter.detail} raw={raw}"


def _generic_summary(value: Any) -> str:
    """Record types this module has no special line for (the registry's, future ones)."""
    fields = to_json(value)
    shown = " ".join(f"{k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
    return f"{type(value).__name__} {shown}".rstrip()


def _folder(messages: Sequence[SnapshotMessage]) -> str:
    unread = sum(not m.read for m in messages)
    return f"{len(messages)}({unread} unread)"


def _state_summary(state: MailboxStateRecord) -> str:
    inbox = [m for m in state.messages if m.folder is Folder.INBOX]
    deleted = sum(m.folder is Folder.DELETED for m in state.messages)
    unread = sum(not m.read for m in inbox)
    return (
        f"STATE usn={state.usn} inbox={len(inbox)}({unread} unread) deleted={deleted} "
        f"events={state.events_applied} duplicates={state.duplicates} stale={state.stale} "
        f"snapshots={state.snapshots_applied}"
    )


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def _iso(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_ms(millis: int) -> str:
    return _iso(dt.datetime.fromtimestamp(millis / 1000, dt.UTC))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_SUMMARIES: dict[type, Callable[[Any], str]] = {
    MailboxEvent: _event_summary,
    MailboxSnapshot: _snapshot_summary,
    DeadLetter: _dead_letter_summary,
    MailboxStateRecord: _state_summary,
}
