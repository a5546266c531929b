"""Domain records of the event log: what a CUMI notification *means* once normalized.

These are the in-memory forms of the Avro records in `schemas/` (field for field);
`ingest.eventlog.codec` converts between the two. A `MailboxEvent` is a *state assertion* about one
or more messages of one mailbox (docs/design.md §3): it can repeat, and after Notifier downtime it
carries only the latest status. A `MailboxSnapshot` is the server's folder listing taken by gap
repair; it replaces the projected state.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class EventType(enum.StrEnum):
    """CUMI EventType, symbol for symbol the Avro enum `EventType` in schemas/mailbox_event.avsc."""

    NEW_MESSAGE = "NEW_MESSAGE"
    SAVED_MESSAGE = "SAVED_MESSAGE"
    UNREAD_MESSAGE = "UNREAD_MESSAGE"
    DELETED_MESSAGE = "DELETED_MESSAGE"
    DELETED_MESSAGE_CREATE = "DELETED_MESSAGE_CREATE"
    DELETED_MESSAGE_READ = "DELETED_MESSAGE_READ"
    DELETED_MESSAGE_UNREAD = "DELETED_MESSAGE_UNREAD"
    DELETED_MESSAGE_DELETE = "DELETED_MESSAGE_DELETE"
    DELETED_MESSAGE_UNDELETE = "DELETED_MESSAGE_UNDELETE"


def bare_message_id(message_id: str) -> str:
    """A message's id as the pipeline keys it. Folder listings name messages `0:<guid>` and some
    Comet events do too, others send the bare `<guid>`: the prefix is dropped everywhere."""
    return message_id[2:] if message_id.startswith("0:") else message_id


class RecordKind(enum.StrEnum):
    """What a record is; sent as the `cumi.kind` Kafka header. The events topic carries EVENT and
    SNAPSHOT, the dead-letter topic DEAD_LETTER, the state topic STATE, the registry REGISTRY."""

    EVENT = "event"
    SNAPSHOT = "snapshot"
    DEAD_LETTER = "dead_letter"
    STATE = "state"
    REGISTRY = "registry"
    CHECKPOINT = "checkpoint"
    """A checkpoint's manifest (the checkpoints topic)."""
    CHECKPOINT_CHUNK = "checkpoint_chunk"
    """Part of a checkpoint's mailbox states (the checkpoints topic)."""


class RepairReason(enum.StrEnum):
    """Why gap repair took a mailbox's snapshot: the `reason` of a MailboxSnapshot, a metric label.

    The schema keeps it as a string whose doc lists exactly these values (a test holds the two
    together), so that a newer release may add a reason without breaking older readers: a value
    this release does not know decodes to a member-like value of its own (`_missing_`), kept as
    text, never written by this release.
    """

    STARTUP = "startup"
    """The worker started: nothing was listening before."""
    SESSION_LOST = "session-lost"
    """The CometD session was lost (the server forgot the client, or it stalled)."""
    SERVER_RESTART = "server-restart"
    """The server forgot the mailbox's subscription: it restarted."""
    RESUBSCRIBE = "resubscribe"
    """The mailbox is subscribed again after a failure (backoff, refused credentials)."""
    CONNECT_FAILED = "connect-failed"
    """A /meta/connect failed mid-exchange: the events it carried may be lost."""
    ASSIGNED = "assigned"
    """The worker group gave this worker the mailbox (another worker left, failed or joined)."""
    REGISTERED = "registered"
    """The mailbox was added to (or re-enabled in) the registry while this worker owned it."""
    KAFKA_OUTAGE = "kafka-outage"
    """The CometD session was lost because the worker stopped pulling while Kafka was away (its
    in-flight bound was full): events of that time may be missing from the log before this."""
    DEAD_LETTER = "dead-letter"
    """A payload that names the mailbox was dead-lettered: the change it stood for is missing from
    the log before this (rate-limited per mailbox: CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS)."""

    @classmethod
    def _missing_(cls, value: object) -> RepairReason | None:
        if not isinstance(value, str):
            return None
        unknown = str.__new__(cls, value)
        unknown._name_ = value
        unknown._value_ = value
        return unknown


class Outcome(enum.StrEnum):
    """What applying one record to the projection did; a metric label."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One entry of a Comet event's MessageInfo array, normalized. A text field that is not a
    JSON string, or a ReceiveTime not in the documented format, is None here and listed in the
    event's `unparsed` with what was sent."""

    message_id: str
    """CUMI message id (a GUID in Comet events; folder listings prefix it with `0:`, stripped)."""
    caller_ani: str | None = None
    """Calling number; the server's string "null" becomes None."""
    sender: str | None = None
    """Sender; "null" becomes None."""
    msg_type: str | None = None
    """e.g. Voice, Fax, Email, Receipt."""
    priority: str | None = None
    """e.g. Normal-Priority, Urgent-Priority."""
    receive_time: dt.datetime | None = None
    """ReceiveTime parsed in the configured server zone, as an aware UTC datetime; None when
    absent or not in the documented format (`11:15:40 PM 10/30/2008`)."""
    receive_time_raw: str | None = None
    """ReceiveTime exactly as the server sent it (no zone in the wire format); a JSON value that
    is not a string as compact JSON."""


LENIENT_FIELDS = (
    "EventTime",
    "SubscriptionId",
    "DisplayName",
    "CallerAni",
    "Sender",
    "MsgType",
    "Priority",
    "ReceiveTime",
)
"""The notification fields read leniently — every one but MailboxId, EventType, USN and MessageId:
what `UnparsedField.name` can be, a metric label."""


@dataclass(frozen=True, slots=True)
class UnparsedField:
    """A field of a notification the worker could not read (docs/design.md §3, "What makes an
    event invalid"): its parsed value in the record is null (`event_time`: `ingested_at`)."""

    field: str
    """Where it is in the payload: `EventTime`, `SubscriptionId`, `MessageInfo[0].ReceiveTime`…"""
    raw: str | None = None
    """What the server sent: a string as is, any other JSON value as compact JSON; None: absent."""

    @property
    def name(self) -> str:
        """The field's name without its place (`ReceiveTime`): a bounded metric label."""
        return self.field.rpartition(".")[2]


@dataclass(frozen=True, slots=True)
class MailboxEvent:
    """One Comet notification, validated and normalized. Only MailboxId, EventType, USN and
    MessageId decide whether it is one; any other field that cannot be read is listed in
    `unparsed` and left null."""

    mailbox_id: str
    """MailboxId (the user's alias); the Kafka key."""
    usn: int
    """Mailbox update sequence number; events sharing a USN are one change."""
    event_type: EventType
    event_time: dt.datetime
    """EventTime parsed in the configured zone (default UTC), aware, UTC; `ingested_at` when
    EventTime could not be read (then listed in `unparsed`): the record's time axis needs one."""
    event_time_raw: str | None
    """EventTime exactly as sent (None: not sent)."""
    subscription_id: str | None
    """None: neither the payload nor its Bayeux channel named one."""
    messages: tuple[MessageInfo, ...]
    """At least one message."""
    ingested_at: dt.datetime
    """When the worker received the notification (worker clock, UTC)."""
    display_name: str | None = None
    source: str | None = None
    """Which CUMI server the event came from (its configured name)."""
    unparsed: tuple[UnparsedField, ...] = ()
    """The fields the worker could not read: the event's (EventTime, SubscriptionId, DisplayName),
    then each message's in order (schema v2; empty in v1 records)."""


@dataclass(frozen=True, slots=True)
class SnapshotMessage:
    """One message of a folder listing taken during gap repair."""

    message_id: str
    read: bool
    arrival_time: dt.datetime | None = None
    sender: str | None = None
    caller_id: str | None = None
    priority: str | None = None
    msg_type: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxSnapshot:
    """The server's truth for one mailbox at mailbox USN `usn`, from the folder listings."""

    mailbox_id: str
    usn: int
    """The mailbox-level USN the listings were taken at (folder resource `USN`)."""
    taken_at: dt.datetime
    reason: RepairReason
    inbox: tuple[SnapshotMessage, ...]
    deleted: tuple[SnapshotMessage, ...]
    source: str | None = None


LogRecord = MailboxEvent | MailboxSnapshot
"""Anything that goes on the events topic."""


class RejectReason(enum.StrEnum):
    """Why a payload was dead-lettered; the `reason` of a DeadLetter, a metric label (bounded)."""

    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_VALUE = "bad_value"
    BAD_TIME = "bad_time"
    """Not written since MailboxEvent v2 (no time decides folder state); kept for older letters."""
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    EMPTY_MESSAGE_INFO = "empty_message_info"
    ENCODE_FAILED = "encode_failed"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not become a MailboxEvent (schemas/dead_letter.avsc)."""

    raw: bytes
    reason: str
    """A `RejectReason` value."""
    detail: str
    received_at: dt.datetime
    field: str | None = None
    source: str | None = None
    mailbox_id: str | None = None


class Folder(enum.StrEnum):
    """Where a projected message is; the Avro enum `Folder` of schemas/mailbox_state.avsc."""

    INBOX = "INBOX"
    DELETED = "DELETED"
    GONE = "GONE"
    """In neither folder (hard-deleted, or left a folder): a tombstone that keeps its USN so a late
    stale event cannot bring the message back."""


@dataclass(frozen=True, slots=True)
class MessageChange:
    """A change of a projected message kept for late events (schemas/mailbox_state.avsc)."""

    usn: int
    applied: tuple[EventType, ...]
    """EventTypes applied at `usn` (sorted)."""


@dataclass(frozen=True, slots=True)
class KeptChanges:
    """What a projected message keeps so that a late event can be placed in USN order
    (schemas/mailbox_state.avsc `KeptChanges`)."""

    earlier: tuple[MessageChange, ...]
    """Changes before the message's `usn`, oldest first."""
    floor_folder: Folder
    floor_read: bool
    floor_usn: int
    """The state the changes apply to, as of this USN (a listing's; -1: none)."""


@dataclass(frozen=True, slots=True)
class MessageStateRecord:
    """One message of a projected mailbox (schemas/mailbox_state.avsc `MessageState`)."""

    message_id: str
    folder: Folder
    read: bool
    usn: int
    """USN of the last change applied to this message."""
    applied: tuple[EventType, ...]
    """EventTypes already applied at `usn` (sorted): a repeat of one of them is a duplicate."""
    base_folder: Folder
    """Folder before the change at `usn`: events sharing a USN are resolved together from it."""
    base_read: bool
    """Read flag before the change at `usn`."""
    base_read_usn: int = -1
    """v2's snapshot bookkeeping, superseded by the kept changes: read, no longer written (-1)."""
    caller_ani: str | None = None
    sender: str | None = None
    msg_type: str | None = None
    priority: str | None = None
    receive_time: dt.datetime | None = None
    receive_time_raw: str | None = None
    kept: KeptChanges | None = None
    """None: nothing before `usn` is kept (the base sums it up; events below `usn` are stale)."""


@dataclass(frozen=True, slots=True)
class MailboxStateRecord:
    """Projected state of one mailbox: the value on the compacted state topic (key MailboxId)."""

    mailbox_id: str
    usn: int
    """Highest USN applied (events or snapshot)."""
    messages: tuple[MessageStateRecord, ...]
    """Every known message, tombstones included, sorted by message_id."""
    snapshot_usn: int = -1
    """USN of the newest applied snapshot; events at or below it are stale. -1: none yet."""
    updated_at: dt.datetime | None = None
    """Latest EventTime (or snapshot taken_at) among applied records; not the projector's clock,
    so folding the same log always gives the same record."""
    events_applied: int = 0
    duplicates: int = 0
    stale: int = 0
    snapshots_applied: int = 0
    snapshot_taken_at: dt.datetime | None = None
    """`taken_at` of the snapshot at `snapshot_usn`: of two at one USN the later one wins."""


@dataclass(frozen=True, slots=True)
class MailboxRegistryEntry:
    """A mailbox the workers watch: the value on the compacted registry topic (key MailboxId;
    schemas/mailbox_registry.avsc). A tombstone, not an entry, removes a mailbox."""

    mailbox_id: str
    updated_at: dt.datetime
    server: str | None = None
    """The Connection server (CUMI_SERVER_NAME of its workers); None: any server's workers."""
    credentials_ref: str | None = None
    """Name of the mailbox's secret in the credentials provider; None: the mailbox id."""
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class CheckpointEntry:
    """One mailbox of a checkpoint (schemas/checkpoint_chunk.avsc `CheckpointEntry`)."""

    mailbox_id: str
    usn: int
    """The state's mailbox USN, readable without decoding `state`."""
    state: bytes
    """The mailbox's state as a state-topic value (`ingest.state.store.encode_state`)."""


@dataclass(frozen=True, slots=True)
class CheckpointChunk:
    """Consecutive mailboxes (by id) of one checkpoint (schemas/checkpoint_chunk.avsc)."""

    events_topic: str
    partition: int
    next_offset: int
    index: int
    entries: tuple[CheckpointEntry, ...]


@dataclass(frozen=True, slots=True)
class CheckpointChunkRef:
    """Where one chunk of a checkpoint is, and which mailboxes it holds."""

    offset: int
    first_mailbox_id: str
    last_mailbox_id: str
    mailboxes: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CheckpointManifest:
    """A checkpoint of one events partition (schemas/checkpoint_manifest.avsc): the fold of every
    record below `next_offset`, its states in `chunks`."""

    events_topic: str
    partition: int
    next_offset: int
    from_offset: int
    first_time: dt.datetime | None
    last_time: dt.datetime | None
    fold_version: int
    mailboxes: int
    state_bytes: int
    max_usn: int
    chunks: tuple[CheckpointChunkRef, ...]
    written_at: dt.datetime
