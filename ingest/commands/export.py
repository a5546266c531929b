"""`ingest export`: the events topic to Parquet files for SQL (the library is `ingest.export`).

ingest export --out DIR [--bootstrap HOST:PORT] [--topic T] [--batch-records N]
ingest export --out DIR --query NAME [--as-of TIME]     # run a shipped DuckDB query
ingest export --list-queries
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ingest.commands.progress import terminal_progress
from ingest.commands.replay import parse_time
from ingest.errors import ConfigError, IngestError
from ingest.export.exporter import BATCH_RECORDS, export
from ingest.export.sql import query_names, run_query
from ingest.settings import SettingsSource, load_kafka

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, metavar="DIR", help="the export directory")
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--topic", default=None, help="events topic (default: the KAFKA_EVENTS_TOPIC setting)"
    )
    parser.add_argument(
        "--batch-records",
        type=int,
        default=BATCH_RECORDS,
        metavar="N",
        help=f"records per committed batch (default {BATCH_RECORDS:,})",
    )
    parser.add_argument("--query", metavar="NAME", help="run a shipped query on DIR instead")
    parser.add_argument(
        "--as-of", type=parse_time, metavar="TIME", help="'now' of --query (default: now)"
    )
    parser.add_argument("--list-queries", action="store_true", help="name the shipped queries")


def run(args: argparse.Namespace) -> int:
    if args.list_queries:
        print("\n".join(query_names()))
        return 0
    if args.out is None:
        log.error("--out DIR is required")
        return 2
    try:
        if args.query is not None:
            return _query(args)
        return _export(args)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    except IngestError as e:
        log.error("%s", e)
        return 1


def _export(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.bootstrap is not None:
        env["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap
    kafka = load_kafka(SettingsSource.load(env))
    client = kafka.client_kwargs()
    bootstrap = client.pop("bootstrap_servers")
    result = asyncio.run(
        export(
            bootstrap,
            args.topic or kafka.events_topic,
            args.out,
            batch_records=args.batch_records,
            progress=terminal_progress,
            schema_registry=kafka.schema_registry,
            **client,
        )
    )
    rate = result.records / result.seconds if result.seconds else 0.0
    print(
        f"exported {result.records:,} records ({result.event_rows:,} event rows, "
        f"{result.state_rows:,} end-of-day state rows, {result.skipped:,} skipped) in "
        f"{result.batches} batches, {result.seconds:.1f} s ({rate:,.0f} records/s) to {args.out}"
    )
    return 0


def _query(args: argparse.Namespace) -> int:
    as_of = args.as_of or dt.datetime.now(dt.UTC)
    rows = run_query(args.query, args.out, as_of=as_of)
    table = Table(*(rows[0].keys() if rows else ["(no rows)"]))
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None).print(table)
    return 0
