"""`decode_log_record`: the fast MailboxEvent reader gives exactly what `codec.decode` gives."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from pathlib import Path

import fastavro
import pytest
from fixtures.producing import generate

from ingest import speedups
from ingest.errors import DecodeError
from ingest.eventlog import codec, wire
from ingest.eventlog import reader as log_reader
from ingest.eventlog.reader import (
    _FAST_EVENTS,
    _FAST_SNAPSHOTS,
    _read_event,
    _read_event_v1,
    decode_log_record,
)
from ingest.events import DeadLetter, EventType, MailboxEvent, MessageInfo, UnparsedField

AT = dt.datetime(2024, 3, 1, 8, 0, 0, 123_000, tzinfo=dt.UTC)
_HEADER = wire.header(wire.FAST_EVENT_SCHEMA)
V1 = Path(__file__).resolve().parents[2] / "schemas" / "history" / "mailbox_event.v1.avsc"


def event(**changes: object) -> MailboxEvent:
    base = MailboxEvent(
        mailbox_id="jdoe",
        usn=2265,
        event_type=EventType.DELETED_MESSAGE_UNDELETE,
        event_time=AT,
        event_time_raw="08:00:00 AM 03/01/2024",
        subscription_id="sub-1",
        messages=(MessageInfo("m-1"),),
        ingested_at=AT,
        display_name="Jane Doe",
        source="cuc1",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class TestSameAsCodec:
    """Every record of a realistic stream decodes to an equal record either way."""

    def test_the_fast_paths_are_in_use(self) -> None:
        """Always, unless CUMI_NO_SPEEDUPS asks for the reference path."""
        assert _FAST_EVENTS is speedups.ENABLED
        assert _FAST_SNAPSHOTS is speedups.ENABLED
        assert codec.encode(event()).startswith(_HEADER)

    def test_small_caches(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Caches that fill up and start again many times give the same records."""
        monkeypatch.setattr(log_reader, "_CACHE_SIZE", 7)
        for cache in ("_moments", "_stamps", "_infos"):  # earlier tests may have filled them
            monkeypatch.setattr(log_reader, cache, {})
        stream = generate(events=3000, mailboxes=20, seed=4)
        for value in stream.values:
            assert decode_log_record(value) == codec.decode(value)
        assert len(log_reader._infos) <= 7
        assert len(log_reader._stamps) <= 7

    def test_generated_stream(self) -> None:
        stream = generate(events=3000, mailboxes=20, seed=4)
        for value in stream.values:
            assert decode_log_record(value) == codec.decode(value)

    @pytest.mark.parametrize(
        "changes",
        [
            {"display_name": None, "source": None},
            {"usn": 2**62, "mailbox_id": "ünïcødé-ß-名前"},
            {"subscription_id": "s" * 300},
            {"messages": ()},
            {
                "messages": tuple(
                    MessageInfo(
                        f"m-{i}",
                        caller_ani="+14085550100",
                        sender="Bob",
                        msg_type="Voice",
                        priority="Urgent-Priority",
                        receive_time=AT - dt.timedelta(days=i),
                        receive_time_raw="12:00:00 AM 03/01/2024",
                    )
                    for i in range(70)
                )
            },
            {"event_time": dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC)},
            {"subscription_id": None, "event_time_raw": None},
            {"event_time_raw": "x" * 200, "source": None},
            {
                "unparsed": (
                    UnparsedField("EventTime", "30/10/2008 16:15:40"),
                    UnparsedField("SubscriptionId"),
                    UnparsedField("MessageInfo[0].CallerAni", "4085550100" * 10),
                )
            },
            {"unparsed": tuple(UnparsedField(f"MessageInfo[{i}].Sender", "{}") for i in range(70))},
        ],
    )
    def test_edge_values(self, changes: dict[str, object]) -> None:
        value = codec.encode(event(**changes))
        assert decode_log_record(value) == codec.decode(value) == event(**changes)

    def test_array_blocks_with_byte_sizes(self) -> None:
        """Avro lets a writer give a block's count negated, followed by its size in bytes."""
        original = event(messages=(MessageInfo("m-1"), MessageInfo("m-2")))
        value = codec.encode(original)
        head = len(_HEADER) + sum(
            len(zigzag(len(s.encode()))) + len(s.encode())
            for s in ("jdoe", "08:00:00 AM 03/01/2024", "sub-1")
        )
        head += 2  # event_time_raw and subscription_id: union branch 1 (since v2)
        head += len(zigzag(2265)) + 1 + len(zigzag(codec.timestamp_ms(original)))
        head += 1 + len(zigzag(8)) + len(b"Jane Doe")  # display_name: branch 1, string
        assert value[head : head + 1] == zigzag(2)
        tail = len(zigzag(codec.timestamp_ms(original))) + 1 + 1 + len(b"cuc1") + 1  # + unparsed
        items = value[head + 1 : len(value) - tail - 1]  # up to the array's closing 0
        rewritten = value[:head] + zigzag(-2) + zigzag(len(items)) + value[head + 1 :]
        assert _read_event(rewritten) == original  # the fast path itself, no fallback
        assert decode_log_record(rewritten) == codec.decode(rewritten) == original


class TestFirstRelease:
    """Records written with v1 of the schema (the log before v2) are read fast, as the codec
    reads them: into today's record, `unparsed` empty."""

    def v1_value(self, original: MailboxEvent) -> bytes:
        schema = json.loads(V1.read_text(encoding="utf-8"))
        datum = codec._event_to_avro(original)
        del datum["unparsed"]
        out = io.BytesIO(wire.header(wire.FAST_EVENT_SCHEMA_V1))
        out.seek(0, io.SEEK_END)
        fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), datum)
        return out.getvalue()

    @pytest.mark.parametrize(
        "changes", [{}, {"subscription_id": "s" * 300, "display_name": None, "source": None}]
    )
    def test_v1_record(self, changes: dict[str, object]) -> None:
        original = event(**changes)
        value = self.v1_value(original)
        assert _read_event_v1(value) == original  # the fast path itself, no fallback
        assert decode_log_record(value) == codec.decode(value) == original

    def test_v1_record_with_the_v2_reader_is_misread(self) -> None:
        """The two layouts really differ: the v2 reader cannot take a v1 body."""
        value = self.v1_value(event())
        with pytest.raises((ValueError, IndexError)):
            _read_event(value)


class TestOtherRecords:
    """Snapshots go through the codec; records that do not belong on the events topic are None."""

    def test_snapshot(self) -> None:
        stream = generate(events=3000, mailboxes=20, seed=4)
        snapshots = [v for v in stream.values if not v.startswith(_HEADER)]
        assert snapshots
        for value in snapshots:
            assert decode_log_record(value) == codec.decode(value)

    def test_dead_letter_is_none(self) -> None:
        letter = DeadLetter(raw=b"{}", reason="bad_value", detail="x", received_at=AT)
        assert decode_log_record(codec.encode(letter)) is None


class TestBroken:
    """What the fast reader cannot read is the codec's to judge: the same DecodeError."""

    @pytest.mark.parametrize("cut", [11, 20, -1, -5])
    def test_truncated(self, cut: int) -> None:
        value = codec.encode(event())[:cut]
        with pytest.raises(DecodeError):
            decode_log_record(value)

    def test_trailing_bytes(self) -> None:
        with pytest.raises(DecodeError):
            decode_log_record(codec.encode(event()) + b"\x00")

    def test_unknown_event_type_index(self) -> None:
        value = bytearray(codec.encode(event()))
        position = len(_HEADER) + 1 + len(b"jdoe") + len(zigzag(2265))
        assert value[position : position + 1] == zigzag(8)
        value[position : position + 1] = zigzag(40)
        with pytest.raises(DecodeError):
            decode_log_record(bytes(value))
