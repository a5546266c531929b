"""Avro encoding of every record the pipeline writes to Kafka.

The framing is `ingest.eventlog.wire`; this module keeps the table of schemas by fingerprint:
`decode` looks a record's writer schema up among the schemas this package ships
(`schemas/*.avsc`, plus older released versions in `schemas/history/` that are read through Avro
schema resolution into today's records). A Confluent-framed record names its schema by registry
id instead: `decode` asks the `SchemaIds` it is given (ingest.eventlog.schema_registry) for the
fingerprint of that id, and reads on as above. `encode` writes single-object encoding; an
`Encoder` made with the registry's ids writes the Confluent wire format.

Schemas are parsed once, on first use. Installed from a wheel they are package data
(`ingest/schemas`, see pyproject's force-include); in a checkout they are the repo's `schemas/`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib.resources
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

import fastavro

from ingest import speedups
from ingest.errors import DecodeError
from ingest.eventlog import wire
from ingest.events import (
    CheckpointChunk,
    CheckpointChunkRef,
    CheckpointEntry,
    CheckpointManifest,
    DeadLetter,
    EventType,
    Folder,
    KeptChanges,
    MailboxEvent,
    MailboxRegistryEntry,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageChange,
    MessageInfo,
    MessageStateRecord,
    RecordKind,
    RepairReason,
    SnapshotMessage,
    UnparsedField,
)

Record = (
    MailboxEvent
    | MailboxSnapshot
    | DeadLetter
    | MailboxStateRecord
    | MailboxRegistryEntry
    | CheckpointManifest
    | CheckpointChunk
)
"""Everything the codec encodes."""

MAGIC = wire.MAGIC
HEADER_SIZE = wire.HEADER_SIZE

KIND_HEADER = "cumi.kind"
EVENT_TYPE_HEADER = "cumi.event_type"
FINGERPRINT_HEADER = "cumi.schema_fingerprint"

# record class → (schema file, full Avro name, cumi.kind)
_FILES: dict[type, tuple[str, str, RecordKind]] = {
    MailboxEvent: ("mailbox_event.avsc", "cumi.pipeline.MailboxEvent", RecordKind.EVENT),
    MailboxSnapshot: (
        "mailbox_snapshot.avsc",
        "cumi.pipeline.MailboxSnapshot",
        RecordKind.SNAPSHOT,
    ),
    DeadLetter: ("dead_letter.avsc", "cumi.pipeline.DeadLetter", RecordKind.DEAD_LETTER),
    MailboxStateRecord: ("mailbox_state.avsc", "cumi.pipeline.MailboxState", RecordKind.STATE),
    MailboxRegistryEntry: (
        "mailbox_registry.avsc",
        "cumi.pipeline.MailboxRegistryEntry",
        RecordKind.REGISTRY,
    ),
    CheckpointManifest: (
        "checkpoint_manifest.avsc",
        "cumi.pipeline.CheckpointManifest",
        RecordKind.CHECKPOINT,
    ),
    CheckpointChunk: (
        "checkpoint_chunk.avsc",
        "cumi.pipeline.CheckpointChunk",
        RecordKind.CHECKPOINT_CHUNK,
    ),
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def schema_dir() -> Traversable:
    """Where the .avsc files are: package data when installed, else the checkout's schemas/."""
    packaged = importlib.resources.files("ingest") / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas"


def load_schema(file_name: str) -> dict[str, Any]:
    """One schema file as JSON (not yet parsed by fastavro)."""
    schema: dict[str, Any] = json.loads((schema_dir() / file_name).read_text(encoding="utf-8"))
    return schema


class SchemaIds(Protocol):
    """What a reader of Confluent-framed records needs of the schema registry."""

    def fingerprint(self, schema_id: int) -> bytes:
        """The single-object fingerprint of the schema registered as `schema_id` (raises
        `DecodeError` for an id the registry does not know)."""
        ...


def framing(data: bytes, ids: SchemaIds | None = None) -> tuple[bytes, int]:
    """(writer schema fingerprint, where the Avro body starts) of a framed value, either framing.

    Raises `DecodeError` for a value in neither, or Confluent-framed without `ids`."""
    fp = wire.fingerprint_of(data)
    if fp is not None:
        return fp, HEADER_SIZE
    schema_id = wire.schema_id_of(data)
    if schema_id is None:
        raise DecodeError(
            "neither Avro single-object encoding (C3 01 + fingerprint) nor the Confluent wire "
            "format (00 + schema id)"
        )
    if ids is None:
        raise DecodeError(
            f"Confluent wire format (schema id {schema_id}): reading it needs the schema "
            "registry it was written with (set KAFKA_SCHEMA_REGISTRY_URL)"
        )
    return ids.fingerprint(schema_id), wire.CONFLUENT_HEADER_SIZE


def encode(record: Record) -> bytes:
    """Single-object encoding of `record` with today's schema of its type.

    Datetimes must be aware; naive ones are taken as UTC (fastavro alone would use local time).
    """
    writer = _registry().writers[type(record)]
    if writer.fast is not None:
        return writer.fast(record)
    out = io.BytesIO()
    out.write(writer.header)
    fastavro.schemaless_writer(out, writer.parsed, writer.to_avro(record))
    return out.getvalue()


def decode(data: bytes, ids: SchemaIds | None = None) -> Record:
    """The record in `data`, whichever known schema (today's or an older release) wrote it, in
    either framing; `ids` resolves the schema ids of Confluent-framed records."""
    fp, start = framing(data, ids)
    reader = _registry().readers.get(fp)
    if reader is None:
        raise DecodeError(f"unknown schema fingerprint {fp.hex()}")
    body = io.BytesIO(data)
    body.seek(start)
    try:
        datum = fastavro.schemaless_reader(body, reader.writer_schema, reader.reader_schema)
        if body.tell() != len(data):
            raise DecodeError(f"{len(data) - body.tell()} bytes after the {reader.name} record")
        return reader.from_avro(datum)  # type: ignore[arg-type]  # a record schema reads a dict
    except DecodeError:
        raise
    except Exception as e:  # fastavro reports truncated or corrupt bodies many ways
        raise DecodeError(f"corrupt {reader.name} body: {type(e).__name__}: {e}") from e


def fingerprint(record_or_type: Record | type) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint (as on the wire) of a record type's current schema."""
    cls = record_or_type if isinstance(record_or_type, type) else type(record_or_type)
    return _registry().writers[cls].fingerprint


def schema_text(cls: type) -> tuple[str, str]:
    """(Avro full name, the schema as compact JSON) of a record type's current schema: what is
    registered. Always the same bytes for the same file, since registries may compare text."""
    file_name, full_name, _ = _FILES[cls]
    return full_name, json.dumps(load_schema(file_name), separators=(",", ":"), ensure_ascii=False)


def record_types() -> tuple[type, ...]:
    """Every record type the codec encodes."""
    return tuple(_FILES)


class Encoder:
    """Records → framed values. Without schema ids: single-object encoding (what `encode` does);
    with the registry's schema id of each record type: the Confluent wire format for exactly
    those types (encoding another type raises `KeyError`). Built once at start: the framing
    costs nothing per record (the fast event writer writes a 5-byte header instead of 10)."""

    __slots__ = ("_writers", "schema_ids")

    def __init__(self, schema_ids: Mapping[type, int] | None = None) -> None:
        writers = _registry().writers
        self.schema_ids = dict(schema_ids or {})
        if not self.schema_ids:
            self._writers = writers
            return
        self._writers = {}
        for cls, schema_id in self.schema_ids.items():
            if not 0 <= schema_id <= wire.MAX_SCHEMA_ID:
                raise ValueError(f"schema id {schema_id} of {cls.__name__} out of range")
            header = wire.confluent_header(schema_id)
            writer = writers[cls]
            fast = _fast_event_writer(header) if writer.fast is not None else None
            self._writers[cls] = dataclasses.replace(writer, header=header, fast=fast)

    @property
    def confluent(self) -> bool:
        return bool(self.schema_ids)

    def encode(self, record: Record) -> bytes:
        writer = self._writers[type(record)]
        if writer.fast is not None:
            return writer.fast(record)
        out = io.BytesIO()
        out.write(writer.header)
        fastavro.schemaless_writer(out, writer.parsed, writer.to_avro(record))
        return out.getvalue()


def known_fingerprints() -> dict[bytes, str]:
    """Every fingerprint `decode` accepts → the Avro full name it decodes to."""
    return {fp: reader.name for fp, reader in _registry().readers.items()}


def kafka_headers(record: Record) -> list[tuple[str, bytes]]:
    """`cumi.kind`, `cumi.event_type` (events only) and `cumi.schema_fingerprint` (hex)."""
    key = (type(record), record.event_type if isinstance(record, MailboxEvent) else None)
    headers = _HEADERS.get(key)
    if headers is None:  # built once per record type and EventType, not per event
        headers = _HEADERS[key] = _build_headers(*key)
    return list(headers)


_HEADERS: dict[tuple[type, EventType | None], tuple[tuple[str, bytes], ...]] = {}


def _build_headers(kind: type, event_type: EventType | None) -> tuple[tuple[str, bytes], ...]:
    writer = _registry().writers[kind]
    headers = [(KIND_HEADER, writer.kind.encode())]
    if event_type is not None:
        headers.append((EVENT_TYPE_HEADER, event_type.value.encode()))
    headers.append((FINGERPRINT_HEADER, writer.fingerprint.hex().encode()))
    return tuple(headers)


def timestamp_ms(record: Record) -> int:
    """The Kafka record timestamp: EventTime for events (consumers seek the log by it), taken_at
    for snapshots, received_at for dead letters, updated_at for states and registry entries.
    Never negative."""
    if isinstance(record, MailboxEvent):
        moment = record.event_time
    elif isinstance(record, MailboxSnapshot):
        moment = record.taken_at
    elif isinstance(record, DeadLetter):
        moment = record.received_at
    elif isinstance(record, MailboxRegistryEntry):
        moment = record.updated_at
    elif isinstance(record, CheckpointManifest):
        moment = record.written_at
    elif isinstance(record, CheckpointChunk):
        return 0  # its manifest's written_at: the writer sets it (ingest.state.checkpoints)
    else:
        return epoch_ms(record.updated_at)
    return epoch_ms(moment)


def epoch_ms(moment: dt.datetime | None) -> int:
    """A Kafka record timestamp: milliseconds since the epoch (None: 0), never negative."""
    if moment is None:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0, (moment - _EPOCH) // _MS)


# --- schema registry --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Writer:
    parsed: dict[str, Any]
    fingerprint: bytes
    header: bytes
    kind: RecordKind
    to_avro: Callable[[Any], dict[str, Any]]
    fast: Callable[[Any], bytes] | None = None


@dataclass(frozen=True, slots=True)
class _Reader:
    name: str
    writer_schema: dict[str, Any]
    reader_schema: dict[str, Any]
    from_avro: Callable[[dict[str, Any]], Record]


@dataclass(frozen=True, slots=True)
class _Registry:
    writers: dict[type, _Writer]
    readers: dict[bytes, _Reader]


schema_fingerprint = wire.schema_fingerprint


def _parse(schema: dict[str, Any]) -> dict[str, Any]:
    """fastavro's parsed form of one self-contained record schema (its own named types)."""
    parsed = fastavro.parse_schema(schema, named_schemas={})
    if not isinstance(parsed, dict):
        raise DecodeError("an .avsc file must hold a record schema")
    return parsed


@functools.cache
def _registry() -> _Registry:
    writers: dict[type, _Writer] = {}
    readers: dict[bytes, _Reader] = {}
    current: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Record]]] = {}
    for cls, (file_name, full_name, kind) in _FILES.items():
        schema = load_schema(file_name)
        parsed = _parse(schema)
        if parsed["name"] != full_name:
            raise DecodeError(f"{file_name} defines {parsed['name']}, expected {full_name}")
        fp = schema_fingerprint(schema)
        fast = (
            _fast_event_writer(wire.header(fp))
            if fp == wire.FAST_EVENT_SCHEMA and speedups.ENABLED
            else None
        )
        writers[cls] = _Writer(parsed, fp, wire.header(fp), kind, _TO_AVRO[cls], fast)
        readers[fp] = _Reader(full_name, parsed, parsed, _FROM_AVRO[cls])
        current[full_name] = (parsed, _FROM_AVRO[cls])
    history = schema_dir() / "history"
    if history.is_dir():
        for entry in sorted(history.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".avsc"):
                old = json.loads(entry.read_text(encoding="utf-8"))
                _add_reader(readers, current, old)
    return _Registry(writers, readers)


def _add_reader(
    readers: dict[bytes, _Reader],
    current: Mapping[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Record]]],
    old_schema: dict[str, Any],
) -> bytes:
    parsed = _parse(old_schema)
    name = parsed["name"]
    if name not in current:
        raise DecodeError(f"old schema {name} has no current version to resolve into")
    reader_schema, from_avro = current[name]
    fp = schema_fingerprint(old_schema)
    readers.setdefault(fp, _Reader(name, parsed, reader_schema, from_avro))
    return fp


def register_old_schema(schema: Mapping[str, Any]) -> bytes:
    """Accept records written with an older released version of one of our schemas (normally
    loaded from schemas/history/); returns its fingerprint."""
    registry = _registry()
    current = {
        reader.name: (reader.reader_schema, reader.from_avro)
        for reader in registry.readers.values()
        if reader.writer_schema is reader.reader_schema
    }
    return _add_reader(registry.readers, current, dict(schema))


# --- record ⇄ Avro datum ----------------------------------------------------------------------
# The Avro field names are the dataclass field names (events.py mirrors schemas/ field for field).


def _flat(cls: type) -> Callable[[Any], dict[str, Any]]:
    """Shallow dataclass → dict (dataclasses.asdict deep-copies and costs several times more)."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    values = attrgetter(*names)
    return lambda record: dict(zip(names, values(record), strict=True))


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """Naive datetimes mean UTC here; fastavro would take them as the machine's local time."""
    return moment.replace(tzinfo=dt.UTC) if moment and moment.tzinfo is None else moment


_message_dict = _flat(MessageInfo)
_snapshot_message_dict = _flat(SnapshotMessage)
_dead_letter_dict = _flat(DeadLetter)
_message_state_dict = _flat(MessageStateRecord)


def _event_to_avro(event: MailboxEvent) -> dict[str, Any]:
    """Only used if mailbox_event.avsc changed without the fast writer being updated."""
    messages = []
    for message in event.messages:
        entry = _message_dict(message)
        entry["receive_time"] = _utc(message.receive_time)
        messages.append(entry)
    return {
        "mailbox_id": event.mailbox_id,
        "usn": event.usn,
        "event_type": event.event_type.value,
        "event_time": _utc(event.event_time),
        "event_time_raw": event.event_time_raw,
        "subscription_id": event.subscription_id,
        "display_name": event.display_name,
        "messages": messages,
        "ingested_at": _utc(event.ingested_at),
        "source": event.source,
        "unparsed": [{"field": f.field, "raw": f.raw} for f in event.unparsed],
    }


def _event_from_avro(datum: dict[str, Any]) -> MailboxEvent:
    datum["event_type"] = EventType(datum["event_type"])
    datum["messages"] = tuple(MessageInfo(**m) for m in datum["messages"])
    unparsed = datum["unparsed"]
    datum["unparsed"] = tuple(UnparsedField(**f) for f in unparsed) if unparsed else ()
    return MailboxEvent(**datum)


def _snapshot_to_avro(snapshot: MailboxSnapshot) -> dict[str, Any]:
    def listing(messages: tuple[SnapshotMessage, ...]) -> list[dict[str, Any]]:
        entries = []
        for message in messages:
            entry = _snapshot_message_dict(message)
            entry["arrival_time"] = _utc(message.arrival_time)
            entries.append(entry)
        return entries

    return {
        "mailbox_id": snapshot.mailbox_id,
        "usn": snapshot.usn,
        "taken_at": _utc(snapshot.taken_at),
        "reason": snapshot.reason,
        "inbox": listing(snapshot.inbox),
        "deleted": listing(snapshot.deleted),
        "source": snapshot.source,
    }


def _snapshot_from_avro(datum: dict[str, Any]) -> MailboxSnapshot:
    datum["inbox"] = tuple(SnapshotMessage(**m) for m in datum["inbox"])
    datum["deleted"] = tuple(SnapshotMessage(**m) for m in datum["deleted"])
    datum["reason"] = RepairReason(datum["reason"])
    return MailboxSnapshot(**datum)


def _dead_letter_to_avro(letter: DeadLetter) -> dict[str, Any]:
    datum = _dead_letter_dict(letter)
    datum["received_at"] = _utc(letter.received_at)
    return datum


def _dead_letter_from_avro(datum: dict[str, Any]) -> DeadLetter:
    return DeadLetter(**datum)


_KEPT_CHANGES = "cumi.pipeline.KeptChanges"


def _state_to_avro(state: MailboxStateRecord) -> dict[str, Any]:
    messages = []
    for message in state.messages:
        entry = _message_state_dict(message)
        entry["applied"] = list(message.applied)
        entry["receive_time"] = _utc(message.receive_time)
        kept = message.kept
        if kept is not None:  # most messages keep nothing: None is written as null
            # the union branch named, not guessed: fastavro would validate the whole datum
            # against the record to pick it, which costs more than writing it
            entry["kept"] = (
                _KEPT_CHANGES,
                {
                    "earlier": [{"usn": c.usn, "applied": c.applied} for c in kept.earlier],
                    "floor_folder": kept.floor_folder,
                    "floor_read": kept.floor_read,
                    "floor_usn": kept.floor_usn,
                },
            )
        messages.append(entry)
    return {
        "mailbox_id": state.mailbox_id,
        "usn": state.usn,
        "snapshot_usn": state.snapshot_usn,
        "updated_at": _utc(state.updated_at),
        "messages": messages,
        "events_applied": state.events_applied,
        "duplicates": state.duplicates,
        "stale": state.stale,
        "snapshots_applied": state.snapshots_applied,
        "snapshot_taken_at": _utc(state.snapshot_taken_at),
    }


_FOLDERS = {folder.value: folder for folder in Folder}
_EVENT_TYPES = {event_type.value: event_type for event_type in EventType}
"""Symbol → member by a dict lookup: calling the enum costs several times more, per field of
every message of every restored state."""


_new_change = speedups.fast_constructor(MessageChange)
_new_kept = speedups.fast_constructor(KeptChanges)


def _event_types(symbols: list[str]) -> tuple[EventType, ...]:
    return tuple(_EVENT_TYPES[symbol] for symbol in symbols)


def _state_from_avro(datum: dict[str, Any]) -> MailboxStateRecord:
    messages = []
    for entry in datum["messages"]:
        entry["folder"] = _FOLDERS[entry["folder"]]
        entry["base_folder"] = _FOLDERS[entry["base_folder"]]
        entry["applied"] = _event_types(entry["applied"])
        kept = entry["kept"]
        if kept is not None:
            entry["kept"] = _new_kept(
                tuple(_new_change(c["usn"], _event_types(c["applied"])) for c in kept["earlier"]),
                _FOLDERS[kept["floor_folder"]],
                kept["floor_read"],
                kept["floor_usn"],
            )
        messages.append(MessageStateRecord(**entry))
    datum["messages"] = tuple(messages)
    return MailboxStateRecord(**datum)


_registry_entry_dict = _flat(MailboxRegistryEntry)


def _registry_entry_to_avro(entry: MailboxRegistryEntry) -> dict[str, Any]:
    datum = _registry_entry_dict(entry)
    datum["updated_at"] = _utc(entry.updated_at)
    return datum


def _registry_entry_from_avro(datum: dict[str, Any]) -> MailboxRegistryEntry:
    return MailboxRegistryEntry(**datum)


# --- the hot path: MailboxEvent without fastavro ------------------------------------------------
# fastavro's generic writer costs ~40 µs per event on the reference machine, most of the ingest
# budget; this straight-line writer costs ~8 µs. It is used only while mailbox_event.avsc has the
# fingerprint it was written for (wire.FAST_EVENT_SCHEMA); a test compares its bytes with
# fastavro's.

_ONE_BYTE = [bytes([i]) for i in range(128)]
_NULL = b"\x00"  # union branch 0 ("null"); also the end of an array
_SOME = b"\x02"  # union branch 1


def _long(n: int) -> bytes:
    """Avro long: zig-zag, then base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    if n < 128:
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 127:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(text: str) -> bytes:
    """Avro string: its UTF-8 length as a long, then the bytes (also the state writer's)."""
    data = text.encode()
    size = len(data)
    return (_ONE_BYTE[size << 1] if size < 64 else _long(size)) + data


def avro_optional_string(text: str | None) -> bytes:
    return _NULL if text is None else _SOME + avro_string(text)


_REPEATED: dict[str | None, bytes] = {}
"""Encoded values of the fields with few distinct values (MsgType, Priority, the source, and the
EventTime text, shared by the events of one second): a dictionary lookup costs a fifth of
encoding. Not for per-message values (CallerAni, Sender, ReceiveTime), which would mostly miss.
Emptied when full, so it never holds more than `_REPEATED_MAX` entries."""
_REPEATED_MAX = 4096


def remember_string(cache: dict[str | None, bytes], most: int, text: str | None) -> bytes:
    """`avro_optional_string(text)`, remembered in `cache` (emptied when it holds `most`): for
    the writers' few-valued fields, looked up with `cache.get(text) or remember_string(…)`."""
    encoded = avro_optional_string(text)
    if len(cache) >= most:
        cache.clear()
        cache[None] = _NULL
    cache[text] = encoded
    return encoded


def _repeated(text: str | None) -> bytes:
    return remember_string(_REPEATED, _REPEATED_MAX, text)


_REPEATED[None] = _NULL


@functools.lru_cache(maxsize=4096)
def _timestamp(moment: dt.datetime) -> bytes:
    """Cached: a burst of events shares EventTime, ingested_at and the messages' ReceiveTimes,
    and a 6-byte varint costs several times a cache hit."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return _long((moment - _EPOCH) // _MS)


def _fast_event_writer(header: bytes) -> Callable[[MailboxEvent], bytes]:
    symbols = load_schema(_FILES[MailboxEvent][0])["fields"][2]["type"]["symbols"]
    event_types = {EventType(symbol): _long(i) for i, symbol in enumerate(symbols)}
    one_byte, repeated = _ONE_BYTE, _REPEATED

    def write(event: MailboxEvent) -> bytes:
        # the strings of the event inline (a call per field was a third of the writer's time);
        # the fields with few distinct values come encoded from `_REPEATED`
        mailbox_id = event.mailbox_id.encode()
        subscription_id = event.subscription_id
        display_name = event.display_name
        parts = [
            header,
            one_byte[len(mailbox_id) << 1] if len(mailbox_id) < 64 else _long(len(mailbox_id)),
            mailbox_id,
            _long(event.usn),
            event_types[event.event_type],
            _timestamp(event.event_time),
            repeated.get(event.event_time_raw) or _repeated(event.event_time_raw),
            _NULL if subscription_id is None else _SOME + avro_string(subscription_id),
            _NULL if display_name is None else _SOME + avro_string(display_name),
            _long(len(event.messages)),
        ]
        for m in event.messages:
            message_id = m.message_id.encode()
            received = m.receive_time
            parts += (
                one_byte[len(message_id) << 1] if len(message_id) < 64 else _long(len(message_id)),
                message_id,
                avro_optional_string(m.caller_ani),
                avro_optional_string(m.sender),
                repeated.get(m.msg_type) or _repeated(m.msg_type),
                repeated.get(m.priority) or _repeated(m.priority),
                _NULL if received is None else _SOME + _timestamp(received),
                avro_optional_string(m.receive_time_raw),
            )
        if event.messages:
            parts.append(_NULL)
        parts += (
            _timestamp(event.ingested_at),
            repeated.get(event.source) or _repeated(event.source),
        )
        if event.unparsed:  # rare: a field the worker could not read
            parts.append(_long(len(event.unparsed)))
            parts += (avro_string(f.field) + avro_optional_string(f.raw) for f in event.unparsed)
        parts.append(_NULL)
        return b"".join(parts)

    return write


_chunk_ref_dict = _flat(CheckpointChunkRef)
_entry_dict = _flat(CheckpointEntry)


def _manifest_to_avro(manifest: CheckpointManifest) -> dict[str, Any]:
    datum = _flat(CheckpointManifest)(manifest)
    datum["chunks"] = [_chunk_ref_dict(c) for c in manifest.chunks]
    for name in ("first_time", "last_time", "written_at"):
        datum[name] = _utc(datum[name])
    return datum


def _manifest_from_avro(datum: dict[str, Any]) -> CheckpointManifest:
    datum["chunks"] = tuple(CheckpointChunkRef(**c) for c in datum["chunks"])
    return CheckpointManifest(**datum)


def _chunk_to_avro(chunk: CheckpointChunk) -> dict[str, Any]:
    datum = _flat(CheckpointChunk)(chunk)
    datum["entries"] = [_entry_dict(e) for e in chunk.entries]
    return datum


def _chunk_from_avro(datum: dict[str, Any]) -> CheckpointChunk:
    datum["entries"] = tuple(CheckpointEntry(**e) for e in datum["entries"])
    return CheckpointChunk(**datum)


_TO_AVRO: dict[type, Callable[[Any], dict[str, Any]]] = {
    MailboxEvent: _event_to_avro,
    MailboxSnapshot: _snapshot_to_avro,
    DeadLetter: _dead_letter_to_avro,
    MailboxStateRecord: _state_to_avro,
    MailboxRegistryEntry: _registry_entry_to_avro,
    CheckpointManifest: _manifest_to_avro,
    CheckpointChunk: _chunk_to_avro,
}
_FROM_AVRO: dict[type, Callable[[dict[str, Any]], Record]] = {
    MailboxEvent: _event_from_avro,
    MailboxSnapshot: _snapshot_from_avro,
    DeadLetter: _dead_letter_from_avro,
    MailboxStateRecord: _state_from_avro,
    MailboxRegistryEntry: _registry_entry_from_avro,
    CheckpointManifest: _manifest_from_avro,
    CheckpointChunk: _chunk_from_avro,
}
