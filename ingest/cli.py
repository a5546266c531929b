"""The `ingest` command line: one sub-command per job, each in its own module.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`. Only the module of
the chosen sub-command is imported, so `ingest fold` does not pay for aiokafka nor `ingest broker`
for fastavro. A mistake ends the command with one line on stderr and an exit code of
`ingest.commands._exits.Exit` (docs/operations.md, "Exit codes"); `--log-level` is accepted before
and after the sub-command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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
    "export": ("ingest.commands.export", "the event log to Parquet files for SQL (DuckDB)"),
    "mailboxes": ("ingest.commands.mailboxes", "manage the mailbox registry topic"),
    "topics": ("ingest.commands.topics", "check the Kafka topics against their specs, or apply"),
    "demo": ("ingest.demo.runner", "the whole pipeline end to end on the embedded defaults"),
}
SERVICES = {"worker", "projector", "simulator", "demo"}
"""Long-running: the Kafka client's own log lines are theirs to show (rate-limited)."""
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_USAGE = 2  # ingest.commands._exits.Exit.USAGE, without importing aiokafka for `ingest fold`


class Parser(argparse.ArgumentParser):
    """argparse with one line per mistake: what, and where to look (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def log_level(text: str) -> str:
    """A logging level name, any case."""
    level = text.strip().upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level; use one of {', '.join(LEVELS)}"
        )
    return level


def _available(module_name: str) -> bool:
    """Whether the sub-command's module is built in, found by its file: `find_spec` would import
    its parent packages (the simulator's pulls in aiohttp: a tenth of a second on every command)."""
    path = Path(__file__).parent.joinpath(*module_name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def version() -> str:
    try:
        return importlib.metadata.version("cumi-pipeline")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare tree
        return "unknown"


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """A parser listing every built sub-command; only `chosen` gets its full arguments."""
    parser = Parser(prog="ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ingest {version()}")
    _add_log_level(parser, "INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if not _available(module_name):
            continue  # sub-command not built into this version
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(run=module.run)
            _log_level_everywhere(command_parser)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        type=log_level,
        default=default,
        metavar="LEVEL",
        help=f"logging level: {', '.join(LEVELS)} (default INFO)",
    )


def _log_level_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--log-level` after the sub-command (and its action) too; SUPPRESS keeps the value given
    before it when it is not repeated."""
    if not any("--log-level" in action.option_strings for action in parser._actions):
        _add_log_level(parser, argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _log_level_everywhere(nested)


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen_command(arguments)).parse_args(arguments)
    configure_logging(args.log_level)
    if args.command not in SERVICES and args.log_level != "DEBUG":
        # a one-shot command explains a Kafka failure in its own line; the client's lines
        # ("Unable connect to …") would only repeat it less clearly
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
