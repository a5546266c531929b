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
