"""The local development Kafka broker: `LocalBroker` (and the three-node `LocalCluster`) for code
and tests, `ingest broker` for people.

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
import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import signal
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ingest.errors import LocalBrokerError
from ingest.localkafka import process
from ingest.localkafka.cluster import LocalCluster
from ingest.localkafka.node import READY_TIMEOUT_S, STOP_TIMEOUT_S, LocalBroker, ensure_runtime
from ingest.localkafka.runtime import cache_root, kafka_version

__all__ = [
    "LocalBroker",
    "LocalBrokerError",
    "LocalCluster",
    "add_arguments",
    "ensure_runtime",
    "run",
]

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
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )

    def is_alive(self) -> bool:
        # the data dir on the command line tells our broker from a process that reused the pid
        return process.runs(self.pid, _JVM_MAIN, self.data_dir)


def state_path(args: argparse.Namespace) -> Path:
    if args.state_file is not None:
        return Path(args.state_file)
    return cache_root(args.cache_dir) / "broker" / "state.json"


def read_state(path: Path) -> BrokerState | None:
    try:
        return BrokerState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_state(path: Path, state: BrokerState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


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
    state = read_state(path)
    if state is not None and state.is_alive():
        log.info("already running (pid %d, data %s)", state.pid, state.data_dir)
        print(state.bootstrap)
        return 0
    data_dir = args.data_dir or path.parent / "data"
    if args.fresh:
        shutil.rmtree(data_dir, ignore_errors=True)
    broker = LocalBroker(
        args.cache_dir,
        data_dir,
        args.port,
        ready_timeout=args.timeout,
        detach=not args.foreground,
    )
    if args.foreground:
        try:
            return asyncio.run(_run_foreground(broker, path))
        finally:
            path.unlink(missing_ok=True)
    asyncio.run(broker.start())
    write_state(path, BrokerState.of(broker, broker.detach()))
    log.info("running in the background; log %s; `ingest broker stop` stops it", broker.log_path)
    print(broker.bootstrap)
    return 0


async def _run_foreground(broker: LocalBroker, path: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with broker:
        pid = broker.pid
        if pid is not None:
            write_state(path, BrokerState.of(broker, pid))
        print(broker.bootstrap, flush=True)
        while broker.running and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        crashed = not broker.running
        if crashed:
            log.error("Kafka exited on its own; see %s", broker.log_path)
    return 1 if crashed else 0


def _stop(args: argparse.Namespace) -> int:
    path = state_path(args)
    state = read_state(path)
    if state is None or not state.is_alive():
        path.unlink(missing_ok=True)
        print("not running")
        return 0
    clean = asyncio.run(process.terminate(state.pid, args.timeout))
    path.unlink(missing_ok=True)
    print(f"stopped {state.bootstrap}" + ("" if clean else " (killed after SIGTERM timed out)"))
    return 0


def _status(args: argparse.Namespace) -> int:
    state = read_state(state_path(args))
    if state is None or not state.is_alive():
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
