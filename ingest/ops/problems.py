"""Errors of the HTTP servers as problem details (RFC 9457, `application/problem+json`).

Every 4xx/5xx is a JSON object with `type`, `title`, `status` and `detail`, plus extension
members where the problem has more to say (the read API's unknown mailbox names its partition):
what a handler returns through `problem`, and — through `problems_middleware` — an unknown route
or method and an unexpected exception alike. `type` is `about:blank` for plain HTTP errors (the
title is then the status phrase), else `urn:cumi-pipeline:problem:<name>`, listed in the read
API's OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:cumi-pipeline:problem:"
_KEPT_HEADERS = ("Allow", "WWW-Authenticate")
"""Headers of a raised HTTP error that belong to the problem answer too."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> web.Response:
    """A problem+json answer; `kind` None is `about:blank`, titled with the status phrase."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + kind if kind else "about:blank",
        "title": (title if kind else None) or _phrase(status),
        "status": status,
        "detail": detail,
        **extensions,
    }
    return web.Response(
        body=orjson.dumps(body), status=status, content_type=CONTENT_TYPE, headers=headers
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such route, method not allowed, …) and unexpected exceptions
    as problem details; answers below 400 (a 304) pass unchanged."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {name: e.headers[name] for name in _KEPT_HEADERS if name in e.headers}
        return problem(e.status, _detail(e, request), headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, "the server failed to answer this request; its log says why")


def _detail(error: web.HTTPException, request: web.Request) -> str:
    if isinstance(error, web.HTTPNotFound):
        return f"no resource at {request.path}"
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    return error.text or _phrase(error.status)
