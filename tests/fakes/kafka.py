"""A fake of the registry consumer (aiokafka's group consumer on one in-memory topic) and of the
assignment's target (the subscription manager's add/remove).

The group protocol is the test's: `assign` and `revoke` call the rebalance listener the way
aiokafka's coordinator does (revoked first, then the new assignment). `getmany` returns what lies
at the consumer's positions in the assigned partitions, `chunk` records at most per partition per
poll; with nothing to return it waits for a change (or its timeout), so a poll loop never spins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from ingest.eventlog import codec
from ingest.events import MailboxRegistryEntry, RepairReason


@dataclass(frozen=True, slots=True)
class FakeRecord:
    offset: int
    key: bytes | None
    value: bytes | None


class FakeConsumer:
    """What `RegistryAssignment` uses of `AIOKafkaConsumer`; `factory` is its `consumer_factory`."""

    def __init__(self, topic: str, partitions: int = 4) -> None:
        self.topic = topic
        self.logs: dict[int, list[FakeRecord]] = {p: [] for p in range(partitions)}
        self.ends: dict[int, int] = dict.fromkeys(range(partitions), 0)
        """High watermark per partition: past the last record (control records may follow it)."""
        self.chunk = 10_000
        self.options: dict[str, Any] = {}
        self.listener: Any = None
        self.started = False
        self.stopped = False
        self.start_error: BaseException | None = None
        self.end_offset_errors: list[KafkaError] = []
        self.position_errors: list[KafkaError] = []
        self.poll_errors: list[KafkaError] = []
        """Raised by the next polls (getmany), one each."""
        self.polls = 0
        self.generation = 0
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._changed = asyncio.Event()

    # -- what the test does ----------------------------------------------------------------------

    def factory(self, **options: Any) -> FakeConsumer:
        self.options = options
        return self

    def append(self, partition: int, key: bytes | None, value: bytes | None) -> int:
        """A record at the end of `partition`; returns its offset."""
        offset = self.ends[partition]
        self.logs[partition].append(FakeRecord(offset, key, value))
        self.ends[partition] = offset + 1
        self._changed.set()
        return offset

    def put(self, partition: int, entry: MailboxRegistryEntry) -> int:
        return self.append(partition, entry.mailbox_id.encode(), codec.encode(entry))

    def tombstone(self, partition: int, alias: str) -> int:
        return self.append(partition, alias.encode(), None)

    def revoke(self) -> None:
        """A rebalance begins: every partition is revoked (aiokafka's eager protocol)."""
        self.listener.on_partitions_revoked(set(self._assigned))
        self._assigned = set()

    def assign(self, *partitions: int) -> None:
        """A rebalance ends with `partitions` assigned to this member."""
        self.generation += 1
        self._assigned = {TopicPartition(self.topic, p) for p in partitions}
        self.listener.on_partitions_assigned(set(self._assigned))
        self._changed.set()

    def rebalance(self, *partitions: int) -> None:
        self.revoke()
        self.assign(*partitions)

    def wake(self) -> None:
        """End a waiting poll now (after the test moved a fake clock)."""
        self._changed.set()

    async def polled(self, count: int = 2) -> None:
        """Return once the poll loop has made `count` more polls (each woken at once)."""
        target = self.polls + count
        async with asyncio.timeout(2.0):
            while self.polls < target:
                self.wake()
                await asyncio.sleep(0.001)

    # -- what the consumer does ------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str], *, listener: Any) -> None:
        assert list(topics) == [self.topic]
        self.listener = listener

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._positions[tp] = offset

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        if self.end_offset_errors:
            raise self.end_offset_errors.pop(0)
        return {tp: self.ends[tp.partition] for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        """Past the last record, the position moves on to the high watermark (the fetcher skips
        trailing control records and compacted-away offsets)."""
        if self.position_errors:
            raise self.position_errors.pop(0)
        position = self._positions.get(tp, 0)
        if not [r for r in self.logs[tp.partition] if r.offset >= position]:
            return max(position, self.ends[tp.partition])
        return position

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[FakeRecord]]:
        self.polls += 1
        if self.poll_errors:
            raise self.poll_errors.pop(0)
        batch = self._fetch()
        if not batch:
            self._changed.clear()
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return batch

    def _fetch(self) -> dict[TopicPartition, list[FakeRecord]]:
        batch = {}
        for tp in sorted(self._assigned):
            position = self._positions.get(tp, 0)
            records = [r for r in self.logs[tp.partition] if r.offset >= position][: self.chunk]
            if records:
                batch[tp] = records
                self._positions[tp] = records[-1].offset + 1
        return batch

    @property
    def _coordinator(self) -> Any:
        """aiokafka's coordinator, read for its generation only."""
        return self


class FakeTarget:
    """A `MailboxTarget` (the subscription manager's add/remove) that keeps what it was told."""

    def __init__(self) -> None:
        self.watched: set[str] = set()
        self.calls: list[tuple[str, frozenset[str], RepairReason | None]] = []

    def add(self, aliases: Iterable[str], repair: RepairReason | None) -> int:
        new = set(aliases) - self.watched
        self.watched |= new
        self.calls.append(("add", frozenset(aliases), repair))
        return len(new)

    async def remove(self, aliases: Iterable[str]) -> int:
        gone = set(aliases) & self.watched
        self.watched -= gone
        self.calls.append(("remove", frozenset(aliases), None))
        return len(gone)

    def added(self) -> list[tuple[frozenset[str], RepairReason | None]]:
        return [(aliases, repair) for op, aliases, repair in self.calls if op == "add"]

    def removed(self) -> list[frozenset[str]]:
        return [aliases for op, aliases, _ in self.calls if op == "remove"]
