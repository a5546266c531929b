"""The sink's in-flight window: the bound that makes the worker stop pulling from CometD."""

from __future__ import annotations

import asyncio

from fixtures.waiting import holds

from ingest.eventlog.window import Window

BLOCKED = 0.02
"""Seconds a waiter must stay blocked; it has run to its wait after the first look already."""


class TestWindow:
    """acquire() waits while the window is full and resumes when acknowledgements free room."""

    async def test_blocks_at_the_bound_and_resumes(self) -> None:
        window = Window(10)
        await window.acquire(8)
        waiter = asyncio.create_task(window.acquire(5))
        await holds(lambda: not waiter.done(), "8 + 5 > 10: the receive path waits", BLOCKED)
        window.release(2)
        await holds(lambda: not waiter.done(), "6 + 5 > 10 still", BLOCKED)
        window.release(1)
        await asyncio.wait_for(waiter, 1)
        assert window.used == 10 and window.peak == 10

    async def test_a_payload_larger_than_the_window_goes_alone(self) -> None:
        window = Window(10)
        await window.acquire(25)  # empty window: let it in rather than wait forever
        assert window.used == 25
        waiter = asyncio.create_task(window.acquire(1))
        await holds(lambda: not waiter.done(), "the big payload fills the window", BLOCKED)
        window.release(25)
        await asyncio.wait_for(waiter, 1)

    async def test_drained(self) -> None:
        window = Window(10)
        await window.acquire(3)
        drained = asyncio.create_task(window.drained())
        await holds(lambda: not drained.done(), "3 still in flight", BLOCKED)
        window.release(3)
        await asyncio.wait_for(drained, 1)
