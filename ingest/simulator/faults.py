"""Fault switches, and the broken payloads the simulator can send: malformed ones (the pipeline
dead-letters them) and irregular ones (a field that does not decide folder state in a form the
pipeline does not read: it publishes the event all the same).

The switches are plain mutable state read by the REST API and the Notifier on every request/event;
`Simulator` exposes them as methods and the admin endpoint as `POST /_sim/fault/<name>`.
"""

from __future__ import annotations

import copy
import enum
import random
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Faults:
    """Currently active faults (all off by default)."""

    rest_latency: float = 0.0
    """Seconds added to every REST response, while holding a throttle slot (a slow server)."""
    storm_until: float = 0.0
    """Event-loop time until which every REST call answers 503."""
    duplicate_ratio: float = 0.0
    """Share of published events sent a second time, verbatim."""
    malformed_ratio: float = 0.0
    """Share of published events followed by a malformed payload on the same channel."""
    corrupt_ratio: float = 0.0
    """Share of published events sent broken *instead* of valid: half of them malformed (their
    change reaches a projection only through the gap repair a dead letter triggers), half
    irregular (the event still carries its change)."""

    def clear(self) -> None:
        self.rest_latency = 0.0
        self.storm_until = 0.0
        self.duplicate_ratio = 0.0
        self.malformed_ratio = 0.0
        self.corrupt_ratio = 0.0


class MalformedKind(enum.StrEnum):
    """How an injected payload is broken so that it cannot be an event: a field that decides
    folder state (MailboxId, EventType, USN, MessageInfo/MessageId) is missing or unreadable."""

    MISSING_FIELD = "missing_field"
    """A required key (USN, EventType, MailboxId or MessageInfo) is absent."""
    MISTYPED_USN = "mistyped_usn"
    """USN is a non-numeric string."""
    MISTYPED_MESSAGE_INFO = "mistyped_message_info"
    """MessageInfo is a string instead of an array."""
    EMPTY_MESSAGE_INFO = "empty_message_info"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    MISTYPED_MESSAGE_ID = "mistyped_message_id"
    """A MessageId is a number."""
    NOT_AN_OBJECT = "not_an_object"
    """`data` is a string or an array rather than an event object."""


class IrregularKind(enum.StrEnum):
    """How a payload's display field is odd in a way a real server in another locale or version
    may send (the vendor document gives no formats): the event still says what happened."""

    RECEIVE_TIME_NA = "receive_time_na"
    """ReceiveTime is "N/A"."""
    RECEIVE_TIME_LOCALE = "receive_time_locale"
    """ReceiveTime day first, 24-hour: `30/10/2008 16:15:40`."""
    EVENT_TIME_ZONE = "event_time_zone"
    """EventTime with a zone suffix."""
    NUMERIC_CALLER_ANI = "numeric_caller_ani"
    """CallerAni is a JSON number."""
    NUMERIC_DISPLAY_NAME = "numeric_display_name"
    """DisplayName is a JSON number."""
    NO_SUBSCRIPTION_ID = "no_subscription_id"
    """SubscriptionId is absent (the channel still names it)."""


_REQUIRED = ("USN", "EventType", "MailboxId", "MessageInfo")


def malformed(kind: MalformedKind, valid: dict[str, Any], rng: random.Random) -> object:
    """A broken variant of the valid event `valid` (which is left untouched)."""
    data = copy.deepcopy(valid)
    match kind:
        case MalformedKind.MISSING_FIELD:
            del data[rng.choice(_REQUIRED)]
        case MalformedKind.MISTYPED_USN:
            data["USN"] = "usn-" + str(data["USN"])
        case MalformedKind.MISTYPED_MESSAGE_INFO:
            data["MessageInfo"] = "MessageId=" + data["MessageInfo"][0]["MessageId"]
        case MalformedKind.EMPTY_MESSAGE_INFO:
            data["MessageInfo"] = []
        case MalformedKind.UNKNOWN_EVENT_TYPE:
            data["EventType"] = rng.choice(("MESSAGE_FORWARDED", "FOLDER_RENAMED", "NEW_MESSAGES"))
        case MalformedKind.MISTYPED_MESSAGE_ID:
            data["MessageInfo"][0]["MessageId"] = rng.randrange(10**9)
        case MalformedKind.NOT_AN_OBJECT:
            return rng.choice(("EventType=NEW_MESSAGE", [data]))
    return data


def irregular(kind: IrregularKind, valid: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """An odd but readable variant of the valid event `valid` (which is left untouched)."""
    data = copy.deepcopy(valid)
    info = data["MessageInfo"][0]
    match kind:
        case IrregularKind.RECEIVE_TIME_NA:
            info["ReceiveTime"] = "N/A"
        case IrregularKind.RECEIVE_TIME_LOCALE:
            info["ReceiveTime"] = f"{rng.randrange(13, 29)}/10/2008 16:15:40"
        case IrregularKind.EVENT_TIME_ZONE:
            data["EventTime"] = f"{data['EventTime']} {rng.choice(('UTC', '+0100', 'PST'))}"
        case IrregularKind.NUMERIC_CALLER_ANI:
            info["CallerAni"] = rng.randrange(10**9, 10**10)
        case IrregularKind.NUMERIC_DISPLAY_NAME:
            data["DisplayName"] = rng.randrange(10**6)
        case IrregularKind.NO_SUBSCRIPTION_ID:
            del data["SubscriptionId"]
    return data


def corrupted(valid: dict[str, Any], rng: random.Random) -> tuple[str, object]:
    """(kind, payload data) of the corrupt fault: malformed or irregular, half and half."""
    if rng.random() < 0.5:
        kind = rng.choice(list(MalformedKind))
        return kind.value, malformed(kind, valid, rng)
    irregular_kind = rng.choice(list(IrregularKind))
    return irregular_kind.value, irregular(irregular_kind, valid, rng)
