"""Bridge mode: the Notifier publishes through another Bayeux server's publish hook.

With `SimulatorConfig.publish_hook` set, events do not go to the simulator's own Bayeux server but
to a real CometD server — the reference server of `ingest.devservices.cometd`, whose hook
`POST /_ref/publish` takes a JSON array of `{"channel", "data"}` and publishes each from a
server-side session, in order. The REST side (users, requestnotification, folders, the truth)
stays the simulator's, so the worker talks to both as it would to one Connection server.

Events are sent by one task, in publish order, in as few requests as the hook keeps up with. An
event the hook cannot take (the server is down or restarting) is lost, as it would be on a real
server, and counted (`stats.lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from ingest.simulator.stats import Counters

log = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 2_000
HOOK_TIMEOUT_S = 10.0


class PublishBridge:
    """A `Deliver` (see ingest.simulator.notifier) that forwards to a publish hook."""

    def __init__(self, hook_url: str, counters: Counters) -> None:
        self._url = hook_url
        self._counters = counters
        self._buffer: list[bytes] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.published = 0

    async def start(self) -> None:
        if self._task is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HOOK_TIMEOUT_S))
            self._task = asyncio.create_task(self._run(), name="simulator-publish-bridge")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def deliver(self, channel: str, payload: bytes) -> int:
        """Queue one encoded Bayeux message; it reaches the server's subscribers shortly."""
        self._buffer.append(payload)
        self._idle.clear()
        self._wake.set()
        self._counters.queued += 1
        return 1  # who is subscribed is the other server's business

    @property
    def pending(self) -> int:
        """Events not yet taken by the hook (queued or in the request under way)."""
        return 0 if self._idle.is_set() else max(1, len(self._buffer))

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                batch = self._buffer[:MAX_EVENTS_PER_REQUEST]
                del self._buffer[:MAX_EVENTS_PER_REQUEST]
                await self._post(batch)
            self._idle.set()

    async def _post(self, batch: list[bytes]) -> None:
        assert self._http is not None
        body = b"[" + b",".join(batch) + b"]"
        try:
            async with self._http.post(
                self._url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(
                        response.request_info, (), status=response.status
                    )
            self.published += len(batch)
            self._counters.delivered += len(batch)
        except (aiohttp.ClientError, TimeoutError) as e:
            self._counters.lost += len(batch)
            log.info("publish hook %s refused %d events (%r): lost", self._url, len(batch), e)
