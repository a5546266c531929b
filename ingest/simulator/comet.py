"""The Comet event wire format, exactly as Unity Connection's Notifier sends it.

Shape, key order and value types follow the vendor example (reference/cumi-comet-notifications.md):
`MessageInfo`, `USN` (a JSON number), `EventTime`, `SubscriptionId`, `MailboxId`, `EventType`,
`DisplayName`; each MessageInfo has `CallerAni`, `Sender`, `MessageId`, `ReceiveTime`, `Priority`,
`MsgType`, with the string "null" for an absent CallerAni/Sender. Times are `%I:%M:%S %p %m/%d/%Y`
without a zone: EventTime in UTC, ReceiveTime in the server's zone (the example differs by the US
Pacific daylight offset).

The event types are declared here rather than imported from `ingest.events` on purpose: the
simulator is a stand-in for the vendor's server and must not drift along with the code it tests.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import time
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

NULL = "null"
"""How the server spells an absent CallerAni/Sender."""

CHANNEL_PREFIX = "/vmrest/mailbox/"


class EventType(enum.StrEnum):
    """The EventType strings the vendor documents (the simulator never sends another one except as
    a deliberately malformed payload)."""

    NEW_MESSAGE = "NEW_MESSAGE"
    SAVED_MESSAGE = "SAVED_MESSAGE"
    UNREAD_MESSAGE = "UNREAD_MESSAGE"
    DELETED_MESSAGE = "DELETED_MESSAGE"
    DELETED_MESSAGE_CREATE = "DELETED_MESSAGE_CREATE"
    DELETED_MESSAGE_READ = "DELETED_MESSAGE_READ"
    DELETED_MESSAGE_UNREAD = "DELETED_MESSAGE_UNREAD"
    DELETED_MESSAGE_DELETE = "DELETED_MESSAGE_DELETE"


@functools.lru_cache(maxsize=4096)
def local_time(epoch_second: int, zone: dt.tzinfo) -> str:
    """`format_time` of a whole epoch second in `zone`, cached: messages arrive in bursts."""
    return format_time(dt.datetime.fromtimestamp(epoch_second, zone))


def format_time(when: dt.datetime) -> str:
    """`04:15:40 PM 10/30/2008`. AM/PM spelled out by hand: `%p` depends on the C locale."""
    hour = when.hour % 12 or 12
    half = "AM" if when.hour < 12 else "PM"
    return f"{hour:02d}:{when.minute:02d}:{when.second:02d} {half} {when:%m/%d/%Y}"


class EventClock:
    """EventTime strings (UTC) for the current second, formatted once per second not per event."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    @property
    def second(self) -> int:
        """The epoch second of the last `now()`."""
        return self._second

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = format_time(dt.datetime.fromtimestamp(second, dt.UTC))
        return self._text


def channel_of(subscription_id: str) -> str:
    """The Bayeux channel a subscription's events are published on."""
    return CHANNEL_PREFIX + subscription_id


def event_data(
    *,
    infos: Sequence[dict[str, str]],
    usn: int,
    event_time: str,
    subscription_id: str,
    mailbox_id: str,
    event_type: str,
    display_name: str,
) -> dict[str, Any]:
    """The `data` of one Comet event, keys in the vendor's order."""
    return {
        "MessageInfo": list(infos),
        "USN": usn,
        "EventTime": event_time,
        "SubscriptionId": subscription_id,
        "MailboxId": mailbox_id,
        "EventType": event_type,
        "DisplayName": display_name,
    }


_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""Built once: `json.dumps` with non-default arguments builds a new encoder on every call."""


def encode(message: object) -> bytes:
    """Compact JSON bytes, as a server sends them."""
    return _ENCODER.encode(message).encode()


quoted: Callable[[str], str] = encode_basestring_ascii
"""`text` as a JSON string literal, exactly as `_ENCODER` writes strings (the C routine itself)."""


def event_message(
    *,
    channel: str,
    infos_json: str,
    usn: int,
    event_time: str,
    subscription_id: str,
    mailbox_id: str,
    event_type: str,
    display_name: str,
) -> bytes:
    """The Bayeux message of one Comet event, byte for byte what
    `bayeux_message(channel, event_data(...))` gives, assembled from pre-encoded parts: this is
    the simulator's hottest path. `infos_json` is the encoded MessageInfo objects, comma-joined."""
    return (
        f'{{"channel":{quoted(channel)},"data":{{"MessageInfo":[{infos_json}],"USN":{usn},'
        f'"EventTime":{quoted(event_time)},"SubscriptionId":{quoted(subscription_id)},'
        f'"MailboxId":{quoted(mailbox_id)},"EventType":{quoted(event_type)},'
        f'"DisplayName":{quoted(display_name)}}}}}'
    ).encode()


def bayeux_message(channel: str, data: object) -> bytes:
    """One Bayeux event message, encoded once and reused for every recipient session."""
    return encode({"channel": channel, "data": data})
