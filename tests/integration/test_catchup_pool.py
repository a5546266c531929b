"""The catch-up pool's processes (ingest.state.catchup.Pool): a job that cannot be done comes back
as `Failed` (the projector then exits 1), a worker killed from outside is reported dead, and
stopping ends every worker. The folding itself, on a real broker: test_checkpoints.py."""

from __future__ import annotations

import os
import signal

import pytest
from fixtures.waiting import eventually

from ingest.settings import SettingsSource, load_kafka
from ingest.state.catchup import Failed, Job, Pool
from ingest.state.checkpoints import CheckpointPolicy, Tracker

pytestmark = [pytest.mark.integration]


def unreachable_job(generation: int) -> Job:
    """A job against a port nothing listens on: its consumer cannot start."""
    return Job(
        partition=0,
        generation=generation,
        start=0,
        stop=10,
        state=[],
        dirty=(),
        encoded={},
        tracker=Tracker(from_offset=0),
        kafka=load_kafka(SettingsSource.load({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})),
        events_topic="events",
        checkpoints_topic="checkpoints",
        partition_count=2,
        policy=CheckpointPolicy(),
        segment_records=100,
    )


def test_a_job_that_fails_comes_back_as_failed_and_stop_ends_the_workers() -> None:
    pool = Pool(2)
    try:
        generation = pool.begin(0, 2)
        assert generation is not None
        assert pool.begin(5, 2) is None  # a partition the pool was not sized for
        pool.submit(unreachable_job(generation))
        result = None
        for _ in range(60):
            result = pool.next_result(1.0)
            if result is not None:
                break
        assert isinstance(result, Failed), result
        assert (result.partition, result.generation) == (0, generation)
        assert "KafkaConnectionError" in result.error
        workers = list(pool._workers)
        assert pool.dead() == []
    finally:
        pool.stop()
    assert all(not w.is_alive() for w in workers)


async def test_a_cancelled_job_never_runs_and_a_killed_worker_is_reported() -> None:
    pool = Pool(1)  # one worker: jobs run in the order submitted
    try:
        stale = pool.begin(0, 2)
        assert stale is not None
        fresh = pool.cancel(0)
        pool.submit(unreachable_job(stale))
        pool.submit(unreachable_job(fresh))
        result = None
        for _ in range(60):
            result = pool.next_result(1.0)
            if result is not None:
                break
        # had the cancelled job run, its failure would have come first
        assert isinstance(result, Failed) and result.generation == fresh, result
        (worker,) = pool._workers
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        await eventually(lambda: pool.dead() != [], within=10, what="the kill noticed")
        assert "exit code -9" in pool.dead()[0]
    finally:
        pool.stop()
