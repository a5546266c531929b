"""Corrections to aiocometd-ng 0.5.6's transports, in one place (see docs/design.md §7).

aiocometd-ng drives the Bayeux protocol for `ingest.cumi.session`; its transports are subclassed
here and installed in the library's (global) transport registry, because the library offers no
other way to change them. Each correction names the defect it fixes. They use private parts of the
library knowingly: the version is pinned, and `tests/unit/test_comet_session.py` and the
conformance tests against the reference CometD server fail if an upgrade moves them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from typing import Any, cast

import aiohttp
from aiocometd_ng.client import Client
from aiocometd_ng.constants import ConnectionType, TransportState
from aiocometd_ng.exceptions import TransportConnectionClosed
from aiocometd_ng.exceptions import TransportError as CometTransportError
from aiocometd_ng.extensions import Extension
from aiocometd_ng.transports.base import TransportBase
from aiocometd_ng.transports.long_polling import LongPollingTransport
from aiocometd_ng.transports.registry import register_transport
from aiocometd_ng.transports.websocket import WebSocket, WebSocketTransport

log = logging.getLogger(__name__)


class ConnectFailureListener(Extension):
    """An extension that hears of a failed connect exchange that may have carried events."""

    def connect_failed(self, error: Exception) -> None:
        raise NotImplementedError


LONG_POLL_MARGIN = 15.0
"""Seconds a connect may take beyond the server's advised long-poll timeout before the client gives
up. The library allows 20 %: with short timeouts a slow, large response was cut off mid-body —
after the server had already counted its events as delivered."""


MAX_COALESCED_FRAMES = 2_000
"""At most this many WebSocket frames are handed over as one payload (the reference server sends
one message per frame; a long-poll reply of a busy session carries a similar number)."""


class _Fixes(TransportBase):
    """Corrections to aiocometd-ng's transports (the concrete classes below mix them in):

    - close: cancelling a pending connect (or WebSocket receive) made its done-callback re-raise
      CancelledError into the event loop, which logged a traceback;
    - `advice.interval` is in milliseconds (Bayeux), the library slept that many seconds;
    - the request timeout leaves a fixed margin over the long-poll (see LONG_POLL_MARGIN);
    - `reconnect: handshake` advice is not followed: the session is lost (this module's tap saw
      it) and the subscription manager replaces the whole client;
    - advice on a *successful* reply is followed too (the library reads it only on failures): a
      server-side disconnect answers the held connect `successful: true` with `reconnect: none`,
      and the library would connect once more only to be told `402`;
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
            if isinstance(advice, dict):
                reconnect = advice.get("reconnect", reconnect)
            self._state = TransportState.CONNECTED
        except Exception as error:
            log.debug("connect failed: %r", error)
            delay = self._reconnect_timeout
            if self.state != TransportState.DISCONNECTING:
                self._state = TransportState.CONNECTING
        if self.state == TransportState.DISCONNECTING:
            return
        if reconnect in ("handshake", "none"):
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
                    if isinstance(extension, ConnectFailureListener):
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

    async def _receive(self, socket: WebSocket) -> None:
        """The library's receive loop, coalescing: frames that arrive back to back are handed
        over as one payload (see `_frames`), parsed as one document."""
        try:
            while True:
                frames = await _frames(socket)
                texts = [f.data for f in frames if f.type is aiohttp.WSMsgType.TEXT]
                payload = self._parse(texts) if texts else []
                if payload:  # what came before a close is delivered first
                    await self._consume_payload(payload)
                    self._set_exchange_results(payload)
                last = frames[-1]
                if last.type is not aiohttp.WSMsgType.TEXT:
                    # CLOSE, or CLOSED/ERROR when the server went without a close frame (a
                    # stopping Jetty): the library parsed these as JSON and failed oddly
                    raise TransportConnectionClosed(f"WebSocket {last.type.name}")
        except Exception as error:
            self._set_exchange_errors(error)
            raise

    def _parse(self, texts: list[str]) -> list[dict[str, Any]]:
        """Frames' JSON arrays as one list, decoded in one call (a frame is `[{…}]`)."""
        if len(texts) == 1:
            document = texts[0]
        else:
            inner = (t.strip() for t in texts)
            document = "[" + ",".join(t[1:-1] if t.startswith("[") else t for t in inner) + "]"
        try:
            parsed: Any = self._json_loads(document)
        except ValueError as e:
            raise CometTransportError("Received invalid response from the server.") from e
        messages = parsed if isinstance(parsed, list) else [parsed]
        return [m for m in messages if isinstance(m, dict)]


async def _frames(socket: WebSocket) -> list[aiohttp.WSMessage]:
    """The next frame, and the frames that arrive right behind it.

    The reference CometD server sends one message per frame: handed over one by one, each event
    became its own Kafka record batch (WebSocket ran at a tenth of long-polling's rate). So
    frames already received are taken together, and while each look finds more waiting (a
    burst), one turn of the event loop lets the socket be read again before handing over — up to
    MAX_COALESCED_FRAMES, about what a long-poll reply carries. When traffic is light the first
    look finds nothing waiting and the frame is handed over at once: no added latency, never a
    timed wait. The buffer is aiohttp's (`_reader._buffer`, see docs/design.md §7); if an
    upgrade moves it, frames are simply taken one at a time.
    """
    frames = [await socket.receive()]
    buffer = getattr(getattr(socket, "_reader", None), "_buffer", None)
    if buffer is None or frames[0].type is not aiohttp.WSMsgType.TEXT:
        return frames
    while buffer and len(frames) < MAX_COALESCED_FRAMES:
        while buffer and len(frames) < MAX_COALESCED_FRAMES:
            frame = await socket.receive()  # buffered: returns without waiting
            frames.append(frame)
            if frame.type is not aiohttp.WSMsgType.TEXT:
                return frames
        await _io_turn()
    return frames


async def _io_turn() -> None:
    """Let the event loop read its sockets once: a task resumed by `sleep(0)` runs before the
    I/O callbacks of the loop's next turn, so it takes two."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class FixedClient(Client):
    """aiocometd-ng's client with a cookie jar that keeps cookies from IP-address hosts.

    The reference CometD server binds a long-polling session to its `BAYEUX_BROWSER` cookie
    (`trustClientSession=false`, the default in CometD 3 to 9); aiohttp's default jar drops
    cookies from an IP-address host, so with the server given by IP every `/meta/connect` was
    answered `402::session_unknown`. The jar belongs to this one client (one CometD server).
    """

    async def _get_http_session(self) -> aiohttp.ClientSession:
        if self._http_session is None:
            self._http_session = aiohttp.ClientSession(
                json_serialize=self._json_dumps, cookie_jar=aiohttp.CookieJar(unsafe=True)
            )
        return self._http_session


@functools.cache
def install_transport_fixes() -> None:
    """Make the library create the fixed transports above (its registry is global; the fixed
    classes behave the same for any other user of the library in this process)."""
    register_transport(ConnectionType.LONG_POLLING)(_LongPolling)
    register_transport(ConnectionType.WEBSOCKET)(_WebSocket)


def transport_of(client: Client | None) -> TransportBase | None:
    """The library's transport; its private parts are used knowingly (aiocometd-ng is pinned)."""
    if client is None:
        return None
    return cast(TransportBase | None, client._transport)
