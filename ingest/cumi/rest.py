"""The CUMI REST client: `requestnotification`, the users lookup, folder resources and listings.

Unity Connection throttles REST server-wide (about 5 concurrent requests, HTTP 503 when its queue
grows, docs/design.md §3), so every request of the worker passes one semaphore
(CUMI_REST_CONCURRENCY, default 4: one slot stays free for other clients). Transient failures —
503, 429, other 5xx, timeouts, connection errors — are retried with the backoff policy
(ingest.ops.backoff), at least as long as a `Retry-After` asks, and the concurrency slot is
released while waiting. After CUMI_REST_MAX_ATTEMPTS the caller gets a `TransportError`. 401/403
raise `AuthError` at once: the credentials of that one mailbox are wrong, and retrying would only
lock the account.

The client is credential-agnostic: each call takes the `Credential` of the mailbox it acts for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import enum
import json
import logging
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ingest.cumi.credentials import Credential, MissingCredentials
from ingest.errors import AuthError, TransportError
from ingest.events import SnapshotMessage, bare_message_id
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock
from ingest.ops.metrics import (
    WORKER_REST_DURATION,
    WORKER_REST_REQUESTS,
    WORKER_REST_RETRIES,
    init_label_values,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 300.0
# the id becomes a Bayeux channel segment: no wildcards, slashes or spaces
_SUBSCRIPTION_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")


class Folder(enum.StrEnum):
    INBOX = "inbox"
    DELETED = "deleted"


class Endpoint(enum.StrEnum):
    """The metric label of a request: a closed set, never a path with ids in it."""

    REQUEST_NOTIFICATION = "requestnotification"
    USERS = "users"
    FOLDER = "folder"
    MESSAGES = "messages"


init_label_values(WORKER_REST_RETRIES, Endpoint)


class RestError(TransportError):
    """The server answered with a permanent error (4xx other than 401/403/429): not retried."""

    retriable = False

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """A folder resource: the mailbox-level USN and the folder's message count."""

    usn: int
    message_count: int | None


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """A Retry-After header (delta seconds or an HTTP date) as seconds to wait, bounded."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = (when - (now or SYSTEM_CLOCK.utc_now())).total_seconds()
    return min(max(delta, 0.0), MAX_RETRY_AFTER_SECONDS)


class CumiRestClient:
    """One aiohttp session to one CUMI server, bounded and retrying (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        concurrency: int = 4,
        timeout_seconds: float = 30.0,
        max_attempts: int = 8,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_attempts = max_attempts
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency * 2, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers={"Accept": "application/json"}
            )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> CumiRestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the CUMI operations ---------------------------------------------------------------------

    async def request_notification(self, credential: Credential) -> str:
        """POST /vmrest/mailbox?method=requestnotification → the new subscriptionId."""
        params = {"method": "requestnotification", **credential.params()}
        body = await self._request(
            Endpoint.REQUEST_NOTIFICATION, "POST", "/vmrest/mailbox", credential, params, data="{}"
        )
        return parse_subscription_id(body)

    async def lookup_object_id(self, alias: str, credential: Credential) -> str:
        """GET /vmrest/users?query=(alias is X) → the user's ObjectId (for delegate access)."""
        params = {"query": f"(alias is {alias})"}
        body = await self._request(Endpoint.USERS, "GET", "/vmrest/users", credential, params)
        for user in as_list(_json(body).get("User")):
            if isinstance(user, Mapping) and str(user.get("Alias", "")).lower() == alias.lower():
                object_id = user.get("ObjectId")
                if isinstance(object_id, str) and object_id:
                    return object_id
        raise MissingCredentials(f"no CUMI user with alias {alias!r}")

    async def folder_info(self, folder: Folder, credential: Credential) -> FolderInfo:
        """GET /vmrest/mailbox/folders/{folder} → mailbox-level USN and the message count."""
        body = await self._request(
            Endpoint.FOLDER, "GET", f"/vmrest/mailbox/folders/{folder}", credential, {}
        )
        return parse_folder(body)

    async def list_messages(
        self, folder: Folder, credential: Credential, *, page_size: int = 100
    ) -> tuple[list[SnapshotMessage], int]:
        """Every message of a folder, all pages (deduplicated); also how many pages it took.

        A page may shift while it is read (a message arriving or leaving); the caller detects that
        by the mailbox USN and lists again (see ingest.cumi.gap_repair).
        """
        messages: dict[str, SnapshotMessage] = {}
        page, total = 1, None
        path = f"/vmrest/mailbox/folders/{folder}/messages"
        while True:
            params = {"pagenumber": str(page), "rowsperpage": str(page_size), **credential.params()}
            body = await self._request(Endpoint.MESSAGES, "GET", path, credential, params)
            items, page_total = parse_message_page(body)
            total = page_total if page_total is not None else total
            for item in items:
                messages[item.message_id] = item
            seen_all = total is not None and page * page_size >= total
            if len(items) < page_size or seen_all or not items:
                return list(messages.values()), page
            page += 1

    # -- the request loop ------------------------------------------------------------------------

    async def _request(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        credential: Credential,
        params: Mapping[str, str],
        *,
        data: str | None = None,
    ) -> bytes:
        if self._session is None:
            raise TransportError("the CUMI REST client is not started")
        url = self._base + path
        headers = credential.headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        query = dict(params)
        if credential.user_object_id and "userobjectid" not in query:
            query.update(credential.params())
        failure = ""
        for attempt in range(self._max_attempts):
            wait: float | None
            async with self._slots:
                started = time.perf_counter()
                try:
                    async with self._session.request(
                        method, url, params=query, headers=headers, data=data, ssl=self._ssl
                    ) as response:
                        status = response.status
                        body = await response.read()
                        retry_after = response.headers.get("Retry-After")
                except (TimeoutError, aiohttp.ClientError) as e:
                    status, body, retry_after = 0, b"", None
                    failure = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                WORKER_REST_DURATION.labels(endpoint.value).observe(time.perf_counter() - started)
            WORKER_REST_REQUESTS.labels(endpoint.value, str(status) if status else "error").inc()
            if 200 <= status < 300:
                return body
            if status in (401, 403):
                raise AuthError(f"CUMI refused the credentials ({status}) for {endpoint.value}")
            if status and status not in RETRY_STATUSES:
                raise RestError(f"CUMI answered {status} to {endpoint.value}", status)
            if status:
                failure = f"HTTP {status}"
            wait = self._backoff.delay(attempt + 1)
            hinted = retry_after_seconds(retry_after, self._clock.utc_now())
            if hinted is not None:
                wait = max(wait, hinted)
            if attempt + 1 < self._max_attempts:
                WORKER_REST_RETRIES.labels(endpoint.value).inc()
                await self._clock.sleep(wait)
        raise TransportError(
            f"CUMI {endpoint.value} failed after {self._max_attempts} attempts: {failure}"
        )


# -- parsing (pure; unit-tested) -------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    """CUMI's JSON quirk: one element comes as an object, none as a missing key, more as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as e:
        raise RestError(f"CUMI sent a body that is not JSON ({len(body)} bytes)", 200) from e
    if not isinstance(data, dict):
        raise RestError("CUMI sent JSON that is not an object", 200)
    return data


def _int(value: Any) -> int | None:
    """CUMI JSON carries numbers as strings ("2265") as often as numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_subscription_id(body: bytes) -> str:
    """The body of requestnotification: the id as plain text, a JSON string or a small object."""
    text = body.decode("utf-8", "replace").strip()
    value: Any = text
    if text.startswith(('"', "{")):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
    if isinstance(value, dict):
        value = value.get("subscriptionId") or value.get("SubscriptionId")
    if not isinstance(value, str) or not _SUBSCRIPTION_ID.fullmatch(value):
        raise RestError("requestnotification returned no usable subscriptionId", 200)
    return value


def parse_folder(body: bytes) -> FolderInfo:
    """A folder resource, `{"USN": …, "MessageCount": …}`, possibly wrapped in {"Folder": …}."""
    data = _json(body)
    if "USN" not in data and isinstance(data.get("Folder"), dict):
        data = data["Folder"]
    usn = _int(data.get("USN"))
    if usn is None:
        raise RestError("folder resource has no USN", 200)
    return FolderInfo(usn=usn, message_count=_int(data.get("MessageCount")))


def parse_message_page(body: bytes) -> tuple[list[SnapshotMessage], int | None]:
    """One page of a folder listing → its messages and the folder's `@total`."""
    data = _json(body)
    messages = [m for item in as_list(data.get("Message")) if (m := parse_message(item))]
    return messages, _int(data.get("@total"))


def parse_message(item: Any) -> SnapshotMessage | None:
    """A listing entry; MsgId `0:<guid>` loses its prefix to match Comet's MessageId."""
    if not isinstance(item, Mapping):
        return None
    raw_id = item.get("MsgId") or item.get("MessageId")
    if not isinstance(raw_id, str) or not raw_id:
        return None
    message_id = bare_message_id(raw_id)
    arrival = _int(item.get("ArrivalTime"))
    return SnapshotMessage(
        message_id=message_id,
        read=str(item.get("Read", "false")).lower() == "true",
        arrival_time=dt.datetime.fromtimestamp(arrival / 1000, dt.UTC) if arrival else None,
        sender=_text(item.get("From"), ("SmtpAddress", "DisplayName", "Alias")),
        caller_id=_text(item.get("CallerId"), ("CallerNumber", "CallerName")),
        priority=_text(item.get("Priority"), ()),
        msg_type=_text(item.get("MsgType"), ()),
    )


def _text(value: Any, keys: tuple[str, ...]) -> str | None:
    """A string field, or the first useful string of a nested object; "null" means absent."""
    if isinstance(value, Mapping):
        for key in keys:
            found = _text(value.get(key), ())
            if found:
                return found
        return None
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value)
    return None if text in ("", "null") else text
