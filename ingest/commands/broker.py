"""`ingest broker`: the local development Kafka broker for people (`LocalBroker` and the
three-node `LocalCluster` for code and tests are in ingest.devservices.kafka).

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
import shutil
import socket
from pathlib import Path

from ingest.commands import _devservice
from ingest.devservices.kafka import LocalBroker, ensure_runtime
from ingest.devservices.kafka.node import READY_TIMEOUT_S, STOP_TIMEOUT_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timeouts = (READY_TIMEOUT_S, STOP_TIMEOUT_S)
    start = _devservice.add_arguments(
        parser, service="Kafka broker", folder="broker", timeouts=timeouts
    )
    start.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    start.add_argument(
        "--data-dir", type=Path, default=None, help="storage (default: data/ beside the state file)"
    )
    start.add_argument("--fresh", action="store_true", help="delete the data directory first")


def run(args: argparse.Namespace) -> int:
    return _devservice.run(args, fetch=_fetch, make=_broker, answers=_accepts_connections)


def _fetch(args: argparse.Namespace) -> int:
    runtime = ensure_runtime(args.cache_dir)
    jars = len(list(runtime.lib.glob("*.jar")))
    java = runtime.java.version
    print(f"Kafka {runtime.version} runtime: {jars} jars in {runtime.lib} (Java {java})")
    return 0


def _broker(args: argparse.Namespace, state_path: Path) -> LocalBroker:
    data_dir = args.data_dir or state_path.parent / "data"
    if args.fresh:
        shutil.rmtree(data_dir, ignore_errors=True)
    return LocalBroker(
        args.cache_dir, data_dir, args.port, ready_timeout=args.timeout, detach=not args.foreground
    )


def _accepts_connections(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2.0):
            return True
    except OSError:
        return False
