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
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import LocalBrokerError
from ingest.localkafka import background, process
from ingest.localkafka.runtime import cache_root
from ingest.localregistry.node import READY_TIMEOUT_S, STOP_TIMEOUT_S, LocalRegistry
from ingest.localregistry.runtime import apicurio_version, fetch


@dataclass(frozen=True, slots=True)
class RegistryState:
    """What `start` leaves behind so `status` and `stop` find the registry."""

    pid: int
    url: str
    port: int
    log: str
    runner_jar: str
    apicurio_version: str
    started_at: str

    @classmethod
    def of(cls, registry: LocalRegistry, pid: int) -> RegistryState:
        return cls(
            pid=pid,
            url=registry.url,
            port=registry.port,
            log=str(registry.log_path),
            runner_jar=str(registry.runner_jar),
            apicurio_version=apicurio_version(),
            started_at=background.now(),
        )

    @property
    def address(self) -> str:
        return self.url

    def is_alive(self) -> bool:
        # the jar and port on the command line tell our registry from a process that reused the pid
        return process.runs(self.pid, self.runner_jar, f"-Dquarkus.http.port={self.port}")


def state_path(args: argparse.Namespace) -> Path:
    if args.state_file is not None:
        return Path(args.state_file)
    return cache_root(args.cache_dir) / "registry" / "state.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="distribution cache and state (default $CUMI_CACHE_DIR or ~/.cache/cumi-pipeline)",
    )
    common.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="where start records the background registry (default <cache>/registry/state.json)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "fetch", parents=[common], help="download Apicurio Registry into the cache (idempotent)"
    )
    start = actions.add_parser("start", parents=[common], help="start the registry (background)")
    start.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")
    start.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops it"
    )
    start.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="seconds to ready")
    stop = actions.add_parser("stop", parents=[common], help="stop the background registry")
    stop.add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds before SIGKILL"
    )
    actions.add_parser("status", parents=[common], help="running or not (exit 0 / 1)")


def run(args: argparse.Namespace) -> int:
    action = {"fetch": _fetch, "start": _start, "stop": _stop, "status": _status}[args.action]
    try:
        return action(args)
    except LocalBrokerError as e:  # LocalRegistryError, or the shared Java/Maven checks
        print(f"error: {e}", file=sys.stderr)
        return 2


def _fetch(args: argparse.Namespace) -> int:
    runtime = fetch(args.cache_dir)
    java = runtime.java.version
    print(f"Apicurio Registry {runtime.version}: {runtime.runner_jar} (Java {java})")
    return 0


def _start(args: argparse.Namespace) -> int:
    path = state_path(args)

    def make() -> LocalRegistry:
        return LocalRegistry(
            args.cache_dir,
            args.port,
            work_dir=path.parent,
            ready_timeout=args.timeout,
            detach=not args.foreground,
        )

    return background.start(path, RegistryState, make, RegistryState.of, foreground=args.foreground)


def _stop(args: argparse.Namespace) -> int:
    return background.stop(state_path(args), RegistryState, args.timeout)


def _status(args: argparse.Namespace) -> int:
    state = background.running_state(state_path(args), RegistryState)
    if state is None:
        print("not running")
        return 1
    print(
        f"running {state.url} (Apicurio Registry {state.apicurio_version}, pid {state.pid}, "
        f"since {state.started_at}, log {state.log})"
        + ("" if _answers(state.url) else " — but its API does not answer")
    )
    return 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
