"""ops.logs.RepeatLimiter: the first line of a kind, then one per period with the count held back;
other loggers untouched. eventlog.clients: a failed metadata refresh returns after a backoff."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ingest.eventlog.clients import pace_metadata
from ingest.ops.backoff import Backoff
from ingest.ops.logs import RepeatLimiter


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


class TestRepeatLimiter:
    def test_first_line_then_one_per_period_with_the_count(self) -> None:
        now = [0.0]
        limiter = RepeatLimiter(period=30.0, clock=lambda: now[0])
        passed = []
        for second in range(0, 95):
            now[0] = float(second)
            for node in (1, 2):  # arguments do not make a line new
                line = record("aiokafka", "Unable connect to node with id %s", node)
                if limiter.filter(line):
                    passed.append((second, line.getMessage()))
        assert [s for s, _ in passed] == [0, 30, 60, 90]
        assert passed[1][1] == "Unable connect to node with id 1 [59 similar lines in 30 s]"
        assert limiter.suppressed == 190 - 4
        assert limiter.held() == 9  # since the last line that passed (second 90)

    def test_kinds_and_other_loggers(self) -> None:
        limiter = RepeatLimiter(period=30.0, clock=lambda: 0.0)
        assert limiter.filter(record("aiokafka.conn", "a %s", 1))
        assert limiter.filter(record("aiokafka.conn", "b %s", 1))
        assert limiter.filter(record("aiokafka.conn", "a %s", 1, level=logging.WARNING))
        assert not limiter.filter(record("aiokafka.conn", "a %s", 2))
        assert all(limiter.filter(record("ingest.worker", "a %s", 1)) for _ in range(5))


class FakeClient:
    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes = outcomes

    async def _metadata_update(self, cluster_metadata: Any, topics: Any) -> bool:
        return self.outcomes.pop(0)


class FakeClock:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class TestPacing:
    def test_failures_wait_growing_success_resets(self) -> None:
        client = FakeClient([False, False, False, True, False])
        clock = FakeClock()
        pace_metadata(client, Backoff(base=0.1, cap=2.0, jitter=0.0), clock)  # type: ignore[arg-type]
        pace_metadata(client, Backoff(base=9.0, cap=9.0, jitter=0.0), clock)  # type: ignore[arg-type]

        async def refresh_five() -> list[bool]:
            return [await client._metadata_update(None, None) for _ in range(5)]

        assert asyncio.run(refresh_five()) == [False, False, False, True, False]
        assert clock.slept == [0.1, 0.2, 0.4, 0.1], "paced once (idempotent), reset by success"
