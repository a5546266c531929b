"""`ingest replay` as operators run it: an unknown mailbox is an error, `--at` takes ages, and
the progress of a multi-process replay off a terminal is true from its first line."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from fixtures.commands import ingest
from fixtures.producing import delete_topics, generate, produce

from ingest.commands._exits import Exit
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

RECORDS = 3000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(kafka_bootstrap: str) -> AsyncIterator[dict[str, str]]:
    """A log of RECORDS records over 12 partitions; the settings that name it."""
    prefix = f"replay-cli-{uuid.uuid4().hex[:10]}-"
    names = TopicNames.with_prefix(prefix)
    await ensure_topics(kafka_bootstrap, default_specs(names))
    stream = generate(events=RECORDS, mailboxes=24, seed=5)
    await produce(kafka_bootstrap, names.events, stream.records[:RECORDS], stream.values[:RECORDS])
    yield {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": prefix}
    await delete_topics(kafka_bootstrap, names.all())


class TestReplayCommand:
    async def test_unknown_mailbox_is_not_found(self, env: dict[str, str]) -> None:
        run = await ingest("replay", "--mailbox", "nobody", env=env)
        assert run.code == Exit.NOT_FOUND
        assert run.out == ""
        assert run.err.startswith("ingest replay: mailbox nobody not found: no records of it in ")
        assert run.err.count("\n") == 1

    async def test_at_takes_an_age_like_tail_since(self, env: dict[str, str]) -> None:
        # the generated log's times are in 2008: two hours ago is after every record
        run = await ingest("replay", "--all", "--at", "2h", "--workers", "1", env=env)
        assert run.code == Exit.OK, run.err
        assert len(json.loads(run.out)) == 24

    async def test_progress_off_a_terminal_in_processes(self, env: dict[str, str]) -> None:
        run = await ingest("replay", "--all", "--workers", "2", env=env)
        assert run.code == Exit.OK, run.err
        lines = [
            json.loads(line)["message"]
            for line in run.err.splitlines()
            if '"ingest.ops.progress"' in line
        ]
        assert lines, run.err
        assert lines[0] == f"replay: records 0/{RECORDS} (0%, 0/s)"
        assert all(f"/{RECORDS} (" in line for line in lines), lines
        assert lines[-1].startswith(f"replay: records {RECORDS}/{RECORDS} (100%")
