"""`ingest projector` killed with SIGKILL at random points of a 50,000-event stream ends exact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.producing import (
    GroupOffsets,
    ProjectorProcess,
    fold,
    generate,
    produce,
    state_differences,
    wait_committed,
)

from ingest.eventlog.topics import TopicNames
from ingest.state.projection import Projection, diff_states
from ingest.state.store import read_state_topic

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

EVENTS = 50_000
MAILBOXES = 120
KILLS = 6
STARTUP_KILL = 2
"""The run killed somewhere in start-up (joining, fencing, restoring) instead of mid-stream."""


class TestKillNine:
    """SIGKILL at any point (starting, restoring, applying, mid-transaction) loses nothing and
    doubles nothing: the state topic and the read API equal the fold of the whole log."""

    async def test_state_exact_after_kills_during_the_stream(
        self, kafka_bootstrap: str, fresh_topics: TopicNames, tmp_path: Path
    ) -> None:
        stream = generate(events=EVENTS, mailboxes=MAILBOXES, seed=11)
        group = f"crash-{uuid.uuid4().hex[:8]}"
        settings = {
            "CUMI_PROJECTOR_GROUP_ID": group,
            "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": 100,
            "CUMI_PROJECTOR_COMMIT_MAX_RECORDS": 1000,
            # static membership: a restarted instance takes its partitions back at once
            "CUMI_PROJECTOR_GROUP_INSTANCE_ID": "crash-test",
        }
        projector_log = tmp_path / "projector.log"

        def projector() -> ProjectorProcess:
            return ProjectorProcess(
                kafka_bootstrap, fresh_topics.events, fresh_topics.state, **settings
            )

        producing = asyncio.create_task(
            produce(
                kafka_bootstrap,
                fresh_topics.events,
                stream.records,
                stream.values,
                chunk=2500,
                pause=0.3,
            )
        )
        try:
            async with GroupOffsets(kafka_bootstrap, group, fresh_topics.events) as offsets:
                survived = await _kill_repeatedly(
                    projector, offsets, len(stream.records), projector_log
                )
            placements = await producing
        finally:
            producing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producing
        assert len(placements) == len(stream.records)
        interrupted = [n for n in survived if n < len(stream.records)]
        assert len(interrupted) >= 5, f"records committed at each kill: {survived}"

        final = projector()
        await final.start(projector_log)
        expected = fold(stream.records)
        try:
            await final.wait_ready()
            await wait_committed(
                kafka_bootstrap,
                group,
                fresh_topics.events,
                within=120,
                alive=lambda: final.proc is not None and final.proc.returncode is None,
            )
            await _check_read_api(final, expected)
        finally:
            code = await final.terminate()
        assert code == 0, _tail(projector_log)

        state = await read_state_topic(fresh_topics.state, bootstrap_servers=kafka_bootstrap)
        assert state_differences(expected, state) == []
        # every record of the log counted exactly once: none twice, none lost
        counted = sum(
            s.events_applied + s.duplicates + s.stale + s.snapshots_applied for s in state.values()
        )
        assert counted == len(stream.records)
        assert diff_states(stream.truth, expected.to_json()) == []


async def _kill_repeatedly(
    projector: Callable[[], ProjectorProcess], offsets: GroupOffsets, records: int, path: Path
) -> list[int]:
    """Start and SIGKILL a projector KILLS times; records committed after each kill."""
    seed = random.randrange(1_000_000)
    log.info("kill points seed %d", seed)
    rng = random.Random(seed)
    # progress targets spread over the stream, then anywhere within a commit cycle
    targets = sorted(rng.uniform(0.05, 0.9) * records for _ in range(KILLS - 1))
    survived = []
    for run in range(KILLS):
        proc = projector()
        await proc.start(path)
        try:
            if run == STARTUP_KILL:
                await asyncio.sleep(rng.uniform(0.2, 2.0))
            else:
                await _until_committed(offsets, targets.pop(0), proc)
                await asyncio.sleep(rng.uniform(0, 0.15))
        finally:
            code = await proc.kill()
        assert code == -9, _tail(path)
        survived.append(await offsets.total())
        log.info("run %d killed with %d records committed", run, survived[-1])
    return survived


async def _until_committed(offsets: GroupOffsets, target: float, proc: ProjectorProcess) -> None:
    while await offsets.total() < target:
        assert proc.proc is not None
        assert proc.proc.returncode is None, "the projector exited on its own"
        await asyncio.sleep(0.05)


async def _check_read_api(proc: ProjectorProcess, expected: Projection) -> None:
    listed: list[str] = []
    after = ""
    while True:
        status, page = await proc.get(f"/mailboxes?limit=50&after={after}")
        assert status == 200
        listed += [m["mailbox_id"] for m in page["mailboxes"]]
        assert page["total"] == len(expected.mailboxes)
        if page["next"] is None:
            break
        after = page["next"]
    assert listed == sorted(expected.mailboxes)
    for mailbox_id, state in expected.mailboxes.items():
        status, body = await proc.get(f"/mailboxes/{mailbox_id}")
        assert status == 200
        _strip(body, "mailbox_id", "partition", "counts")
        assert body == state.to_json(detail=True), mailbox_id
    status, body = await proc.get("/mailboxes/nobody-here")
    assert status == 404
    assert body["owned"] is True


def _strip(body: dict[str, Any], *keys: str) -> None:
    for key in keys:
        body.pop(key)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
