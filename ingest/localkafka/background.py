"""A local JVM service that one command starts in the background and the next one finds again.

What `ingest broker fetch|start|stop|status` and `python -m ingest.localregistry …` share: the
common options, the state file that remembers the detached JVM, `--foreground` runs that stop on
Ctrl-C or SIGTERM, stopping by pid and the status line. Each command adds its own options and its
own fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from ingest.errors import LocalBrokerError
from ingest.localkafka import process
from ingest.localkafka.runtime import cache_root

log = logging.getLogger(__name__)


class Service(Protocol):
    """The parts of `LocalJvm` (`LocalBroker`, `LocalRegistry`) the commands use."""

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    @property
    def address(self) -> str: ...

    @property
    def log_path(self) -> Path: ...

    @property
    def identity(self) -> Sequence[str]: ...

    @property
    def title(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def detach(self) -> int: ...

    def cleanup(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What `start` leaves behind (`<cache>/<folder>/state.json`) for `status` and `stop`."""

    pid: int
    address: str
    """What `start` printed: where clients connect."""
    title: str
    """What runs, e.g. "Kafka 4.1.1, data /…"."""
    log: str
    identity: list[str]
    """Parts of the JVM's command line that tell it from a process that reused the pid."""
    started_at: str

    @classmethod
    def of(cls, service: Service, pid: int) -> ServiceState:
        return cls(
            pid=pid,
            address=service.address,
            title=service.title,
            log=str(service.log_path),
            identity=list(service.identity),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )

    def is_alive(self) -> bool:
        return process.runs(self.pid, *self.identity)


def read_state(path: Path) -> ServiceState | None:
    try:
        return ServiceState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_state(path: Path, state: ServiceState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def running_state(path: Path) -> ServiceState | None:
    """The recorded service if it still runs."""
    state = read_state(path)
    return state if state is not None and state.is_alive() else None


# -- command line --------------------------------------------------------------------------------


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
    stop_parser = actions.add_parser(
        "stop", parents=[common], help=f"stop the background {service}"
    )
    stop_parser.add_argument(
        "--timeout", type=float, default=stop_timeout, help="seconds before SIGKILL"
    )
    actions.add_parser("status", parents=[common], help="running or not (exit 0 / 1)")
    return start


def state_path(args: argparse.Namespace) -> Path:
    if args.state_file is not None:
        return Path(args.state_file)
    return cache_root(args.cache_dir) / str(args.state_folder) / "state.json"


def run(
    args: argparse.Namespace,
    *,
    fetch: Callable[[argparse.Namespace], int],
    make: Callable[[argparse.Namespace, Path], Service],
    answers: Callable[[str], bool],
) -> int:
    """Run the chosen action; a LocalBrokerError (LocalRegistryError too) is one line, exit 2.

    `make(args, state_path)` builds the service `start` starts; `answers(address)` tells `status`
    whether it serves clients.
    """
    path = state_path(args)
    actions: dict[str, Callable[[], int]] = {
        "fetch": lambda: fetch(args),
        "start": lambda: start(path, lambda: make(args, path), foreground=args.foreground),
        "stop": lambda: stop(path, args.timeout),
        "status": lambda: status(path, answers),
    }
    try:
        return actions[args.action]()
    except LocalBrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def start(path: Path, make: Callable[[], Service], *, foreground: bool) -> int:
    """Start the service `make()` builds unless the one in `path` runs; print its address last.

    In the background the JVM outlives this process and `path` remembers it; in the foreground
    this process waits until Ctrl-C, SIGTERM or the JVM's own exit (exit 1 then).
    """
    state = running_state(path)
    if state is not None:
        log.info("already running (pid %d, log %s)", state.pid, state.log)
        print(state.address)
        return 0
    service = make()
    if foreground:
        try:
            return asyncio.run(_run_foreground(service, path))
        finally:
            path.unlink(missing_ok=True)
    asyncio.run(service.start())
    state = ServiceState.of(service, service.detach())
    write_state(path, state)
    log.info("running in the background (pid %d); log %s", state.pid, state.log)
    print(state.address)
    return 0


async def _run_foreground(service: Service, path: Path) -> int:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    await service.start()
    try:
        write_state(path, ServiceState.of(service, service.pid or 0))
        print(service.address, flush=True)
        while service.running and not stop_requested.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_requested.wait(), timeout=1.0)
        crashed = not service.running
        if crashed:
            log.error("the JVM exited on its own; see %s", service.log_path)
    finally:
        await service.stop()
        service.cleanup()
    return 1 if crashed else 0


def stop(path: Path, timeout: float) -> int:
    """Stop the recorded service (SIGTERM, SIGKILL after `timeout` s) and forget it."""
    state = running_state(path)
    if state is None:
        path.unlink(missing_ok=True)
        print("not running")
        return 0
    clean = asyncio.run(process.terminate(state.pid, timeout))
    path.unlink(missing_ok=True)
    print(f"stopped {state.address}" + ("" if clean else " (killed after SIGTERM timed out)"))
    return 0


def status(path: Path, answers: Callable[[str], bool]) -> int:
    """Exit 0 and one line about the recorded service when it runs, else 1."""
    state = running_state(path)
    if state is None:
        print("not running")
        return 1
    print(
        f"running {state.address} ({state.title}, pid {state.pid}, since {state.started_at}, "
        f"log {state.log})" + ("" if answers(state.address) else " — but it does not answer")
    )
    return 0
