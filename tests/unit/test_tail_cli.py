"""ingest.commands.tail without a broker: argument parsing, key → partition, record rendering."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pytest

from ingest.commands import tail
from ingest.eventlog import codec, topics
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
from ingest.settings import SettingsSource, load_kafka

NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
T0 = dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC)


@dataclass
class FakeRecord:
    """The attributes of an aiokafka ConsumerRecord that rendering reads."""

    value: bytes | None
    key: bytes | None = b"abell"
    topic: str = "mailbox-events"
    partition: int = 3
    offset: int = 42
    timestamp: int = 1_225_408_540_000
    headers: tuple[tuple[str, bytes], ...] = ()


def event(*message_ids: str, usn: int = 2265) -> MailboxEvent:
    return MailboxEvent(
        mailbox_id="abell",
        usn=usn,
        event_type=EventType.SAVED_MESSAGE,
        event_time=T0,
        event_time_raw="11:15:40 PM 10/30/2008",
        subscription_id="00bdcfd3",
        messages=tuple(MessageInfo(m, receive_time=T0) for m in message_ids),
        ingested_at=T0,
    )


class TestParseSince:
    """--since takes ISO 8601, epoch milliseconds or an age."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("1225408540000", 1_225_408_540_000),
            ("2008-10-30T23:15:40Z", 1_225_408_540_000),
            ("2008-10-30T23:15:40", 1_225_408_540_000),  # no zone: UTC
            ("2008-10-30T16:15:40-07:00", 1_225_408_540_000),
            ("2008-10-30", 1_225_324_800_000),
        ],
    )
    def test_absolute(self, text: str, expected: int) -> None:
        assert tail.parse_since(text) == expected

    @pytest.mark.parametrize(
        ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("3d", 259_200)]
    )
    def test_ages(self, text: str, seconds: int) -> None:
        expected = int((NOW - dt.timedelta(seconds=seconds)).timestamp() * 1000)
        assert tail.parse_since(text, now=lambda: NOW) == expected

    @pytest.mark.parametrize("text", ["yesterday", "15 minutes", "-5m", "2008-13-01"])
    def test_nonsense_is_refused(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="not ISO 8601"):
            tail.parse_since(text)


class TestArguments:
    """The command line maps onto TailOptions and the worker's Kafka settings."""

    def parse(self, *argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        tail.add_arguments(parser)
        return parser.parse_args(argv)

    def test_defaults(self) -> None:
        args = self.parse("events")
        assert (args.topic, args.last, args.follow, args.json) == ("events", 10, False, False)
        assert args.since is None and args.limit is None and args.mailbox is None

    @pytest.mark.parametrize(
        "argv",
        [
            ("events", "--from-beginning", "--last", "3"),
            ("events", "--since", "1h", "--from-beginning"),
        ],
    )
    def test_start_options_exclude_each_other(self, argv: tuple[str, ...]) -> None:
        with pytest.raises(SystemExit):
            self.parse(*argv)

    @pytest.mark.parametrize("value", ["0", "-1", "x"])
    def test_limit_must_be_positive(self, value: str) -> None:
        with pytest.raises(SystemExit):
            self.parse("events", "--limit", value)

    def test_topic_aliases_follow_the_settings(self) -> None:
        kafka = load_kafka(
            SettingsSource(
                {
                    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                    "KAFKA_TOPIC_PREFIX": "prod-",
                    "KAFKA_DLQ_TOPIC": "rejects",
                }
            )
        )
        resolved = [tail.resolve_topic(t, kafka) for t in ("events", "dlq", "state", "registry")]
        assert resolved == [
            "prod-mailbox-events",
            "prod-rejects",
            "prod-mailbox-state",
            "prod-mailbox-registry",
        ]
        assert tail.resolve_topic("some-other-topic", kafka) == "some-other-topic"


class TestPartitionFor:
    """Keys go where Kafka's default partitioner (Java's Utils.murmur2) puts them."""

    @pytest.mark.parametrize(
        ("key", "java_murmur2"),
        [  # values from Kafka's own UtilsTest
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ],
    )
    def test_matches_java(self, key: bytes, java_murmur2: int) -> None:
        for partitions in (1, 7, 12, 100):
            assert topics.key_partition(key, partitions) == (java_murmur2 & 0x7FFFFFFF) % partitions


class TestRender:
    """One line per record, for people and for scripts."""

    def test_event_json(self) -> None:
        value = event("m1")
        record = FakeRecord(codec.encode(value), headers=tuple(codec.kafka_headers(value)))
        line = json.loads(tail.render(record, as_json=True))
        assert line["kind"] == "event"
        assert line["time"] == "2008-10-30T23:15:40.000Z"
        assert line["key"] == "abell"
        assert line["headers"]["cumi.event_type"] == "SAVED_MESSAGE"
        assert line["value"]["messages"][0] == {
            "message_id": "m1",
            "caller_ani": None,
            "sender": None,
            "msg_type": None,
            "priority": None,
            "receive_time": "2008-10-30T23:15:40.000Z",
            "receive_time_raw": None,
        }
        assert "error" not in line

    def test_event_text(self) -> None:
        line = tail.render(FakeRecord(codec.encode(event("m1", "m2", "m3", "m4"))), as_json=False)
        assert line == (
            "2008-10-30T23:15:40.000Z mailbox-events[3]@42 abell "
            "SAVED_MESSAGE usn=2265 msg=m1,m2 +2"
        )

    def test_snapshot_text(self) -> None:
        snapshot = MailboxSnapshot(
            "abell",
            2300,
            T0,
            RepairReason.STARTUP,
            inbox=(SnapshotMessage("a", True), SnapshotMessage("b", False)),
            deleted=(SnapshotMessage("c", False),),
        )
        line = tail.render(FakeRecord(codec.encode(snapshot)), as_json=False)
        assert line.endswith(
            "abell SNAPSHOT usn=2300 reason=startup inbox=2(1 unread) deleted=1(1 unread)"
        )

    def test_dead_letter_raw_bytes(self) -> None:
        text = DeadLetter(b'{"USN": "x"}', "bad_type", "USN must be an integer", T0, "USN")
        binary = DeadLetter(b"\xff\xfe", "not_json", "not UTF-8", T0)
        as_text = json.loads(tail.render(FakeRecord(codec.encode(text), key=None), as_json=True))
        assert as_text["value"]["raw"] == '{"USN": "x"}' and as_text["key"] is None
        as_binary = json.loads(tail.render(FakeRecord(codec.encode(binary)), as_json=True))
        assert as_binary["value"]["raw"] == {"base64": "//4="}
        line = tail.render(FakeRecord(codec.encode(text)), as_json=False)
        assert line.endswith(
            'DEAD_LETTER bad_type field=USN: USN must be an integer raw={"USN": "x"}'
        )

    def test_state_text(self) -> None:
        def message(message_id: str, folder: Folder, read: bool) -> MessageStateRecord:
            return MessageStateRecord(message_id, folder, read, 5, (), folder, read)

        state = MailboxStateRecord(
            "abell",
            9,
            (
                message("a", Folder.INBOX, False),
                message("b", Folder.INBOX, True),
                message("c", Folder.DELETED, False),
                message("d", Folder.GONE, False),
            ),
            events_applied=7,
            duplicates=1,
        )
        line = tail.render(FakeRecord(codec.encode(state)), as_json=False)
        assert line.endswith(
            "STATE usn=9 inbox=2(1 unread) deleted=1 events=7 duplicates=1 stale=0 snapshots=0"
        )

    @pytest.mark.parametrize(
        ("data", "error"),
        [
            (b"plain text", "neither Avro single-object encoding"),
            (b"\xc3\x01" + bytes(8) + b"\x00", "unknown schema fingerprint 0000000000000000"),
        ],
    )
    def test_undecodable(self, data: bytes, error: str) -> None:
        line = json.loads(tail.render(FakeRecord(data), as_json=True))
        assert (line["kind"], line["value"], line["size"]) == ("undecodable", None, len(data))
        assert error in line["error"]
        text = tail.render(FakeRecord(data), as_json=False)
        assert f"UNDECODABLE {len(data)} bytes (DecodeError: " in text

    def test_tombstone(self) -> None:
        line = json.loads(tail.render(FakeRecord(None), as_json=True))
        assert (line["kind"], line["value"]) == ("tombstone", None)
        assert tail.render(FakeRecord(None), as_json=False).endswith(" abell TOMBSTONE")

    def test_unknown_record_types_render_generically(self) -> None:
        @dataclass(frozen=True)
        class RegistryEntry:
            mailbox_id: str
            enabled: bool

        value: Any = RegistryEntry("abell", True)
        assert tail.kind_of(value, None) == "registry_entry"
        assert tail.to_json(value) == {"mailbox_id": "abell", "enabled": True}
        assert tail.summary(value, None, b"") == "RegistryEntry mailbox_id=abell enabled=True"
