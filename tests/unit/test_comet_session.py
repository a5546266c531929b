"""CometSession (ingest.cumi.session) driven through a fake aiocometd-ng client and transport.

The test plays the server on the fake transport: connect exchanges (with events), subscribe
replies, a connect broken mid-exchange. The session's clock is a FakeClock: the stall watchdog
sleeps on it, so each `advance` past its period makes it look at the time exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
from aiocometd_ng.constants import TransportState
from aiocometd_ng.exceptions import TransportError as CometTransportError
from aiohttp.client_reqrep import ConnectionKey
from fakes import FakeClock, eventually, sample
from fakes.bayeux import FakeBayeux, FakeTransport, event

from ingest.cumi.cometd_fixes import LONG_POLL_MARGIN, _LongPolling
from ingest.cumi.session import STALL_MARGIN, CometSession, EventBatch, LossReason
from ingest.errors import TransportError
from ingest.ops.backoff import Backoff

STALL = 0.2
"""Watchdog timeout (fake seconds); the watchdog looks every 0.05 fake seconds."""


class Recorder:
    """on_events: keeps each batch with its receive time; `gate` (when set) holds delivery."""

    def __init__(self) -> None:
        self.batches: list[tuple[EventBatch, float]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, events: EventBatch, received: float) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append((events, received))


@pytest.fixture
def server() -> FakeBayeux:
    return FakeBayeux()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def new_session(
    server: FakeBayeux, clock: FakeClock, recorder: Recorder, **options: Any
) -> CometSession:
    defaults: dict[str, Any] = {
        "stall_timeout": STALL,
        "subscribe_timeout": 0.05,
        "request_timeout": 0.1,
        "reconnect": Backoff(base=0.5, cap=30.0, rng=random.Random(7)),
    }
    return CometSession(
        "https://cuc.invalid/vmevents/cometd",
        recorder,
        client_factory=server.client,
        clock=clock,
        **(defaults | options),
    )


@pytest.fixture
async def session(
    server: FakeBayeux, clock: FakeClock, recorder: Recorder
) -> AsyncIterator[CometSession]:
    async with new_session(server, clock, recorder) as session:
        yield session


@pytest.fixture
def wire(session: CometSession, server: FakeBayeux) -> FakeTransport:
    """The transport of the started session: the test's end of the wire."""
    return server.transport


async def reason(session: CometSession) -> LossReason:
    async with asyncio.timeout(2):
        return await session.wait_lost()


async def later(clock: FakeClock, seconds: float) -> None:
    """Once the watchdog sleeps, move the clock on by `seconds` (it wakes and looks once)."""
    await clock.waiting()
    clock.advance(seconds)


async def looked(clock: FakeClock) -> None:
    """The watchdog has looked at the clock and sleeps again (so the session was not lost)."""
    await clock.waiting()


class TestLifecycle:
    """Opening and closing through the library's client."""

    async def test_start_opens_the_client_with_the_tap(
        self, session: CometSession, server: FakeBayeux
    ) -> None:
        """start() builds the client (no library timeout: the watchdog replaces it), opens it
        and knows the client id; the handshake reply went through the tap."""
        (client,) = server.clients
        assert client.options["connection_timeout"] == 0
        assert client.options["max_pending_count"] == 0
        assert len(client.options["extensions"]) == 1
        assert session.client_id == server.transport.client_id
        assert not session.is_lost

    async def test_failed_handshake_raises_and_closes(
        self, server: FakeBayeux, clock: FakeClock, recorder: Recorder
    ) -> None:
        """A handshake that fails raises TransportError; the half-open transport is closed."""
        server.open_error = CometTransportError("connection refused")
        session = new_session(server, clock, recorder)
        with pytest.raises(TransportError, match="handshake"):
            await session.start()
        assert server.transport.disconnected
        assert server.transport.closed

    async def test_handshake_timeout_raises(
        self, server: FakeBayeux, clock: FakeClock, recorder: Recorder
    ) -> None:
        """A handshake that never answers fails after request_timeout."""
        server.open_hangs = True
        session = new_session(server, clock, recorder, request_timeout=0.01)
        with pytest.raises(TransportError):
            await session.start()

    async def test_stop_is_idempotent_and_closes_the_client(
        self, server: FakeBayeux, clock: FakeClock, recorder: Recorder
    ) -> None:
        """stop() closes the client once; a second stop() does nothing."""
        session = new_session(server, clock, recorder)
        await session.start()
        await session.stop()
        await session.stop()
        assert server.clients[0].closed
        assert server.transport.disconnected
        with pytest.raises(asyncio.CancelledError):
            await session.wait_lost()


class TestTap:
    """Incoming payloads: events out to on_events, the rest left to the library."""

    async def test_events_split_from_meta_messages(
        self, session: CometSession, wire: FakeTransport, recorder: Recorder, clock: FakeClock
    ) -> None:
        """Mailbox events go to on_events as one batch with the receive time; the connect reply
        and other channels stay in the payload for the library (events are not queued twice)."""
        other = {"channel": "/service/echo", "data": {"x": 1}}
        no_data = {"channel": "/vmrest/mailbox/s1", "successful": True}
        no_channel = {"data": {"x": 2}}
        left = await wire.connect(event("s1", 1), other, event("s2", 2), no_data, no_channel)
        ((events, received),) = recorder.batches
        assert [e["channel"] for e in events] == ["/vmrest/mailbox/s1", "/vmrest/mailbox/s2"]
        assert received == clock.now
        assert [m.get("channel") for m in left] == [
            "/service/echo",
            "/vmrest/mailbox/s1",
            None,
            "/meta/connect",
        ]

    async def test_payload_without_events_untouched(
        self, session: CometSession, wire: FakeTransport, recorder: Recorder
    ) -> None:
        """No events: on_events is not called."""
        left = await wire.connect()
        assert recorder.batches == []
        assert [m["channel"] for m in left] == ["/meta/connect"]

    async def test_each_payload_one_batch(
        self, session: CometSession, wire: FakeTransport, recorder: Recorder
    ) -> None:
        """Batches follow the server's payloads, in order."""
        await wire.connect(event("s1", 1))
        await wire.connect(event("s1", 2), event("s1", 3))
        assert [[e["data"]["usn"] for e in b] for b, _ in recorder.batches] == [[1], [2, 3]]

    async def test_backpressure_holds_the_library(
        self, session: CometSession, wire: FakeTransport, recorder: Recorder
    ) -> None:
        """While on_events waits, the library's receive does not return (no new connect)."""
        recorder.gate = asyncio.Event()
        receiving = asyncio.ensure_future(wire.connect(event("s1")))
        async with asyncio.timeout(2):
            await recorder.entered.wait()
        assert not receiving.done()
        recorder.gate.set()
        async with asyncio.timeout(2):
            await receiving
        assert len(recorder.batches) == 1


class TestConnectReplies:
    """What an unsuccessful /meta/connect reply means."""

    async def test_unknown_client_loses_the_session(
        self, session: CometSession, wire: FakeTransport
    ) -> None:
        """402::Unknown client: the server forgot this session."""
        await wire.connect(successful=False, error="402::Unknown client")
        assert session.is_lost
        assert await reason(session) is LossReason.UNKNOWN_CLIENT

    @pytest.mark.parametrize(
        ("advice", "expected"),
        [("handshake", LossReason.HANDSHAKE_ADVICE), ("none", LossReason.SERVER_DISCONNECT)],
    )
    async def test_reconnect_advice_loses_the_session(
        self, session: CometSession, wire: FakeTransport, advice: str, expected: LossReason
    ) -> None:
        """reconnect handshake or none: lost (a new session is the manager's job)."""
        await wire.connect(successful=False, error="403::x", advice={"reconnect": advice})
        assert await reason(session) is expected

    async def test_other_failures_keep_the_session(
        self, session: CometSession, wire: FakeTransport
    ) -> None:
        """A failed connect with retry advice is the library's to retry; counted, not lost."""
        before = sample("cumi_worker_connect_failures_total")
        await wire.connect(successful=False, error="500::busy", advice={"reconnect": "retry"})
        assert not session.is_lost
        assert sample("cumi_worker_connect_failures_total") == before + 1

    @pytest.mark.parametrize(
        ("advice", "expected"),
        [("handshake", LossReason.HANDSHAKE_ADVICE), ("none", LossReason.SERVER_DISCONNECT)],
    )
    async def test_advice_on_a_successful_reply_is_obeyed(
        self, session: CometSession, wire: FakeTransport, advice: str, expected: LossReason
    ) -> None:
        """A server-side disconnect answers the held connect successful, advising none: lost
        at once, not after one more connect answered 402."""
        before = sample("cumi_worker_connect_failures_total")
        await wire.connect(advice={"reconnect": advice})
        assert await reason(session) is expected
        assert sample("cumi_worker_connect_failures_total") == before

    async def test_an_unsolicited_disconnect_loses_the_session(
        self, session: CometSession, wire: FakeTransport
    ) -> None:
        """CometD answers a held connect of a disconnected session `/meta/disconnect` first."""
        await wire.receive([{"channel": "/meta/disconnect", "successful": True}])
        assert await reason(session) is LossReason.SERVER_DISCONNECT

    async def test_first_loss_reason_wins(self, session: CometSession, wire: FakeTransport) -> None:
        """Later replies do not change why the session was lost."""
        await wire.connect(successful=False, advice={"reconnect": "none"})
        await wire.connect(successful=False, error="402::Unknown client")
        assert await reason(session) is LossReason.SERVER_DISCONNECT

    async def test_reconnect_delay_grows_while_connects_go_unanswered(
        self, session: CometSession, wire: FakeTransport
    ) -> None:
        """Each connect whose predecessor got no reply doubles the library's retry delay
        (jittered in its upper half, capped); an answered connect starts over."""
        delays = []
        for _ in range(8):
            await wire.send({"channel": "/meta/connect", "clientId": None, "id": None})
            delays.append(wire._reconnect_timeout)
        # the open() connect was answered: the first above follows a success
        ceilings = [min(30.0, 0.5 * 2**n) for n in range(8)]
        assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
        await wire.connect()
        await wire.send({"channel": "/meta/connect", "clientId": None, "id": None})
        assert 0.25 <= wire._reconnect_timeout <= 1.0


class TestSubscribeMany:
    """Many subscribe messages in one Bayeux request."""

    async def test_one_request_and_a_result_per_channel(
        self, session: CometSession, server: FakeBayeux, wire: FakeTransport
    ) -> None:
        """Every channel in one payload (duplicates once); None for subscribed, else the
        server's error."""
        server.refused["/vmrest/mailbox/b"] = "403::Unknown subscription"
        sent = len(wire.sent)
        channels = ["/vmrest/mailbox/a", "/vmrest/mailbox/b", "/vmrest/mailbox/a"]
        results = await session.subscribe_many(channels)
        assert results == {
            "/vmrest/mailbox/a": None,
            "/vmrest/mailbox/b": "403::Unknown subscription",
        }
        assert len(wire.sent) == sent + 1
        assert [m["subscription"] for m in wire.sent[-1]] == channels[:2]

    async def test_requests_cut_by_encoded_size(
        self, server: FakeBayeux, clock: FakeClock, recorder: Recorder
    ) -> None:
        """1,000 channels with a 64 KiB bound: several requests, each within it as sent (ids
        and clientId filled in), every channel subscribed once, in order."""
        channels = [f"/vmrest/mailbox/{i:036d}" for i in range(1_000)]
        async with new_session(server, clock, recorder, max_request_bytes=65_536) as session:
            sent = len(server.transport.sent)
            results = await session.subscribe_many(channels)
            requests = server.transport.sent[sent:]
        assert set(results.values()) == {None}
        assert len(requests) == 3
        assert all(len(json.dumps(r).encode()) <= 65_536 for r in requests)
        assert [m["subscription"] for r in requests for m in r] == channels

    async def test_replies_matched_by_message_id(
        self, session: CometSession, server: FakeBayeux
    ) -> None:
        """A server that does not echo the channel: replies are matched by message id."""
        server.echo_subscription = False
        server.refused["/vmrest/mailbox/b"] = "403::denied"
        results = await session.subscribe_many(["/vmrest/mailbox/a", "/vmrest/mailbox/b"])
        assert results == {"/vmrest/mailbox/a": None, "/vmrest/mailbox/b": "403::denied"}

    async def test_reply_echoing_a_list_subscription(
        self, session: CometSession, server: FakeBayeux, wire: FakeTransport
    ) -> None:
        """A reply naming its channel as a one-element list (and no id) still resolves it."""
        server.answer_subscribes = False
        pending = asyncio.ensure_future(session.subscribe_many(["/vmrest/mailbox/a"]))
        await eventually(lambda: bool(wire.subscribe_requests()), "the subscribe is sent")
        reply = {"channel": "/meta/subscribe", "successful": True}
        reply["subscription"] = ["/vmrest/mailbox/a"]
        await wire.receive([reply])
        async with asyncio.timeout(2):
            assert await pending == {"/vmrest/mailbox/a": None}

    async def test_unanswered_subscribe_times_out(
        self, session: CometSession, server: FakeBayeux
    ) -> None:
        """No reply within subscribe_timeout: an error for that channel, not a hang."""
        server.answer_subscribes = False
        results = await session.subscribe_many(["/vmrest/mailbox/a"])
        assert results == {"/vmrest/mailbox/a": "no reply to subscribe"}

    async def test_failed_request(self, session: CometSession, server: FakeBayeux) -> None:
        """The request itself failing: every channel gets an error."""
        server.send_error = CometTransportError("reset")
        results = await session.subscribe_many(["/vmrest/mailbox/a", "/vmrest/mailbox/b"])
        assert set(results.values()) == {"no reply to subscribe"}

    async def test_unknown_client_in_a_subscribe_reply_loses_the_session(
        self, session: CometSession, server: FakeBayeux
    ) -> None:
        """402 on a subscribe: the session is gone as much as on a connect."""
        server.refused["/vmrest/mailbox/a"] = "402::Unknown client"
        results = await session.subscribe_many(["/vmrest/mailbox/a"])
        assert results == {"/vmrest/mailbox/a": "402::Unknown client"}
        assert await reason(session) is LossReason.UNKNOWN_CLIENT

    async def test_lost_session_sends_nothing(
        self, session: CometSession, wire: FakeTransport
    ) -> None:
        """After a loss, subscribe_many answers at once without a request."""
        session.lose(LossReason.STALL)
        sent = len(wire.sent)
        assert await session.subscribe_many(["/vmrest/mailbox/a"]) == {
            "/vmrest/mailbox/a": "session closed"
        }
        assert await session.subscribe_many([]) == {}
        assert len(wire.sent) == sent

    async def test_stop_answers_waiting_subscribes(
        self, server: FakeBayeux, clock: FakeClock, recorder: Recorder
    ) -> None:
        """Stopping while a subscribe waits for its reply answers it with 'session closed'."""
        server.answer_subscribes = False
        session = new_session(server, clock, recorder, subscribe_timeout=30.0)
        await session.start()
        pending = asyncio.ensure_future(session.subscribe_many(["/vmrest/mailbox/a"]))
        await eventually(lambda: bool(server.transport.subscribe_requests()), "sent")
        await session.stop()
        async with asyncio.timeout(2):
            assert await pending == {"/vmrest/mailbox/a": "session closed"}

    async def test_unsubscribe_many(self, session: CometSession, wire: FakeTransport) -> None:
        """One request for all channels; True when sent, True for nothing, False once lost."""
        assert await session.unsubscribe_many(["/vmrest/mailbox/a", "/vmrest/mailbox/b"])
        assert [m["channel"] for m in wire.sent[-1]] == ["/meta/unsubscribe"] * 2
        assert await session.unsubscribe_many([])
        session.lose(LossReason.STALL)
        assert not await session.unsubscribe_many(["/vmrest/mailbox/a"])

    async def test_unsubscribe_many_failing(
        self, session: CometSession, server: FakeBayeux
    ) -> None:
        """A failed unsubscribe request reports False."""
        server.send_error = CometTransportError("reset")
        assert not await session.unsubscribe_many(["/vmrest/mailbox/a"])


class TestGap:
    """A connect that broke mid-exchange may have carried events: on_gap, once."""

    async def test_gap_reported_after_the_next_successful_connect(
        self, session: CometSession, wire: FakeTransport
    ) -> None:
        """on_gap is called once connects succeed again, not before, and only once."""
        gaps: list[int] = []
        session.on_gap = lambda: gaps.append(1)
        await wire.connect_fails(CometTransportError("reset mid-body"))
        assert gaps == []
        await wire.connect(successful=False, error="500::busy", advice={"reconnect": "retry"})
        assert gaps == []
        await wire.connect()
        assert gaps == [1]
        await wire.connect()
        assert gaps == [1]

    async def test_no_gap_once_lost(self, session: CometSession, wire: FakeTransport) -> None:
        """A connect failing on a lost session is no gap: the new session repairs anyway."""
        gaps: list[int] = []
        session.on_gap = lambda: gaps.append(1)
        session.lose(LossReason.STALL)
        await wire.connect_fails(CometTransportError("reset"))
        await wire.connect()
        assert gaps == []


class TestWatchdog:
    """No successful connect for stall_timeout: the session is lost (STALL)."""

    async def test_stall_loses_the_session(self, session: CometSession, clock: FakeClock) -> None:
        """The clock past stall_timeout without a connect: lost, counted."""
        stalls = sample("cumi_worker_stalls_total")
        await later(clock, STALL + 0.01)
        assert await reason(session) is LossReason.STALL
        assert sample("cumi_worker_stalls_total") == stalls + 1

    async def test_successful_connects_keep_it_alive(
        self, session: CometSession, wire: FakeTransport, clock: FakeClock
    ) -> None:
        """Each successful connect restarts the stall timer."""
        for _ in range(3):
            await later(clock, STALL * 0.75)
            await wire.connect()
            await looked(clock)
            assert not session.is_lost
        await later(clock, STALL * 0.75)
        await looked(clock)
        assert not session.is_lost  # 0.75 of the timeout since the last connect
        await later(clock, STALL * 0.5)
        assert await reason(session) is LossReason.STALL

    async def test_the_advised_hold_is_no_stall(
        self, session: CometSession, wire: FakeTransport, clock: FakeClock
    ) -> None:
        """A server advising a long-poll hold longer than stall_timeout holds a quiet connect that
        long: the watchdog waits the hold plus STALL_MARGIN; held replies carry no advice and
        the advice stands."""
        await wire.connect(advice={"reconnect": "retry", "interval": 0, "timeout": 1_000})
        assert session.stall_limit == 1.0 + STALL_MARGIN
        await later(clock, 1.0 + STALL_MARGIN - 0.1)
        await looked(clock)
        assert not session.is_lost
        await wire.connect()  # a held reply, no advice
        await later(clock, 1.0 + STALL_MARGIN - 0.1)
        await looked(clock)
        assert not session.is_lost
        await later(clock, 0.2)
        assert await reason(session) is LossReason.STALL

    async def test_failed_connects_do_not_keep_it_alive(
        self, session: CometSession, wire: FakeTransport, clock: FakeClock
    ) -> None:
        """Unsuccessful replies (the server answering errors) are no sign of life."""
        await later(clock, STALL * 0.75)
        await wire.connect(successful=False, error="500::busy", advice={"reconnect": "retry"})
        await later(clock, STALL * 0.5)
        assert await reason(session) is LossReason.STALL

    async def test_time_blocked_in_on_events_does_not_count(
        self, session: CometSession, wire: FakeTransport, clock: FakeClock, recorder: Recorder
    ) -> None:
        """While our own backpressure holds the connect loop, the stall timer does not run;
        it restarts when delivery ends."""
        recorder.gate = asyncio.Event()
        receiving = asyncio.ensure_future(wire.connect(event("s1")))
        async with asyncio.timeout(2):
            await recorder.entered.wait()
        await later(clock, STALL * 10)
        await looked(clock)
        assert not session.is_lost
        recorder.gate.set()
        async with asyncio.timeout(2):
            await receiving
        await later(clock, STALL * 0.75)
        await looked(clock)
        assert not session.is_lost
        await later(clock, STALL * 0.5)
        assert await reason(session) is LossReason.STALL


def long_polling(extensions: list[Any] | None = None) -> _LongPolling:
    """The session's fixed long-polling transport, with no HTTP session (nothing is sent)."""
    return _LongPolling(
        url="https://cuc.invalid/vmevents/cometd",
        incoming_queue=asyncio.Queue(),
        http_session=cast(aiohttp.ClientSession, None),
        extensions=extensions,
    )


async def broken(cause: BaseException) -> dict[str, Any]:
    raise CometTransportError("exchange failed") from cause


def refused() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))


class _Following(_LongPolling):
    """Keeps what _connect_done decided instead of scheduling the next exchange."""

    def __init__(self) -> None:
        super().__init__(
            url="https://cuc.invalid/vmevents/cometd",
            incoming_queue=asyncio.Queue(),
            http_session=cast(aiohttp.ClientSession, None),
        )
        self.followed: list[tuple[str, float | None]] = []

    def _follow_advice(self, reconnect_advice: str, reconnect_timeout: float | None) -> None:
        self.followed.append((reconnect_advice, reconnect_timeout))


def finished(result: dict[str, Any] | BaseException) -> asyncio.Future[dict[str, Any]]:
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
    return future


class TestTransportFixes:
    """The session's corrections to aiocometd-ng's transports (see _Fixes)."""

    @pytest.mark.parametrize(
        ("channel", "cause", "gap"),
        [
            ("/meta/connect", aiohttp.ServerDisconnectedError(), True),
            ("/meta/connect", refused(), False),
            ("/meta/subscribe", aiohttp.ServerDisconnectedError(), False),
        ],
        ids=["connect-broken", "connect-never-sent", "subscribe-broken"],
    )
    async def test_only_a_connect_broken_mid_exchange_is_a_gap(
        self,
        session: CometSession,
        server: FakeBayeux,
        channel: str,
        cause: BaseException,
        gap: bool,
    ) -> None:
        """A connect that failed after it was sent may have lost events: the tap hears of it
        (on_gap after the next good connect). One that never connected, or a failed subscribe,
        carried none."""
        gaps: list[int] = []
        session.on_gap = lambda: gaps.append(1)
        transport = long_polling(server.clients[0].options["extensions"])
        with pytest.raises(CometTransportError):
            await transport._guarded([{"channel": channel}], broken(cause))
        await server.transport.connect()
        assert gaps == ([1] if gap else [])

    @pytest.mark.parametrize(
        ("advice", "expected"),
        [({"timeout": 30_000}, 30 + LONG_POLL_MARGIN), ({"timeout": True}, None), ({}, None)],
    )
    async def test_request_timeout_is_the_long_poll_plus_a_margin(
        self, advice: dict[str, Any], expected: float | None
    ) -> None:
        """The server's advised long-poll (ms) plus a fixed margin; no advice, no timeout."""
        transport = long_polling()
        transport._reconnect_advice = advice
        assert transport.request_timeout == expected

    async def test_interval_advice_is_milliseconds(self) -> None:
        """After a good connect the next waits advice.interval milliseconds."""
        transport = _Following()
        transport._reconnect_advice = {"interval": 2_500}
        transport._connect_done(finished({"successful": True}))
        assert transport.followed == [("retry", 2.5)]
        assert transport.state is TransportState.CONNECTED

    async def test_handshake_advice_not_followed(self) -> None:
        """reconnect: handshake ends the transport (the manager builds a new session)."""
        transport = _Following()
        reply = {"successful": False, "advice": {"reconnect": "handshake"}}
        transport._connect_done(finished(reply))
        assert transport.followed == []
        assert transport.state is TransportState.SERVER_DISCONNECTED

    async def test_failed_exchange_waits_the_session_backoff(self) -> None:
        """A failed exchange retries after the delay the session set (_reconnect_timeout)."""
        transport = _Following()
        transport._reconnect_timeout = 7.5
        transport._connect_done(finished(CometTransportError("reset")))
        assert transport.followed == [("retry", 7.5)]
        assert transport.state is TransportState.CONNECTING

    async def test_cancelled_or_closing_connect_ends_quietly(self) -> None:
        """Closing while a connect is pending neither raises nor schedules another."""
        transport = _Following()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.cancel()
        transport._connect_done(future)
        transport._state = TransportState.DISCONNECTING
        transport._connect_done(finished(CometTransportError("closed")))
        assert transport.followed == []
