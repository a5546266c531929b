"""`LocalJvm`: the lifecycle `LocalBroker` and `LocalRegistry` share.

One JVM held by pid (see process.py for why not by a transport) and a directory it writes to:
idempotent `stop()`, `restart()`, `detach()`, `async with`, and synchronous wrappers for pytest
session fixtures. A subclass says how to start and where clients connect.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Self

from ingest.errors import LocalBrokerError
from ingest.localkafka import process

log = logging.getLogger(__name__)


class LocalJvm:
    """A local development service in a JVM of its own; subclasses implement `start()`."""

    name: ClassVar[str]
    """What the service is called in log lines and errors (e.g. "Kafka")."""
    error: ClassVar[type[LocalBrokerError]] = LocalBrokerError

    def __init__(
        self,
        work_dir: str | os.PathLike[str] | None,
        *,
        temp_prefix: str,
        stop_timeout: float,
        detach: bool,
    ) -> None:
        """`work_dir`: a temporary one (deleted by `cleanup()` / `async with`) when None."""
        self._owns_work_dir = work_dir is None
        self._work_dir = Path(work_dir or tempfile.mkdtemp(prefix=temp_prefix)).absolute()
        self._stop_timeout = stop_timeout
        self._detach = detach
        self._pid: int | None = None

    @property
    def address(self) -> str:
        """Where clients connect."""
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        """Where to look when it fails."""
        raise NotImplementedError

    @property
    def identity(self) -> tuple[str, ...]:
        """Parts of the JVM's command line that tell it from a process that reused its pid."""
        raise NotImplementedError

    @property
    def title(self) -> str:
        """What runs, for a status line, e.g. "Kafka 4.1.1, data /…"."""
        raise NotImplementedError

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None and not process.exited(self._pid)

    async def start(self) -> None:
        raise NotImplementedError

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
            log.info(
                "%s at %s stopped in %.1f s", self.name, self.address, time.monotonic() - started
            )
        else:
            log.warning(
                "%s at %s ignored SIGTERM for %.0f s: killed",
                self.name,
                self.address,
                self._stop_timeout,
            )

    async def restart(self) -> None:
        """Stop, then start at the same address."""
        await self.stop()
        await self.start()

    def detach(self) -> int:
        """Forget the running JVM without stopping it (it keeps running); returns its pid."""
        if self._pid is None:
            raise self.error(f"{self.name} is not running")
        pid, self._pid = self._pid, None
        return pid

    def cleanup(self) -> None:
        """Delete the work directory if this object created it. The JVM must be stopped."""
        if self.running:
            raise self.error(f"stop {self.name} before cleaning up its directory")
        if self._owns_work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)

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
