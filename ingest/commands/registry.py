"""`ingest registry`: the local schema registry (Apicurio, Confluent-compatible API) for people.

    ingest registry fetch                 # the distribution from Maven Central (once)
    ingest registry start [--foreground]  # prints the Confluent-compatible base URL
    ingest registry status                # exit 0 when running, 1 when not
    ingest registry stop

A background registry is remembered in `<cache>/registry/state.json`; its output goes to
`<cache>/registry/registry.out`. Storage is in memory: a stop forgets every schema.
`LocalRegistry` for code and tests is in ingest.devservices.registry.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from pathlib import Path

from ingest.commands import _devservice
from ingest.devservices.registry import LocalRegistry, fetch
from ingest.devservices.registry.server import READY_TIMEOUT_S, STOP_TIMEOUT_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timeouts = (READY_TIMEOUT_S, STOP_TIMEOUT_S)
    start = _devservice.add_arguments(
        parser, service="schema registry", folder="registry", timeouts=timeouts
    )
    start.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")


def run(args: argparse.Namespace) -> int:
    return _devservice.run(args, fetch=_fetch, make=_registry, answers=_answers)


def _fetch(args: argparse.Namespace) -> int:
    runtime = fetch(args.cache_dir)
    java = runtime.java.version
    print(f"Apicurio Registry {runtime.version}: {runtime.runner_jar} (Java {java})")
    return 0


def _registry(args: argparse.Namespace, state_path: Path) -> LocalRegistry:
    return LocalRegistry(
        args.cache_dir,
        args.port,
        work_dir=state_path.parent,
        ready_timeout=args.timeout,
        detach=not args.foreground,
    )


def _answers(url: str) -> bool:
    """Whether the Confluent-compatible API lists its subjects."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
