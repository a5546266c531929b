"""The reconciler (ingest.cumi.gap_repair) against a fake REST server and a fake sink.

Covers the snapshot USN rule (read before listing), re-listing when a paginated listing raced a
change, the queue (duplicates, a request while listing, cancel), retries with their bound, and
what is and is not retried (transport and publish failures; not refused credentials). Retry timers
sleep on a FakeClock: a test moves it to the next retry (`retry`) and sees the delay chosen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fakes import FakeClock, eventually, sample
from fakes.cumi import FakeCredentials, FakeMailbox, FakeRestClient, FakeSink, message

from ingest.cumi.gap_repair import Reconciler
from ingest.cumi.rest import RestError
from ingest.errors import AuthError, BrokerError, TransportError
from ingest.events import RepairReason

PAGE = 10
RETRY_BASE = 1.0
"""Fake seconds: retry n waits between RETRY_BASE·2ⁿ⁻² and RETRY_BASE·2ⁿ⁻¹ (equal jitter)."""


@pytest.fixture
def rest() -> FakeRestClient:
    rest = FakeRestClient()
    rest.server["alice"] = FakeMailbox(
        usn=7, inbox=[message("m1"), message("m2", read=True)], deleted=[message("d1")]
    )
    rest.server["bob"] = FakeMailbox(usn=3)
    return rest


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def credentials() -> FakeCredentials:
    return FakeCredentials()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def reconciler(
    rest: FakeRestClient, sink: FakeSink, credentials: FakeCredentials, clock: FakeClock
) -> AsyncIterator[Reconciler]:
    async with Reconciler(
        rest,
        credentials,
        sink.publish_snapshot,
        source="cuc1",
        concurrency=2,
        page_size=PAGE,
        stable_attempts=3,
        max_attempts=3,
        retry_base=RETRY_BASE,
        clock=clock,
    ) as reconciler:
        yield reconciler


async def idle(reconciler: Reconciler) -> None:
    await eventually(lambda: reconciler.pending == 0, "the reconciler is idle")
    await reconciler.wait_idle()


async def retry(clock: FakeClock) -> float:
    """A failed repair waits for its retry timer: move the clock to it; returns the delay."""
    return await clock.skip()


def within_backoff(delay: float, attempt: int) -> bool:
    ceiling: float = RETRY_BASE * 2.0 ** (attempt - 1)
    return ceiling / 2 <= delay <= ceiling


class TestSnapshot:
    """What one repair publishes."""

    async def test_listing_published_with_reason_and_source(
        self, reconciler: Reconciler, sink: FakeSink, clock: FakeClock
    ) -> None:
        """A repair lists Inbox and Deleted and publishes them as one snapshot, keyed by alias."""
        reconciler.request("alice", RepairReason.STARTUP)
        await idle(reconciler)
        (snapshot,) = sink.snapshots
        assert snapshot.mailbox_id == "alice"
        assert snapshot.usn == 7
        assert snapshot.reason == "startup"
        assert snapshot.source == "cuc1"
        assert [m.message_id for m in snapshot.inbox] == ["m1", "m2"]
        assert [m.read for m in snapshot.inbox] == [False, True]
        assert [m.message_id for m in snapshot.deleted] == ["d1"]
        assert snapshot.taken_at == clock.utc_now()  # the clock's, in milliseconds like Avro's
        assert reconciler.published == 1

    async def test_usn_is_read_before_listing(
        self, reconciler: Reconciler, sink: FakeSink, rest: FakeRestClient
    ) -> None:
        """A message arriving after the Inbox was listed is not in the snapshot, so the
        snapshot's USN must be the one before it (its event, newer, then wins)."""

        def arrives_after_inbox_listed(operation: str, alias: str) -> None:
            if operation == "list:deleted" and alias == "alice":
                rest.server[alias].arrive("late")

        rest.on_call = arrives_after_inbox_listed
        reconciler.request("alice", RepairReason.SESSION_LOST)
        await idle(reconciler)
        (snapshot,) = sink.snapshots
        assert "late" not in {m.message_id for m in snapshot.inbox}
        assert snapshot.usn == 7
        assert rest.calls == [
            ("folder:inbox", "alice"),
            ("list:inbox", "alice"),
            ("list:deleted", "alice"),
        ]

    async def test_single_pages_are_not_checked_again(
        self, reconciler: Reconciler, rest: FakeRestClient
    ) -> None:
        """Folders read in one page each are consistent: no second USN read, no re-listing."""
        reconciler.request("bob", RepairReason.STARTUP)
        await idle(reconciler)
        assert rest.count("folder:inbox", "bob") == 1
        assert rest.count("list:inbox", "bob") == 1

    async def test_paginated_listing_raced_by_a_change_is_taken_again(
        self, reconciler: Reconciler, sink: FakeSink, rest: FakeRestClient
    ) -> None:
        """Several pages and a USN that moved meanwhile: list again; the snapshot carries the USN
        read before the listing that was kept."""
        rest.server["carol"] = FakeMailbox(usn=50, inbox=[message(f"m{i}") for i in range(25)])
        listings = 0

        def one_change_during_first_listing(operation: str, alias: str) -> None:
            nonlocal listings
            if operation == "list:inbox":
                listings += 1
                if listings == 1:
                    rest.server[alias].arrive("during")

        rest.on_call = one_change_during_first_listing
        reconciler.request("carol", RepairReason.STARTUP)
        await idle(reconciler)
        (snapshot,) = sink.snapshots
        assert rest.count("list:inbox") == 2
        assert rest.count("folder:inbox") == 4  # before and after each of the two listings
        assert snapshot.usn == 51
        assert len(snapshot.inbox) == 26

    async def test_paginated_listing_without_change_is_taken_once(
        self, reconciler: Reconciler, sink: FakeSink, rest: FakeRestClient
    ) -> None:
        """Several pages but the same USN after: the listing stands."""
        rest.server["carol"] = FakeMailbox(usn=50, deleted=[message(f"d{i}") for i in range(11)])
        reconciler.request("carol", RepairReason.STARTUP)
        await idle(reconciler)
        assert rest.count("list:deleted") == 1
        assert rest.count("folder:inbox") == 2
        assert sink.snapshots[0].usn == 50

    async def test_restless_mailbox_published_after_the_last_attempt(
        self, reconciler: Reconciler, sink: FakeSink, rest: FakeRestClient
    ) -> None:
        """A mailbox that changes during every paginated listing is listed `stable_attempts`
        times; the last listing is published with the USN read before it."""
        rest.server["carol"] = FakeMailbox(usn=50, inbox=[message(f"m{i}") for i in range(15)])

        def always_changing(operation: str, alias: str) -> None:
            if operation == "list:inbox":
                rest.server[alias].arrive(f"x{rest.server[alias].usn}")

        rest.on_call = always_changing
        reconciler.request("carol", RepairReason.STARTUP)
        await idle(reconciler)
        assert rest.count("list:inbox") == 3
        (snapshot,) = sink.snapshots
        assert snapshot.usn == 52
        assert len(snapshot.inbox) == 18


class TestQueue:
    """Requests, duplicates and cancellations."""

    async def test_duplicate_requests_list_once(
        self, rest: FakeRestClient, sink: FakeSink, credentials: FakeCredentials
    ) -> None:
        """Asked twice before it starts, a mailbox is listed once, for the first reason."""
        reconciler = Reconciler(rest, credentials, sink.publish_snapshot)
        reconciler.request("alice", RepairReason.STARTUP)
        reconciler.request("alice", RepairReason.SESSION_LOST)
        assert reconciler.pending == 1
        async with reconciler:
            await idle(reconciler)
        assert [s.reason for s in sink.snapshots] == ["startup"]

    async def test_request_while_listing_lists_once_more(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink
    ) -> None:
        """Asked again while its listing runs (a new gap began meanwhile), the mailbox is listed
        once more afterwards, for the new reason."""
        gate = rest.hold("folder:inbox", "alice")
        reconciler.request("alice", RepairReason.STARTUP)
        await eventually(lambda: rest.count("folder:inbox", "alice") == 1, "listing begins")
        reconciler.request("alice", RepairReason.CONNECT_FAILED)
        reconciler.request("alice", RepairReason.SESSION_LOST)
        assert reconciler.pending == 1
        gate.set()
        await idle(reconciler)
        assert [s.reason for s in sink.snapshots] == ["startup", "session-lost"]

    async def test_cancel_drops_a_queued_repair(
        self, rest: FakeRestClient, sink: FakeSink, credentials: FakeCredentials
    ) -> None:
        """A repair cancelled before it starts is never listed."""
        reconciler = Reconciler(rest, credentials, sink.publish_snapshot)
        reconciler.request("alice", RepairReason.STARTUP)
        reconciler.request("bob", RepairReason.STARTUP)
        reconciler.cancel("alice")
        assert reconciler.pending == 1
        async with reconciler:
            await idle(reconciler)
        assert [s.mailbox_id for s in sink.snapshots] == ["bob"]
        assert rest.count("folder:inbox", "alice") == 0

    async def test_cancel_drops_the_listing_asked_again(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink
    ) -> None:
        """Cancelled while listing, the mailbox is not listed once more afterwards."""
        gate = rest.hold("folder:inbox", "alice")
        reconciler.request("alice", RepairReason.STARTUP)
        await eventually(lambda: rest.count("folder:inbox") == 1, "listing begins")
        reconciler.request("alice", RepairReason.SESSION_LOST)
        reconciler.cancel("alice")
        gate.set()
        await idle(reconciler)
        assert [s.reason for s in sink.snapshots] == ["startup"]

    async def test_idle_only_when_nothing_is_left(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink
    ) -> None:
        """wait_idle waits for listings in progress, not only for the queue."""
        gate = rest.hold("list:deleted", "alice")
        reconciler.request("alice", RepairReason.STARTUP)
        await eventually(lambda: rest.count("list:deleted") == 1, "listing under way")
        assert reconciler.pending == 1
        waiting = asyncio.ensure_future(reconciler.wait_idle())
        reconciler.request("bob", RepairReason.STARTUP)  # a whole repair happens meanwhile
        await eventually(lambda: bool(sink.of("bob")), "bob repaired")
        assert not waiting.done()
        gate.set()
        async with asyncio.timeout(2):
            await waiting
        assert reconciler.pending == 0


class TestFailures:
    """What is retried, how often, and what is not."""

    async def test_transport_failure_retried_with_a_growing_delay(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """A listing that fails with a transport error is retried after a backoff delay (longer
        after each failure), then published; nothing is retried before its time."""
        rest.fail("list:inbox", "alice", TransportError("503"), TransportError("reset"))
        reconciler.request("alice", RepairReason.STARTUP)
        (first,) = await clock.waiting()
        assert within_backoff(first, 1)
        clock.advance(first * 0.99)
        # the retry's timer is still parked on the clock, so nothing can have listed again
        assert clock.pending() == [pytest.approx(first * 0.01)]
        assert rest.count("list:inbox", "alice") == 1
        clock.advance(first * 0.01)
        assert within_backoff(await retry(clock), 2)
        await idle(reconciler)
        assert rest.count("list:inbox", "alice") == 3
        assert [s.reason for s in sink.snapshots] == ["startup"]

    async def test_gives_up_after_max_attempts(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """After max_attempts failures the repair is dropped; others carry on."""
        rest.fail("folder:inbox", "alice", *(RestError("404", 404) for _ in range(5)))
        reconciler.request("alice", RepairReason.STARTUP)
        reconciler.request("bob", RepairReason.STARTUP)
        for _ in range(2):
            await retry(clock)
        await idle(reconciler)
        assert rest.count("folder:inbox", "alice") == 3
        assert clock.pending() == []
        assert [s.mailbox_id for s in sink.snapshots] == ["bob"]

    async def test_attempts_counted_afresh_after_giving_up(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """A repair asked again after one gave up has its full number of attempts, and its
        backoff starts over."""
        rest.fail("folder:inbox", "alice", *(TransportError("down") for _ in range(5)))
        reconciler.request("alice", RepairReason.STARTUP)
        for _ in range(2):
            await retry(clock)
        await idle(reconciler)
        reconciler.request("alice", RepairReason.RESUBSCRIBE)
        assert within_backoff(await retry(clock), 1)
        await retry(clock)
        await idle(reconciler)
        assert rest.count("folder:inbox", "alice") == 6  # 3 failed; 2 failed, then success
        assert [s.reason for s in sink.snapshots] == ["resubscribe"]

    async def test_refused_credentials_not_retried(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """401/403 belong to the subscription manager: the repair is dropped at once."""
        rest.fail("list:inbox", "alice", AuthError("401"))
        reconciler.request("alice", RepairReason.STARTUP)
        await idle(reconciler)
        assert rest.count("list:inbox", "alice") == 1
        assert clock.pending() == []
        assert sink.snapshots == []

    async def test_missing_credentials_not_retried(
        self, rest: FakeRestClient, sink: FakeSink
    ) -> None:
        """No credentials at all: nothing is listed, nothing retried."""
        credentials = FakeCredentials(missing=["alice"])
        async with Reconciler(rest, credentials, sink.publish_snapshot) as reconciler:
            reconciler.request("alice", RepairReason.STARTUP)
            await idle(reconciler)
        assert credentials.asked == ["alice"]
        assert rest.calls == []

    async def test_publish_failure_retried(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """The sink refusing a snapshot (broker down) is retried like a listing failure."""
        sink.errors.append(BrokerError("broker down"))
        reconciler.request("alice", RepairReason.STARTUP)
        await retry(clock)
        await idle(reconciler)
        assert rest.count("list:inbox", "alice") == 2
        assert [s.mailbox_id for s in sink.snapshots] == ["alice"]

    async def test_cancel_during_retry_wait(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """A repair cancelled while it waits for its retry is not listed again."""
        rest.fail("folder:inbox", "alice", TransportError("down"))
        reconciler.request("alice", RepairReason.STARTUP)
        await clock.waiting()
        reconciler.cancel("alice")
        reconciler.request("bob", RepairReason.STARTUP)
        await idle(reconciler)
        await retry(clock)  # the timer still fires; it must find nothing to do
        await eventually(lambda: not reconciler._timers, "the retry timer fired")
        await idle(reconciler)
        assert rest.count("folder:inbox", "alice") == 1
        assert [s.mailbox_id for s in sink.snapshots] == ["bob"]

    async def test_cancel_while_listing_survives_a_failure(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """A repair cancelled (mailbox removed) during a listing that then fails is not retried:
        no timer, nothing pending."""
        gate = rest.hold("list:inbox", "alice")
        rest.fail("list:inbox", "alice", TransportError("reset"))
        reconciler.request("alice", RepairReason.STARTUP)
        await eventually(lambda: rest.count("list:inbox") == 1, "listing under way")
        reconciler.cancel("alice")
        gate.set()
        await idle(reconciler)
        assert clock.pending() == []
        assert rest.count("list:inbox", "alice") == 1
        assert sink.snapshots == []

    async def test_cancelled_then_asked_again_while_listing_lists_again(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """Cancelled and then asked again during a listing that fails: the new request stands,
        listed once more, for its own reason."""
        gate = rest.hold("list:inbox", "alice")
        rest.fail("list:inbox", "alice", TransportError("reset"))
        reconciler.request("alice", RepairReason.STARTUP)
        await eventually(lambda: rest.count("list:inbox") == 1, "listing under way")
        reconciler.cancel("alice")
        reconciler.request("alice", RepairReason.SESSION_LOST)
        gate.set()
        await idle(reconciler)
        assert clock.pending() == []
        assert [s.reason for s in sink.snapshots] == ["session-lost"]

    async def test_unexpected_error_logged_counted_and_worker_kept(
        self,
        rest: FakeRestClient,
        sink: FakeSink,
        credentials: FakeCredentials,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """An error that is no IngestError (a bug) fails that repair: logged with its traceback,
        counted as a failed run, not retried; the worker (the only one) serves the next."""
        failures = sample("cumi_worker_reconcile_runs_total", reason="startup", outcome="failure")
        sink.errors.append(RuntimeError("bug"))
        async with Reconciler(rest, credentials, sink.publish_snapshot, concurrency=1) as r:
            r.request("alice", RepairReason.STARTUP)
            await idle(r)
            r.request("bob", RepairReason.STARTUP)
            await idle(r)
        assert [s.mailbox_id for s in sink.snapshots] == ["bob"]
        (record,) = [rec for rec in caplog.records if rec.exc_info is not None]
        assert "alice" in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)
        after = sample("cumi_worker_reconcile_runs_total", reason="startup", outcome="failure")
        assert after == failures + 1


INTERVAL = 30.0
"""The reconciler's default dead_letter_interval (CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS)."""


class TestDeadLetterRepair:
    """A dead letter naming a mailbox repairs it (reason `dead-letter`), at most once per interval
    per mailbox; one within the interval defers a single repair to the interval's end."""

    async def test_repaired_at_once_with_its_reason(
        self, reconciler: Reconciler, sink: FakeSink
    ) -> None:
        assert reconciler.request_dead_letter("alice") == "triggered"
        await idle(reconciler)
        assert [(s.mailbox_id, s.reason) for s in sink.snapshots] == [("alice", "dead-letter")]

    async def test_within_the_interval_one_repair_follows_at_its_end(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink, clock: FakeClock
    ) -> None:
        """Many dead letters in the interval: one deferred repair, which counts as pending (the
        worker is not idle until it ran) and lists what changed after the first repair."""
        reconciler.request_dead_letter("alice")
        await eventually(lambda: len(sink.snapshots) == 1, "the first repair")
        clock.advance(10)
        rest.server["alice"].arrive("m9")  # the change a second bad payload stood for
        outcomes = [reconciler.request_dead_letter("alice") for _ in range(5)]
        assert outcomes == ["deferred"] * 5
        assert reconciler.pending == 1
        assert await clock.waiting() == [INTERVAL - 10]
        assert len(sink.snapshots) == 1
        await clock.skip()
        await idle(reconciler)
        assert [s.reason for s in sink.snapshots] == ["dead-letter", "dead-letter"]
        assert "m9" in [m.message_id for m in sink.snapshots[-1].inbox]

    async def test_after_the_interval_repaired_at_once_again(
        self, reconciler: Reconciler, sink: FakeSink, clock: FakeClock
    ) -> None:
        reconciler.request_dead_letter("alice")
        await idle(reconciler)
        clock.advance(INTERVAL)
        assert reconciler.request_dead_letter("alice") == "triggered"
        await idle(reconciler)
        assert len(sink.of("alice")) == 2
        assert clock.pending() == []

    async def test_the_limit_is_per_mailbox(self, reconciler: Reconciler, sink: FakeSink) -> None:
        assert reconciler.request_dead_letter("alice") == "triggered"
        assert reconciler.request_dead_letter("bob") == "triggered"
        await idle(reconciler)
        assert sorted(s.mailbox_id for s in sink.snapshots) == ["alice", "bob"]

    async def test_the_interval_is_a_setting(
        self, rest: FakeRestClient, sink: FakeSink, credentials: FakeCredentials, clock: FakeClock
    ) -> None:
        async with Reconciler(
            rest, credentials, sink.publish_snapshot, dead_letter_interval=5.0, clock=clock
        ) as reconciler:
            reconciler.request_dead_letter("alice")
            clock.advance(1)
            assert reconciler.request_dead_letter("alice") == "deferred"
            assert await clock.waiting() == [4.0]
            await clock.skip()
            await idle(reconciler)
        assert len(sink.of("alice")) == 2

    async def test_cancel_drops_the_deferred_repair(
        self, reconciler: Reconciler, sink: FakeSink, clock: FakeClock
    ) -> None:
        """The mailbox is no longer subscribed (removed, or its session lost: that repair is
        its own): the deferred dead-letter repair is not made."""
        reconciler.request_dead_letter("alice")
        await idle(reconciler)
        reconciler.request_dead_letter("alice")
        reconciler.cancel("alice")
        assert reconciler.pending == 0
        await clock.skip()  # the timer still fires; it must find nothing to do
        await eventually(lambda: not reconciler._timers, "the timer fired")
        await idle(reconciler)
        assert len(sink.of("alice")) == 1

    async def test_a_dead_letter_during_a_listing_lists_again(
        self, reconciler: Reconciler, rest: FakeRestClient, sink: FakeSink
    ) -> None:
        """A listing under way may have read the USN before the bad payload's change: the
        mailbox is listed once more afterwards."""
        gate = rest.hold("list:inbox", "alice")
        reconciler.request("alice", RepairReason.STARTUP)
        await eventually(lambda: rest.count("list:inbox") == 1, "listing under way")
        assert reconciler.request_dead_letter("alice") == "triggered"
        gate.set()
        await idle(reconciler)
        assert [s.reason for s in sink.snapshots] == ["startup", "dead-letter"]


class TestLifecycle:
    async def test_stop_cancels_work_and_timers_and_is_idempotent(
        self, rest: FakeRestClient, sink: FakeSink, credentials: FakeCredentials, clock: FakeClock
    ) -> None:
        """stop() ends listings in progress and pending retries; a second stop() is harmless."""
        reconciler = Reconciler(rest, credentials, sink.publish_snapshot, clock=clock)
        await reconciler.start()
        rest.fail("folder:inbox", "bob", TransportError("down"))
        rest.hold("list:inbox", "alice")
        reconciler.request("alice", RepairReason.STARTUP)
        reconciler.request("bob", RepairReason.STARTUP)
        await clock.waiting()
        await reconciler.stop()
        await reconciler.stop()
        assert not reconciler._timers
        assert clock.pending() == []
        assert sink.snapshots == []
