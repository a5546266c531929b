"""Catching up in worker processes: the projector's fold of a long backlog, on every CPU.

A projector far behind the end of the log (a new group, a lost or new state topic, a long outage)
spends its time decoding records, folding them and encoding states — in one Python process, on one
core, while `ingest replay` folds the same log in a process per CPU. So a partition restored at
least `CUMI_PROJECTOR_CATCH_UP_RECORDS` behind is paused in the projector's consumer and its fold
handed to a pool of worker processes (`CUMI_PROJECTOR_CATCH_UP_PROCESSES`, default one per CPU):

- a worker reads the partition itself (its own consumer: read_committed, no group) from the
  projector's position to the end offset of the moment the job began, and folds it with the same
  `Projection`;
- every segment (when a checkpoint is due, or `segment_records` offsets) it hands back a `Segment`:
  the encoded states of the mailboxes changed in it, the checkpoint due with it (encoded, cut into
  chunks), the next offset and its counts. The projector commits each one as it commits its own
  changes: one transaction with the states, the checkpoint and the group's offset. Workers never
  write to Kafka: what is committed, and fencing, stay with the partition's owner;
- the last segment also carries the partition's whole state, which the projector takes back before
  it consumes the partition itself again from there.

Cancelling: a rebalance, a lost cluster or a stop moves the partition's *generation* on (shared
memory); a worker checks it between fetches and drops the job, and the projector ignores segments
of an old generation. What was not committed is simply not committed: the partition is restored
from the state topic like after any rebalance. A worker that dies fails the projector (exit 1);
a restart resumes from the committed offsets. See docs/design.md §5 (rebuild).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ingest import speedups
from ingest.eventlog.codec import SchemaIds
from ingest.eventlog.reader import decode_consumed
from ingest.eventlog.schema_registry import schema_ids
from ingest.events import EventType, MailboxEvent, Outcome
from ingest.ops.logs import configure_logging
from ingest.ops.metrics import (
    PROJECTOR_EVENTS,
    PROJECTOR_REGISTRY,
    PROJECTOR_SKIPPED,
    PROJECTOR_SNAPSHOTS,
)
from ingest.settings import KafkaSettings
from ingest.state.checkpoints import CheckpointPolicy, PendingCheckpoint, Tracker, prepare
from ingest.state.packing import PackedState, pack_states, unpack_states
from ingest.state.projection import Projection
from ingest.state.store import StateValue, state_value

log = logging.getLogger(__name__)

_FETCH_MS = 500
_MAX_RECORDS = 20_000
_SKIP_REASONS = ("undecodable", "unexpected_kind")


@dataclass(frozen=True, slots=True)
class Job:
    """Fold one partition from `start` to `stop` (picklable: it goes to a worker process)."""

    partition: int
    generation: int
    start: int
    stop: int
    """The first offset not to fold: the partition's last stable offset when the job began."""
    state: list[PackedState]
    """The partition's states at `start` (`pack_states`)."""
    dirty: tuple[str, ...]
    """Mailboxes whose state is not committed yet (a start from a checkpoint): the first segment
    writes them."""
    encoded: dict[str, bytes]
    """The committed encoding of mailboxes unchanged since (a checkpoint reuses them)."""
    tracker: Tracker
    kafka: KafkaSettings
    events_topic: str
    checkpoints_topic: str
    partition_count: int
    policy: CheckpointPolicy
    segment_records: int


@dataclass(frozen=True, slots=True)
class Segment:
    """What a worker folded since its previous segment, ready for the owner's transaction."""

    partition: int
    generation: int
    next_offset: int
    records: int
    states: tuple[StateValue, ...]
    """The mailboxes changed in the segment."""
    checkpoint: PendingCheckpoint | None
    checkpoint_seconds: float
    """Seconds encoding the checkpoint took (observed as cumi_projector_checkpoint_seconds)."""
    tally: Tally
    skipped: dict[str, int]
    tracker: Tracker
    """The partition's checkpoint tracker after the segment (as if its checkpoint was written)."""
    final: list[PackedState] | None = None
    """With the last segment: every state of the partition, to take back."""
    encoded: dict[str, bytes] = field(default_factory=dict)
    """With the last segment: the encoding of every state."""


@dataclass(slots=True)
class Tally:
    """Records folded by outcome, added to the projector's metrics once per batch (a labelled
    `inc()` per record was a tenth of its catch-up time), here or in a worker's segment."""

    events: dict[tuple[EventType, Outcome], int] = field(default_factory=dict)
    snapshots: dict[Outcome, int] = field(default_factory=dict)

    def fold(
        self, projection: Projection, value: bytes | None, ids: SchemaIds | None
    ) -> str | None:
        """Decode and apply one consumed value: the mailbox it changed (None: skipped, counted
        in cumi_projector_records_skipped_total)."""
        record = decode_consumed(value, ids, PROJECTOR_SKIPPED)
        if record is None:
            return None
        outcome = projection.apply(record)
        if type(record) is MailboxEvent:
            key = (record.event_type, outcome)
            self.events[key] = self.events.get(key, 0) + 1
        else:
            self.snapshots[outcome] = self.snapshots.get(outcome, 0) + 1
        return record.mailbox_id

    def publish(self) -> None:
        for (event_type, outcome), count in self.events.items():
            PROJECTOR_EVENTS.labels(event_type.value, outcome.value).inc(count)
        for outcome, count in self.snapshots.items():
            PROJECTOR_SNAPSHOTS.labels(outcome.value).inc(count)


@dataclass(frozen=True, slots=True)
class Failed:
    partition: int
    generation: int
    error: str


class Pool:
    """Worker processes folding `Job`s; their `Segment`s come back through `next_result()`.

    Started lazily by the first job (a worker is a fresh Python importing aiokafka: about a second),
    stopped with the projector."""

    def __init__(self, processes: int, log_level: str = "INFO") -> None:
        self.processes = processes
        self._log_level = log_level
        self._context = multiprocessing.get_context("spawn")  # no fork of a running event loop
        self._workers: list[Any] = []
        self._tasks: Any = None
        self._results: Any = None
        self._generations: Any = None
        self._size = 0

    @property
    def started(self) -> bool:
        return bool(self._workers)

    def _start(self, partitions: int) -> None:
        ctx = self._context
        self._tasks, self._results = ctx.Queue(), ctx.Queue(maxsize=2 * self.processes)
        self._generations = ctx.Array("q", partitions, lock=False)
        self._size = partitions
        # more workers than partitions would have nothing to do
        for index in range(min(self.processes, partitions)):
            worker = ctx.Process(
                target=_work,
                args=(self._tasks, self._results, self._generations, self._log_level),
                name=f"cumi-catch-up-{index}",
                daemon=True,
            )
            worker.start()
            self._workers.append(worker)
        log.info(
            "catch-up: %d worker processes started (pids %s)",
            len(self._workers),
            " ".join(str(w.pid) for w in self._workers),
        )

    def begin(self, partition: int, partitions: int) -> int | None:
        """A new job's generation for `partition` (of `partitions`), cancelling any running one;
        starts the workers the first time. None for a partition added to the events topic since
        (the projector folds it itself)."""
        if not self._workers:
            self._start(partitions)
        if partition >= self._size:
            return None
        return self.cancel(partition)

    def submit(self, job: Job) -> None:
        self._tasks.put(job)

    def cancel(self, partition: int) -> int:
        """Move the partition's generation on (its running job stops); the new generation."""
        if self._generations is None or partition >= self._size:
            return 0
        self._generations[partition] += 1
        return int(self._generations[partition])

    def next_result(self, timeout: float) -> Segment | Failed | None:
        """Blocking (run it in a thread): the next segment, or None after `timeout` seconds."""
        if self._results is None:
            return None
        try:
            result: Segment | Failed = self._results.get(timeout=timeout)
        except queue.Empty:
            return None
        return result

    def dead(self) -> list[str]:
        """Workers that ended although nobody stopped them."""
        return [f"{w.name} (exit code {w.exitcode})" for w in self._workers if not w.is_alive()]

    def stop(self) -> None:
        """Cancel every job and end the workers (bounded: a stuck one is killed)."""
        if not self._workers:
            return
        for partition in range(self._size):
            self.cancel(partition)
        for _ in self._workers:
            self._tasks.put(None)
        with contextlib.suppress(queue.Empty):  # a worker blocked on a full results queue
            while True:
                self._results.get(timeout=0.2)
        for worker in self._workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
        self._tasks.close()
        self._results.close()
        self._workers.clear()


def _work(tasks: Any, results: Any, generations: Any, log_level: str) -> None:
    """A worker process: fold jobs until told to stop (None) or the projector is gone."""
    configure_logging(log_level)
    try:
        while _owner_alive():
            try:
                job = tasks.get(timeout=1)
            except queue.Empty:
                continue
            if job is None:
                return
            if generations[job.partition] != job.generation:
                continue  # cancelled before it began
            try:
                asyncio.run(_Fold(job, results, generations).run())
            except Exception as e:  # reported to the projector, which fails (exit 1)
                results.put(Failed(job.partition, job.generation, repr(e)))
    finally:
        if not _owner_alive():
            # nobody reads the results any more: exit without waiting to flush them
            results.cancel_join_thread()


class _Fold:
    """One job in a worker process."""

    def __init__(self, job: Job, results: Any, generations: Any) -> None:
        self.job, self._results, self._generations = job, results, generations
        self.projection = Projection()
        unpack_states(job.state, self.projection)
        self.encoded = dict(job.encoded)
        self.tracker = dataclasses.replace(job.tracker)
        self.next_offset = job.start
        self._ids = schema_ids(job.kafka.schema_registry)
        self._dirty: set[str] = set(job.dirty)
        self._records = 0
        self._since = job.start
        self._tally = Tally()
        self._skipped = _skipped_now()

    @property
    def cancelled(self) -> bool:
        if self._generations[self.job.partition] != self.job.generation:
            return True
        return not _owner_alive()

    async def run(self) -> None:
        job = self.job
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            **job.kafka.client_kwargs(),
        )
        await consumer.start()
        tp = TopicPartition(job.events_topic, job.partition)
        try:
            consumer.assign([tp])
            consumer.seek(tp, job.start)
            await self._fold(consumer, tp)
        finally:
            await consumer.stop()
            if gc.get_freeze_count():
                gc.unfreeze()

    async def _fold(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        job = self.job
        while self.next_offset < job.stop:
            if self.cancelled:
                return
            batch = await consumer.getmany(tp, timeout_ms=_FETCH_MS, max_records=_MAX_RECORDS)
            messages = batch.get(tp, [])
            while messages:
                # a segment ends where it is due: checkpoints as far apart as the projector's own
                boundary = self._boundary()
                messages = messages[self._apply(messages, boundary) :]
                if messages and self.next_offset < job.stop:
                    await self._hand_back(final=False)
                elif messages:
                    break  # the rest is past the job's end
            # markers of committed transactions have offsets but hold no record
            self.next_offset = max(self.next_offset, min(await consumer.position(tp), job.stop))
            if speedups.ENABLED and gc.isenabled():
                gc.freeze()  # the state only grows: spare it the collector's full passes
            if self.next_offset < job.stop and self._segment_due():
                await self._hand_back(final=False)
        if not self.cancelled:
            await self._hand_back(final=True)

    def _boundary(self) -> int:
        """The offset at which the current segment is due (or the job's end)."""
        job, tracker = self.job, self.tracker
        boundary = min(job.stop, self._since + job.segment_records)
        if job.policy.enabled:
            boundary = min(
                boundary, max(tracker.last_offset, tracker.from_offset, 0) + job.policy.records
            )
        return max(boundary, self.next_offset + 1)

    def _apply(self, messages: Sequence[Any], boundary: int) -> int:
        """Fold the messages below `boundary`; how many there were."""
        fold, projection, dirty, ids = self._tally.fold, self.projection, self._dirty, self._ids
        first = last = -1
        applied = 0
        for message in messages:
            if message.offset >= boundary:
                # nothing readable lies between the last record and this one (a transaction's
                # marker, aborted records): the segment ends at the boundary itself
                self.next_offset = boundary
                break
            applied += 1
            self.next_offset = message.offset + 1
            self._records += 1
            first = message.timestamp if first < 0 else min(first, message.timestamp)
            last = max(last, message.timestamp)
            mailbox = fold(projection, message.value, ids)
            if mailbox is not None:
                dirty.add(mailbox)
        if first >= 0:
            self.tracker.saw(first, last)
        return applied

    def _segment_due(self) -> bool:
        return self.next_offset - self._since >= self.job.segment_records or self.job.policy.due(
            self.tracker, self.next_offset, time.time()
        )

    async def _hand_back(self, *, final: bool) -> None:
        job, mailboxes = self.job, self.projection.mailboxes
        states = tuple(state_value(mailboxes[m]) for m in sorted(self._dirty))
        self.encoded.update((s.mailbox_id, s.value) for s in states)
        checkpoint, started = None, time.monotonic()
        if job.policy.due(self.tracker, self.next_offset, time.time()):
            checkpoint = await prepare(
                topic=job.checkpoints_topic,
                events_topic=job.events_topic,
                partition=job.partition,
                events_partitions=job.partition_count,
                next_offset=self.next_offset,
                tracker=self.tracker,
                states=mailboxes,
                encoded=self.encoded,
            )
            self.encoded.update(
                (e.mailbox_id, e.state) for chunk in checkpoint.chunks for e in chunk.entries
            )
            self.tracker = Tracker(
                from_offset=self.next_offset,
                last_offset=self.next_offset,
                last_written=checkpoint.written_at.timestamp(),
            )
        skipped = _skipped_now()
        segment = Segment(
            partition=job.partition,
            generation=job.generation,
            next_offset=self.next_offset,
            records=self._records,
            states=states,
            checkpoint=checkpoint,
            checkpoint_seconds=time.monotonic() - started if checkpoint is not None else 0.0,
            tally=self._tally,
            skipped={r: skipped[r] - self._skipped[r] for r in _SKIP_REASONS},
            tracker=dataclasses.replace(self.tracker),
            final=pack_states(self.projection) if final else None,
            encoded=self.encoded if final else {},
        )
        self._dirty, self._records, self._since, self._skipped = set(), 0, self.next_offset, skipped
        self._tally = Tally()
        await self._put(segment)

    async def _put(self, segment: Segment) -> None:
        """Into the results queue (bounded: the owner commits at its pace), unless cancelled."""
        while not self.cancelled:
            try:
                self._results.put(segment, timeout=0.2)
                return
            except queue.Full:
                await asyncio.sleep(0)


def _owner_alive() -> bool:
    """Whether the projector that started this worker still runs (a SIGKILLed one cannot stop
    its workers: they stop themselves)."""
    owner = multiprocessing.parent_process()
    return owner is None or owner.is_alive()


def _skipped_now() -> dict[str, int]:
    return {
        reason: int(
            PROJECTOR_REGISTRY.get_sample_value(
                "cumi_projector_records_skipped_total", {"reason": reason}
            )
            or 0
        )
        for reason in _SKIP_REASONS
    }
