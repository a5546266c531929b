"""Schema guard: the Avro schemas parse, and the Python records and enums match them exactly."""

from __future__ import annotations

import dataclasses
import enum
import json
import tomllib
from pathlib import Path
from typing import Any

import fastavro
import pytest

from ingest.events import (
    CheckpointChunk,
    CheckpointChunkRef,
    CheckpointEntry,
    CheckpointManifest,
    DeadLetter,
    EventType,
    Folder,
    MailboxEvent,
    MailboxRegistryEntry,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageInfo,
    MessageStateRecord,
    RejectReason,
    RepairReason,
    SnapshotMessage,
    UnparsedField,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted((ROOT / "schemas").glob("*.avsc"))


def named_types(schema: Any) -> dict[str, dict[str, Any]]:
    """Every named record/enum defined anywhere in a schema, by short name."""
    found: dict[str, dict[str, Any]] = {}
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum") and "name" in node:
                found[node["name"]] = node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def all_named_types() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path.name, name): node
        for path in SCHEMA_FILES
        for name, node in named_types(json.loads(path.read_text())).items()
    }


class TestSchemaFiles:
    """Every schemas/*.avsc is a valid, self-contained Avro record schema."""

    def test_the_expected_files_exist(self) -> None:
        names = {p.name for p in SCHEMA_FILES}
        assert {
            "mailbox_event.avsc",
            "mailbox_snapshot.avsc",
            "dead_letter.avsc",
            "mailbox_state.avsc",
        } <= names

    @pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
    def test_parses(self, path: Path) -> None:
        schema = json.loads(path.read_text())
        parsed = fastavro.parse_schema(schema, named_schemas={})
        assert isinstance(parsed, dict), parsed  # a record, not a name or a union
        assert parsed["type"] == "record"
        assert parsed["name"].startswith("cumi.pipeline.")

    @pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
    def test_optional_fields_have_defaults(self, path: Path) -> None:
        """A union with null must default to null, so readers of newer versions can add it."""
        for node in named_types(json.loads(path.read_text())).values():
            for field in node.get("fields", []):
                if isinstance(field["type"], list) and "null" in field["type"]:
                    assert field.get("default", "missing") is None, (path.name, field["name"])

    def test_shipped_in_the_wheel(self) -> None:
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
        assert include["schemas"] == "ingest/schemas"


# (schema file, Avro record name) → the dataclass that mirrors it field for field
MIRRORS: list[tuple[str, str, type]] = [
    ("mailbox_event.avsc", "MailboxEvent", MailboxEvent),
    ("mailbox_event.avsc", "MessageInfo", MessageInfo),
    ("mailbox_event.avsc", "UnparsedField", UnparsedField),
    ("mailbox_snapshot.avsc", "MailboxSnapshot", MailboxSnapshot),
    ("mailbox_snapshot.avsc", "SnapshotMessage", SnapshotMessage),
    ("dead_letter.avsc", "DeadLetter", DeadLetter),
    ("mailbox_state.avsc", "MailboxState", MailboxStateRecord),
    ("mailbox_state.avsc", "MessageState", MessageStateRecord),
    ("mailbox_registry.avsc", "MailboxRegistryEntry", MailboxRegistryEntry),
    ("checkpoint_manifest.avsc", "CheckpointManifest", CheckpointManifest),
    ("checkpoint_manifest.avsc", "CheckpointChunkRef", CheckpointChunkRef),
    ("checkpoint_chunk.avsc", "CheckpointChunk", CheckpointChunk),
    ("checkpoint_chunk.avsc", "CheckpointEntry", CheckpointEntry),
]

# (schema file, Avro enum name) → the Python enum that must match it symbol for symbol
ENUMS: list[tuple[str, str, type[enum.Enum]]] = [
    ("mailbox_event.avsc", "EventType", EventType),
    ("mailbox_state.avsc", "EventType", EventType),
    ("mailbox_state.avsc", "Folder", Folder),
]


class TestPythonMirrors:
    """The records in ingest.events are the Avro records, field for field, enum for enum."""

    @pytest.mark.parametrize(("file", "name", "cls"), MIRRORS, ids=[m[1] for m in MIRRORS])
    def test_fields(self, file: str, name: str, cls: type) -> None:
        record = all_named_types()[(file, name)]
        avro_fields = {f["name"] for f in record["fields"]}
        assert avro_fields == {f.name for f in dataclasses.fields(cls)}

    @pytest.mark.parametrize(("file", "name", "cls"), ENUMS, ids=[f"{e[0]}:{e[1]}" for e in ENUMS])
    def test_enum_symbols(self, file: str, name: str, cls: type[enum.Enum]) -> None:
        symbols = all_named_types()[(file, name)]["symbols"]
        assert symbols == [member.value for member in cls]

    def test_reject_reasons_documented(self) -> None:
        schema = json.loads((ROOT / "schemas" / "dead_letter.avsc").read_text())
        (reason,) = [f for f in schema["fields"] if f["name"] == "reason"]
        for member in RejectReason:
            assert member.value in reason["doc"], member

    def test_repair_reasons_documented_exactly(self) -> None:
        """The snapshot's `reason` doc lists every RepairReason, and nothing else."""
        schema = json.loads((ROOT / "schemas" / "mailbox_snapshot.avsc").read_text())
        (reason,) = [f for f in schema["fields"] if f["name"] == "reason"]
        listed = reason["doc"].split("one of: ", 1)[1].split(".", 1)[0].split(" | ")
        assert listed == [member.value for member in RepairReason]


class TestRepairReason:
    """A reason a newer release wrote decodes, kept as text, without becoming a member."""

    def test_unknown_reason_kept_as_text(self) -> None:
        unknown = RepairReason("operator-request")
        assert unknown == "operator-request"
        assert isinstance(unknown, RepairReason)
        assert unknown not in list(RepairReason)
        assert RepairReason("startup") is RepairReason.STARTUP
