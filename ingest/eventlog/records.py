"""What the worker writes for a Comet message: the event record, or the dead letter that says why
not — with the Kafka key, timestamp and headers, and the metric child its acknowledgement counts.

`RecordWriter.for_message` never raises for bad input: anything `parse_event` rejects, or the
encoder refuses, becomes a dead-letter record with the raw payload and the reason (nothing is
dropped), and is handed to `on_dead_letter` (the worker's gap repair of the mailbox it names). An
accepted event with fields the worker could not read counts them by field
(`cumi_worker_fields_unparsed_total`) and logs them at DEBUG, one line per field name and 30 s
at most (the `ingest.eventlog.records.unparsed` loggers are rate-limited by
`ingest.ops.logs.RepeatLimiter`). The sink (`ingest.eventlog.sink`) decides where and when the
records go.

The values are framed by the `codec.Encoder` given: single-object encoding by default, the
Confluent wire format in registry mode (`ingest.eventlog.schema_registry.register_writers` makes
that encoder at start, and with it the schema ids: nothing is looked up per record).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ingest.cumi.normalizer import MAX_DEAD_LETTER_RAW, TimeZones, dead_letter_for, parse_event
from ingest.errors import InvalidEvent
from ingest.eventlog import codec
from ingest.events import DeadLetter, EventType, MailboxEvent, MailboxSnapshot, RejectReason
from ingest.ops.metrics import (
    WORKER_EVENTS_DEAD_LETTERED,
    WORKER_EVENTS_PUBLISHED,
    WORKER_FIELDS_UNPARSED,
    WORKER_SNAPSHOTS_PUBLISHED,
)

UNPARSED_LOGGER = f"{__name__}.unparsed"
"""Parent of the per-field loggers of unreadable fields (`….unparsed.ReceiveTime`), which
`ingest.ops.logs` rate-limits: a server that sends every ReceiveTime in another format logs it
once per 30 s, with the count of the lines held back."""

OnDeadLetter = Callable[[DeadLetter, Mapping[str, Any]], None]
"""Told of every dead letter, with the payload it was made of (to find the mailbox it names)."""

MAX_EVENT_BYTES = MAX_DEAD_LETTER_RAW
"""An encoded event larger than this is dead-lettered as too_large. A real notification encodes
to well under 4 KiB; the Comet transport decodes payloads of any size, and one record beyond
Kafka's message limit (1 MB by default) would fail the producer for good."""

Record = tuple[bytes | None, bytes, int, list[tuple[str, bytes]]]
"""key, value, timestamp (ms), headers."""

Labelled = tuple[str, Record, Any, int | None]
"""(topic, record, the metric child to increment on acknowledgement, event second or None)."""


WRITES = (MailboxEvent, MailboxSnapshot)
"""The record types written to the events topic."""
DEAD_LETTER_WRITES = (DeadLetter,)
"""…and to the dead-letter topic."""


class RecordWriter:
    """Comet messages → records for the events or the dead-letter topic."""

    @staticmethod
    def schemas(events_topic: str, dlq_topic: str) -> dict[str, tuple[type, ...]]:
        """Topic → the record types written there: what registry mode registers at start."""
        return {events_topic: WRITES, dlq_topic: DEAD_LETTER_WRITES}

    def __init__(
        self,
        events_topic: str,
        dlq_topic: str,
        *,
        source: str | None = None,
        zones: TimeZones | None = None,
        encoder: codec.Encoder | None = None,
        on_dead_letter: OnDeadLetter | None = None,
    ) -> None:
        self.events_topic = events_topic
        self.on_dead_letter = on_dead_letter
        self.dlq_topic = dlq_topic
        self._encode = (encoder or codec.Encoder()).encode
        self._source = source
        self._zones = zones or TimeZones()
        self._by_event_type: dict[EventType, tuple[Any, list[tuple[str, bytes]]]] = {}
        self._last_event_time: tuple[dt.datetime | None, int] = (None, 0)
        self._dead_by_reason: dict[str, Any] = {}
        self._unparsed_logs: dict[str, logging.Logger] = {}

    def for_message(self, message: Mapping[str, Any], now: dt.datetime) -> Labelled:
        """The record of one Comet message; `now` stamps a dead letter's `received_at`."""
        try:
            event = parse_event(message, zones=self._zones, source=self._source)
            return self.for_event(event)
        except Exception as e:  # InvalidEvent, or the encoder refused a valid-looking event
            return self.for_dead_letter(message, e, now)

    def for_event(self, event: MailboxEvent) -> Labelled:
        kind = self._by_event_type.get(event.event_type)
        if kind is None:  # the metric child and the headers, once per EventType
            label = WORKER_EVENTS_PUBLISHED.labels(event.event_type.value)
            kind = self._by_event_type[event.event_type] = (label, codec.kafka_headers(event))
        value = self._encode(event)
        if len(value) > MAX_EVENT_BYTES:
            detail = f"encoded event of {len(value)} bytes exceeds {MAX_EVENT_BYTES}"
            raise InvalidEvent(RejectReason.TOO_LARGE, detail)
        # the normalizer hands events of the same EventTime text the same datetime object
        if event.event_time is not self._last_event_time[0]:
            self._last_event_time = (event.event_time, codec.timestamp_ms(event))
        timestamp = self._last_event_time[1]
        if event.unparsed:
            self._count_unparsed(event)
        # the headers list is shared by the records of one EventType: nothing here mutates it
        record: Record = (event.mailbox_id.encode(), value, timestamp, kind[1])
        return self.events_topic, record, kind[0], timestamp // 1000

    def _count_unparsed(self, event: MailboxEvent) -> None:
        for field in event.unparsed:
            name = field.name
            WORKER_FIELDS_UNPARSED.labels(name).inc()
            logger = self._unparsed_logs.get(name)
            if logger is None:
                logger = self._unparsed_logs[name] = logging.getLogger(f"{UNPARSED_LOGGER}.{name}")
            if field.raw is None:
                logger.debug(
                    "mailbox %s USN %d: no %s; published without it",
                    event.mailbox_id,
                    event.usn,
                    field.field,
                )
            else:
                logger.debug(
                    "mailbox %s USN %d: %s unreadable (%.80r); published without it",
                    event.mailbox_id,
                    event.usn,
                    field.field,
                    field.raw,
                )

    def for_dead_letter(
        self, message: Mapping[str, Any], error: Exception, now: dt.datetime
    ) -> Labelled:
        raw = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        letter: DeadLetter = dead_letter_for(raw, error, self._source, now, decoded=message)
        label = self._dead_by_reason.get(letter.reason)
        if label is None:
            label = WORKER_EVENTS_DEAD_LETTERED.labels(letter.reason)
            self._dead_by_reason[letter.reason] = label
        record: Record = (
            letter.mailbox_id.encode() if letter.mailbox_id else None,
            self._encode(letter),
            int(letter.received_at.timestamp() * 1000),
            codec.kafka_headers(letter),
        )
        if self.on_dead_letter is not None:
            self.on_dead_letter(letter, message)
        return self.dlq_topic, record, label, None

    def for_snapshot(self, snapshot: MailboxSnapshot) -> Labelled:
        """A gap-repair snapshot: the events topic, keyed like the mailbox's events."""
        record: Record = (
            snapshot.mailbox_id.encode(),
            self._encode(snapshot),
            codec.timestamp_ms(snapshot),
            codec.kafka_headers(snapshot),
        )
        return self.events_topic, record, WORKER_SNAPSHOTS_PUBLISHED.labels(snapshot.reason), None
