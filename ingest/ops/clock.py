"""The pipeline's one clock: wall time at the records' millisecond resolution, monotonic time for
timers, and sleeping — behind a small protocol so that tests drive time instead of waiting for it.

Components whose *behaviour* depends on time (retry timers, the stall watchdog, time stamps written
into records) take a `clock: Clock = SYSTEM_CLOCK` argument. Pure duration metrics (a histogram of
how long a transaction took) read `time.monotonic()` directly: nothing decides on them.

Records keep milliseconds (Avro `timestamp-millis`), so wall time is truncated to them: a stamp
written and read back compares equal to the one in memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Clock(Protocol):
    """What the pipeline asks of time."""

    def utc_now(self) -> dt.datetime:
        """Aware UTC now, truncated to milliseconds."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (for gauges such as 'last event at')."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (timers, deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this long (a fake clock returns when its time is advanced past it)."""
        ...


class SystemClock:
    """The real clock. Stamps taken within one millisecond share one datetime object: building it
    costs more than the rest of an event's `ingested_at` handling on the worker's hot path."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = (0, EPOCH)

    def utc_now(self) -> dt.datetime:
        millis = time.time_ns() // 1_000_000
        last = self._last  # one tuple, replaced whole: safe across threads
        if last[0] != millis:
            last = self._last = (millis, EPOCH + dt.timedelta(milliseconds=millis))
        return last[1]

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
"""The process's clock; the default of every component that takes one."""


def to_millis(moment: dt.datetime) -> dt.datetime:
    """Truncate to milliseconds (what Avro timestamp-millis keeps), aware UTC (naive = UTC)."""
    if moment.tzinfo is not dt.UTC:
        moment = (
            moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
        )
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


async def wait_event(clock: Clock, event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` of `clock` time have passed; True if set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, timer):
            task.cancel()
        await asyncio.gather(waiter, timer, return_exceptions=True)
    return event.is_set()
