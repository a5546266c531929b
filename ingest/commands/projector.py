"""`ingest projector [--config FILE]`: run the projector (the service is `ingest.projector`)."""

from __future__ import annotations

import argparse

from ingest.commands._service import add_config_argument, run_service
from ingest.projector import ProjectorSettings, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    return run_service(
        args.config,
        lambda path: ProjectorSettings.load(config_file=path),
        lambda settings: settings.log_level,
        serve,
    )
