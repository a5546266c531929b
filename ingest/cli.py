"""The `ingest` command line: one sub-command per job, each implemented in its own module.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`; importing them lazily
keeps `ingest fold` from paying for aiokafka and `ingest broker` from paying for fastavro.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# sub-command → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("ingest.worker", "run an ingest worker: CUMI Comet notifications → Kafka"),
    "projector": ("ingest.projector", "run the projector: events → per-mailbox folder state"),
    "replay": ("ingest.replay", "state of mailboxes as of a past time, USN or offset"),
    "fold": ("ingest.fold", "fold raw Comet events (JSON lines) offline into folder state"),
    "simulator": ("ingest.simulator.cli", "run the CUMI simulator (REST + Bayeux)"),
    "broker": ("ingest.broker", "local development Kafka broker: fetch|start|stop|status"),
    "tail": ("ingest.tail", "decode and print records of a topic"),
    "mailboxes": ("ingest.registry", "manage the mailbox registry topic"),
    "demo": ("ingest.demo", "the whole pipeline end to end on the embedded defaults"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # sub-command not built yet
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ingest.logs import configure_logging

    configure_logging(args.log_level)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
