"""Checkpoints on a real broker: `ingest projector` killed with SIGKILL between checkpoints while
the log grows; every checkpoint is the fold of exactly the records below its offset, and every
replay from checkpoints equals the full fold of the same log (`--at`, `--usn`, `--offset`, one
mailbox or all). Then the documented daily command (docs/operations.md: the state of every mailbox
at the end of each day) run as written, and a projector of a new group starting from the newest
checkpoint instead of offset 0."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from fixtures.producing import (
    REPO,
    GroupOffsets,
    Placement,
    ProjectorProcess,
    delete_topics,
    fold,
    generate,
    produce,
    state_differences,
    wait_committed,
)
from fixtures.waiting import eventually

from ingest.eventlog import codec
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics
from ingest.events import LogRecord, MailboxSnapshot
from ingest.state.checkpoints import CheckpointReader
from ingest.state.projection import Projection
from ingest.state.replay import Bound, UntilOffset, UntilTime, UntilUsn, replay
from ingest.state.store import read_state_topic

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PARTITIONS = 12
EVENTS = 24_000
DAYS = 3
CHECKPOINT_RECORDS = 250
"""Offsets per partition between checkpoints: several per partition over the stream."""
KILLS = 3


def spread_over_days(records: list[LogRecord]) -> list[LogRecord]:
    """The stream's first third on its own day, the next on the following day, …: times still
    only grow along the stream, so "the end of day d" cuts it into a prefix."""
    out: list[LogRecord] = []
    for index, record in enumerate(records):
        later = dt.timedelta(days=index * DAYS // len(records))
        if isinstance(record, MailboxSnapshot):
            out.append(dataclasses.replace(record, taken_at=record.taken_at + later))
        else:
            out.append(
                dataclasses.replace(
                    record,
                    event_time=record.event_time + later,
                    ingested_at=record.ingested_at + later,
                )
            )
    return out


def moment(record: LogRecord) -> dt.datetime:
    return record.taken_at if isinstance(record, MailboxSnapshot) else record.event_time


@dataclass(frozen=True, slots=True)
class Checkpointed:
    bootstrap: str
    names: TopicNames
    group: str
    records: list[LogRecord]
    placements: list[Placement]
    log_path: Path

    def partition_records(self, partition: int) -> list[tuple[int, LogRecord]]:
        return sorted(
            (p.offset, r)
            for r, p in zip(self.records, self.placements, strict=True)
            if p.partition == partition
        )

    def folded_below(self, partition: int, stop: int) -> Projection:
        return fold(r for offset, r in self.partition_records(partition) if offset < stop)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def checkpointed(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Checkpointed]:
    """A log written while a projector writing checkpoints is SIGKILLed KILLS times, then caught
    up to the end by a last one (stopped cleanly)."""
    names = TopicNames.with_prefix(f"ckpt-{uuid.uuid4().hex[:12]}-")
    await ensure_topics(kafka_bootstrap, default_specs(names, events_partitions=PARTITIONS))
    records = spread_over_days(generate(events=EVENTS, mailboxes=60, seed=23).records)
    values = [codec.encode(r) for r in records]
    group = f"ckpt-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path_factory.mktemp("checkpoints") / "projector.log"
    settings = {
        "CUMI_PROJECTOR_GROUP_ID": group,
        "CUMI_PROJECTOR_GROUP_INSTANCE_ID": "ckpt-test",  # a restart takes its partitions back
        "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": 100,
        "CUMI_PROJECTOR_COMMIT_MAX_RECORDS": 300,
        "CUMI_PROJECTOR_CHECKPOINT_RECORDS": CHECKPOINT_RECORDS,
    }

    def projector() -> ProjectorProcess:
        return ProjectorProcess(kafka_bootstrap, names.events, names.state, **settings)

    producing = asyncio.create_task(
        produce(kafka_bootstrap, names.events, records, values, chunk=2000, pause=0.25)
    )
    rng = random.Random(23)
    async with GroupOffsets(kafka_bootstrap, group, names.events) as offsets:
        for kill in range(KILLS):
            proc = projector()
            await proc.start(log_path)
            target = (kill + 1) * len(records) / (KILLS + 1) + rng.uniform(-500, 500)

            async def committed(target: float = target, proc: ProjectorProcess = proc) -> bool:
                assert proc.proc is not None and proc.proc.returncode is None, "exited"
                return await offsets.total() >= target

            await eventually(committed, within=60, what=f"{target:.0f} records committed")
            assert await proc.kill() == -9
    placements = await producing
    final = projector()
    await final.start(log_path)
    try:
        await wait_committed(
            kafka_bootstrap,
            group,
            names.events,
            within=60,
            alive=lambda: final.proc is not None and final.proc.returncode is None,
        )
    finally:
        assert await final.terminate() == 0
    yield Checkpointed(kafka_bootstrap, names, group, records, placements, log_path)
    await delete_topics(kafka_bootstrap, names.all())


async def test_every_checkpoint_is_the_fold_below_its_offset(checkpointed: Checkpointed) -> None:
    """Written in the offsets' transaction: never ahead of or behind what it claims, across the
    kills (a killed transaction's checkpoint is aborted along with its states and offset)."""
    reader = CheckpointReader(
        checkpointed.names.checkpoints,
        checkpointed.names.events,
        bootstrap_servers=checkpointed.bootstrap,
    )
    assert await reader.start(PARTITIONS)
    try:
        listed = await reader.manifests(range(PARTITIONS))
        spacing = {p: [m.next_offset for m in f] for p, f in listed.items()}
        assert sum(map(len, spacing.values())) >= 2 * PARTITIONS, spacing
        for partition, found in listed.items():
            offsets = [m.next_offset for m in found]
            # due every CHECKPOINT_RECORDS, written with the commit after it (a whole poll's
            # worth later while catching up after a kill), and lost with a killed transaction
            held = len(checkpointed.partition_records(partition))
            assert len(found) >= held // (6 * CHECKPOINT_RECORDS), (partition, held, spacing)
            assert offsets == sorted(set(offsets)), "one checkpoint per offset, in order"
            for manifest in found:
                states = await reader.states(manifest)
                expected = checkpointed.folded_below(partition, manifest.next_offset)
                assert (
                    state_differences(expected, {m: s.to_record() for m, s in states.items()}) == []
                ), (partition, manifest.next_offset)
                assert manifest.mailboxes == len(states)
    finally:
        await reader.stop()
    # and the state topic itself is exact (the checkpoints rode in the same transactions)
    state = await read_state_topic(
        checkpointed.names.state, bootstrap_servers=checkpointed.bootstrap
    )
    assert state_differences(fold(checkpointed.records), state) == []


def busiest(records: list[LogRecord]) -> str:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.mailbox_id] = counts.get(record.mailbox_id, 0) + 1
    return max(counts, key=lambda m: counts[m])


async def both_ways(
    log: Checkpointed, mailbox: str | None, until: Bound
) -> tuple[Projection, Projection, int, int]:
    """(from checkpoints, from the beginning, records each read)."""
    read: dict[str, int] = {}

    def counter(name: str) -> Callable[[int, int], None]:
        return lambda done, total: read.__setitem__(name, total)

    fast = await replay(
        log.bootstrap,
        log.names.events,
        mailbox,
        until,
        progress=counter("fast"),
        checkpoints=log.names.checkpoints,
    )
    full = await replay(
        log.bootstrap,
        log.names.events,
        mailbox,
        until,
        progress=counter("full"),
    )
    return fast, full, read["fast"], read["full"]


def records_of(projection: Projection) -> dict[str, object]:
    return {m: s.to_record() for m, s in projection.mailboxes.items()}


async def test_replays_from_checkpoints_equal_the_full_fold(checkpointed: Checkpointed) -> None:
    records = checkpointed.records
    times = sorted({moment(r) for r in records})
    mailbox = busiest(records)
    mine = [
        (r, p)
        for r, p in zip(records, checkpointed.placements, strict=True)
        if r.mailbox_id == mailbox
    ]
    bounds: list[tuple[str | None, Bound]] = [
        (None, None),
        (None, UntilTime(times[len(times) // 3])),
        (None, UntilTime(times[-40])),
        (mailbox, UntilTime(times[2 * len(times) // 3])),
        (mailbox, UntilOffset(mine[len(mine) // 2][1].offset)),
        (mailbox, UntilOffset(mine[-3][1].offset)),
        (mailbox, UntilUsn(mine[len(mine) // 2][0].usn)),
        (mailbox, UntilUsn(max(r.usn for r, _ in mine) - 2)),
    ]
    saved = 0
    for target, until in bounds:
        fast, full, read_fast, read_full = await both_ways(checkpointed, target, until)
        assert records_of(fast) == records_of(full), (target, until)
        assert read_fast <= read_full
        saved += read_full - read_fast
        if until is None:
            assert records_of(full) == records_of(fold(records))
    assert saved > len(records), "checkpoints spared reading most of the log"


async def test_the_documented_daily_states_command(checkpointed: Checkpointed) -> None:
    """docs/operations.md, "State of every mailbox at the end of each day", run as written."""
    doc = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    script = re.search(r"<!-- daily-states:start -->\n```sh\n(.*?)```", doc, re.S)
    assert script is not None, "the example is marked in docs/operations.md"
    first = min(moment(r) for r in checkpointed.records).date()
    days = [first + dt.timedelta(days=d) for d in range(DAYS)]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))},
        "KAFKA_BOOTSTRAP_SERVERS": checkpointed.bootstrap,
        "KAFKA_EVENTS_TOPIC": checkpointed.names.events,
        "KAFKA_STATE_TOPIC": checkpointed.names.state,
        "FROM": days[0].isoformat(),
        "TO": days[-1].isoformat(),
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
    }
    out = checkpointed.log_path.parent / "daily"
    out.mkdir(exist_ok=True)
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script.group(1)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "start from a checkpoint" in done.stderr  # progress/log lines off a terminal
    for day in days:
        end = dt.datetime.combine(day, dt.time(23, 59, 59, 999000), dt.UTC)
        expected = fold(r for r in checkpointed.records if moment(r) <= end).to_json()
        answer = json.loads((out / f"mailboxes-{day.isoformat()}.json").read_text())
        assert answer == expected, day


async def test_a_new_group_starts_from_the_newest_checkpoint(
    checkpointed: Checkpointed, tmp_path: Path
) -> None:
    """A lost state topic: a new group and state topic, the same checkpoints — the projector
    starts from them (not offset 0), writes their states, and ends exact."""
    group = f"ckpt-new-{uuid.uuid4().hex[:8]}"
    state = f"{checkpointed.names.state}-rebuilt"
    # every partition the killed projectors got to checkpoint (one with few records may have
    # none), counted before the rebuild starts: it writes checkpoints of its own as it folds
    reader = CheckpointReader(
        checkpointed.names.checkpoints,
        checkpointed.names.events,
        bootstrap_servers=checkpointed.bootstrap,
    )
    assert await reader.start(PARTITIONS)
    try:
        listed = await reader.manifests(range(PARTITIONS))
    finally:
        await reader.stop()
    with_checkpoints = sum(1 for found in listed.values() if found)
    assert with_checkpoints >= PARTITIONS // 2, listed
    proc = ProjectorProcess(
        checkpointed.bootstrap,
        checkpointed.names.events,
        state,
        CUMI_PROJECTOR_GROUP_ID=group,
        KAFKA_CHECKPOINTS_TOPIC=checkpointed.names.checkpoints,
        CUMI_PROJECTOR_CHECKPOINT_RECORDS=CHECKPOINT_RECORDS,
    )
    log_path = tmp_path / "rebuild.log"
    await proc.start(log_path)
    try:
        await wait_committed(
            checkpointed.bootstrap,
            group,
            checkpointed.names.events,
            within=60,
            alive=lambda: proc.proc is not None and proc.proc.returncode is None,
        )
        await proc.wait_ready()
    finally:
        assert await proc.terminate() == 0
    text = log_path.read_text(errors="replace")
    assert text.count("starting from its checkpoint") == with_checkpoints, text[-3000:]
    rebuilt = await read_state_topic(state, bootstrap_servers=checkpointed.bootstrap)
    assert state_differences(fold(checkpointed.records), rebuilt) == []
    await delete_topics(checkpointed.bootstrap, [state])


def process_gone(pid: int) -> bool:
    """Ended (or ended and not yet reaped by whoever adopted it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


async def test_a_rebuild_in_worker_processes_is_exact_across_a_kill(
    checkpointed: Checkpointed, tmp_path: Path
) -> None:
    """Every partition far behind is folded by catch-up worker processes, whose segments the
    projector commits. SIGKILLed mid-way, its workers stop on their own; started again, it ends
    with the full fold's state, and each checkpoint it wrote is the fold below its offset."""
    group = f"ckpt-workers-{uuid.uuid4().hex[:8]}"
    state = f"{checkpointed.names.state}-{group}"
    checkpoints = f"{checkpointed.names.checkpoints}-{group}"
    settings = {
        "CUMI_PROJECTOR_GROUP_ID": group,
        "KAFKA_CHECKPOINTS_TOPIC": checkpoints,
        "CUMI_PROJECTOR_CHECKPOINT_RECORDS": CHECKPOINT_RECORDS,
        "CUMI_PROJECTOR_COMMIT_MAX_RECORDS": 300,
        "CUMI_PROJECTOR_CATCH_UP_RECORDS": 100,
        "CUMI_PROJECTOR_CATCH_UP_PROCESSES": 2,
    }
    bootstrap, events = checkpointed.bootstrap, checkpointed.names.events
    first_log = tmp_path / "first.log"
    first = ProjectorProcess(bootstrap, events, state, **settings)
    await first.start(first_log)
    async with GroupOffsets(bootstrap, group, events) as offsets:

        async def some_committed() -> bool:
            assert first.proc is not None and first.proc.returncode is None, "exited"
            return await offsets.total() >= len(checkpointed.records) // 4

        await eventually(some_committed, within=60, what="a quarter committed")
    assert await first.kill() == -9
    text = first_log.read_text(errors="replace")
    assert text.count("folding it in a worker process") == PARTITIONS, text[-3000:]
    assert "catch-up: records folded in worker processes" in text  # progress, off a terminal
    pids = [
        int(p) for p in re.findall(r"worker processes started \(pids ([\d ]+)\)", text)[0].split()
    ]
    await eventually(
        lambda: all(process_gone(p) for p in pids), within=30, what="the workers stopped"
    )
    second = ProjectorProcess(bootstrap, events, state, **settings)
    await second.start(tmp_path / "second.log")
    try:
        await wait_committed(
            bootstrap,
            group,
            events,
            within=60,
            alive=lambda: second.proc is not None and second.proc.returncode is None,
        )
    finally:
        assert await second.terminate() == 0
    rebuilt = await read_state_topic(state, bootstrap_servers=bootstrap)
    assert state_differences(fold(checkpointed.records), rebuilt) == []
    reader = CheckpointReader(checkpoints, events, bootstrap_servers=bootstrap)
    assert await reader.start(PARTITIONS)
    try:
        listed = await reader.manifests(range(PARTITIONS))
        assert sum(map(len, listed.values())) >= PARTITIONS
        for partition, found in listed.items():
            for manifest in found:
                states = await reader.states(manifest)
                expected = checkpointed.folded_below(partition, manifest.next_offset)
                records = {m: s.to_record() for m, s in states.items()}
                assert state_differences(expected, records) == [], (partition, manifest)
    finally:
        await reader.stop()
    await delete_topics(bootstrap, [state, checkpoints])
