"""docs/deploy.md's install walk, its `ingest` commands run as written against the real local
broker (under a prefix of their own), in the page's order, with the exit codes it states. The
helm and kubectl steps are tests/tools/test_deploy_walk_helm.py's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fixtures.commands import ingest
from fixtures.deploy_walk import read_walk
from fixtures.producing import delete_topics

from ingest.eventlog.topics import TopicNames

pytestmark = pytest.mark.integration

WALK = read_walk()


@pytest.fixture
async def prefix(kafka_bootstrap: str) -> AsyncIterator[str]:
    prefix = f"walk-{uuid.uuid4().hex[:10]}-"
    yield prefix
    await delete_topics(kafka_bootstrap, TopicNames.with_prefix(prefix).all())


async def test_the_ingest_commands_of_the_walk(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "KAFKA_BOOTSTRAP_SERVERS" in WALK.exports()
    env = WALK.exports() | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
    }
    for name, text in WALK.files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)  # the commands name the files as the page wrote them
    ran = []
    for command in WALK.program("ingest"):
        run = await ingest(*command.argv[1:], env=env)
        assert run.code == command.exit_code, (command.argv, run.err)
        assert "Traceback" not in run.err
        ran.append((command.argv[1:3], run))
    assert [words for words, _ in ran] == [
        ["topics", "check"],
        ["topics", "apply"],
        ["topics", "check"],
        ["mailboxes", "import"],
        ["mailboxes", "list"],
    ]
    listed = ran[-1][1].out.split("\n")
    aliases = WALK.files["mailboxes.txt"].split()
    assert [line.split()[0] for line in listed if line] == sorted(aliases)
    assert all("server=cuc1" in line for line in listed if line)
