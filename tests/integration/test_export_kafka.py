"""`ingest export` on the real broker: both framings, every shipped query against the scripted
history's answers, and a kill -9 mid-run resumed without duplicate or missing rows."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures.producing import REPO, generate, produce
from fixtures.voicemail_history import AS_OF, EVENT_ROWS, EXPECTED, HISTORY
from fixtures.waiting import eventually

from ingest.devservices.registry import LocalRegistry
from ingest.eventlog import codec
from ingest.eventlog.schema_registry import register_writers
from ingest.eventlog.topics import TopicNames
from ingest.events import Folder, MailboxEvent, MailboxSnapshot
from ingest.export.exporter import export
from ingest.export.sql import connect, query_names, run_query
from ingest.settings import SchemaRegistrySettings
from ingest.state.projection import diff_states

pytestmark = pytest.mark.integration


class TestScriptedHistory:
    """The scripted history through Kafka, half of it Confluent-framed (registry mode)."""

    async def test_every_kpi_query_answers_as_derived_by_hand(
        self,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        local_registry: LocalRegistry,
        tmp_path: Path,
    ) -> None:
        registry = SchemaRegistrySettings(local_registry.url)
        encoder = await register_writers(registry, {fresh_topics.events: [MailboxEvent,
                                                    MailboxSnapshot]})  # fmt: skip
        half = len(HISTORY) // 2
        values = [codec.encode(r) for r in HISTORY[:half]]
        values += [encoder.encode(r) for r in HISTORY[half:]]
        assert values[-1][:1] == b"\x00" and values[0][:1] == b"\xc3"  # both framings
        await produce(kafka_bootstrap, fresh_topics.events, HISTORY, values, batched=False)

        result = await export(
            kafka_bootstrap, fresh_topics.events, tmp_path, schema_registry=registry
        )

        assert (result.records, result.skipped, result.event_rows) == (len(HISTORY), 0, EVENT_ROWS)
        for name in sorted(EXPECTED):
            assert run_query(name, tmp_path, as_of=AS_OF) == EXPECTED[name], name
        for name in query_names():
            run_query(name, tmp_path, as_of=AS_OF)  # the examples run too


class TestKillAndResume:
    """kill -9 in the middle of a run; the next run completes it exactly."""

    async def test_no_duplicate_or_missing_rows_and_the_states_are_the_truth(
        self, kafka_bootstrap: str, fresh_topics: TopicNames, tmp_path: Path
    ) -> None:
        stream = generate(events=20_000, mailboxes=40, seed=22)
        await produce(kafka_bootstrap, fresh_topics.events, stream.records, stream.values)
        killed, clean = tmp_path / "killed", tmp_path / "clean"

        run = await start_export(kafka_bootstrap, fresh_topics.events, killed, batch_records=500)
        manifest = killed / "_export" / "manifest.json"
        await eventually(
            lambda: manifest.exists() and json.loads(manifest.read_text())["batch"] >= 3,
            within=60,
            what="three batches committed",
        )
        run.send_signal(signal.SIGKILL)
        await run.wait()
        assert json.loads(manifest.read_text())["records"] < len(stream.records), "ran to the end"

        rerun = await start_export(kafka_bootstrap, fresh_topics.events, killed)
        assert await asyncio.wait_for(rerun.wait(), 120) == 0
        await export(kafka_bootstrap, fresh_topics.events, clean)

        con = connect(killed)
        (records, rows, distinct) = (
            con.execute(
                'SELECT count(DISTINCT ("partition", "offset")), count(*), '
                'count(DISTINCT ("partition", "offset", message_id, folder)) FROM events'
            ).fetchone()
            or ()
        )
        assert (records, rows) == (len(stream.records), distinct)
        for name in query_names():
            assert run_query(name, killed, as_of=AS_OF) == run_query(name, clean, as_of=AS_OF)
        assert diff_states(stream.truth, latest_states(con)) == []


async def start_export(
    bootstrap: str, topic: str, out: Path, **options: Any
) -> asyncio.subprocess.Process:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest", "--log-level", "WARNING", "export",
        f"--bootstrap={bootstrap}", f"--topic={topic}", f"--out={out}", *args,
        cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def latest_states(con: Any) -> dict[str, Any]:
    """The latest exported state of every mailbox, in the fold's JSON format."""
    states: dict[str, Any] = {}
    rows = con.execute(
        "WITH latest AS (SELECT mailbox_id, max(date) AS date FROM states GROUP BY mailbox_id) "
        "SELECT mailbox_id, message_id, folder, read, mailbox_usn "
        "FROM states JOIN latest USING (mailbox_id, date)"
    ).fetchall()
    for mailbox_id, message_id, folder, read, usn in rows:
        state = states.setdefault(mailbox_id, {"inbox": {}, "deleted": {}, "usn": usn})
        if message_id is not None:  # None: the mailbox's own row
            where = "inbox" if folder == Folder.INBOX.value else "deleted"
            state[where][message_id] = {"read": read}
    return states
