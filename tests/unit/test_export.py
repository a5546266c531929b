"""`ingest export` without a broker: the row mapping, batches, days, resume, and every shipped
DuckDB query against the hand-derived answers of tests/fixtures/voicemail_history.py."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from fixtures.kpis import differences, sql_summary
from fixtures.voicemail_history import AS_OF, DAY1, DAY2, EVENT_ROWS, EXPECTED, HISTORY, event

from ingest.errors import ConfigError
from ingest.eventlog import codec
from ingest.eventlog.topics import partition_for
from ingest.events import EventType, Folder, LogRecord, MailboxSnapshot, Outcome, RepairReason
from ingest.export.exporter import ExportRun
from ingest.export.layout import ExportDir
from ingest.export.rows import EVENT_SCHEMA, day_end_ms, day_of, event_rows, state_rows
from ingest.export.sql import connect, parameters_of, query_names, run_query
from ingest.kpis.ledger import KpiLedger
from ingest.state.projection import Projection

TOPIC = "mailbox-events"
PARTITIONS = 12

Placed = list[tuple[int, ConsumerRecord[bytes, bytes]]]


def place(records: Sequence[LogRecord]) -> Placed:
    """Each record as the consumer would fetch it: partition by key, offsets in log order."""
    offsets: dict[int, int] = {}
    placed = []
    for record in records:
        partition = partition_for(record.mailbox_id, PARTITIONS)
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        placed.append(
            (
                partition,
                ConsumerRecord(
                    TOPIC,
                    partition,
                    offset,
                    codec.timestamp_ms(record),
                    0,
                    record.mailbox_id.encode(),
                    codec.encode(record),
                    None,
                    0,
                    0,
                    [],
                ),
            )
        )
    return placed


def feed(run: ExportRun, placed: Placed) -> None:
    """Hand the records to the run one fetch at a time, committing when a batch is full."""
    for partition, message in placed:
        run.take(partition, [message])
        if run.due():
            run.commit()
    run.commit()


def export_all(directory: Path, *, batch_records: int = 1000) -> ExportRun:
    run = ExportRun.open(directory, TOPIC, batch_records=batch_records)
    feed(run, place(HISTORY))
    return run


def table(name: str, directory: Path) -> list[dict[str, Any]]:
    con = connect(directory)
    try:
        cursor = con.execute(f"SELECT * FROM {name}")
        columns = [d[0] for d in cursor.description or ()]
        return sorted((dict(zip(columns, row, strict=True)) for row in cursor.fetchall()), key=repr)
    finally:
        con.close()


class TestRows:
    """The mapping of records and states to table rows."""

    def test_an_event_row_carries_every_field(self) -> None:
        e = HISTORY[0]
        (row,) = event_rows(e, 3, 17, Outcome.APPLIED)
        values = dict(zip(EVENT_SCHEMA.names, row, strict=True))
        assert values["mailbox_id"] == "alice" and values["message_id"] == "m1"
        assert values["kind"] == "event" and values["event_type"] == "NEW_MESSAGE"
        assert values["usn"] == 1 and values["timestamp"] == DAY1 + dt.timedelta(hours=9)
        assert values["receive_time"] == DAY1 + dt.timedelta(hours=8, minutes=59, seconds=30)
        assert values["timestamp_raw"] == "09:00:00 AM 03/01/2024"
        assert (values["msg_type"], values["priority"]) == ("Voice", "Normal-Priority")
        assert (values["partition"], values["offset"], values["outcome"]) == (3, 17, "applied")
        assert values["folder"] is None and values["read"] is None

    def test_a_snapshot_row_per_listed_message_ids_bare(self) -> None:
        snap = next(r for r in HISTORY if isinstance(r, MailboxSnapshot) and r.mailbox_id == "bob")
        rows = [dict(zip(EVENT_SCHEMA.names, r, strict=True)) for r in event_rows(snap, 0, 5,
                Outcome.APPLIED)]  # fmt: skip
        assert [(r["message_id"], r["folder"], r["read"]) for r in rows] == [
            ("m5", "INBOX", False),
            ("m6", "INBOX", True),
        ]
        assert {r["kind"] for r in rows} == {"snapshot"} and rows[0]["event_type"] is None
        assert rows[0]["reason"] == "session-lost" and rows[0]["usn"] == 10

    def test_an_empty_snapshot_is_one_row(self) -> None:
        empty = MailboxSnapshot("dave", 4, DAY2, RepairReason.STARTUP, (), ())
        (row,) = event_rows(empty, 0, 0, Outcome.APPLIED)
        assert row[:3] == ("dave", None, "snapshot")

    def test_state_rows_mailbox_row_then_messages_without_tombstones(self) -> None:
        projection = Projection()
        for record in HISTORY[:15]:  # alice's m4 hard-deleted: a GONE tombstone
            projection.apply(record)
        state = projection.mailboxes["alice"]
        assert state.messages["m4"].folder is Folder.GONE
        rows = list(state_rows(state))
        assert rows[0][:3] == ("alice", None, None) and rows[0][11] == state.usn
        assert [(r[1], r[2], r[3]) for r in rows[1:]] == [
            ("m1", "INBOX", True),
            ("m2", "INBOX", False),
            ("m3", "DELETED", False),
        ]

    def test_days_are_utc_dates_of_the_record_timestamp(self) -> None:
        end = day_end_ms(day_of(codec.timestamp_ms(HISTORY[0])))
        assert end == int((DAY2.timestamp()) * 1000) - 1


class TestQueries:
    """Every shipped query on an export of the scripted history equals the hand-derived answer."""

    @pytest.fixture(scope="class")
    @classmethod
    def exported(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        directory = tmp_path_factory.mktemp("export")
        export_all(directory)
        return directory

    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_kpi(self, exported: Path, name: str) -> None:
        assert run_query(name, exported, as_of=AS_OF) == EXPECTED[name]

    def test_the_queries_and_the_kpi_ledger_agree(self, exported: Path) -> None:
        """One set of definitions: `ingest kpis` folds the same log to the same numbers."""
        ledger = KpiLedger()
        for record in HISTORY:
            ledger.apply(record)
        as_of = AS_OF.timestamp()
        sql = sql_summary(exported, as_of)
        assert differences(ledger=ledger.summary(as_of), queries=sql) == []

    def test_every_kpi_query_has_an_answer(self) -> None:
        kpis = {n for n in query_names() if not n.startswith("example_")}
        assert kpis == set(EXPECTED)

    @pytest.mark.parametrize("name", [n for n in query_names() if n.startswith("example_")])
    def test_examples_run(self, exported: Path, name: str) -> None:
        assert run_query(name, exported, as_of=AS_OF)

    def test_one_row_per_message_named(self, exported: Path) -> None:
        rows = table("events", exported)
        assert len(rows) == EVENT_ROWS
        assert len({(r["partition"], r["offset"], r["message_id"]) for r in rows}) == EVENT_ROWS
        outcomes = [r["outcome"] for r in rows if r["message_id"] == "m1"]
        assert sorted(outcomes) == ["applied", "applied", "duplicate", "stale"]

    def test_the_late_repeat_is_in_its_own_days_folder(self, exported: Path) -> None:
        con = connect(exported)
        days = con.execute(
            "SELECT date FROM events WHERE message_id = 'm1' AND outcome = 'stale'"
        ).fetchall()
        assert days == [(DAY1.date(),)]

    @pytest.mark.parametrize("day", [DAY1, DAY2])
    def test_end_of_day_states_are_replay_at_the_end_of_the_day(
        self, exported: Path, day: dt.datetime
    ) -> None:
        """states_at(D) = the fold of each partition up to its first record stamped after D
        (what `ingest replay --all --at <end of D>` folds)."""
        cut = day_end_ms(day_of(int(day.timestamp() * 1000)))
        passed: set[int] = set()
        projection = Projection()
        for (partition, message), record in zip(place(HISTORY), HISTORY, strict=True):
            if message.timestamp > cut:
                passed.add(partition)
            if partition not in passed:
                projection.apply(record)
        want = sorted(
            (mailbox_id, message_id, m.folder.value, m.read)
            for mailbox_id, state in projection.mailboxes.items()
            for message_id, m in state.messages.items()
            if m.folder is not Folder.GONE
        )
        con = connect(exported)
        got = con.execute(
            "SELECT mailbox_id, message_id, folder, read FROM states_at(?) ORDER BY ALL",
            [day.date()],
        ).fetchall()
        assert got == want

    def test_queries_name_their_parameters(self) -> None:
        assert parameters_of("unread_messages") == {"as_of"}
        assert parameters_of("messages_received") == set()
        with pytest.raises(ConfigError):
            run_query("unread_messages", Path("."))

    def test_an_unknown_query_is_refused_with_the_names(self, exported: Path) -> None:
        with pytest.raises(ConfigError, match="messages_received"):
            run_query("nope", exported)


class TestResume:
    """Batches commit; a run continues where the last committed, without duplicates or gaps."""

    def test_small_batches_and_many_runs_equal_one_run(self, tmp_path: Path) -> None:
        export_all(tmp_path / "one")
        placed = place(HISTORY)
        for start in range(0, len(placed), 7):  # a run per 7 records, batches of 3
            run = ExportRun.open(tmp_path / "many", TOPIC, batch_records=3)
            feed(run, placed[: start + 7])  # earlier records again: skipped by offset
        for name in ("events", "messages"):
            assert table(name, tmp_path / "many") == table(name, tmp_path / "one")
        for name in EXPECTED:
            assert run_query(name, tmp_path / "many", as_of=AS_OF) == EXPECTED[name]

    def test_an_uncommitted_batch_is_removed_and_done_again(self, tmp_path: Path) -> None:
        placed = place(HISTORY)
        run = ExportRun.open(tmp_path, TOPIC)
        feed(run, placed[:10])
        events = sorted((tmp_path / "events").rglob("*.parquet"))
        # what a batch that crashed before its manifest leaves: files of the next batch number
        orphan = events[0].with_name("events-000099.parquet")
        shutil.copy(events[0], orphan)
        (events[0].parent / ".events-000100.parquet.tmp").write_bytes(b"half")
        rerun = ExportRun.open(tmp_path, TOPIC)
        assert sorted(rerun.result.removed) == sorted(
            [orphan, events[0].parent / ".events-000100.parquet.tmp"]
        )
        feed(rerun, placed)
        for name in EXPECTED:
            assert run_query(name, tmp_path, as_of=AS_OF) == EXPECTED[name]
        assert len(table("events", tmp_path)) == EVENT_ROWS

    def test_open_day_states_are_replaced_not_added(self, tmp_path: Path) -> None:
        placed = place(HISTORY)
        for end in (5, 12, len(placed)):
            feed(ExportRun.open(tmp_path, TOPIC), placed[:end])
        open_files = list((tmp_path / "states").rglob("states-open.parquet"))
        assert open_files and len(open_files) == len({p.parent for p in open_files})
        con = connect(tmp_path)
        dupes = con.execute(
            "SELECT count(*) FROM (SELECT date, mailbox_id, message_id FROM states "
            "GROUP BY ALL HAVING count(*) > 1)"
        ).fetchall()
        assert dupes == [(0,)]

    def test_another_topics_export_is_refused(self, tmp_path: Path) -> None:
        export_all(tmp_path)
        with pytest.raises(ConfigError, match="mailbox-events"):
            ExportRun.open(tmp_path, "other-events")

    def test_nothing_new_commits_nothing(self, tmp_path: Path) -> None:
        export_all(tmp_path)
        manifest = ExportDir(tmp_path).load(TOPIC)
        run = ExportRun.open(tmp_path, TOPIC)
        feed(run, place(HISTORY))
        assert ExportDir(tmp_path).load(TOPIC).batch == manifest.batch
        assert run.result.records == 0


def test_history_fixture_is_consistent() -> None:
    """The scripted history's own assumptions (a guard for edits to it)."""
    assert HISTORY[0] == HISTORY[1] == HISTORY[-1]
    assert event("x", 1, EventType.NEW_MESSAGE, "m", DAY1).event_time == DAY1
