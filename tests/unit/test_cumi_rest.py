"""CUMI REST parsing and retry policy (pure parts; the socket-level tests run against the simulator
in tests/integration/test_cumi_rest.py)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ingest.cumi.rest import (
    RestError,
    as_list,
    parse_folder,
    parse_message_page,
    parse_subscription_id,
    retry_after_seconds,
)


class TestSingleObjectQuirk:
    """One element comes as an object, none as a missing key; both read as lists."""

    @pytest.mark.parametrize(
        ("value", "expected"), [(None, []), ({"a": 1}, [{"a": 1}]), ([1, 2], [1, 2])]
    )
    def test_as_list(self, value: object, expected: list[object]) -> None:
        assert as_list(value) == expected

    def test_single_message_page(self) -> None:
        body = {
            "@total": "1",
            "Message": {
                "MsgId": "0:72204bd7-e5c3-446e-adb6-ae5f80db26fb",
                "Read": "true",
                "ArrivalTime": "1225408540000",
                "CallerId": {"CallerNumber": "4085551234", "CallerName": "null"},
                "From": {"DisplayName": "Alexander Bell", "SmtpAddress": "null"},
                "Priority": "Normal",
                "MsgType": "Voice",
            },
        }
        messages, total = parse_message_page(json.dumps(body).encode())
        assert total == 1
        (m,) = messages
        assert m.message_id == "72204bd7-e5c3-446e-adb6-ae5f80db26fb"
        assert m.read is True
        assert m.arrival_time == dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC)
        assert (m.caller_id, m.sender, m.priority, m.msg_type) == (
            "4085551234",
            "Alexander Bell",
            "Normal",
            "Voice",
        )

    def test_empty_and_list_pages(self) -> None:
        assert parse_message_page(b'{"@total": "0"}') == ([], 0)
        body = {"@total": 2, "Message": [{"MsgId": "0:a", "Read": "false"}, {"MsgId": "b"}]}
        messages, total = parse_message_page(json.dumps(body).encode())
        assert total == 2
        assert [(m.message_id, m.read) for m in messages] == [("a", False), ("b", False)]

    def test_entries_without_id_are_skipped(self) -> None:
        body = {"Message": [{"Read": "true"}, "junk", {"MsgId": "0:x"}]}
        messages, total = parse_message_page(json.dumps(body).encode())
        assert [m.message_id for m in messages] == ["x"]
        assert total is None


class TestResponses:
    """requestnotification bodies and folder resources in their plausible shapes."""

    @pytest.mark.parametrize(
        "body",
        [
            b"00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c",
            b'"00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c"\n',
            b'{"subscriptionId": "00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c"}',
        ],
    )
    def test_subscription_id(self, body: bytes) -> None:
        assert parse_subscription_id(body) == "00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c"

    @pytest.mark.parametrize("body", [b"", b"  ", b'""', b"has space", b"/a/b", b"{}", b"[1]"])
    def test_bad_subscription_id(self, body: bytes) -> None:
        with pytest.raises(RestError):
            parse_subscription_id(body)

    def test_folder(self) -> None:
        assert parse_folder(b'{"USN": "2265", "MessageCount": 3}').usn == 2265
        wrapped = parse_folder(b'{"Folder": {"USN": 7, "MessageCount": "0"}}')
        assert (wrapped.usn, wrapped.message_count) == (7, 0)
        with pytest.raises(RestError):
            parse_folder(b'{"MessageCount": 3}')
        with pytest.raises(RestError):
            parse_folder(b"<Folder/>")


class TestRetryPolicy:
    """Retry-After honoured and bounded (the backoff itself: test_backoff.py)."""

    def test_retry_after(self) -> None:
        now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        assert retry_after_seconds("3") == 3.0
        assert retry_after_seconds("99999") == 300.0
        assert retry_after_seconds("Mon, 01 Jan 2024 00:00:05 GMT", now) == 5.0
        assert retry_after_seconds("Sun, 31 Dec 2023 23:00:00 GMT", now) == 0.0
        assert retry_after_seconds("soon") is None
        assert retry_after_seconds(None) is None
