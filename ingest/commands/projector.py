"""`ingest projector [--config FILE]`: run the projector (the service is `ingest.projector`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from ingest.errors import BrokerError, ConfigError
from ingest.ops.gc_tuning import streaming_collector
from ingest.projector import EXIT_CONFIG, EXIT_FAILED, ProjectorSettings, serve

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
        settings = ProjectorSettings.load(config_file=args.config)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    logging.getLogger().setLevel(settings.log_level)
    try:
        with streaming_collector():
            return asyncio.run(serve(settings))
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    except BrokerError as e:
        log.error("%s", e)
        return EXIT_FAILED
