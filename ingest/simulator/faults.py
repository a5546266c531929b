"""Fault switches and the malformed payloads the simulator can inject.

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

    def clear(self) -> None:
        self.rest_latency = 0.0
        self.storm_until = 0.0
        self.duplicate_ratio = 0.0
        self.malformed_ratio = 0.0


class MalformedKind(enum.StrEnum):
    """How an injected payload is broken. None of them is part of the ground truth."""

    MISSING_FIELD = "missing_field"
    """A required key (USN, EventType, MailboxId, MessageInfo or EventTime) is absent."""
    MISTYPED_USN = "mistyped_usn"
    """USN is a non-numeric string."""
    MISTYPED_MESSAGE_INFO = "mistyped_message_info"
    """MessageInfo is a string instead of an array."""
    EMPTY_MESSAGE_INFO = "empty_message_info"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    BAD_TIME = "bad_time"
    """EventTime does not parse."""
    NOT_AN_OBJECT = "not_an_object"
    """`data` is a string or an array rather than an event object."""


_REQUIRED = ("USN", "EventType", "MailboxId", "MessageInfo", "EventTime")


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
        case MalformedKind.BAD_TIME:
            data["EventTime"] = rng.choice(("25:61:00 XM 13/45/2008", "yesterday", ""))
        case MalformedKind.NOT_AN_OBJECT:
            return rng.choice(("EventType=NEW_MESSAGE", [data]))
    return data
