"""The export directory: where each file goes, the manifest, and writes that survive a crash.

    <dir>/events/date=YYYY-MM-DD/events-<batch>.parquet     rows of the records of one batch
    <dir>/states/date=YYYY-MM-DD/states-<batch>.parquet     end-of-day states of the mailboxes
                                                            whose partition passed that day
    <dir>/states/date=YYYY-MM-DD/states-open.parquet        states of a day some partition has
                                                            not passed yet (replaced each batch)
    <dir>/_export/manifest.json                             what is committed (below)
    <dir>/_export/fold-<batch>.bin                          the fold's state at the manifest's
                                                            offsets (to resume without re-reading)

The manifest is the commit point: a batch's files are written to temporary names, fsynced and
renamed into place, then the manifest naming them (with the offsets reached and the fold's
checkpoint) replaces the old one, atomically. Whatever is on disk but not in the manifest — the
files of a batch that crashed before its commit — is deleted before the next batch starts, and that
batch reads again from the manifest's offsets: a crash or a rerun leaves neither duplicates nor
gaps. (Readers that glob the folders while an export runs, or after a crash before the next run,
may see a half-written batch; `ingest export` run again cleans that up.)
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.errors import ConfigError, DecodeError
from ingest.eventlog import codec
from ingest.events import MailboxStateRecord
from ingest.export.rows import date_of

FORMAT = 1
"""Version of the layout and the manifest; a reader refuses a newer one."""

_META = "_export"
_MANIFEST = "manifest.json"
OPEN_STATES = "states-open.parquet"
_COMPRESSION = "zstd"
_LENGTH = struct.Struct(">I")


@dataclass(slots=True)
class PartitionMark:
    """How far the export got in one partition of the events topic."""

    offset: int = 0
    """The next offset to read."""
    day: int | None = None
    """The latest day (days since 1970) of a record read: the day the partition is in. Its
    mailboxes' states for earlier days are written; for this one they are "open"."""
    touched: set[str] = field(default_factory=set)
    """Mailboxes with a record since the partition entered `day`: whose end-of-day state for
    `day` will be written."""

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "day": self.day, "touched": sorted(self.touched)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartitionMark:
        return cls(int(data["offset"]), data.get("day"), set(data.get("touched", ())))


@dataclass(slots=True)
class Manifest:
    """What the export directory holds, as of the last commit."""

    topic: str
    batch: int = 0
    partitions: dict[int, PartitionMark] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    """Every data file, relative to the directory."""
    fold: str | None = None
    """The fold checkpoint's file name under `_export/`."""
    records: int = 0
    """Records of the log exported so far."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "topic": self.topic,
            "batch": self.batch,
            "records": self.records,
            "partitions": {str(p): m.to_json() for p, m in sorted(self.partitions.items())},
            "fold": self.fold,
            "files": sorted(self.files),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ConfigError(f"export format {data.get('format')!r}: this release reads {FORMAT}")
        return cls(
            topic=data["topic"],
            batch=int(data["batch"]),
            partitions={int(p): PartitionMark.from_json(m) for p, m in data["partitions"].items()},
            files=list(data["files"]),
            fold=data.get("fold"),
            records=int(data.get("records", 0)),
        )


class ExportDir:
    """One export directory on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = root / _META

    def load(self, topic: str) -> Manifest:
        """The committed manifest; a fresh one for a new directory. Refuses another topic's."""
        path = self.meta / _MANIFEST
        if not path.exists():
            return Manifest(topic)
        manifest = Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
        if manifest.topic != topic:
            raise ConfigError(
                f"{self.root} holds an export of topic {manifest.topic}, not {topic}: "
                "use another directory"
            )
        return manifest

    def commit(self, manifest: Manifest) -> None:
        """Make `manifest` the committed one (atomic: fsync, rename, fsync the directory)."""
        self.meta.mkdir(parents=True, exist_ok=True)
        data = json.dumps(manifest.to_json(), indent=1).encode()
        _write_atomically(self.meta / _MANIFEST, lambda f: f.write(data))

    def clean(self, manifest: Manifest) -> list[Path]:
        """Delete every data file, temporary file and fold checkpoint the manifest does not
        name (a crashed batch's); the deleted paths."""
        keep = {self.root / name for name in manifest.files}
        if manifest.fold is not None:
            keep.add(self.meta / manifest.fold)
        keep.add(self.meta / _MANIFEST)
        removed = []
        for folder in (self.root / "events", self.root / "states", self.meta):
            if not folder.exists():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path not in keep:
                    path.unlink()
                    removed.append(path)
        return removed

    # -- data files ---------------------------------------------------------------------------

    @staticmethod
    def events_file(day: int, batch: int) -> str:
        return f"events/date={date_of(day).isoformat()}/events-{batch:06d}.parquet"

    @staticmethod
    def states_file(day: int, batch: int) -> str:
        return f"states/date={date_of(day).isoformat()}/states-{batch:06d}.parquet"

    @staticmethod
    def open_states_file(day: int) -> str:
        return f"states/date={date_of(day).isoformat()}/{OPEN_STATES}"

    def write_table(self, name: str, table: pa.Table) -> None:
        """Write a Parquet file under its final name, atomically (a reader sees all or none)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, lambda f: pq.write_table(table, f, compression=_COMPRESSION))

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()

    # -- the fold's checkpoint ----------------------------------------------------------------

    def write_fold(self, batch: int, states: Iterable[MailboxStateRecord]) -> str:
        """The fold's state as length-prefixed state records (the state topic's own encoding)."""
        self.meta.mkdir(parents=True, exist_ok=True)
        name = f"fold-{batch:06d}.bin"

        def write(f: Any) -> None:
            for state in states:
                data = codec.encode(state)
                f.write(_LENGTH.pack(len(data)))
                f.write(data)

        _write_atomically(self.meta / name, write)
        return name

    def read_fold(self, name: str) -> Iterator[MailboxStateRecord]:
        data = (self.meta / name).read_bytes()
        pos = 0
        while pos < len(data):
            (size,) = _LENGTH.unpack_from(data, pos)
            pos += _LENGTH.size
            record = codec.decode(data[pos : pos + size])
            pos += size
            if not isinstance(record, MailboxStateRecord):
                raise DecodeError(f"{name}: not a mailbox state record")
            yield record


def _write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync it, rename it over `path`, fsync
    the folder: after a crash `path` is the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
