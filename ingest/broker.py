"""The local development Kafka broker: `LocalBroker` for code and tests, `ingest broker` for people.

    ingest broker fetch                 # jars from Maven Central into the cache (once)
    ingest broker start [--foreground]  # prints the bootstrap address, e.g. 127.0.0.1:40123
    ingest broker status                # exit 0 when running, 1 when not
    ingest broker stop

A background broker is remembered in `<cache>/broker/state.json`; its data lives in
`<cache>/broker/data` unless `--data-dir` says otherwise and survives stop/start (`--fresh` wipes
it).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import LocalBrokerError
from ingest.localkafka import background, process
from ingest.localkafka.node import READY_TIMEOUT_S, STOP_TIMEOUT_S, LocalBroker, ensure_runtime
from ingest.localkafka.runtime import cache_root, kafka_version

__all__ = ["LocalBroker", "LocalBrokerError", "add_arguments", "ensure_runtime", "run"]

log = logging.getLogger(__name__)

_JVM_MAIN = "kafka.Kafka"


@dataclass(frozen=True, slots=True)
class BrokerState:
    """What `ingest broker start` leaves behind so `status` and `stop` find the broker."""

    pid: int
    bootstrap: str
    data_dir: str
    log: str
    kafka_version: str
    started_at: str

    @classmethod
    def of(cls, broker: LocalBroker, pid: int) -> BrokerState:
        return cls(
            pid=pid,
            bootstrap=broker.bootstrap,
            data_dir=str(broker.data_dir),
            log=str(broker.log_path),
            kafka_version=kafka_version(),
            started_at=background.now(),
        )

    @property
    def address(self) -> str:
        return self.bootstrap

    def is_alive(self) -> bool:
        # the data dir on the command line tells our broker from a process that reused the pid
        return process.runs(self.pid, _JVM_MAIN, self.data_dir)


def state_path(args: argparse.Namespace) -> Path:
    if args.state_file is not None:
        return Path(args.state_file)
    return cache_root(args.cache_dir) / "broker" / "state.json"


def read_state(path: Path) -> BrokerState | None:
    return background.read_state(path, BrokerState)


write_state = background.write_state


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="jar cache and broker state (default $CUMI_CACHE_DIR or ~/.cache/cumi-pipeline)",
    )
    common.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="where start records the background broker (default <cache>/broker/state.json)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "fetch", parents=[common], help="download the Kafka runtime into the cache (idempotent)"
    )
    start = actions.add_parser("start", parents=[common], help="start the broker (background)")
    start.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    start.add_argument(
        "--data-dir", type=Path, default=None, help="storage (default: data/ beside the state file)"
    )
    start.add_argument("--fresh", action="store_true", help="delete the data directory first")
    start.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops it"
    )
    start.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="seconds to ready")
    stop = actions.add_parser("stop", parents=[common], help="stop the background broker")
    stop.add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds before SIGKILL"
    )
    actions.add_parser("status", parents=[common], help="running or not (exit 0 / 1)")


def run(args: argparse.Namespace) -> int:
    action = {"fetch": _fetch, "start": _start, "stop": _stop, "status": _status}[args.action]
    try:
        return action(args)
    except LocalBrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _fetch(args: argparse.Namespace) -> int:
    runtime = ensure_runtime(args.cache_dir)
    jars = len(list(runtime.lib.glob("*.jar")))
    java = runtime.java.version
    print(f"Kafka {runtime.version} runtime: {jars} jars in {runtime.lib} (Java {java})")
    return 0


def _start(args: argparse.Namespace) -> int:
    path = state_path(args)

    def make() -> LocalBroker:
        data_dir = args.data_dir or path.parent / "data"
        if args.fresh:
            shutil.rmtree(data_dir, ignore_errors=True)
        return LocalBroker(
            args.cache_dir,
            data_dir,
            args.port,
            ready_timeout=args.timeout,
            detach=not args.foreground,
        )

    return background.start(path, BrokerState, make, BrokerState.of, foreground=args.foreground)


def _stop(args: argparse.Namespace) -> int:
    return background.stop(state_path(args), BrokerState, args.timeout)


def _status(args: argparse.Namespace) -> int:
    state = background.running_state(state_path(args), BrokerState)
    if state is None:
        print("not running")
        return 1
    answers = _accepts_connections(state.bootstrap)
    print(
        f"running {state.bootstrap} (Kafka {state.kafka_version}, pid {state.pid}, "
        f"since {state.started_at}, data {state.data_dir}, log {state.log})"
        + ("" if answers else " — but not accepting connections")
    )
    return 0


def _accepts_connections(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2.0):
            return True
    except OSError:
        return False
