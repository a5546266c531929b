"""`replay(workers=N)` and the automatic choice: several processes fold exactly what one does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from fixtures.producing import delete_topics, fold, generate, produce, state_differences

from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics
from ingest.events import LogRecord
from ingest.state import replay as replay_module
from ingest.state.replay import replay

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@dataclass(frozen=True, slots=True)
class Log:
    bootstrap: str
    topic: str
    records: list[LogRecord]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def event_log(kafka_bootstrap: str) -> AsyncIterator[Log]:
    names = TopicNames.with_prefix(f"replay-workers-{uuid.uuid4().hex[:12]}-")
    await ensure_topics(kafka_bootstrap, default_specs(names, events_partitions=12))
    stream = generate(events=6000, mailboxes=30, seed=11)
    await produce(kafka_bootstrap, names.events, stream.records, stream.values)
    yield Log(kafka_bootstrap, names.events, stream.records)
    await delete_topics(kafka_bootstrap, names.all())


@pytest.fixture
def in_processes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many processes each replay that used worker processes started."""
    calls: list[int] = []
    original = replay_module._replay_in_processes

    async def spy(job: Any, progress: Any, workers: int) -> Any:
        calls.append(workers)
        return await original(job, progress, workers)

    monkeypatch.setattr(replay_module, "_replay_in_processes", spy)
    return calls


def states(projection: Any) -> dict[str, Any]:
    return {m: s.to_record() for m, s in projection.mailboxes.items()}


class TestWorkers:
    async def test_two_processes_fold_the_whole_log(
        self, event_log: Log, in_processes: list[int]
    ) -> None:
        seen: list[tuple[int, int]] = []
        projection = await replay(
            event_log.bootstrap,
            event_log.topic,
            workers=2,
            progress=lambda done, total: seen.append((done, total)),
        )
        assert in_processes == [2]
        assert state_differences(fold(event_log.records), states(projection)) == []
        assert seen[-1] == (len(event_log.records), len(event_log.records))
        single = await replay(event_log.bootstrap, event_log.topic, workers=1)
        assert states(single) == states(projection)

    async def test_auto_stays_in_process_for_a_small_log(
        self, event_log: Log, in_processes: list[int]
    ) -> None:
        projection = await replay(event_log.bootstrap, event_log.topic, workers=None)
        assert in_processes == []
        assert state_differences(fold(event_log.records), states(projection)) == []

    async def test_auto_uses_every_cpu_for_a_large_log(
        self, event_log: Log, in_processes: list[int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(replay_module, "AUTO_MIN_RECORDS", len(event_log.records))
        monkeypatch.setattr(replay_module, "available_cpus", lambda: 3)
        projection = await replay(event_log.bootstrap, event_log.topic, workers=None)
        assert in_processes == [3]
        assert state_differences(fold(event_log.records), states(projection)) == []
