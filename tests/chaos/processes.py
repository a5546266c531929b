"""Pipeline processes under a supervisor, as Kubernetes runs them: `python -m ingest worker` and
`python -m ingest projector` as real children that the chaos schedule can SIGKILL.

A `Service` is restarted when it exits on its own (restartPolicy: Always, with a short growing
backoff) and each such exit is recorded; a kill by the schedule is planned, not counted. Every run
appends to one log file per service, so a run's logs can be searched for secrets afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
RESTART_BACKOFF = (0.5, 1.0, 2.0, 4.0)
"""Seconds before restarting a service that exited by itself, growing while it keeps exiting."""
STABLE_AFTER = 10.0
"""A run this long resets the backoff."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), -1 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return -1.0
    # utime and stime are fields 14 and 15 of stat(5), counted from the pid
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Exit:
    """An exit the schedule did not ask for."""

    at: float
    """Seconds since the run started."""
    code: int | None


@dataclass(slots=True)
class ServiceStats:
    starts: int = 0
    kills: int = 0
    unplanned_exits: list[Exit] = field(default_factory=list)


class Service:
    """One `python -m ingest <command>` child with its HTTP port, log file and supervisor."""

    def __init__(
        self, name: str, command: str, env: Mapping[str, str], log_path: Path, t0: float
    ) -> None:
        self.name = name
        self._command = command
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))},
            "CUMI_LOG_FORMAT": "text",
            "CUMI_METRICS_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.log_path = log_path
        self._t0 = t0
        self.port = 0
        self.stats = ServiceStats()
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._planned_down = False
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start the child (a fresh port each time) and, once, its supervisor."""
        self.port = free_port()
        env = {**self._env, "CUMI_METRICS_PORT": str(self.port)}
        with self.log_path.open("ab") as out:
            out.write(f"=== {self.name} start at +{self._elapsed():.1f} s ===\n".encode())
            out.flush()
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ingest",
                self._command,
                env=env,
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        self.stats.starts += 1
        self._started_at = time.monotonic()
        self._planned_down = False
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def kill(self) -> None:
        """SIGKILL: no drain, no flush, no goodbye. Stays down until `start`."""
        self._planned_down = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
        self.stats.kills += 1

    async def terminate(self, within: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `within` s); the exit code. Stops supervising."""
        self._closed = True
        self._planned_down = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), within)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return None
        return proc.returncode

    async def ready(self) -> bool:
        """Whether /healthz/ready answers 200 now."""
        if not self.running:
            return False
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{self.base_url}/healthz/ready", timeout=aiohttp.ClientTimeout(total=2)
                ) as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        while not await self.ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {within} s\n{self.tail()}")
            await asyncio.sleep(0.2)

    async def get_text(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.base_url + path, timeout=aiohttp.ClientTimeout(total=10)) as response,
        ):
            return response.status, await response.text()

    def usage(self) -> tuple[int, float]:
        """(lines in the log file, CPU seconds of the running child so far; -1 if none)."""
        try:
            with self.log_path.open("rb") as log_file:
                lines = sum(
                    chunk.count(b"\n") for chunk in iter(lambda: log_file.read(1 << 20), b"")
                )
        except OSError:
            lines = 0
        return lines, cpu_seconds(self._proc.pid) if self.running and self._proc else -1.0

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{text}"

    async def _supervise(self) -> None:
        failures = 0
        while not self._closed:
            await asyncio.sleep(0.2)
            proc = self._proc
            if proc is None or proc.returncode is None or self._planned_down:
                continue
            self.stats.unplanned_exits.append(Exit(self._elapsed(), proc.returncode))
            if time.monotonic() - self._started_at > STABLE_AFTER:
                failures = 0
            await asyncio.sleep(RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)])
            failures += 1
            if not self._closed and not self._planned_down:
                await self.start()

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0
