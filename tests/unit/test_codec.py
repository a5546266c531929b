"""ingest.eventlog.codec: single-object encoding of every record type, decode by fingerprint."""

from __future__ import annotations

import copy
import datetime as dt
import importlib.resources
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import fastavro
import pytest

from ingest import speedups
from ingest.errors import DecodeError
from ingest.eventlog import codec
from ingest.events import (
    DeadLetter,
    EventType,
    Folder,
    MailboxEvent,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageInfo,
    MessageStateRecord,
    RepairReason,
    SnapshotMessage,
)

T0 = dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC)
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def event(**changes: object) -> MailboxEvent:
    fields: dict[str, object] = {
        "mailbox_id": "abell",
        "usn": 2265,
        "event_type": EventType.SAVED_MESSAGE,
        "event_time": T0,
        "event_time_raw": "11:15:40 PM 10/30/2008",
        "subscription_id": "00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c",
        "messages": (
            MessageInfo(
                "72204bd7-e5c3-446e-adb6-ae5f80db26fb",
                msg_type="Voice",
                priority="Normal-Priority",
                receive_time=T0 - dt.timedelta(hours=7),
                receive_time_raw="04:15:40 PM 10/30/2008",
            ),
            MessageInfo("m2", caller_ani="+14085550100", sender="Zoë 山田"),
        ),
        "ingested_at": T0 + dt.timedelta(milliseconds=1234),
        "display_name": "Alexander Bell",
        "source": "cuc1",
    }
    fields.update(changes)
    return MailboxEvent(**fields)  # type: ignore[arg-type]


def snapshot() -> MailboxSnapshot:
    return MailboxSnapshot(
        mailbox_id="abell",
        usn=3000,
        taken_at=T0,
        reason=RepairReason.SESSION_LOST,
        inbox=(
            SnapshotMessage("m1", read=True, arrival_time=T0, sender="Bob", msg_type="Voice"),
            SnapshotMessage("m2", read=False),
        ),
        deleted=(SnapshotMessage("m3", read=True, caller_id="100", priority="Urgent-Priority"),),
        source="cuc1",
    )


def dead_letter() -> DeadLetter:
    return DeadLetter(
        raw=b'\xff{"MailboxId": "abell"',
        reason="not_json",
        detail="Expecting value",
        received_at=T0,
        field=None,
        source="cuc1",
        mailbox_id="abell",
    )


def state() -> MailboxStateRecord:
    return MailboxStateRecord(
        mailbox_id="abell",
        usn=2266,
        messages=(
            MessageStateRecord(
                "m1",
                Folder.DELETED,
                read=True,
                usn=2266,
                applied=(EventType.DELETED_MESSAGE, EventType.DELETED_MESSAGE_CREATE),
                base_folder=Folder.INBOX,
                base_read=True,
                sender="Bob",
                receive_time=T0,
                receive_time_raw="04:15:40 PM 10/30/2008",
            ),
            MessageStateRecord("m2", Folder.GONE, False, 12, (), Folder.DELETED, False),
        ),
        snapshot_usn=10,
        updated_at=T0,
        events_applied=7,
        duplicates=2,
        stale=1,
        snapshots_applied=1,
    )


RECORDS: list[codec.Record] = [
    event(),
    event(messages=(MessageInfo("only"),), display_name=None, source=None),
]
RECORDS += [snapshot(), dead_letter(), state(), MailboxStateRecord("empty", 0, ())]


def crc64_avro(data: bytes) -> bytes:
    """The Avro spec's reference CRC-64-AVRO, written out independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


class TestRoundTrip:
    """decode(encode(r)) == r for every record type."""

    @pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
    def test_round_trip(self, record: codec.Record) -> None:
        data = codec.encode(record)
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == codec.fingerprint(record)
        assert codec.decode(data) == record

    @pytest.mark.parametrize("event_type", list(EventType))
    def test_every_event_type(self, event_type: EventType) -> None:
        record = event(event_type=event_type)
        decoded = codec.decode(codec.encode(record))
        assert isinstance(decoded, MailboxEvent)
        assert decoded.event_type is event_type

    def test_decoded_times_are_aware_utc(self) -> None:
        decoded = codec.decode(codec.encode(event()))
        assert isinstance(decoded, MailboxEvent)
        assert decoded.event_time.utcoffset() == dt.timedelta(0)

    def test_naive_datetimes_mean_utc(self) -> None:
        naive = event(event_time=T0.replace(tzinfo=None), ingested_at=T0.replace(tzinfo=None))
        assert codec.decode(codec.encode(naive)) == event(ingested_at=T0)
        letter = DeadLetter(b"x", "not_json", "d", T0.replace(tzinfo=None))
        assert codec.decode(codec.encode(letter)) == DeadLetter(b"x", "not_json", "d", T0)

    def test_microseconds_truncated_to_millis(self) -> None:
        precise = event(ingested_at=T0 + dt.timedelta(microseconds=1999))
        decoded = codec.decode(codec.encode(precise))
        assert isinstance(decoded, MailboxEvent)
        assert decoded.ingested_at == T0 + dt.timedelta(milliseconds=1)

    def test_large_values(self) -> None:
        big = event(usn=2**63 - 1, messages=tuple(MessageInfo(f"m{i}") for i in range(300)))
        assert codec.decode(codec.encode(big)) == big


class TestFastEventWriter:
    """The hand-written MailboxEvent writer produces exactly fastavro's bytes."""

    @pytest.mark.parametrize(
        "record",
        [
            event(),
            event(usn=0, display_name=None, source=None, messages=(MessageInfo("x"),)),
            event(usn=2**40, event_time=dt.datetime(1969, 7, 20, 20, 17, 40, 500, tzinfo=dt.UTC)),
            event(mailbox_id="é" * 100, messages=tuple(MessageInfo(str(i)) for i in range(70))),
        ],
    )
    def test_same_bytes_as_fastavro(self, record: MailboxEvent) -> None:
        schema = fastavro.parse_schema(codec.load_schema("mailbox_event.avsc"))
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, codec._event_to_avro(record))
        assert codec.encode(record)[codec.HEADER_SIZE :] == out.getvalue()

    def test_same_bytes_across_the_repeated_strings_cache_filling_and_emptying(self) -> None:
        """More distinct values of the cached fields than the cache holds: every event is still
        fastavro's bytes (a stale or cleared entry would show)."""
        schema = fastavro.parse_schema(codec.load_schema("mailbox_event.avsc"))
        count = codec._REPEATED_MAX + 50
        for i in [*range(count), *range(0, count, 97)]:  # new values, then some seen before
            info = MessageInfo(f"m{i}", msg_type=f"t{i}", priority=None if i % 3 else "p")
            record = event(
                usn=i, event_time_raw=f"raw {i % 7}", source=f"w{i % 5}", messages=(info,)
            )
            out = io.BytesIO()
            fastavro.schemaless_writer(out, schema, codec._event_to_avro(record))
            assert codec.encode(record)[codec.HEADER_SIZE :] == out.getvalue(), i
            assert codec.encode(record)[codec.HEADER_SIZE :] == out.getvalue(), i  # from cache
        assert len(codec._REPEATED) <= codec._REPEATED_MAX

    def test_bound_to_the_schema_it_was_written_for(self) -> None:
        writer = codec._registry().writers[MailboxEvent]
        # off only when CUMI_NO_SPEEDUPS asks for the reference writer
        assert (writer.fast is not None) is speedups.ENABLED, "mailbox_event.avsc changed?"


class TestFingerprints:
    """CRC-64-AVRO of the Parsing Canonical Form, little-endian, per the Avro spec."""

    def test_spec_vector(self) -> None:
        # Avro spec test data: the fingerprint of "null" is 7195948357588979594
        assert codec.schema_fingerprint({"type": "null"}) == (7195948357588979594).to_bytes(
            8, "little"
        )

    @pytest.mark.parametrize("name", ["mailbox_event", "mailbox_snapshot", "dead_letter"])
    def test_matches_reference_crc(self, name: str) -> None:
        schema = json.loads((SCHEMAS / f"{name}.avsc").read_text())
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        assert codec.schema_fingerprint(schema) == crc64_avro(canonical.encode())

    def test_state_fingerprint(self) -> None:
        schema = json.loads((SCHEMAS / "mailbox_state.avsc").read_text())
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        assert codec.fingerprint(MailboxStateRecord) == crc64_avro(canonical.encode())

    def test_type_or_instance(self) -> None:
        assert codec.fingerprint(MailboxEvent) == codec.fingerprint(event())
        assert len({codec.fingerprint(type(r)) for r in RECORDS}) == 4

    def test_docs_do_not_change_the_fingerprint(self) -> None:
        schema = codec.load_schema("dead_letter.avsc")
        undocumented = copy.deepcopy(schema)
        undocumented.pop("doc")
        for field in undocumented["fields"]:
            field.pop("doc", None)
        assert codec.schema_fingerprint(undocumented) == codec.fingerprint(DeadLetter)

    def test_known_fingerprints(self) -> None:
        known = codec.known_fingerprints()
        assert known[codec.fingerprint(MailboxEvent)] == "cumi.pipeline.MailboxEvent"
        assert known[codec.fingerprint(MailboxStateRecord)] == "cumi.pipeline.MailboxState"


class TestDecodeErrors:
    """Anything that is not one of our records raises DecodeError."""

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\xc3\x01abc",
            b'{"MailboxId": "abell"}',
            b"\xc3\x02" + bytes(8) + b"\x00",
            b"\xc3\x01" + bytes(8) + b"\x00",
        ],
    )
    def test_not_ours(self, data: bytes) -> None:
        with pytest.raises(DecodeError):
            codec.decode(data)

    def test_truncated_body(self) -> None:
        data = codec.encode(event())
        for cut in (codec.HEADER_SIZE, codec.HEADER_SIZE + 3, len(data) - 1):
            with pytest.raises(DecodeError, match="corrupt"):
                codec.decode(data[:cut])

    def test_trailing_bytes(self) -> None:
        with pytest.raises(DecodeError, match="after"):
            codec.decode(codec.encode(dead_letter()) + b"\x00")

    def test_corrupt_enum(self) -> None:
        data = bytearray(codec.encode(event(mailbox_id="a")))
        data[codec.HEADER_SIZE + 2 + 2] = 0x7E  # event_type index 63
        with pytest.raises(DecodeError):
            codec.decode(bytes(data))


class TestKafkaMetadata:
    """Headers and the record timestamp."""

    def test_event_headers(self) -> None:
        headers = dict(codec.kafka_headers(event()))
        assert headers == {
            "cumi.kind": b"event",
            "cumi.event_type": b"SAVED_MESSAGE",
            "cumi.schema_fingerprint": codec.fingerprint(MailboxEvent).hex().encode(),
        }

    @pytest.mark.parametrize(
        ("record", "kind"),
        [(snapshot(), b"snapshot"), (dead_letter(), b"dead_letter"), (state(), b"state")],
    )
    def test_other_kinds(self, record: codec.Record, kind: bytes) -> None:
        headers = dict(codec.kafka_headers(record))
        assert headers["cumi.kind"] == kind
        assert "cumi.event_type" not in headers
        assert bytes.fromhex(headers["cumi.schema_fingerprint"].decode()) == codec.fingerprint(
            record
        )

    def test_timestamps(self) -> None:
        ms = 1225408540000
        assert codec.timestamp_ms(event()) == ms
        assert codec.timestamp_ms(event(event_time=T0 + dt.timedelta(microseconds=999))) == ms
        assert codec.timestamp_ms(snapshot()) == ms
        assert codec.timestamp_ms(dead_letter()) == ms
        assert codec.timestamp_ms(state()) == ms

    def test_timestamp_never_negative(self) -> None:
        assert codec.timestamp_ms(event(event_time=dt.datetime(1960, 1, 1, tzinfo=dt.UTC))) == 0
        assert codec.timestamp_ms(MailboxStateRecord("a", 0, ())) == 0


class TestSchemaVersions:
    """Records written with an older released schema decode into today's records."""

    @staticmethod
    def old_event_schema() -> dict[str, object]:
        schema = codec.load_schema("mailbox_event.avsc")
        schema["fields"] = [
            f for f in schema["fields"] if f["name"] not in ("source", "display_name")
        ]
        return schema

    def write_old(self, schema: dict[str, object], datum: dict[str, object]) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
        return codec.MAGIC + codec.schema_fingerprint(schema) + out.getvalue()

    def test_registered_old_version(self) -> None:
        old = self.old_event_schema()
        datum = codec._event_to_avro(event())
        del datum["source"], datum["display_name"]
        data = self.write_old(old, datum)
        fp = codec.register_old_schema(old)
        assert fp == data[2:10] != codec.fingerprint(MailboxEvent)
        assert codec.decode(data) == event(source=None, display_name=None)

    @pytest.fixture
    def schema_copy(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
        target = tmp_path / "schemas"
        shutil.copytree(SCHEMAS, target)
        monkeypatch.setattr(codec, "schema_dir", lambda: target)
        codec._registry.cache_clear()
        yield target
        codec._registry.cache_clear()

    def test_history_directory(self, schema_copy: Path) -> None:
        old = self.old_event_schema()
        (schema_copy / "history").mkdir(exist_ok=True)
        (schema_copy / "history" / "mailbox_event-0.0.avsc").write_text(json.dumps(old))
        assert codec.known_fingerprints()[codec.schema_fingerprint(old)] == (
            "cumi.pipeline.MailboxEvent"
        )

    def test_old_schema_without_current_version(self, schema_copy: Path) -> None:
        (schema_copy / "history").mkdir(exist_ok=True)
        orphan = {"type": "record", "name": "Gone", "fields": [{"name": "a", "type": "int"}]}
        (schema_copy / "history" / "gone.avsc").write_text(json.dumps(orphan))
        with pytest.raises(DecodeError, match="no current version"):
            codec.known_fingerprints()


class TestSchemaLocation:
    """Schemas come from the package when installed as a wheel, else from the checkout."""

    def test_checkout(self) -> None:
        assert Path(str(codec.schema_dir())).resolve() == SCHEMAS

    def test_packaged_wins(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "schemas").mkdir()
        monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
        assert codec.schema_dir() == tmp_path / "schemas"
