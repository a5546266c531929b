"""The projector's read API, served next to /metrics and the health probes (`ingest.ops.http`).

    GET /mailboxes/{mailbox_id}        one mailbox: folders, counts, counters, last USN; 404 unknown
    GET /mailboxes?limit=100&after=ID  mailboxes sorted by id with their counts, paginated

Answers come from the instance's in-memory state: the partitions it owns, including changes
applied but not yet committed (a crash rolls them back and re-applies the same events, so what
was served is reached again). With several projector instances a mailbox is served by the one
that owns its partition; the others answer 404 with `"owned": false` and the partition.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any, Protocol

from aiohttp import web

from ingest.eventlog.topics import partition_for
from ingest.events import Folder
from ingest.state.projection import MailboxState

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class StateView(Protocol):
    """What the read API needs from the projector."""

    @property
    def partitions(self) -> Collection[int]:
        """Owned events partitions."""

    @property
    def partition_count(self) -> int:
        """Partitions of the events topic (0 while unknown)."""

    def find(self, mailbox_id: str) -> tuple[int, MailboxState] | None: ...

    def states(self) -> Iterator[tuple[int, MailboxState]]: ...


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


def routes(view: StateView) -> list[web.RouteDef]:
    async def get_mailbox(request: web.Request) -> web.Response:
        mailbox_id = request.match_info["mailbox_id"]
        found = view.find(mailbox_id)
        if found is None:
            partition = (
                partition_for(mailbox_id, view.partition_count) if view.partition_count else None
            )
            return web.json_response(
                {
                    "error": "unknown mailbox",
                    "mailbox_id": mailbox_id,
                    "partition": partition,
                    "owned": partition in view.partitions,
                },
                status=404,
            )
        return web.json_response(mailbox_body(*found))

    async def list_mailboxes(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            raise web.HTTPBadRequest(
                text=f"limit must be an integer from 1 to {MAX_LIMIT}", content_type="text/plain"
            )
        after = request.query.get("after", "")
        everything = sorted(view.states(), key=lambda item: item[1].mailbox_id)
        page = [item for item in everything if item[1].mailbox_id > after][: limit + 1]
        more = len(page) > limit
        page = page[:limit]
        return web.json_response(
            {
                "mailboxes": [
                    {
                        "mailbox_id": state.mailbox_id,
                        "partition": partition,
                        "usn": state.usn,
                        "counts": counts(state),
                    }
                    for partition, state in page
                ],
                "next": page[-1][1].mailbox_id if more else None,
                "total": len(everything),
                "partitions": sorted(view.partitions),
            }
        )

    return [
        web.get("/mailboxes", list_mailboxes),
        web.get("/mailboxes/{mailbox_id}", get_mailbox),
    ]
