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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ingest.devservices.cometd.runtime import MAIN_CLASS, WHAT, CometdRuntime, fetch, versions
from ingest.devservices.jvm import LocalJvm
from ingest.devservices.process import HOST
from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

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


class LocalCometdServer(LocalJvm):
    """The reference CometD server: `async with LocalCometdServer() as ref: … ref.cometd_url …`.

    `port`: a fixed port; by default a free one chosen by the kernel at the first start and kept
    afterwards. `log_dir`: where server.log goes (a temporary folder, removed by `cleanup()` and
    `async with`, when not given). `jvm_options` are appended to the defaults, e.g.
    `-Dorg.cometd.LEVEL=DEBUG` for CometD's debug log.
    """

    name = "the reference CometD server"
    port_taken = "Failed to bind"

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
        super().__init__(
            log_dir,
            temp_prefix="cumi-cometd-",
            ready_timeout=ready_timeout,
            stop_timeout=stop_timeout,
            detach=False,
            ports_pinned=port is not None,
        )
        self._cache_dir = cache_dir
        self._port = port
        self._jvm_options = tuple(jvm_options)
        self._runtime = runtime

    # -- what callers read ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevServiceError("the reference CometD server has no port before its first start")
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
    def address(self) -> str:
        return self.cometd_url

    @property
    def loopback_ports(self) -> tuple[int, ...]:
        return (self._port or 0,)

    @property
    def log_path(self) -> Path:
        """The JVM's stdout and stderr: Jetty's log, the ready line, crashes."""
        return self._work_dir / "server.log"

    @property
    def identity(self) -> tuple[str, ...]:
        return (MAIN_CLASS, str(self.log_path))

    @property
    def title(self) -> str:
        cometd, jetty = versions()
        return f"CometD {cometd} on Jetty {jetty}"

    def describe(self) -> str:
        # no port yet while a first start is under way
        where = self.base_url if self._port is not None else HOST
        return f"{self.name} at {where}"

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

    # -- LocalJvm's hooks (stop(): SIGTERM, Jetty closes every connection; restart(): the same
    # port, every session the server knew is gone) ------------------------------------------

    async def _prepare(self) -> None:
        if self._runtime is None:
            self._runtime = await asyncio.to_thread(fetch, self._cache_dir)
        self._work_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        if self._runtime is None:
            raise DevServiceError(f"{WHAT} is not fetched yet: start() first")
        return [
            str(self._runtime.java.path),
            *JVM_OPTIONS,
            *self._jvm_options,
            "-cp",
            self._runtime.classpath,
            MAIN_CLASS,
            "--host",
            HOST,
            "--port",
            str(self._port or 0),  # 0: the kernel chooses, the ready line tells
        ]

    async def _ready(self, output: str) -> bool:
        ready = _READY.search(output)
        if ready:
            self._port = int(ready.group(1))
        return ready is not None

    def _choose_ports(self) -> None:
        self._port = None

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
                raise DevServiceError(
                    f"the reference CometD server's hook /_ref/{name} answered "
                    f"{response.status}: {await response.text()}"
                )
            reply: dict[str, Any] = await response.json()
            return reply
