"""Raw Comet notification → validated, normalized `MailboxEvent`.

The one place where untrusted server input is checked. `parse_event` raises only `InvalidEvent`,
whose `reason` is a `RejectReason` value, so every rejection can be dead-lettered and counted.

Leniency, decided once here (and tested):
- A Bayeux envelope `{"channel": …, "data": {…}}` is unwrapped; a missing SubscriptionId is then
  taken from a `/vmrest/mailbox/<subscriptionId>` channel.
- `USN` may be a JSON integer or a string of ASCII digits ("2265"); anything else (bool, float,
  "12a", "-1") is `bad_type`. It must be ≥ 0 and fit an Avro long (`bad_value`).
- The string "null" and JSON null mean absent. For a required field that is `missing_field`.
- `MessageInfo` may be a single object instead of a one-element array (the JSON quirk Cisco's
  serializer shows in folder listings); `MessageId` loses a folder-listing `0:` prefix.
- Unknown extra fields are ignored.

Times: `EventTime` / `ReceiveTime` carry no zone; each is read in its configured zone
(`TimeZones`) by `ingest.cumi.timestamps` and stored as an aware UTC datetime next to the raw
string.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from ingest import speedups
from ingest.cumi import jsonload
from ingest.cumi.timestamps import parse_cumi_time
from ingest.errors import InvalidEvent
from ingest.events import (
    DeadLetter,
    EventType,
    MailboxEvent,
    MessageInfo,
    RejectReason,
    bare_message_id,
)
from ingest.ops.clock import SYSTEM_CLOCK, to_millis
from ingest.speedups import fast_constructor

UTC = ZoneInfo("UTC")
DEFAULT_MAX_BYTES = 1024 * 1024
"""Largest accepted payload. A real notification is well under 4 KiB."""
DEFAULT_MAX_DEPTH = 32
"""Deepest accepted JSON nesting. A real notification nests 3 levels."""
MAX_DEAD_LETTER_RAW = 256 * 1024
"""Dead letters keep at most this much of the raw payload, so one fits a default Kafka message."""
MAX_USN = 2**63 - 1  # Avro long

_EVENT_TYPES: dict[str, EventType] = {t.value: t for t in EventType}
_CHANNEL_PREFIX = "/vmrest/mailbox/"
_MAILBOX_ID_IN_TEXT = re.compile(rb'"MailboxId"\s*:\s*"([^"\\]{1,256})"')


@dataclass(frozen=True, slots=True)
class TimeZones:
    """The zones the server's zone-less time stamps are written in (docs/design.md §3)."""

    event_time: dt.tzinfo = UTC
    """Zone of `EventTime`; Cisco's example suggests UTC."""
    receive_time: dt.tzinfo = UTC
    """Zone of `ReceiveTime`; the server's local zone (a setting)."""


def parse_event(
    raw: bytes | bytearray | memoryview | str | Mapping[str, Any],
    *,
    zones: TimeZones = TimeZones(),
    source: str | None = None,
    now: Callable[[], dt.datetime] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> MailboxEvent:
    """Validate and normalize one Comet notification; raise `InvalidEvent` for anything else.

    `raw` is the payload as received (bytes or text), or the already-decoded JSON object a Bayeux
    client hands over (size and depth limits are then the transport's business). `now` is the
    worker clock for `ingested_at` (default UTC now), truncated to milliseconds as Avro keeps it.
    """
    obj = _load(raw, max_bytes, max_depth)
    data, channel = _unwrap(obj)
    ingested_at = to_millis(now()) if now else SYSTEM_CLOCK.utc_now()
    event = _plain_event(data, zones, source, ingested_at) if speedups.ENABLED else None
    if event is None:
        event = _checked_event(data, channel, zones, source, ingested_at)
    return event


def _checked_event(
    data: Mapping[str, Any],
    channel: str | None,
    zones: TimeZones,
    source: str | None,
    ingested_at: dt.datetime,
) -> MailboxEvent:
    """Every field checked in turn, raising `InvalidEvent` for the first one that is wrong."""
    mailbox_id = _required_str(data, "MailboxId")
    if not mailbox_id.strip():
        raise InvalidEvent(RejectReason.BAD_VALUE, "empty MailboxId", "MailboxId")
    event_type = _event_type(data)
    usn = _usn(data)
    event_time_raw = _required_str(data, "EventTime")
    event_time = _time(event_time_raw, zones.event_time, "EventTime")
    subscription_id = _subscription_id(data, channel)
    messages = _messages(data.get("MessageInfo"), zones.receive_time)
    return MailboxEvent(
        mailbox_id=mailbox_id,
        usn=usn,
        event_type=event_type,
        event_time=event_time,
        event_time_raw=event_time_raw,
        subscription_id=subscription_id,
        messages=messages,
        ingested_at=ingested_at,
        display_name=_optional_str(data, "DisplayName"),
        source=source,
    )


def _plain_event(
    data: Mapping[str, Any], zones: TimeZones, source: str | None, ingested_at: dt.datetime
) -> MailboxEvent | None:
    """The event, if the notification is the plain, valid kind the server sends (ASCII strings,
    an integer USN, a MessageInfo array); None for anything else — `_checked_event` then decides,
    with the reason. The same result as `_checked_event` in about half the time (no per-field
    calls; a property test compares the two): this is the worker's hot path."""
    mailbox_id = data.get("MailboxId")
    event_type = data.get("EventType")
    usn = data.get("USN")
    event_time_raw = data.get("EventTime")
    subscription_id = data.get("SubscriptionId")
    infos = data.get("MessageInfo")
    display_name = data.get("DisplayName")
    if not (
        mailbox_id.__class__ is str
        and mailbox_id.isascii()
        and mailbox_id != "null"
        and mailbox_id.strip()
        and event_type.__class__ is str
        and usn.__class__ is int
        and 0 <= usn <= MAX_USN
        and event_time_raw.__class__ is str
        and subscription_id.__class__ is str
        and subscription_id.isascii()
        and subscription_id != "null"
        and subscription_id.strip()
        and infos.__class__ is list
        and infos
    ):
        return None
    kind = _EVENT_TYPES.get(event_type)
    event_time = (
        parse_cumi_time(event_time_raw, zones.event_time) if event_time_raw.isascii() else None
    )
    if kind is None or event_time is None:
        return None
    if display_name == "null" or display_name is None:
        display_name = None
    elif display_name.__class__ is not str or not display_name.isascii():
        return None
    messages = []
    zone = zones.receive_time
    for item in infos:
        message = _plain_message(item, zone)
        if message is None:
            return None
        messages.append(message)
    return _new_event(
        mailbox_id,
        usn,
        kind,
        event_time,
        event_time_raw,
        subscription_id,
        tuple(messages),
        ingested_at,
        display_name,
        source,
    )


_MESSAGE_TEXT_FIELDS = ("CallerAni", "Sender", "MsgType", "Priority", "ReceiveTime")
_new_event = fast_constructor(MailboxEvent)
_new_message = fast_constructor(MessageInfo)


def _plain_message(item: Any, zone: dt.tzinfo) -> MessageInfo | None:
    """`_message` for a plain MessageInfo entry; None for anything else."""
    if item.__class__ is not dict:
        return None
    message_id = item.get("MessageId")
    if message_id.__class__ is not str or not message_id.isascii() or message_id == "null":
        return None
    message_id = bare_message_id(message_id)
    if not message_id.strip():
        return None
    texts: list[str | None] = []
    for name in _MESSAGE_TEXT_FIELDS:
        value = item.get(name)
        if value is None or value == "null":
            texts.append(None)
        elif value.__class__ is str and value.isascii():
            texts.append(value)
        else:
            return None
    caller_ani, sender, msg_type, priority, receive_raw = texts
    receive_time = None
    if receive_raw:
        receive_time = parse_cumi_time(receive_raw, zone)
        if receive_time is None:
            return None
    return _new_message(
        message_id, caller_ani, sender, msg_type, priority, receive_time, receive_raw
    )


def dead_letter_for(
    raw: bytes | str | Mapping[str, Any] | object,
    error: Exception,
    source: str | None = None,
    received_at: dt.datetime | None = None,
) -> DeadLetter:
    """The dead-letter record for a payload `parse_event` (or the encoder) rejected.

    Keeps the payload verbatim (at most `MAX_DEAD_LETTER_RAW` bytes, truncation noted in `detail`)
    and extracts the MailboxId on a best-effort basis so the record can be keyed by mailbox.
    """
    payload = _raw_bytes(raw)
    if isinstance(error, InvalidEvent):
        reason, detail, field = str(error.reason), error.detail, error.field
    else:
        reason, field = RejectReason.ENCODE_FAILED.value, None
        detail = f"{type(error).__name__}: {error}"
    if len(payload) > MAX_DEAD_LETTER_RAW:
        detail = f"{detail} (raw truncated from {len(payload)} bytes)"
        payload = payload[:MAX_DEAD_LETTER_RAW]
    return DeadLetter(
        raw=payload,
        reason=reason,
        detail=detail,
        received_at=to_millis(received_at) if received_at else SYSTEM_CLOCK.utc_now(),
        field=field,
        source=source,
        mailbox_id=_guess_mailbox_id(raw),
    )


# --- decoding ---------------------------------------------------------------------------------


def _load(raw: object, max_bytes: int, max_depth: int) -> Mapping[str, Any]:
    # a dict (the worker's case: the Bayeux client decoded it) or bytes first: isinstance against
    # the Mapping ABC costs a microsecond
    if raw.__class__ is dict:
        return raw
    if isinstance(raw, bytearray | memoryview):
        raw = bytes(raw)
    if isinstance(raw, bytes):
        if len(raw) > max_bytes:
            raise InvalidEvent(RejectReason.TOO_LARGE, f"{len(raw)} bytes exceeds {max_bytes}")
        brackets = raw.count(b"{") + raw.count(b"[")
    elif isinstance(raw, str):
        # characters <= UTF-8 bytes <= 4 * characters: only count bytes when it can matter
        if len(raw) > max_bytes or (
            len(raw) * 4 > max_bytes and len(raw.encode("utf-8", "surrogatepass")) > max_bytes
        ):
            raise InvalidEvent(RejectReason.TOO_LARGE, f"payload exceeds {max_bytes} bytes")
        brackets = raw.count("{") + raw.count("[")
    elif isinstance(raw, Mapping):
        return raw
    else:
        raise InvalidEvent(RejectReason.NOT_AN_OBJECT, f"payload is a {type(raw).__name__}")
    try:
        # orjson allocates before it refuses deep nesting; json.loads refuses early
        obj = jsonload.loads(raw) if brackets <= max_depth else json.loads(raw)
    except RecursionError:
        raise InvalidEvent(
            RejectReason.TOO_DEEP, "nesting exceeds the JSON decoder's limit"
        ) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, too many integer digits
        raise InvalidEvent(RejectReason.NOT_JSON, _short(str(e))) from None
    if not isinstance(obj, dict):
        raise InvalidEvent(RejectReason.NOT_AN_OBJECT, f"top level is a JSON {_json_type(obj)}")
    # the bracket count bounds the depth; only walk the tree when it could be too deep
    if brackets > max_depth and _depth_exceeds(obj, max_depth):
        raise InvalidEvent(RejectReason.TOO_DEEP, f"nesting deeper than {max_depth}")
    return obj


def _depth_exceeds(obj: object, limit: int) -> bool:
    """Iterative (no recursion) check whether containers nest deeper than `limit`."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _unwrap(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """Strip a Bayeux envelope, returning the notification and the channel it came on."""
    if "data" not in obj or "channel" not in obj:
        return obj, None
    data, channel = obj["data"], obj["channel"]
    if data.__class__ is not dict and not isinstance(data, Mapping):
        raise InvalidEvent(RejectReason.NOT_AN_OBJECT, "Bayeux data is not an object", "data")
    return data, channel if isinstance(channel, str) else None


# --- fields -----------------------------------------------------------------------------------


def _absent(value: object) -> bool:
    return value is None or value == "null"


def _check_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(
            RejectReason.BAD_TYPE, f"expected a string, got {_json_type(value)}", field
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(RejectReason.BAD_VALUE, "not valid Unicode text", field) from None
    return value


def _required_str(data: Mapping[str, Any], field: str, prefix: str = "") -> str:
    """`data[field]`, a string; `prefix` locates `data` in the payload for error messages."""
    value = data.get(field)
    if value.__class__ is str and value.isascii() and value != "null":  # the hot path
        return value
    if _absent(value):
        raise InvalidEvent(RejectReason.MISSING_FIELD, f"{field} is required", prefix + field)
    return _check_str(value, prefix + field)


def _optional_str(data: Mapping[str, Any], field: str, prefix: str = "") -> str | None:
    value = data.get(field)
    if value.__class__ is str and value.isascii():  # the hot path: plain text
        return None if value == "null" else value
    return None if _absent(value) else _check_str(value, prefix + field)


def _event_type(data: Mapping[str, Any]) -> EventType:
    name = _required_str(data, "EventType")
    try:
        return _EVENT_TYPES[name]
    except KeyError:
        raise InvalidEvent(
            RejectReason.UNKNOWN_EVENT_TYPE, f"unknown EventType {_short(name)!r}", "EventType"
        ) from None


def _usn(data: Mapping[str, Any]) -> int:
    value = data.get("USN")
    if _absent(value):
        raise InvalidEvent(RejectReason.MISSING_FIELD, "USN is required", "USN")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        shown = _short(repr(value))
        raise InvalidEvent(RejectReason.BAD_TYPE, f"USN must be an integer, got {shown}", "USN")
    if not 0 <= value <= MAX_USN:
        raise InvalidEvent(RejectReason.BAD_VALUE, f"USN {_short(str(value))} out of range", "USN")
    return value


def _subscription_id(data: Mapping[str, Any], channel: str | None) -> str:
    value = data.get("SubscriptionId")
    if _absent(value) and channel and channel.startswith(_CHANNEL_PREFIX):
        value = channel[len(_CHANNEL_PREFIX) :]
    if _absent(value):
        raise InvalidEvent(
            RejectReason.MISSING_FIELD, "SubscriptionId is required", "SubscriptionId"
        )
    subscription_id = _check_str(value, "SubscriptionId")
    if not subscription_id.strip():
        raise InvalidEvent(RejectReason.BAD_VALUE, "empty SubscriptionId", "SubscriptionId")
    return subscription_id


def _messages(value: object, zone: dt.tzinfo) -> tuple[MessageInfo, ...]:
    if _absent(value):
        raise InvalidEvent(RejectReason.MISSING_FIELD, "MessageInfo is required", "MessageInfo")
    if type(value) is not list and isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        detail = f"expected an array, got {_json_type(value)}"
        raise InvalidEvent(RejectReason.BAD_TYPE, detail, "MessageInfo")
    if not value:
        raise InvalidEvent(RejectReason.EMPTY_MESSAGE_INFO, "no messages", "MessageInfo")
    return tuple(_message(item, i, zone) for i, item in enumerate(value))


def _message(item: object, index: int, zone: dt.tzinfo) -> MessageInfo:
    where = f"MessageInfo[{index}]"
    if type(item) is not dict and not isinstance(item, Mapping):
        detail = f"expected an object, got {_json_type(item)}"
        raise InvalidEvent(RejectReason.BAD_TYPE, detail, where)
    prefix = where + "."
    message_id = bare_message_id(_required_str(item, "MessageId", prefix))
    if not message_id.strip():
        raise InvalidEvent(RejectReason.BAD_VALUE, "empty MessageId", prefix + "MessageId")
    receive_raw = _optional_str(item, "ReceiveTime", prefix)
    return MessageInfo(
        message_id,
        _optional_str(item, "CallerAni", prefix),
        _optional_str(item, "Sender", prefix),
        _optional_str(item, "MsgType", prefix),
        _optional_str(item, "Priority", prefix),
        _time(receive_raw, zone, prefix + "ReceiveTime") if receive_raw else None,
        receive_raw,
    )


def _time(raw: str, zone: dt.tzinfo, field: str) -> dt.datetime:
    parsed = parse_cumi_time(raw, zone)  # a cache hit costs a tenth of parsing
    if parsed is None:
        detail = f"{_short(raw)!r} is not a valid time like '11:15:40 PM 10/30/2008'"
        raise InvalidEvent(RejectReason.BAD_TIME, detail, field)
    return parsed


# --- helpers ----------------------------------------------------------------------------------


_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "boolean"),  # before int: bool is an int subclass
    ((int, float), "number"),
    (str, "string"),
    ((list, tuple), "array"),
    (Mapping, "object"),
)


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    for types, name in _JSON_TYPES:
        if isinstance(value, types):
            return name
    return type(value).__name__


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _raw_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "backslashreplace")  # lone surrogates stay visible
    try:
        return json.dumps(raw, default=repr, ensure_ascii=False).encode("utf-8", "backslashreplace")
    except (ValueError, TypeError, RecursionError):
        return f"<unserializable {type(raw).__name__}>".encode()


def _encodable(text: str) -> bool:
    """Whether `text` can go into a record (UTF-8): a lone surrogate, which JSON allows as an
    escape, cannot — then the dead letter is keyed by nothing rather than not written at all."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _guess_mailbox_id(raw: object) -> str | None:
    """MailboxId from whatever the payload is, if it plainly contains one; never raises."""
    if isinstance(raw, Mapping):
        data = raw.get("data") if "channel" in raw else raw
        value = data.get("MailboxId") if isinstance(data, Mapping) else None
        if isinstance(value, str) and value.strip() and value != "null" and _encodable(value):
            return _short(value, 256)
        return None
    text = _raw_bytes(raw)[:DEFAULT_MAX_BYTES]
    match = _MAILBOX_ID_IN_TEXT.search(text)
    if match is None:
        return None
    value = match.group(1).decode("utf-8", "replace")
    return value if value.strip() and value != "null" else None
