"""`ingest mailboxes`: manage the mailbox registry topic (`ingest.mailboxes.registry`).

    ingest mailboxes add abell bwayne --server cuc1
    ingest mailboxes remove bwayne
    ingest mailboxes list [--json] [--all]
    ingest mailboxes import mailboxes.txt [--prune]

`import` reads the one mailbox-list format (`ingest.mailboxes.mailbox_file`). It writes only
what changes; `--prune` also removes registered mailboxes the file does not list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from aiokafka.errors import KafkaError

from ingest.commands._exits import exit_code, explain
from ingest.errors import ConfigError, IngestError
from ingest.events import MailboxRegistryEntry
from ingest.mailboxes.mailbox_file import parse_mailbox_file
from ingest.mailboxes.registry import (
    apply_changes,
    changes,
    ensure_registry_topic,
    read_registry,
)
from ingest.ops.clock import SYSTEM_CLOCK
from ingest.settings import KafkaSettings, SettingsSource, load_kafka


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,…]",
        help="Kafka servers (default $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="settings file, as for the worker (default $CUMI_CONFIG)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register mailboxes (or change their entries)")
    add.add_argument("aliases", nargs="+", metavar="MAILBOX_ID")
    _entry_options(add)
    remove = actions.add_parser("remove", help="unregister mailboxes (tombstones)")
    remove.add_argument("aliases", nargs="+", metavar="MAILBOX_ID")
    listing = actions.add_parser("list", help="print the registry")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument(
        "--all", action="store_true", help="include disabled entries (default: enabled only)"
    )
    imports = actions.add_parser("import", help="register every mailbox a file lists")
    imports.add_argument("file", type=Path, metavar="FILE")
    imports.add_argument(
        "--prune", action="store_true", help="also remove registered mailboxes the file omits"
    )
    _entry_options(imports)


def _entry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        help="Connection server whose workers watch them (their CUMI_SERVER_NAME; default "
        "$CUMI_SERVER_NAME, else any server's workers)",
    )
    parser.add_argument(
        "--credentials-ref",
        metavar="NAME",
        help="name of the secret in the workers' credentials provider (default: the mailbox id)",
    )
    parser.add_argument("--disabled", action="store_true", help="register but do not watch (yet)")


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap
    try:
        source = SettingsSource.load(env, args.config)
        kafka = load_kafka(source)
        return asyncio.run(_run(args, kafka, source.text("CUMI_SERVER_NAME"), sys.stdout))
    except ConfigError as e:
        hint = " (or pass --bootstrap)" if "KAFKA_BOOTSTRAP_SERVERS is required" in str(e) else ""
        print(f"ingest mailboxes: {e}{hint}", file=sys.stderr)
        return 2
    except (IngestError, KafkaError) as e:
        where = env.get("KAFKA_BOOTSTRAP_SERVERS")
        print(f"ingest mailboxes: {explain(e, where)}", file=sys.stderr)
        return exit_code(e)


async def _run(
    args: argparse.Namespace, kafka: KafkaSettings, default_server: str | None, out: TextIO
) -> int:
    if args.action == "list":
        registry = await read_registry(kafka)
        for alias in sorted(registry):
            entry = registry[alias]
            if entry.enabled or args.all:
                out.write(_render(entry, as_json=args.json) + "\n")
        return 0
    if args.action == "remove":
        await apply_changes(kafka, [], list(dict.fromkeys(args.aliases)))
        print(f"removed {len(set(args.aliases))} mailboxes", file=sys.stderr)
        return 0
    server = args.server if args.server is not None else default_server
    options = {"server": server, "credentials_ref": args.credentials_ref}
    if args.action == "add":
        stamp = SYSTEM_CLOCK.utc_now()
        wanted = {
            a: MailboxRegistryEntry(a, stamp, enabled=not args.disabled, **options)
            for a in args.aliases
        }
        await apply_changes(kafka, wanted.values(), [])
        print(f"registered {len(wanted)} mailboxes", file=sys.stderr)
        return 0
    wanted = parse_mailbox_file(args.file, enabled=not args.disabled, **options)
    await ensure_registry_topic(kafka)
    puts, removes = changes(await read_registry(kafka), wanted, prune=args.prune)
    await apply_changes(kafka, puts, removes)
    print(
        f"{len(wanted)} mailboxes in {args.file}: {len(puts)} written, {len(removes)} removed, "
        f"{len(wanted) - len(puts)} unchanged",
        file=sys.stderr,
    )
    return 0


def _render(entry: MailboxRegistryEntry, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {
                "mailbox_id": entry.mailbox_id,
                "server": entry.server,
                "credentials_ref": entry.credentials_ref,
                "enabled": entry.enabled,
                "updated_at": entry.updated_at.isoformat(timespec="milliseconds"),
            }
        )
    state = "enabled" if entry.enabled else "disabled"
    return (
        f"{entry.mailbox_id} {state} server={entry.server or '*'} "
        f"credentials_ref={entry.credentials_ref or '-'} "
        f"updated_at={entry.updated_at.isoformat(timespec='seconds')}"
    )
