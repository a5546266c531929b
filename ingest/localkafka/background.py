"""A local JVM service that one command starts in the background and the next one finds again.

What `ingest broker start|stop|status` and `python -m ingest.localregistry start|stop|status`
share: the state file (a JSON dataclass) that remembers the detached JVM, `--foreground` runs
that stop on Ctrl-C or SIGTERM, and stopping by pid. Each command keeps its own arguments, state
fields and status line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import Field, asdict
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from ingest.localkafka import process

log = logging.getLogger(__name__)


class ServiceState(Protocol):
    """What a start leaves behind: a dataclass with at least these fields."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def pid(self) -> int: ...

    @property
    def address(self) -> str:
        """What `start` prints last: where clients connect."""
        ...

    @property
    def log(self) -> str: ...

    def is_alive(self) -> bool:
        """The pid runs and is this service (its command line says so), not a reused pid."""
        ...


class Service(Protocol):
    """The parts of `LocalBroker` / `LocalRegistry` the commands use."""

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def detach(self) -> int: ...

    def cleanup(self) -> None: ...


S = TypeVar("S", bound=ServiceState)
V = TypeVar("V", bound=Service)


def now() -> str:
    """`started_at` of a state: UTC, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_state(path: Path, kind: type[S]) -> S | None:
    try:
        return kind(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_state(path: Path, state: ServiceState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def running_state(path: Path, kind: type[S]) -> S | None:
    """The recorded service if it still runs."""
    state = read_state(path, kind)
    return state if state is not None and state.is_alive() else None


def start(
    path: Path,
    kind: type[S],
    make: Callable[[], V],
    state_of: Callable[[V, int], S],
    *,
    foreground: bool,
) -> int:
    """Start the service `make()` builds unless the one in `path` runs; print its address last.

    In the background the JVM outlives this process and `path` remembers it; in the foreground
    this process waits until Ctrl-C, SIGTERM or the JVM's own exit (exit 1 then).
    """
    state = running_state(path, kind)
    if state is not None:
        log.info("already running (pid %d, log %s)", state.pid, state.log)
        print(state.address)
        return 0
    service = make()
    if foreground:
        try:
            return asyncio.run(_run_foreground(service, path, state_of))
        finally:
            path.unlink(missing_ok=True)
    asyncio.run(service.start())
    state = state_of(service, service.detach())
    write_state(path, state)
    log.info("running in the background (pid %d); log %s", state.pid, state.log)
    print(state.address)
    return 0


async def _run_foreground(service: V, path: Path, state_of: Callable[[V, int], S]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        state = state_of(service, service.pid or 0)
        write_state(path, state)
        print(state.address, flush=True)
        while service.running and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        crashed = not service.running
        if crashed:
            log.error("the JVM exited on its own; see %s", state.log)
    finally:
        await service.stop()
        service.cleanup()
    return 1 if crashed else 0


def stop(path: Path, kind: type[S], timeout: float) -> int:
    """Stop the recorded service (SIGTERM, SIGKILL after `timeout` s) and forget it."""
    state = running_state(path, kind)
    if state is None:
        path.unlink(missing_ok=True)
        print("not running")
        return 0
    clean = asyncio.run(process.terminate(state.pid, timeout))
    path.unlink(missing_ok=True)
    print(f"stopped {state.address}" + ("" if clean else " (killed after SIGTERM timed out)"))
    return 0
