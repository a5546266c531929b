"""`ingest worker [--config FILE]`: run an ingest worker (the service is `ingest.worker`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from ingest.commands.progress import terminal_progress
from ingest.errors import ConfigError
from ingest.ops.gc_tuning import streaming_collector
from ingest.settings import Settings
from ingest.worker import Worker

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON or TOML file of settings (same names as the environment variables, which win)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.load(config_file=args.config)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return 2
    if settings.worker.log_level is not None:
        logging.getLogger().setLevel(settings.worker.log_level)
    # the library logs every client open/close at INFO and each failed request at WARNING
    logging.getLogger("aiocometd_ng").setLevel(logging.ERROR)
    try:
        with streaming_collector():
            return asyncio.run(
                Worker(settings, progress=terminal_progress).run(handle_signals=True)
            )
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return 2
