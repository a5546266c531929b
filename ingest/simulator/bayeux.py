"""A Bayeux 1.0 server at `/vmevents/cometd`, behaving like Unity Connection's Jetty/CometD —
by default like the reference CometD 9 server with its default options (docs/simulator.md), never
kinder:

Long-polling (HTTP POST of a JSON array, also at `/vmevents/cometd/<meta>` as the JavaScript client
posts) and WebSocket (GET upgrade on the same path) share one message engine:

- `/meta/handshake` creates a session and advises `{reconnect: retry, interval: 0, timeout}`
  (20 s). Over HTTP the session is bound to the `BAYEUX_BROWSER` cookie the handshake sets
  (`trustClientSession=false`): a request without it is answered as for an unknown client. A
  WebSocket needs no cookie.
- `/meta/connect` is held up to `advice.timeout` unless messages are queued, then returns up to
  `max_batch` event messages followed by the connect reply. The first connect of a session, a
  connect asking `advice.timeout: 0` and a connect batched with other requests are answered at
  once (as CometD does); only the first carries advice. A newer connect releases a held one.
- Over WebSocket each message goes in a frame of its own (`ws_frame_messages`), and a message
  over `ws_max_message` (64 KiB) closes the socket with 1009.
- `/meta/subscribe` accepts one channel or a list, any channel (as a stock CometD server does);
  with `refuse_unknown_channels` only `/vmrest/mailbox/<subscriptionId>` of a live subscription
  is allowed, otherwise nothing is subscribed and the reply is
  `403:<bad channels>:subscription_invalid`.
- Unknown clientIds get `402::session_unknown` with advice `reconnect: handshake`. A session
  without a connect for `max_interval` expires and its queued messages are dropped (and counted).
  A server-side disconnect answers a held connect with `/meta/disconnect` and a successful
  connect reply advising `reconnect: none`.
- Each session queue is bounded: beyond `queue_limit` the oldest message is dropped and counted, as
  a real server loses messages under pressure. Event payloads arrive encoded once (`deliver`) and
  are reused for every recipient; channel → sessions and session → channels are dicts, so a session
  with 20,000 channels costs O(1) per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from ingest.simulator.comet import encode
from ingest.simulator.stats import Counters

log = logging.getLogger(__name__)

COMETD_PATH = "/vmevents/cometd"
CONNECTION_TYPES = ("long-polling", "websocket")
BROWSER_COOKIE = "BAYEUX_BROWSER"
Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BayeuxConfig:
    """Bayeux server settings (seconds, counts)."""

    connect_timeout: float = 20.0
    """How long a connect is held without messages (`advice.timeout`)."""
    max_interval: float = 10.0
    """A session without a connect for this long expires (`advice.maxInterval`)."""
    queue_limit: int = 100_000
    """Event messages queued per session before the oldest are dropped."""
    max_batch: int = 1_000
    """Event messages per connect response."""
    browser_cookie: bool = True
    """Bind long-polling sessions to the `BAYEUX_BROWSER` cookie set by the handshake, as CometD
    does by default (`trustClientSession=false`): a request without it is answered 402."""
    ws_max_message: int = 65_536
    """Largest WebSocket message accepted (CometD/Jetty: 64 KiB); beyond it the socket is closed
    with 1009."""
    ws_frame_messages: int = 1
    """Messages per WebSocket frame (CometD: 1); 0 puts a whole reply in one frame."""
    refuse_unknown_channels: bool = False
    """Refuse (403) a subscribe to a channel of no live notification subscription, as a server
    with a security policy would. A stock CometD server accepts a subscribe to any channel — so
    after a restart that dropped the notification subscriptions, a subscribe to an old id
    succeeds and nothing is ever published on it (the default)."""


class Wake(enum.Enum):
    """Why a held connect was released."""

    MESSAGES = enum.auto()
    TIMEOUT = enum.auto()
    SUPERSEDED = enum.auto()
    """A newer connect of the same session arrived."""
    ABORT = enum.auto()
    """The connection is being dropped: answer nothing, keep the queue."""
    DISCONNECT = enum.auto()
    """The server disconnected the session (`ServerSession.disconnect()`)."""


@dataclass(slots=True)
class Peer:
    """Who sent a batch: over HTTP with which `BAYEUX_BROWSER` cookie, or over a WebSocket."""

    http: bool
    browser: str | None = None
    new_browser: str | None = None
    """A cookie the handshake minted: the HTTP reply sets it."""


class Session:
    """One Bayeux client session: its channels and its outbound queue."""

    __slots__ = (
        "browser",
        "channels",
        "client_id",
        "connected",
        "dropped",
        "last_seen",
        "queue",
        "waiter",
    )

    def __init__(self, client_id: str, now: float, browser: str | None = None) -> None:
        self.client_id = client_id
        self.browser = browser
        self.channels: dict[str, None] = {}
        self.queue: deque[bytes] = deque()
        self.waiter: asyncio.Future[Wake] | None = None
        self.connected = False
        self.last_seen = now
        self.dropped = 0

    def wake(self, why: Wake) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(why)


def _join(parts: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


class BayeuxServer:
    """Sessions, channel subscriptions and the two transports."""

    def __init__(
        self, config: BayeuxConfig, can_subscribe: Callable[[str], bool], counters: Counters
    ) -> None:
        self.config = config
        self._can_subscribe = can_subscribe
        self._counters = counters
        self.sessions: dict[str, Session] = {}
        self.channels: dict[str, dict[Session, None]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.on_written: Callable[[Sequence[bytes]], object] | None = None
        """Told the messages of each reply once it is written to the client's connection (the
        KPI truth counts an event as told then, not when it was queued)."""

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="bayeux-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        self.drop_connections()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", COMETD_PATH, self._handle)
        app.router.add_route("*", COMETD_PATH + "/{meta:.*}", self._handle)

    # -- what the notifier and the faults use ----------------------------------------------------

    def deliver(self, channel: str, payload: bytes) -> int:
        """Queue an encoded event message for every session on `channel`; returns how many."""
        sessions = self.channels.get(channel)
        if not sessions:
            return 0
        limit = self.config.queue_limit
        for session in sessions:
            queue = session.queue
            if len(queue) >= limit:
                queue.popleft()
                session.dropped += 1
                self._counters.dropped += 1
            queue.append(payload)
            session.wake(Wake.MESSAGES)
        self._counters.queued += len(sessions)
        return len(sessions)

    def drop_connections(self) -> None:
        """Release held connects without answering; queues and sessions stay (callers close the
        sockets themselves, see Simulator.drop_connections)."""
        for session in self.sessions.values():
            session.wake(Wake.ABORT)

    def disconnect_all(self) -> int:
        """Disconnect every session server-side: a held connect is answered with a disconnect
        and `reconnect: none`; the session is forgotten (its next connect gets 402). Returns
        how many."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.wake(Wake.DISCONNECT)
            self._forget(session)
        return len(sessions)

    def reset(self) -> None:
        """Forget every session and channel subscription, like a Jetty restart."""
        for session in self.sessions.values():
            session.wake(Wake.ABORT)
            self._counters.dropped += len(session.queue)
        self.sessions.clear()
        self.channels.clear()

    @property
    def channel_subscriptions(self) -> int:
        return sum(len(s.channels) for s in self.sessions.values())

    @property
    def pending(self) -> int:
        """Event messages queued and not yet written to any client."""
        return sum(len(s.queue) for s in self.sessions.values())

    # -- transports -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        try:
            messages = _messages(json.loads(await request.read()))
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"not a Bayeux message batch: {e}") from e
        peer = Peer(http=True, browser=request.cookies.get(BROWSER_COOKIE))
        replies = await self._process(messages, peer, is_closed=lambda: _closed(request))
        if replies is None:
            # the connection is being dropped; whatever we write goes nowhere
            raise web.HTTPServiceUnavailable()
        response = web.Response(body=_join(replies), content_type="application/json")
        if peer.new_browser is not None:
            response.set_cookie(BROWSER_COOKIE, peer.new_browser, path="/", httponly=True)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return response  # the connection went while writing: the events in it are lost
        self._written(replies)
        return response

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.config.ws_max_message)
        await ws.prepare(request)
        self._sockets.add(ws)
        exchanges: set[asyncio.Task[None]] = set()
        try:
            async for frame in ws:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    messages = _messages(json.loads(frame.data))
                except ValueError:
                    await ws.close(code=1003, message=b"not a Bayeux message batch")
                    break
                # each frame is its own exchange so a held connect never blocks a subscribe
                task = asyncio.create_task(self._ws_exchange(ws, messages))
                exchanges.add(task)
                task.add_done_callback(exchanges.discard)
        finally:
            for task in exchanges:
                task.cancel()
            await asyncio.gather(*exchanges, return_exceptions=True)
            self._sockets.discard(ws)
        return ws

    async def _ws_exchange(self, ws: web.WebSocketResponse, messages: list[Message]) -> None:
        replies = await self._process(messages, Peer(http=False), is_closed=lambda: ws.closed)
        if replies is None or ws.closed:
            return
        per_frame = self.config.ws_frame_messages or len(replies)
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(replies), per_frame):
                frame = replies[start : start + per_frame]
                await ws.send_frame(_join(frame), WSMsgType.TEXT)
                self._written(frame)

    def _written(self, messages: Sequence[bytes]) -> None:
        if self.on_written is not None:
            self.on_written(messages)

    # -- the message engine ---------------------------------------------------------------------

    async def _process(
        self, messages: list[Message], peer: Peer, is_closed: Callable[[], bool]
    ) -> list[bytes] | None:
        """Replies (and events) for one batch, each encoded; None if the connection is being
        dropped."""
        replies: list[bytes] = []
        connect: Message | None = None
        for message in messages:
            channel = message.get("channel")
            if channel == "/meta/connect":
                connect = message  # answered last, after the other requests of the batch
            else:
                replies.append(encode(self._dispatch(channel, message, peer)))
        if connect is None:
            return replies
        session = self._session(connect, peer)
        if session is None:
            return [*replies, encode(_unknown_client(connect))]
        events = await self._connect(session, connect, hold=not replies, is_closed=is_closed)
        if events is None:
            return None
        return [*replies, *events]

    def _session(self, message: Message, peer: Peer) -> Session | None:
        """The message's session, if the server knows it and the peer may speak for it: over
        HTTP a cookie-bound session needs its cookie (CometD's `trustClientSession=false`)."""
        session = self.sessions.get(str(message.get("clientId")))
        cookie_bound = session is not None and peer.http and session.browser is not None
        if cookie_bound and session is not None and peer.browser != session.browser:
            return None
        return session

    def _dispatch(self, channel: object, message: Message, peer: Peer) -> Message:
        match channel:
            case "/meta/handshake":
                return self._handshake(message, peer)
            case "/meta/subscribe" | "/meta/unsubscribe" | "/meta/disconnect":
                session = self._session(message, peer)
                if session is None:
                    return _unknown_client(message)
                if channel == "/meta/disconnect":
                    return self._disconnect(session, message)
                return self._subscription(session, message, subscribe=channel == "/meta/subscribe")
            case str():
                return _reply(message, False, error="403::publish_denied")
            case _:
                return _reply(message, False, error="400::missing_channel")

    def _handshake(self, message: Message, peer: Peer) -> Message:
        offered = message.get("supportedConnectionTypes")
        if not isinstance(offered, list) or not set(offered) & set(CONNECTION_TYPES):
            reply = _reply(message, False, error="406::unsupported_connection_types")
            reply["supportedConnectionTypes"] = list(CONNECTION_TYPES)
            return reply
        client_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        browser = None
        if peer.http and self.config.browser_cookie:
            if peer.browser is None:
                peer.browser = peer.new_browser = secrets.token_hex(16)
            browser = peer.browser
        self.sessions[client_id] = Session(client_id, loop.time(), browser)
        self._counters.handshakes += 1
        reply = _reply(message, True, clientId=client_id)
        reply.update(
            version="1.0",
            minimumVersion="1.0",
            supportedConnectionTypes=list(CONNECTION_TYPES),
            advice=self._advice(),
        )
        return reply

    def _advice(self) -> dict[str, Any]:
        return {
            "reconnect": "retry",
            "interval": 0,
            "timeout": int(self.config.connect_timeout * 1000),
        }

    def _subscription(self, session: Session, message: Message, *, subscribe: bool) -> Message:
        wanted = message.get("subscription")
        channels = _channel_list(wanted)
        if channels is None:
            return _reply(message, False, error="400::bad_subscription", subscription=wanted)
        if subscribe and self.config.refuse_unknown_channels:
            bad = [c for c in channels if not self._can_subscribe(c)]
            if bad:
                error = f"403:{','.join(bad)}:subscription_invalid"
                return _reply(message, False, error=error, subscription=wanted)
        for channel in channels:
            if subscribe:
                session.channels[channel] = None
                self.channels.setdefault(channel, {})[session] = None
            else:
                self._leave(session, channel)
        return _reply(message, True, clientId=session.client_id, subscription=wanted)

    def _leave(self, session: Session, channel: str) -> None:
        session.channels.pop(channel, None)
        members = self.channels.get(channel)
        if members is not None:
            members.pop(session, None)
            if not members:
                del self.channels[channel]

    def _disconnect(self, session: Session, message: Message) -> Message:
        self._forget(session)
        session.wake(Wake.SUPERSEDED)
        return _reply(message, True, clientId=session.client_id)

    def _forget(self, session: Session) -> None:
        for channel in list(session.channels):
            self._leave(session, channel)
        self._counters.dropped += len(session.queue)
        session.queue.clear()
        self.sessions.pop(session.client_id, None)

    async def _connect(
        self, session: Session, message: Message, *, hold: bool, is_closed: Callable[[], bool]
    ) -> list[bytes] | None:
        """Event messages plus the connect reply; None when the connection is being dropped."""
        if hold and session.connected and not session.queue:
            why = await self._hold(session, self._timeout(message))
            if why is Wake.ABORT or is_closed():
                return None
            if why is Wake.DISCONNECT:
                return _disconnected(session, message)
        first = not session.connected
        session.connected = True
        batch = self._drain(session)
        reply = _reply(message, True, clientId=session.client_id)
        if first:  # CometD's held replies carry no advice: the handshake's stands
            reply["advice"] = self._advice()
        return [*batch, encode(reply)]

    def _timeout(self, message: Message) -> float:
        advice = message.get("advice")
        wanted = advice.get("timeout") if isinstance(advice, dict) else None
        if isinstance(wanted, int | float) and wanted >= 0:
            return min(wanted / 1000, self.config.connect_timeout)
        return self.config.connect_timeout

    async def _hold(self, session: Session, seconds: float) -> Wake:
        session.wake(Wake.SUPERSEDED)
        if seconds <= 0:
            return Wake.TIMEOUT
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Wake] = loop.create_future()
        session.waiter = waiter
        timer = loop.call_later(seconds, session.wake, Wake.TIMEOUT)
        try:
            return await waiter
        finally:
            timer.cancel()
            if session.waiter is waiter:
                session.waiter = None
            session.last_seen = loop.time()

    def _drain(self, session: Session) -> list[bytes]:
        queue = session.queue
        count = min(len(queue), self.config.max_batch)
        batch = [queue.popleft() for _ in range(count)]
        self._counters.delivered += count
        session.last_seen = asyncio.get_running_loop().time()
        return batch

    async def _reap(self) -> None:
        """Expire sessions that have not connected for `max_interval` (and hold no connect)."""
        period = max(0.05, min(1.0, self.config.max_interval / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            deadline = loop.time() - self.config.max_interval
            expired = [
                s for s in self.sessions.values() if s.waiter is None and s.last_seen < deadline
            ]
            for session in expired:
                log.info("session %s expired with %s queued", session.client_id, len(session.queue))
                self._forget(session)
                self._counters.expired_sessions += 1


def _messages(body: object) -> list[Message]:
    batch = body if isinstance(body, list) else [body]
    messages = [m for m in batch if isinstance(m, dict)]
    if not messages or len(messages) != len(batch):
        raise ValueError("expected a JSON object or a non-empty array of objects")
    return messages


def _channel_list(subscription: object) -> list[str] | None:
    """`subscription` as a list of channel names (one name or a list), None if malformed."""
    wanted = subscription if isinstance(subscription, list) else [subscription]
    channels = [c for c in wanted if isinstance(c, str)]
    return channels if channels and len(channels) == len(wanted) else None


def _closed(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _reply(message: Message, successful: bool, **fields: Any) -> Message:
    reply: Message = {"channel": message.get("channel"), "successful": successful}
    if "id" in message:
        reply["id"] = message["id"]
    reply.update(fields)
    return reply


def _disconnected(session: Session, connect: Message) -> list[bytes]:
    """How CometD answers a held connect of a session it disconnected: a disconnect message, then
    the connect reply, successful, advising `reconnect: none`."""
    disconnect = {"channel": "/meta/disconnect", "clientId": session.client_id, "successful": True}
    reply = _reply(connect, True, clientId=session.client_id, advice={"reconnect": "none"})
    return [encode(disconnect), encode(reply)]


def _unknown_client(message: Message) -> Message:
    return _reply(
        message,
        False,
        error="402::session_unknown",
        advice={"reconnect": "handshake", "interval": 0},
    )
