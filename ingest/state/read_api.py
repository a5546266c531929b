"""The projector's read API (OpenAPI 3.1 document: `GET /openapi.json`, `read_api.openapi.json`).

    GET /mailboxes/{mailbox_id}        one mailbox: folders, counts, counters, last USN; 404 unknown
    GET /mailboxes?limit=100&after=ID  mailboxes sorted by id with their counts, paginated
    GET /openapi.json                  the document describing all of this

Answers come from the instance's in-memory state: the partitions it owns, including changes
applied but not yet committed (a crash rolls them back and re-applies the same events, so what
was served is reached again). With several projector instances a mailbox is served by the one
that owns its partition; the others answer 404 with `"owned": false` and the partition. A
partition the projector has handed to a catch-up worker process (far behind the log's end,
ingest.state.catchup) is not served until the worker is done: 503 (`catching-up`, Retry-After),
and its mailboxes are left out of the listing meanwhile.

- Paging is by cursor: `next` is the last id of the page, passed back as `after`. Pages come from
  a sorted index kept up to date as mailboxes appear (`ingest.state.mailbox_index`), not from a
  sort of every mailbox.
- Conditional GET: a mailbox's `ETag` is its identity and its position in the log (its USN and
  the number of its records applied: a late or repeated event changes the answer without moving
  the USN), `Last-Modified` the latest event time applied. `If-None-Match` (or, without it,
  `If-Modified-Since`) answers 304 when nothing changed.
- Errors are problem details (`ingest.ops.problems`): bad query parameters, unknown mailboxes and
  routes, refused tokens.
- Optional bearer tokens (`CUMI_READ_API_TOKEN_FILE`) guard the mailbox routes, on the ops
  listener or on a listener of its own (`CUMI_READ_API_PORT`, optionally TLS / mutual TLS), so
  `/metrics` and the probes can stay open while the read API is restricted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.helpers import ETAG_ANY

from ingest.eventlog.topics import partition_for
from ingest.events import Folder
from ingest.ops.access import BearerAuth, server_tls
from ingest.ops.http import HttpListener, OpsServer
from ingest.ops.problems import problem, problems_middleware
from ingest.settings import DEFAULT_TIMEOUTS, HttpTimeouts, ReadApiSettings
from ingest.state.mailbox_index import MailboxIndex
from ingest.state.projection import MailboxState, Projection

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID_LENGTH = 256
"""Longest `after` cursor accepted (mailbox ids are aliases or GUIDs)."""
LIST_PARAMETERS = frozenset({"limit", "after"})
OPENAPI_DOCUMENT = "read_api.openapi.json"
REALM = "cumi-read-api"


class StateView(Protocol):
    """What the read API needs from the projector."""

    @property
    def partitions(self) -> Collection[int]:
        """Owned events partitions."""

    @property
    def partition_count(self) -> int:
        """Partitions of the events topic (0 while unknown)."""

    def find(self, mailbox_id: str) -> tuple[int, MailboxState] | None: ...

    def projections(self) -> Mapping[int, Projection]:
        """Owned partition → its projection (not those catching up elsewhere)."""

    @property
    def catching_up(self) -> Collection[int]:
        """Owned partitions whose state is being folded in a catch-up worker process (the
        projector has it only once the worker is done: ingest.state.catchup)."""


def counts(state: MailboxState) -> dict[str, int]:
    """Messages per folder and how many of them are unread."""
    result = {"inbox": 0, "inbox_unread": 0, "deleted": 0, "deleted_unread": 0}
    for message in state.messages.values():
        if message.folder is Folder.GONE:
            continue
        name = "inbox" if message.folder is Folder.INBOX else "deleted"
        result[name] += 1
        if not message.read:
            result[name + "_unread"] += 1
    return result


def mailbox_body(partition: int, state: MailboxState) -> dict[str, Any]:
    """`GET /mailboxes/{id}`: the fold format with message detail, plus identity and counts."""
    body: dict[str, Any] = {"mailbox_id": state.mailbox_id, "partition": partition}
    body.update(state.to_json(detail=True))
    body["counts"] = counts(state)
    return body


def entity_tag(state: MailboxState) -> str:
    """The mailbox's identity and position in the log, unquoted. Every record of the mailbox
    counts once in one of its counters, so (USN, records) changes with every record applied —
    also one that changes the state without raising the USN (a late event of an older USN)."""
    records = state.events_applied + state.duplicates + state.stale + state.snapshots_applied
    identity = hashlib.blake2b(state.mailbox_id.encode(), digest_size=6).hexdigest()
    return f"{identity}-{state.usn}-{records}"


def last_modified(state: MailboxState, now: dt.datetime) -> dt.datetime | None:
    """The latest event time applied, never later than `now` (RFC 9110 §8.8.2.1: a clock-skewed
    event time in the future is answered as the time of the answer)."""
    if state.updated_at is None:
        return None
    return min(state.updated_at, now).replace(microsecond=0)


def not_modified(request: web.Request, etag: str, modified: dt.datetime | None) -> bool:
    """RFC 9110 §13.2.2: If-None-Match (weak comparison) decides; only without it does
    If-Modified-Since."""
    tags = request.if_none_match
    if tags is not None:
        return any(tag.value in (etag, ETAG_ANY) for tag in tags)
    since = request.if_modified_since
    return since is not None and modified is not None and modified <= since


def openapi_document() -> bytes:
    return resources.files(__package__).joinpath(OPENAPI_DOCUMENT).read_bytes()


class ReadApi:
    """The read API's routes, on the ops listener (`settings.port` None) or on their own."""

    def __init__(
        self,
        view: StateView,
        settings: ReadApiSettings,
        ops: OpsServer,
        *,
        timeouts: HttpTimeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self._view = view
        self._ops = ops
        self._auth = BearerAuth(settings.tokens, realm=REALM)
        self._index = MailboxIndex()
        self._document = openapi_document()
        self._listener: HttpListener | None = None
        if settings.port is None:
            ops.add_routes(self.routes())
            return
        tls = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            tls = server_tls(
                settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
            )
        app = web.Application(middlewares=[problems_middleware])
        app.add_routes(self.routes())
        self._listener = HttpListener(
            app, settings.host, settings.port, name="read API", timeouts=timeouts, tls=tls
        )

    @property
    def port(self) -> int | None:
        """Where the read API is served once started."""
        return self._ops.port if self._listener is None else self._listener.port

    @property
    def address(self) -> str | None:
        return self._ops.address if self._listener is None else self._listener.address

    async def start(self) -> None:
        if self._listener is not None:
            await self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def routes(self) -> list[web.RouteDef]:
        guard = self._auth.guard
        return [
            web.get("/mailboxes", guard(self._list_mailboxes)),
            web.get("/mailboxes/{mailbox_id}", guard(self._get_mailbox)),
            web.get("/openapi.json", self._openapi),
        ]

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")

    async def _get_mailbox(self, request: web.Request) -> web.StreamResponse:
        mailbox_id = request.match_info["mailbox_id"]
        found = self._view.find(mailbox_id)
        if found is None:
            return self._catching_up(mailbox_id) or self._unknown(mailbox_id)
        partition, state = found
        etag = entity_tag(state)
        modified = last_modified(state, dt.datetime.now(dt.UTC))
        response: web.StreamResponse
        if not_modified(request, etag, modified):
            response = web.Response(status=304)
        else:
            response = web.json_response(mailbox_body(partition, state))
        response.etag = etag
        if modified is not None:
            response.last_modified = modified
        # state with caller numbers: no shared cache keeps it, every use revalidates
        response.headers["Cache-Control"] = "private, no-cache"
        return response

    def _catching_up(self, mailbox_id: str) -> web.Response | None:
        count = self._view.partition_count
        partition = partition_for(mailbox_id, count) if count else None
        if partition is None or partition not in self._view.catching_up:
            return None
        return problem(
            503,
            f"partition {partition} is catching up on the log in a worker process: its state is "
            "served once it is folded",
            kind="catching-up",
            title="Catching up",
            headers={"Retry-After": "5"},
            mailbox_id=mailbox_id,
            partition=partition,
        )

    def _unknown(self, mailbox_id: str) -> web.Response:
        count = self._view.partition_count
        partition = partition_for(mailbox_id, count) if count else None
        owned = partition in self._view.partitions
        return problem(
            404,
            f"mailbox {mailbox_id} is not in this instance's state"
            + ("" if owned or partition is None else f" (partition {partition} is another's)"),
            kind="unknown-mailbox",
            title="Unknown mailbox",
            mailbox_id=mailbox_id,
            partition=partition,
            owned=owned,
        )

    async def _list_mailboxes(self, request: web.Request) -> web.Response:
        invalid = _list_parameter_errors(request)
        if invalid:
            return problem(
                400,
                "; ".join(f"{e['name']}: {e['reason']}" for e in invalid),
                kind="invalid-parameters",
                title="Invalid query parameters",
                invalid_params=invalid,
            )
        limit = int(request.query.get("limit", DEFAULT_LIMIT))
        after = request.query.get("after", "")
        projections = self._view.projections()
        self._index.sync(projections)
        page = self._index.page(after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        items = []
        for partition, mailbox_id in page:
            state = projections[partition].mailboxes[mailbox_id]
            items.append(
                {
                    "mailbox_id": mailbox_id,
                    "partition": partition,
                    "usn": state.usn,
                    "counts": counts(state),
                }
            )
        cursor = page[-1][1] if more else None
        response = web.json_response(
            {
                "mailboxes": items,
                "next": cursor,
                "total": len(self._index),
                "partitions": sorted(self._view.partitions),
            }
        )
        if cursor is not None:
            query = urlencode({"limit": limit, "after": cursor})
            response.headers["Link"] = f'<{request.path}?{query}>; rel="next"'
        return response


def _list_parameter_errors(request: web.Request) -> list[dict[str, str]]:
    """`invalid_params` of a 400 (RFC 9457 §3's example member), empty if all is well."""
    errors = [
        {"name": name, "reason": f"unknown parameter (known: {', '.join(sorted(LIST_PARAMETERS))})"}
        for name in sorted(set(request.query) - LIST_PARAMETERS)
    ]
    errors += [
        {"name": name, "reason": "given more than once"}
        for name in sorted(LIST_PARAMETERS)
        if len(request.query.getall(name, [])) > 1
    ]
    limit = request.query.get("limit", str(DEFAULT_LIMIT))
    digits = limit.isascii() and limit.isdigit() and len(limit) <= 4
    if not (digits and 1 <= int(limit) <= MAX_LIMIT):
        errors.append({"name": "limit", "reason": f"must be an integer from 1 to {MAX_LIMIT}"})
    if len(request.query.get("after", "")) > MAX_ID_LENGTH:
        errors.append({"name": "after", "reason": f"longer than {MAX_ID_LENGTH} characters"})
    return errors
