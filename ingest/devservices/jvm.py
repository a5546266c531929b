"""`LocalJvm`: one local development service in a JVM of its own, held by pid.

What the Kafka node, the schema registry and the reference CometD server share: start once ready,
idempotent `stop()` (SIGTERM, SIGKILL after a grace time), `kill()` (a crash), `restart()` on the
same ports, `detach()` (the JVM outlives this process), `async with`, and synchronous wrappers for
pytest session fixtures. `start()` spawns the command line a subclass gives, watches the JVM's
output and asks the subclass's readiness hook until it answers; a port another process took
between choosing and binding it is retried on fresh ports unless the caller pinned them.

`LocalService` is the lifecycle alone, for a service made of several JVMs (`LocalCluster`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

from ingest.devservices import process
from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

START_ATTEMPTS = 3
_POLL_S = 0.1
_FAILED_START_GRACE_S = 5.0


class PortTaken(DevServiceError):
    """Another process bound one of the chosen ports between choosing and binding it."""


class LocalService(abc.ABC):
    """The lifecycle of a local service: `start()`, `stop()`, `running` from the subclass;
    `restart()`, `async with` (start; then stop and clean up), blocking `start_sync()` /
    `stop_sync()`, a work directory (a temporary one, deleted by `cleanup()`, when none is given)
    and the port policy of `start()` (`_start_on_free_ports`)."""

    def __init__(
        self, work_dir: str | os.PathLike[str] | None, *, temp_prefix: str, ports_pinned: bool
    ) -> None:
        """`ports_pinned`: the caller chose the ports; they are never changed. Otherwise they
        are changed only until the first successful start, so `restart()` keeps them."""
        self._owns_work_dir = work_dir is None
        self._work_dir = Path(work_dir or tempfile.mkdtemp(prefix=temp_prefix)).absolute()
        self._ports_pinned = ports_pinned

    @abc.abstractmethod
    async def start(self) -> None:
        """Start and return once ready for clients. No-op when running."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop; idempotent. Keeps the work directory."""

    @property
    @abc.abstractmethod
    def running(self) -> bool: ...

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    def cleanup(self) -> None:
        """Delete the work directory if this object created it. The service must be stopped."""
        if self.running:
            raise DevServiceError(f"stop {self} before cleaning up its directory")
        if self._owns_work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    async def restart(self) -> None:
        """Stop, then start again at the same address."""
        await self.stop()
        await self.start()

    def start_sync(self) -> None:
        """`start()` for synchronous callers (a pytest session fixture)."""
        process.run_sync(self.start())

    def stop_sync(self) -> None:
        process.run_sync(self.stop())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        self.cleanup()

    async def _start_on_free_ports(
        self, launch: Callable[[], Awaitable[None]], choose_ports: Callable[[], None]
    ) -> None:
        """`launch()`; after `PortTaken` `choose_ports()` and again, unless the ports are pinned.
        A successful start pins them."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await launch()
            except PortTaken:
                if self._ports_pinned or attempt == START_ATTEMPTS:
                    raise
                log.warning("a port of %s was taken meanwhile, trying others", self)
                choose_ports()
            else:
                break
        self._ports_pinned = True


class LocalJvm(LocalService):
    """A local service in one JVM on 127.0.0.1. Subclasses give:

    - `name`, `port_taken` (what the JVM prints when a port is in use);
    - `address`, `loopback_ports`, `log_path` (and `stdout_path` when the JVM logs elsewhere too),
      `identity` and `title` (for `ingest <service> status`);
    - `_prepare()` (once per start: fetch the runtime, write files), `_command()` (the command
      line of one launch), `_ready(output)` (the readiness hook) and `_choose_ports()`.
    """

    name: ClassVar[str]
    """What the service is called in log lines and errors (e.g. "Kafka")."""
    port_taken: ClassVar[str]
    """Text in the JVM's output that means a port it was given is in use."""

    def __init__(
        self,
        work_dir: str | os.PathLike[str] | None,
        *,
        temp_prefix: str,
        ready_timeout: float,
        stop_timeout: float,
        detach: bool,
        ports_pinned: bool,
    ) -> None:
        super().__init__(work_dir, temp_prefix=temp_prefix, ports_pinned=ports_pinned)
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._detach = detach
        self._pid: int | None = None

    # -- what subclasses say ----------------------------------------------------------------

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where clients connect."""

    @property
    @abc.abstractmethod
    def loopback_ports(self) -> tuple[int, ...]:
        """The loopback ports the JVM binds (0: the kernel chooses)."""

    @property
    @abc.abstractmethod
    def log_path(self) -> Path:
        """Where to look when it fails."""

    @property
    def stdout_path(self) -> Path:
        """The JVM's stdout and stderr: crashes before logging starts end up here."""
        return self.log_path

    @property
    @abc.abstractmethod
    def identity(self) -> tuple[str, ...]:
        """Parts of the JVM's command line that tell it from a process that reused its pid."""

    @property
    @abc.abstractmethod
    def title(self) -> str:
        """What runs, for a status line, e.g. "Kafka 4.1.1, data /…"."""

    @abc.abstractmethod
    async def _prepare(self) -> None:
        """Everything a start needs before the first launch (fetch, configuration files)."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The command line of one launch on the current ports (may rewrite files naming them)."""

    @abc.abstractmethod
    async def _ready(self, output: str) -> bool:
        """Whether the JVM serves clients; `output`: everything it logged since this launch."""

    @abc.abstractmethod
    def _choose_ports(self) -> None:
        """Take other free ports after `PortTaken` (only called when the ports are not pinned)."""

    def describe(self) -> str:
        """For log lines and errors, e.g. "Kafka at 127.0.0.1:40123"."""
        return f"{self.name} at {self.address}"

    def __str__(self) -> str:
        return self.describe()

    # -- what callers read ------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None and not process.exited(self._pid)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the JVM and return once `_ready()` says so. No-op when running."""
        if self.running:
            return
        await self._prepare()
        await self._start_on_free_ports(self._launch, self._choose_ports)

    async def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after `stop_timeout` s. Idempotent."""
        pid = self._pid
        if pid is None:
            return
        started = time.monotonic()
        clean = await process.terminate(pid, self._stop_timeout)
        # forgotten only now: a stop() cancelled half-way leaves the pid for the next stop()
        self._pid = None
        if clean:
            log.info("%s stopped in %.1f s", self.describe(), time.monotonic() - started)
        else:
            log.warning(
                "%s ignored SIGTERM for %.0f s: killed", self.describe(), self._stop_timeout
            )

    async def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown (Kafka recovers its logs at the next start).
        Idempotent; keeps the work directory."""
        pid = self._pid
        if pid is None:
            return
        await process.kill(pid)
        self._pid = None
        log.info("%s killed", self.describe())

    def detach(self) -> int:
        """Forget the running JVM without stopping it (it keeps running); returns its pid."""
        if self._pid is None:
            raise DevServiceError(f"{self.name} is not running")
        pid, self._pid = self._pid, None
        return pid

    # -- internals --------------------------------------------------------------------------

    async def _launch(self) -> None:
        argv = self._command()
        watched = dict.fromkeys((self.log_path, self.stdout_path))
        watchers = [process.LogWatcher(path) for path in watched]
        started = time.monotonic()
        pid = process.spawn(argv, self.stdout_path, detach=self._detach)
        self._pid = pid
        log.info("starting %s (pid %d)", self.describe(), pid)
        log.debug("command line of pid %d: %s", pid, argv)
        try:
            await self._wait_ready(pid, watchers, started + self._ready_timeout)
        except BaseException:
            await process.terminate(pid, _FAILED_START_GRACE_S)
            self._pid = None
            raise
        log.info("%s ready in %.1f s (pid %d)", self.describe(), time.monotonic() - started, pid)

    async def _wait_ready(
        self, pid: int, watchers: Sequence[process.LogWatcher], deadline: float
    ) -> None:
        output = ""
        while True:
            new = "".join(watcher.poll() for watcher in watchers)
            output += new
            if self.port_taken in new:
                line = next(x for x in new.splitlines() if self.port_taken in x)
                raise PortTaken(self._failure(f"{self._ports_text()} in use: {line}"))
            if process.exited(pid):
                raise DevServiceError(self._failure("the JVM exited while starting"))
            if await self._ready(output):
                return
            if time.monotonic() >= deadline:
                raise DevServiceError(self._failure(f"not ready after {self._ready_timeout:.0f} s"))
            await asyncio.sleep(_POLL_S)

    def _ports_text(self) -> str:
        ports = ", ".join(str(port) for port in self.loopback_ports)
        return (
            f"port {ports} is" if len(self.loopback_ports) == 1 else f"one of the ports {ports} is"
        )

    def _failure(self, what: str) -> str:
        text = f"{self.describe()}: {what}."
        for path in dict.fromkeys((self.log_path, self.stdout_path)):
            text += f"\n--- {path} (tail) ---\n{process.tail(path)}"
        return text
