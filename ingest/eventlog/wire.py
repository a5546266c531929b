"""The wire format of every record value the pipeline writes, in one place.

Two framings of the same Avro binary body, told apart by the first byte (docs/topics.md):

- Avro *single-object encoding* (the default): `C3 01`, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, then the body. A reader needs no
  registry service: the fingerprint names the schema (`ingest.eventlog.codec` keeps the table of
  the schemas this package ships and the older released versions it reads).
- The *Confluent wire format* (registry mode, KAFKA_SCHEMA_REGISTRY_URL): `00`, the 4-byte
  big-endian schema id a Confluent-compatible registry gave the writer schema, then the body.
  What every registry-aware tool reads (Kafka Connect, ksqlDB, Flink, Spark, confluent-kafka).

The hand-written fast paths (the codec's event writer, the reader's event and snapshot decoders)
each serve one exact schema, named here by its fingerprint: when a schema file changes, its
fingerprint changes, the fast path steps aside (the generic fastavro path takes over) and a test
says which fast path to bring up to date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form

MAGIC = b"\xc3\x01"
"""The single-object encoding marker."""
FINGERPRINT_SIZE = 8
HEADER_SIZE = len(MAGIC) + FINGERPRINT_SIZE

CONFLUENT_MAGIC = b"\x00"
"""The Confluent wire format's marker (its "magic byte" 0)."""
SCHEMA_ID_SIZE = 4
CONFLUENT_HEADER_SIZE = len(CONFLUENT_MAGIC) + SCHEMA_ID_SIZE
MAX_SCHEMA_ID = 2**31 - 1
"""Registries hand out ids as signed 32-bit integers."""

FAST_EVENT_SCHEMA = bytes.fromhex("acdf21c35aa2011e")
"""The MailboxEvent schema (schemas/mailbox_event.avsc, v2) the fast writer and reader serve."""
FAST_EVENT_SCHEMA_V1 = bytes.fromhex("5be9f43649860e88")
"""The first release of the MailboxEvent schema, which the fast reader reads too (the log written
before v2): it differs in two fields' types and the absence of `unparsed`."""
FAST_SNAPSHOT_SCHEMA = bytes.fromhex("fb1721ab5af3fe8c")
"""The MailboxSnapshot schema (schemas/mailbox_snapshot.avsc) the fast reader was written for."""
FAST_STATE_SCHEMA = bytes.fromhex("07f32c4787529ea4")
"""The MailboxState schema (schemas/mailbox_state.avsc, v3) the fast state reader was written for
(checkpoints hold thousands of states: `ingest replay` from a checkpoint decodes them all)."""
FAST_STATE_SCHEMA_V2 = bytes.fromhex("71232fc08fa27564")
"""The second release of the MailboxState schema, which the fast state reader reads too (states
and checkpoints written before v3): no `kept` per message, no `snapshot_taken_at`."""


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, little-endian as in single-object encoding."""
    canonical = to_parsing_canonical_form(dict(schema))
    return bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO"))


def header(fingerprint: bytes) -> bytes:
    """What precedes the Avro body of a record written with the schema of `fingerprint`."""
    return MAGIC + fingerprint


def fingerprint_of(data: bytes) -> bytes | None:
    """The writer schema's fingerprint of a framed value; None if `data` is not framed so."""
    if len(data) < HEADER_SIZE or data[:2] != MAGIC:
        return None
    return bytes(data[2:HEADER_SIZE])


def confluent_header(schema_id: int) -> bytes:
    """What precedes the Avro body of a record written with registry schema `schema_id`."""
    return CONFLUENT_MAGIC + schema_id.to_bytes(SCHEMA_ID_SIZE, "big")


def schema_id_of(data: bytes) -> int | None:
    """The registry schema id of a Confluent-framed value; None if `data` is not framed so."""
    if len(data) < CONFLUENT_HEADER_SIZE or data[0] != 0:
        return None
    return int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
