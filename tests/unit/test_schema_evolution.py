"""Schema evolution policy: only BACKWARD compatible changes (docs/topics.md, "Schema evolution").

Every released version of a schema lives in `schemas/history/<file stem>.v<N>.avsc`. Today's schema
in `schemas/` must read data written with each of them through Avro schema resolution, exactly as
a consumer holding today's schema reads an old record off the log. The check writes records that
visit every enum symbol and every union branch of the old schema and reads them back with
`fastavro.schemaless_reader(fo, writer_schema, reader_schema)`; a deliberately incompatible fixture
schema and a few mutations show that the check does fail.
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from ingest.eventlog import codec
from ingest.events import (
    CheckpointChunk,
    CheckpointManifest,
    DeadLetter,
    MailboxEvent,
    MailboxRegistryEntry,
    MailboxSnapshot,
    MailboxStateRecord,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
HISTORY = SCHEMAS / "history"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"
TOPICS_DOC = SCHEMAS.parent / "docs" / "topics.md"
RELEASE_NAME = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>[1-9][0-9]*)\.avsc$")
RECORDS = 48
"""Records written per check; more than any enum's symbol count, so each symbol is visited."""

CURRENT_TYPE = {
    "cumi.pipeline.MailboxEvent": MailboxEvent,
    "cumi.pipeline.MailboxSnapshot": MailboxSnapshot,
    "cumi.pipeline.DeadLetter": DeadLetter,
    "cumi.pipeline.MailboxState": MailboxStateRecord,
    "cumi.pipeline.MailboxRegistryEntry": MailboxRegistryEntry,
    "cumi.pipeline.CheckpointManifest": CheckpointManifest,
    "cumi.pipeline.CheckpointChunk": CheckpointChunk,
}


def load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def full_name(schema: dict[str, Any]) -> str:
    name = schema["name"]
    return name if "." in name else f"{schema.get('namespace', '')}.{name}".lstrip(".")


def current_schemas() -> dict[str, Path]:
    """file stem → today's schema file."""
    return {path.stem: path for path in sorted(SCHEMAS.glob("*.avsc"))}


def releases() -> dict[str, dict[int, Path]]:
    """file stem → {version → released schema file}."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(HISTORY.glob("*.avsc")):
        match = RELEASE_NAME.match(path.name)
        if match is None:
            raise AssertionError(f"{path.name}: release files are named <stem>.v<N>.avsc")
        found.setdefault(match["stem"], {})[int(match["version"])] = path
    return found


def release_cases() -> list[Any]:
    return [
        pytest.param(stem, version, path, id=f"{stem}.v{version}")
        for stem, versions in releases().items()
        for version, path in sorted(versions.items())
    ]


# --- the check ----------------------------------------------------------------------------------

_INTS = (0, 1, -1, 2**31 - 1, -(2**31))
_LONGS = (0, 1, -1, 2**40 + 7, -(2**40), 2**63 - 1)
_MILLIS = (0, 1_700_000_000_123, 1, 4_102_444_800_000)  # up to 2100: datetimes must exist


class Covering:
    """Deterministic data for a schema: record `i` takes enum symbol `i % n`, union branch `i % n`
    and an array of `i % 3` items, so a few dozen records visit every symbol and every branch —
    an old symbol the new schema dropped cannot slip through by chance."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._named: dict[str, dict[str, Any]] = {}
        self._root = schema
        self._register(schema, schema.get("namespace", ""))

    def _register(self, schema: Any, namespace: str) -> None:
        """Index named types up front: a later field may refer to one by name."""
        if isinstance(schema, list):
            for branch in schema:
                self._register(branch, namespace)
        elif isinstance(schema, dict):
            namespace = schema.get("namespace", namespace)
            if schema["type"] in ("record", "enum", "fixed"):
                self._named[schema["name"]] = schema
                self._named[f"{namespace}.{schema['name']}"] = schema
            for field in schema.get("fields", ()):
                self._register(field["type"], namespace)
            for key in ("items", "values"):
                if key in schema:
                    self._register(schema[key], namespace)

    def records(self, count: int) -> Iterator[Any]:
        for i in range(count):
            yield self._datum(self._root, i, self._root.get("namespace", ""))

    def _datum(self, schema: Any, i: int, namespace: str) -> Any:
        if isinstance(schema, list):
            return self._datum(schema[i % len(schema)], i // len(schema), namespace)
        if isinstance(schema, str):
            return self._primitive(schema, i, namespace)
        if schema.get("logicalType") == "timestamp-millis":
            return _MILLIS[i % len(_MILLIS)]
        return self._complex(schema, i, schema.get("namespace", namespace))

    def _complex(self, schema: dict[str, Any], i: int, namespace: str) -> Any:
        match schema["type"]:
            case "record":
                fields = enumerate(schema["fields"])
                return {f["name"]: self._datum(f["type"], i + k, namespace) for k, f in fields}
            case "enum":
                return schema["symbols"][i % len(schema["symbols"])]
            case "array":
                return [self._datum(schema["items"], i + j, namespace) for j in range(i % 3)]
            case "map":
                values = schema["values"]
                return {f"k{j}": self._datum(values, i + j, namespace) for j in range(i % 3)}
            case "fixed":
                return bytes([i % 256]) * schema["size"]
            case primitive:
                return self._primitive(primitive, i, namespace)

    def _primitive(self, name: str, i: int, namespace: str) -> Any:
        values: dict[str, Any] = {
            "null": None,
            "boolean": i % 2 == 1,
            "int": _INTS[i % len(_INTS)],
            "long": _LONGS[i % len(_LONGS)],
            "float": float(i) / 4,
            "double": float(i) / 8,
            "bytes": bytes(range(i % 5)),
            "string": f"s{i}" * (i % 3),
        }
        if name in values:
            return values[name]
        named = self._named.get(name) or self._named[f"{namespace}.{name}"]
        return self._datum(named, i, namespace)


def parse(schema: dict[str, Any]) -> Any:
    # a fresh name table per schema: EventType is defined in two of our schema files
    return fastavro.parse_schema(copy.deepcopy(schema), named_schemas={})


def incompatibilities(writer: dict[str, Any], reader: dict[str, Any]) -> list[str]:
    """Why `reader` cannot read data written with `writer` (empty: it can)."""
    if full_name(writer) != full_name(reader):
        return [f"record name changed: {full_name(writer)} → {full_name(reader)}"]
    writer_parsed, reader_parsed = parse(writer), parse(reader)
    problems: list[str] = []
    seen: set[str] = set()
    for i, datum in enumerate(Covering(writer).records(RECORDS)):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, writer_parsed, datum)
        size = body.tell()
        body.seek(0)
        try:
            fastavro.schemaless_reader(body, writer_parsed, reader_parsed)
        except Exception as e:  # fastavro signals resolution failures with several types
            problem = f"{type(e).__name__}: {e}"
        else:
            problem = "" if body.tell() == size else f"read {body.tell()} of {size} bytes"
        if problem and problem not in seen:
            seen.add(problem)
            problems.append(f"record {i}: {problem}")
    return problems


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, in header byte order (independent of codec)."""
    canonical = to_parsing_canonical_form(copy.deepcopy(schema))
    return bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO"))


def single_object(schema: dict[str, Any], datum: Any) -> bytes:
    """Avro single-object encoding, computed here independently of ingest.eventlog.codec."""
    out = io.BytesIO()
    out.write(b"\xc3\x01" + schema_fingerprint(schema))
    fastavro.schemaless_writer(out, parse(schema), datum)
    return out.getvalue()


# --- the policy ---------------------------------------------------------------------------------


class TestReleases:
    """schemas/history holds every released version of every schema, well named."""

    def test_every_current_schema_has_been_released(self) -> None:
        unreleased = sorted(set(current_schemas()) - set(releases()))
        assert not unreleased, (
            f"{unreleased}: release a new schema by copying it to "
            "schemas/history/<stem>.v1.avsc (see docs/topics.md, Schema evolution)"
        )

    def test_every_release_belongs_to_a_current_schema(self) -> None:
        orphans = sorted(set(releases()) - set(current_schemas()))
        assert not orphans, f"released schemas {orphans} have no current version in schemas/"

    @pytest.mark.parametrize("stem", sorted(releases()))
    def test_versions_are_numbered_from_one_without_gaps(self, stem: str) -> None:
        versions = sorted(releases()[stem])
        assert versions == list(range(1, len(versions) + 1))

    def test_docs_list_every_release_fingerprint(self) -> None:
        text = TOPICS_DOC.read_text(encoding="utf-8")
        table = text.split("<!-- fingerprints:start -->")[1].split("<!-- fingerprints:end -->")[0]
        row = re.compile(r"^\| `(\S+)\.avsc` \| v(\d+) \| `(\S+)` \| `([0-9a-f]{16})` \|$")
        documented = {m.groups() for m in map(row.match, table.splitlines()) if m}
        released = {
            (stem, str(version), full_name(load(path)), schema_fingerprint(load(path)).hex())
            for stem, versions in releases().items()
            for version, path in versions.items()
        }
        assert documented == released, "docs/topics.md: update the fingerprint table"

    @pytest.mark.parametrize(("stem", "version", "path"), release_cases())
    def test_release_keeps_the_record_name(self, stem: str, version: int, path: Path) -> None:
        assert full_name(load(path)) == full_name(load(current_schemas()[stem]))


class TestBackwardCompatibility:
    """Today's schema reads data written with every released version of itself."""

    @pytest.mark.parametrize(("stem", "version", "path"), release_cases())
    def test_current_schema_reads_release(self, stem: str, version: int, path: Path) -> None:
        problems = incompatibilities(load(path), load(current_schemas()[stem]))
        assert not problems, (
            f"schemas/{stem}.avsc cannot read data written with v{version}: {problems[:3]}. "
            "Only BACKWARD compatible changes are allowed: add fields with defaults, add enum "
            "symbols at the end, widen types (int→long, float→double)."
        )


class TestTheCheckFails:
    """The compatibility check rejects incompatible changes and accepts compatible ones."""

    def test_incompatible_fixture_is_rejected(self) -> None:
        old = load(HISTORY / "mailbox_event.v1.avsc")
        problems = incompatibilities(old, load(FIXTURES / "mailbox_event.incompatible.avsc"))
        assert problems
        assert "tenant" in problems[0]

    @staticmethod
    def _event_schema() -> dict[str, Any]:
        return load(SCHEMAS / "mailbox_event.avsc")

    @staticmethod
    def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
        field: dict[str, Any] = next(f for f in schema["fields"] if f["name"] == name)
        return field

    def test_dropping_an_enum_symbol_is_rejected(self) -> None:
        old = self._event_schema()
        new = copy.deepcopy(old)
        self._field(new, "event_type")["type"]["symbols"].remove("DELETED_MESSAGE_READ")
        problems = incompatibilities(old, new)
        assert problems
        assert any("DELETED_MESSAGE_READ" in p for p in problems)

    def test_changing_a_field_type_is_rejected(self) -> None:
        old = self._event_schema()
        new = copy.deepcopy(old)
        self._field(new, "usn")["type"] = "string"
        assert incompatibilities(old, new)

    def test_renaming_the_record_is_rejected(self) -> None:
        old = self._event_schema()
        new = copy.deepcopy(old) | {"name": "MailboxNotification"}
        assert incompatibilities(old, new) == [
            "record name changed: cumi.pipeline.MailboxEvent → cumi.pipeline.MailboxNotification"
        ]

    def test_compatible_changes_pass(self) -> None:
        old = self._event_schema()
        new = copy.deepcopy(old)
        new["fields"].append({"name": "tenant", "type": ["null", "string"], "default": None})
        self._field(new, "event_type")["type"]["symbols"].append("MESSAGE_EXPIRED")
        new["fields"] = [f for f in new["fields"] if f["name"] != "display_name"]
        assert incompatibilities(old, new) == []

    def test_pre_release_fixture_is_compatible(self) -> None:
        old = load(FIXTURES / "mailbox_event.v0.avsc")
        assert incompatibilities(old, self._event_schema()) == []

    def test_covering_data_visits_every_symbol_and_branch(self) -> None:
        schema = self._event_schema()
        records = list(Covering(schema).records(RECORDS))
        symbols = self._field(schema, "event_type")["type"]["symbols"]
        assert {r["event_type"] for r in records} == set(symbols)
        assert {r["display_name"] is None for r in records} == {True, False}
        assert {len(r["messages"]) for r in records} == {0, 1, 2}


class TestCodecKnowsReleases:
    """ingest.eventlog.codec decodes records written with any released schema version."""

    @pytest.mark.parametrize(("stem", "version", "path"), release_cases())
    def test_release_fingerprint_is_known(self, stem: str, version: int, path: Path) -> None:
        schema = load(path)
        fingerprint = single_object(schema, next(Covering(schema).records(1)))[2:10]
        assert codec.known_fingerprints().get(fingerprint) == full_name(schema)

    @pytest.mark.parametrize(("stem", "version", "path"), release_cases())
    def test_records_written_with_release_decode(self, stem: str, version: int, path: Path) -> None:
        schema = load(path)
        expected = CURRENT_TYPE[full_name(schema)]
        for datum in Covering(schema).records(12):
            record = codec.decode(single_object(schema, datum))
            assert type(record) is expected
            first = schema["fields"][0]["name"]  # mailbox_id, or a checkpoint's events_topic
            assert getattr(record, first) == datum[first]

    def test_registered_older_version_decodes_with_defaults(self) -> None:
        old = load(FIXTURES / "mailbox_event.v0.avsc")
        fingerprint = codec.register_old_schema(old)
        datum = next(d for d in Covering(old).records(RECORDS) if len(d["messages"]) == 2)
        data = single_object(old, datum)
        assert data[2:10] == fingerprint
        event = codec.decode(data)
        assert isinstance(event, MailboxEvent)
        assert event.event_type.value == datum["event_type"]
        assert event.source is None  # not in v0: the current schema's default
        assert [m.message_id for m in event.messages] == [
            m["message_id"] for m in datum["messages"]
        ]
        assert all(m.receive_time_raw is None for m in event.messages)
