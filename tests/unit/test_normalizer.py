"""ingest.cumi.normalizer: raw Comet JSON → MailboxEvent, and every way a payload is rejected."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fixtures.vendor import VENDOR_EXAMPLE

from ingest.cumi.normalizer import (
    DEFAULT_MAX_BYTES,
    MAX_DEAD_LETTER_RAW,
    TimeZones,
    dead_letter_for,
    named_mailbox,
    named_subscription,
    parse_event,
)
from ingest.errors import InvalidEvent
from ingest.eventlog import codec
from ingest.events import LENIENT_FIELDS, EventType, MailboxEvent, RejectReason, UnparsedField

PACIFIC = ZoneInfo("America/Los_Angeles")
NOW = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
DROP = object()


def clock() -> dt.datetime:
    return NOW


def payload(**changes: Any) -> dict[str, Any]:
    """The vendor example as a dict, with top-level fields replaced (or removed with DROP)."""
    data: dict[str, Any] = json.loads(VENDOR_EXAMPLE)
    for key, value in changes.items():
        if value is DROP:
            del data[key]
        else:
            data[key] = value
    return data


def with_message(**changes: Any) -> dict[str, Any]:
    """The vendor example with fields of its one MessageInfo entry replaced (or removed)."""
    data = payload()
    info = data["MessageInfo"][0]
    for key, value in changes.items():
        if value is DROP:
            del info[key]
        else:
            info[key] = value
    return data


def rejection(raw: Any, **kwargs: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, now=clock, **kwargs)
    return caught.value


class TestVendorExample:
    """The vendor's example event parses verbatim into the documented meaning."""

    def test_every_field(self) -> None:
        event = parse_event(VENDOR_EXAMPLE, source="cuc1", now=clock)
        assert event.mailbox_id == "abell"
        assert event.usn == 2265
        assert event.event_type is EventType.SAVED_MESSAGE
        assert event.event_time == dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC)
        assert event.event_time_raw == "11:15:40 PM 10/30/2008"
        assert event.subscription_id == "00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c"
        assert event.display_name == "Alexander Bell"
        assert event.source == "cuc1"
        assert event.ingested_at == dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
        (message,) = event.messages
        assert message.message_id == "72204bd7-e5c3-446e-adb6-ae5f80db26fb"
        assert message.caller_ani is None
        assert message.sender is None
        assert message.msg_type == "Voice"
        assert message.priority == "Normal-Priority"
        assert message.receive_time_raw == "04:15:40 PM 10/30/2008"
        assert message.receive_time == dt.datetime(2008, 10, 30, 16, 15, 40, tzinfo=dt.UTC)

    def test_receive_time_in_server_zone_matches_event_time(self) -> None:
        """Cisco's two times differ by exactly the Pacific daylight offset (docs/design.md §3)."""
        event = parse_event(VENDOR_EXAMPLE, zones=TimeZones(receive_time=PACIFIC))
        assert event.messages[0].receive_time == event.event_time

    def test_bytes_text_mapping_and_envelope_agree(self) -> None:
        as_text = parse_event(VENDOR_EXAMPLE, now=clock)
        envelope = {"channel": "/vmrest/mailbox/x", "data": payload(), "id": "7"}
        for raw in (
            VENDOR_EXAMPLE.encode(),
            bytearray(VENDOR_EXAMPLE.encode()),
            payload(),
            envelope,
            json.dumps(envelope).encode(),
        ):
            assert parse_event(raw, now=clock) == as_text

    def test_times_are_utc_and_millisecond_precision(self) -> None:
        event = parse_event(VENDOR_EXAMPLE)
        assert event.event_time.utcoffset() == dt.timedelta(0)
        assert event.ingested_at.utcoffset() == dt.timedelta(0)
        assert event.ingested_at.microsecond % 1000 == 0


class TestEventTypes:
    """Every EventType, documented or not, is recognized; others are classified rejections."""

    @pytest.mark.parametrize("event_type", list(EventType))
    def test_known(self, event_type: EventType) -> None:
        assert parse_event(payload(EventType=event_type.value)).event_type is event_type

    @pytest.mark.parametrize("name", ["MESSAGE_MOVED", "saved_message", " SAVED_MESSAGE", ""])
    def test_unknown(self, name: str) -> None:
        error = rejection(payload(EventType=name))
        assert (error.reason, error.field) == (RejectReason.UNKNOWN_EVENT_TYPE, "EventType")


class TestFields:
    """Normalization of individual fields."""

    def test_null_string_and_json_null_mean_absent(self) -> None:
        event = parse_event(
            with_message(CallerAni=None, Sender="null", MsgType=DROP, ReceiveTime="null")
            | {"DisplayName": "null"}
        )
        message = event.messages[0]
        assert (message.caller_ani, message.sender, message.msg_type) == (None, None, None)
        assert (message.receive_time, message.receive_time_raw) == (None, None)
        assert event.display_name is None

    def test_present_strings_kept_verbatim(self) -> None:
        message = parse_event(with_message(CallerAni="+1 408 555 0100", Sender="Bob")).messages[0]
        assert (message.caller_ani, message.sender) == ("+1 408 555 0100", "Bob")

    def test_usn_digit_string_accepted(self) -> None:
        assert parse_event(payload(USN="2265")).usn == 2265

    def test_usn_zero_and_avro_long_max(self) -> None:
        assert parse_event(payload(USN=0)).usn == 0
        assert parse_event(payload(USN=2**63 - 1)).usn == 2**63 - 1

    def test_folder_listing_prefix_stripped(self) -> None:
        event = parse_event(with_message(MessageId="0:72204bd7-e5c3-446e-adb6-ae5f80db26fb"))
        assert event.messages[0].message_id == "72204bd7-e5c3-446e-adb6-ae5f80db26fb"

    def test_single_message_object_accepted(self) -> None:
        data = payload()
        data["MessageInfo"] = data["MessageInfo"][0]
        assert parse_event(data).messages == parse_event(payload()).messages

    def test_several_messages_in_order(self) -> None:
        infos = [{"MessageId": f"m{i}"} for i in range(3)]
        event = parse_event(payload(MessageInfo=infos))
        assert [m.message_id for m in event.messages] == ["m0", "m1", "m2"]
        assert event.messages[0].receive_time is None

    def test_subscription_id_from_channel_when_missing(self) -> None:
        envelope = {"channel": "/vmrest/mailbox/sub-42", "data": payload(SubscriptionId=DROP)}
        assert parse_event(envelope).subscription_id == "sub-42"

    def test_unknown_fields_ignored(self) -> None:
        assert parse_event(payload(Extra={"deep": [1, 2]}), now=clock) == parse_event(
            payload(), now=clock
        )

    def test_non_ascii_text(self) -> None:
        raw = json.dumps(payload(DisplayName="Zoë Ångström 山田"), ensure_ascii=False).encode()
        event = parse_event(raw)
        assert event.display_name == "Zoë Ångström 山田"

    def test_naive_clock_taken_as_utc(self) -> None:
        event = parse_event(payload(), now=lambda: dt.datetime(2024, 1, 1, 12, 0, 0, 999999))
        assert event.ingested_at == dt.datetime(2024, 1, 1, 12, 0, 0, 999000, tzinfo=dt.UTC)


class TestTimes:
    """`%I:%M:%S %p %m/%d/%Y` in the configured zones, DST resolved with fold=0."""

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("12:00:00 AM 01/01/2020", dt.datetime(2020, 1, 1, 0, 0, 0)),
            ("12:30:05 PM 01/01/2020", dt.datetime(2020, 1, 1, 12, 30, 5)),
            ("01:02:03 AM 02/29/2020", dt.datetime(2020, 2, 29, 1, 2, 3)),
            ("1:02:03 pm 2/9/2020", dt.datetime(2020, 2, 9, 13, 2, 3)),
            ("11:59:59 PM 12/31/2099", dt.datetime(2099, 12, 31, 23, 59, 59)),
        ],
    )
    def test_wall_clock(self, raw: str, expected: dt.datetime) -> None:
        assert parse_event(payload(EventTime=raw)).event_time == expected.replace(tzinfo=dt.UTC)

    def test_event_time_zone_setting(self) -> None:
        event = parse_event(VENDOR_EXAMPLE, zones=TimeZones(event_time=PACIFIC))
        assert event.event_time == dt.datetime(2008, 10, 31, 6, 15, 40, tzinfo=dt.UTC)

    def test_ambiguous_local_time_is_first_occurrence(self) -> None:
        """01:30 on the US fall-back day happens twice; fold=0 picks PDT (UTC-7)."""
        event = parse_event(
            payload(EventTime="01:30:00 AM 11/02/2008"), zones=TimeZones(event_time=PACIFIC)
        )
        assert event.event_time == dt.datetime(2008, 11, 2, 8, 30, tzinfo=dt.UTC)

    def test_nonexistent_local_time_uses_offset_before_gap(self) -> None:
        """02:30 on the US spring-forward day never happens; read with PST (UTC-8)."""
        event = parse_event(
            payload(EventTime="02:30:00 AM 03/09/2008"), zones=TimeZones(event_time=PACIFIC)
        )
        assert event.event_time == dt.datetime(2008, 3, 9, 10, 30, tzinfo=dt.UTC)

    @pytest.mark.parametrize(
        "raw",
        [
            "23:15:40 10/30/2008",
            "13:15:40 PM 10/30/2008",
            "00:15:40 AM 10/30/2008",
            "11:60:40 PM 10/30/2008",
            "11:15:40 PM 02/30/2008",
            "11:15:40 PM 13/01/2008",
            "11:15:40 XM 10/30/2008",
            "11:15:40 PM 10/30/08",
            " 11:15:40 PM 10/30/2008",
            "2008-10-30T23:15:40Z",
            "",
        ],
    )
    def test_unreadable_event_time(self, raw: str) -> None:
        """Not the one documented format: kept as sent, the event stamped with ingested_at."""
        event = parse_event(payload(EventTime=raw), now=clock)
        assert (event.event_time, event.event_time_raw) == (event.ingested_at, raw)
        assert event.unparsed == (UnparsedField("EventTime", raw),)
        assert same_folder_change(event)

    def test_unreadable_receive_time_names_the_message(self) -> None:
        event = parse_event(with_message(ReceiveTime="yesterday"))
        assert (event.messages[0].receive_time, event.messages[0].receive_time_raw) == (
            None,
            "yesterday",
        )
        assert event.unparsed == (UnparsedField("MessageInfo[0].ReceiveTime", "yesterday"),)

    def test_out_of_datetime_range_after_zone_shift(self) -> None:
        tokyo = TimeZones(event_time=ZoneInfo("Asia/Tokyo"))
        event = parse_event(payload(EventTime="01:00:00 AM 01/01/0001"), zones=tokyo, now=clock)
        assert event.event_time == event.ingested_at
        assert [f.field for f in event.unparsed] == ["EventTime"]


def same_folder_change(event: MailboxEvent) -> bool:
    """The deciding fields are the vendor example's: the event still says what happened."""
    example = parse_event(VENDOR_EXAMPLE)
    return (event.mailbox_id, event.usn, event.event_type) == (
        example.mailbox_id,
        example.usn,
        example.event_type,
    ) and [m.message_id for m in event.messages] == [m.message_id for m in example.messages]


# (payload, the fields listed as unparsed with their raw text) for every kind of field that cannot
# be read but does not decide folder state: the event is published all the same
MI0 = "MessageInfo[0]."
TOLERATED: list[tuple[str, Any, tuple[tuple[str, str | None], ...]]] = [
    ("ReceiveTime N/A", with_message(ReceiveTime="N/A"), ((MI0 + "ReceiveTime", "N/A"),)),
    (
        "ReceiveTime day first, 24 h",
        with_message(ReceiveTime="30/10/2008 16:15:40"),
        ((MI0 + "ReceiveTime", "30/10/2008 16:15:40"),),
    ),
    (
        "ReceiveTime with a zone",
        with_message(ReceiveTime="11:15:40 PM 10/30/2008 +0100"),
        ((MI0 + "ReceiveTime", "11:15:40 PM 10/30/2008 +0100"),),
    ),
    (
        "ReceiveTime number",
        with_message(ReceiveTime=1225408540),
        ((MI0 + "ReceiveTime", "1225408540"),),
    ),
    (
        "EventTime with a zone",
        payload(EventTime="11:15:40 PM 10/30/2008 UTC"),
        (("EventTime", "11:15:40 PM 10/30/2008 UTC"),),
    ),
    ("no EventTime", payload(EventTime=DROP), (("EventTime", None),)),
    ("EventTime number", payload(EventTime=1225408540), (("EventTime", "1225408540"),)),
    ("CallerAni number", with_message(CallerAni=4085550100), ((MI0 + "CallerAni", "4085550100"),)),
    ("DisplayName number", payload(DisplayName=1), (("DisplayName", "1"),)),
    ("Sender object", with_message(Sender={"n": [1]}), ((MI0 + "Sender", '{"n":[1]}'),)),
    ("MsgType bool", with_message(MsgType=True), ((MI0 + "MsgType", "true"),)),
    ("Priority float", with_message(Priority=1.5), ((MI0 + "Priority", "1.5"),)),
    ("odd Priority and MsgType", with_message(Priority="Very-Urgent", MsgType="Hologram"), ()),
    ("no SubscriptionId", payload(SubscriptionId=DROP), (("SubscriptionId", None),)),
    ("blank SubscriptionId", payload(SubscriptionId=""), (("SubscriptionId", ""),)),
    ("SubscriptionId number", payload(SubscriptionId=7), (("SubscriptionId", "7"),)),
    ("lone surrogate", payload(DisplayName="\ud800"), (("DisplayName", '"\\ud800"'),)),
    (
        "all at once",
        with_message(CallerAni=5, ReceiveTime="?")
        | {"EventTime": "?", "DisplayName": [], "SubscriptionId": None},
        (
            ("EventTime", "?"),
            ("SubscriptionId", None),
            ("DisplayName", "[]"),
            (MI0 + "CallerAni", "5"),
            (MI0 + "ReceiveTime", "?"),
        ),
    ),
]


class TestTolerated:
    """Only MailboxId, EventType, USN and MessageId decide: any other field that cannot be read is
    null in the event, listed with its raw text, and the event keeps its folder change."""

    @pytest.mark.parametrize(
        ("raw", "unparsed"), [case[1:] for case in TOLERATED], ids=[c[0] for c in TOLERATED]
    )
    def test_published_with_the_field_unparsed(
        self, raw: Any, unparsed: tuple[tuple[str, str | None], ...]
    ) -> None:
        for form in (raw, json.dumps(raw), json.dumps(raw).encode()):
            event = parse_event(form, now=clock)
            assert [(f.field, f.raw) for f in event.unparsed] == list(unparsed)
            assert same_folder_change(event)
            assert codec.decode(codec.encode(event)) == event
        assert {f.name for f in event.unparsed} <= set(LENIENT_FIELDS)

    def test_unparsed_text_fields_are_null(self) -> None:
        event = parse_event(with_message(CallerAni=4085550100, Sender={}) | {"DisplayName": 2})
        assert (event.messages[0].caller_ani, event.messages[0].sender) == (None, None)
        assert event.display_name is None
        assert event.messages[0].msg_type == "Voice"  # the readable ones are still read

    def test_unparsed_receive_time_keeps_its_raw_text(self) -> None:
        message = parse_event(with_message(ReceiveTime=1225408540)).messages[0]
        assert (message.receive_time, message.receive_time_raw) == (None, "1225408540")

    def test_empty_receive_time_is_no_time(self) -> None:
        """An empty ReceiveTime was never an error and is not one now: no time, nothing listed."""
        event = parse_event(with_message(ReceiveTime=""))
        assert (event.messages[0].receive_time_raw, event.unparsed) == ("", ())

    def test_missing_subscription_id_taken_from_the_channel_is_not_listed(self) -> None:
        envelope = {"channel": "/vmrest/mailbox/sub-42", "data": payload(SubscriptionId=DROP)}
        assert parse_event(envelope).unparsed == ()

    def test_unreadable_subscription_id_listed_even_with_the_channel(self) -> None:
        envelope = {"channel": "/vmrest/mailbox/sub-42", "data": payload(SubscriptionId=[1])}
        event = parse_event(envelope)
        assert event.subscription_id == "sub-42"
        assert event.unparsed == (UnparsedField("SubscriptionId", "[1]"),)

    def test_field_name_is_the_metric_label(self) -> None:
        assert UnparsedField("MessageInfo[3].ReceiveTime").name == "ReceiveTime"
        assert UnparsedField("EventTime").name == "EventTime"


# (payload, expected reason, expected field) for every class of invalid input
R = RejectReason
INVALID: list[tuple[str, Any, RejectReason, str | None]] = [
    ("garbage", b"not json", R.NOT_JSON, None),
    ("truncated", VENDOR_EXAMPLE[:-2], R.NOT_JSON, None),
    ("bad utf-8", b'{"MailboxId": "\xff"}', R.NOT_JSON, None),
    ("empty", b"", R.NOT_JSON, None),
    ("array", b"[1, 2]", R.NOT_AN_OBJECT, None),
    ("string", '"SAVED_MESSAGE"', R.NOT_AN_OBJECT, None),
    ("null", b"null", R.NOT_AN_OBJECT, None),
    ("not a payload type", 42, R.NOT_AN_OBJECT, None),
    ("envelope data", {"channel": "/c", "data": [1]}, R.NOT_AN_OBJECT, "data"),
    ("huge bytes", b" " * (DEFAULT_MAX_BYTES + 1), R.TOO_LARGE, None),
    ("huge text", "é" * (DEFAULT_MAX_BYTES // 2 + 1), R.TOO_LARGE, None),
    ("deep", b'{"a":' + b"[" * 100_000, R.TOO_DEEP, None),
    ("deep valid", '{"a":' + "[" * 40 + "]" * 40 + "}", R.TOO_DEEP, None),
    ("no MailboxId", payload(MailboxId=DROP), R.MISSING_FIELD, "MailboxId"),
    ("null MailboxId", payload(MailboxId="null"), R.MISSING_FIELD, "MailboxId"),
    ("no USN", payload(USN=DROP), R.MISSING_FIELD, "USN"),
    ("no EventType", payload(EventType=None), R.MISSING_FIELD, "EventType"),
    ("no MessageInfo", payload(MessageInfo=DROP), R.MISSING_FIELD, "MessageInfo"),
    (
        "no MessageId",
        with_message(MessageId=DROP),
        R.MISSING_FIELD,
        "MessageInfo[0].MessageId",
    ),
    ("USN bool", payload(USN=True), R.BAD_TYPE, "USN"),
    ("USN float", payload(USN=2265.0), R.BAD_TYPE, "USN"),
    ("USN text", payload(USN="22a"), R.BAD_TYPE, "USN"),
    ("USN signed text", payload(USN="-1"), R.BAD_TYPE, "USN"),
    ("USN unicode digits", payload(USN="\uff12\uff12"), R.BAD_TYPE, "USN"),
    ("USN object", payload(USN={"v": 1}), R.BAD_TYPE, "USN"),
    ("MailboxId number", payload(MailboxId=7), R.BAD_TYPE, "MailboxId"),
    ("EventType array", payload(EventType=["NEW_MESSAGE"]), R.BAD_TYPE, "EventType"),
    ("MessageInfo text", payload(MessageInfo="m1"), R.BAD_TYPE, "MessageInfo"),
    ("MessageInfo item", payload(MessageInfo=["m1"]), R.BAD_TYPE, "MessageInfo[0]"),
    ("negative USN", payload(USN=-1), R.BAD_VALUE, "USN"),
    ("USN beyond long", payload(USN=2**63), R.BAD_VALUE, "USN"),
    ("USN text beyond long", payload(USN="9" * 19), R.BAD_VALUE, "USN"),
    ("empty MailboxId", payload(MailboxId=""), R.BAD_VALUE, "MailboxId"),
    ("blank MailboxId", payload(MailboxId="  "), R.BAD_VALUE, "MailboxId"),
    ("prefix only", with_message(MessageId="0:"), R.BAD_VALUE, "MessageInfo[0].MessageId"),
    ("MessageId number", with_message(MessageId=7), R.BAD_TYPE, "MessageInfo[0].MessageId"),
    (
        "lone surrogate MessageId",
        with_message(MessageId="\ud800"),
        R.BAD_VALUE,
        "MessageInfo[0].MessageId",
    ),
    (
        "a bad MessageId after a bad display field",
        with_message(CallerAni=5, MessageId=DROP),
        R.MISSING_FIELD,
        "MessageInfo[0].MessageId",
    ),
    ("unknown type", payload(EventType="X"), R.UNKNOWN_EVENT_TYPE, "EventType"),
    ("no messages", payload(MessageInfo=[]), R.EMPTY_MESSAGE_INFO, "MessageInfo"),
]


class TestInvalidInput:
    """Every class of invalid input raises InvalidEvent with its reason and field."""

    @pytest.mark.parametrize(
        ("raw", "reason", "field"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
    )
    def test_rejected(self, raw: Any, reason: RejectReason, field: str | None) -> None:
        error = rejection(raw)
        assert (error.reason, error.field) == (reason, field)
        assert error.detail
        assert str(error).startswith(reason.value)

    def test_every_parse_reason_is_exercised(self) -> None:
        """…but `bad_time`: no time decides, so since v2 of the event schema none is written
        (the reason stays for the dead letters of earlier releases)."""
        covered = {case[2] for case in INVALID}
        assert covered == set(RejectReason) - {RejectReason.ENCODE_FAILED, RejectReason.BAD_TIME}

    def test_size_limit_is_a_setting(self) -> None:
        assert rejection(VENDOR_EXAMPLE, max_bytes=100).reason == RejectReason.TOO_LARGE
        assert parse_event(VENDOR_EXAMPLE, max_bytes=len(VENDOR_EXAMPLE)).usn == 2265

    def test_depth_limit_is_a_setting(self) -> None:
        nested = payload(Extra=[[[[1]]]])
        assert rejection(json.dumps(nested), max_depth=4).reason == RejectReason.TOO_DEEP
        assert parse_event(json.dumps(nested), max_depth=5).usn == 2265

    def test_brackets_inside_strings_do_not_count_as_depth(self) -> None:
        assert parse_event(json.dumps(payload(DisplayName="[" * 100))).display_name == "[" * 100


class TestDeadLetter:
    """dead_letter_for keeps the payload, the reason and (if it can) the mailbox."""

    def test_from_invalid_bytes(self) -> None:
        raw = json.dumps(payload(EventType="MESSAGE_MOVED")).encode()
        error = rejection(raw)
        letter = dead_letter_for(raw, error, source="cuc1", received_at=NOW)
        assert letter.raw == raw
        assert (letter.reason, letter.field) == ("unknown_event_type", "EventType")
        assert letter.detail == error.detail
        assert (letter.source, letter.mailbox_id) == ("cuc1", "abell")
        assert letter.received_at == NOW.replace(microsecond=123000)

    def test_from_mapping_and_envelope(self) -> None:
        data = payload(USN=-5)
        letter = dead_letter_for(data, rejection(data))
        assert json.loads(letter.raw) == data
        assert letter.mailbox_id == "abell"
        envelope = {"channel": "/vmrest/mailbox/s", "data": data}
        assert dead_letter_for(envelope, rejection(envelope)).mailbox_id == "abell"

    def test_from_text_with_unusable_mailbox(self) -> None:
        for raw in ("garbage", json.dumps(payload(MailboxId="")), '{"MailboxId": "null"}'):
            letter = dead_letter_for(raw, rejection(raw))
            assert letter.mailbox_id is None
            assert letter.raw == raw.encode()

    def test_mailbox_from_truncated_json(self) -> None:
        raw = json.dumps(payload(MailboxId="cdarwin"))[:-30]
        assert dead_letter_for(raw, rejection(raw)).mailbox_id == "cdarwin"

    def test_large_payload_truncated(self) -> None:
        raw = b"x" * (DEFAULT_MAX_BYTES + 10)
        letter = dead_letter_for(raw, rejection(raw))
        assert letter.raw == raw[:MAX_DEAD_LETTER_RAW]
        assert f"truncated from {len(raw)} bytes" in letter.detail

    def test_other_errors_are_encode_failures(self) -> None:
        letter = dead_letter_for(b"{}", ValueError("boom"))
        assert (letter.reason, letter.field) == ("encode_failed", None)
        assert letter.detail == "ValueError: boom"

    def test_unserializable_mapping(self) -> None:
        deep: dict[str, Any] = {}
        node = deep
        for _ in range(100_000):
            node["a"] = node = {}
        letter = dead_letter_for(deep, InvalidEvent(RejectReason.TOO_DEEP, "deep"))
        assert letter.raw == b"<unserializable dict>"
        assert letter.mailbox_id is None

    def test_lone_surrogate_text(self) -> None:
        letter = dead_letter_for("\ud800{", rejection("\ud800{"))
        assert letter.raw == b"\\ud800{"

    @pytest.mark.parametrize("form", ["mapping", "text", "bytes"])
    def test_lone_surrogate_mailbox_id_still_writes_a_dead_letter(self, form: str) -> None:
        """Found by the hostile-input property: a MailboxId of one lone surrogate (legal as a JSON
        escape) was taken as the dead letter's key, which no record can hold, so the payload
        was lost instead of dead-lettered."""
        event = {"MailboxId": "\ud800", "USN": 1, "EventType": "NEW_MESSAGE"}
        text = json.dumps(event)
        raw: object = {"mapping": event, "text": text, "bytes": text.encode()}[form]
        with pytest.raises(InvalidEvent) as caught:
            parse_event(raw)  # type: ignore[arg-type]
        letter = dead_letter_for(raw, caught.value)
        assert codec.decode(codec.encode(letter)) == letter


class TestNamedMailbox:
    """The mailbox a rejected payload names (for its dead letter's key and its gap repair), read
    as leniently as can be; never raises."""

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ({"MailboxId": " abell "}, "abell"),
            ({"channel": "/c", "data": {"MailboxId": 4711, "USN": "x"}}, "4711"),
            (b'{"MailboxId": 4711, "USN": "x"}', "4711"),
            (b'{"USN": 1, "MailboxId" :  "abell"', "abell"),  # truncated JSON
            ("EventType=NEW_MESSAGE", None),
            ({"MailboxId": True}, None),
            ({"MailboxId": "null"}, None),
            ({"MailboxId": "   "}, None),
            ({"MailboxId": "\ud800"}, None),
            ({"data": "x", "channel": "/c"}, None),
        ],
    )
    def test_named_mailbox(self, raw: Any, expected: str | None) -> None:
        assert named_mailbox(raw) == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ({"channel": "/vmrest/mailbox/sub-9", "data": "junk"}, "sub-9"),
            ({"channel": "/other", "data": {"SubscriptionId": "sub-8"}}, "sub-8"),
            ({"SubscriptionId": "sub-7"}, "sub-7"),
            ({"SubscriptionId": 7}, None),
            ({"channel": "/vmrest/mailbox/", "data": {}}, None),
            (b"{}", None),
        ],
    )
    def test_named_subscription(self, raw: Any, expected: str | None) -> None:
        assert named_subscription(raw) == expected

    def test_dead_letter_keyed_by_the_decoded_payload(self) -> None:
        message = {"channel": "/c", "data": {"MailboxId": 4711, "USN": "x"}}
        raw = json.dumps(message).encode()
        error = InvalidEvent(RejectReason.BAD_TYPE, "x", "USN")
        assert dead_letter_for(raw, error, decoded=message).mailbox_id == "4711"
