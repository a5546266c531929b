"""The command line of a local development service: `fetch|start|stop|status` and the options
every service has. `ingest broker` and `ingest registry` add their own options and their fetch;
the actions themselves are in ingest/devservices/background.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ingest.devservices import background
from ingest.devservices.jvm import LocalJvm
from ingest.errors import DevServiceError


def add_arguments(
    parser: argparse.ArgumentParser,
    *,
    service: str,
    folder: str,
    timeouts: tuple[float, float],
) -> argparse.ArgumentParser:
    """`fetch|start|stop|status` with the options every service has; returns `start`'s parser.

    `folder`: the state's folder in the cache (`<cache>/<folder>/state.json`); `timeouts`: the
    default seconds to ready and to stop.
    """
    ready_timeout, stop_timeout = timeouts
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="download cache and state (default $CUMI_CACHE_DIR or ~/.cache/cumi-pipeline)",
    )
    common.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help=f"where start records the background {service} (default <cache>/{folder}/state.json)",
    )
    common.set_defaults(state_folder=folder)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "fetch", parents=[common], help=f"download the {service} into the cache (idempotent)"
    )
    start = actions.add_parser("start", parents=[common], help=f"start the {service} (background)")
    start.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops it"
    )
    start.add_argument("--timeout", type=float, default=ready_timeout, help="seconds to ready")
    stop = actions.add_parser("stop", parents=[common], help=f"stop the background {service}")
    stop.add_argument("--timeout", type=float, default=stop_timeout, help="seconds before SIGKILL")
    actions.add_parser("status", parents=[common], help="running or not (exit 0 / 1)")
    return start


def state_path(args: argparse.Namespace) -> Path:
    return background.state_path(args.cache_dir, str(args.state_folder), args.state_file)


def run(
    args: argparse.Namespace,
    *,
    fetch: Callable[[argparse.Namespace], int],
    make: Callable[[argparse.Namespace, Path], LocalJvm],
    answers: Callable[[str], bool],
) -> int:
    """Run the chosen action; a DevServiceError is one line on stderr, exit 2.

    `make(args, state_path)` builds the service `start` starts; `answers(address)` tells `status`
    whether it serves clients.
    """
    path = state_path(args)
    actions: dict[str, Callable[[], int]] = {
        "fetch": lambda: fetch(args),
        "start": lambda: background.start(
            path, lambda: make(args, path), foreground=args.foreground
        ),
        "stop": lambda: background.stop(path, args.timeout),
        "status": lambda: background.status(path, answers),
    }
    try:
        return actions[args.action]()
    except DevServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
