"""Registry mode's framing: the Confluent wire format next to single-object encoding, told apart by
the first byte; the same Avro body either way; readers of both; the registry settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import ClassVar

import pytest
from fixtures.record_strategies import mailbox_events, snapshots
from hypothesis import given

from ingest.errors import ConfigError, DecodeError
from ingest.eventlog import codec, wire
from ingest.eventlog.reader import decode_log_record
from ingest.eventlog.records import RecordWriter
from ingest.eventlog.schema_registry import subject_name
from ingest.events import (
    DeadLetter,
    EventType,
    Folder,
    MailboxEvent,
    MailboxRegistryEntry,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageInfo,
    MessageStateRecord,
    RepairReason,
    SnapshotMessage,
)
from ingest.settings import Secret, SettingsSource, load_kafka

T0 = dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC)
IDS = {
    MailboxEvent: 7,
    MailboxSnapshot: 8,
    DeadLetter: 9,
    MailboxStateRecord: 300_000,
    MailboxRegistryEntry: 2**31 - 1,
}
"""Schema ids as a registry might hand them out (any 32-bit signed positive)."""


class Ids:
    """A registry's id table, as the readers see it (`codec.SchemaIds`)."""

    def __init__(self, ids: dict[type, int]) -> None:
        self.table = {schema_id: codec.fingerprint(cls) for cls, schema_id in ids.items()}
        self.asked: list[int] = []

    def fingerprint(self, schema_id: int) -> bytes:
        self.asked.append(schema_id)
        if schema_id not in self.table:
            raise DecodeError(f"schema id {schema_id} unknown")
        return self.table[schema_id]


def records() -> list[codec.Record]:
    event = MailboxEvent(
        "abell",
        2265,
        EventType.NEW_MESSAGE,
        T0,
        "11:15:40 PM 10/30/2008",
        "sub-1",
        (MessageInfo("m1", "100", "Bob", "Voice", "Normal", T0, "x"),),
        T0,
        "Alice Bell",
        "cuc1",
    )
    snapshot = MailboxSnapshot(
        "abell",
        3000,
        T0,
        RepairReason.SESSION_LOST,
        (SnapshotMessage("m1", read=True, arrival_time=T0, sender="Bob"),),
        (SnapshotMessage("m3", read=False),),
        "cuc1",
    )
    letter = DeadLetter(b"\xff{", "not_json", "Expecting value", T0, None, "cuc1", "abell")
    message = MessageStateRecord("m2", Folder.GONE, False, 12, (), Folder.DELETED, False)
    state = MailboxStateRecord("abell", 2266, (message,), snapshot_usn=10, updated_at=T0)
    entry = MailboxRegistryEntry("abell", T0, server="cuc1")
    return [event, snapshot, letter, state, entry]


ENCODER = codec.Encoder(IDS)


class TestConfluentWireFormat:
    """0x00, the 4-byte big-endian schema id, then exactly the single-object body."""

    @pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
    def test_same_body_other_header(self, record: codec.Record) -> None:
        framed = ENCODER.encode(record)
        single = codec.encode(record)
        assert framed[:5] == b"\x00" + IDS[type(record)].to_bytes(4, "big")
        assert framed[5:] == single[wire.HEADER_SIZE :]
        assert wire.schema_id_of(framed) == IDS[type(record)]
        assert wire.fingerprint_of(framed) is None
        assert wire.schema_id_of(single) is None

    @pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
    def test_decoded_by_the_first_byte(self, record: codec.Record) -> None:
        ids = Ids(IDS)
        assert codec.decode(ENCODER.encode(record), ids) == record
        assert codec.decode(codec.encode(record), ids) == record
        assert ids.asked == [IDS[type(record)]]  # the single-object record asked nothing

    @given(mailbox_events)
    def test_fast_event_writer_matches_fastavro(self, event: MailboxEvent) -> None:
        """The 5-byte header changes nothing in the straight-line writer's body."""
        assert ENCODER.encode(event)[5:] == codec.encode(event)[wire.HEADER_SIZE :]

    def test_without_a_registry_a_clear_error(self) -> None:
        framed = ENCODER.encode(records()[0])
        with pytest.raises(DecodeError, match=r"schema id 7.*KAFKA_SCHEMA_REGISTRY_URL"):
            codec.decode(framed)
        with pytest.raises(DecodeError, match="KAFKA_SCHEMA_REGISTRY_URL"):
            decode_log_record(framed)

    @pytest.mark.parametrize(
        "data", [b"", b"\x00\x00\x00", b"\x01abcdefgh", b"{}"], ids=["empty", "short", "1", "json"]
    )
    def test_neither_framing(self, data: bytes) -> None:
        with pytest.raises(DecodeError, match="neither"):
            codec.decode(data, Ids(IDS))

    def test_unknown_id(self) -> None:
        with pytest.raises(DecodeError, match="schema id 12 unknown"):
            codec.decode(b"\x00\x00\x00\x00\x0c\x02", Ids(IDS))

    def test_only_registered_types(self) -> None:
        encoder = codec.Encoder({MailboxEvent: 1})
        assert encoder.confluent
        with pytest.raises(KeyError):
            encoder.encode(records()[3])

    def test_id_out_of_range(self) -> None:
        with pytest.raises(ValueError, match="out of range"):
            codec.Encoder({MailboxEvent: 2**31})


class TestLogReader:
    """decode_log_record: the straight-line readers serve Confluent-framed records too."""

    @given(mailbox_events)
    def test_events(self, event: MailboxEvent) -> None:
        expected = codec.decode(codec.encode(event))  # stamps kept to the millisecond
        assert decode_log_record(ENCODER.encode(event), Ids(IDS)) == expected

    @given(snapshots)
    def test_snapshots(self, snapshot: MailboxSnapshot) -> None:
        expected = codec.decode(codec.encode(snapshot))
        assert decode_log_record(ENCODER.encode(snapshot), Ids(IDS)) == expected

    def test_mixed_topic_folds_the_same(self) -> None:
        ids = Ids(IDS)
        log = [r for r in records() if isinstance(r, MailboxEvent | MailboxSnapshot)]
        single = [decode_log_record(codec.encode(r)) for r in log]
        mixed = [
            decode_log_record(ENCODER.encode(r) if i % 2 else codec.encode(r), ids)
            for i, r in enumerate(log)
        ]
        assert single == mixed == log

    def test_other_kinds_are_none(self) -> None:
        assert decode_log_record(ENCODER.encode(records()[2]), Ids(IDS)) is None


class TestRecordWriter:
    def test_writes_with_the_encoder_it_is_given(self) -> None:
        event = records()[0]
        assert isinstance(event, MailboxEvent)
        writer = RecordWriter("events", "dlq", encoder=ENCODER)
        topic, (key, value, _, headers), _, _ = writer.for_event(event)
        assert (topic, key, value[:5]) == ("events", b"abell", b"\x00\x00\x00\x00\x07")
        # the fingerprint header stays: it names the schema in both framings
        assert (codec.FINGERPRINT_HEADER, codec.fingerprint(event).hex().encode()) in headers

    def test_registers_what_it_writes(self) -> None:
        assert RecordWriter.schemas("e", "d") == {
            "e": (MailboxEvent, MailboxSnapshot),
            "d": (DeadLetter,),
        }


class TestSubjects:
    def test_topic_record_name_strategy(self) -> None:
        assert subject_name("mailbox-events", MailboxEvent) == (
            "mailbox-events-cumi.pipeline.MailboxEvent"
        )
        assert subject_name("x.mailbox-events", MailboxSnapshot) == (
            "x.mailbox-events-cumi.pipeline.MailboxSnapshot"
        )

    def test_schema_text_is_fixed(self) -> None:
        """The same bytes every time (registries may compare schemas by their text)."""
        name, text = codec.schema_text(MailboxEvent)
        assert name == "cumi.pipeline.MailboxEvent"
        assert text == codec.schema_text(MailboxEvent)[1]
        assert "\n" not in text and '"logicalType":"timestamp-millis"' in text


class TestSettings:
    BASE: ClassVar[dict[str, str]] = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}

    def test_default_is_single_object(self) -> None:
        assert load_kafka(SettingsSource(self.BASE)).schema_registry is None

    def test_all_settings(self, tmp_path: Path) -> None:
        password, ca = tmp_path / "pw", tmp_path / "ca.pem"
        password.write_text("s3cret\n")
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        env = self.BASE | {
            "KAFKA_SCHEMA_REGISTRY_URL": "https://registry:8443/apis/ccompat/v7/",
            "KAFKA_SCHEMA_REGISTRY_USER": "cumi",
            "KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE": str(password),
            "KAFKA_SCHEMA_REGISTRY_CA_FILE": str(ca),
            "KAFKA_SCHEMA_REGISTRY_TIMEOUT_SECONDS": "3",
        }
        registry = load_kafka(SettingsSource(env)).schema_registry
        assert registry is not None
        assert registry.url == "https://registry:8443/apis/ccompat/v7"
        assert (registry.username, registry.password) == ("cumi", Secret("s3cret"))
        assert (registry.ca_file, registry.timeout_seconds) == (ca, 3.0)
        assert "s3cret" not in repr(registry)

    @pytest.mark.parametrize(
        ("env", "error"),
        [
            ({"KAFKA_SCHEMA_REGISTRY_URL": "registry:8081"}, "http/https URL"),
            ({"KAFKA_SCHEMA_REGISTRY_URL": "http://u:p@r:8081"}, "must not carry credentials"),
            ({"KAFKA_SCHEMA_REGISTRY_USER": "u"}, "USER is set but KAFKA_SCHEMA_REGISTRY_URL"),
            (
                {"KAFKA_SCHEMA_REGISTRY_URL": "http://r:8081", "KAFKA_SCHEMA_REGISTRY_USER": "u"},
                "go together",
            ),
        ],
    )
    def test_invalid(self, env: dict[str, str], error: str) -> None:
        with pytest.raises(ConfigError, match=error):
            load_kafka(SettingsSource(self.BASE | env))
