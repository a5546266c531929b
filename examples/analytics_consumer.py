#!/usr/bin/env python3
"""A minimal analytics consumer of the cumi-pipeline events topic.

It needs nothing from the pipeline but its schema files: aiokafka reads the topic, fastavro decodes
the records, and this file finds each record's schema by the fingerprint in its header (Avro
single-object encoding, see docs/topics.md) — or, for a pipeline in registry mode (Confluent wire
format: a 0 byte and a 4-byte schema id), by asking the schema registry given with
--schema-registry for that id, once. Both framings may share a topic. From the log it computes

- voicemails received per hour (UTC), each message counted once however often it is mentioned;
- per mailbox: messages in the Inbox, how many of them are unread, messages in Deleted Items.

    python examples/analytics_consumer.py --bootstrap 127.0.0.1:9092 --schemas schemas/
    python examples/analytics_consumer.py --bootstrap … --schemas … --json
    python examples/analytics_consumer.py --bootstrap … --schemas … --follow --every 10
    python examples/analytics_consumer.py --bootstrap … --schemas … \
        --schema-registry http://registry:8080/apis/ccompat/v7

By default it reads the topic from the beginning up to the end offsets it saw at start, prints the
report and exits; with --follow it keeps consuming and prints the report every --every seconds.
It keeps everything in memory and uses no consumer group: a real deployment would store its
aggregates together with the offsets they include (or rebuild them like this at start).

Events are *state assertions* and can repeat or arrive out of USN order, so the unread counts
come from folding them per message in USN order, the way docs/topics.md describes (the same
rules as the pipeline's own projection, so the same answer in any arrival order) — never from
adding +1/-1 per event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import sys
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastavro.schema import to_parsing_canonical_form

MAGIC = b"\xc3\x01"
"""Avro single-object encoding: these two bytes, the 8-byte fingerprint, then the Avro body."""
CONFLUENT_MAGIC = 0
"""The Confluent wire format: this byte, the 4-byte big-endian schema id, then the Avro body."""

EVENT = "cumi.pipeline.MailboxEvent"
SNAPSHOT = "cumi.pipeline.MailboxSnapshot"
INBOX, DELETED, GONE = "INBOX", "DELETED", "GONE"


# --- finding the schema of a record -------------------------------------------------------------


def _crc64_table() -> list[int]:
    empty = 0xC15D213AA4D7A795  # the Avro specification's CRC-64-AVRO constant
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    return table


_CRC64 = _crc64_table()


def fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the schema's Parsing Canonical Form, as the 8 little-endian header bytes."""
    fp = 0xC15D213AA4D7A795
    for byte in to_parsing_canonical_form(schema).encode():
        fp = (fp >> 8) ^ _CRC64[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


class Schemas:
    """Every schema file of a schemas/ directory (current and released history) by fingerprint.

    A record written with any of them is read into the *current* schema of its name (Avro schema
    resolution), so the code below sees one shape per record type whichever version wrote it.
    """

    def __init__(self, directory: Path, registry_url: str | None = None) -> None:
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self.by_id: dict[int, bytes] = {}
        """Registry schema id → fingerprint, learnt once per id."""
        current = {}
        for path in sorted(directory.glob("*.avsc")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            current[_full_name(schema)] = fastavro.parse_schema(schema, named_schemas={})
        if not current:
            raise SystemExit(f"no .avsc files in {directory}")
        self.by_fingerprint: dict[bytes, tuple[str, Any, Any]] = {}
        self.current = current
        for path in [*sorted(directory.glob("*.avsc")), *sorted(directory.glob("history/*.avsc"))]:
            self.add(json.loads(path.read_text(encoding="utf-8")))

    def add(self, schema: dict[str, Any]) -> bytes:
        """Read records written with `schema` into today's schema of its name; its fingerprint."""
        fp = fingerprint(schema)
        name = _full_name(schema)
        if name in self.current:
            writer = fastavro.parse_schema(schema, named_schemas={})
            self.by_fingerprint.setdefault(fp, (name, writer, self.current[name]))
        return fp

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(record name, record) — raises ValueError for anything else."""
        if data[:2] == MAGIC and len(data) >= 10:
            fp, body = data[2:10], data[10:]
        elif data[:1] == bytes([CONFLUENT_MAGIC]) and len(data) >= 5:
            fp, body = self._by_id(int.from_bytes(data[1:5], "big")), data[5:]
        else:
            raise ValueError("neither Avro single-object encoding nor the Confluent wire format")
        found = self.by_fingerprint.get(fp)
        if found is None:
            raise ValueError(f"unknown schema fingerprint {fp.hex()}")
        name, writer, reader = found
        record = fastavro.schemaless_reader(io.BytesIO(body), writer, reader)
        if not isinstance(record, dict):
            raise ValueError(f"{name} is not a record schema")
        return name, record

    def _by_id(self, schema_id: int) -> bytes:
        """The fingerprint of registry schema `schema_id`: fetched once (GET /schemas/ids/N)."""
        fp = self.by_id.get(schema_id)
        if fp is None:
            if self.registry_url is None:
                raise ValueError(f"schema id {schema_id}: give --schema-registry to read this")
            url = f"{self.registry_url}/schemas/ids/{schema_id}"
            with urllib.request.urlopen(url, timeout=10) as response:
                schema = json.loads(json.loads(response.read())["schema"])
            fp = self.by_id[schema_id] = self.add(schema)
        return fp


def _full_name(schema: dict[str, Any]) -> str:
    name: str = schema["name"]
    return name if "." in name else f"{schema.get('namespace', '')}.{name}".lstrip(".")


# --- the analytics ------------------------------------------------------------------------------


# EventType → the read flag it asserts about the folder it names (None: carries the flag along)
TO_INBOX: dict[str, bool | None] = {"NEW_MESSAGE": False, "SAVED_MESSAGE": True}
TO_INBOX |= {"UNREAD_MESSAGE": False, "DELETED_MESSAGE_UNDELETE": None}
TO_DELETED: dict[str, bool | None] = {"DELETED_MESSAGE_CREATE": None}
TO_DELETED |= {"DELETED_MESSAGE_READ": True, "DELETED_MESSAGE_UNREAD": False}
STATING = {t for t, flag in (*TO_INBOX.items(), *TO_DELETED.items()) if flag is not None}
"""A change with one of these names a folder and a flag: nothing before it matters."""
KNOWN = {*TO_INBOX, *TO_DELETED, "DELETED_MESSAGE", "DELETED_MESSAGE_DELETE"}


def resolve(folder: str, read: bool, types: set[str]) -> tuple[str, bool]:
    """A message after one change (the events sharing a USN), from its state before it."""
    inbox = [TO_INBOX[t] for t in types if t in TO_INBOX]
    deleted = [TO_DELETED[t] for t in types if t in TO_DELETED]
    hard_delete = "DELETED_MESSAGE_DELETE" in types and not inbox
    in_inbox = bool(inbox) or (folder == INBOX and not deleted)
    in_inbox = in_inbox and "DELETED_MESSAGE" not in types and not hard_delete
    in_deleted = bool(deleted) or (folder == DELETED and not inbox)
    in_deleted = in_deleted and not types & {"DELETED_MESSAGE_DELETE", "DELETED_MESSAGE_UNDELETE"}
    folder, said = (DELETED, deleted) if in_deleted else (INBOX, inbox) if in_inbox else (GONE, [])
    flags = [f for f in said if f is not None] or [f for f in inbox + deleted if f is not None]
    return folder, all(flags) if flags else read


@dataclass
class Message:
    changes: dict[int, set[str]] = field(default_factory=dict)
    """USN → the EventTypes at it: the changes since the latest stating one, in any order."""
    floor: tuple[str, bool] = (GONE, False)
    """The state the changes apply to: a snapshot's listing, or never seen (not listed)."""

    def add(self, usn: int, event_type: str) -> None:
        stating = [u for u, types in self.changes.items() if types & STATING]
        if stating and usn < max(stating):
            return  # older than a change that says everything: it cannot matter
        self.changes.setdefault(usn, set()).add(event_type)
        if event_type in STATING:
            self.changes = {u: types for u, types in self.changes.items() if u >= usn}

    def state(self) -> tuple[str, bool]:
        folder, read = self.floor
        for usn in sorted(self.changes):
            folder, read = resolve(folder, read, self.changes[usn])
        return folder, read


@dataclass
class Mailbox:
    messages: dict[str, Message] = field(default_factory=dict)
    snapshot_usn: int = -1
    """USN of the newest snapshot applied: events at or below it are already reflected in it."""
    snapshot_taken: dt.datetime | None = None


class Analytics:
    """Received-per-hour and per-mailbox folder counts, folded from events and snapshots."""

    def __init__(self) -> None:
        self.mailboxes: dict[str, Mailbox] = {}
        self.received: dict[tuple[str, str], dt.datetime | None] = {}
        self.counts: Counter[str] = Counter()

    def apply(self, name: str, record: dict[str, Any]) -> None:
        if name == EVENT:
            self.apply_event(record)
        elif name == SNAPSHOT:
            self.apply_snapshot(record)
        else:
            self.counts["other records"] += 1

    def apply_event(self, event: dict[str, Any]) -> None:
        self.counts["events"] += 1
        mailbox = self.mailboxes.setdefault(event["mailbox_id"], Mailbox())
        for info in event["messages"]:
            self._received(event["mailbox_id"], info["message_id"], info["receive_time"])
            if event["event_type"] in KNOWN and event["usn"] > mailbox.snapshot_usn:
                message = mailbox.messages.setdefault(info["message_id"], Message())
                message.add(event["usn"], event["event_type"])

    def apply_snapshot(self, snapshot: dict[str, Any]) -> None:
        """The server's folders at USN `usn`: changes up to it are in the listing, later ones
        apply to the listed state (not listed: absent). The newest snapshot wins (the one taken
        later, at the same USN)."""
        self.counts["snapshots"] += 1
        mailbox = self.mailboxes.setdefault(snapshot["mailbox_id"], Mailbox())
        usn, taken = snapshot["usn"], snapshot["taken_at"]
        if usn < mailbox.snapshot_usn or (
            usn == mailbox.snapshot_usn and taken <= mailbox.snapshot_taken
        ):
            return
        listed = {m["message_id"].removeprefix("0:"): (INBOX, m) for m in snapshot["inbox"]}
        listed |= {m["message_id"].removeprefix("0:"): (DELETED, m) for m in snapshot["deleted"]}
        for message_id, message in list(mailbox.messages.items()):
            message.changes = {u: types for u, types in message.changes.items() if u > usn}
            message.floor = (GONE, False)  # unless listed (below)
            if message_id not in listed and not message.changes:
                del mailbox.messages[message_id]
        for message_id, (folder, entry) in listed.items():
            self._received(snapshot["mailbox_id"], message_id, entry["arrival_time"])
            mailbox.messages.setdefault(message_id, Message()).floor = (folder, entry["read"])
        mailbox.snapshot_usn, mailbox.snapshot_taken = usn, taken

    def _received(self, mailbox_id: str, message_id: str, when: dt.datetime | None) -> None:
        if self.received.get((mailbox_id, message_id)) is None:
            self.received[mailbox_id, message_id] = when

    def report(self) -> dict[str, Any]:
        per_hour = Counter(
            when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:00Z") if when else "unknown"
            for when in self.received.values()
        )
        mailboxes = {}
        for mailbox_id, mailbox in sorted(self.mailboxes.items()):
            states = [m.state() for m in mailbox.messages.values()]
            mailboxes[mailbox_id] = {
                "inbox": sum(folder == INBOX for folder, _ in states),
                "unread": sum(folder == INBOX and not read for folder, read in states),
                "deleted": sum(folder == DELETED for folder, _ in states),
            }
        return {
            "counts": dict(sorted(self.counts.items())),
            "received_per_hour": dict(sorted(per_hour.items())),
            "mailboxes": mailboxes,
        }


# --- consuming ----------------------------------------------------------------------------------


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise SystemExit(f"topic {topic} not found (error code {described['error_code']})")
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def consume(args: argparse.Namespace, schemas: Schemas, analytics: Analytics) -> None:
    tps = await partitions_of(args.bootstrap, args.topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = [tp for tp in tps if args.follow or end[tp] > 0]
        last_report = asyncio.get_running_loop().time()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for records in batch.values():
                for record in records:
                    analytics.counts["records"] += 1
                    try:
                        name, value = schemas.decode(record.value)
                    except Exception as e:  # skip what this consumer cannot read, go on
                        analytics.counts["undecodable"] += 1
                        print(f"skipping offset {record.offset}: {e}", file=sys.stderr)
                        continue
                    analytics.apply(name, value)
            if args.follow:
                now = asyncio.get_running_loop().time()
                if now - last_report >= args.every:
                    show(analytics.report(), args.json)
                    last_report = now
            else:
                remaining = [tp for tp in remaining if await consumer.position(tp) < end[tp]]
    finally:
        await consumer.stop()


def show(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report), flush=True)
        return
    print("messages received per hour (UTC):")
    for hour, count in report["received_per_hour"].items():
        print(f"  {hour}  {count:6d}")
    print(f"{'mailbox':24} {'inbox':>6} {'unread':>6} {'deleted':>7}")
    for mailbox_id, c in report["mailboxes"].items():
        print(f"{mailbox_id:24} {c['inbox']:6d} {c['unread']:6d} {c['deleted']:7d}")
    print(" ".join(f"{k}={v}" for k, v in report["counts"].items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers host:port")
    parser.add_argument("--topic", default="mailbox-events", help="events topic")
    parser.add_argument("--schemas", type=Path, required=True, help="the pipeline's schemas/ dir")
    parser.add_argument(
        "--schema-registry",
        metavar="URL",
        help="registry mode: the Confluent-compatible schema registry's base URL",
    )
    parser.add_argument("--follow", action="store_true", help="keep consuming; report every N s")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between reports")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    schemas = Schemas(args.schemas, args.schema_registry)
    analytics = Analytics()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: report what was read so far
        asyncio.run(consume(args, schemas, analytics))
    show(analytics.report(), args.json)


if __name__ == "__main__":
    main()
