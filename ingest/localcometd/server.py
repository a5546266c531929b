"""`LocalCometdServer`: CometD's own Java server on 127.0.0.1, for conformance tests.

It runs RefCometdServer (see RefCometdServer.java: CometD 9 on Jetty 12 with CometD's default
options) from the cache `fetch()` fills, and is ready when the JVM prints its ready line. The
first start lets the kernel choose a free port; later starts reuse it, so clients that lost the
server find it again at the same URL after `restart()`. Events are injected through the server's
control hook (`publish`), which publishes them from a server-side session as an application would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ingest.errors import LocalBrokerError
from ingest.localcometd.runtime import MAIN_CLASS, CometdRuntime, fetch
from ingest.localkafka import process

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
COMETD_PATH = "/vmevents/cometd"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HOOK_TIMEOUT_S = 30.0
# small and predictable: the server holds a few thousand sessions' queues at most in the tests
JVM_OPTIONS = (
    "-Xms32m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_READY = re.compile(r"^ref-cometd ready port=(\d+)", re.M)
_BIND_FAILED = "Failed to bind"
_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class RefState:
    """What the server's hook reports."""

    sessions: int
    """Client sessions: handshaken, not disconnected and not yet expired."""
    held: int
    """Sessions whose /meta/connect the server holds right now (a long-poll in progress)."""
    channels: dict[str, int]
    """Every non-meta, non-service channel with its number of subscribers."""


class LocalCometdServer(process.LocalService):
    """The reference CometD server: `async with LocalCometdServer() as ref: … ref.cometd_url …`.

    `port`: a fixed port; by default a free one chosen by the kernel at the first start and kept
    afterwards. `log_dir`: where server.log goes (a temporary folder, removed by `cleanup()` and
    `async with`, when not given). `jvm_options` are appended to the defaults, e.g.
    `-Dorg.cometd.LEVEL=DEBUG` for CometD's debug log.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        jvm_options: Sequence[str] = (),
        ready_timeout: float = READY_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        runtime: CometdRuntime | None = None,
    ) -> None:
        self._cache_dir = cache_dir
        self._port = port
        self._owns_log_dir = log_dir is None
        self._log_dir = Path(log_dir or tempfile.mkdtemp(prefix="cumi-cometd-")).absolute()
        self._jvm_options = tuple(jvm_options)
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._runtime = runtime
        self._pid: int | None = None

    # -- what callers read ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalBrokerError("the reference CometD server has no port before its first start")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def cometd_url(self) -> str:
        """`http://127.0.0.1:<port>/vmevents/cometd`, the Bayeux endpoint."""
        return self.cometd_url_for(HOST)

    def cometd_url_for(self, host: str) -> str:
        """The Bayeux endpoint under another name for this machine, e.g. `localhost`."""
        return f"http://{host}:{self.port}{COMETD_PATH}"

    @property
    def log_path(self) -> Path:
        """The JVM's stdout and stderr: Jetty's log, the ready line, crashes."""
        return self._log_dir / "server.log"

    def describe(self) -> str:
        # no port yet while a first start is under way
        where = self.base_url if self._port is not None else HOST
        return f"the reference CometD server at {where}"

    def rss_bytes(self) -> int | None:
        """The JVM's resident memory right now, None when not running."""
        if self._pid is None:
            return None
        try:
            status = Path(f"/proc/{self._pid}/status").read_text(encoding="ascii")
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) * 1024 if match else None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the JVM and return once it serves Bayeux and the hook. No-op when running."""
        if self.running:
            return
        if self._runtime is None:
            self._runtime = await asyncio.to_thread(fetch, self._cache_dir)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        watcher = process.LogWatcher(self.log_path)
        argv = self._java(self._runtime)
        started = time.monotonic()
        self._pid = process.spawn(argv, self.log_path, detach=False)
        log.debug("starting the reference CometD server (pid %d): %s", self._pid, argv)
        try:
            port = await self._wait_ready(self._pid, watcher, started + self._ready_timeout)
        except BaseException:
            await process.terminate(self._pid, 5.0)
            self._pid = None
            raise
        self._port = port
        log.info(
            "reference CometD server ready at %s in %.1f s (pid %d)",
            self.cometd_url,
            time.monotonic() - started,
            self._pid,
        )

    # stop() (SIGTERM: Jetty closes every connection), restart() (same port; every session the
    # server knew is gone) and `async with` come from process.LocalService

    def cleanup(self) -> None:
        """Delete the log folder if this object created it. The server must be stopped."""
        if self.running:
            raise LocalBrokerError("stop the reference CometD server before cleaning up")
        if self._owns_log_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    # -- the control hook -------------------------------------------------------------------

    async def publish(self, channel: str, data: Any) -> None:
        """Publish one event on `channel` from the server side."""
        await self.publish_many([(channel, data)])

    async def publish_many(self, events: Iterable[tuple[str, Any]]) -> int:
        """Publish (channel, data) pairs in this order, in one request; returns the count."""
        body = [{"channel": channel, "data": data} for channel, data in events]
        reply = await self._hook("POST", "publish", body)
        return int(reply["published"])

    async def state(self) -> RefState:
        """Sessions, held connects and channels, as the server sees them now."""
        reply = await self._hook("GET", "state")
        return RefState(
            sessions=int(reply["sessions"]),
            held=int(reply["held"]),
            channels={str(k): int(v) for k, v in reply["channels"].items()},
        )

    async def wait_state(
        self, check: Callable[[RefState], bool], within: float = HOOK_TIMEOUT_S
    ) -> RefState:
        """Poll the hook until `check(state)` holds (TimeoutError after `within` s).

        E.g. `wait_state(lambda s: s.held == 1)`: act while the server holds a long-poll.
        """
        async with asyncio.timeout(within):
            while not check(state := await self.state()):  # noqa: ASYNC110 - another process
                await asyncio.sleep(_POLL_S)
        return state

    async def channels(self) -> dict[str, int]:
        """Every non-meta channel the server holds, with its number of subscribers."""
        return (await self.state()).channels

    async def disconnect_all(self) -> int:
        """Disconnect every client session server-side (`ServerSession.disconnect()`)."""
        reply = await self._hook("POST", "disconnect")
        return int(reply["disconnected"])

    async def _hook(self, method: str, name: str, body: Any = None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=HOOK_TIMEOUT_S)
        # a session per call: callers may come from different event loops (pytest fixtures)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(method, f"{self.base_url}/_ref/{name}", json=body) as response,
        ):
            if response.status != 200:
                raise LocalBrokerError(
                    f"the reference CometD server's hook /_ref/{name} answered "
                    f"{response.status}: {await response.text()}"
                )
            reply: dict[str, Any] = await response.json()
            return reply

    # -- internals --------------------------------------------------------------------------

    def _java(self, runtime: CometdRuntime) -> list[str]:
        return [
            str(runtime.java.path),
            *JVM_OPTIONS,
            *self._jvm_options,
            "-cp",
            runtime.classpath,
            MAIN_CLASS,
            "--host",
            HOST,
            "--port",
            str(self._port or 0),
        ]

    async def _wait_ready(self, pid: int, watcher: process.LogWatcher, deadline: float) -> int:
        """The port from the ready line; LocalBrokerError if the JVM dies or the deadline passes."""
        while True:
            new = watcher.poll()
            ready = _READY.search(new)
            if ready:
                return int(ready.group(1))
            if _BIND_FAILED in new:
                raise LocalBrokerError(self._failure(f"port {self._port} is in use"))
            if process.exited(pid):
                raise LocalBrokerError(self._failure("the JVM exited while starting"))
            if time.monotonic() >= deadline:
                raise LocalBrokerError(
                    self._failure(f"not ready after {self._ready_timeout:.0f} s")
                )
            await asyncio.sleep(_POLL_S)

    def _failure(self, what: str) -> str:
        return (
            f"reference CometD server: {what}.\n"
            f"--- {self.log_path} (tail) ---\n{process.tail(self.log_path)}"
        )
