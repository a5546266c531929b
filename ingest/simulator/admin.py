"""Admin endpoints (`--admin`) to drive a simulator running in another process, e.g. from the demo.

    GET  /_sim/stats                 counters (Stats.to_json)
    GET  /_sim/truth                 ground truth, `ingest fold` format
    GET  /_sim/kpi-truth             the voicemail KPIs from the server's side (kpitruth.py);
                                     ?now=<epoch s>&thresholds=3600,14400,86400 (both optional)
    POST /_sim/scenario              {"events": N, "rate": R, "duration": S}  (all optional)
    POST /_sim/scenario/stop
    POST /_sim/emit                  {"events": N}: emit N events now, answer when done (bursts)
    POST /_sim/fault/<name>          JSON body with the fault's parameters:
         drop_connections | restart | notifier_down | notifier_up | clear
         duplicates {"ratio": 0.1} | malformed {"ratio": 0.1} | corrupt {"ratio": 0.1}
         slow {"latency": 0.5}
         storm {"duration": 5} | inject_malformed {"alias": "user0001", "kind": "not_an_object"}

They are served on the REST port without authentication: the simulator is a local development tool
bound to 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from ingest.simulator.faults import MalformedKind
from ingest.simulator.kpitruth import THRESHOLDS

if TYPE_CHECKING:
    from ingest.simulator.app import Simulator

Fault = Callable[["Simulator", dict[str, Any]], object]
T = TypeVar("T")

FAULTS: dict[str, Fault] = {
    "drop_connections": lambda sim, _: sim.drop_connections(),
    "restart": lambda sim, _: sim.restart(),
    "disconnect_sessions": lambda sim, _: sim.disconnect_sessions(),
    "notifier_down": lambda sim, _: sim.notifier_down(),
    "notifier_up": lambda sim, _: sim.notifier_up(),
    "clear": lambda sim, _: sim.clear_faults(),
    "duplicates": lambda sim, body: sim.duplicates(float(body["ratio"])),
    "malformed": lambda sim, body: sim.malformed(float(body["ratio"])),
    "corrupt": lambda sim, body: sim.corrupt(float(body["ratio"])),
    "slow": lambda sim, body: sim.slow(float(body["latency"])),
    "storm": lambda sim, body: sim.storm(float(body["duration"])),
    "inject_malformed": lambda sim, body: sim.inject_malformed(
        str(body["alias"]), MalformedKind(body["kind"]) if body.get("kind") else None
    ),
}


def add_admin_routes(app: web.Application, sim: Simulator) -> None:
    async def stats(_: web.Request) -> web.Response:
        return web.json_response(sim.stats.to_json())

    async def truth(_: web.Request) -> web.Response:
        return web.json_response(sim.truth())

    async def kpi_truth(request: web.Request) -> web.Response:
        try:
            now = float(request.query["now"]) if "now" in request.query else None
            thresholds = [float(t) for t in request.query.get("thresholds", "").split(",") if t]
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"now and thresholds are numbers: {e}") from e
        return web.json_response(sim.kpis(now, thresholds or THRESHOLDS))

    async def scenario(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            sim.run_scenario(
                events=_opt(body, "events", int),
                rate=_opt(body, "rate", float),
                duration=_opt(body, "duration", float),
            )
        except RuntimeError as e:
            raise web.HTTPConflict(text=str(e)) from e
        return web.json_response({"started": True})

    async def emit(request: web.Request) -> web.Response:
        events = _opt(await _body(request), "events", int)
        if events is None or events < 1:
            raise web.HTTPBadRequest(text="events: a positive integer is required")
        return web.json_response({"emitted": sim.emit(events)})

    async def stop_scenario(_: web.Request) -> web.Response:
        await sim.stop_scenario()
        return web.json_response({"stopped": True})

    async def fault(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FAULTS:
            raise web.HTTPNotFound(text=f"unknown fault {name}; known: {', '.join(FAULTS)}")
        body = await _body(request)
        try:
            result = FAULTS[name](sim, body)
        except (KeyError, ValueError, TypeError) as e:
            raise web.HTTPBadRequest(text=f"bad parameters for {name}: {e!r}") from e
        return web.json_response({"fault": name, "result": result})

    app.router.add_get("/_sim/stats", stats)
    app.router.add_get("/_sim/truth", truth)
    app.router.add_get("/_sim/kpi-truth", kpi_truth)
    app.router.add_post("/_sim/scenario", scenario)
    app.router.add_post("/_sim/scenario/stop", stop_scenario)
    app.router.add_post("/_sim/emit", emit)
    app.router.add_post("/_sim/fault/{name}", fault)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise web.HTTPBadRequest(text="body must be a JSON object") from e
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def _opt(body: dict[str, Any], key: str, kind: Callable[[Any], T]) -> T | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise web.HTTPBadRequest(text=f"{key}: {e}") from e
