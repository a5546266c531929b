"""The simulator's Bayeux server on real sockets, spoken to by hand (long-polling and WebSocket)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from fixtures.simulator import MakeSimulator, connect_held, request_notification
from fixtures.waiting import eventually, holds

from ingest.simulator import Op, Simulator, SimulatorConfig

pytestmark = pytest.mark.integration

Message = dict[str, Any]


class Bayeux:
    """A bare Bayeux long-polling client: posts message arrays, returns reply arrays."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.client_id = ""
        self._id = 0

    def message(self, channel: str, **fields: Any) -> Message:
        self._id += 1
        body = {"channel": channel, "id": str(self._id), **fields}
        if self.client_id and channel != "/meta/handshake":
            body["clientId"] = self.client_id
        return body

    async def post(self, *messages: Message, suffix: str = "") -> list[Message]:
        async with self.http.post(self.url + suffix, json=list(messages)) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            replies: list[Message] = await response.json()
            return replies

    async def handshake(self) -> Message:
        offered = ["long-polling", "websocket"]
        (reply,) = await self.post(
            self.message("/meta/handshake", version="1.0", supportedConnectionTypes=offered)
        )
        self.client_id = reply["clientId"]
        return reply

    async def connect(self, **fields: Any) -> list[Message]:
        return await self.post(
            self.message("/meta/connect", connectionType="long-polling", **fields)
        )

    async def subscribe(self, subscription: str | list[str]) -> Message:
        (reply,) = await self.post(self.message("/meta/subscribe", subscription=subscription))
        return reply


def events(replies: list[Message]) -> list[Message]:
    return [r for r in replies if not r["channel"].startswith("/meta/")]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # keeps the BAYEUX_BROWSER cookie of an IP-address host (the default jar drops it)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def ready_client(
    http: aiohttp.ClientSession, sim: Simulator, aliases: list[str]
) -> tuple[Bayeux, dict[str, str]]:
    """Handshaken, first connect done, subscribed to one new subscription per alias."""
    client = Bayeux(http, sim.cometd_url)
    await client.handshake()
    await client.connect()
    channels = {}
    for alias in aliases:
        channels[alias] = "/vmrest/mailbox/" + await request_notification(http, sim, alias)
        assert (await client.subscribe(channels[alias]))["successful"]
    return client, channels


class TestHandshake:
    """Handshake creates a session and gives advice."""

    async def test_reply(self, simulator: Simulator, http: aiohttp.ClientSession) -> None:
        reply = await Bayeux(http, simulator.cometd_url).handshake()
        assert reply["successful"] is True and reply["channel"] == "/meta/handshake"
        assert reply["version"] == "1.0" and reply["id"] == "1"
        assert reply["supportedConnectionTypes"] == ["long-polling", "websocket"]
        timeout = int(simulator.config.connect_timeout * 1000)
        assert reply["advice"] == {"reconnect": "retry", "interval": 0, "timeout": timeout}
        assert reply["clientId"] in simulator.bayeux.sessions

    async def test_default_hold_is_cometd_9s(self) -> None:
        assert SimulatorConfig().connect_timeout == 20.0

    async def test_unsupported_transport(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        client = Bayeux(http, simulator.cometd_url)
        handshake = client.message(
            "/meta/handshake", version="1.0", supportedConnectionTypes=["callback-polling"]
        )
        (reply,) = await client.post(handshake)
        assert reply["successful"] is False and reply["error"].startswith("406:")

    async def test_javascript_style_urls_and_bad_bodies(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        client = Bayeux(http, simulator.cometd_url)
        (reply,) = await client.post(
            client.message("/meta/handshake", supportedConnectionTypes=["long-polling"]),
            suffix="/handshake",
        )
        assert reply["successful"]
        async with http.post(simulator.cometd_url, data=b"{nope") as response:
            assert response.status == 400
        async with http.get(simulator.cometd_url) as response:
            assert response.status == 405
        (denied,) = await client.post(client.message("/some/channel", data={}))
        assert denied["successful"] is False and denied["error"] == "403::publish_denied"


class TestConnect:
    """Connect is held until messages arrive, and carries many of them at once."""

    async def test_first_connect_is_immediate_then_held_until_an_event(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        client, channels = await ready_client(http, simulator, ["user0001"])
        held = asyncio.create_task(client.connect())
        await eventually(lambda: connect_held(simulator, client.client_id), within=5, what="held")
        await holds(lambda: not held.done(), "the connect is held while nothing happens", 0.2)
        simulator.perform("user0001", Op.NEW)
        replies = await asyncio.wait_for(held, 2)
        assert replies[-1]["channel"] == "/meta/connect" and replies[-1]["successful"]
        (event,) = events(replies)
        assert event["channel"] == channels[event["data"]["MailboxId"]]

    async def test_many_messages_per_response_and_max_batch(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(max_batch=40)
        client, _ = await ready_client(http, sim, list(sim.users))
        sim.emit(100)
        sizes = [len(events(await client.connect())) for _ in range(3)]
        assert sizes == [40, 40, 20]
        assert sim.stats.delivered == 100

    async def test_timeout_and_client_advice(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(connect_timeout=0.3)
        client, _ = await ready_client(http, sim, ["user0001"])
        replies = await asyncio.wait_for(client.connect(), 2)
        assert [r["channel"] for r in replies] == ["/meta/connect"]
        assert "advice" not in replies[0], "CometD's held replies carry no advice"
        now = await asyncio.wait_for(client.connect(advice={"timeout": 0}), 0.25)
        assert now[-1]["successful"]

    async def test_newer_connect_releases_the_held_one(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        client, _ = await ready_client(http, simulator, ["user0001"])
        first = asyncio.create_task(client.connect())
        await eventually(lambda: connect_held(simulator, client.client_id), within=5, what="held")
        second = asyncio.create_task(client.connect())
        replies = await asyncio.wait_for(first, 0.5)
        assert replies[-1]["successful"] and not second.done()
        simulator.perform("user0001", Op.NEW)
        assert len(events(await asyncio.wait_for(second, 2))) == 1

    async def test_queue_overflow_drops_oldest(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(session_queue_limit=5, mailboxes=1)
        client, _ = await ready_client(http, sim, ["user0001"])
        sim.emit(8)
        got = [e["data"]["USN"] for e in events(await client.connect())]
        assert len(got) == 5 and got == sorted(got)
        assert got[-1] == sim.scenario.mailboxes["user0001"].usn, "the newest are kept"
        assert sim.stats.dropped == 3 and sim.stats.queued == 8


class TestSubscriptions:
    """Any channel can be subscribed (as on a stock CometD server), or only live subscription
    channels (`refuse_unknown_channels`); events follow subscriptions."""

    async def test_any_channel_is_accepted_by_default(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        client, _ = await ready_client(http, simulator, [])
        channels = ["/vmrest/mailbox/not-a-subscription", "/other/channel"]
        reply = await client.subscribe(channels)
        assert reply["successful"] and reply["subscription"] == channels
        assert simulator.stats.channel_subscriptions == 2

    async def test_invalid_channels_are_refused_whole(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(refuse_unknown_channels=True)
        client, _ = await ready_client(http, sim, [])
        good = "/vmrest/mailbox/" + await request_notification(http, sim, "user0001")
        for bad in ("/vmrest/mailbox/not-a-subscription", "/other/channel"):
            reply = await client.subscribe([good, bad])
            assert reply["successful"] is False
            assert reply["error"] == f"403:{bad}:subscription_invalid"
            assert reply["subscription"] == [good, bad]
        assert sim.stats.channel_subscriptions == 0
        reply = await client.subscribe([good])
        assert reply["successful"] and reply["subscription"] == [good]
        assert sim.stats.channel_subscriptions == 1

    async def test_unsubscribe_stops_delivery(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(mailboxes=1)
        client, channels = await ready_client(http, sim, ["user0001"])
        (reply,) = await client.post(
            client.message("/meta/unsubscribe", subscription=channels["user0001"])
        )
        assert reply["successful"]
        sim.emit(3)
        assert sim.stats.lost == 3 and sim.stats.queued == 0

    async def test_fan_out_to_sessions_and_subscriptions(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(mailboxes=1)
        a, channels = await ready_client(http, sim, ["user0001"])
        b = Bayeux(http, sim.cometd_url)
        await b.handshake()
        await b.connect()
        second = "/vmrest/mailbox/" + await request_notification(http, sim, "user0001")
        assert (await b.subscribe([channels["user0001"], second]))["successful"]
        sim.emit(1)
        to_a, to_b = events(await a.connect()), events(await b.connect())
        assert len(to_a) == 1 and len(to_b) == 2
        assert {e["data"]["SubscriptionId"] for e in to_b} == {
            c.removeprefix("/vmrest/mailbox/") for c in (channels["user0001"], second)
        }
        assert to_a[0] in to_b

    async def test_batched_requests(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        client = Bayeux(http, simulator.cometd_url)
        await client.handshake()
        ids = [await request_notification(http, simulator, a) for a in ("user0001", "user0002")]
        replies = await client.post(
            *(client.message("/meta/subscribe", subscription=f"/vmrest/mailbox/{i}") for i in ids),
            client.message("/meta/connect", connectionType="long-polling"),
        )
        assert [r["channel"] for r in replies] == [
            "/meta/subscribe",
            "/meta/subscribe",
            "/meta/connect",
        ]
        assert all(r["successful"] for r in replies)

    async def test_twenty_thousand_channels_in_one_session(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(mailboxes=20_000)
        client = Bayeux(http, sim.cometd_url)
        await client.handshake()
        await client.connect()
        # notification subscriptions made in-process: 20,000 REST calls would test nothing new
        channel_of = {
            alias: f"/vmrest/mailbox/{sim.subscriptions.create(alias)}" for alias in sim.users
        }
        channels = list(channel_of.values())
        for start in range(0, len(channels), 2_000):
            assert (await client.subscribe(channels[start : start + 2_000]))["successful"]
        assert sim.stats.channel_subscriptions == 20_000
        sim.emit(3_000)
        received: list[Message] = []
        while len(received) < 3_000:
            received += events(await client.connect())
        assert all(e["channel"] == channel_of[e["data"]["MailboxId"]] for e in received)
        assert sim.stats.lost == 0


class TestSessions:
    """Unknown clients are told to handshake; idle sessions expire; disconnect ends a session."""

    async def test_unknown_client(self, simulator: Simulator, http: aiohttp.ClientSession) -> None:
        client = Bayeux(http, simulator.cometd_url)
        client.client_id = "no-such-client"
        for reply in [(await client.connect())[-1], await client.subscribe("/x")]:
            assert reply["successful"] is False and reply["error"] == "402::session_unknown"
            assert reply["advice"] == {"reconnect": "handshake", "interval": 0}

    async def test_server_side_disconnect(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        client, _ = await ready_client(http, simulator, ["user0001"])
        held = asyncio.create_task(client.connect())
        await eventually(
            lambda: any(s.waiter for s in simulator.bayeux.sessions.values()),
            within=2,
            what="a held connect",
            interval=0.01,
        )
        assert simulator.disconnect_sessions() == 1
        disconnect, connect = await asyncio.wait_for(held, 2)
        assert disconnect["channel"] == "/meta/disconnect" and disconnect["successful"]
        assert connect["successful"] and connect["advice"] == {"reconnect": "none"}
        (refused,) = await client.connect()
        assert refused["error"] == "402::session_unknown"
        assert refused["advice"]["reconnect"] == "handshake"

    async def test_disconnect(self, simulator: Simulator, http: aiohttp.ClientSession) -> None:
        client, _ = await ready_client(http, simulator, ["user0001"])
        (reply,) = await client.post(client.message("/meta/disconnect"))
        assert reply["successful"] and not simulator.bayeux.sessions
        assert (await client.connect())[-1]["error"] == "402::session_unknown"

    async def test_expiry_drops_the_session_and_its_queue(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(max_interval=0.3, mailboxes=1)
        client, _ = await ready_client(http, sim, ["user0001"])
        sim.emit(4)
        await eventually(lambda: sim.stats.expired_sessions == 1, within=10, what="expired")
        assert sim.stats.expired_sessions == 1 and sim.stats.dropped == 4
        assert (await client.connect())[-1]["error"] == "402::session_unknown"


class TestWebSocket:
    """The same semantics over a WebSocket on the same URL."""

    async def test_handshake_subscribe_and_held_connect(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        channel = "/vmrest/mailbox/" + await request_notification(http, simulator, "user0002")
        ws_url = simulator.cometd_url.replace("http://", "ws://")
        async with http.ws_connect(ws_url) as ws:

            async def exchange(*messages: Message) -> list[Message]:
                await ws.send_str(json.dumps(list(messages)))
                replies: list[Message] = json.loads(await asyncio.wait_for(ws.receive_str(), 3))
                return replies

            (hs,) = await exchange(
                {"channel": "/meta/handshake", "supportedConnectionTypes": ["websocket"]}
            )
            client_id = hs["clientId"]
            connect = {"channel": "/meta/connect", "clientId": client_id, "id": "c1"}
            (first,) = await exchange(connect)
            assert first["successful"]
            await ws.send_str(json.dumps([{**connect, "id": "c2"}]))
            # a subscribe is answered while the connect is held on the same socket
            (sub,) = await exchange(
                {"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel}
            )
            assert sub["successful"]
            simulator.perform("user0002", Op.NEW)
            # one message per frame, as CometD sends them
            frames = [json.loads(await asyncio.wait_for(ws.receive_str(), 3)) for _ in range(2)]
            assert [[r["channel"] for r in f] for f in frames] == [[channel], ["/meta/connect"]]
            assert frames[1][0]["id"] == "c2"
            assert frames[0][0]["data"]["MailboxId"] == "user0002"

    async def test_not_json_closes_the_socket(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.ws_connect(simulator.cometd_url.replace("http", "ws")) as ws:
            await ws.send_str("{oops")
            message = await asyncio.wait_for(ws.receive(), 3)
            assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1003


class TestLikeTheReferenceServer:
    """The reference CometD server's defaults that a client must cope with."""

    async def test_long_polling_is_bound_to_the_browser_cookie(self, simulator: Simulator) -> None:
        """aiohttp's default jar drops cookies of an IP-address host: the session is unknown."""
        assert simulator.cometd_url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as default_jar:
            client = Bayeux(default_jar, simulator.cometd_url)
            await client.handshake()
            (reply,) = await client.connect()
            assert reply["successful"] is False and reply["error"] == "402::session_unknown"
            assert reply["advice"] == {"reconnect": "handshake", "interval": 0}
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            client = Bayeux(http, simulator.cometd_url)
            await client.handshake()
            assert [c.key for c in jar] == ["BAYEUX_BROWSER"]
            assert (await client.connect())[-1]["successful"]

    async def test_websocket_needs_no_cookie(self, simulator: Simulator) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(simulator.cometd_url.replace("http", "ws")) as ws,
        ):
            hello = {"channel": "/meta/handshake", "supportedConnectionTypes": ["websocket"]}
            await ws.send_json([hello])
            (hs,) = await ws.receive_json(timeout=3)
            await ws.send_json([{"channel": "/meta/connect", "clientId": hs["clientId"]}])
            (connected,) = await ws.receive_json(timeout=3)
            assert connected["successful"]

    async def test_websocket_message_limit_is_64_kib(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.ws_connect(simulator.cometd_url.replace("http", "ws")) as ws:
            hello = {"channel": "/meta/handshake", "supportedConnectionTypes": ["websocket"]}
            await ws.send_json([hello])
            (hs,) = await ws.receive_json(timeout=3)
            subscribe = {"channel": "/meta/subscribe", "clientId": hs["clientId"]}
            big = [{**subscribe, "subscription": f"/c/{i:0>150}"} for i in range(500)]
            assert len(json.dumps(big)) > 65_536
            await ws.send_json(big)
            message = await asyncio.wait_for(ws.receive(), 3)
            assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1009
        assert simulator.stats.channel_subscriptions == 0

    async def test_one_message_per_websocket_frame(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        channel = "/vmrest/mailbox/" + await request_notification(http, simulator, "user0003")
        async with http.ws_connect(simulator.cometd_url.replace("http", "ws")) as ws:
            hello = {"channel": "/meta/handshake", "supportedConnectionTypes": ["websocket"]}
            await ws.send_json([hello])
            (hs,) = await ws.receive_json(timeout=3)
            client_id = hs["clientId"]
            await ws.send_json(
                [{"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel}]
            )
            await ws.receive_json(timeout=3)
            for _ in range(20):
                simulator.perform("user0003", Op.NEW)
            await ws.send_json([{"channel": "/meta/connect", "clientId": client_id}])
            frames = [await ws.receive_json(timeout=3) for _ in range(21)]
        assert [len(f) for f in frames] == [1] * 21
        assert [f[0]["channel"] for f in frames] == [channel] * 20 + ["/meta/connect"]
