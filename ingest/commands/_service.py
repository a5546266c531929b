"""What the front ends of the two long-running services share: `--config`, loading the settings
with one clear line on a mistake, the log level, the collector setting, and the exit codes
(0 stopped cleanly, 1 failed, 2 bad configuration; the projector adds 3, fenced)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ingest.errors import BrokerError, ConfigError
from ingest.ops.gc_tuning import streaming_collector

log = logging.getLogger(__name__)

EXIT_FAILED, EXIT_CONFIG = 1, 2

S = TypeVar("S")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON or TOML file of settings (same names as the environment variables, which win)",
    )


def run_service(
    config: Path | None,
    load: Callable[[Path | None], S],
    log_level: Callable[[S], str | None],
    serve: Callable[[S], Coroutine[Any, Any, int]],
) -> int:
    """Load the settings, then serve until stopped; the process's exit code."""
    try:
        settings = load(config)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    level = log_level(settings)
    if level is not None:
        logging.getLogger().setLevel(level)
    try:
        with streaming_collector():
            return asyncio.run(serve(settings))
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    except BrokerError as e:
        log.error("%s", e)
        return EXIT_FAILED
