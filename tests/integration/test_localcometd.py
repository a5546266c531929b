"""The reference CometD server (CometD 9 on Jetty 12, default options) and what it demands.

It is the server Unity Connection runs, so these pin down the behaviours our simulator and worker
must match: the long-polling session bound to the BAYEUX_BROWSER cookie (which aiohttp's default
jar drops for IP-address hosts), the 64 KiB WebSocket message limit, one message per WebSocket
frame, the advice on a server-side disconnect, subscribes to any channel accepted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiocometd_ng.constants import ConnectionType
from aiocometd_ng.exceptions import ServerError
from fixtures.refcometd import jar_client, mailbox_channel
from fixtures.simulator import aiocometd_websocket

from ingest.devservices.cometd import LocalCometdServer
from ingest.devservices.cometd.runtime import fetch
from ingest.errors import DevServiceError

pytestmark = pytest.mark.integration

WS_MAX_MESSAGE = 64 * 1024
"""Jetty's default max WebSocket text message, which CometD keeps (ws.maxMessageSize unset)."""
WAIT_S = 15.0

Message = dict[str, Any]


class LongPolling:
    """Bayeux over HTTP by hand, to see the server's exact replies."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self._url = url
        self.client_id = ""

    async def send(self, *messages: Message) -> list[Message]:
        async with asyncio.timeout(30):  # a held /meta/connect returns within 20 s
            response = await self._http.post(self._url, json=list(messages))
            reply: list[Message] = await response.json()
        return reply

    async def handshake(self) -> Message:
        [reply] = await self.send(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
            }
        )
        self.client_id = reply.get("clientId", "")
        return reply

    def connect_message(self, *, hold: bool) -> Message:
        message: Message = {
            "channel": "/meta/connect",
            "clientId": self.client_id,
            "connectionType": "long-polling",
        }
        if not hold:
            message["advice"] = {"timeout": 0}
        return message

    async def connect(self, *, hold: bool) -> list[Message]:
        return await self.send(self.connect_message(hold=hold))


class WebSocket:
    """Bayeux over one WebSocket by hand: each `frame()` is one WebSocket message."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.client_id = ""

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, cometd_url: str) -> WebSocket:
        bayeux = cls(await http.ws_connect(cometd_url.replace("http://", "ws://", 1)))
        await bayeux.ws.send_json(
            [
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "supportedConnectionTypes": ["websocket"],
                }
            ]
        )
        [handshake] = await bayeux.frame()
        bayeux.client_id = handshake["clientId"]
        await bayeux.connect(hold=False)
        [connected] = await bayeux.frame()
        assert connected["successful"] is True, connected
        return bayeux

    async def connect(self, *, hold: bool) -> None:
        message: Message = {
            "channel": "/meta/connect",
            "clientId": self.client_id,
            "connectionType": "websocket",
        }
        if not hold:
            message["advice"] = {"timeout": 0}
        await self.ws.send_json([message])

    async def frame(self) -> list[Message]:
        received = await self.ws.receive(timeout=WAIT_S)
        assert received.type == aiohttp.WSMsgType.TEXT, (received.type, received.extra)
        messages: list[Message] = json.loads(received.data)
        return messages


def subscribe_batch(client_id: str, channels: list[str]) -> str:
    """Subscribes as aiocometd-ng (and so the worker) encodes them: json.dumps defaults, ids."""
    return json.dumps(
        [
            {"channel": "/meta/subscribe", "clientId": client_id, "subscription": ch, "id": str(i)}
            for i, ch in enumerate(channels, start=1)
        ]
    )


async def wait_held(ref: LocalCometdServer, count: int) -> None:
    """Until the server holds `count` /meta/connects (the hook reports it; no sleeping)."""
    await ref.wait_state(lambda state: state.held == count, WAIT_S)


class TestDelivery:
    @aiocometd_websocket
    @pytest.mark.parametrize("transport", [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET])
    async def test_events_arrive_in_publish_order(
        self, ref_cometd: LocalCometdServer, transport: ConnectionType
    ) -> None:
        """aiocometd-ng subscribes to never-published mailbox channels (the server accepts any)
        and receives what the hook publishes, in publish order across channels."""
        channels = [mailbox_channel() for _ in range(5)]
        jar = aiohttp.CookieJar(unsafe=True)
        async with jar_client(ref_cometd.cometd_url, transport, cookie_jar=jar) as client:
            for channel in channels:
                await client.subscribe(channel)
            assert await ref_cometd.channels() == dict.fromkeys(channels, 1)
            events = [(channels[i % len(channels)], {"n": i}) for i in range(200)]
            assert await ref_cometd.publish_many(events) == len(events)
            async with asyncio.timeout(WAIT_S):
                received = [await client.receive() for _ in events]
        assert [(m["channel"], m["data"]) for m in received] == events

    async def test_websocket_sends_one_message_per_frame(
        self, ref_cometd: LocalCometdServer
    ) -> None:
        """Twenty events published at once: twenty frames. Long-polling, by contrast, returns
        what queued between two connects in one HTTP reply."""
        channel = mailbox_channel()
        events = [(channel, {"n": i}) for i in range(20)]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            ws = await WebSocket.open(http, ref_cometd.cometd_url)
            await ws.ws.send_str(subscribe_batch(ws.client_id, [channel]))
            [subscribed] = await ws.frame()
            assert subscribed["successful"] is True
            await ws.connect(hold=True)
            await wait_held(ref_cometd, 1)
            await ref_cometd.publish_many(events)
            frames = [await ws.frame() for _ in events]
            await ws.ws.close()

            polling = LongPolling(http, ref_cometd.cometd_url)
            await polling.handshake()
            await polling.connect(hold=False)
            subscribe = {"channel": "/meta/subscribe", "subscription": channel}
            await polling.send({**subscribe, "clientId": polling.client_id})
            await ref_cometd.publish_many(events)
            reply = await polling.connect(hold=True)
        assert [[m["data"] for m in frame] for frame in frames] == [[d] for _, d in events]
        assert [m["data"] for m in reply if m["channel"] == channel] == [d for _, d in events]


class TestCookies:
    """The long-polling session is found by its BAYEUX_BROWSER cookie, not by its clientId."""

    @pytest.mark.parametrize(
        ("host", "unsafe_jar", "connects"),
        [("127.0.0.1", False, False), ("127.0.0.1", True, True), ("localhost", False, True)],
        ids=["by-ip-default-jar", "by-ip-unsafe-jar", "by-name-default-jar"],
    )
    async def test_long_polling_needs_the_browser_cookie(
        self, ref_cometd: LocalCometdServer, host: str, unsafe_jar: bool, connects: bool
    ) -> None:
        jar = aiohttp.CookieJar(unsafe=unsafe_jar)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            polling = LongPolling(http, ref_cometd.cometd_url_for(host))
            handshake = await polling.handshake()
            assert handshake["successful"] is True
            [reply] = await polling.connect(hold=False)
            kept = [cookie.key for cookie in jar]
        if connects:
            assert kept == ["BAYEUX_BROWSER"]
            assert reply["successful"] is True, reply
        else:
            # the default jar refuses cookies from IP-address hosts: the server never sees it
            assert kept == []
            assert reply["successful"] is False
            assert reply["error"] == "402::session_unknown"
            assert reply["advice"]["reconnect"] == "handshake"

    @aiocometd_websocket
    @pytest.mark.parametrize(
        ("transport", "host", "unsafe_jar", "opens"),
        [
            (ConnectionType.LONG_POLLING, "127.0.0.1", False, False),
            (ConnectionType.LONG_POLLING, "127.0.0.1", True, True),
            (ConnectionType.LONG_POLLING, "localhost", False, True),
            (ConnectionType.WEBSOCKET, "127.0.0.1", False, True),
        ],
        ids=["lp-by-ip-default-jar", "lp-by-ip-unsafe-jar", "lp-by-name", "ws-by-ip-default-jar"],
    )
    async def test_aiocometd_client(
        self,
        ref_cometd: LocalCometdServer,
        transport: ConnectionType,
        host: str,
        unsafe_jar: bool,
        opens: bool,
    ) -> None:
        """What a client built on aiocometd-ng meets: by IP over long-polling its first connect is
        refused unless its jar is unsafe; a WebSocket carries the session without cookies."""
        url = ref_cometd.cometd_url_for(host)
        jar = aiohttp.CookieJar(unsafe=unsafe_jar)
        if not opens:
            with pytest.raises(ServerError) as refused:
                async with jar_client(url, transport, cookie_jar=jar):
                    pass
            assert refused.value.error == "402::session_unknown"
            return
        channel = mailbox_channel()
        async with jar_client(url, transport, cookie_jar=jar) as client:
            await client.subscribe(channel)
            await ref_cometd.publish(channel, {"n": 1})
            message = await asyncio.wait_for(client.receive(), WAIT_S)
        assert message["data"] == {"n": 1}


class TestLimitsAndAdvice:
    async def test_handshake_advises_a_20_s_hold(self, ref_cometd: LocalCometdServer) -> None:
        async with aiohttp.ClientSession() as http:
            handshake = await LongPolling(http, ref_cometd.cometd_url).handshake()
        assert handshake["advice"] == {"interval": 0, "timeout": 20_000, "reconnect": "retry"}
        assert handshake["supportedConnectionTypes"] == [
            "websocket",
            "long-polling",
            "callback-polling",
        ]

    async def test_websocket_message_limit_is_64_kib(self, ref_cometd: LocalCometdServer) -> None:
        """The largest subscribe batch that fits is answered; one channel more closes the
        connection with 1009. That is about 410 mailboxes (aiocometd-ng's encoding)."""
        channels = [mailbox_channel() for _ in range(450)]
        async with aiohttp.ClientSession() as http:
            ws = await WebSocket.open(http, ref_cometd.cometd_url)
            fit = max(
                n
                for n in range(1, len(channels))
                if len(subscribe_batch(ws.client_id, channels[:n]).encode()) <= WS_MAX_MESSAGE
            )
            assert 400 <= fit < len(channels) - 1
            await ws.ws.send_str(subscribe_batch(ws.client_id, channels[:fit]))
            replies = await ws.frame()
            assert [r["successful"] for r in replies] == [True] * fit

            await ws.ws.send_str(subscribe_batch(ws.client_id, channels[: fit + 1]))
            closed = await ws.ws.receive(timeout=WAIT_S)
        assert closed.type == aiohttp.WSMsgType.CLOSE
        assert closed.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        assert "Text message too large" in str(closed.extra)

    @pytest.mark.parametrize("transport", ["long-polling", "websocket"])
    async def test_server_side_disconnect_advises_none(
        self, ref_cometd: LocalCometdServer, transport: str
    ) -> None:
        """A held connect is answered successful with reconnect "none" (after a /meta/disconnect
        message); the session is gone: a further connect gets 402 with reconnect "handshake"."""
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            if transport == "websocket":
                ws = await WebSocket.open(http, ref_cometd.cometd_url)
                await ws.connect(hold=True)
                await wait_held(ref_cometd, 1)
                assert await ref_cometd.disconnect_all() == 1
                answered = (await ws.frame()) + (await ws.frame())
                await ws.connect(hold=False)
                after = await ws.frame()
            else:
                polling = LongPolling(http, ref_cometd.cometd_url)
                await polling.handshake()
                await polling.connect(hold=False)
                held = asyncio.create_task(polling.connect(hold=True))
                await wait_held(ref_cometd, 1)
                assert await ref_cometd.disconnect_all() == 1
                answered = await held
                after = await polling.connect(hold=False)
        assert [(m["channel"], m["successful"]) for m in answered] == [
            ("/meta/disconnect", True),
            ("/meta/connect", True),
        ]
        assert answered[1]["advice"] == {"reconnect": "none"}
        [refused] = after
        assert refused["error"] == "402::session_unknown"
        assert refused["advice"]["reconnect"] == "handshake"


class TestLifecycle:
    async def test_restart_keeps_the_port_and_forgets_every_session(
        self, ref_cometd: LocalCometdServer
    ) -> None:
        port, pid = ref_cometd.port, ref_cometd.pid
        channel = mailbox_channel()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            old = LongPolling(http, ref_cometd.cometd_url)
            await old.handshake()
            await old.connect(hold=False)
            await old.send(
                {"channel": "/meta/subscribe", "clientId": old.client_id, "subscription": channel}
            )
            assert await ref_cometd.channels() == {channel: 1}

            await ref_cometd.restart()
            assert (ref_cometd.port, ref_cometd.running) == (port, True)
            assert ref_cometd.pid != pid
            state = await ref_cometd.state()
            assert (state.sessions, state.channels) == (0, {})
            [stale] = await old.connect(hold=False)
            assert stale["error"] == "402::session_unknown"

            new = LongPolling(http, ref_cometd.cometd_url)
            assert (await new.handshake())["successful"] is True
            [connected] = await new.connect(hold=False)
        assert connected["successful"] is True

    async def test_stop_is_idempotent_and_start_after_stop_works(
        self, ref_cometd: LocalCometdServer
    ) -> None:
        await ref_cometd.stop()
        await ref_cometd.stop()
        assert not ref_cometd.running
        await ref_cometd.start()
        assert (await ref_cometd.state()).sessions == 0

    async def test_a_taken_port_is_one_clear_error(self, ref_cometd: LocalCometdServer) -> None:
        second = LocalCometdServer(port=ref_cometd.port)
        try:
            with pytest.raises(DevServiceError, match=f"port {ref_cometd.port} is in use"):
                await second.start()
            assert not second.running
        finally:
            await second.stop()
            second.cleanup()

    async def test_fetch_again_needs_neither_maven_nor_javac(self, tmp_path: Path) -> None:
        """Once fetched and compiled, a fetch with only `java` on PATH is a no-op."""
        await asyncio.to_thread(fetch)
        java = shutil.which("java")
        assert java is not None
        (tmp_path / "java").symlink_to(java)
        env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | {"PATH": str(tmp_path)}
        fetched = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ingest.devservices.cometd", "fetch"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert fetched.returncode == 0, fetched.stderr
        assert "reference CometD server 9.0.0 on Jetty 12.1.14" in fetched.stdout
        assert "fetching" not in fetched.stderr
