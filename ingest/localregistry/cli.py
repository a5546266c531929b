"""The local schema registry's command line: `fetch|start|stop|status`, like `ingest broker`.

    python -m ingest.localregistry fetch                 # the distribution from Maven Central
    python -m ingest.localregistry start [--foreground]  # prints the Confluent-compatible base URL
    python -m ingest.localregistry status                # exit 0 when running, 1 when not
    python -m ingest.localregistry stop

A background registry is remembered in `<cache>/registry/state.json`; its output goes to
`<cache>/registry/registry.out`. Storage is in memory: a stop forgets every schema.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from pathlib import Path

from ingest.localkafka import background
from ingest.localregistry.node import READY_TIMEOUT_S, STOP_TIMEOUT_S, LocalRegistry
from ingest.localregistry.runtime import fetch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timeouts = (READY_TIMEOUT_S, STOP_TIMEOUT_S)
    start = background.add_arguments(
        parser, service="schema registry", folder="registry", timeouts=timeouts
    )
    start.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")


def run(args: argparse.Namespace) -> int:
    return background.run(args, fetch=_fetch, make=_registry, answers=_answers)


def _fetch(args: argparse.Namespace) -> int:
    runtime = fetch(args.cache_dir)
    java = runtime.java.version
    print(f"Apicurio Registry {runtime.version}: {runtime.runner_jar} (Java {java})")
    return 0


def _registry(args: argparse.Namespace, state_path: Path) -> LocalRegistry:
    detach = not args.foreground
    return LocalRegistry(
        args.cache_dir,
        args.port,
        work_dir=state_path.parent,
        ready_timeout=args.timeout,
        detach=detach,
    )


def _answers(url: str) -> bool:
    """Whether the Confluent-compatible API lists its subjects."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
