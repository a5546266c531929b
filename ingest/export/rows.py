"""The export's table rows: the events topic's records and the fold's states as Parquet columns.

Two tables (docs/voicemail-kpis.md lists every column for people):

- `events`: one row per message a record names — an event's MessageInfo entries, a snapshot's
  listed messages (a snapshot listing nothing gets one row with a NULL message_id, so every
  record of the log is in the table). Fields of the record repeat on each of its rows.
- `states`: the fold's state of a mailbox at the end of a day: one row for the mailbox itself
  (`message_id` NULL: its USNs; present even when the mailbox holds no message) and one per
  message in Inbox or Deleted. Tombstones (GONE) are left out.

Pure: records in, column lists out; `Columns` is what the writer turns into a Parquet file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ingest.events import Folder, MailboxEvent, MailboxSnapshot, Outcome, bare_message_id
from ingest.state.projection import MailboxState

_TIME = pa.timestamp("ms", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        ("mailbox_id", pa.string()),
        ("message_id", pa.string()),
        ("kind", pa.string()),
        ("event_type", pa.string()),
        ("usn", pa.int64()),
        ("timestamp", _TIME),
        ("timestamp_raw", pa.string()),
        ("receive_time", _TIME),
        ("receive_time_raw", pa.string()),
        ("msg_type", pa.string()),
        ("priority", pa.string()),
        ("caller", pa.string()),
        ("sender", pa.string()),
        ("folder", pa.string()),
        ("read", pa.bool_()),
        ("reason", pa.string()),
        ("subscription_id", pa.string()),
        ("display_name", pa.string()),
        ("source", pa.string()),
        ("ingested_at", _TIME),
        ("outcome", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp_read", pa.bool_()),
    ]
)
"""Columns of the `events` table, in file order (the `date` column comes from the folder)."""

STATE_SCHEMA = pa.schema(
    [
        ("mailbox_id", pa.string()),
        ("message_id", pa.string()),
        ("folder", pa.string()),
        ("read", pa.bool_()),
        ("usn", pa.int64()),
        ("msg_type", pa.string()),
        ("priority", pa.string()),
        ("caller", pa.string()),
        ("sender", pa.string()),
        ("receive_time", _TIME),
        ("receive_time_raw", pa.string()),
        ("mailbox_usn", pa.int64()),
        ("snapshot_usn", pa.int64()),
        ("updated_at", _TIME),
    ]
)
"""Columns of the `states` table."""

_EVENT_FIELDS = EVENT_SCHEMA.names
_STATE_FIELDS = STATE_SCHEMA.names
_KIND_EVENT, _KIND_SNAPSHOT = "event", "snapshot"
_LISTED = ((Folder.INBOX, "inbox"), (Folder.DELETED, "deleted"))


class Columns:
    """Rows of one table for one file, kept as one list per column (cheap to append to and to
    hand to pyarrow)."""

    __slots__ = ("columns", "schema")

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.columns: dict[str, list[Any]] = {name: [] for name in schema.names}

    def __len__(self) -> int:
        return len(self.columns[self.schema.names[0]])

    def add(self, row: tuple[Any, ...]) -> None:
        for column, value in zip(self.columns.values(), row, strict=True):
            column.append(value)

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=self.schema)

    def rows(self) -> Iterator[dict[str, Any]]:
        """The rows as dicts (tests, small tables)."""
        names = self.schema.names
        for values in zip(*self.columns.values(), strict=True):
            yield dict(zip(names, values, strict=True))


def event_rows(
    record: MailboxEvent | MailboxSnapshot, partition: int, offset: int, outcome: Outcome
) -> Iterator[tuple[Any, ...]]:
    """The `events` rows of one record of the log, in EVENT_SCHEMA order."""
    if isinstance(record, MailboxEvent):
        yield from _event_rows(record, partition, offset, outcome)
    else:
        yield from _snapshot_rows(record, partition, offset, outcome)


def _event_rows(
    event: MailboxEvent, partition: int, offset: int, outcome: Outcome
) -> Iterator[tuple[Any, ...]]:
    for info in event.messages:
        yield (
            event.mailbox_id,
            bare_message_id(info.message_id),
            _KIND_EVENT,
            event.event_type.value,
            event.usn,
            event.event_time,
            event.event_time_raw,
            info.receive_time,
            info.receive_time_raw,
            info.msg_type,
            info.priority,
            info.caller_ani,
            info.sender,
            None,
            None,
            None,
            event.subscription_id,
            event.display_name,
            event.source,
            event.ingested_at,
            outcome.value,
            partition,
            offset,
            not any(u.field == "EventTime" for u in event.unparsed),
        )


def _snapshot_rows(
    snapshot: MailboxSnapshot, partition: int, offset: int, outcome: Outcome
) -> Iterator[tuple[Any, ...]]:
    def row(folder: Folder | None, entry: Any) -> tuple[Any, ...]:
        return (
            snapshot.mailbox_id,
            bare_message_id(entry.message_id) if entry is not None else None,
            _KIND_SNAPSHOT,
            None,
            snapshot.usn,
            snapshot.taken_at,
            None,
            entry.arrival_time if entry is not None else None,
            None,
            entry.msg_type if entry is not None else None,
            entry.priority if entry is not None else None,
            entry.caller_id if entry is not None else None,
            entry.sender if entry is not None else None,
            folder.value if folder is not None else None,
            entry.read if entry is not None else None,
            snapshot.reason.value,
            None,
            None,
            snapshot.source,
            None,
            outcome.value,
            partition,
            offset,
            True,
        )

    listed = False
    for folder, name in _LISTED:
        for entry in getattr(snapshot, name):
            listed = True
            yield row(folder, entry)
    if not listed:
        yield row(None, None)


def state_rows(state: MailboxState) -> Iterator[tuple[Any, ...]]:
    """The `states` rows of one mailbox's fold state, in STATE_SCHEMA order: the mailbox row,
    then its messages in Inbox or Deleted by message id."""
    usn, snapshot_usn, updated_at = state.usn, state.snapshot_usn, state.updated_at
    mailbox_id = state.mailbox_id
    yield (mailbox_id, None, None, None, None, None, None, None, None, None, None,
           usn, snapshot_usn, updated_at)  # fmt: skip
    for message_id in sorted(state.messages):
        m = state.messages[message_id]
        if m.folder is Folder.GONE:
            continue
        yield (
            mailbox_id,
            message_id,
            m.folder.value,
            m.read,
            m.usn,
            m.msg_type,
            m.priority,
            m.caller_ani,
            m.sender,
            m.receive_time,
            m.receive_time_raw,
            usn,
            snapshot_usn,
            updated_at,
        )


_DAY_MS = 86_400_000
_EPOCH_DATE = dt.date(1970, 1, 1)


def day_of(timestamp_ms: int) -> int:
    """A Kafka record timestamp → its UTC day (days since 1970-01-01): the `date` partition."""
    return timestamp_ms // _DAY_MS


def date_of(day: int) -> dt.date:
    return _EPOCH_DATE + dt.timedelta(days=day)


def day_end_ms(day: int) -> int:
    """The last millisecond of `day`: the `--at` of `ingest replay` that gives its end state."""
    return (day + 1) * _DAY_MS - 1
