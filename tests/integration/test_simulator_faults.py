"""Simulator faults on real sockets: dropped connections, restart, Notifier downtime, duplicates,
malformed payloads (REST latency and 503 storms are in test_simulator_rest.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiocometd_ng.client import Client
from aiocometd_ng.constants import ConnectionType
from fixtures.simulator import (
    MakeSimulator,
    aiocometd_websocket,
    cometd_client,
    connect_held,
    fold,
    request_notification,
)
from fixtures.waiting import eventually

from ingest.simulator import MalformedKind, Op, Simulator

pytestmark = pytest.mark.integration

TIME = re.compile(r"^\d\d:\d\d:\d\d [AP]M \d\d/\d\d/\d{4}$")
EVENT_KEYS = {"MessageInfo", "USN", "EventTime", "SubscriptionId", "MailboxId", "EventType"}
EVENT_TYPES = {
    "NEW_MESSAGE",
    "SAVED_MESSAGE",
    "UNREAD_MESSAGE",
    "DELETED_MESSAGE",
    "DELETED_MESSAGE_CREATE",
    "DELETED_MESSAGE_READ",
    "DELETED_MESSAGE_UNREAD",
    "DELETED_MESSAGE_DELETE",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # keeps the BAYEUX_BROWSER cookie of an IP-address host (the default jar drops it)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def subscribe_all(http: aiohttp.ClientSession, sim: Simulator, client: Client) -> None:
    for alias in sim.users:
        await client.subscribe("/vmrest/mailbox/" + await request_notification(http, sim, alias))


async def receive(client: Client, count: int, within: float = 10.0) -> list[Any]:
    async with asyncio.timeout(within):
        return [(await client.receive())["data"] for _ in range(count)]


def is_valid(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and set(data) >= EVENT_KEYS
        and isinstance(data["USN"], int)
        and data["EventType"] in EVENT_TYPES
        and isinstance(data["MessageInfo"], list)
        and bool(data["MessageInfo"])
        and all(isinstance(info.get("MessageId"), str) for info in data["MessageInfo"])
        and TIME.match(str(data["EventTime"])) is not None
    )


async def post_once(http: aiohttp.ClientSession, url: str, *messages: Any) -> list[Any]:
    async with http.post(url, json=list(messages)) as response:
        replies: list[Any] = await response.json()
        return replies


async def raw_post(http: aiohttp.ClientSession, url: str, *messages: Any) -> list[Any]:
    """POST a Bayeux batch; once more if a fault has just closed the pooled connection."""
    try:
        return await post_once(http, url, *messages)
    except aiohttp.ServerDisconnectedError:
        return await post_once(http, url, *messages)


class TestDropConnections:
    """Connections close, sessions and their queues survive."""

    async def test_held_long_poll_is_cut_and_session_survives(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = simulator.cometd_url
        (hs,) = await raw_post(
            http, url, {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]}
        )
        connect = {"channel": "/meta/connect", "clientId": hs["clientId"]}
        channel = "/vmrest/mailbox/" + await request_notification(http, simulator, "user0001")
        subscribe = {"channel": "/meta/subscribe", "clientId": hs["clientId"]}
        await raw_post(http, url, {**subscribe, "subscription": channel}, connect)
        held = asyncio.create_task(post_once(http, url, connect))
        await eventually(lambda: connect_held(simulator, hs["clientId"]), within=5, what="held")
        simulator.drop_connections()
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(held, 2)
        simulator.perform("user0001", Op.NEW)
        replies = await raw_post(http, url, connect)
        assert [r["channel"] for r in replies] == [channel, "/meta/connect"]
        assert simulator.stats.sessions == 1 and simulator.stats.dropped == 0

    async def test_websocket_is_closed(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.ws_connect(simulator.cometd_url.replace("http", "ws")) as ws:
            await ws.send_json([{"channel": "/meta/handshake", "supportedConnectionTypes": []}])
            await ws.receive_json()
            simulator.drop_connections()
            message = await asyncio.wait_for(ws.receive(), 2)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    @aiocometd_websocket
    @pytest.mark.parametrize("transport", [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET])
    async def test_aiocometd_recovers_and_loses_nothing(
        self, simulator: Simulator, http: aiohttp.ClientSession, transport: ConnectionType
    ) -> None:
        async with cometd_client(simulator.cometd_url, transport) as client:
            await subscribe_all(http, simulator, client)
            simulator.emit(20)
            before = await receive(client, 20)
            simulator.drop_connections()
            simulator.emit(30)
            after = await receive(client, 30)
        assert fold(before + after) == simulator.truth()


class TestRestart:
    """A Jetty restart loses every session and subscription, not the mailboxes."""

    async def test_clients_must_start_over(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = simulator.cometd_url
        (hs,) = await raw_post(
            http, url, {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]}
        )
        client_id = hs["clientId"]
        old = "/vmrest/mailbox/" + await request_notification(http, simulator, "user0002")
        await raw_post(
            http, url, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": old}
        )
        simulator.perform("user0002", Op.NEW, count=2)
        truth = simulator.truth()
        simulator.restart()
        assert simulator.truth() == truth
        stats = simulator.stats
        assert (stats.restarts, stats.sessions, stats.subscriptions, stats.dropped) == (1, 0, 0, 1)
        (reply,) = await raw_post(http, url, {"channel": "/meta/connect", "clientId": client_id})
        assert reply["error"] == "402::session_unknown"
        assert reply["advice"]["reconnect"] == "handshake"
        (hs,) = await raw_post(
            http, url, {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]}
        )
        subscribe = {"channel": "/meta/subscribe", "clientId": hs["clientId"]}
        # accepted, as by a stock CometD server: but nothing is published there any more
        (stale,) = await raw_post(http, url, {**subscribe, "subscription": old})
        assert stale["successful"]
        simulator.perform("user0002", Op.NEW)
        assert simulator.stats.lost == 1 and simulator.stats.queued == 1
        new = "/vmrest/mailbox/" + await request_notification(http, simulator, "user0002")
        (fresh,) = await raw_post(http, url, {**subscribe, "subscription": new})
        assert fresh["successful"]
        simulator.perform("user0002", Op.NEW)
        assert simulator.stats.queued == 2

    async def test_a_server_with_a_security_policy_refuses_old_ids(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(refuse_unknown_channels=True)
        old = "/vmrest/mailbox/" + await request_notification(http, sim, "user0002")
        sim.restart()
        (hs,) = await raw_post(
            http, sim.cometd_url,
            {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]},
        )  # fmt: skip
        subscribe = {"channel": "/meta/subscribe", "clientId": hs["clientId"]}
        (stale,) = await raw_post(http, sim.cometd_url, {**subscribe, "subscription": old})
        assert stale["successful"] is False and "subscription_invalid" in stale["error"]


class TestNotifierDowntime:
    """Changes during downtime arrive as one latest-status event per message on recovery."""

    @aiocometd_websocket
    @pytest.mark.parametrize("transport", [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET])
    async def test_client_converges_after_recovery(
        self, simulator: Simulator, http: aiohttp.ClientSession, transport: ConnectionType
    ) -> None:
        async with cometd_client(simulator.cometd_url, transport) as client:
            await subscribe_all(http, simulator, client)
            simulator.emit(100)
            before = await receive(client, 100)
            simulator.notifier_down()
            simulator.emit(150)
            assert simulator.stats.withheld == 150 and simulator.stats.queued == 100
            sent = simulator.notifier_up()
            recovery = await receive(client, sent)
        assert 0 < sent < 150
        folded, truth = fold(before + recovery), simulator.truth()
        assert {a: (b["inbox"], b["deleted"]) for a, b in folded.items()} == {
            a: (b["inbox"], b["deleted"]) for a, b in truth.items()
        }


class TestDuplicatesAndMalformed:
    """Injected duplicates and junk reach the client and are counted; the truth ignores them."""

    async def test_duplicates_arrive_verbatim(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        async with cometd_client(simulator.cometd_url, ConnectionType.LONG_POLLING) as client:
            await subscribe_all(http, simulator, client)
            simulator.duplicates(1.0)
            simulator.emit(10)
            got = await receive(client, 20)
        assert simulator.stats.duplicates == 10
        assert all(got[i] == got[i + 1] for i in range(0, 20, 2))

    @aiocometd_websocket
    async def test_malformed_payloads_are_extra(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        async with cometd_client(simulator.cometd_url, ConnectionType.WEBSOCKET) as client:
            await subscribe_all(http, simulator, client)
            simulator.malformed(0.5)
            simulator.emit(60)
            junk = simulator.stats.malformed
            got = await receive(client, 60 + junk)
            simulator.malformed(0)
            assert simulator.inject_malformed("user0003", MalformedKind.MISTYPED_USN) == 1
            (bad_time,) = await receive(client, 1)
        valid = [d for d in got if is_valid(d)]
        assert 0 < junk < 60 and len(valid) == 60
        assert fold(valid) == simulator.truth()
        assert bad_time["MailboxId"] == "user0003" and not is_valid(bad_time)
        assert simulator.stats.malformed == junk + 1
