"""Raw Comet notification → validated, normalized `MailboxEvent`.

The one place where untrusted server input is checked. `parse_event` raises only `InvalidEvent`,
whose `reason` is a `RejectReason` value, so every rejection can be dead-lettered and counted.

What makes a notification invalid (docs/design.md §3): only the fields that decide folder state
— MailboxId, EventType, USN and each MessageInfo's MessageId (so MessageInfo itself). Every other
field is read *leniently*: a value that cannot be read (a ReceiveTime of "N/A" or in another
locale's format, a CallerAni or DisplayName sent as a JSON number, a missing SubscriptionId) leaves
its parsed field null, keeps what was sent (`*_raw` fields, and `MailboxEvent.unparsed`, which
names each such field with its raw text), and the event is published with its folder change. The
worker counts them by field (`cumi_worker_fields_unparsed_total`).

Leniency, decided once here (and tested):
- A Bayeux envelope `{"channel": …, "data": {…}}` is unwrapped; a missing SubscriptionId is then
  taken from a `/vmrest/mailbox/<subscriptionId>` channel.
- `USN` may be a JSON integer or a string of ASCII digits ("2265"); anything else (bool, float,
  "12a", "-1") is `bad_type`. It must be ≥ 0 and fit an Avro long (`bad_value`).
- The string "null" and JSON null mean absent. For a deciding field that is `missing_field`; for
  SubscriptionId and EventTime (always sent) it is an unparsed field with no raw text.
- `MessageInfo` may be a single object instead of a one-element array (the JSON quirk Cisco's
  serializer shows in folder listings); `MessageId` loses a folder-listing `0:` prefix.
- Text fields (CallerAni, Sender, MsgType, Priority, DisplayName, SubscriptionId) take JSON
  strings only: a number is not read as text (its raw text is kept in `unparsed`), so the one
  rule is "a JSON string, or unparsed".
- Unknown extra fields are ignored.

Times: `EventTime` / `ReceiveTime` carry no zone and have one documented format,
`11:15:40 PM 10/30/2008`; each is read in its configured zone (`TimeZones`) by
`ingest.cumi.timestamps` and stored as an aware UTC datetime next to the raw string. Anything else
(another locale's `30/10/2008 16:15:40`, a zone suffix, "N/A") is not guessed at: unparsed. The
record needs a time for its Kafka timestamp and the projection's `updated_at`, so an unparsed
EventTime is replaced by `ingested_at` (the worker's receive time) — listed in `unparsed`, so a
consumer can tell.
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
    UnparsedField,
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
_MAILBOX_ID_IN_TEXT = re.compile(rb'"MailboxId"\s*:\s*(?:"([^"\\]{1,256})"|(\d{1,64})[,}\s])')


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
    """Every field checked in turn: the deciding ones raise `InvalidEvent` for the first one that
    is wrong; the others are read leniently, into `unparsed`."""
    mailbox_id = _required_str(data, "MailboxId")
    if not mailbox_id.strip():
        raise InvalidEvent(RejectReason.BAD_VALUE, "empty MailboxId", "MailboxId")
    event_type = _event_type(data)
    usn = _usn(data)
    infos = _message_entries(data.get("MessageInfo"))
    unparsed: list[UnparsedField] = []
    event_time_raw, event_time = _event_time(data, zones.event_time, unparsed)
    subscription_id = _subscription_id(data, channel, unparsed)
    display_name = _text(data, "DisplayName", "", unparsed)
    messages = tuple(_message(item, i, zones.receive_time, unparsed) for i, item in infos)
    return MailboxEvent(
        mailbox_id=mailbox_id,
        usn=usn,
        event_type=event_type,
        event_time=event_time or ingested_at,
        event_time_raw=event_time_raw,
        subscription_id=subscription_id,
        messages=messages,
        ingested_at=ingested_at,
        display_name=display_name,
        source=source,
        unparsed=tuple(unparsed),
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
        (),
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
    *,
    decoded: Mapping[str, Any] | None = None,
) -> DeadLetter:
    """The dead-letter record for a payload `parse_event` (or the encoder) rejected.

    Keeps the payload verbatim (at most `MAX_DEAD_LETTER_RAW` bytes, truncation noted in `detail`)
    and extracts the MailboxId on a best-effort basis (`named_mailbox`) so the record can be keyed
    by mailbox — from `decoded`, the JSON object `raw` was serialized from, when there is one.
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
        mailbox_id=named_mailbox(decoded if decoded is not None else raw),
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


def _subscription_id(
    data: Mapping[str, Any], channel: str | None, unparsed: list[UnparsedField]
) -> str | None:
    """The payload's SubscriptionId, else the channel's; an unreadable or missing one is listed
    (with the channel's still used when it names one)."""
    value = _text(data, "SubscriptionId", "", unparsed)
    if value is not None and not value.strip():
        unparsed.append(UnparsedField("SubscriptionId", value))
        value = None
    if value is None and channel and channel.startswith(_CHANNEL_PREFIX):
        from_channel = channel[len(_CHANNEL_PREFIX) :]
        if from_channel.strip() and _encodable(from_channel):
            return from_channel
    if value is None and not any(f.field == "SubscriptionId" for f in unparsed):
        unparsed.append(UnparsedField("SubscriptionId"))
    return value


def _event_time(
    data: Mapping[str, Any], zone: dt.tzinfo, unparsed: list[UnparsedField]
) -> tuple[str | None, dt.datetime | None]:
    """(EventTime as sent, parsed); an unreadable or missing one is listed, parsed None."""
    value = data.get("EventTime")
    if _absent(value):
        unparsed.append(UnparsedField("EventTime"))
        return None, None
    raw = _raw_text(value)
    parsed = parse_cumi_time(value, zone) if value.__class__ is str and raw is value else None
    if parsed is None:
        unparsed.append(UnparsedField("EventTime", raw))
    return raw, parsed


def _message_entries(value: object) -> list[tuple[int, Mapping[str, Any]]]:
    """The MessageInfo entries, each an object: MessageInfo decides (it carries the MessageIds)."""
    if _absent(value):
        raise InvalidEvent(RejectReason.MISSING_FIELD, "MessageInfo is required", "MessageInfo")
    if type(value) is not list and isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        detail = f"expected an array, got {_json_type(value)}"
        raise InvalidEvent(RejectReason.BAD_TYPE, detail, "MessageInfo")
    if not value:
        raise InvalidEvent(RejectReason.EMPTY_MESSAGE_INFO, "no messages", "MessageInfo")
    entries = []
    for index, item in enumerate(value):
        if type(item) is not dict and not isinstance(item, Mapping):
            detail = f"expected an object, got {_json_type(item)}"
            raise InvalidEvent(RejectReason.BAD_TYPE, detail, f"MessageInfo[{index}]")
        prefix = f"MessageInfo[{index}]."
        message_id = bare_message_id(_required_str(item, "MessageId", prefix))
        if not message_id.strip():
            raise InvalidEvent(RejectReason.BAD_VALUE, "empty MessageId", prefix + "MessageId")
        entries.append((index, item))
    return entries


def _message(
    item: Mapping[str, Any], index: int, zone: dt.tzinfo, unparsed: list[UnparsedField]
) -> MessageInfo:
    """One entry whose MessageId `_message_entries` has checked; the rest read leniently."""
    prefix = f"MessageInfo[{index}]."
    message_id = bare_message_id(item["MessageId"])
    caller_ani = _text(item, "CallerAni", prefix, unparsed)
    sender = _text(item, "Sender", prefix, unparsed)
    msg_type = _text(item, "MsgType", prefix, unparsed)
    priority = _text(item, "Priority", prefix, unparsed)
    value = item.get("ReceiveTime")
    receive_raw = receive_time = None
    if not _absent(value):
        receive_raw = _raw_text(value)
        if value.__class__ is str and receive_raw is value:
            receive_time = parse_cumi_time(value, zone) if value else None
        if receive_raw and receive_time is None:  # "" stays what it always was: no time
            unparsed.append(UnparsedField(prefix + "ReceiveTime", receive_raw))
    return MessageInfo(
        message_id, caller_ani, sender, msg_type, priority, receive_time, receive_raw
    )


def _text(
    data: Mapping[str, Any], field: str, prefix: str, unparsed: list[UnparsedField]
) -> str | None:
    """A display field's text: a JSON string (that can be written as UTF-8); "null"/null mean
    absent; anything else is listed with its raw text, and None."""
    value = data.get(field)
    if value.__class__ is str and value.isascii():  # the hot path: plain text
        return None if value == "null" else value
    if _absent(value):
        return None
    if isinstance(value, str) and _encodable(value):
        return value
    unparsed.append(UnparsedField(prefix + field, _raw_text(value)))
    return None


def _raw_text(value: object) -> str:
    """What the server sent, as text a record can hold: a string as is (JSON-escaped if it has a
    lone surrogate, which UTF-8 cannot carry), any other JSON value as compact JSON."""
    if isinstance(value, str) and _encodable(value):
        return value
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        return text if _encodable(text) else json.dumps(value, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        return f"<unserializable {type(value).__name__}>"


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


def named_mailbox(raw: object) -> str | None:
    """The mailbox a rejected payload names, read as leniently as it can be: a MailboxId string
    (surrounding blanks dropped) or integer, in the notification or its Bayeux envelope, or in
    the text of a payload that is not JSON at all. None if it names none; never raises."""
    if isinstance(raw, Mapping):
        data = raw.get("data") if "channel" in raw else raw
        value = data.get("MailboxId") if isinstance(data, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)[:256]
        if isinstance(value, str) and _encodable(value):
            value = value.strip()
            return _short(value, 256) if value and value != "null" else None
        return None
    text = _raw_bytes(raw)[:DEFAULT_MAX_BYTES]
    match = _MAILBOX_ID_IN_TEXT.search(text)
    if match is None:
        return None
    value = (match.group(1) or match.group(2)).decode("utf-8", "replace").strip()
    return value if value and value != "null" else None


def named_subscription(raw: object) -> str | None:
    """The subscription a rejected payload came on: its Bayeux channel's, else its SubscriptionId
    string. For payloads whose MailboxId cannot be read; None if neither is there."""
    if not isinstance(raw, Mapping):
        return None
    channel = raw.get("channel")
    if isinstance(channel, str) and channel.startswith(_CHANNEL_PREFIX):
        return channel[len(_CHANNEL_PREFIX) :] or None
    data = raw.get("data") if "channel" in raw else raw
    value = data.get("SubscriptionId") if isinstance(data, Mapping) else None
    return value if isinstance(value, str) and value.strip() and value != "null" else None
