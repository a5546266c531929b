"""`ingest replay`: mailbox state as of a past time, USN or offset (the library is
`ingest.state.replay`).

    ingest replay --bootstrap HOST:PORT --mailbox ID (--at TIME | --usn N | --offset P)
    ingest replay --bootstrap HOST:PORT --all [--at TIME] [--workers N|auto]   # every mailbox
    ingest replay … --format json|table
    ingest replay … --no-checkpoints    # fold from the log's beginning, not from checkpoints

Each partition starts from the projector's newest checkpoint at or before the bound
(KAFKA_CHECKPOINTS_TOPIC) and folds only the records after it; the answer is the same.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import Progress as Bar
from rich.table import Table

from ingest.errors import ConfigError, IngestError
from ingest.events import Folder
from ingest.settings import SettingsSource, load_kafka
from ingest.state.projection import Projection
from ingest.state.replay import (
    AUTO_MIN_RECORDS,
    Bound,
    Progress,
    UntilOffset,
    UntilTime,
    UntilUsn,
    replay,
)

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (zone-less = UTC) or epoch milliseconds, as an aware datetime."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        return _EPOCH + dt.timedelta(milliseconds=int(value))
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or epoch milliseconds: {text!r}"
        ) from e
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _workers(text: str) -> int | None:
    """A positive count, or `auto` (None)."""
    return None if text.strip().lower() == "auto" else _positive(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--topic", default=None, help="events topic (default: the KAFKA_EVENTS_TOPIC setting)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--mailbox", metavar="ID", help="one mailbox (reads one partition)")
    target.add_argument("--all", action="store_true", help="every mailbox (progress on a TTY)")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--at", type=parse_time, metavar="TIME", help="ISO 8601 or epoch ms")
    bound.add_argument("--usn", type=_non_negative, metavar="N", help="up to USN N (--mailbox)")
    bound.add_argument("--offset", type=_non_negative, metavar="P", help="up to offset P")
    parser.add_argument("--format", choices=("json", "table"), default="json")
    parser.add_argument(
        "--no-checkpoints",
        dest="checkpoints",
        action="store_false",
        help="fold every partition from the log's beginning instead of from the projector's "
        "newest checkpoint before the bound (KAFKA_CHECKPOINTS_TOPIC); same answer, slower",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="with --all: fold groups of partitions in N processes at once; default auto: one "
        f"per CPU from {AUTO_MIN_RECORDS:,} records to read on, else 1",
    )


def bound_of(args: argparse.Namespace) -> Bound:
    """The one bound the arguments name; `--usn`/`--offset` need `--mailbox`."""
    if args.usn is not None or args.offset is not None:
        if args.mailbox is None:
            raise ConfigError("--usn and --offset are per mailbox: give --mailbox")
        return UntilUsn(args.usn) if args.usn is not None else UntilOffset(args.offset)
    return UntilTime(args.at) if args.at is not None else None


def run(args: argparse.Namespace) -> int:
    try:
        until = bound_of(args)
        env = dict(os.environ)
        if args.bootstrap is not None:
            env["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap
        kafka = load_kafka(SettingsSource.load(env))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    client = kafka.client_kwargs()
    bootstrap = client.pop("bootstrap_servers")
    topic = args.topic or kafka.events_topic
    with ProgressDisplay(enabled=args.all) as progress:
        try:
            projection = asyncio.run(
                replay(
                    bootstrap,
                    topic,
                    args.mailbox,
                    until,
                    progress=progress,
                    workers=args.workers,
                    schema_registry=kafka.schema_registry,
                    checkpoints=kafka.checkpoints_topic if args.checkpoints else None,
                    **client,
                )
            )
        except IngestError as e:
            log.error("%s", e)
            return 2 if isinstance(e, ConfigError) else 1
    if args.mailbox is not None and projection.get(args.mailbox) is None:
        log.warning("no records of mailbox %s in %s up to that point", args.mailbox, topic)
    if args.format == "json":
        json.dump(projection.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_table(projection, sys.stdout)
    return 0


def print_table(projection: Projection, out: TextIO) -> None:
    """One row per message in Inbox or Deleted, grouped by mailbox; plain text off a TTY."""
    table = Table("mailbox", "usn", "folder", "message", "read", "msg usn", "from")
    for mailbox_id in sorted(projection.mailboxes):
        state = projection.mailboxes[mailbox_id]
        rows = sorted(
            (m.folder.value, message_id, m)
            for message_id, m in state.messages.items()
            if m.folder is not Folder.GONE
        )
        if not rows:
            table.add_row(mailbox_id, str(state.usn), "-", "(empty)", "", "", "")
        for folder, message_id, m in rows:
            sender = m.sender or m.caller_ani or ""
            table.add_row(
                mailbox_id,
                str(state.usn),
                folder,
                message_id,
                "yes" if m.read else "no",
                str(m.usn),
                sender,
            )
    Console(file=out, width=200 if not out.isatty() else None).print(table)


class ProgressDisplay:
    """A rich progress bar on a TTY (stderr), a line every 10 % otherwise; nothing if disabled."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Bar | None = None
        self._task: Any = None
        self._next_report = 0.0
        self._started = time.monotonic()

    def __enter__(self) -> Progress | None:
        if not self._enabled:
            return None
        if sys.stderr.isatty():
            self._bar = Bar(console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("replaying", total=None)
        return self._update

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
            return
        share = done / total if total else 1.0
        if share >= self._next_report:
            rate = done / max(time.monotonic() - self._started, 1e-9)
            print(f"replay: {done}/{total} records ({share:.0%}, {rate:,.0f}/s)", file=sys.stderr)
            self._next_report = min(1.0, share + 0.1) if share < 1.0 else 2.0
