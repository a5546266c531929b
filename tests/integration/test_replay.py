"""`replay()` and `ingest replay`: state as of a time, a USN or an offset, from the real log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from fixtures.producing import (
    REPO,
    Placement,
    delete_topics,
    fold,
    generate,
    produce,
    state_differences,
)

from ingest.eventlog import codec
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics, partition_for
from ingest.events import LogRecord
from ingest.state.replay import UntilOffset, UntilTime, UntilUsn, replay

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PARTITIONS = 12


@dataclass(frozen=True, slots=True)
class Log:
    bootstrap: str
    topic: str
    records: list[LogRecord]
    placements: list[Placement]

    def of(self, mailbox_id: str) -> list[tuple[LogRecord, Placement]]:
        return [
            (r, p)
            for r, p in zip(self.records, self.placements, strict=True)
            if r.mailbox_id == mailbox_id
        ]

    def busiest(self) -> str:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.mailbox_id] = counts.get(record.mailbox_id, 0) + 1
        return max(counts, key=lambda m: counts[m])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def event_log(kafka_bootstrap: str) -> AsyncIterator[Log]:
    """One log for the module (every test only reads it): 12 partitions, a unique name."""
    names = TopicNames.with_prefix(f"replay-{uuid.uuid4().hex[:12]}-")
    await ensure_topics(kafka_bootstrap, default_specs(names, events_partitions=PARTITIONS))
    stream = generate(events=6000, mailboxes=30, seed=5)
    # one `send` per record: aiokafka's default partitioner places them, not our murmur2
    placements = await produce(
        kafka_bootstrap, names.events, stream.records, stream.values, batched=False
    )
    yield Log(kafka_bootstrap, names.events, stream.records, placements)
    await delete_topics(kafka_bootstrap, names.all())


def moment(record: LogRecord) -> int:
    return codec.timestamp_ms(record)


def as_of(log: Log, at_ms: int) -> list[LogRecord]:
    """Each partition's records before its first one stamped later than `at_ms`. EventTimes grow
    along the log except for late repeats of old events, which keep their old EventTime: those
    after the cut arrived after T had passed and are not part of the state as of T."""
    cut: set[int] = set()
    kept = []
    for record, placement in zip(log.records, log.placements, strict=True):
        if placement.partition in cut:
            continue
        if moment(record) > at_ms:
            cut.add(placement.partition)
            continue
        kept.append(record)
    return kept


class TestPartitioning:
    """`--mailbox` reads one partition: the one the producer's default partitioner chose."""

    async def test_partition_for_matches_the_producer(self, event_log: Log) -> None:
        for record, placement in zip(event_log.records, event_log.placements, strict=True):
            assert partition_for(record.mailbox_id, PARTITIONS) == placement.partition


class TestAsOfTime:
    """Bounded by offsets_for_times on the records' EventTime: exactly the records up to T."""

    async def test_all_mailboxes_at_a_time(self, event_log: Log) -> None:
        records = event_log.records
        at_ms = moment(records[len(records) * 3 // 5])
        kept = as_of(event_log, at_ms)
        assert len(records) // 2 < len(kept) < len(records)
        expected = fold(kept)
        at = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC)
        projection = await replay(event_log.bootstrap, event_log.topic, until=UntilTime(at))
        actual = {m: s.to_record() for m, s in projection.mailboxes.items()}
        assert state_differences(expected, actual) == []

    async def test_one_mailbox_at_a_time(self, event_log: Log) -> None:
        mailbox = event_log.busiest()
        mine = [r for r, _ in event_log.of(mailbox)]
        at_ms = moment(mine[len(mine) // 2])
        expected = fold(r for r in as_of(event_log, at_ms) if r.mailbox_id == mailbox)
        expected_state = expected.mailboxes[mailbox]
        at = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC)
        projection = await replay(event_log.bootstrap, event_log.topic, mailbox, UntilTime(at))
        assert list(projection.mailboxes) == [mailbox]
        assert projection.mailboxes[mailbox].to_record() == expected_state.to_record()


class TestAsOfUsn:
    """The mailbox's records before its first one with a USN above N."""

    async def test_one_mailbox_at_a_usn(self, event_log: Log) -> None:
        mailbox = event_log.busiest()
        mine = [r for r, _ in event_log.of(mailbox)]
        usn = mine[len(mine) // 2].usn
        cut = next(i for i, r in enumerate(mine) if r.usn > usn)
        expected = fold(mine[:cut]).mailboxes[mailbox]
        assert expected.usn == usn
        projection = await replay(event_log.bootstrap, event_log.topic, mailbox, UntilUsn(usn))
        assert projection.mailboxes[mailbox].to_record() == expected.to_record()

    async def test_cli_json_at_a_usn(self, event_log: Log) -> None:
        mailbox = event_log.busiest()
        mine = [r for r, _ in event_log.of(mailbox)]
        usn = mine[len(mine) // 3].usn
        cut = next(i for i, r in enumerate(mine) if r.usn > usn)
        code, out, _ = await ingest_replay(
            event_log, "--mailbox", mailbox, "--usn", str(usn), "--format", "json"
        )
        assert code == 0
        assert json.loads(out) == fold(mine[:cut]).to_json()


class TestAsOfOffset:
    """Records of the mailbox's partition at offsets up to and including P."""

    async def test_one_mailbox_at_an_offset(self, event_log: Log) -> None:
        mailbox = event_log.busiest()
        mine = event_log.of(mailbox)
        offset = mine[len(mine) // 2][1].offset
        expected = fold(r for r, p in mine if p.offset <= offset).mailboxes[mailbox]
        projection = await replay(
            event_log.bootstrap, event_log.topic, mailbox, UntilOffset(offset)
        )
        assert projection.mailboxes[mailbox].to_record() == expected.to_record()

    async def test_cli_table_at_an_offset(self, event_log: Log) -> None:
        mailbox = event_log.busiest()
        mine = event_log.of(mailbox)
        offset = mine[-1][1].offset
        code, out, _ = await ingest_replay(
            event_log, "--mailbox", mailbox, "--offset", str(offset), "--format", "table"
        )
        assert code == 0
        state = fold(r for r, _ in mine).mailboxes[mailbox].to_json()
        for message_id in [*state["inbox"], *state["deleted"]]:
            assert message_id in out


class TestWholeLog:
    """`--all` without a bound folds everything; progress goes to stderr as plain lines."""

    async def test_cli_all(self, event_log: Log) -> None:
        code, out, err = await ingest_replay(event_log, "--all")
        assert code == 0
        assert json.loads(out) == fold(event_log.records).to_json()
        n = len(event_log.records)
        assert f"replay: records {n}/{n} (100%" in err


async def ingest_replay(log: Log, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest",
        "replay",
        "--bootstrap",
        log.bootstrap,
        "--topic",
        log.topic,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
