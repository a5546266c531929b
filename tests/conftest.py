"""Suite-wide fixtures: one real Kafka broker per test session, per-test topics.

Fixture modules in tests/fixtures/ (`simulator.py`, …) are registered below automatically: add a
module there, not a line here. `tests/` is on sys.path (pytest's rootdir-relative conftest import),
so they are importable as `fixtures.<name>`.

The broker fixtures never skip: without Java or Maven they fail every test that needs Kafka, so a
machine that cannot run the broker can never produce a green run.

The folders say what a test needs: tests/unit nothing but Python (no CLI, no broker, no socket
beyond binding a loopback port), tests/tools a CLI from `make tools` (marker `tools`),
tests/integration and tests/conformance sockets and the broker (marker `integration`; the
conformance test with the Node CometD client is `tools` too). `pytest_collection_modifyitems`
refuses a marker in the wrong folder.

Hypothesis runs under one profile for the whole suite, registered here and chosen by
$HYPOTHESIS_PROFILE ("default", "ci" or "soak", below); test modules set at most `max_examples`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from chaos.report import soak
from fixtures._jvm import started
from hypothesis import HealthCheck, settings

from ingest.devservices.kafka import LocalBroker
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics

pytest_plugins = [
    f"fixtures.{module.stem}"
    for module in sorted((Path(__file__).parent / "fixtures").glob("*.py"))
    if not module.name.startswith("_")
]

# Deadlines and the too-slow/too-large health checks measure this machine's load, not the code:
# two cores shared with other suites make an example take 10x its usual time now and then.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints the @reproduce_failure line that replays it exactly
)
# CI: the same examples on every run and machine (derandomize: the seed derives from the test), no
# example database in the checkout. A red CI run reproduces by re-running; a green one is not luck.
# Exploring new inputs is the job of developers' runs (random) and of the soak.
settings.register_profile(
    "ci", parent=settings.get_profile("default"), derandomize=True, database=None
)
# `make soak` (RELIABILITY_SOAK=1): random and 25x the default 100 examples per property.
settings.register_profile("soak", parent=settings.get_profile("default"), max_examples=2_500)
# $HYPOTHESIS_PROFILE picks one; unset, RELIABILITY_SOAK=1 (`make soak`) means "soak".
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("soak" if soak() else "default"))

TESTS = Path(__file__).parent
FOLDER_MARKERS = {"unit": set[str](), "tools": {"tools"}}
"""Markers each folder's tests must carry exactly (of `integration` and `tools`)."""

FRESH_TOPIC_PARTITIONS = 12
"""Events/state partitions of `fresh_topics`: the production default, so keying is exercised."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fail the run if a test's markers contradict its folder (a unit test needing a tool, a
    tool test without the marker that `-m tools` selects)."""
    wrong = []
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if folder not in FOLDER_MARKERS:
            continue
        marks = {mark.name for mark in item.iter_markers()} & {"integration", "tools"}
        if marks != FOLDER_MARKERS[folder]:
            wrong.append(f"{item.nodeid}: {sorted(marks)} in tests/{folder}")
    if wrong:
        raise pytest.UsageError("markers contradict the folder:\n" + "\n".join(wrong))


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
