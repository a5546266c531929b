"""The `ingest` command line: one sub-command per job, each in its own module.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`. Only the module of
the chosen sub-command is imported, so `ingest fold` does not pay for aiokafka nor `ingest broker`
for fastavro.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from ingest.ops.logs import configure_logging

# sub-command → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("ingest.commands.worker", "run an ingest worker: CUMI Comet notifications → Kafka"),
    "projector": (
        "ingest.commands.projector",
        "run the projector: events → per-mailbox folder state",
    ),
    "kpis": (
        "ingest.commands.kpis",
        "run the KPI consumer: events → cumi_voicemail_* metrics",
    ),
    "replay": ("ingest.commands.replay", "state of mailboxes as of a past time, USN or offset"),
    "fold": (
        "ingest.commands.fold",
        "fold raw Comet events (JSON lines) offline into folder state",
    ),
    "simulator": ("ingest.simulator.cli", "run the CUMI simulator (REST + Bayeux)"),
    "broker": ("ingest.commands.broker", "local development Kafka broker: fetch|start|stop|status"),
    "registry": (
        "ingest.commands.registry",
        "local Confluent-compatible schema registry (Apicurio)",
    ),
    "tail": ("ingest.commands.tail", "decode and print records of a topic"),
    "mailboxes": ("ingest.commands.mailboxes", "manage the mailbox registry topic"),
    "demo": ("ingest.demo.runner", "the whole pipeline end to end on the embedded defaults"),
}


def _available(module_name: str) -> bool:
    return importlib.util.find_spec(module_name) is not None


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """A parser listing every built sub-command; only `chosen` gets its full arguments."""
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if not _available(module_name):
            continue  # sub-command not built into this version
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(run=module.run)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen_command(arguments)).parse_args(arguments)
    configure_logging(args.log_level)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
