"""`ingest topics check|apply`: the pipeline's four topics against their documented specs
(`ingest.eventlog.provision`; the specs are `ingest.eventlog.topics.default_specs`).

    ingest topics check [--json]          # exit 0: as specified, 4: drift (each difference listed)
    ingest topics apply [--fix-configs]   # create what is missing; exit 4 if drift remains

`apply` creates missing topics and adds partitions to topics that never held a record; with
`--fix-configs` it also sets configs that differ in a way that deletes nothing. Everything else
(another partition count on a topic that holds data, another replication factor or cleanup
policy) is refused with one line saying why and what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from ingest.commands._exits import Exit, exit_code, explain
from ingest.errors import ConfigError, IngestError
from ingest.eventlog.provision import Difference, Report, apply, check, default_replication
from ingest.eventlog.topics import EVENTS_PARTITIONS, TopicNames, TopicSpec, default_specs
from ingest.settings import KafkaSettings, SettingsSource, load_kafka


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {text!r}")
    return int(text)


def _retention(text: str) -> int:
    if text.strip() != "-1" and not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be milliseconds ≥ 0 or -1 (forever), got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    checking = actions.add_parser("check", help="compare the topics with their specs")
    _common(checking)
    applying = actions.add_parser("apply", help="create missing topics, fix what is safe")
    _common(applying)
    applying.add_argument(
        "--fix-configs",
        action="store_true",
        help="also set configs that differ in a way that deletes nothing (e.g. a shorter "
        "retention than specified)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,…]",
        help="Kafka servers (default $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="settings file, as for the worker (default $CUMI_CONFIG)"
    )
    parser.add_argument(
        "--events-partitions",
        type=_positive,
        default=EVENTS_PARTITIONS,
        metavar="N",
        help=f"partitions of the events and state topics (default {EVENTS_PARTITIONS}); never "
        "change it once the events topic holds data",
    )
    parser.add_argument(
        "--replication",
        type=_positive,
        default=None,
        metavar="N",
        help="replication factor (default: the cluster's default.replication.factor)",
    )
    parser.add_argument(
        "--events-retention-ms",
        type=_retention,
        default=-1,
        metavar="MS",
        help="retention of the events topic (default -1: kept forever, replay needs it)",
    )
    parser.add_argument("--json", action="store_true", help="the report as one JSON document")


def run(args: argparse.Namespace) -> int:
    try:
        kafka = _kafka_settings(args.bootstrap, args.config)
    except ConfigError as e:
        hint = " (or pass --bootstrap)" if "KAFKA_BOOTSTRAP_SERVERS is required" in str(e) else ""
        print(f"ingest topics: {e}{hint}", file=sys.stderr)
        return Exit.USAGE
    try:
        return asyncio.run(_run(args, kafka, sys.stdout))
    except (IngestError, OSError) as e:
        print(f"ingest topics: {explain(e, kafka.bootstrap_servers)}", file=sys.stderr)
        return exit_code(e)


async def _run(args: argparse.Namespace, kafka: KafkaSettings, out: TextIO) -> int:
    client = kafka.client_kwargs()
    replication = args.replication or await default_replication(client)
    specs = specs_of(kafka, args.events_partitions, replication, args.events_retention_ms)
    if args.action == "check":
        report = await check(specs, client)
    else:
        report, fixed = await apply(specs, client, fix_configs=args.fix_configs)
        for d in fixed:
            done = "created" if d.actual is None else f"{d.item} {d.actual} → {d.wanted}"
            print(f"ingest topics: {d.topic}: {done}", file=sys.stderr)
    if args.json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        print_report(report, out)
    for d in report.differences:
        print(f"ingest topics: {d.describe()}", file=sys.stderr)
    return Exit.OK if report.in_line else Exit.DRIFT


def specs_of(
    kafka: KafkaSettings, events_partitions: int, replication: int, events_retention_ms: int
) -> list[TopicSpec]:
    """The four topics under the configured names."""
    names = TopicNames(
        events=kafka.events_topic,
        dlq=kafka.dlq_topic,
        state=kafka.state_topic,
        registry=kafka.registry_topic,
    )
    return default_specs(
        names,
        events_partitions=events_partitions,
        replication=replication,
        events_retention_ms=events_retention_ms,
    )


def print_report(report: Report, out: TextIO) -> None:
    """One row per topic: what it is, what it should be, and its status."""
    table = Table("topic", "partitions", "replication", "configs", "data", "status")
    for spec in report.specs:
        state = report.states.get(spec.name)
        differences = report.of(spec.name)
        if state is None:
            table.add_row(spec.name, "-", "-", "-", "-", "missing")
            continue
        configs = ", ".join(f"{k}={state.configs.get(k, '?')}" for k in spec.config)
        table.add_row(
            spec.name,
            _cell(str(state.partitions), "partitions", differences),
            _cell(str(state.replication), "replication", differences),
            configs,
            "yes" if state.holds_data else "no",
            _status(differences),
        )
    Console(file=out, width=200 if not out.isatty() else None).print(table)


def _cell(value: str, item: str, differences: Sequence[Difference]) -> str:
    wanted = next((d.wanted for d in differences if d.item == item), None)
    return value if wanted is None else f"{value} (wanted {wanted})"


def _status(differences: Sequence[Difference]) -> str:
    if not differences:
        return "ok"
    refused = sum(d.fix is None for d in differences)
    return f"drift: {len(differences)} ({refused} refused)" if refused else "drift: fixable"


def _kafka_settings(bootstrap: str | None, config_file: str | None) -> KafkaSettings:
    env: dict[str, Any] = dict(os.environ)
    if bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return load_kafka(SettingsSource.load(env, config_file))
