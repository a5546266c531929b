"""Checkpoints: the projector's folded state of a partition, kept so that history need not be folded
from the beginning of the log (`ingest replay --at/--usn/--offset`, a projector without state).

A checkpoint of events partition p at offset C is the state of every mailbox of p after folding
every record of p below C — exactly what the projector holds when its next offset is C. The
projector writes it in the same Kafka transaction as its state records and its consumer offset C
(`StateWriter.commit(also=…)`), so a checkpoint exists if and only if that commit does: it is never
ahead of or behind what it claims. A replay bounded at offset S (a time bound becomes, per
partition, the first offset stamped later than the time, as it always did) starts from the newest
checkpoint with C ≤ S, with its states, and folds only [C, S): the same records in the same order
as the full fold, so the same answer. For `--usn N` (one mailbox), the newest checkpoint in which
the mailbox's USN (the highest among its records folded, `CheckpointEntry.usn`) is ≤ N: the full
fold reads past C before it meets a record above N.

Layout (docs/topics.md): the checkpoints topic has two partitions per events partition. Partition p
holds the *manifests* (`CheckpointManifest`: offsets, time range, where the chunks are), partition
`events partitions + p` the *chunks* (`CheckpointChunk`: consecutive mailboxes by id, each state
as its state-topic value, `ingest.state.store.encode_state`). A reader lists p's checkpoints by
reading one small partition and then fetches only the chunks it needs — one chunk for one mailbox
(the manifest says which mailbox ids each chunk holds). Chunks, not one record per mailbox: a few
hundred KiB per record instead of thousands of small ones (fewer sends and fetches, less per-record
overhead), cut at `CHUNK_BYTES` so every chunk stays well within Kafka's default 1 MiB message size
(a single mailbox larger than that is a chunk of its own; it is a state-topic record too, so it
fits the same limit). The manifest is written after its chunks (it carries their offsets) in the
same transaction.

Checkpoints carry `FOLD_VERSION`: when what the fold computes changes (projection semantics, or a
state field the fold needs), bump it and every older checkpoint is ignored (replays fold from the
log's beginning until the projector has written new ones). tests/unit/test_checkpointing.py pins the
fold's code to the version, so a change to the fold cannot forget the question.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ingest.errors import DecodeError
from ingest.eventlog import codec
from ingest.eventlog.clients import close_consumer, pace_metadata
from ingest.eventlog.topics import describe_topic
from ingest.events import CheckpointChunk, CheckpointChunkRef, CheckpointEntry, CheckpointManifest
from ingest.state.projection import MailboxState
from ingest.state.store import decode_state, encode_state

log = logging.getLogger(__name__)
_T = TypeVar("_T")

FOLD_VERSION = 2
"""What the fold computes; see the module docstring."""
CHUNK_BYTES = 512 * 1024
"""A chunk takes mailboxes while it stays under this many bytes of states."""
_FETCH_MS = 500
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def manifest_partition(partition: int) -> int:
    return partition


def chunk_partition(partition: int, events_partitions: int) -> int:
    return events_partitions + partition


def _moment(millis: int | None) -> dt.datetime | None:
    return None if millis is None else _EPOCH + dt.timedelta(milliseconds=millis)


# --- when (the projector) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """CUMI_PROJECTOR_CHECKPOINT_RECORDS / _INTERVAL_SECONDS: a partition writes a checkpoint with
    the commit that takes it `records` offsets past its previous one, or `interval_s` after it
    (if anything was folded meanwhile). `records` 0: no checkpoints."""

    records: int = 25_000
    interval_s: float = 86_400.0

    @property
    def enabled(self) -> bool:
        return self.records > 0

    def due(self, tracker: Tracker, next_offset: int, now: float) -> bool:
        if not self.enabled or next_offset <= tracker.last_offset:
            return False
        since = next_offset - max(tracker.last_offset, tracker.from_offset, 0)
        return since >= self.records or now - tracker.last_written >= self.interval_s


@dataclass(slots=True)
class Tracker:
    """What the projector knows about the checkpoints of one partition it owns."""

    from_offset: int
    """Where the records folded since the last checkpoint (or since the restore) begin."""
    last_offset: int = -1
    """`next_offset` of the partition's newest checkpoint (-1: none known)."""
    last_written: float = field(default_factory=time.time)
    """Wall-clock time of the newest checkpoint (or of the restore, if none)."""
    first_ms: int | None = None
    last_ms: int | None = None
    """Record timestamps folded since `from_offset`."""

    @classmethod
    def resumed(cls, offset: int, newest: CheckpointManifest | None) -> Tracker:
        if newest is None or newest.next_offset > offset:  # none, or not ours to trust
            return cls(from_offset=offset)
        written = (newest.written_at - _EPOCH).total_seconds()
        return cls(from_offset=offset, last_offset=newest.next_offset, last_written=written)

    def saw(self, first_ms: int, last_ms: int) -> None:
        """Records stamped between these times were folded."""
        if first_ms >= 0 and (self.first_ms is None or first_ms < self.first_ms):
            self.first_ms = first_ms
        if last_ms >= 0 and (self.last_ms is None or last_ms > self.last_ms):
            self.last_ms = last_ms

    def written(self, manifest: CheckpointManifest) -> None:
        self.from_offset = self.last_offset = manifest.next_offset
        self.last_written = (manifest.written_at - _EPOCH).total_seconds()
        self.first_ms = self.last_ms = None


# --- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingCheckpoint:
    """A checkpoint encoded and cut into chunks, ready to go into a transaction."""

    topic: str
    events_topic: str
    partition: int
    events_partitions: int
    next_offset: int
    from_offset: int
    first_ms: int | None
    last_ms: int | None
    chunks: tuple[CheckpointChunk, ...]
    written_at: dt.datetime

    @property
    def timestamp_ms(self) -> int:
        """Kafka timestamp of its records: when it was written (retention goes by it). Not the
        EventTime it covers: a rebuild writes checkpoints of old history, which the broker's
        time-based retention would delete at once (the active segment included)."""
        return self.written_ms

    @property
    def written_ms(self) -> int:
        return int(self.written_at.timestamp() * 1000)

    async def send(self, producer: AIOKafkaProducer) -> CheckpointManifest:
        """Chunks, then the manifest pointing at them; inside the caller's transaction."""
        target = chunk_partition(self.partition, self.events_partitions)
        values = [codec.encode(chunk) for chunk in self.chunks]
        futures = []
        for chunk, value in zip(self.chunks, values, strict=True):
            futures.append(
                await producer.send(
                    self.topic,
                    value,
                    key=f"{self.partition}:{self.next_offset}:{chunk.index}".encode(),
                    partition=target,
                    timestamp_ms=self.timestamp_ms,
                    headers=codec.kafka_headers(chunk),
                )
            )
        placed = await asyncio.gather(*futures)
        manifest = self.manifest(
            [
                _ref(chunk, meta.offset, len(value))
                for chunk, meta, value in zip(self.chunks, placed, values, strict=True)
            ]
        )
        await (
            await producer.send(
                self.topic,
                codec.encode(manifest),
                key=f"{self.partition}:{self.next_offset}".encode(),
                partition=manifest_partition(self.partition),
                timestamp_ms=self.timestamp_ms,
                headers=codec.kafka_headers(manifest),
            )
        )
        return manifest

    def manifest(self, refs: Sequence[CheckpointChunkRef]) -> CheckpointManifest:
        entries = [e for chunk in self.chunks for e in chunk.entries]
        return CheckpointManifest(
            events_topic=self.events_topic,
            partition=self.partition,
            next_offset=self.next_offset,
            from_offset=self.from_offset,
            first_time=_moment(self.first_ms),
            last_time=_moment(self.last_ms),
            fold_version=FOLD_VERSION,
            mailboxes=len(entries),
            state_bytes=sum(len(e.state) for e in entries),
            max_usn=max((e.usn for e in entries), default=-1),
            chunks=tuple(refs),
            written_at=self.written_at,
        )

    @property
    def size(self) -> int:
        return sum(len(e.state) for chunk in self.chunks for e in chunk.entries)


def _ref(chunk: CheckpointChunk, offset: int, size: int) -> CheckpointChunkRef:
    return CheckpointChunkRef(
        offset=offset,
        first_mailbox_id=chunk.entries[0].mailbox_id if chunk.entries else "",
        last_mailbox_id=chunk.entries[-1].mailbox_id if chunk.entries else "",
        mailboxes=len(chunk.entries),
        bytes=size,
    )


async def prepare(
    *,
    topic: str,
    events_topic: str,
    partition: int,
    events_partitions: int,
    next_offset: int,
    tracker: Tracker,
    states: Mapping[str, MailboxState],
    encoded: Mapping[str, bytes] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> PendingCheckpoint:
    """Every state of the partition as an entry (outside any transaction), cut into chunks by
    mailbox id. `encoded` has the current `encode_state` of some mailboxes already; the others
    are encoded here, yielding to the event loop now and then."""
    entries: list[CheckpointEntry] = []
    known = encoded or {}
    for count, mailbox_id in enumerate(sorted(states), 1):
        state = states[mailbox_id]
        value = known.get(mailbox_id)
        if value is None:
            value = encode_state(state)
            if count % 50 == 0:
                await asyncio.sleep(0)  # heartbeats, the read API
        entries.append(CheckpointEntry(mailbox_id, state.usn, value))
    return PendingCheckpoint(
        topic=topic,
        events_topic=events_topic,
        partition=partition,
        events_partitions=events_partitions,
        next_offset=next_offset,
        from_offset=tracker.from_offset,
        first_ms=tracker.first_ms,
        last_ms=tracker.last_ms,
        chunks=tuple(_chunks(events_topic, partition, next_offset, entries, chunk_bytes)),
        written_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
    )


def _chunks(
    events_topic: str,
    partition: int,
    next_offset: int,
    entries: Iterable[CheckpointEntry],
    chunk_bytes: int,
) -> Iterable[CheckpointChunk]:
    part: list[CheckpointEntry] = []
    size = index = 0
    for entry in entries:
        if part and size + len(entry.state) > chunk_bytes:
            yield CheckpointChunk(events_topic, partition, next_offset, index, tuple(part))
            part, size, index = [], 0, index + 1
        part.append(entry)
        size += len(entry.state)
    # an empty partition still gets one (empty) chunk: the manifest always points somewhere
    yield CheckpointChunk(events_topic, partition, next_offset, index, tuple(part))


# --- reading ----------------------------------------------------------------------------------


class CheckpointReader:
    """Lists the checkpoints of events partitions and reads their states (read_committed).

    Only checkpoints of `events_topic` with today's `FOLD_VERSION` whose chunks are still on the
    topic (retention) are listed. A missing or misshapen topic lists none."""

    def __init__(self, topic: str, events_topic: str, **client_kwargs: Any) -> None:
        self.topic = topic
        self.events_topic = events_topic
        self._client_kwargs = client_kwargs
        self._consumer: AIOKafkaConsumer | None = None
        self.events_partitions = 0
        """Of the events topic, as the checkpoints topic's partitions say (0: no usable topic)."""

    async def start(self, events_partitions: int) -> bool:
        """Whether there is a usable checkpoints topic for an events topic of that many
        partitions."""
        described = await describe_topic(self.topic, **self._client_kwargs)
        if described is None:
            log.info("no checkpoints topic %s: folding from the beginning", self.topic)
            return False
        if described[0] != 2 * events_partitions:
            log.warning(
                "checkpoints topic %s has %d partitions, not 2 x %d: not used",
                self.topic,
                described[0],
                events_partitions,
            )
            return False
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **self._client_kwargs,
        )
        pace_metadata(consumer._client)
        try:
            await consumer.start()
        except BaseException:
            with contextlib.suppress(KafkaError):
                await consumer.stop()
            raise
        self._consumer = consumer
        self.events_partitions = events_partitions
        return True

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer)

    async def manifests(self, partitions: Collection[int]) -> dict[int, list[CheckpointManifest]]:
        """The usable checkpoints of each events partition, oldest first."""
        found: dict[int, list[CheckpointManifest]] = {p: [] for p in partitions}
        consumer = self._consumer
        if consumer is None or not partitions:
            return found
        tps = [TopicPartition(self.topic, manifest_partition(p)) for p in partitions]
        chunk_tps = [
            TopicPartition(self.topic, chunk_partition(p, self.events_partitions))
            for p in partitions
        ]
        kept = await consumer.beginning_offsets(chunk_tps)
        async for tp, record in self._read_all(consumer, tps):
            manifest = _decode(record.value, CheckpointManifest)
            if manifest is None or not self._usable(manifest, kept):
                continue
            found[tp.partition].append(manifest)
        for listed in found.values():
            listed.sort(key=lambda m: m.next_offset)
        return found

    async def newest(self, partition: int) -> CheckpointManifest | None:
        """The newest usable checkpoint of one partition (the projector, on restore)."""
        listed = (await self.manifests([partition]))[partition]
        return listed[-1] if listed else None

    def _usable(self, manifest: CheckpointManifest, kept: Mapping[TopicPartition, int]) -> bool:
        if manifest.events_topic != self.events_topic or manifest.fold_version != FOLD_VERSION:
            return False
        tp = TopicPartition(self.topic, chunk_partition(manifest.partition, self.events_partitions))
        # retention may have deleted a chunk's segment before its manifest's
        return all(ref.offset >= kept.get(tp, 0) for ref in manifest.chunks)

    async def states(
        self, manifest: CheckpointManifest, mailbox: str | None = None
    ) -> dict[str, MailboxState]:
        """Every state of the checkpoint, or one mailbox's (absent: it had no records yet)."""
        entries = await self.entries(manifest, mailbox)
        return {e.mailbox_id: decode_state(e.state) for e in entries}

    async def entries(
        self, manifest: CheckpointManifest, mailbox: str | None = None
    ) -> list[CheckpointEntry]:
        refs = list(manifest.chunks)
        if mailbox is not None:
            refs = [r for r in refs if r.first_mailbox_id <= mailbox <= r.last_mailbox_id]
        if not refs:
            return []
        chunks = await self._chunks(manifest, [r.offset for r in refs])
        return [
            e
            for chunk in chunks
            for e in chunk.entries
            if mailbox is None or e.mailbox_id == mailbox
        ]

    async def entry(self, manifest: CheckpointManifest, mailbox: str) -> CheckpointEntry | None:
        found = await self.entries(manifest, mailbox)
        return found[0] if found else None

    async def _chunks(
        self, manifest: CheckpointManifest, offsets: Sequence[int]
    ) -> list[CheckpointChunk]:
        consumer = self._require()
        tp = TopicPartition(self.topic, chunk_partition(manifest.partition, self.events_partitions))
        wanted, chunks = set(offsets), []
        consumer.assign([tp])
        consumer.seek(tp, min(offsets))
        last = max(offsets)
        while wanted and await consumer.position(tp) <= last:
            batch = await consumer.getmany(tp, timeout_ms=_FETCH_MS)
            for record in batch.get(tp, []):
                if record.offset in wanted:
                    wanted.discard(record.offset)
                    chunk = _decode(record.value, CheckpointChunk)
                    if chunk is None or chunk.next_offset != manifest.next_offset:
                        raise DecodeError(
                            f"checkpoint chunk at {tp.topic}[{tp.partition}]@{record.offset} "
                            "is not the one its manifest names"
                        )
                    chunks.append(chunk)
        if wanted:
            raise DecodeError(f"checkpoint chunks {sorted(wanted)} of {tp} are gone")
        consumer.pause(tp)
        return chunks

    async def _read_all(
        self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
    ) -> AsyncIterator[tuple[TopicPartition, Any]]:
        """Every committed record of `tps`, from the beginning to the end offsets of now."""
        consumer.assign(list(tps))
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(list(tps))
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=_FETCH_MS)
            for tp, records in batch.items():
                for record in records:
                    yield tp, record
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        consumer.pause(*tps)

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("CheckpointReader is not started")
        return self._consumer


def _decode(value: bytes | None, kind: type[_T]) -> _T | None:
    if value is None:
        return None
    try:
        record = codec.decode(value)
    except DecodeError as e:
        log.error("undecodable record on the checkpoints topic skipped: %s", e)
        return None
    return record if isinstance(record, kind) else None


# --- choosing (replay) ------------------------------------------------------------------------


def newest_before(manifests: Sequence[CheckpointManifest], stop: int) -> CheckpointManifest | None:
    """The newest checkpoint covering nothing at or past offset `stop` (manifests oldest first)."""
    index = bisect.bisect_right([m.next_offset for m in manifests], stop)
    return manifests[index - 1] if index else None


async def newest_within_usn(
    manifests: Sequence[CheckpointManifest],
    stop: int,
    usn: int,
    entry: Callable[[CheckpointManifest], Awaitable[CheckpointEntry | None]],
) -> CheckpointManifest | None:
    """The newest checkpoint before `stop` in which the mailbox (`entry` fetches its entry) has
    a USN ≤ `usn` or no state yet. A mailbox's USN only grows from one checkpoint to the next,
    so a binary search fetches a handful of entries."""
    candidates = [m for m in manifests if m.next_offset <= stop]
    low, high, best = 0, len(candidates) - 1, None
    while low <= high:
        middle = (low + high) // 2
        found = await entry(candidates[middle])
        if found is None or found.usn <= usn:
            best, low = candidates[middle], middle + 1
        else:
            high = middle - 1
    return best
