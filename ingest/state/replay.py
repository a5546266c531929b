"""Mailbox state as of a past moment, folded from the event log: `replay()` (the command is
`ingest.commands.replay`).

The fold is `ingest.state.projection`, the projector's own; only the bound differs:

- `--at TIME` (ISO 8601, zone-less means UTC, or epoch milliseconds): each partition is read up to
  `offsets_for_times(TIME + 1 ms)`, the first record whose timestamp (the event's EventTime, a
  snapshot's taken_at) is later than TIME. The log is the history as it was recorded, so that is
  "everything the log held when TIME had passed"; with EventTimes that grow along a partition (the
  normal case) it is exactly the records with a time ≤ TIME. A late repeat of an old event keeps
  its old EventTime; one logged after the cut arrived after TIME and is left out.
- `--usn N` (with `--mailbox`): a mailbox's records are all in one partition, in the order they
  were produced (per-key order). Its USNs grow along that order except for repeats and late
  stragglers of older changes, which the fold ignores or counts anyway. So the mailbox's history up
  to USN N is the prefix of its records before the first one with a USN above N: the replay stops
  there. Repeats of older USNs before that point are part of the state as of N (counted as
  duplicates or stale, as the projector counted them then).
- `--offset P` (with `--mailbox`): records of the mailbox's partition at offsets ≤ P.
- none of these: everything up to the end of the log when the replay started.

`--mailbox` reads only the partition the producers' default partitioner puts the key in (murmur2
of the key, `ingest.eventlog.topics.partition_for`) and decodes only that mailbox's records.

With a checkpoints topic (`checkpoints=`, the projector's: ingest.state.checkpoints), each
partition starts from its newest checkpoint at or before the bound — its states instead of the
records below its offset — and folds only the records after it: the same records in the same
order as from the beginning, so the same answer (for `--usn`, the newest checkpoint in which the
mailbox's USN is ≤ N). Without one, or with none early enough, from the log's beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ingest.errors import ConfigError, DecodeError, TopicMissing
from ingest.eventlog.reader import decode_log_record
from ingest.eventlog.schema_registry import schema_ids
from ingest.eventlog.topics import describe_topic, partition_for
from ingest.ops.metrics import PROJECTOR_REPLAY_PROGRESS, PROJECTOR_REPLAY_RECORDS
from ingest.settings import SchemaRegistrySettings
from ingest.state.checkpoints import CheckpointReader, newest_before, newest_within_usn
from ingest.state.packing import PackedState, pack_states, unpack_states
from ingest.state.projection import Projection

log = logging.getLogger(__name__)

_FETCH_MS = 500
_MAX_RECORDS = 20_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class UntilTime:
    """Records with a timestamp ≤ `at` (bounded with offsets_for_times)."""

    at: dt.datetime

    @property
    def millis(self) -> int:
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=dt.UTC)
        return (at - _EPOCH) // dt.timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class UntilUsn:
    """The mailbox's records before its first one with a USN above `usn`."""

    usn: int


@dataclass(frozen=True, slots=True)
class UntilOffset:
    """Records of the mailbox's partition at offsets ≤ `offset`."""

    offset: int


Bound = UntilTime | UntilUsn | UntilOffset | None
Progress = Callable[[int, int], None]
"""Called with (records read, records to read) as the replay goes."""


async def replay(
    bootstrap: str,
    topic: str,
    mailbox: str | None = None,
    until: Bound = None,
    *,
    progress: Progress | None = None,
    workers: int | None = 1,
    schema_registry: SchemaRegistrySettings | None = None,
    checkpoints: str | None = None,
    **client_kwargs: Any,
) -> Projection:
    """Fold the events `topic` up to `until` into a `Projection` (one mailbox or all).

    `checkpoints`: the projector's checkpoints topic, to start each partition from its newest
    checkpoint at or before the bound (see the module docstring); None: from the beginning.

    Records of either framing are read; Confluent-framed ones need `schema_registry`.

    `workers` > 1 folds groups of partitions in that many processes at once: a partition holds
    whole mailboxes, so the groups' states are disjoint and simply put together. (The client
    settings must then be picklable: not an `ssl_context`; such a replay uses one process.)
    `workers=None` chooses: one process per CPU (at most one per partition) when there are at
    least `AUTO_MIN_RECORDS` records to read, else this process alone.
    """
    if isinstance(until, UntilUsn | UntilOffset) and mailbox is None:
        raise ConfigError("a USN or offset bound needs a mailbox (they are per mailbox)")
    described = await describe_topic(topic, bootstrap_servers=bootstrap, **client_kwargs)
    if described is None:
        raise TopicMissing(f"topic {topic!r} does not exist")
    count = described[0]
    numbers = [partition_for(mailbox, count)] if mailbox is not None else list(range(count))
    job = _Job(
        bootstrap,
        topic,
        tuple(numbers),
        mailbox,
        until,
        client_kwargs,
        schema_registry,
        checkpoints,
        count,
    )
    if len(numbers) < 2 or "ssl_context" in client_kwargs:
        workers = 1
    elif workers is None:
        workers = await _auto_workers(job)
    if workers > 1:
        return await _replay_in_processes(job, progress, min(workers, len(numbers)))
    return await _replay_partitions(job, progress)


AUTO_MIN_RECORDS = 200_000
"""Below this, `workers=None` folds in this process: starting a worker process (a fresh Python
importing aiokafka) costs about what folding 50,000 records does."""
AUTO_MIN_AFTER_CHECKPOINTS = 4 * AUTO_MIN_RECORDS
"""The same when the replay starts from checkpoints: each worker process then also hands back
every mailbox's state, checkpointed ones included (pickled, rebuilt in this process), which on
the benchmark log (2,000 mailboxes, 150,000 records after the checkpoints) made two processes
take twice as long as one."""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


async def _auto_workers(job: _Job) -> int:
    workers = min(available_cpus(), len(job.partitions))
    if workers < 2:
        return 1
    to_read, checkpointed = await _reading(job)
    threshold = AUTO_MIN_AFTER_CHECKPOINTS if checkpointed else AUTO_MIN_RECORDS
    return workers if sum(to_read.values()) >= threshold else 1


async def _records_to_read(job: _Job) -> dict[int, int]:
    """Partition → records between its beginning (or its newest checkpoint before the bound)
    and the job's bound."""
    return (await _reading(job))[0]


async def _reading(job: _Job) -> tuple[dict[int, int], bool]:
    """`_records_to_read`, and whether a checkpoint moved any partition's start."""
    consumer = _consumer(job)
    try:
        await consumer.start()
        tps = [TopicPartition(job.topic, n) for n in job.partitions]
        starts = await consumer.beginning_offsets(tps)
        stops = await _stops(consumer, tps, job.until)
    finally:
        await consumer.stop()
    checkpointed = False
    if job.checkpoints is not None:
        begin, _ = await _from_checkpoints(job, tps, starts, stops, load=False)
        starts, checkpointed = begin, begin != starts
    return {tp.partition: max(0, stops[tp] - starts[tp]) for tp in tps}, checkpointed


@dataclass(frozen=True, slots=True)
class _Job:
    """What to fold (picklable: it is handed to worker processes)."""

    bootstrap: str
    topic: str
    partitions: tuple[int, ...]
    mailbox: str | None
    until: Bound
    client_kwargs: dict[str, Any]
    schema_registry: SchemaRegistrySettings | None = None
    checkpoints: str | None = None
    """The checkpoints topic to start from (None: from the beginning)."""
    partition_count: int = 0
    """Of the events topic."""


def _consumer(job: _Job) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=job.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **job.client_kwargs,
    )


async def _replay_partitions(job: _Job, progress: Progress | None) -> Projection:
    mailbox, until, topic = job.mailbox, job.until, job.topic
    consumer = _consumer(job)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, n) for n in job.partitions]
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        stops = await _stops(consumer, tps, until)
        projection = Projection()
        if job.checkpoints is not None:
            starts, projection = await _from_checkpoints(job, tps, starts, stops, load=True)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        reader = _Reader(
            mailbox,
            until,
            starts,
            stops,
            progress,
            schema_registry=job.schema_registry,
            projection=projection,
        )
        await reader.run(consumer)
        return reader.projection
    finally:
        await consumer.stop()


async def _from_checkpoints(
    job: _Job,
    tps: Sequence[TopicPartition],
    starts: dict[TopicPartition, int],
    stops: dict[TopicPartition, int],
    *,
    load: bool,
) -> tuple[dict[TopicPartition, int], Projection]:
    """Where each partition starts once its newest usable checkpoint is taken (and, if `load`,
    the checkpoints' states: of `job.mailbox` only, when there is one)."""
    assert job.checkpoints is not None
    projection, begin = Projection(), dict(starts)
    reader = CheckpointReader(
        job.checkpoints, job.topic, bootstrap_servers=job.bootstrap, **job.client_kwargs
    )
    if not await reader.start(job.partition_count):
        return begin, projection
    try:
        listed = await reader.manifests(job.partitions)
        for tp in tps:
            manifests, mailbox = listed[tp.partition], job.mailbox
            if isinstance(job.until, UntilUsn) and mailbox is not None:

                async def entry(m: Any, mailbox: str = mailbox) -> Any:
                    return await reader.entry(m, mailbox)

                chosen = await newest_within_usn(manifests, stops[tp], job.until.usn, entry)
            else:
                chosen = newest_before(manifests, stops[tp])
            if chosen is None or chosen.next_offset <= starts[tp]:
                continue
            begin[tp] = chosen.next_offset
            if load:
                projection.mailboxes.update(await reader.states(chosen, job.mailbox))
    finally:
        await reader.stop()
    if load:
        skipped = sum(begin[tp] - starts[tp] for tp in tps)
        log.log(
            logging.INFO if skipped else logging.DEBUG,
            "%d of %d partitions start from a checkpoint (%d mailbox states): %d records "
            "skipped, %d to fold",
            sum(begin[tp] > starts[tp] for tp in tps),
            len(tps),
            len(projection.mailboxes),
            skipped,
            sum(max(0, stops[tp] - begin[tp]) for tp in tps),
        )
    return begin, projection


# -- several processes ------------------------------------------------------------------------

_progress_queue: Any = None
"""In a worker process: where it reports (worker, records read, records to read)."""


def _init_worker(queue: Any) -> None:
    global _progress_queue  # noqa: PLW0603 - per-process state of a pool worker
    _progress_queue = queue


def _replay_group(index: int, job: _Job) -> list[PackedState]:
    """In a worker process: fold the job's partitions, hand back the states (picklable)."""

    def report(done: int, total: int) -> None:
        _progress_queue.put((index, done, total))

    projection = asyncio.run(_replay_partitions(job, report))
    return pack_states(projection)


async def _replay_in_processes(job: _Job, progress: Progress | None, workers: int) -> Projection:
    groups = [
        dataclasses.replace(job, partitions=job.partitions[i::workers]) for i in range(workers)
    ]
    context = multiprocessing.get_context("spawn")  # no fork of a process running an event loop
    queue = context.SimpleQueue()
    # the totals before the processes start (a second or more to spawn and import): progress
    # then never shows a made-up 0/0, and a group that has not reported yet counts at 0 done
    to_read = await _records_to_read(job) if progress is not None else {}
    counts = [(0, sum(to_read.get(p, 0) for p in group.partitions)) for group in groups]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(workers, context, _init_worker, (queue,)) as pool:
        futures = [
            loop.run_in_executor(pool, _replay_group, i, group) for i, group in enumerate(groups)
        ]
        running = asyncio.gather(*futures)
        while not running.done():
            await asyncio.wait([running], timeout=0.2)
            while not queue.empty():
                index, done, total = queue.get()
                counts[index] = (done, total)
            if progress is not None:
                progress(sum(c[0] for c in counts), sum(c[1] for c in counts))
        results = running.result()
    projection = Projection()
    for packed in results:
        unpack_states(packed, projection)
    return projection


async def _stops(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], until: Bound
) -> dict[TopicPartition, int]:
    """Per partition, the first offset NOT to read."""
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)  # last stable offsets
    if isinstance(until, UntilOffset):
        return {tp: min(ends[tp], until.offset + 1) for tp in tps}
    if isinstance(until, UntilTime):
        found = await consumer.offsets_for_times({tp: until.millis + 1 for tp in tps})
        return {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in tps}
    return dict(ends)


class _Reader:
    """The read-and-fold loop of one replay."""

    def __init__(
        self,
        mailbox: str | None,
        until: Bound,
        starts: dict[TopicPartition, int],
        stops: dict[TopicPartition, int],
        progress: Progress | None,
        *,
        schema_registry: SchemaRegistrySettings | None = None,
        projection: Projection | None = None,
    ) -> None:
        self.projection = projection if projection is not None else Projection()
        self._ids = schema_ids(schema_registry)
        self._mailbox = mailbox
        self._key = mailbox.encode() if mailbox is not None else None
        self._max_usn = until.usn if isinstance(until, UntilUsn) else None
        self._stops = stops
        self._pending = {tp for tp in stops if stops[tp] > starts[tp]}
        self._total = sum(max(0, stops[tp] - starts[tp]) for tp in stops)
        self._read = 0
        self._progress = progress

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        with _collector_spared() as freeze:
            await self._run(consumer, freeze=freeze)

    async def _run(self, consumer: AIOKafkaConsumer, *, freeze: bool) -> None:
        PROJECTOR_REPLAY_PROGRESS.set(0)
        self._report()
        while self._pending:
            batch = await consumer.getmany(
                *self._pending, timeout_ms=_FETCH_MS, max_records=_MAX_RECORDS
            )
            for tp, messages in batch.items():
                if tp in self._pending:
                    self._fold(tp, messages)
            if freeze:
                gc.freeze()
            for tp in list(self._pending):
                # markers of committed transactions have offsets but yield no record
                if await consumer.position(tp) >= self._stops[tp]:
                    self._pending.discard(tp)
            self._report()
        PROJECTOR_REPLAY_PROGRESS.set(1)

    def _fold(self, tp: TopicPartition, messages: Sequence[Any]) -> None:
        stop, key, apply = self._stops[tp], self._key, self.projection.apply
        max_usn, read, ids = self._max_usn, 0, self._ids
        for message in messages:
            if message.offset >= stop:
                self._pending.discard(tp)
                break
            read += 1
            if key is not None and message.key != key:
                continue  # another mailbox of the same partition: not even decoded
            value = message.value
            try:
                record = decode_log_record(value, ids) if value is not None else None
            except DecodeError as e:
                log.warning("undecodable record skipped: %s", e)
                continue
            if record is None:
                continue
            if max_usn is not None and record.usn > max_usn:
                self._pending.discard(tp)
                break
            apply(record)
        self._read += read
        PROJECTOR_REPLAY_RECORDS.inc(read)

    def _report(self) -> None:
        if self._total:
            PROJECTOR_REPLAY_PROGRESS.set(min(1.0, self._read / self._total))
        if self._progress is not None:
            self._progress(min(self._read, self._total), self._total)


@contextlib.contextmanager
def _collector_spared() -> Iterator[bool]:
    """Whether to `gc.freeze()` what exists after each batch (then `unfreeze` at the end).

    The fold's state only grows, and every batch of records passes through the older generations
    while it is folded, so the collector's full passes came often and went over the whole state
    to find nothing: a fifth of a replay's CPU. Frozen objects are left out of those passes. Not
    done if the process already uses the permanent generation (not ours to empty) or has no GC."""
    spare = gc.isenabled() and gc.get_freeze_count() == 0
    try:
        yield spare
    finally:
        if spare:
            gc.unfreeze()
