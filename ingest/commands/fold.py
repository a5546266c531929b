"""`ingest fold [FILE|-]`: raw Comet events, one JSON object per line, folded offline into state.

Each line is normalized exactly like the worker does it (`parse_event`; a Bayeux envelope is
fine too) and applied exactly like the projector does it (`Projection`). The final state goes to
stdout as JSON (docs/topics.md); every invalid line is reported on stderr as
`line N: <reason> (field X): <detail>` and counted, followed by a one-line summary.

Time zones default to the worker's settings (`CUMI_EVENT_TIME_ZONE`, `CUMI_SERVER_TIME_ZONE`),
else UTC; the options override them.

Exit status: 0 when the input was read to the end (invalid lines are not an error), 1 when the
input cannot be opened or read, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest.cumi.normalizer import DEFAULT_MAX_BYTES, TimeZones, parse_event
from ingest.errors import InvalidEvent
from ingest.events import Outcome, RejectReason
from ingest.state.projection import Projection


@dataclass(slots=True)
class FoldStats:
    """What a fold saw, line by line."""

    lines: int = 0
    blank: int = 0
    invalid: int = 0
    applied: int = 0
    duplicates: int = 0
    stale: int = 0

    def summary(self) -> str:
        events = self.applied + self.duplicates + self.stale
        return (
            f"fold: {self.lines} lines, {events} events ({self.applied} applied, "
            f"{self.duplicates} duplicates, {self.stale} stale), {self.invalid} invalid, "
            f"{self.blank} blank"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", nargs="?", default="-", help="JSON lines of raw Comet events; '-' (default): stdin"
    )
    parser.add_argument("--pretty", action="store_true", help="indent the JSON output")
    parser.add_argument(
        "--detail",
        action="store_true",
        help="add message info, per-message USNs, tombstones and counters to the output",
    )
    parser.add_argument(
        "--event-time-zone",
        type=_zone,
        default=os.environ.get("CUMI_EVENT_TIME_ZONE") or "UTC",
        metavar="ZONE",
        help="zone of EventTime (default: $CUMI_EVENT_TIME_ZONE or UTC)",
    )
    parser.add_argument(
        "--receive-time-zone",
        type=_zone,
        default=os.environ.get("CUMI_SERVER_TIME_ZONE") or "UTC",
        metavar="ZONE",
        help="zone of ReceiveTime, the server's zone (default: $CUMI_SERVER_TIME_ZONE or UTC)",
    )


def run(args: argparse.Namespace) -> int:
    zones = TimeZones(event_time=args.event_time_zone, receive_time=args.receive_time_zone)
    projection = Projection()
    try:
        if args.file == "-":
            stats = fold_stream(sys.stdin.buffer, projection, zones, sys.stderr)
        else:
            with open(args.file, "rb") as stream:
                stats = fold_stream(stream, projection, zones, sys.stderr)
    except OSError as e:
        print(f"ingest fold: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return 1
    output = json.dumps(
        projection.to_json(detail=args.detail),
        sort_keys=True,
        indent=2 if args.pretty else None,
        ensure_ascii=False,
    )
    sys.stdout.write(output + "\n")
    print(stats.summary(), file=sys.stderr)
    return 0


def fold_stream(
    stream: BinaryIO,
    projection: Projection,
    zones: TimeZones | None = None,
    report: TextIO | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FoldStats:
    """Apply every valid line of `stream` to `projection`; invalid lines go to `report`."""
    zones = zones or TimeZones()
    stats = FoldStats()
    for number, line in _lines(stream, max_bytes):
        stats.lines += 1
        try:
            if line is None:
                raise InvalidEvent(RejectReason.TOO_LARGE, f"line longer than {max_bytes} bytes")
            text = line.strip()
            if not text:
                stats.blank += 1
                continue
            event = parse_event(text, zones=zones, max_bytes=max_bytes)
        except InvalidEvent as e:
            stats.invalid += 1
            if report is not None:
                print(f"line {number}: {e}", file=report)
            continue
        outcome = projection.apply(event)
        if outcome is Outcome.APPLIED:
            stats.applied += 1
        elif outcome is Outcome.DUPLICATE:
            stats.duplicates += 1
        else:
            stats.stale += 1
    return stats


def _lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line), None for a line longer than `limit`, never holding more than
    `limit` bytes of one line in memory."""
    number = 0
    while line := stream.readline(limit + 1):
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the long line
                line = stream.readline(limit + 1)
            yield number, None
        else:
            yield number, line


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{name!r} is not an IANA time zone (e.g. UTC, America/Los_Angeles)"
        ) from None
