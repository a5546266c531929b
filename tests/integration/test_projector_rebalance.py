"""Several `ingest projector` processes in one group: rebalances and zombies keep state exact."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.producing import (
    GroupOffsets,
    ProjectorProcess,
    Stream,
    fold,
    generate,
    produce,
    state_differences,
    wait_committed,
)
from fixtures.waiting import eventually

from ingest.eventlog.topics import TopicNames
from ingest.state.store import read_state_topic

pytestmark = pytest.mark.integration

EVENTS = 50_000
MAILBOXES = 120
PAIR_RECORDS = 30_000
"""Records of the (cached) 50,000-record stream the two-instance test produces."""


@contextlib.asynccontextmanager
async def streaming(
    bootstrap: str, topics: TopicNames, stream: Stream, records: int, hurry: asyncio.Event
) -> AsyncIterator[asyncio.Task[Any]]:
    """Produce the first `records` of `stream` in the background: slowly (about 1000 a second,
    so events surely flow through the rebalances) until `hurry` is set, then at full speed."""
    task = asyncio.create_task(
        produce(
            bootstrap,
            topics.events,
            stream.records[:records],
            stream.values[:records],
            chunk=1000,
            pause=1.0,
            hurry=hurry,
        )
    )
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def owned_partitions(proc: ProjectorProcess) -> list[int]:
    """The partitions the instance serves; [] while its HTTP server is not up yet."""
    try:
        status, page = await proc.get("/mailboxes?limit=1")
    except aiohttp.ClientError:
        return []
    assert status == 200
    return list(page["partitions"])


async def check_final_state(
    bootstrap: str, topics: TopicNames, group: str, proc: ProjectorProcess, records: list[Any]
) -> None:
    await wait_committed(bootstrap, group, topics.events, within=120)
    expected = fold(records)
    state = await read_state_topic(topics.state, bootstrap_servers=bootstrap)
    assert state_differences(expected, state) == []
    for mailbox_id, mailbox in expected.mailboxes.items():
        status, body = await proc.get(f"/mailboxes/{mailbox_id}")
        assert status == 200
        for key in ("mailbox_id", "partition", "counts"):
            body.pop(key)
        assert body == mailbox.to_json(detail=True), mailbox_id


class TestTwoInstances:
    """A second instance joining mid-stream and the first one leaving move partitions with their
    state; the survivor's state topic and read API equal the fold of the whole log."""

    async def test_join_then_leave_while_events_flow(
        self, kafka_bootstrap: str, fresh_topics: TopicNames, tmp_path: Path
    ) -> None:
        stream = generate(events=EVENTS, mailboxes=MAILBOXES, seed=11)
        group = f"pair-{uuid.uuid4().hex[:8]}"
        settings = {"CUMI_PROJECTOR_GROUP_ID": group, "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": 200}
        first, second = (
            ProjectorProcess(kafka_bootstrap, fresh_topics.events, fresh_topics.state, **settings)
            for _ in range(2)
        )
        hurry = asyncio.Event()
        try:
            async with streaming(
                kafka_bootstrap, fresh_topics, stream, PAIR_RECORDS, hurry
            ) as producing:
                await first.start(tmp_path / "first.log")
                await first.wait_ready()
                await asyncio.sleep(1.0)
                await second.start(tmp_path / "second.log")

                async def shared() -> bool:
                    a, b = await owned_partitions(first), await owned_partitions(second)
                    return bool(a) and bool(b) and sorted(a + b) == list(range(12))

                await eventually(shared, within=60, what="sharing the partitions", interval=0.2)
                assert not producing.done(), "the stream ended before the rebalance"
                await asyncio.sleep(1.0)
                assert await first.terminate() == 0, "SIGTERM drains, commits and exits 0"

                async def took_over() -> bool:
                    return await owned_partitions(second) == list(range(12))

                await eventually(
                    took_over, within=60, what="taken over by the second instance", interval=0.2
                )
                assert not producing.done(), "the stream ended before the second rebalance"
                hurry.set()
                await producing
            await check_final_state(
                kafka_bootstrap, fresh_topics, group, second, stream.records[:PAIR_RECORDS]
            )
        finally:
            await first.cleanup()
            await second.cleanup()


class TestZombie:
    """An instance frozen past its session timeout loses its partitions; when it wakes up with
    uncommitted work, its transactional producers are fenced: it exits 3 and writes nothing."""

    async def test_frozen_instance_is_fenced_on_waking(
        self, kafka_bootstrap: str, fresh_topics: TopicNames, tmp_path: Path
    ) -> None:
        stream = generate(events=EVENTS, mailboxes=MAILBOXES, seed=11)
        records = 20_000
        group = f"zombie-{uuid.uuid4().hex[:8]}"
        common = {"CUMI_PROJECTOR_GROUP_ID": group}
        zombie = ProjectorProcess(
            kafka_bootstrap,
            fresh_topics.events,
            fresh_topics.state,
            **common,
            CUMI_PROJECTOR_SESSION_TIMEOUT_MS=6000,  # frozen, it is expelled after 6 s
            # commits rarely: frozen mid-stream, it surely holds applied but uncommitted work
            CUMI_PROJECTOR_COMMIT_INTERVAL_MS=60_000,
            CUMI_PROJECTOR_COMMIT_MAX_RECORDS=1_000_000,
        )
        heir = ProjectorProcess(
            kafka_bootstrap,
            fresh_topics.events,
            fresh_topics.state,
            **common,
            CUMI_PROJECTOR_COMMIT_INTERVAL_MS=100,
        )
        hurry = asyncio.Event()

        async def committed_total() -> int:
            async with GroupOffsets(kafka_bootstrap, group, fresh_topics.events) as offsets:
                return await offsets.total()

        try:
            async with streaming(
                kafka_bootstrap, fresh_topics, stream, records, hurry
            ) as producing:
                await zombie.start(tmp_path / "zombie.log")
                await zombie.wait_ready()
                await eventually(
                    lambda: _applied_some(zombie), within=30, what="applying events", interval=0.2
                )
                assert zombie.proc is not None
                zombie.proc.send_signal(signal.SIGSTOP)
                frozen_at = await committed_total()
                await heir.start(tmp_path / "heir.log")

                async def inherited() -> bool:
                    return await owned_partitions(heir) == list(range(12))

                await eventually(
                    inherited, within=60, what="inherited by the second instance", interval=0.2
                )

                async def heir_committed() -> bool:
                    """It re-applied and committed what the zombie had applied, uncommitted."""
                    return await committed_total() > frozen_at

                await eventually(heir_committed, within=60, what="the heir committing")
                zombie.proc.send_signal(signal.SIGCONT)
                code = await asyncio.wait_for(zombie.proc.wait(), 60)
                assert code == 3, (tmp_path / "zombie.log").read_text()[-3000:]
                hurry.set()
                await producing
            await check_final_state(
                kafka_bootstrap, fresh_topics, group, heir, stream.records[:records]
            )
        finally:
            await zombie.cleanup()
            await heir.cleanup()


async def _applied_some(proc: ProjectorProcess) -> bool:
    applied = await proc.metric("cumi_projector_events_total")
    return sum(applied.values()) > 0


class TestCatchingUpInWorkers:
    """A second instance joins while the first folds its backlog in catch-up worker processes:
    the jobs of the partitions that move are cancelled (nothing of theirs is committed after),
    both instances fold their share, and the state topic equals the fold of the whole log."""

    async def test_join_while_partitions_fold_in_workers(
        self, kafka_bootstrap: str, fresh_topics: TopicNames, tmp_path: Path
    ) -> None:
        stream = generate(events=EVENTS, mailboxes=MAILBOXES, seed=11)
        records = stream.records[:PAIR_RECORDS]
        await produce(kafka_bootstrap, fresh_topics.events, records, stream.values[:PAIR_RECORDS])
        group = f"workers-{uuid.uuid4().hex[:8]}"
        settings = {
            "CUMI_PROJECTOR_GROUP_ID": group,
            "CUMI_PROJECTOR_CATCH_UP_RECORDS": 100,
            "CUMI_PROJECTOR_CATCH_UP_PROCESSES": 1,  # one at a time: the backlog lasts longer
            "CUMI_PROJECTOR_CHECKPOINT_RECORDS": 200,  # many small segments
        }
        first, second = (
            ProjectorProcess(kafka_bootstrap, fresh_topics.events, fresh_topics.state, **settings)
            for _ in range(2)
        )
        try:
            await first.start(tmp_path / "first.log")

            async def catching_up() -> bool:
                try:
                    gauge = await first.metric("cumi_projector_partitions_catching_up")
                except aiohttp.ClientError:
                    return False
                return sum(gauge.values()) > 0

            await eventually(catching_up, within=60, what="folding in workers", interval=0.05)
            await second.start(tmp_path / "second.log")

            async def shared() -> bool:
                a, b = await owned_partitions(first), await owned_partitions(second)
                return bool(a) and bool(b) and sorted(a + b) == list(range(12))

            await eventually(shared, within=60, what="sharing the partitions", interval=0.2)
            await wait_committed(kafka_bootstrap, group, fresh_topics.events, within=120)
            state = await read_state_topic(fresh_topics.state, bootstrap_servers=kafka_bootstrap)
            assert state_differences(fold(records), state) == []
            assert await first.terminate() == 0
            assert await second.terminate() == 0
        finally:
            await first.cleanup()
            await second.cleanup()
        assert "folding it in a worker process" in (tmp_path / "first.log").read_text()
