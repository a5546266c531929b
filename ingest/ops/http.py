"""The HTTP servers of the processes: `HttpListener` (one aiohttp application on one address)
and `OpsServer`, the listener every process runs: `/metrics`, `/healthz/live`, `/healthz/ready`.

Liveness and readiness are named checks (callables returning True when they pass, else False or
a one-line reason); each probe answers 200 when all of its checks pass and 503 otherwise, with a
JSON body naming every check and the reason of each failing one, so a failing probe says why.
The projector serves its read API on this listener too (`add_routes` before `start`), or on a
listener of its own (`ingest.state.read_api`). Errors are problem details (`ingest.ops.problems`).

Every listener bounds its connections (`HttpTimeouts`): aiohttp closes a connection that has no
complete request header `idle_seconds` after it opened or after its last answer — so an idle
keep-alive connection and a header sent by halves alike — and reads what is left of a request
body for at most `body_seconds` after the answer.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ingest.ops.problems import problems_middleware
from ingest.settings import DEFAULT_TIMEOUTS, HttpTimeouts

log = logging.getLogger(__name__)

Check = Callable[[], "bool | str"]
"""True: passes; False or a reason (one line): fails."""


class HttpListener:
    """`app` served on `host:port` (port 0: any free port, see `port` once started)."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        name: str,
        timeouts: HttpTimeouts = DEFAULT_TIMEOUTS,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self._host, self._port, self._name = host, port, name
        self._timeouts, self._tls = timeouts, tls
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The bound port once started (useful with port 0)."""
        self.address: str | None = None
        """The bound address once started."""

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=self._timeouts.idle_seconds,
            lingering_time=self._timeouts.body_seconds,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._tls)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # aiohttp keeps the listening socket here
        sockets = getattr(server, "sockets", None) or []
        self.address, self.port = sockets[0].getsockname()[:2] if sockets else (None, self._port)
        log.info("%s on %s://%s:%s", self._name, self.scheme, self._host, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


class OpsServer:
    """The listener with the metrics and health routes (plus any added)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9102,
        *,
        live: Mapping[str, Check] | None = None,
        ready: Mapping[str, Check] | None = None,
        registry: CollectorRegistry | None = None,
        timeouts: HttpTimeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self._live = dict(live or {})
        self._ready = dict(ready or {})
        # what /metrics serves: the running process's registry (ingest.ops.metrics has one each)
        self._registry = registry if registry is not None else CollectorRegistry()
        self.app = web.Application(middlewares=[problems_middleware])
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz/live", self._probe(self._live))
        self.app.router.add_get("/healthz/ready", self._probe(self._ready))
        self._listener = HttpListener(
            self.app,
            host,
            port,
            name="ops HTTP (/metrics, /healthz/live, /healthz/ready)",
            timeouts=timeouts,
        )

    @property
    def port(self) -> int | None:
        """The bound port once started (useful with port 0)."""
        return self._listener.port

    @property
    def address(self) -> str | None:
        """The bound address once started."""
        return self._listener.address

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        self.app.router.add_routes(routes)

    def add_checks(
        self, *, live: Mapping[str, Check] | None = None, ready: Mapping[str, Check] | None = None
    ) -> None:
        self._live.update(live or {})
        self._ready.update(ready or {})

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

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
            results: dict[str, bool] = {}
            reasons: dict[str, str] = {}
            for name, check in checks.items():
                try:
                    outcome = check()
                except Exception as e:  # a broken check is a failing check, not a 500
                    log.exception("health check %s raised", name)
                    outcome = f"the check raised {type(e).__name__}"
                results[name] = outcome is True
                if isinstance(outcome, str):
                    reasons[name] = outcome
            ok = all(results.values())
            body: dict[str, object] = {"status": "ok" if ok else "failing", "checks": results}
            if reasons:
                body["reasons"] = reasons
            return web.json_response(body, status=200 if ok else 503)

        return handler
