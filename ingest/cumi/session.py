"""One CometD (Bayeux) session to a CUMI server carrying every mailbox channel, over aiocometd-ng.

aiocometd-ng drives the protocol (handshake, the /meta/connect loop, long-polling or WebSocket), and
this module taps it through the library's extension hook, which sees every incoming payload before
the library queues it:

- Event messages (`/vmrest/mailbox/<subscriptionId>`) are taken out of the payload and handed, one
  payload at a time, to `on_events`. That coroutine applies backpressure: while it waits, the
  library's connect task waits with it and issues no new /meta/connect, so nothing more is pulled
  from the server. (It also spares the library's receive() path, which creates three tasks per
  message and whose connection timeout is broken on Python ≥ 3.10: `wait_for(loop=…)`.)
- `/meta/connect` replies feed the stall watchdog; an unsuccessful reply with `402::Unknown client`
  or `reconnect: handshake|none` advice means the server forgot this client — the session is lost.
- `/meta/subscribe` replies resolve `subscribe_many`, which sends many subscribe messages in one
  Bayeux request (the library subscribes one channel per request).

A lost session is not repaired here: the subscription manager throws it away and builds a new one
(a fresh handshake, subscriptions again, gap repair). Failed connects are retried by the library
after a delay that this module sets to a jittered exponential backoff (the library's own is a fixed
one second). Two library defects are fixed by subclassing its transports (installed in its global
registry, `_install_transport_fixes`): closing while a long-poll is pending no longer logs a
CancelledError traceback from `TransportBase._connect_done`, and the WebSocket transport no longer
passes aiohttp the deprecated float `receive_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import aiohttp
from aiocometd_ng.client import Client
from aiocometd_ng.constants import ConnectionType, TransportState
from aiocometd_ng.exceptions import AiocometdException
from aiocometd_ng.extensions import Extension
from aiocometd_ng.transports.base import TransportBase
from aiocometd_ng.transports.long_polling import LongPollingTransport
from aiocometd_ng.transports.registry import register_transport
from aiocometd_ng.transports.websocket import WebSocket, WebSocketTransport

from ingest.cumi import jsonload
from ingest.errors import TransportError
from ingest.ops.metrics import (
    WORKER_CONNECT_FAILURES,
    WORKER_HANDSHAKES,
    WORKER_LAST_CONNECT,
    WORKER_STALLS,
)
from ingest.settings import CometTransport

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "/vmrest/mailbox/"
EventBatch = list[dict[str, Any]]
OnEvents = Callable[[EventBatch, float], Awaitable[None]]
"""(event messages of one server payload, monotonic receive time) → returns when admitted."""
ClientFactory = Callable[..., Client]
"""Builds the library's client: `Client` itself (unit tests pass a fake, tests/fakes/bayeux.py)."""


LONG_POLL_MARGIN = 15.0
"""Seconds a connect may take beyond the server's advised long-poll timeout before the client gives
up. The library allows 20 %: with short timeouts a slow, large response was cut off mid-body —
after the server had already counted its events as delivered."""


class _Fixes(TransportBase):
    """Corrections to aiocometd-ng's transports (the concrete classes below mix them in):

    - close: cancelling a pending connect (or WebSocket receive) made its done-callback re-raise
      CancelledError into the event loop, which logged a traceback;
    - `advice.interval` is in milliseconds (Bayeux), the library slept that many seconds;
    - the request timeout leaves a fixed margin over the long-poll (see LONG_POLL_MARGIN);
    - `reconnect: handshake` advice is not followed: the session is lost (this module's tap saw
      it) and the subscription manager replaces the whole client;
    - a failed connect exchange that may have carried events is reported to the tap (a gap).
    """

    @property
    def request_timeout(self) -> float | None:
        timeout = self.reconnect_advice.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            return timeout / 1000 + LONG_POLL_MARGIN
        return None

    def _connect_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        reconnect = "retry"
        interval = self.reconnect_advice.get("interval")
        delay = interval / 1000 if isinstance(interval, int | float) else None
        try:
            result = future.result()
            advice = result.get("advice") if isinstance(result, dict) else None
            if not result.get("successful", True) and isinstance(advice, dict):
                reconnect = advice.get("reconnect", reconnect)
            self._state = TransportState.CONNECTED
        except Exception as error:
            log.debug("connect failed: %r", error)
            delay = self._reconnect_timeout
            if self.state != TransportState.DISCONNECTING:
                self._state = TransportState.CONNECTING
        if self.state == TransportState.DISCONNECTING:
            return
        if reconnect == "handshake":
            self._state = TransportState.SERVER_DISCONNECTED
            return
        self._follow_advice(reconnect, delay)

    async def _guarded(
        self, payload: list[dict[str, Any]], exchange: Awaitable[dict[str, Any]]
    ) -> dict[str, Any]:
        try:
            return await exchange
        except Exception as error:
            is_connect = bool(payload) and payload[0].get("channel") == "/meta/connect"
            # a connection that never opened carried nothing; anything else may have lost events
            never_sent = isinstance(error.__cause__, aiohttp.ClientConnectorError)
            if is_connect and not never_sent:
                for extension in self._extensions:
                    if isinstance(extension, _Tap):
                        extension.connect_failed(error)
            raise


class _LongPolling(_Fixes, LongPollingTransport):
    async def _send_final_payload(
        self, payload: list[dict[str, Any]], *, headers: dict[str, Any]
    ) -> dict[str, Any]:
        send = LongPollingTransport._send_final_payload(self, payload, headers=headers)
        return await self._guarded(payload, send)


class _WebSocket(_Fixes, WebSocketTransport):
    async def _send_final_payload(
        self, payload: list[dict[str, Any]], *, headers: dict[str, Any]
    ) -> dict[str, Any]:
        send = WebSocketTransport._send_final_payload(self, payload, headers=headers)
        return await self._guarded(payload, send)

    async def _get_socket(self, headers: dict[str, str]) -> WebSocket:
        # the library passes a float `receive_timeout`, deprecated by aiohttp 3.10+
        timeout = aiohttp.ClientWSTimeout(ws_receive=self.request_timeout)
        return await self._socket_factory(
            self.endpoint, ssl=self.ssl, headers=headers, timeout=timeout, autoping=True
        )

    def _receive_done(self, future: asyncio.Task[None]) -> None:
        if future.cancelled():
            self._receive_task = None
        else:
            super()._receive_done(future)


@functools.cache
def _install_transport_fixes() -> None:
    """Make the library create the fixed transports above (its registry is global; the fixed
    classes behave the same for any other user of the library in this process)."""
    register_transport(ConnectionType.LONG_POLLING)(_LongPolling)
    register_transport(ConnectionType.WEBSOCKET)(_WebSocket)


def _transport_of(client: Client | None) -> TransportBase | None:
    """The library's transport; its private parts are used knowingly (aiocometd-ng is pinned)."""
    if client is None:
        return None
    return cast(TransportBase | None, client._transport)


def channel_for(subscription_id: str) -> str:
    return CHANNEL_PREFIX + subscription_id


class LossReason(enum.StrEnum):
    """Why a session was given up; a metric label."""

    UNKNOWN_CLIENT = "unknown-client"
    HANDSHAKE_ADVICE = "handshake-advice"
    SERVER_DISCONNECT = "server-disconnect"
    SUBSCRIBE_FAILED = "subscribe-failed"
    STALL = "stall"


class _Tap(Extension):
    """The extension hook: sees every payload the library sends and receives."""

    def __init__(self, session: CometSession) -> None:
        self._session = session

    async def outgoing(self, payload: list[dict[str, Any]], headers: dict[str, Any]) -> None:
        self._session._on_outgoing(payload)

    async def incoming(
        self, payload: list[dict[str, Any]], headers: Mapping[str, Any] | None = None
    ) -> None:
        await self._session._on_incoming(payload)

    def connect_failed(self, error: Exception) -> None:
        self._session._on_connect_failed(error)


class CometSession:
    """One Bayeux client session; see the module docstring. Not reusable after it is lost."""

    def __init__(
        self,
        url: str,
        on_events: OnEvents,
        *,
        transport: CometTransport = CometTransport.LONG_POLLING,
        ssl_context: ssl.SSLContext | bool = True,
        stall_timeout: float = 90.0,
        request_timeout: float = 30.0,
        subscribe_timeout: float = 30.0,
        reconnect_base: float = 0.5,
        reconnect_cap: float = 30.0,
        rng: random.Random | None = None,
        client_factory: ClientFactory = Client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._on_events = on_events
        self._connection = (
            ConnectionType.WEBSOCKET
            if transport is CometTransport.WEBSOCKET
            else ConnectionType.LONG_POLLING
        )
        self._ssl = ssl_context
        self._stall_timeout = stall_timeout
        self._request_timeout = request_timeout
        self._subscribe_timeout = subscribe_timeout
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._rng = rng or random.Random()
        self._client_factory = client_factory
        self._clock = clock
        self._client: Client | None = None
        self._lost: asyncio.Future[LossReason] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._subscribe_ids: dict[str, str] = {}  # Bayeux message id → channel
        self._subscribe_waiters: dict[str, asyncio.Future[str | None]] = {}
        self._connect_failures = 0
        self._awaiting_connect = False
        self._delivering = False
        self._last_alive = clock()
        self._client_id: str | None = None
        self._stopped = False
        self._gap = False
        self.on_gap: Callable[[], None] | None = None
        """Called after a failed connect that may have carried events, once connects succeed
        again: without Bayeux acknowledgements those events are gone, so the caller repairs."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Handshake and the first connect; raises TransportError if the server can't be had."""
        _install_transport_fixes()
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        client = self._client_factory(
            self._url,
            [self._connection],
            connection_timeout=0,  # see the module docstring; the watchdog replaces it
            ssl=self._ssl,
            max_pending_count=0,
            extensions=[_Tap(self)],
            json_loads=jsonload.loads,  # a busy session's largest cost, see ingest.cumi.jsonload
        )
        self._client = client
        try:
            await asyncio.wait_for(client.open(), self._request_timeout)
        except (AiocometdException, TimeoutError, OSError) as e:
            WORKER_HANDSHAKES.labels("failure").inc()
            await self.stop()
            raise TransportError(f"CometD handshake with {self._url} failed: {e!r}") from e
        transport = _transport_of(client)
        self._client_id = transport.client_id if transport is not None else None
        self._mark_alive()
        self._watchdog = asyncio.create_task(self._watch(), name="comet-watchdog")
        log.info("CometD session %s open (%s)", self._client_id, self._connection.value)

    async def stop(self) -> None:
        """Disconnect and close; idempotent, quiet, bounded in time."""
        if self._stopped:
            return
        self._stopped = True
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        for waiter in self._subscribe_waiters.values():
            if not waiter.done():
                waiter.set_result("session closed")
        client, self._client = self._client, None
        if client is None:
            return
        transport = _transport_of(client)
        try:
            async with asyncio.timeout(5.0):
                if not client.closed:
                    await client.close()
                elif transport is not None:  # open() failed half-way: its connect loop may run
                    await transport.disconnect()
                    await transport.close()
        except (AiocometdException, TimeoutError, OSError) as e:
            log.debug("CometD close: %r", e)
        finally:
            session = client._http_session
            if session is not None and not session.closed:
                await session.close()
        if self._lost is not None and not self._lost.done():
            self._lost.cancel()

    async def __aenter__(self) -> CometSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def client_id(self) -> str | None:
        return self._client_id

    @property
    def is_lost(self) -> bool:
        return self._lost is not None and self._lost.done()

    async def wait_lost(self) -> LossReason:
        """Returns (with the reason) once the server has forgotten this session or it stalled."""
        assert self._lost is not None, "start() first"
        return await asyncio.shield(self._lost)

    def lose(self, reason: LossReason) -> None:
        if self._lost is not None and not self._lost.done():
            log.warning("CometD session %s lost: %s", self._client_id, reason.value)
            self._lost.set_result(reason)

    # -- subscriptions ---------------------------------------------------------------------------

    async def subscribe_many(self, channels: Iterable[str]) -> dict[str, str | None]:
        """Subscribe in one Bayeux request: channel → None if subscribed, else the error."""
        channels = list(dict.fromkeys(channels))
        if not channels:
            return {}
        client = self._client
        transport = _transport_of(client)
        if transport is None or self.is_lost:
            return dict.fromkeys(channels, "session closed")
        loop = asyncio.get_running_loop()
        waiters = {ch: loop.create_future() for ch in channels}
        self._subscribe_waiters.update(waiters)
        messages = [
            {"channel": "/meta/subscribe", "clientId": None, "subscription": ch, "id": None}
            for ch in channels
        ]
        try:
            # one request, many messages: the library's own subscribe() sends one per request
            send = transport._send_payload_with_auth(messages)
            await asyncio.wait_for(send, self._subscribe_timeout)
            done, _ = await asyncio.wait(waiters.values(), timeout=self._subscribe_timeout)
        except (AiocometdException, TimeoutError, OSError) as e:
            log.debug("subscribe batch of %d failed: %r", len(channels), e)
            done = set()
        finally:
            for ch in channels:
                self._subscribe_waiters.pop(ch, None)
        return {
            ch: (w.result() if w in done else "no reply to subscribe") for ch, w in waiters.items()
        }

    async def unsubscribe_many(self, channels: Iterable[str]) -> bool:
        """Unsubscribe in one Bayeux request (the server stops queueing for them once it reads
        it); False if the session is gone or the request failed — then nothing is delivered on
        those channels to this session anyway, or the next lost session drops them."""
        channels = list(dict.fromkeys(channels))
        transport = _transport_of(self._client)
        if not channels or transport is None or self.is_lost:
            return not channels
        messages = [
            {"channel": "/meta/unsubscribe", "clientId": None, "subscription": ch, "id": None}
            for ch in channels
        ]
        try:
            send = transport._send_payload_with_auth(messages)
            await asyncio.wait_for(send, self._subscribe_timeout)
        except (AiocometdException, TimeoutError, OSError) as e:
            log.debug("unsubscribe batch of %d failed: %r", len(channels), e)
            return False
        return True

    async def unsubscribe(self, channel: str) -> None:
        client = self._client
        if client is None or self.is_lost:
            return
        with contextlib.suppress(AiocometdException, TimeoutError, OSError):
            await asyncio.wait_for(client.unsubscribe(channel), self._subscribe_timeout)

    # -- the tap ---------------------------------------------------------------------------------

    def _on_outgoing(self, payload: list[dict[str, Any]]) -> None:
        for message in payload:
            channel = message.get("channel")
            if channel == "/meta/subscribe":
                self._subscribe_ids[str(message.get("id"))] = message.get("subscription", "")
            elif channel == "/meta/connect":
                self._backoff_reconnects()

    def _backoff_reconnects(self) -> None:
        """Before each connect: if the last one failed, the library's next retry waits longer."""
        client = self._client
        transport = _transport_of(client)
        if transport is None:
            return
        if self._awaiting_connect:  # the previous connect never got a reply
            self._connect_failures += 1
            WORKER_CONNECT_FAILURES.inc()
        self._awaiting_connect = True
        ceiling = min(
            self._reconnect_cap, self._reconnect_base * 2 ** min(self._connect_failures, 16)
        )
        # read by the library's _connect_done when this connect fails
        transport._reconnect_timeout = self._rng.uniform(ceiling / 2, ceiling)

    async def _on_incoming(self, payload: list[dict[str, Any]]) -> None:
        received = self._clock()
        events: EventBatch = []
        keep: list[dict[str, Any]] = []
        for message in payload:
            channel = message.get("channel")
            if not isinstance(channel, str):
                keep.append(message)
            elif channel.startswith(CHANNEL_PREFIX) and "data" in message:
                events.append(message)
            else:
                keep.append(message)
                if channel == "/meta/connect":
                    self._on_connect_reply(message)
                elif channel == "/meta/subscribe":
                    self._on_subscribe_reply(message)
                elif channel == "/meta/handshake":
                    WORKER_HANDSHAKES.labels(
                        "success" if message.get("successful") else "failure"
                    ).inc()
        if not events:
            return
        payload[:] = keep  # the library must not queue them a second time
        self._delivering = True
        try:
            await self._on_events(events, received)
        finally:
            self._delivering = False
            self._mark_alive()

    def _on_connect_failed(self, error: Exception) -> None:
        if not self._stopped and not self.is_lost:
            log.info("CometD connect failed (%s); affected mailboxes will be repaired", error)
            self._gap = True

    def _on_connect_reply(self, message: Mapping[str, Any]) -> None:
        self._awaiting_connect = False
        if message.get("successful"):
            self._connect_failures = 0
            self._mark_alive()
            WORKER_LAST_CONNECT.set(time.time())
            if self._gap:
                self._gap = False
                if self.on_gap is not None:
                    self.on_gap()
            return
        WORKER_CONNECT_FAILURES.inc()
        error = str(message.get("error") or "")
        advice = message.get("advice")
        reconnect = advice.get("reconnect") if isinstance(advice, Mapping) else None
        if error.startswith("402"):
            self.lose(LossReason.UNKNOWN_CLIENT)
        elif reconnect == "handshake":
            self.lose(LossReason.HANDSHAKE_ADVICE)
        elif reconnect == "none":
            self.lose(LossReason.SERVER_DISCONNECT)

    def _on_subscribe_reply(self, message: Mapping[str, Any]) -> None:
        channel = self._subscribe_ids.pop(str(message.get("id")), None) or message.get(
            "subscription"
        )
        if isinstance(channel, list):  # a server may echo a list subscription
            channel = channel[0] if channel else None
        waiter = self._subscribe_waiters.get(channel) if isinstance(channel, str) else None
        error = None if message.get("successful") else str(message.get("error") or "refused")
        if error is not None and error.startswith("402"):
            self.lose(LossReason.UNKNOWN_CLIENT)
        if waiter is not None and not waiter.done():
            waiter.set_result(error)

    def _mark_alive(self) -> None:
        self._last_alive = self._clock()

    async def _watch(self) -> None:
        """Stall watchdog: no successful connect (or payload) for stall_timeout → session lost.

        Time spent blocked on our own backpressure does not count: then we chose not to connect.
        """
        interval = max(0.05, min(5.0, self._stall_timeout / 4))
        while not self.is_lost:
            await asyncio.sleep(interval)
            if self._delivering:
                self._mark_alive()
                continue
            if self._clock() - self._last_alive > self._stall_timeout:
                WORKER_STALLS.inc()
                self.lose(LossReason.STALL)
