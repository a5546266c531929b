"""A fake of aiocometd-ng's client and transport, to drive `CometSession` without a server.

`CometSession` talks to the library in two ways: it builds a `Client` (its `client_factory`) whose
extension, the session's tap, sees every payload; and it sends batched (un)subscribe messages
through the transport's `_send_payload_with_auth`. The fake keeps that shape: `FakeBayeux.client`
is the factory, and the test plays the server through the transport — `connect()` is one
/meta/connect exchange (events and the reply pass through the extensions as the library passes
them), `connect_fails()` a connect that broke mid-exchange (what the session's transport fix
reports to the tap), `receive()` any payload.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping
from typing import Any, cast

from aiocometd_ng.client import Client
from aiocometd_ng.extensions import Extension

Message = dict[str, Any]
Payload = list[Message]

_client_ids = itertools.count(1)


def event(subscription_id: str, usn: int = 1, **data: Any) -> Message:
    """A CUMI notification on a mailbox channel (the `data` is not looked into by the session)."""
    return {
        "channel": f"/vmrest/mailbox/{subscription_id}",
        "data": {"eventType": "NEW_MESSAGE", "usn": usn, **data},
    }


class FakeBayeux:
    """The server side, and the `client_factory` of `CometSession`.

    Subscribe messages are answered at once (successful unless `refused` names the channel) while
    `answer_subscribes` holds; `echo_subscription` False leaves the `subscription` field out of
    the replies (the session then matches them by message id). `open_error` fails the handshake,
    `send_error` every (un)subscribe request.
    """

    def __init__(self) -> None:
        self.clients: list[FakeCometClient] = []
        self.open_error: Exception | None = None
        self.open_hangs = False
        self.send_error: Exception | None = None
        self.answer_subscribes = True
        self.echo_subscription = True
        self.refused: dict[str, str] = {}

    def client(self, url: str, connection_types: Iterable[Any], **options: Any) -> Client:
        client = FakeCometClient(self, url, options)
        self.clients.append(client)
        return cast(Client, client)

    @property
    def transport(self) -> FakeTransport:
        return self.clients[-1].transport

    def replies(self, payload: Payload) -> Payload:
        replies = []
        for message in payload:
            channel = message.get("channel")
            if channel == "/meta/unsubscribe":
                replies.append({"channel": channel, "id": message["id"], "successful": True})
            elif channel == "/meta/subscribe" and self.answer_subscribes:
                replies.append(self.subscribe_reply(message))
        return replies

    def subscribe_reply(self, request: Mapping[str, Any], error: str | None = None) -> Message:
        subscription = request["subscription"]
        error = error or self.refused.get(subscription)
        reply: Message = {"channel": "/meta/subscribe", "id": request["id"]}
        reply["successful"] = error is None
        if self.echo_subscription:
            reply["subscription"] = subscription
        if error is not None:
            reply["error"] = error
        return reply


class FakeCometClient:
    """What `CometSession` uses of `aiocometd_ng.Client`."""

    def __init__(self, server: FakeBayeux, url: str, options: Mapping[str, Any]) -> None:
        self.url = url
        self.options = dict(options)
        self._server = server
        extensions = cast(list[Extension], options.get("extensions", []))
        self.transport = FakeTransport(server, extensions)
        self._transport: FakeTransport | None = None  # the library sets it in open()
        self._http_session: Any = None
        self.closed = True
        self.unsubscribed: list[str] = []

    async def open(self) -> None:
        self._transport = self.transport
        if self._server.open_error is not None:
            raise self._server.open_error
        if self._server.open_hangs:
            await asyncio.get_running_loop().create_future()
        self.closed = False
        handshake = {"channel": "/meta/handshake", "id": None, "version": "1.0"}
        await self.transport.send(handshake)
        reply = {"channel": "/meta/handshake", "successful": True, "clientId": "?", "id": "0"}
        reply["clientId"] = self.transport.client_id
        await self.transport.receive([reply])
        await self.transport.connect()

    async def close(self) -> None:
        self.closed = True
        await self.transport.disconnect()
        await self.transport.close()

    async def unsubscribe(self, channel: str) -> Message:
        self.unsubscribed.append(channel)
        return {"channel": "/meta/unsubscribe", "successful": True, "subscription": channel}


class FakeTransport:
    """What `CometSession` uses of the library's transport, and the test's handle on the wire."""

    def __init__(self, server: FakeBayeux, extensions: list[Extension]) -> None:
        self.client_id = f"fake-client-{next(_client_ids)}"
        self._server = server
        self._extensions = extensions
        self._reconnect_timeout = 1.0
        self._message_id = 0
        self.sent: list[Payload] = []
        self.left: list[Payload] = []
        """Each incoming payload as the library would go on to queue it (after the tap)."""
        self.disconnected = False
        self.closed = False

    # -- the library's side ----------------------------------------------------------------------

    async def _send_payload_with_auth(self, payload: Payload) -> Message:
        await self._outgoing(payload)
        if self._server.send_error is not None:
            raise self._server.send_error
        replies = self._server.replies(payload)
        if replies:
            await self.receive(replies)
        return replies[0] if replies else {}

    async def disconnect(self) -> None:
        self.disconnected = True

    async def close(self) -> None:
        self.closed = True

    async def _outgoing(self, payload: Payload) -> None:
        for message in payload:  # as the library's _finalize_message
            if "id" in message:
                message["id"] = str(self._message_id)
                self._message_id += 1
            if "clientId" in message:
                message["clientId"] = self.client_id
        for extension in self._extensions:
            await extension.outgoing(payload, {})
        self.sent.append(payload)

    # -- the server's side -----------------------------------------------------------------------

    async def send(self, *messages: Message) -> None:
        """Messages from the client (as the library sends them), with no reply yet."""
        await self._outgoing(list(messages))

    async def receive(self, payload: Payload) -> Payload:
        """A payload from the server through the extensions; returns what is left of it."""
        for extension in self._extensions:
            await extension.incoming(payload, {})
        self.left.append(payload)
        return payload

    async def connect(
        self,
        *events: Message,
        successful: bool = True,
        error: str | None = None,
        advice: Mapping[str, Any] | None = None,
    ) -> Payload:
        """One /meta/connect exchange: the request, then a reply payload carrying `events`."""
        await self.send(_connect_request())
        reply: Message = {"channel": "/meta/connect", "successful": successful}
        if error is not None:
            reply["error"] = error
        if advice is not None:
            reply["advice"] = dict(advice)
        return await self.receive([*events, reply])

    async def connect_fails(self, error: Exception) -> None:
        """A connect sent, then its exchange broke (what the session's transport fix reports)."""
        await self.send(_connect_request())
        for extension in self._extensions:
            hook = getattr(extension, "connect_failed", None)
            if hook is not None:
                hook(error)

    def subscribe_requests(self) -> list[Message]:
        return [m for p in self.sent for m in p if m.get("channel") == "/meta/subscribe"]


def _connect_request() -> Message:
    return {
        "channel": "/meta/connect",
        "clientId": None,
        "connectionType": "long-polling",
        "id": None,
    }
