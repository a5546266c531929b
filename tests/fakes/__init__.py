"""Small, typed fakes for the unit tests of the state machines (no sockets, no Kafka, no server).

Each fake stands at one boundary a module already takes as a constructor parameter: the CUMI REST
client, the credentials provider, the sink's publish, the CometD session (or, below it, the
aiocometd-ng client), the Kafka group consumer and the monotonic clock. A fake records what it was
asked, in order, and answers by a script the test sets up; nothing in it sleeps. `eventually`
waits, with a bound, for a condition the state machine reaches on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ingest.ops.metrics import WORKER_REGISTRY


class FakeClock:
    """A monotonic clock that moves only when told. It counts its reads, so a test can wait for a
    periodic task (a watchdog, a poll loop) to have looked at it since the last `advance`."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(check: Callable[[], bool], what: str, within: float = 2.0) -> None:
    """Return once `check()` holds (polled between event-loop turns); fail after `within` s."""
    try:
        async with asyncio.timeout(within):
            while not check():  # noqa: ASYNC110 - a predicate over plain state, no event
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


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
