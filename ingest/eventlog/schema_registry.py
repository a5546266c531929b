"""Registry mode: our schemas in a Confluent-compatible schema registry, and ids back to schemas.

With KAFKA_SCHEMA_REGISTRY_URL set, every writer registers the schemas it writes when it starts
(`register_writers`) and frames its values in the Confluent wire format with the ids it got
(`ingest.eventlog.codec.Encoder`); readers accept both framings and resolve an id they have not
seen once (`schema_ids`). The API is the Confluent Schema Registry's REST API, which Confluent's
registry, Apicurio Registry (`/apis/ccompat/v7`) and Karapace all serve.

Subjects follow Confluent's **TopicRecordNameStrategy**, `<topic>-<record full name>` (e.g.
`mailbox-events-cumi.pipeline.MailboxEvent`): the events topic holds two record types (events and
gap-repair snapshots), which TopicNameStrategy (`<topic>-value`, one schema per topic) cannot
express. Standard serializers configured with that strategy find the same subjects.

Compatibility: a subject we create gets BACKWARD (a new schema must read the previous one's data:
consumers upgrade first, as with our own history/ schemas). A subject whose level was set to
anything else but NONE (Apicurio's unset default) keeps it. A schema the registry refuses stops
the process at start with `SchemaRefused` (a `ConfigError`: one line, exit code 2) before it has
written anything.

Ids to schemas: the bodies are written with schemas this package ships (or older/newer releases of
them), so a reader maps an id to the single-object fingerprint of the schema behind it — fetched
once per id and process, `GET /schemas/ids/{id}` — and decodes on through the codec's table.
The fetch is a plain blocking HTTP request: it happens once per schema id in a process's life, a
few times at most, and keeps every decoder a plain function. A registry that cannot be reached
raises `SchemaRegistryUnavailable` (retriable, never taken for a bad record).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ingest.errors import DecodeError, SchemaRefused, SchemaRegistryUnavailable
from ingest.eventlog import codec
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock
from ingest.settings import SchemaRegistrySettings

log = logging.getLogger(__name__)

COMPATIBILITY = "BACKWARD"
"""What our subjects get when we create them."""
_UNSET_COMPATIBILITY = "NONE"
"""What Apicurio reports for a subject without a rule (its global default)."""
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def subject_name(topic: str, record_type: type) -> str:
    """TopicRecordNameStrategy: `<topic>-<Avro full name>`."""
    full_name, _ = codec.schema_text(record_type)
    return f"{topic}-{full_name}"


class RegistryHttpError(Exception):
    """A 4xx answer of the registry: its HTTP status, Confluent error code and message."""

    def __init__(self, status: int, error_code: int | None, message: str) -> None:
        self.status = status
        self.error_code = error_code
        self.message = message
        super().__init__(f"HTTP {status}, error_code {error_code}: {message}")


class RegistryClient:
    """The few calls of the Confluent API we make; blocking (see the module docstring)."""

    def __init__(self, settings: SchemaRegistrySettings) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self._headers = {"Accept": f"{_CONTENT_TYPE}, application/json"}
        if settings.username is not None and settings.password is not None:
            pair = f"{settings.username}:{settings.password.reveal()}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        self._ssl = settings.ssl_context()

    def register(self, subject: str, schema: str) -> int:
        """The id of `schema` under `subject`, registering it as a new version if it is new."""
        answer = self._call("POST", f"/subjects/{quote(subject, safe='')}/versions", schema=schema)
        return int(answer["id"])

    def compatibility(self, subject: str) -> str | None:
        """The subject's compatibility level; None when the subject does not exist yet."""
        try:
            answer = self._call("GET", f"/config/{quote(subject, safe='')}")
        except RegistryHttpError as e:
            if e.status == 404:
                return None
            raise
        level = answer.get("compatibilityLevel") or answer.get("compatibility")
        return str(level) if level else None

    def set_compatibility(self, subject: str, level: str) -> None:
        body = json.dumps({"compatibility": level}).encode()
        self._request("PUT", f"/config/{quote(subject, safe='')}", body)

    def is_compatible(self, subject: str, schema: str) -> bool:
        """Whether `schema` could be registered under `subject` (its latest version)."""
        path = f"/compatibility/subjects/{quote(subject, safe='')}/versions/latest"
        try:
            answer = self._call("POST", path, schema=schema)
        except RegistryHttpError as e:
            if e.status == 404:  # no such subject: anything goes
                return True
            raise
        return bool(answer.get("is_compatible"))

    def schema(self, schema_id: int) -> str:
        """The schema text registered as `schema_id`."""
        return str(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])

    def _call(self, method: str, path: str, *, schema: str | None = None) -> Any:
        body = json.dumps({"schema": schema}).encode() if schema is not None else None
        return self._request(method, path, body)

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = _CONTENT_TYPE
        request = urllib.request.Request(self.url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(
                request, timeout=self.settings.timeout_seconds, context=self._ssl
            ) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise self._failure(e, method, path) from e
        except (OSError, ValueError) as e:  # refused, reset, timed out, TLS, not JSON
            raise SchemaRegistryUnavailable(
                f"schema registry {self.url} unreachable ({method} {path}): {e}"
            ) from e

    def _failure(self, e: urllib.error.HTTPError, method: str, path: str) -> Exception:
        try:
            answer = json.loads(e.read() or b"{}")
        except ValueError:
            answer = {}
        message = str(answer.get("message") or e.reason).replace("\n", " ")
        if e.code >= 500:
            return SchemaRegistryUnavailable(
                f"schema registry {self.url} failed {method} {path}: HTTP {e.code}: {message}"
            )
        if e.code in (401, 403):
            return SchemaRefused(
                f"schema registry {self.url} refused our credentials (HTTP {e.code}): check "
                "KAFKA_SCHEMA_REGISTRY_USER and KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE"
            )
        code = answer.get("error_code")
        return RegistryHttpError(e.code, int(code) if isinstance(code, int) else None, message)


# --- writers ------------------------------------------------------------------------------------


def register(client: RegistryClient, topics: Mapping[str, Sequence[type]]) -> dict[type, int]:
    """Register each record type's schema under its subject of each topic; their ids. Sets
    BACKWARD on subjects without a level. Raises `SchemaRefused` for a refused schema."""
    ids: dict[type, int] = {}
    for topic, record_types in topics.items():
        for record_type in record_types:
            full_name, text = codec.schema_text(record_type)
            subject = f"{topic}-{full_name}"
            level = client.compatibility(subject)
            if level is None or level == _UNSET_COMPATIBILITY:
                client.set_compatibility(subject, COMPATIBILITY)
            try:
                schema_id = client.register(subject, text)
            except RegistryHttpError as e:
                raise SchemaRefused(
                    f"schema registry {client.url} refused schema {full_name} for subject "
                    f"{subject!r} ({e})"
                ) from e
            if ids.setdefault(record_type, schema_id) != schema_id:
                # one id per record type is what the encoder writes; registries give one content
                # one id, so this means a registry that numbers per subject
                raise SchemaRefused(
                    f"schema registry {client.url} gave {full_name} two ids "
                    f"({ids[record_type]}, {schema_id}) under two subjects"
                )
            log.info("schema %s registered as id %d under %s", full_name, schema_id, subject)
    return ids


async def register_writers(
    settings: SchemaRegistrySettings | None,
    topics: Mapping[str, Sequence[type]],
    *,
    attempts: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    backoff: Backoff | None = None,
) -> codec.Encoder:
    """The encoder a writer of `topics` (topic → the record types it writes there) uses: single-
    object encoding without a registry; else the Confluent wire format with the ids the registry
    gave our schemas. Retries while the registry is unreachable (forever, or `attempts` times,
    then raises `SchemaRegistryUnavailable`); raises `SchemaRefused` at once for a refusal."""
    if settings is None:
        return codec.Encoder()
    client = RegistryClient(settings)
    backoff = backoff or Backoff(0.5, 10.0)
    attempt = 0
    while True:
        try:
            ids = await asyncio.to_thread(register, client, topics)
            break
        except SchemaRegistryUnavailable as e:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            delay = backoff.delay(attempt)
            log.warning("%s; retrying in %.1f s", e, delay)
            await clock.sleep(delay)
    resolver = schema_ids(settings)
    assert resolver is not None
    for record_type, schema_id in ids.items():
        resolver.learn(schema_id, codec.fingerprint(record_type))
    return codec.Encoder(ids)


# --- readers ------------------------------------------------------------------------------------


class RegistrySchemaIds:
    """Schema id → single-object fingerprint, each id fetched once (`codec.SchemaIds`)."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client
        self._fingerprints: dict[int, bytes] = {}
        self._lock = threading.Lock()  # replay decodes in threads of its own too

    def fingerprint(self, schema_id: int) -> bytes:
        fp = self._fingerprints.get(schema_id)
        if fp is None:
            with self._lock:
                fp = self._fingerprints.get(schema_id) or self._fetch(schema_id)
        return fp

    def learn(self, schema_id: int, fingerprint: bytes) -> None:
        """What a writer registered: no need to ask the registry about it."""
        self._fingerprints[schema_id] = fingerprint

    def _fetch(self, schema_id: int) -> bytes:
        try:
            text = self._client.schema(schema_id)
        except RegistryHttpError as e:
            raise DecodeError(
                f"schema id {schema_id} unknown to the schema registry {self._client.url} ({e})"
            ) from e
        try:
            schema = json.loads(text)
        except ValueError as e:
            raise DecodeError(f"schema id {schema_id} is not an Avro schema") from e
        if not isinstance(schema, dict):
            raise DecodeError(f"schema id {schema_id} is not an Avro record schema")
        # one of ours (today's, an older or a newer release): resolved into today's records
        fp = codec.register_old_schema(schema)
        log.info("schema id %d is %s (fingerprint %s)", schema_id, schema.get("name"), fp.hex())
        self._fingerprints[schema_id] = fp
        return fp


@functools.cache
def schema_ids(settings: SchemaRegistrySettings | None) -> RegistrySchemaIds | None:
    """The process's id cache for one registry; None without a registry (single-object readers
    then report Confluent-framed records as undecodable, saying what is missing)."""
    return None if settings is None else RegistrySchemaIds(RegistryClient(settings))
