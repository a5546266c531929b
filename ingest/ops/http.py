"""The small HTTP server every process runs: `/metrics`, `/healthz/live`, `/healthz/ready`.

Liveness and readiness are named checks (callables returning bool); each probe answers 200 when all
of its checks pass and 503 otherwise, with a JSON body naming every check, so a failing probe says
why. Processes add their own routes (the projector's read API) with `add_routes` before `start`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Check = Callable[[], bool]


class OpsServer:
    """An aiohttp site with the metrics and health routes (plus any added)."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 9102,
        *,
        live: Mapping[str, Check] | None = None,
        ready: Mapping[str, Check] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._live = dict(live or {})
        self._ready = dict(ready or {})
        # what /metrics serves: the running process's registry (ingest.ops.metrics has one each)
        self._registry = registry if registry is not None else CollectorRegistry()
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz/live", self._probe(self._live))
        self.app.router.add_get("/healthz/ready", self._probe(self._ready))
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The bound port once started (useful with port 0)."""

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        self.app.router.add_routes(routes)

    def add_checks(
        self, *, live: Mapping[str, Check] | None = None, ready: Mapping[str, Check] | None = None
    ) -> None:
        self._live.update(live or {})
        self._ready.update(ready or {})

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # aiohttp keeps the listening socket here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info(
            "ops HTTP on %s:%s (/metrics, /healthz/live, /healthz/ready)", self._host, self.port
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(checks: Mapping[str, Check]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            results = {}
            for name, check in checks.items():
                try:
                    results[name] = bool(check())
                except Exception:  # a broken check is a failing check, not a 500
                    log.exception("health check %s raised", name)
                    results[name] = False
            ok = all(results.values())
            return web.json_response(
                {"status": "ok" if ok else "failing", "checks": results}, status=200 if ok else 503
            )

        return handler
