"""The read API's OpenAPI document is a valid OpenAPI 3.1 document that names every route the
read API serves (its answers are checked against it in tests/integration/test_read_api.py)."""

from __future__ import annotations

import json

from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from ingest.ops.http import OpsServer
from ingest.settings import ReadApiSettings
from ingest.state.projection import MailboxState, Projection
from ingest.state.read_api import ReadApi, openapi_document


class NoState:
    partitions: frozenset[int] = frozenset()
    catching_up: frozenset[int] = frozenset()
    partition_count = 0

    def find(self, mailbox_id: str) -> tuple[int, MailboxState] | None:
        return None

    def projections(self) -> dict[int, Projection]:
        return {}


class TestDocument:
    """Valid OpenAPI 3.1, JSON Schema 2020-12, and in step with the routes."""

    def test_is_a_valid_openapi_3_1_document(self) -> None:
        document = json.loads(openapi_document())
        validate(document, cls=OpenAPIV31SpecValidator)
        assert document["openapi"] == "3.1.0"
        assert document["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"

    def test_names_every_route(self) -> None:
        ops = OpsServer()
        ReadApi(NoState(), ReadApiSettings(port=None, host="127.0.0.1", tokens=()), ops)
        served = {
            (route.method.lower(), route.resource.canonical)
            for route in ops.app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
        paths = json.loads(openapi_document())["paths"]
        documented = {(method, path) for path, item in paths.items() for method in item}
        ops_routes = {("get", "/metrics"), ("get", "/healthz/live"), ("get", "/healthz/ready")}
        assert served - ops_routes == documented
