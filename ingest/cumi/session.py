"""One CometD (Bayeux) session to a CUMI server carrying every mailbox channel, over aiocometd-ng.

aiocometd-ng drives the protocol (handshake, the /meta/connect loop, long-polling or WebSocket), and
this module taps it through the library's extension hook, which sees every incoming payload before
the library queues it:

- Event messages (`/vmrest/mailbox/<subscriptionId>`) are taken out of the payload and handed, one
  payload at a time, to `on_events`. That coroutine applies backpressure: while it waits, the
  library's connect task waits with it and issues no new /meta/connect, so nothing more is pulled
  from the server. (It also spares the library's receive() path, which creates three tasks per
  message and whose connection timeout is broken on Python ≥ 3.10: `wait_for(loop=…)`.)
- `/meta/connect` replies feed the stall watchdog; a `402` reply or `reconnect: handshake|none`
  advice — on an unsuccessful *or* a successful reply (a server-side disconnect answers the held
  connect `successful: true, reconnect: none`) — means the server is done with this client: the
  session is lost. So does an unsolicited `/meta/disconnect` reply.
- `/meta/subscribe` replies resolve `subscribe_many`, which sends many subscribe messages in one
  Bayeux request (the library subscribes one channel per request), as many as fit in one
  WebSocket message of the reference server (64 KiB, `max_request_bytes`).

A lost session is not repaired here: the subscription manager throws it away and builds a new one
(a fresh handshake, subscriptions again, gap repair). Failed connects are retried by the library
after a delay that this module sets to a jittered exponential backoff (the library's own is a fixed
one second). The library's transports are corrected by `ingest.cumi.cometd_fixes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiocometd_ng.client import Client
from aiocometd_ng.constants import ConnectionType
from aiocometd_ng.exceptions import AiocometdException

from ingest.cumi import jsonload
from ingest.cumi.cometd_fixes import (
    ConnectFailureListener,
    FixedClient,
    install_transport_fixes,
    transport_of,
)
from ingest.errors import TransportError
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock
from ingest.ops.metrics import (
    WORKER_CONNECT_FAILURES,
    WORKER_HANDSHAKES,
    WORKER_LAST_CONNECT,
    WORKER_SESSION_RESTARTS,
    WORKER_STALLS,
    init_label_values,
)
from ingest.settings import CometTransport

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "/vmrest/mailbox/"
EventBatch = list[dict[str, Any]]
OnEvents = Callable[[EventBatch, float], Awaitable[None]]
"""(event messages of one server payload, monotonic receive time) → returns when admitted."""
ClientFactory = Callable[..., Client]
"""Builds the library's client: `FixedClient` (unit tests pass a fake, tests/fakes/bayeux.py)."""


STALL_MARGIN = 5.0
"""Seconds beyond the server's advised long-poll `timeout` before a silent session is a stall: a
healthy server holds a connect that long when nothing happens (CometD 9: 20 s)."""

RECONNECT_CAP = 2.0
"""Longest wait between two failed connects of one session (jittered exponential from 0.5 s)."""

MAX_REQUEST_BYTES = 60_000
"""Default bound on one subscribe/unsubscribe request's encoded size: the reference CometD server
closes a WebSocket (1009) on a message over 64 KiB; the rest is margin for fields a library or
extension adds."""


def channel_for(subscription_id: str) -> str:
    return CHANNEL_PREFIX + subscription_id


def batches_by_size(messages: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """`messages` in order, split so that each part encodes (as aiocometd-ng sends it: a JSON
    array by `json.dumps`) in at most `limit` bytes; a single larger message goes alone."""
    parts: list[list[dict[str, Any]]] = []
    part: list[dict[str, Any]] = []
    size = 2  # the brackets
    for message in messages:
        length = len(json.dumps(message).encode())
        if part and size + 2 + length > limit:  # 2: the ", " separator
            parts.append(part)
            part, size = [], 2
        part.append(message)
        size += length + (2 if len(part) > 1 else 0)
    if part:
        parts.append(part)
    return parts


class LossReason(enum.StrEnum):
    """Why a session was given up; a metric label."""

    UNKNOWN_CLIENT = "unknown-client"
    HANDSHAKE_ADVICE = "handshake-advice"
    SERVER_DISCONNECT = "server-disconnect"
    SUBSCRIBE_FAILED = "subscribe-failed"
    STALL = "stall"


init_label_values(WORKER_SESSION_RESTARTS, LossReason)


class _Tap(ConnectFailureListener):
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
        max_request_bytes: int = MAX_REQUEST_BYTES,
        reconnect: Backoff | None = None,
        client_factory: ClientFactory = FixedClient,
        clock: Clock = SYSTEM_CLOCK,
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
        self._max_request_bytes = max_request_bytes
        # a short cap: a restarted Connection Jetty is found within seconds of being back (a
        # refused TCP connect every few seconds costs the server nothing)
        self._reconnect = reconnect or Backoff(base=0.5, cap=RECONNECT_CAP)
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
        self._last_alive = clock.monotonic()
        self._client_id: str | None = None
        self._advised_hold: float | None = None
        self._open = False
        self._stopped = False
        self._gap = False
        self.on_gap: Callable[[], None] | None = None
        """Called after a failed connect that may have carried events, once connects succeed
        again: without Bayeux acknowledgements those events are gone, so the caller repairs."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Handshake and the first connect; raises TransportError if the server can't be had."""
        install_transport_fixes()
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
        if self.is_lost:  # lost between the handshake and the end of the first connect
            reason = self.loss_reason
            await self.stop()
            raise TransportError(f"CometD session with {self._url} lost while opening: {reason}")
        transport = transport_of(client)
        self._client_id = transport.client_id if transport is not None else None
        self._open = True
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
        transport = transport_of(client)
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

    @property
    def loss_reason(self) -> str:
        """Why the session was lost, once it is; else an empty string."""
        lost = self._lost
        if lost is None or not lost.done() or lost.cancelled():
            return ""
        return lost.result().value

    def lose(self, reason: LossReason) -> None:
        if self._lost is not None and not self._lost.done():
            if self._open and not self._stopped:  # before: start() fails and says so
                log.warning("CometD session %s lost: %s", self._client_id, reason.value)
            self._lost.set_result(reason)

    @property
    def stall_limit(self) -> float:
        """Seconds without a sign of life before the watchdog gives the session up: the setting,
        but never less than the server's advised long-poll hold plus STALL_MARGIN."""
        if self._advised_hold is None:
            return self._stall_timeout
        return max(self._stall_timeout, self._advised_hold + STALL_MARGIN)

    def _take_advice(self, message: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The message's advice, if any; remembers its long-poll `timeout` (ms). Advice stands
        until the next advice: CometD's held connect replies carry none."""
        advice = message.get("advice")
        if not isinstance(advice, Mapping):
            return None
        timeout = advice.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout >= 0:
            self._advised_hold = timeout / 1000
        return advice

    # -- subscriptions ---------------------------------------------------------------------------

    async def subscribe_many(self, channels: Iterable[str]) -> dict[str, str | None]:
        """Subscribe in one Bayeux request: channel → None if subscribed, else the error."""
        channels = list(dict.fromkeys(channels))
        if not channels:
            return {}
        client = self._client
        transport = transport_of(client)
        if transport is None or self.is_lost:
            return dict.fromkeys(channels, "session closed")
        loop = asyncio.get_running_loop()
        waiters = {ch: loop.create_future() for ch in channels}
        self._subscribe_waiters.update(waiters)
        messages = self._requests("/meta/subscribe", channels)
        try:
            # few requests, many messages: the library's own subscribe() sends one per request
            sends = [transport._send_payload_with_auth(part) for part in messages]
            await asyncio.wait_for(asyncio.gather(*sends), self._subscribe_timeout)
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
        transport = transport_of(self._client)
        if not channels or transport is None or self.is_lost:
            return not channels
        messages = self._requests("/meta/unsubscribe", channels)
        try:
            sends = [transport._send_payload_with_auth(part) for part in messages]
            await asyncio.wait_for(asyncio.gather(*sends), self._subscribe_timeout)
        except (AiocometdException, TimeoutError, OSError) as e:
            log.debug("unsubscribe batch of %d failed: %r", len(channels), e)
            return False
        return True

    def _requests(self, meta: str, channels: list[str]) -> list[list[dict[str, Any]]]:
        """The (un)subscribe messages for `channels`, in requests of at most max_request_bytes.

        Sized as the library will send them: it fills in `clientId` and a numeric `id`; a
        ten-digit id stands in for the real one.
        """
        client_id = self._client_id or ""
        sized = [
            {"channel": meta, "clientId": client_id, "subscription": ch, "id": "0" * 10}
            for ch in channels
        ]
        parts = batches_by_size(sized, self._max_request_bytes)
        return [
            [{"channel": meta, "clientId": None, "subscription": m["subscription"], "id": None}
             for m in part]
            for part in parts
        ]  # fmt: skip

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
        transport = transport_of(client)
        if transport is None:
            return
        if self._awaiting_connect:  # the previous connect never got a reply
            self._connect_failures += 1
            WORKER_CONNECT_FAILURES.inc()
        self._awaiting_connect = True
        # read by the library's _connect_done when this connect fails
        transport._reconnect_timeout = self._reconnect.delay(self._connect_failures + 1)

    async def _on_incoming(self, payload: list[dict[str, Any]]) -> None:
        received = self._clock.monotonic()
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
                    self._on_handshake_reply(message)
                elif channel == "/meta/disconnect" and not self._stopped:
                    # not ours: the server disconnected this session
                    self.lose(LossReason.SERVER_DISCONNECT)
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

    def _on_handshake_reply(self, message: Mapping[str, Any]) -> None:
        successful = bool(message.get("successful"))
        WORKER_HANDSHAKES.labels("success" if successful else "failure").inc()
        self._take_advice(message)
        client_id = message.get("clientId")
        if successful and isinstance(client_id, str):
            self._client_id = client_id

    def _on_connect_reply(self, message: Mapping[str, Any]) -> None:
        self._awaiting_connect = False
        advice = self._take_advice(message)
        reconnect = advice.get("reconnect") if advice is not None else None
        if message.get("successful") and reconnect not in ("handshake", "none"):
            self._connect_failures = 0
            self._mark_alive()
            WORKER_LAST_CONNECT.set(self._clock.wall())
            if self._gap:
                self._gap = False
                if self.on_gap is not None:
                    self.on_gap()
            return
        if not message.get("successful"):
            WORKER_CONNECT_FAILURES.inc()
        error = str(message.get("error") or "")
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
        self._last_alive = self._clock.monotonic()

    async def _watch(self) -> None:
        """Stall watchdog: no successful connect (or payload) for `stall_limit` → session lost.

        Time spent blocked on our own backpressure does not count: then we chose not to connect.
        """
        interval = max(0.05, min(5.0, self._stall_timeout / 4))
        while not self.is_lost:
            await self._clock.sleep(interval)
            if self._delivering:
                self._mark_alive()
                continue
            if self._clock.monotonic() - self._last_alive > self.stall_limit:
                WORKER_STALLS.inc()
                self.lose(LossReason.STALL)
