"""The worker's CometD session against a simulator that behaves like the reference CometD server:
cookie-bound long-polling sessions, the 64 KiB WebSocket message limit, one message per frame,
advice on successful replies, the advised long-poll hold (issue 15)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from fixtures.simulator import MakeSimulator, request_notification
from fixtures.waiting import eventually

from ingest.cumi.session import CometSession, EventBatch, LossReason, channel_for
from ingest.errors import TransportError
from ingest.settings import CometTransport
from ingest.simulator import Simulator

pytestmark = pytest.mark.integration

TRANSPORTS = [CometTransport.LONG_POLLING, CometTransport.WEBSOCKET]


class Received:
    """An `on_events` that records each hand-over, optionally taking its time like a busy sink."""

    def __init__(self, busy: float = 0.0) -> None:
        self.batches: list[EventBatch] = []
        self.busy = busy
        self.changed = asyncio.Event()

    async def __call__(self, events: EventBatch, received: float) -> None:
        self.batches.append(events)
        self.changed.set()
        if self.busy:
            await asyncio.sleep(self.busy)  # the sink's own work, not a wait for a condition

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)

    async def wait_count(self, count: int, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while self.count < count:
                self.changed.clear()
                await self.changed.wait()


async def open_session(
    url: str, received: Received, transport: CometTransport, **kwargs: Any
) -> CometSession:
    session = CometSession(url, received, transport=transport, request_timeout=10, **kwargs)
    await session.start()
    return session


async def subscribe_mailboxes(
    session: CometSession, sim: Simulator, aliases: list[str]
) -> list[str]:
    import aiohttp  # noqa: PLC0415 - only the REST side of the simulator

    async with aiohttp.ClientSession() as http:
        ids = [await request_notification(http, sim, alias) for alias in aliases]
    channels = [channel_for(i) for i in ids]
    assert set((await session.subscribe_many(channels)).values()) == {None}
    return channels


@pytest.fixture
async def sessions() -> AsyncIterator[list[CometSession]]:
    """Sessions a test opens; stopped at teardown."""
    opened: list[CometSession] = []
    yield opened
    for session in opened:
        await session.stop()


class TestCookies:
    """Long-polling to a server given by IP: its session cookie must be kept and sent back."""

    async def test_cookie_bound_session_by_ip(
        self, make_simulator: MakeSimulator, sessions: list[CometSession]
    ) -> None:
        sim = await make_simulator(browser_cookie=True)
        assert sim.cometd_url.startswith("http://127.0.0.1:")
        received = Received()
        session = await open_session(sim.cometd_url, received, CometTransport.LONG_POLLING)
        sessions.append(session)
        await subscribe_mailboxes(session, sim, ["user0001"])
        sim.emit(20)
        await received.wait_count(sim.stats.queued)
        assert not session.is_lost


class TestSubscribeSize:
    """A subscribe batch larger than one 64 KiB WebSocket message goes as several requests."""

    @pytest.mark.parametrize("transport", TRANSPORTS)
    async def test_thousand_channels_in_one_call(
        self, make_simulator: MakeSimulator, sessions: list[CometSession], transport: CometTransport
    ) -> None:
        sim = await make_simulator(ws_max_message=65_536, refuse_unknown_channels=False)
        session = await open_session(sim.cometd_url, Received(), transport)
        sessions.append(session)
        channels = [channel_for(str(uuid.uuid4())) for _ in range(1_000)]
        results = await session.subscribe_many(channels)
        assert [c for c, error in results.items() if error is not None] == []
        assert sim.bayeux.channel_subscriptions == 1_000
        assert not session.is_lost


class TestFrameCoalescing:
    """One message per WebSocket frame: frames that arrive while the sink is busy are handed over
    together, not one by one."""

    async def test_burst_is_coalesced(
        self, make_simulator: MakeSimulator, sessions: list[CometSession]
    ) -> None:
        sim = await make_simulator(ws_frame_messages=1)
        received = Received(busy=0.02)
        session = await open_session(sim.cometd_url, received, CometTransport.WEBSOCKET)
        sessions.append(session)
        await subscribe_mailboxes(session, sim, list(sim.accounts))
        sim.emit(300)
        await received.wait_count(sim.stats.queued)
        # one by one would be ≥ 300 hand-overs; each hand-over takes 20 ms, so frames pile up
        assert len(received.batches) <= 30, [len(b) for b in received.batches]

    async def test_a_lone_event_is_handed_over_alone(
        self, make_simulator: MakeSimulator, sessions: list[CometSession]
    ) -> None:
        sim = await make_simulator(ws_frame_messages=1)
        received = Received()
        session = await open_session(sim.cometd_url, received, CometTransport.WEBSOCKET)
        sessions.append(session)
        await subscribe_mailboxes(session, sim, ["user0001"])
        sim.emit(1)
        await received.wait_count(1)
        assert [len(b) for b in received.batches] == [1]


class TestAdvice:
    """Advice on successful replies, the advised hold, and what is logged before a session opens."""

    @pytest.mark.parametrize("transport", TRANSPORTS)
    async def test_server_side_disconnect(
        self, make_simulator: MakeSimulator, sessions: list[CometSession], transport: CometTransport
    ) -> None:
        sim = await make_simulator(connect_timeout=5.0)
        session = await open_session(sim.cometd_url, Received(), transport)
        sessions.append(session)
        # the first connect is answered at once; wait for a held one
        await eventually(
            lambda: any(s.waiter for s in sim.bayeux.sessions.values()),
            within=5,
            what="a held connect",
            interval=0.01,
        )
        assert sim.disconnect_sessions() == 1
        async with asyncio.timeout(5):
            reason = await session.wait_lost()
        # not one more connect answered 402 ("unknown-client"): the advice said stop
        assert reason is LossReason.SERVER_DISCONNECT

    @pytest.mark.parametrize("transport", TRANSPORTS)
    async def test_a_quiet_session_held_longer_than_the_stall_setting_lives(
        self, make_simulator: MakeSimulator, sessions: list[CometSession], transport: CometTransport
    ) -> None:
        sim = await make_simulator(connect_timeout=1.5, max_interval=5.0)
        session = CountingSession(
            sim.cometd_url, Received(), transport=transport, request_timeout=10, stall_timeout=0.5
        )
        sessions.append(session)
        await session.start()
        await eventually(
            lambda: session.connect_replies >= 4 or session.is_lost,
            within=15,
            what="four connect replies",
            interval=0.05,
        )
        # three holds of 1.5 s with nothing to say, with a stall setting of 0.5 s
        assert not session.is_lost
        assert session.connect_replies >= 4

    async def test_no_lost_log_before_the_handshake_completes(
        self,
        make_simulator: MakeSimulator,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        sim = await make_simulator()
        proxy = ForgetfulProxy(sim)
        await proxy.start()
        url = f"http://127.0.0.1:{proxy.port}/vmevents/cometd"
        session = CometSession(url, Received(), request_timeout=5)
        try:
            with (
                caplog.at_level(logging.INFO, logger="ingest.cumi.session"),
                pytest.raises(TransportError),
            ):
                await session.start()
        finally:
            await session.stop()
            await proxy.stop()
        assert proxy.forgot
        assert "None" not in caplog.text
        assert "lost" not in caplog.text


class CountingSession(CometSession):
    """Counts the /meta/connect replies it sees."""

    connect_replies = 0

    def _on_connect_reply(self, message: Mapping[str, Any]) -> None:
        self.connect_replies += 1
        super()._on_connect_reply(message)


class ForgetfulProxy:
    """A loopback proxy to the simulator's CometD port that makes the server forget every session
    just before it forwards the first `/meta/connect`: the handshake succeeded, the connect gets
    402 — a server restarted between the two, or a second server behind one name."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.forgot = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = int(self._sim.cometd_url.split(":")[2].split("/")[0])
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        for src, dst, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(src, dst, upstream=upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if upstream and not self.forgot and b"/meta/connect" in data:
                    self._sim.bayeux.reset()
                    self.forgot = True
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.close()
