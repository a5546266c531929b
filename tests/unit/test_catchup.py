"""The catch-up fold of a worker process (ingest.state.catchup), without a broker: how it cuts a
partition's records into segments, what each segment carries, and that segments and checkpoints
together are the fold. The real processes, consumer and transactions are exercised by
tests/integration/test_checkpoints.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from fixtures.producing import fold, generate, state_differences

from ingest.eventlog.reader import decode_state_record
from ingest.settings import SettingsSource, load_kafka
from ingest.state.catchup import Job, Segment, _Fold
from ingest.state.checkpoints import CheckpointPolicy, Tracker
from ingest.state.packing import pack_states, unpack_states
from ingest.state.projection import Projection
from ingest.state.store import decode_state

STREAM = generate(events=1500, mailboxes=12, seed=31)
GAP_EVERY = 97
"""Every so many offsets one holds a transaction marker: no record (and so does the offset just
below each checkpoint's: the segment must end at the boundary, not stop short of it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    offset: int
    value: bytes
    timestamp: int


def placed() -> list[Message]:
    """The stream's values at offsets with a gap now and then, as a partition holds them."""
    messages, offset = [], 0
    for index, value in enumerate(STREAM.values):
        if (index and index % GAP_EVERY == 0) or offset % 250 == 249:
            offset += 1
        messages.append(Message(offset, value, 1_700_000_000_000 + index))
        offset += 1
    return messages


MESSAGES = placed()
END = MESSAGES[-1].offset + 2  # a marker after the last record too


class Consumer:
    """The two calls the fold makes of its consumer, over a list (fetches of `fetch` records)."""

    def __init__(self, messages: Sequence[Message], start: int, fetch: int) -> None:
        self.messages = [m for m in messages if m.offset >= start]
        self.fetch, self.at = fetch, start

    async def getmany(self, tp: Any, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        batch, self.messages = self.messages[: self.fetch], self.messages[self.fetch :]
        if batch:
            self.at = batch[-1].offset + 1
        else:
            self.at = END
        return {tp: batch} if batch else {}

    async def position(self, tp: Any) -> int:
        return self.at


class Results:
    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def put(self, segment: Segment, timeout: float | None = None) -> None:
        assert len(self.segments) < len(MESSAGES), "segments that make no progress"
        self.segments.append(segment)


def job(start: int = 0, state: Projection | None = None, **changes: Any) -> Job:
    base = Job(
        partition=0,
        generation=1,
        start=start,
        stop=END,
        state=pack_states(state or Projection()),
        dirty=(),
        encoded={},
        tracker=Tracker(from_offset=start),
        kafka=load_kafka(SettingsSource.load({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})),
        events_topic="events",
        checkpoints_topic="checkpoints",
        partition_count=1,
        policy=CheckpointPolicy(records=250),
        segment_records=400,
    )
    return dataclasses.replace(base, **changes)


async def run(the_job: Job, fetch: int = 120) -> list[Segment]:
    results = Results()
    folding = _Fold(the_job, results, [the_job.generation])
    await folding._fold(Consumer(MESSAGES, the_job.start, fetch), "tp")
    return results.segments


def below(offset: int) -> Projection:
    return fold(r for r, m in zip(STREAM.records, MESSAGES, strict=True) if m.offset < offset)


@pytest.mark.parametrize("fetch", [1, 120, 5000])
async def test_checkpoints_fall_on_their_interval_whatever_the_fetch_size(fetch: int) -> None:
    segments = await run(job(), fetch)
    at = [s.checkpoint.next_offset for s in segments if s.checkpoint is not None]
    assert at == list(range(250, END + 1, 250)), at
    offsets = [s.next_offset for s in segments]
    assert offsets == sorted(set(offsets)) and offsets[-1] == END
    assert all(b - a <= 400 for a, b in zip([0, *offsets], offsets, strict=False)), offsets


async def test_each_checkpoint_is_the_fold_below_its_offset() -> None:
    for segment in await run(job()):
        if segment.checkpoint is None:
            continue
        entries = [e for chunk in segment.checkpoint.chunks for e in chunk.entries]
        states = {e.mailbox_id: decode_state_record(e.state) for e in entries}
        assert state_differences(below(segment.next_offset), states) == []


async def test_the_segments_states_and_the_last_one_are_the_fold() -> None:
    segments = await run(job())
    written: dict[str, Any] = {}
    for segment in segments:  # what the state topic holds after each transaction
        written.update((s.mailbox_id, decode_state(s.value).to_record()) for s in segment.states)
        assert sum(s.records for s in segments) == len(MESSAGES)
    assert state_differences(fold(STREAM.records), written) == []
    last = segments[-1]
    assert last.final is not None and all(s.final is None for s in segments[:-1])
    assert set(last.encoded) == set(fold(STREAM.records).mailboxes)


async def test_a_job_starting_mid_partition_continues_its_state() -> None:
    """From a checkpoint: its states (not yet on the state topic) go with the first segment."""
    start = MESSAGES[700].offset
    restored = below(start)
    segments = await run(job(start=start, state=restored, dirty=tuple(restored.mailboxes)))
    assert set(restored.mailboxes) <= {s.mailbox_id for s in segments[0].states}
    final = Projection()
    assert segments[-1].final is not None
    unpack_states(segments[-1].final, final)
    records = {m: s.to_record() for m, s in final.mailboxes.items()}
    assert state_differences(fold(STREAM.records), records) == []


async def test_a_cancelled_job_hands_nothing_more_back() -> None:
    generations = [1]
    results = Results()
    folding = _Fold(job(), results, generations)
    consumer = Consumer(MESSAGES, 0, 120)
    original = consumer.getmany

    async def cancelling(tp: Any, **kwargs: Any) -> dict[Any, list[Any]]:
        if consumer.at > 600:
            generations[0] = 2  # the projector moved the partition's generation on
        return await original(tp, **kwargs)

    consumer.getmany = cancelling  # type: ignore[method-assign]
    await folding._fold(consumer, "tp")
    assert results.segments and all(s.final is None for s in results.segments)
    assert results.segments[-1].next_offset < 800
