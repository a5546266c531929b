"""Conformance with aiocometd-ng, a Bayeux client no one here wrote, on both transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiocometd_ng.constants import ConnectionType
from fixtures.simulator import (
    MakeSimulator,
    aiocometd_websocket,
    cometd_client,
    fold,
    request_notification,
)

pytestmark = pytest.mark.integration

MAILBOXES = 200
EVENTS = 3_000


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class TestAiocometd:
    """Handshake, subscribe to many channels, receive a scenario's events; they fold to truth."""

    @aiocometd_websocket
    @pytest.mark.parametrize("transport", [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET])
    async def test_many_channels_every_event(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession, transport: ConnectionType
    ) -> None:
        sim = await make_simulator(mailboxes=MAILBOXES, seed=11)
        async with cometd_client(sim.cometd_url, transport, max_pending_count=0) as client:
            assert client.connection_type == transport
            for alias in sim.users:
                channel = "/vmrest/mailbox/" + await request_notification(http, sim, alias)
                await client.subscribe(channel)
            assert sim.stats.channel_subscriptions == MAILBOXES
            sim.run_scenario(events=EVENTS)
            async with asyncio.timeout(20):
                received = [(await client.receive())["data"] for _ in range(EVENTS)]
                await sim.wait_idle()
        stats = sim.stats
        assert (stats.emitted_total, stats.delivered, stats.lost) == (EVENTS, EVENTS, 0)
        folded, truth = fold(received), sim.truth()
        assert folded == {alias: truth[alias] for alias in folded}
        assert len(folded) > MAILBOXES * 0.9
