"""`export()`: the events topic to Parquet, in batches that each commit (ingest.export.layout).

Each run reads every partition from the manifest's offsets to the end of the log as the run
found it (the last stable offset: committed records only), folds what it reads with the one
projection (`ingest.state.projection`, restored from the last batch's checkpoint), and every
`batch_records` records — and at the end — commits a batch: the rows of the records read, the
end-of-day states that became known, the open days' states, the fold's checkpoint, the manifest.

Days and end-of-day states follow `ingest replay --at` (ingest.state.replay): the state at the
end of day D is the fold of each partition up to its first record stamped later than D (the
Kafka timestamp: the EventTime of an event, the taken_at of a snapshot). So when a partition
reaches a record of a later day, the states of its mailboxes that had records since it entered
its current day are that day's end-of-day states. A record stamped with an earlier day (a late
repeat) goes to its own day's events folder and counts towards the state of the partition's
current day, as it does for replay. Mailboxes without records on a day get no rows for it: their
state at the end of that day is that of the latest earlier day they have (the `states_at` macro,
ingest/export/queries/setup.sql).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ingest.errors import ConfigError, DecodeError
from ingest.eventlog.reader import decode_log_record
from ingest.eventlog.schema_registry import schema_ids
from ingest.eventlog.topics import describe_topic
from ingest.export.layout import OPEN_STATES, ExportDir, Manifest, PartitionMark
from ingest.export.rows import (
    EVENT_SCHEMA,
    STATE_SCHEMA,
    Columns,
    day_of,
    event_rows,
    state_rows,
)
from ingest.ops.progress import ProgressFactory
from ingest.settings import SchemaRegistrySettings
from ingest.state.projection import Projection

log = logging.getLogger(__name__)

BATCH_RECORDS = 250_000
"""Records per committed batch: bounds the memory of one batch (≈ 1 KB per record in column
lists) and the work a crash makes redo."""
_FETCH_MS = 500
_MAX_RECORDS = 20_000


@dataclass(slots=True)
class ExportResult:
    """What one run did."""

    records: int = 0
    """Records of the log read."""
    event_rows: int = 0
    state_rows: int = 0
    skipped: int = 0
    """Records that are not events or snapshots, or could not be decoded (logged)."""
    batches: int = 0
    removed: list[Path] = field(default_factory=list)
    """Files of an uncommitted batch found and deleted at the start."""
    seconds: float = 0.0


async def export(
    bootstrap: str,
    topic: str,
    directory: Path,
    *,
    batch_records: int = BATCH_RECORDS,
    progress: ProgressFactory | None = None,
    schema_registry: SchemaRegistrySettings | None = None,
    **client_kwargs: Any,
) -> ExportResult:
    """Export the events `topic` into `directory` from where the last run committed to the end
    of the log; resumable (a crashed or repeated run continues without duplicates or gaps)."""
    started = time.monotonic()
    described = await describe_topic(topic, bootstrap_servers=bootstrap, **client_kwargs)
    if described is None:
        raise ConfigError(f"topic {topic} does not exist")
    run = ExportRun.open(
        directory, topic, batch_records=batch_records, schema_registry=schema_registry
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **client_kwargs,
    )
    await consumer.start()
    try:
        await run.read(consumer, described[0], progress)
    finally:
        await consumer.stop()
    run.result.seconds = time.monotonic() - started
    return run.result


class ExportRun:
    """One run: the fold, the rows, and the batches it commits. `read` drives it from a consumer;
    `take` and `commit` are the steps (unit tests feed them records directly)."""

    def __init__(
        self,
        store: ExportDir,
        manifest: Manifest,
        result: ExportResult,
        batch_records: int,
        schema_registry: SchemaRegistrySettings | None,
    ) -> None:
        self._store, self._manifest, self._result = store, manifest, result
        self.result = result
        self._batch_records = max(1, batch_records)
        self._ids = schema_ids(schema_registry)
        self._projection = Projection()
        if manifest.fold is not None:
            for record in store.read_fold(manifest.fold):
                self._projection.load(record)
        self._events: dict[int, Columns] = {}
        self._closed: dict[int, Columns] = {}
        self._in_batch = 0

    @classmethod
    def open(
        cls,
        directory: Path,
        topic: str,
        *,
        batch_records: int = BATCH_RECORDS,
        schema_registry: SchemaRegistrySettings | None = None,
    ) -> ExportRun:
        """A run on `directory`, from its last commit (what a crashed batch left is deleted)."""
        store = ExportDir(directory)
        manifest = store.load(topic)
        result = ExportResult(removed=store.clean(manifest))
        if result.removed:
            log.warning("removed %d files of an uncommitted batch", len(result.removed))
        return cls(store, manifest, result, batch_records, schema_registry)

    async def read(
        self, consumer: AIOKafkaConsumer, partitions: int, progress: ProgressFactory | None
    ) -> None:
        topic, marks = self._manifest.topic, self._manifest.partitions
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for tp in tps:
            mark = marks.setdefault(tp.partition, PartitionMark(offset=starts[tp]))
            if mark.offset < starts[tp]:
                log.warning(
                    "partition %d: records %d..%d are gone from the log (retention): the export "
                    "has a gap there",
                    tp.partition,
                    mark.offset,
                    starts[tp] - 1,
                )
                mark.offset = starts[tp]
            consumer.seek(tp, mark.offset)
        pending = {tp for tp in tps if ends[tp] > marks[tp.partition].offset}
        total = sum(max(0, ends[tp] - marks[tp.partition].offset) for tp in tps)
        reporter = progress("exported records", total) if progress is not None else None
        try:
            while pending:
                batch = await consumer.getmany(
                    *pending, timeout_ms=_FETCH_MS, max_records=_MAX_RECORDS
                )
                for tp, messages in batch.items():
                    self._take_in_batches(tp.partition, messages, ends[tp])
                for tp in list(pending):
                    # markers of committed transactions have offsets but yield no record
                    position = await consumer.position(tp)
                    mark = marks[tp.partition]
                    mark.offset = max(mark.offset, min(position, ends[tp]))
                    if mark.offset >= ends[tp]:
                        pending.discard(tp)
                if reporter is not None:
                    reporter.update(self._result.records)
            self.commit()
        finally:
            if reporter is not None:
                reporter.close()

    def _take_in_batches(self, partition: int, messages: list[Any], end: int) -> None:
        start = 0
        while start < len(messages):
            room = max(1, self._batch_records - self._in_batch)
            self.take(partition, messages[start : start + room], end)
            start += room
            if self.due():
                self.commit()

    def take(self, partition: int, messages: Iterable[Any], end: int | None = None) -> None:
        """Fold and tabulate one partition's fetched records (ConsumerRecords, up to `end`)."""
        mark = self._manifest.partitions.setdefault(partition, PartitionMark())
        apply, ids = self._projection.apply, self._ids
        for message in messages:
            offset = message.offset
            if (end is not None and offset >= end) or offset < mark.offset:
                continue
            day = day_of(message.timestamp)
            if mark.day is None:
                mark.day = day
            elif day > mark.day:
                self._close_day(mark)
                mark.day = day
            mark.offset = offset + 1
            self._result.records += 1
            self._in_batch += 1
            value = message.value
            try:
                record = decode_log_record(value, ids) if value is not None else None
            except DecodeError as e:
                log.warning(
                    "partition %d offset %d: undecodable, skipped: %s", partition, offset, e
                )
                record = None
            if record is None:
                self._result.skipped += 1
                continue
            outcome = apply(record)
            mark.touched.add(record.mailbox_id)
            rows = self._events.get(day)
            if rows is None:
                rows = self._events[day] = Columns(EVENT_SCHEMA)
            for row in event_rows(record, partition, offset, outcome):
                rows.add(row)

    def due(self) -> bool:
        """Whether the batch is full (time to `commit`)."""
        return self._in_batch >= self._batch_records

    def _close_day(self, mark: PartitionMark) -> None:
        """The partition passed its day: its touched mailboxes' states are that day's end."""
        assert mark.day is not None
        rows = self._closed.get(mark.day)
        if rows is None:
            rows = self._closed[mark.day] = Columns(STATE_SCHEMA)
        self._add_states(rows, mark.touched)
        mark.touched = set()

    def _add_states(self, rows: Columns, mailboxes: set[str]) -> None:
        for mailbox_id in sorted(mailboxes):
            state = self._projection.get(mailbox_id)
            if state is not None:
                for row in state_rows(state):
                    rows.add(row)

    def commit(self) -> None:
        """Write the batch's files, then the manifest that commits them (ingest.export.layout)."""
        manifest, store = self._manifest, self._store
        if not self._in_batch and manifest.batch:
            return
        batch = manifest.batch + 1
        files = [name for name in manifest.files if not name.endswith(_OPEN_SUFFIX)]
        result = self._result
        for day, rows in sorted(self._events.items()):
            files.append(self._write(store.events_file(day, batch), rows))
            result.event_rows += len(rows)
        for day, rows in sorted(self._closed.items()):
            files.append(self._write(store.states_file(day, batch), rows))
            result.state_rows += len(rows)
        opened = self._open_states()
        for day, rows in sorted(opened.items()):
            files.append(self._write(store.open_states_file(day), rows))
        old_fold = manifest.fold
        manifest.fold = store.write_fold(
            batch, (state.to_record() for state in self._projection.mailboxes.values())
        )
        stale_open = {n for n in manifest.files if n.endswith(_OPEN_SUFFIX)} - set(files)
        manifest.batch, manifest.files = batch, files
        manifest.records += self._in_batch
        store.commit(manifest)
        store.remove(stale_open)
        if old_fold is not None and old_fold != manifest.fold:
            store.remove([f"{store.meta.name}/{old_fold}"])
        result.batches += 1
        log.info(
            "batch %d committed: %d records, %d days of events, %d end-of-day state files",
            batch,
            self._in_batch,
            len(self._events),
            len(self._closed),
        )
        self._events, self._closed, self._in_batch = {}, {}, 0

    def _open_states(self) -> Mapping[int, Columns]:
        """Per day, the current state of the mailboxes of partitions still in that day."""
        touched: dict[int, set[str]] = {}
        for mark in self._manifest.partitions.values():
            if mark.day is not None and mark.touched:
                touched.setdefault(mark.day, set()).update(mark.touched)
        opened: dict[int, Columns] = {}
        for day, mailboxes in touched.items():
            rows = opened[day] = Columns(STATE_SCHEMA)
            self._add_states(rows, mailboxes)
        return opened

    def _write(self, name: str, rows: Columns) -> str:
        self._store.write_table(name, rows.table())
        return name


_OPEN_SUFFIX = "/" + OPEN_STATES
