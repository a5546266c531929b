"""Suite-wide fixtures: one real Kafka broker per test session, per-test topics.

Fixture modules in tests/fixtures/ (`simulator.py`, …) are registered below automatically: add a
module there, not a line here. `tests/` is on sys.path (pytest's rootdir-relative conftest import),
so they are importable as `fixtures.<name>`.

The broker fixtures never skip: without Java or Maven they fail every test that needs Kafka, so a
machine that cannot run the broker can never produce a green run.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fixtures._jvm import started

from ingest.devservices.kafka import LocalBroker
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics

pytest_plugins = [
    f"fixtures.{module.stem}"
    for module in sorted((Path(__file__).parent / "fixtures").glob("*.py"))
    if not module.name.startswith("_")
]

FRESH_TOPIC_PARTITIONS = 12
"""Events/state partitions of `fresh_topics`: the production default, so keying is exercised."""


@pytest.fixture(scope="session")
def _local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The session's broker, started on first use; its data and logs stay in pytest's tmp dir."""
    broker = LocalBroker(data_dir=tmp_path_factory.mktemp("kafka"))
    with started(broker, "the local Kafka broker"):
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(_local_kafka: LocalBroker) -> str:
    """Bootstrap address ("127.0.0.1:<port>") of the session's real Kafka broker."""
    return _local_kafka.bootstrap


@pytest.fixture
def kafka_broker(_local_kafka: LocalBroker) -> Iterator[LocalBroker]:
    """The session's `LocalBroker` itself, for tests that stop and start it mid-stream.

    Same ports and data across `await kafka_broker.stop()` / `await kafka_broker.start()`; if a
    test ends with the broker stopped, it is started again for the tests after it.
    """
    yield _local_kafka
    if not _local_kafka.running:
        _local_kafka.start_sync()


@pytest.fixture
async def fresh_topics(
    _local_kafka: LocalBroker, kafka_bootstrap: str
) -> AsyncIterator[TopicNames]:
    """The four pipeline topics under a unique per-test prefix, created with the default specs
    (events and state with 12 partitions, state and registry compacted); deleted afterwards."""
    names = TopicNames.with_prefix(f"t-{uuid.uuid4().hex[:12]}-")
    await ensure_topics(
        kafka_bootstrap, default_specs(names, events_partitions=FRESH_TOPIC_PARTITIONS)
    )
    yield names
    if _local_kafka.running:
        # at module level it would be imported before pytest_plugins registers it (no rewrite)
        from fixtures.producing import delete_topics  # noqa: PLC0415 - see the line above

        await delete_topics(kafka_bootstrap, names.all())
