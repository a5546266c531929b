"""A local JVM service that one command starts in the background and the next one finds again.

The actions behind `ingest broker` and `ingest registry` (`fetch|start|stop|status`; their
arguments are parsed in ingest/commands/_devservice.py): the state file that remembers a detached
JVM, `start` in the background or in the foreground (until Ctrl-C, SIGTERM or the JVM's own exit),
`stop` by pid and the `status` line. These print for people: they are the commands' output.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ingest.devservices import process
from ingest.devservices.jvm import LocalJvm
from ingest.devservices.maven import cache_root

log = logging.getLogger(__name__)


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
    def of(cls, service: LocalJvm, pid: int) -> ServiceState:
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


def state_path(
    cache_dir: str | os.PathLike[str] | None, folder: str, state_file: Path | None = None
) -> Path:
    """`state_file`, else `<cache>/<folder>/state.json`."""
    return state_file if state_file is not None else cache_root(cache_dir) / folder / "state.json"


# -- actions -------------------------------------------------------------------------------------


def start(path: Path, make: Callable[[], LocalJvm], *, foreground: bool) -> int:
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


async def _run_foreground(service: LocalJvm, path: Path) -> int:
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
