"""The local schema registry for real: its Confluent-compatible API over plain HTTP (as a Python
writer would use it), confluent-kafka's own client and Avro serdes against it, restart, the CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from ingest.devservices.registry import LocalRegistry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENT_SCHEMA = (ROOT / "schemas" / "mailbox_event.avsc").read_text(encoding="utf-8")
INCOMPATIBLE = (ROOT / "tests/fixtures/schemas/mailbox_event.incompatible.avsc").read_text(
    encoding="utf-8"
)
CONTENT_TYPE = {"Content-Type": "application/vnd.schemaregistry.v1+json"}


class Api:
    """The Confluent Schema Registry REST API over aiohttp: (status, JSON body) per call."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method, f"{self._url}/{path}", data=data, headers=CONTENT_TYPE
        ) as response:
            return response.status, await response.json(content_type=None)

    async def register(self, subject: str, schema: str, query: str = "") -> tuple[int, Any]:
        return await self.call("POST", f"subjects/{subject}/versions{query}", {"schema": schema})


@pytest.fixture
async def api(local_registry: LocalRegistry) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield Api(session, local_registry.url)


def event() -> dict[str, Any]:
    """One MailboxEvent as the Avro serdes take and give it (timestamp-millis: aware datetimes)."""
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)
    message = {
        "message_id": "0:c9a1",
        "caller_ani": None,
        "sender": "bob",
        "msg_type": "voice",
        "priority": "normal",
        "receive_time": at,
        "receive_time_raw": "3:04:05 AM 01/02/2026",
    }
    return {
        "mailbox_id": "alice",
        "usn": 42,
        "event_type": "NEW_MESSAGE",
        "event_time": at,
        "event_time_raw": "3:04:05 AM 01/02/2026",
        "subscription_id": "sub-1",
        "display_name": "Alice",
        "messages": [message],
        "ingested_at": at,
        "source": "cuc-1",
        "unparsed": [],
    }


class TestConfluentApi:
    """What a writer registering schemas over plain HTTP meets at `/apis/ccompat/v7`."""

    async def test_ids_are_per_content_and_registering_again_is_idempotent(
        self, api: Api, fresh_subject: str
    ) -> None:
        status, first = await api.register(fresh_subject, EVENT_SCHEMA)
        assert status == 200 and isinstance(first["id"], int)
        assert await api.register(fresh_subject, EVENT_SCHEMA) == (200, first)
        # the same text under another subject (the snapshot's, say) has the same id
        assert await api.register(f"{fresh_subject}-other", EVENT_SCHEMA) == (200, first)
        status, found = await api.call(
            "POST", f"subjects/{fresh_subject}", {"schema": EVENT_SCHEMA}
        )
        assert status == 200 and (found["id"], found["version"]) == (first["id"], 1)
        status, by_id = await api.call("GET", f"schemas/ids/{first['id']}")
        assert status == 200 and json.loads(by_id["schema"]) == json.loads(EVENT_SCHEMA)

    async def test_the_same_schema_in_other_text_is_the_same_version(
        self, api: Api, fresh_subject: str
    ) -> None:
        # as in Confluent's registry (Apicurio by default compares bytes: see node.QUARKUS_OPTIONS)
        _, first = await api.register(fresh_subject, EVENT_SCHEMA)
        schema = json.loads(EVENT_SCHEMA)
        compact = json.dumps(schema, separators=(",", ":"))
        assert await api.register(fresh_subject, compact) == (200, first)
        assert await api.register(fresh_subject, json.dumps(schema, sort_keys=True)) == (200, first)
        assert await api.register(fresh_subject, compact, "?normalize=true") == (200, first)
        assert await api.call("GET", f"subjects/{fresh_subject}/versions") == (200, [1])

    async def test_backward_compatibility_refuses_a_breaking_schema_with_409(
        self, api: Api, fresh_subject: str
    ) -> None:
        # set before the first version: the rule applies from it on
        level = {"compatibility": "BACKWARD"}
        assert await api.call("PUT", f"config/{fresh_subject}", level) == (200, level)
        assert (await api.register(fresh_subject, EVENT_SCHEMA))[0] == 200
        status, config = await api.call("GET", f"config/{fresh_subject}")
        assert (status, config) == (200, {"compatibilityLevel": "BACKWARD"})

        check = f"compatibility/subjects/{fresh_subject}/versions/latest?verbose=true"
        status, verdict = await api.call("POST", check, {"schema": INCOMPATIBLE})
        assert status == 200 and verdict["is_compatible"] is False
        assert "tenant" in verdict["reason"]  # Apicurio's field: Confluent's is `messages`
        status, verdict = await api.call("POST", check, {"schema": EVENT_SCHEMA})
        assert (status, verdict["is_compatible"]) == (200, True)

        status, refused = await api.register(fresh_subject, INCOMPATIBLE)
        assert status == 409 and refused["error_code"] == 409
        assert "Incompatible" in refused["message"]
        assert await api.call("GET", f"subjects/{fresh_subject}/versions") == (200, [1])


class TestConfluentClient:
    """confluent-kafka's SchemaRegistryClient and Avro serdes, knowing nothing of this project."""

    def test_client_gets_the_schema_by_id(
        self, local_registry: LocalRegistry, fresh_subject: str
    ) -> None:
        with SchemaRegistryClient({"url": local_registry.url}) as client:
            registered = client.register_schema(fresh_subject, Schema(EVENT_SCHEMA, "AVRO"))
            fetched = client.get_schema(registered)
            latest = client.get_latest_version(fresh_subject)
        assert fetched.schema_type == "AVRO"
        assert json.loads(fetched.schema_str) == json.loads(EVENT_SCHEMA)
        assert (latest.schema_id, latest.version) == (registered, 1)

    def test_avro_round_trip_in_the_confluent_wire_format(
        self, local_registry: LocalRegistry, fresh_subject: str
    ) -> None:
        context = SerializationContext(fresh_subject.removesuffix("-value"), MessageField.VALUE)
        with SchemaRegistryClient({"url": local_registry.url}) as writer:
            expected_id = writer.register_schema(fresh_subject, Schema(EVENT_SCHEMA, "AVRO"))
            # the topic-name strategy: the subject is `<topic>-value`, registered again: same id
            data = AvroSerializer(writer, EVENT_SCHEMA)(event(), context)
        assert data is not None
        assert data[0] == 0 and int.from_bytes(data[1:5], "big") == expected_id
        # a reader with a client of its own: the schema comes from the registry, by that id
        with SchemaRegistryClient({"url": local_registry.url}) as reader:
            assert AvroDeserializer(reader)(data, context) == event()


class TestLifecycle:
    async def test_restart_keeps_the_port_and_forgets_the_schemas(self, tmp_path: Path) -> None:
        async with LocalRegistry(work_dir=tmp_path) as registry:
            url = registry.url
            async with aiohttp.ClientSession() as session:
                api = Api(session, url)
                assert (await api.register("s-value", EVENT_SCHEMA))[0] == 200
                await registry.restart()
                assert registry.url == url
                assert await api.call("GET", "subjects") == (200, [])
        assert not registry.running

    def test_cli_start_status_stop(self, local_registry: LocalRegistry, tmp_path: Path) -> None:
        # local_registry: the distribution is fetched, so this start does not race the session's
        where = ["--state-file", str(tmp_path / "state.json")]
        assert _cli("status", *where).returncode == 1
        started = _cli("start", *where)
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip().splitlines()[-1]
        try:
            assert url.startswith("http://127.0.0.1:") and url.endswith("/apis/ccompat/v7")
            assert url != local_registry.url
            with urllib.request.urlopen(f"{url}/subjects", timeout=10) as response:
                assert json.load(response) == []
            status = _cli("status", *where)
            assert status.returncode == 0 and status.stdout.startswith(f"running {url} ")
            assert "does not answer" not in status.stdout
            assert _cli("start", *where).stdout.strip() == url  # already running: the same one
        finally:
            stopped = _cli("stop", *where)
        assert (stopped.returncode, stopped.stdout.strip()) == (0, f"stopped {url}")
        assert _cli("status", *where).stdout.strip() == "not running"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", "registry", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
