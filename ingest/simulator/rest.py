"""The CUMI REST endpoints the pipeline uses, with Unity Connection's auth, throttling, quirks.

- `POST /vmrest/mailbox?method=requestnotification` → text/plain subscriptionId (new on each call).
- `GET /vmrest/users?query=(alias%20is%20X)`, `GET /vmrest/users`, `GET /vmrest/users/<objectId>`.
- `GET /vmrest/mailbox/folders/{inbox,deleted}` → `DisplayName`, `URI`, `MessagesURI`,
  `MessageCount`, `USN` (the mailbox-level USN).
- `GET /vmrest/mailbox/folders/{inbox,deleted}/messages` with `pagenumber` (1-based), `rowsperpage`
  (default 100), `usngreaterthan` (messages changed after that USN), newest first.

All mailbox calls act for the authenticated user, or — for the delegate account — for the user
named by `?userobjectid=`. JSON follows CUMI's XML-derived style: every scalar is a string
(`"@total"`, `"Read": "true"`, `"ArrivalTime"` in epoch ms, `"USN"`, `"MessageCount"`), and a
collection of exactly one element is an object, not a one-element list (`"Message": {…}`,
`"User": {…}`); an empty collection has only `"@total": "0"`. `From` is always an object
(`DisplayName`, plus `SmtpAddress` for colleagues), `CallerId` an object `{"CallerNumber": …}`
present only when the number is known, `Priority` is CUMI's REST spelling (`Normal`, `Urgent`,
`Low`; Comet events say `Normal-Priority`).

Throttling: `concurrency` requests run at once, up to `queue_limit` more wait, further ones get 503
(with `Retry-After` if configured). A 503 storm answers every call 503 until it ends.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from ingest.simulator.faults import Faults
from ingest.simulator.mailbox import Folder, Mailbox, Message
from ingest.simulator.notifier import Subscriptions
from ingest.simulator.stats import Counters
from ingest.simulator.users import Principal, User, UserTable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
DEFAULT_ROWS = 100
MAX_ROWS = 2000
_QUERY = re.compile(r"^\(\s*alias\s+is\s+(\S+?)\s*\)$", re.IGNORECASE)
_FOLDER_NAMES = {Folder.INBOX: "Inbox", Folder.DELETED: "Deleted Items"}


class Throttle:
    """Server-wide concurrency limit with a bounded wait queue."""

    def __init__(self, concurrency: int, queue_limit: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue_limit = queue_limit
        self.waiting = 0

    def full(self) -> bool:
        return self._slots.locked() and self.waiting >= self._queue_limit

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._slots.release()


class RestApi:
    """Request handlers over the scenario's mailboxes."""

    def __init__(
        self,
        users: UserTable,
        mailboxes: dict[str, Mailbox],
        subscriptions: Subscriptions,
        faults: Faults,
        counters: Counters,
        *,
        concurrency: int = 5,
        queue_limit: int = 50,
        retry_after: int | None = None,
        delegate_notifications: bool = True,
        on_listed: Callable[[Folder, Iterable[Message]], object] | None = None,
    ) -> None:
        self._users = users
        self._on_listed = on_listed
        """Told which messages a folder listing showed (the KPI truth's "first seen in a
        snapshot")."""
        self._mailboxes = mailboxes
        self._subscriptions = subscriptions
        self._faults = faults
        self._counters = counters
        self._throttle = Throttle(concurrency, queue_limit)
        self._retry_after = retry_after
        self._delegate_notifications = delegate_notifications

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._gate)
        app.router.add_post("/vmrest/mailbox", self._mailbox_method)
        app.router.add_get("/vmrest/users", self._users_query)
        app.router.add_get("/vmrest/users/{object_id}", self._user)
        app.router.add_get("/vmrest/mailbox/folders/{folder}", self._folder)
        app.router.add_get("/vmrest/mailbox/folders/{folder}/messages", self._messages)

    # -- throttling, latency and auth, in the server's order -------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/vmrest/"):
            return await handler(request)
        self._counters.rest_requests += 1
        storm = asyncio.get_running_loop().time() < self._faults.storm_until
        if storm or self._throttle.full():
            self._counters.rest_throttled += 1
            return self._unavailable()
        await self._throttle.acquire()
        try:
            if self._faults.rest_latency > 0:
                await asyncio.sleep(self._faults.rest_latency)
            principal = self._users.authenticate(request.headers.get("Authorization"))
            if principal is None:
                self._counters.rest_unauthorized += 1
                raise web.HTTPUnauthorized(
                    text="Authentication failed",
                    headers={"WWW-Authenticate": 'Basic realm="Cisco Unity Connection"'},
                )
            request[PRINCIPAL] = principal
            return await handler(request)
        finally:
            self._throttle.release()

    def _unavailable(self) -> web.Response:
        headers = {"Retry-After": str(self._retry_after)} if self._retry_after is not None else {}
        return web.Response(
            status=503, text="Service Unavailable: too many requests", headers=headers
        )

    def _target(self, request: web.Request, *, notification: bool = False) -> Mailbox:
        """The mailbox a call acts on: the caller's own, or `userobjectid`'s for the delegate."""
        principal = request[PRINCIPAL]
        object_id = request.query.get("userobjectid")
        user: User | None
        if object_id is None:
            user = principal.user
            if user is None:
                raise web.HTTPBadRequest(
                    text="the delegate account has no mailbox: add userobjectid"
                )
        elif principal.user is not None:
            if principal.user.object_id != object_id:
                raise web.HTTPForbidden(text="userobjectid requires the mailbox delegate role")
            user = principal.user
        else:
            if notification and not self._delegate_notifications:
                raise web.HTTPForbidden(
                    text="requestnotification acts for the authenticated user only"
                )
            user = self._users.by_object_id(object_id)
            if user is None:
                raise web.HTTPNotFound(text=f"no user with objectId {object_id}")
        return self._mailboxes[user.alias]

    # -- handlers -------------------------------------------------------------------------------

    async def _mailbox_method(self, request: web.Request) -> web.Response:
        if request.query.get("method") != "requestnotification":
            raise web.HTTPBadRequest(text="unsupported method")
        mailbox = self._target(request, notification=True)
        subscription_id = self._subscriptions.create(mailbox.alias)
        return web.Response(text=subscription_id, content_type="text/plain")

    async def _users_query(self, request: web.Request) -> web.Response:
        query = request.query.get("query")
        if query is None:
            rows, page = _paging(request)
            aliases = list(self._users)
            chosen = [self._users[a] for a in aliases[(page - 1) * rows : page * rows]]
            return web.json_response(_collection("User", len(aliases), map(_user_json, chosen)))
        match = _QUERY.match(query.strip())
        if match is None:
            raise web.HTTPBadRequest(text="unsupported query; use (alias is <alias>)")
        user = self._users.get(match.group(1))
        found = [_user_json(user)] if user else []
        return web.json_response(_collection("User", len(found), found))

    async def _user(self, request: web.Request) -> web.Response:
        user = self._users.by_object_id(request.match_info["object_id"])
        if user is None:
            raise web.HTTPNotFound(text="no such user")
        return web.json_response(_user_json(user))

    async def _folder(self, request: web.Request) -> web.Response:
        folder = _folder(request)
        mailbox = self._target(request)
        uri = f"/vmrest/mailbox/folders/{folder}"
        body = {
            "DisplayName": _FOLDER_NAMES[folder],
            "URI": uri,
            "MessagesURI": uri + "/messages",
            "MessageCount": str(len(mailbox.folder(folder))),
            "USN": str(mailbox.usn),
        }
        return web.json_response(body)

    async def _messages(self, request: web.Request) -> web.Response:
        folder = _folder(request)
        mailbox = self._target(request)
        rows, page = _paging(request)
        after = _int_param(request, "usngreaterthan", -1, minimum=-1)
        messages = [m for m in mailbox.folder(folder).values() if m.usn > after]
        messages.sort(key=lambda m: (-m.arrival_ms, m.message_id))
        chosen = messages[(page - 1) * rows : page * rows]
        if self._on_listed is not None:
            self._on_listed(folder, chosen)
        return web.json_response(_collection("Message", len(messages), map(_message_json, chosen)))


def _folder(request: web.Request) -> Folder:
    try:
        return Folder(request.match_info["folder"])
    except ValueError as e:
        raise web.HTTPNotFound(text="unknown folder") from e


def _int_param(request: web.Request, name: str, default: int, *, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from e
    if value < minimum:
        raise web.HTTPBadRequest(text=f"{name} must be at least {minimum}")
    return value


def _paging(request: web.Request) -> tuple[int, int]:
    rows = min(_int_param(request, "rowsperpage", DEFAULT_ROWS, minimum=1), MAX_ROWS)
    return rows, _int_param(request, "pagenumber", 1, minimum=1)


def _collection(name: str, total: int, items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """CUMI's list shape: `@total` as a string, one item as an object, none as no key at all."""
    page = list(items)
    body: dict[str, Any] = {"@total": str(total)}
    if len(page) == 1:
        body[name] = page[0]
    elif page:
        body[name] = page
    return body


def _user_json(user: User) -> dict[str, Any]:
    return {
        "URI": f"/vmrest/users/{user.object_id}",
        "ObjectId": user.object_id,
        "Alias": user.alias,
        "DisplayName": user.display_name,
    }


def _message_json(message: Message) -> dict[str, Any]:
    sender: dict[str, str] = {"DisplayName": message.sender_name}
    if message.sender:
        sender["SmtpAddress"] = f"{message.sender}@cuc.example"
    body: dict[str, Any] = {
        "Subject": f"Message from {message.sender_name}",
        "Read": "true" if message.read else "false",
        "Dispatch": "false",
        "Secure": "false",
        "Priority": message.priority.removesuffix("-Priority"),
        "Sensitivity": "Normal",
        "URI": f"/vmrest/messages/0:{message.message_id}",
        "MsgId": f"0:{message.message_id}",
        "From": sender,
        "ArrivalTime": str(message.arrival_ms),
        "MsgType": message.msg_type,
        "FromSub": "true" if message.sender else "false",
    }
    if message.caller_ani:
        body["CallerId"] = {"CallerNumber": message.caller_ani}
    return body
