"""`ingest worker [--config FILE]`: run an ingest worker (the service is `ingest.worker`)."""

from __future__ import annotations

import argparse
import logging

from ingest.commands._service import add_config_argument, run_service
from ingest.commands.progress import terminal_progress
from ingest.settings import Settings
from ingest.worker import Worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


async def _serve(settings: Settings) -> int:
    return await Worker(settings, progress=terminal_progress).run(handle_signals=True)


def run(args: argparse.Namespace) -> int:
    # the library logs every client open/close at INFO and each failed request at WARNING
    logging.getLogger("aiocometd_ng").setLevel(logging.ERROR)
    return run_service(
        args.config,
        lambda path: Settings.load(config_file=path),
        lambda settings: settings.worker.log_level,
        _serve,
    )
