"""The worker's bound on records in flight (CUMI_QUEUE_SIZE): received from CometD, not yet
acknowledged by Kafka. While it is full the sink's `submit` waits, and with it the CometD connect
loop: backpressure instead of a growing queue (docs/design.md §6)."""

from __future__ import annotations

import asyncio
import time

from ingest.ops.metrics import (
    WORKER_BACKPRESSURE_SECONDS,
    WORKER_QUEUE_CAPACITY,
    WORKER_QUEUE_EVENTS,
)


class Window:
    """A counting bound on records in flight; `acquire` waits while it is full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        """The most records ever in flight at once (≤ limit, or one payload larger than it)."""
        self.waiting = 0
        """Callers waiting for room (the CometD connect loop held back)."""
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        WORKER_QUEUE_CAPACITY.set(limit)

    async def acquire(self, count: int) -> None:
        # a payload larger than the whole window is let in alone rather than never
        if self.used and self.used + count > self.limit:
            started = time.monotonic()
            self.waiting += 1
            try:
                while self.used and self.used + count > self.limit:
                    self._room.clear()
                    await self._room.wait()
            finally:
                self.waiting -= 1
            WORKER_BACKPRESSURE_SECONDS.inc(time.monotonic() - started)
        self.used += count
        self.peak = max(self.peak, self.used)
        self._empty.clear()
        WORKER_QUEUE_EVENTS.set(self.used)

    def release(self, count: int = 1) -> None:
        self.used -= count
        WORKER_QUEUE_EVENTS.set(self.used)
        if self.used < self.limit:
            self._room.set()
        if self.used == 0:
            self._empty.set()

    async def drained(self) -> None:
        await self._empty.wait()
