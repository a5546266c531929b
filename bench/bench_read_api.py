"""Read API listing at scale: ms per `GET /mailboxes` page with 100,000 mailboxes.

The projector's read API served by its real listener on 127.0.0.1 from 12 partitions of real
`MailboxState`s (5 messages each), walked page by page (limit 100) over HTTP with keep-alive,
from the start and from deep in the list, with a mailbox appearing before every page in a second
walk (the index's incremental path). In-process, without HTTP and JSON, the same pages are
computed by the sorted index (`MailboxIndex.page`) and by what the listing did before it: a sort
of every mailbox for every page. Times are wall-clock per page: median, 90th percentile, best.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench import machine, record
from ingest.eventlog.topics import partition_for
from ingest.events import Folder
from ingest.ops.http import OpsServer
from ingest.settings import ReadApiSettings
from ingest.state.mailbox_index import MailboxIndex
from ingest.state.projection import MailboxState, MessageState, Projection
from ingest.state.read_api import ReadApi

PARTITIONS = 12


class View:
    """The projector's side of the read API over `count` generated mailboxes."""

    def __init__(self, count: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.by_partition = {n: Projection() for n in range(PARTITIONS)}
        self.partition_count = PARTITIONS
        self.catching_up: frozenset[int] = frozenset()
        for i in range(count):
            self.add(f"mbx-{rng.getrandbits(64):016x}", i)

    def add(self, mailbox_id: str, usn: int) -> None:
        state = MailboxState(mailbox_id, usn=usn)
        for j in range(5):
            state.messages[f"m{j}"] = MessageState(folder=Folder.INBOX, read=j % 2 == 0, usn=usn)
        self.by_partition[partition_for(mailbox_id, PARTITIONS)].mailboxes[mailbox_id] = state

    @property
    def partitions(self) -> set[int]:
        return set(self.by_partition)

    def find(self, mailbox_id: str) -> tuple[int, MailboxState] | None:
        for number, projection in self.by_partition.items():
            state = projection.get(mailbox_id)
            if state is not None:
                return number, state
        return None

    def projections(self) -> dict[int, Projection]:
        return dict(self.by_partition)


def summary(times_ms: list[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    return {
        "pages": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9)], 3),
        "best_ms": round(ordered[0], 3),
    }


async def walk_http(
    http: aiohttp.ClientSession, base: str, after: str, pages: int, before: Callable[[], None]
) -> list[float]:
    times = []
    for _ in range(pages):
        before()
        started = time.perf_counter()
        async with http.get(f"{base}/mailboxes", params={"limit": "100", "after": after}) as r:
            page = await r.json()
        times.append((time.perf_counter() - started) * 1000)
        after = page["next"] or ""
    return times


def resort_page(view: View, after: str, limit: int) -> list[str]:
    """What the listing did before the index: sort everything, then take the page."""
    everything = sorted(
        ((n, s) for n, p in view.by_partition.items() for s in p.mailboxes.values()),
        key=lambda item: item[1].mailbox_id,
    )
    return [s.mailbox_id for _, s in everything if s.mailbox_id > after][:limit]


def in_process(view: View, pages: int) -> dict[str, Any]:
    index = MailboxIndex()
    index.sync(view.projections())
    cursors = sorted(m for p in view.by_partition.values() for m in p.mailboxes)[::100][:pages]
    results = {}
    for name, page in (
        ("resort_every_page", lambda after: resort_page(view, after, 100)),
        ("sorted_index", lambda after: index.page(after, 100)),
    ):
        times = []
        for after in cursors:
            started = time.perf_counter()
            page(after)
            times.append((time.perf_counter() - started) * 1000)
        results[name] = summary(times)
    return results


async def over_http(view: View, pages: int) -> dict[str, Any]:
    ops = OpsServer("127.0.0.1", 0)
    api = ReadApi(view, ReadApiSettings(port=0, host="127.0.0.1", tokens=()), ops)
    await api.start()
    deep = sorted(m for p in view.by_partition.values() for m in p.mailboxes)[-pages * 100 - 1]
    counter = iter(range(10**9))
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{api.port}"
            await walk_http(http, base, "", 3, lambda: None)  # warm: the index's first build
            start = await walk_http(http, base, "", pages, lambda: None)
            deep_times = await walk_http(http, base, deep, pages, lambda: None)
            growing = await walk_http(
                http, base, "", pages, lambda: view.add(f"mbx-new-{next(counter):08d}", 1)
            )
    finally:
        await api.stop()
    return {
        "from_start": summary(start),
        "deep": summary(deep_times),
        "a_new_mailbox_before_each_page": summary(growing),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=100, help="pages per walk")
    args = parser.parse_args(argv)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    view = View(args.mailboxes)
    results: dict[str, Any] = {"mailboxes": args.mailboxes, "page_size": 100}
    results["in_process"] = in_process(view, min(args.pages, 30))
    results["http"] = asyncio.run(over_http(view, args.pages))
    results["load_average_after"] = os.getloadavg()
    for group in ("in_process", "http"):
        for name, s in results[group].items():
            print(
                f"read_api {group:10s} {name:32s} median {s['median_ms']:8.3f} ms  "
                f"p90 {s['p90_ms']:8.3f} ms  best {s['best_ms']:8.3f} ms  ({s['pages']} pages)"
            )
    path = record("read_api", results)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
