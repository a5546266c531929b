"""Small, typed fakes for the unit tests of the state machines (no sockets, no Kafka, no server).

Each fake stands at one boundary a module already takes as a constructor parameter: the CUMI REST
client, the credentials provider, the sink's publish, the CometD session (or, below it, the
aiocometd-ng client), the Kafka group consumer and the clock (`FakeClock`, a manual `Clock`). A fake
records what it was asked, in order, and answers by a script the test sets up. `eventually` waits,
with a bound, for a condition the state machine reaches on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
from collections.abc import Callable

from fixtures import waiting

from ingest.ops.clock import to_millis
from ingest.ops.metrics import WORKER_REGISTRY

EPOCH_2026 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""Where a FakeClock's wall time starts by default."""


class FakeClock:
    """A `Clock` (ingest.ops.clock) whose time moves only when the test says so.

    Monotonic, wall and UTC time advance together. `sleep` parks the caller until `advance` moves
    the time to (or past) its deadline; sleepers due at the same advance wake in deadline order.
    Nothing here reads the real clock, so what a component does at a given time is deterministic.
    `reads` counts monotonic reads; `waiting` returns once enough sleepers are parked (a periodic
    task has looked at the time and gone back to sleep).
    """

    def __init__(self, start: float = 1_000.0, epoch: dt.datetime = EPOCH_2026) -> None:
        self.now = start
        """Monotonic seconds (read it here without counting a read)."""
        self.reads = 0
        self._offset = epoch.timestamp() - start  # wall = monotonic + offset
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    # -- the Clock protocol ----------------------------------------------------------------------

    def monotonic(self) -> float:
        self.reads += 1
        return self.now

    def wall(self) -> float:
        return self.now + self._offset

    def utc_now(self) -> dt.datetime:
        return to_millis(dt.datetime.fromtimestamp(self.wall(), dt.UTC))

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, next(self._order), waiter)
        heapq.heappush(self._sleepers, entry)
        try:
            await waiter
        finally:
            if entry in self._sleepers:  # cancelled before it was due
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    # -- what the test does ----------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move time on; every sleeper due by then is woken (it runs at the loop's next turn)."""
        assert seconds >= 0, "time does not go back"
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)

    def pending(self) -> list[float]:
        """The parked sleepers' remaining times, soonest first."""
        return sorted(deadline - self.now for deadline, _, _ in self._sleepers)

    async def waiting(self, count: int = 1, within: float = 2.0) -> list[float]:
        """Return `pending()` once at least `count` sleepers are parked; fail after `within` s."""
        await eventually(lambda: len(self._sleepers) >= count, f"{count} sleepers", within)
        return self.pending()

    async def skip(self, within: float = 2.0) -> float:
        """Wait for a sleeper, then advance exactly to the soonest deadline; returns the step."""
        step = (await self.waiting(1, within))[0]
        self.advance(step)
        return step


async def eventually(check: Callable[[], bool], what: str, within: float = 2.0) -> None:
    """Return once `check()` holds, polled between event-loop turns (fakes settle in
    microseconds); fail after `within` s. The suite's one wait helper, `fixtures.waiting`."""
    await waiting.eventually(check, within=within, what=what, interval=0.001)


def sample(name: str, **labels: str) -> float:
    """A sample of the worker's metrics registry: 0 for labels not seen yet, an error for a
    name the registry does not have (a typo must not read as 0)."""
    value = WORKER_REGISTRY.get_sample_value(name, labels)
    if value is not None:
        return value
    families = {family.name for family in WORKER_REGISTRY.collect()}
    names = families | {f"{family}_total" for family in families}  # a counter's family drops it
    assert name in names, f"no metric {name} in the worker registry"
    return 0.0
