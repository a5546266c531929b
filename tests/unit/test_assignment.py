"""The registry assignment (ingest.mailboxes.assignment) against a fake group consumer.

The fake consumer holds the registry topic in memory and lets the test play the group protocol
(revoke, assign); the fake target records what the subscription manager would be told. The
assignment's clock is a FakeClock: it moves the revocation deadline, and retry waits last until the
test moves it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from types import TracebackType

import pytest
from aiokafka.errors import KafkaConnectionError
from fakes import FakeClock, eventually, sample
from fakes.cumi import FakeCredentials
from fakes.kafka import FakeConsumer, FakeTarget

from ingest.errors import BrokerError
from ingest.eventlog import codec
from ingest.events import MailboxRegistryEntry, RepairReason
from ingest.mailboxes.assignment import CredentialRefs, RegistryAssignment
from ingest.settings import SettingsSource, load_kafka

KAFKA = load_kafka(SettingsSource({"KAFKA_BOOTSTRAP_SERVERS": "kafka.invalid:9092"}))
TIMEOUT_MS = 1_000
STAMP = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def entry(
    alias: str,
    *,
    server: str | None = None,
    credentials_ref: str | None = None,
    enabled: bool = True,
) -> MailboxRegistryEntry:
    return MailboxRegistryEntry(alias, STAMP, server, credentials_ref, enabled)


class Member:
    """A running RegistryAssignment, its consumer, target and clock."""

    def __init__(
        self, *, reconcile_on_start: bool = True, credentials: CredentialRefs | None = None
    ) -> None:
        self.clock = FakeClock()
        self.target = FakeTarget()
        self.consumer = FakeConsumer(KAFKA.registry_topic, partitions=4)
        self.topics_ensured = 0
        self.topic_errors: list[Exception] = []
        """Raised by the next attempts to ensure the registry topic, one each."""
        self.assignment = RegistryAssignment(
            KAFKA,
            self.target,
            group_id="workers",
            session_timeout_ms=TIMEOUT_MS,
            server="cuc1",
            credentials=credentials,
            reconcile_on_start=reconcile_on_start,
            consumer_factory=self.consumer.factory,
            ensure_topic=self._ensure_topic,
            clock=self.clock,
        )

    async def _ensure_topic(self, kafka: object) -> None:
        if self.topic_errors:
            raise self.topic_errors.pop(0)
        self.topics_ensured += 1

    async def __aenter__(self) -> Member:
        await self.assignment.start()
        await self.until(lambda: self.consumer.started and self.consumer.polls > 0, "polling")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.assignment.stop()

    async def until(self, check: object, what: str) -> None:
        assert callable(check)

        def probe() -> bool:
            if self.assignment.failed.is_set():
                raise AssertionError(f"the assignment failed: {self.assignment.fatal!r}")
            return bool(check())

        await eventually(probe, what)

    async def loaded(self) -> None:
        await self.until(lambda: self.assignment.ready, "assigned partitions loaded")


class TestLoading:
    """An assignment's partitions are read to their end, then handed over in one go."""

    async def test_first_assignment_read_to_the_end_then_handed_over(self) -> None:
        """Record by record (one per poll), nothing is handed over before the end offset seen at
        assignment; then every watchable mailbox at once, for a startup repair."""
        m = Member()
        m.consumer.chunk = 1
        for alias in ("a", "b", "c"):
            m.consumer.put(0, entry(alias))
        m.consumer.put(1, entry("d", server=None))
        m.consumer.put(1, entry("paused", enabled=False))
        m.consumer.put(1, entry("elsewhere", server="cuc2"))
        m.consumer.put(3, entry("unassigned"))
        async with m:
            m.consumer.assign(0, 1)
            await m.loaded()
            assert m.target.added() == [(frozenset("abcd"), RepairReason.STARTUP)]
            assert m.assignment.watched == frozenset("abcd")
            assert m.assignment.partitions == frozenset({0, 1})
        assert m.topics_ensured == 1
        assert m.consumer.options["group_id"] == "workers"
        assert m.consumer.options["enable_auto_commit"] is False

    async def test_last_value_per_key_wins(self) -> None:
        """While loading, a later record replaces an earlier one and a tombstone removes it."""
        m = Member()
        m.consumer.put(0, entry("a"))
        m.consumer.tombstone(0, "a")
        m.consumer.put(0, entry("b"))
        m.consumer.put(0, entry("b", enabled=False))
        m.consumer.put(0, entry("c", enabled=False))
        m.consumer.put(0, entry("c"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            assert m.target.added() == [(frozenset("c"), RepairReason.STARTUP)]

    async def test_loaded_past_trailing_control_records(self) -> None:
        """The end offset may lie past the last record (transaction markers, compaction): the
        consumer's position tells the partition is read."""
        m = Member()
        m.consumer.put(0, entry("a"))
        m.consumer.ends[0] += 2
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            assert m.assignment.watched == {"a"}

    async def test_position_failure_retried(self) -> None:
        """The position could not be read: asked again on the next poll."""
        m = Member()
        m.consumer.put(0, entry("a"))
        m.consumer.ends[0] += 1
        m.consumer.position_errors.append(KafkaConnectionError("down"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            assert m.consumer.position_errors == []

    async def test_loading_resumes_after_a_rebalance(self) -> None:
        """A rebalance begun before the partition was read: loading waits (no position asked of
        a partition not assigned right now) and completes once it is assigned again."""
        m = Member()
        m.consumer.put(0, entry("a"))
        m.consumer.ends[0] += 1
        async with m:
            m.consumer.assign(0)
            m.consumer.revoke()
            await m.consumer.polled()
            assert not m.assignment.ready
            m.consumer.assign(0)
            await m.loaded()
            assert m.target.added() == [(frozenset("a"), RepairReason.STARTUP)]

    async def test_empty_partition_loaded_at_once(self) -> None:
        """Nothing to read: ready, nothing to hand over."""
        async with Member() as m:
            m.consumer.assign(2)
            await m.loaded()
            assert m.target.calls == []

    async def test_not_ready_before_an_assignment(self) -> None:
        """Polling alone is not ready: nobody has said which partitions are ours."""
        async with Member() as m:
            await m.consumer.polled()
            assert not m.assignment.ready

    async def test_no_startup_repair_when_disabled(self) -> None:
        """reconcile_on_start off: the first assignment's mailboxes come without a repair;
        later assignments still ask one."""
        m = Member(reconcile_on_start=False)
        m.consumer.put(0, entry("a"))
        m.consumer.put(1, entry("b"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            m.consumer.rebalance(0, 1)
            await m.until(lambda: "b" in m.target.watched, "b handed over")
            assert m.target.added() == [
                (frozenset("a"), None),
                (frozenset("b"), RepairReason.ASSIGNED),
            ]

    async def test_end_offsets_failure_retried(self) -> None:
        """The end offsets could not be read: asked again on the next poll."""
        m = Member()
        m.consumer.put(0, entry("a"))
        m.consumer.end_offset_errors.append(KafkaConnectionError("down"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            assert m.assignment.watched == {"a"}
            assert m.consumer.end_offset_errors == []

    async def test_bad_records_skipped(self) -> None:
        """Undecodable values and keys that name another mailbox are skipped and counted."""
        undecodable = sample("cumi_worker_registry_records_skipped_total", reason="undecodable")
        mismatch = sample("cumi_worker_registry_records_skipped_total", reason="key_mismatch")
        other = sample("cumi_worker_registry_records_skipped_total", reason="other_server")
        m = Member()
        m.consumer.append(0, b"junk", b'{"not": "avro"}')
        m.consumer.append(0, b"mismatch", codec.encode(entry("someone-else")))
        m.consumer.append(0, None, codec.encode(entry("keyless")))
        m.consumer.put(0, entry("elsewhere", server="cuc2"))
        m.consumer.put(0, entry("a"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            assert m.assignment.watched == {"a"}
        assert sample("cumi_worker_registry_records_skipped_total", reason="undecodable") == (
            undecodable + 2
        )
        assert (
            sample("cumi_worker_registry_records_skipped_total", reason="key_mismatch")
            == mismatch + 1
        )
        assert (
            sample("cumi_worker_registry_records_skipped_total", reason="other_server") == other + 1
        )


class TestLiveChanges:
    """Owned, loaded partitions are followed: changes reach the target as they are read."""

    async def test_add_disable_enable_remove(self) -> None:
        """A new entry is added (registered), a disabled one removed, re-enabled added again,
        a tombstone removes; another server's entry and an unchanged update do nothing."""
        m = Member()
        m.consumer.put(0, entry("a"))
        async with m:
            m.consumer.assign(0, 1)
            await m.loaded()
            m.consumer.put(1, entry("new"))
            m.consumer.put(1, entry("theirs", server="cuc2"))
            await m.until(lambda: "new" in m.target.watched, "new added")
            m.consumer.put(0, entry("a", enabled=False))
            await m.until(lambda: "a" not in m.target.watched, "a disabled")
            m.consumer.put(0, entry("a"))
            await m.until(lambda: "a" in m.target.watched, "a enabled again")
            m.consumer.put(1, entry("new", credentials_ref="x"))
            m.consumer.tombstone(1, "new")
            await m.until(lambda: "new" not in m.target.watched, "new removed")
            assert m.target.calls == [
                ("add", frozenset("a"), RepairReason.STARTUP),
                ("add", frozenset({"new"}), RepairReason.REGISTERED),
                ("remove", frozenset("a"), None),
                ("add", frozenset("a"), RepairReason.REGISTERED),
                ("remove", frozenset({"new"}), None),
            ]

    async def test_credentials_refs_follow_the_entries(self) -> None:
        """An entry's credentials_ref is where its credential is looked up; dropped with it."""
        inner = FakeCredentials()
        refs = CredentialRefs(inner)
        m = Member(credentials=refs)
        m.consumer.put(0, entry("a", credentials_ref="secret-a"))
        m.consumer.put(0, entry("b"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            assert refs.refs == {"a": "secret-a"}
            await refs.credential_for("a")
            refs.forget("a")
            assert inner.asked == ["secret-a"]
            assert inner.forgotten == ["secret-a"]
            m.consumer.put(0, entry("a"))
            await m.consumer.polled()
            assert refs.refs == {}


class TestRebalance:
    """Revocations are deferred until the assignment says what was lost."""

    async def test_kept_partitions_are_neither_dropped_nor_read_again(self) -> None:
        """A rebalance that gives back the same partitions changes nothing."""
        m = Member()
        m.consumer.put(0, entry("a"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            m.consumer.rebalance(0)
            await m.consumer.polled()
            assert m.assignment.ready
            assert m.target.calls == [("add", frozenset("a"), RepairReason.STARTUP)]

    async def test_moved_partitions(self) -> None:
        """A lost partition's mailboxes are removed; a newly assigned one's are added for an
        `assigned` repair; a kept one is left alone."""
        m = Member()
        m.consumer.put(0, entry("a"))
        m.consumer.put(1, entry("b"))
        m.consumer.put(2, entry("c"))
        async with m:
            m.consumer.assign(0, 1)
            await m.loaded()
            m.consumer.rebalance(1, 2)
            await m.until(lambda: m.target.watched == {"b", "c"}, "the move")
            assert m.target.calls[1:] == [
                ("remove", frozenset("a"), None),
                ("add", frozenset("c"), RepairReason.ASSIGNED),
            ]
            assert m.assignment.partitions == {1, 2}

    async def test_revocation_kept_until_twice_the_rebalance_timeout(self) -> None:
        """Revoked and then no assignment: still watching until twice the rebalance timeout,
        then everything is given up; a later assignment brings it back (assigned)."""
        m = Member()
        m.consumer.put(0, entry("a"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            m.consumer.revoke()
            m.clock.advance(2 * TIMEOUT_MS / 1000 - 0.1)
            await m.consumer.polled()
            assert m.target.watched == {"a"}
            m.clock.advance(0.2)
            m.consumer.wake()
            await m.until(lambda: not m.target.watched, "given up")
            assert m.assignment.partitions == frozenset()
            m.consumer.assign(0)
            await m.until(lambda: m.target.watched == {"a"}, "assigned again")
            assert m.target.added()[-1] == (frozenset("a"), RepairReason.ASSIGNED)

    async def test_assignment_cancels_the_revocation_deadline(self) -> None:
        """The assignment after a revocation ends the countdown: nothing given up later."""
        m = Member()
        m.consumer.put(0, entry("a"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
            m.consumer.rebalance(0)
            m.clock.advance(10 * TIMEOUT_MS / 1000)
            await m.consumer.polled()
            assert m.target.watched == {"a"}


def backoff(delay: float, attempt: int) -> bool:
    """`delay` is what retry `attempt` of the assignment's backoff (1 s doubling) may wait."""
    ceiling = min(30.0, 2.0 ** (attempt - 1))
    return ceiling / 2 <= delay <= ceiling


class TestRetries:
    """Kafka failures are waited out on the clock, with a growing delay; nothing is fatal."""

    @pytest.mark.parametrize(
        "error",
        [KafkaConnectionError("down"), BrokerError("no leader"), OSError("unreachable")],
        ids=["kafka", "broker", "os"],
    )
    async def test_registry_topic_retried_until_it_exists(self, error: Exception) -> None:
        """The registry topic could not be ensured: tried again after a backoff that grows;
        the group is joined only once the topic is there."""
        m = Member()
        m.topic_errors = [error, error]
        await m.assignment.start()
        try:
            assert backoff(await m.clock.skip(), 1)
            assert not m.consumer.started
            assert backoff(await m.clock.skip(), 2)
            await m.until(lambda: m.consumer.started, "group joined")
            assert m.topics_ensured == 1
            assert not m.assignment.failed.is_set()
        finally:
            await m.assignment.stop()

    async def test_stop_during_a_retry_wait(self) -> None:
        """stop() while the topic retry waits ends it at once (no consumer ever made)."""
        m = Member()
        m.topic_errors = [KafkaConnectionError("down")]
        await m.assignment.start()
        await m.clock.waiting()
        await m.assignment.stop()
        assert m.clock.pending() == []
        assert m.consumer.options == {}

    async def test_failed_poll_waits_then_reads_on(self) -> None:
        """A poll that fails waits a retry delay on the clock, then reading goes on."""
        m = Member()
        m.consumer.put(0, entry("a"))
        async with m:
            m.consumer.poll_errors.append(KafkaConnectionError("down"))
            m.consumer.assign(0)
            await m.consumer.polled(1)
            assert backoff(await m.clock.skip(), 1)
            await m.loaded()
            assert m.assignment.watched == {"a"}
            assert not m.assignment.failed.is_set()


class TestLifecycle:
    async def test_stop_leaves_the_group_and_unsubscribes(self) -> None:
        """stop() stops the consumer (LeaveGroup) and removes every watched mailbox; again, it
        does nothing."""
        m = Member()
        m.consumer.put(0, entry("a"))
        async with m:
            m.consumer.assign(0)
            await m.loaded()
        assert m.consumer.stopped
        assert m.target.watched == set()
        calls = len(m.target.calls)
        await m.assignment.stop()
        assert len(m.target.calls) == calls

    async def test_unexpected_error_is_fatal(self) -> None:
        """An error that is not Kafka's ends the loop: `failed` set, `fatal` kept."""
        m = Member()
        m.consumer.start_error = RuntimeError("bug")
        await m.assignment.start()
        async with asyncio.timeout(2):
            await m.assignment.failed.wait()
        assert isinstance(m.assignment.fatal, RuntimeError)
        await m.assignment.stop()


@pytest.mark.parametrize("partitions", [(0,), (0, 1, 2, 3)])
async def test_partition_count_does_not_change_the_outcome(partitions: tuple[int, ...]) -> None:
    """However the entries are spread, the loaded assignment watches exactly the enabled ones."""
    m = Member()
    for i in range(20):
        m.consumer.put(partitions[i % len(partitions)], entry(f"u{i}", enabled=i % 5 != 0))
    async with m:
        m.consumer.assign(*partitions)
        await m.loaded()
        assert m.assignment.watched == {f"u{i}" for i in range(20) if i % 5 != 0}
