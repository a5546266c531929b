"""The subscription manager (ingest.cumi.subscriptions) against fakes of its four ports.

The REST client issues subscription ids (`<alias>.<n>`), the CometD sessions are made by a fake
factory whose server is scripted per channel, the gap-repair queue only records what it is asked.
Each test drives the manager's `run()` task and waits, bounded, for the state it must reach. The
manager's clock is a FakeClock: its backoffs and retry timers run only when a test moves the clock,
so a test sees each delay chosen, and a mailbox that failed stays failed until the test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable
from types import TracebackType

import pytest
from fakes import FakeClock, eventually, sample
from fakes.cumi import (
    FakeCredentials,
    FakeReconciler,
    FakeRestClient,
    FakeSession,
    FakeSessions,
    subscription_id,
)

from ingest.cumi.session import LossReason, channel_for
from ingest.cumi.subscriptions import SubscriptionManager, SubscriptionPolicy, SubState
from ingest.errors import AuthError, TransportError
from ingest.events import RepairReason

POLICY = SubscriptionPolicy(
    batch_size=10,
    request_workers=4,
    auth_retry_seconds=30.0,
    retry_base=1.0,
    retry_cap=8.0,
    session_backoff_base=1.0,
    session_backoff_cap=8.0,
    progress=False,
)
"""Fake seconds. Retry n (mailbox or session) waits between 2ⁿ⁻² and 2ⁿ⁻¹ s (equal jitter), at
most 8 s; refused credentials wait 27-30 s."""


def backoff(delay: float, attempt: int) -> bool:
    """`delay` is what retry `attempt` of POLICY's mailbox or session backoff may wait."""
    ceiling = min(8.0, 2.0 ** (attempt - 1))
    return ceiling / 2 <= delay <= ceiling


def ch(alias: str, n: int = 1) -> str:
    """The channel of the n-th subscription of `alias`."""
    return channel_for(subscription_id(alias, n))


class Manager:
    """A running SubscriptionManager and its fakes."""

    def __init__(
        self,
        aliases: Iterable[str],
        policy: SubscriptionPolicy = POLICY,
        credentials: FakeCredentials | None = None,
        *,
        repairs: bool = True,
    ) -> None:
        self.rest = FakeRestClient()
        self.credentials = credentials or FakeCredentials()
        self.sessions = FakeSessions()
        self.reconciler = FakeReconciler()
        self.clock = FakeClock()
        self.manager = SubscriptionManager(
            aliases,
            self.rest,
            self.credentials,
            self.sessions,
            reconciler=self.reconciler if repairs else None,
            policy=policy,
            clock=self.clock,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None]:
        assert self._task is not None
        return self._task

    async def __aenter__(self) -> Manager:
        self._task = asyncio.create_task(self.manager.run())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await self._task

    def _alive(self) -> None:
        """A failed run() ends the wait at once, with its error."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def until(self, check: object, what: str) -> None:
        assert callable(check)

        def probe() -> bool:
            self._alive()
            return bool(check())

        await eventually(probe, what)

    async def ready(self, sessions: int = 1) -> None:
        """The `sessions`-th session is up and its first pass is over."""
        await self.until(
            lambda: self.manager.sessions_started == sessions and self.manager.ready.is_set(),
            f"session {sessions} ready",
        )

    def state(self, alias: str) -> SubState:
        return self.manager.mailboxes[alias].state

    def states(self) -> dict[str, SubState]:
        return {alias: m.state for alias, m in self.manager.mailboxes.items()}

    @property
    def session(self) -> FakeSession:
        return self.sessions.current

    async def backoff(self) -> float:
        """run() waits before its next session (one failed to start, or was lost): move the
        clock to the end of that wait; returns its length."""
        await self.until(
            lambda: self.manager.session is None and self.clock.pending(), "a session backoff"
        )
        (delay,) = self.clock.pending()
        self.clock.advance(delay)
        return delay

    async def retry(self) -> float:
        """The pass is over and waits for the next mailbox retry: move the clock to it; returns
        how long the manager waited."""
        await self.until(self.manager.ready.is_set, "the pass over")
        return await self.clock.skip()

    async def lose(self, reason: LossReason = LossReason.UNKNOWN_CLIENT) -> FakeSession:
        """The current session is lost; returns it once the next one is ready."""
        old = self.session
        count = self.manager.sessions_started
        old.lose(reason)
        await self.backoff()
        await self.ready(count + 1)
        return old


ALIASES = [f"user{i:02d}" for i in range(25)]


class TestStartup:
    """The first session: every mailbox requested, subscribed in batches, repaired."""

    async def test_every_mailbox_subscribed_in_batches_and_repaired(self) -> None:
        """One requestnotification each, subscribes batched by batch_size, all active, a
        startup repair each, the state gauges in line."""
        async with Manager(ALIASES) as m:
            await m.ready()
            assert set(m.states().values()) == {SubState.ACTIVE}
            assert [m.rest.count("requestnotification", a) for a in ALIASES] == [1] * 25
            assert sorted(m.session.subscribes()) == sorted(ch(a) for a in ALIASES)
            assert max(len(batch) for batch in m.session.batches) <= 10
            assert sorted(m.reconciler.requests()) == [(a, "startup") for a in ALIASES]
            assert m.manager.counts()["active"] == 25
            assert sum(m.manager.counts().values()) == 25
            for state in SubState:
                gauge = sample("cumi_worker_subscriptions", state=state.value)
                assert gauge == m.manager.counts()[state.value]

    async def test_no_startup_repair_when_disabled(self) -> None:
        """reconcile_on_start off: subscribed, but no snapshot asked."""
        policy = dataclasses.replace(POLICY, reconcile_on_start=False)
        async with Manager(["a", "b"], policy) as m:
            await m.ready()
            assert m.states() == {"a": SubState.ACTIVE, "b": SubState.ACTIVE}
            assert m.reconciler.log == []

    async def test_duplicate_aliases_watched_once(self) -> None:
        """An alias listed twice is one mailbox, requested once."""
        async with Manager(["a", "b", "a"]) as m:
            await m.ready()
            assert list(m.manager.mailboxes) == ["a", "b"]
            assert m.rest.count("requestnotification", "a") == 1

    async def test_handshake_failures_retried_with_a_new_session(self) -> None:
        """A session that cannot start is thrown away and another made, after a backoff that
        grows, until one starts."""
        m = Manager(["a"])
        m.sessions.start_failures = 2
        async with m:
            assert backoff(await m.backoff(), 1)
            assert backoff(await m.backoff(), 2)
            await m.ready()
            assert len(m.sessions.made) == 3
            assert m.sessions.started() == [m.session]
            assert m.state("a") is SubState.ACTIVE


class TestFailures:
    """One mailbox's failure stays its own."""

    async def test_refused_credentials_mark_the_mailbox_failed(self) -> None:
        """401/403 on requestnotification: FAILED, the cached credential forgotten, a metric;
        the other mailboxes carry on."""
        failures = sample("cumi_worker_auth_failures_total")
        async with Manager(["a", "b", "c"], POLICY) as m:
            m.rest.fail("requestnotification", "b", AuthError("401 Unauthorized"))
            await m.ready()
            assert m.states() == {"a": SubState.ACTIVE, "b": SubState.FAILED, "c": SubState.ACTIVE}
            assert m.credentials.forgotten == ["b"]
            assert sample("cumi_worker_auth_failures_total") == failures + 1
            assert sorted(m.reconciler.requests()) == [("a", "startup"), ("c", "startup")]
            mailbox = m.manager.mailboxes["b"]
            assert mailbox.failures == 1
            assert mailbox.repair is RepairReason.STARTUP  # still owed once it is subscribed

    async def test_failed_mailbox_tried_again_after_auth_retry(self) -> None:
        """After CUMI_AUTH_RETRY_SECONDS a FAILED mailbox is requested again, and repaired."""
        async with Manager(["a", "b"]) as m:
            m.rest.fail("requestnotification", "b", AuthError("403 Forbidden"))
            assert 27.0 <= await m.retry() <= 30.0
            await m.until(lambda: m.state("b") is SubState.ACTIVE, "b subscribed after all")
            assert m.rest.count("requestnotification", "b") == 2
            assert ("b", "startup") in m.reconciler.requests()
            assert m.manager.mailboxes["b"].failures == 0

    async def test_missing_credentials_fail_without_a_request(self) -> None:
        """No credentials for a mailbox: FAILED, nothing sent to the server for it."""
        credentials = FakeCredentials(missing=["b"])
        async with Manager(["a", "b"], POLICY, credentials) as m:
            await m.ready()
            assert m.state("b") is SubState.FAILED
            assert m.rest.count("requestnotification", "b") == 0

    async def test_transient_request_failure_backs_off(self) -> None:
        """A transport error on requestnotification: BACKOFF, not FAILED; nothing forgotten."""
        async with Manager(["a", "b"], POLICY) as m:
            m.rest.fail("requestnotification", "b", TransportError("503"))
            await m.ready()
            assert m.state("b") is SubState.BACKOFF
            assert m.credentials.forgotten == []
            assert m.manager.counts()["backoff"] == 1

    async def test_backoff_retried(self) -> None:
        """A mailbox in BACKOFF is requested again once its delay is over; the delay grows with
        each failure."""
        async with Manager(["a", "b"]) as m:
            m.rest.fail("requestnotification", "b", TransportError("503"), TransportError("503"))
            assert backoff(await m.retry(), 1)
            assert backoff(await m.retry(), 2)
            await m.until(lambda: m.state("b") is SubState.ACTIVE, "b subscribed after all")
            assert m.rest.count("requestnotification", "b") == 3
            assert m.reconciler.requests().count(("b", RepairReason.STARTUP)) == 1

    async def test_refused_subscribe_backs_off_then_requests_anew(self) -> None:
        """A subscribe refused (not 403): BACKOFF, the subscription id dropped; the retry asks
        for a new one."""
        async with Manager(["a", "b"]) as m:
            m.sessions.refuse(ch("b"), "500::server error")
            await m.retry()
            await m.until(lambda: m.state("b") is SubState.ACTIVE, "b subscribed after all")
            assert m.manager.mailboxes["b"].subscription_id == subscription_id("b", 2)
            assert m.session.subscribes().count(ch("b", 2)) == 1
            assert m.reconciler.requests().count(("b", RepairReason.STARTUP)) == 1

    async def test_fresh_subscription_refused_403_requested_again_at_once(self) -> None:
        """A 403 on a subscribe, the first failure: the id is unknown to the server, so a new
        one is requested in the same pass, without a backoff."""
        async with Manager(["a", "b"], POLICY) as m:
            m.sessions.refuse(ch("b"), "403::Unknown subscription")
            await m.ready()
            assert m.state("b") is SubState.ACTIVE
            assert m.manager.mailboxes["b"].subscription_id == subscription_id("b", 2)

    async def test_second_403_backs_off(self) -> None:
        """The new subscription refused too: BACKOFF (no endless request loop)."""
        async with Manager(["a", "b"], POLICY) as m:
            m.sessions.refuse(ch("b"), "403::Unknown subscription")
            m.sessions.refuse(ch("b", 2), "403::Unknown subscription")
            await m.ready()
            assert m.state("b") is SubState.BACKOFF
            assert m.rest.count("requestnotification", "b") == 2
            assert m.manager.mailboxes["b"].subscription_id is None

    async def test_resubscribe_repair_for_a_mailbox_owed_none(self) -> None:
        """Without a startup repair, a mailbox that could only be subscribed after a backoff is
        repaired (resubscribe): its notifications were missed meanwhile."""
        policy = dataclasses.replace(POLICY, reconcile_on_start=False)
        async with Manager(["a", "b"], policy) as m:
            m.rest.fail("requestnotification", "b", TransportError("503"))
            await m.retry()
            await m.until(lambda: m.state("b") is SubState.ACTIVE, "b subscribed after all")
            assert m.reconciler.requests() == [("b", "resubscribe")]


class TestSessionLoss:
    """A lost session: a new one, subscriptions again (fresh ids unless the loss proves the
    server instance alive), a repair each."""

    @pytest.mark.parametrize(
        "reason", [LossReason.UNKNOWN_CLIENT, LossReason.HANDSHAKE_ADVICE, LossReason.STALL]
    )
    async def test_new_session_requests_new_ids_and_repairs(self, reason: LossReason) -> None:
        """After a loss that may hide a restart (a CometD server accepts a subscribe to a dead
        id), every active mailbox gets a new requestnotification, its queued repair cancelled and
        a session-lost one asked."""
        restarts = sample("cumi_worker_session_restarts_total", reason=reason.value)
        async with Manager(ALIASES) as m:
            await m.ready()
            first = m.session
            m.reconciler.log.clear()
            await m.lose(reason)
            assert first.stops == 1
            assert m.session is not first
            assert sorted(m.session.subscribes()) == sorted(ch(a, 2) for a in ALIASES)
            assert m.rest.count("requestnotification") == 50
            assert set(m.states().values()) == {SubState.ACTIVE}
            for alias in ALIASES:
                assert m.reconciler.log.index(("cancel", alias, None)) < m.reconciler.log.index(
                    ("request", alias, RepairReason.SESSION_LOST)
                )
        after = sample("cumi_worker_session_restarts_total", reason=reason.value)
        assert after == restarts + 1

    async def test_server_side_disconnect_reuses_subscription_ids(self) -> None:
        """The server disconnected the session itself (so it did not restart): every active
        mailbox is subscribed on the new session with its old id, no requestnotification."""
        async with Manager(ALIASES) as m:
            await m.ready()
            m.reconciler.log.clear()
            await m.lose(LossReason.SERVER_DISCONNECT)
            assert sorted(m.session.subscribes()) == sorted(ch(a) for a in ALIASES)
            assert m.rest.count("requestnotification") == 25
            assert set(m.states().values()) == {SubState.ACTIVE}
            assert ("user00", RepairReason.SESSION_LOST) in m.reconciler.requests()

    async def test_server_restart_requests_new_subscriptions(self) -> None:
        """Old ids refused with 403 on the new session (the server restarted): new ids, and the
        repair reason says server-restart."""
        async with Manager(["a", "b"]) as m:
            await m.ready()
            m.reconciler.log.clear()
            for alias in ("a", "b"):
                m.sessions.refuse(ch(alias), "403::Unknown subscription")
            await m.lose(LossReason.SERVER_DISCONNECT)
            assert m.states() == {"a": SubState.ACTIVE, "b": SubState.ACTIVE}
            assert m.session.subscribed == {ch("a", 2), ch("b", 2)}
            assert sorted(m.reconciler.requests()) == [
                ("a", "server-restart"),
                ("b", "server-restart"),
            ]

    async def test_no_reuse_requests_new_subscriptions(self) -> None:
        """CUMI_REUSE_SUBSCRIPTIONS off: every mailbox gets a new requestnotification."""
        policy = dataclasses.replace(POLICY, reuse_subscriptions=False)
        async with Manager(["a", "b"], policy) as m:
            await m.ready()
            await m.lose(LossReason.STALL)
            assert m.session.subscribed == {ch("a", 2), ch("b", 2)}
            assert ("a", "session-lost") in m.reconciler.requests()

    async def test_loss_during_the_first_pass_keeps_the_startup_repair(self) -> None:
        """Lost before its subscribe was answered, a mailbox is subscribed on the next session
        and repaired once, for the reason it had (startup), not for the loss."""
        m = Manager(["a", "b"])
        m.sessions.gate = asyncio.Event()
        async with m:
            await m.until(
                lambda: m.sessions.started() and m.session.batches, "a subscribe in flight"
            )
            first = m.session
            first.lose(LossReason.UNKNOWN_CLIENT)
            await m.backoff()
            await m.until(lambda: len(m.sessions.made) == 2, "a new session")
            m.sessions.gate.set()
            await m.ready(2)
            assert first.subscribed == set()
            assert m.session.subscribed == {ch("a", 2), ch("b", 2)}
            assert sorted(m.reconciler.requests()) == [("a", "startup"), ("b", "startup")]

    async def test_unknown_client_on_subscribe(self) -> None:
        """402 on a subscribe loses the session; that mailbox is not backed off but subscribed
        on the next session (a new id: the server forgot the session), repaired once for
        startup."""
        async with Manager(["a", "b"]) as m:
            m.sessions.refuse(ch("b"), "402::session_unknown")
            await m.backoff()
            await m.ready(2)
            assert m.state("b") is SubState.ACTIVE
            assert ch("b", 2) in m.session.subscribed
            assert m.rest.count("requestnotification", "b") == 2
            assert m.reconciler.requests().count(("b", RepairReason.STARTUP)) == 1

    async def test_failed_mailboxes_keep_waiting_across_a_loss(self) -> None:
        """A FAILED mailbox is not retried early because the session was replaced."""
        async with Manager(["a", "b"], POLICY) as m:
            m.rest.fail("requestnotification", "b", AuthError("401"))
            await m.ready()
            await m.lose(LossReason.SERVER_DISCONNECT)
            assert m.state("b") is SubState.FAILED
            assert m.rest.count("requestnotification", "b") == 1
            assert ch("b") not in m.session.subscribes()

    async def test_connect_gap_repairs_active_mailboxes(self) -> None:
        """on_gap (a connect failed mid-exchange) asks a connect-failed repair of every active
        mailbox, and only of those."""
        async with Manager(["a", "b", "c"], POLICY) as m:
            m.rest.fail("requestnotification", "c", TransportError("503"))
            await m.ready()
            m.reconciler.log.clear()
            assert m.session.on_gap is not None
            m.session.on_gap()
            assert sorted(m.reconciler.requests()) == [
                ("a", "connect-failed"),
                ("b", "connect-failed"),
            ]


class TestSessionBackoff:
    """How long run() waits before the next session."""

    async def test_quick_losses_back_off_longer_each_time(self) -> None:
        """Sessions lost one after another wait longer each time, up to the cap."""
        async with Manager(["a"]) as m:
            await m.ready()
            for attempt in range(1, 6):
                m.session.lose(LossReason.STALL)
                assert backoff(await m.backoff(), attempt), attempt
                await m.ready(attempt + 1)

    @pytest.mark.parametrize(("lived", "attempt"), [(59.0, 3), (61.0, 1)])
    async def test_a_session_that_lived_a_minute_starts_the_backoff_over(
        self, lived: float, attempt: int
    ) -> None:
        """After two quick losses, the third session lives `lived` s: past 60 s its loss counts
        as the first again (short wait); under 60 s it is the third in a row."""
        async with Manager(["a"]) as m:
            await m.ready()
            for n in (1, 2):
                await m.lose()
                assert m.manager.sessions_started == n + 1
            await m.clock.waiting()  # the pass is over and sleeps
            m.clock.advance(lived)
            m.session.lose(LossReason.SERVER_DISCONNECT)
            assert backoff(await m.backoff(), attempt)
            await m.ready(4)


class TestLiveChanges:
    """Mailboxes added and removed while running."""

    async def test_added_mailbox_subscribed_with_its_repair_reason(self) -> None:
        """add() wakes the running session: the new mailbox is subscribed and repaired for the
        reason given; an alias already watched is not added twice."""
        async with Manager(["a"]) as m:
            await m.ready()
            assert m.manager.add(["a", "n1", "n2"], RepairReason.REGISTERED) == 2
            await m.until(lambda: m.state("n2") is SubState.ACTIVE, "n2 subscribed")
            await m.until(lambda: m.state("n1") is SubState.ACTIVE, "n1 subscribed")
            assert ("n1", "registered") in m.reconciler.requests()
            assert m.rest.count("requestnotification", "a") == 1

    async def test_added_without_repair(self) -> None:
        """add(…, None): subscribed, no snapshot."""
        async with Manager(["a"]) as m:
            await m.ready()
            m.reconciler.log.clear()
            m.manager.add(["n"], None)
            await m.until(lambda: m.state("n") is SubState.ACTIVE, "n subscribed")
            assert m.reconciler.log == []

    async def test_removed_mailboxes_unsubscribed_in_one_request(self) -> None:
        """remove(): their channels in one unsubscribe, their repairs cancelled, no longer
        counted; unknown aliases ignored."""
        async with Manager(["a", "b", "c"]) as m:
            await m.ready()
            assert await m.manager.remove(["a", "b", "nobody"]) == 2
            assert m.session.unsubscribed == [[ch("a"), ch("b")]]
            assert ("cancel", "a", None) in m.reconciler.log
            assert list(m.manager.mailboxes) == ["c"]
            assert m.manager.counts()["active"] == 1

    async def test_removed_while_requesting_is_dropped(self) -> None:
        """Removed while its requestnotification is in flight: never subscribed, not repaired,
        and the pass still completes."""
        async with Manager(["a", "b"]) as m:
            gate = m.rest.hold("requestnotification", "b")
            await m.until(lambda: m.rest.count("requestnotification", "b") == 1, "b requested")
            assert await m.manager.remove(["b"]) == 1
            gate.set()
            await m.ready()
            assert ch("b") not in m.session.subscribes()
            assert [a for a, _ in m.reconciler.requests()] == ["a"]
            assert m.manager.counts()["active"] == 1
            assert sum(m.manager.counts().values()) == 1

    async def test_removed_while_queued_is_never_requested(self) -> None:
        """Removed before a request worker got to it: no requestnotification at all."""
        policy = dataclasses.replace(POLICY, request_workers=1)
        async with Manager(["a", "b"], policy) as m:
            gate = m.rest.hold("requestnotification", "a")
            await m.until(lambda: m.rest.count("requestnotification", "a") == 1, "a requested")
            await m.manager.remove(["b"])
            gate.set()
            await m.ready()
            assert m.rest.count("requestnotification", "b") == 0

    async def test_removed_while_subscribing_is_unsubscribed_after_the_reply(self) -> None:
        """Removed while its subscribe is on the way: taken back once it is answered."""
        m = Manager(["a", "b"])
        m.sessions.gate = asyncio.Event()
        async with m:
            await m.until(
                lambda: m.sessions.started() and ch("b") in m.session.subscribes(),
                "b being subscribed",
            )
            assert await m.manager.remove(["b"]) == 1
            assert m.session.unsubscribed == []
            m.sessions.gate.set()
            await m.until(lambda: m.session.unsubscribed == [[ch("b")]], "b taken back")
            await m.ready()
            assert "b" not in [a for a, _ in m.reconciler.requests()]
            assert sum(m.manager.counts().values()) == 1


class TestDeadLetters:
    """A dead letter naming a subscribed mailbox — by MailboxId, or by the subscription it came
    on — has that mailbox repaired (reason `dead-letter`); others are counted as unwatched."""

    @staticmethod
    def outcomes() -> dict[str, float]:
        return {
            o: sample("cumi_worker_dead_letter_repairs_total", outcome=o)
            for o in ("triggered", "deferred", "unwatched")
        }

    async def test_named_by_mailbox_id(self) -> None:
        async with Manager(["a", "b"]) as m:
            await m.ready()
            m.reconciler.log.clear()
            before = self.outcomes()
            assert m.manager.dead_lettered("b", None) == "triggered"
            assert m.reconciler.requests() == [("b", "dead-letter")]
            assert self.outcomes()["triggered"] == before["triggered"] + 1

    async def test_named_by_its_subscription_when_the_mailbox_id_is_not_ours(self) -> None:
        """An unreadable (or foreign) MailboxId: the channel's subscription id finds it."""
        async with Manager(["a", "b"]) as m:
            await m.ready()
            m.reconciler.log.clear()
            assert m.manager.dead_lettered(None, subscription_id("b")) == "triggered"
            assert m.manager.dead_lettered("B ", subscription_id("a")) == "triggered"
            assert m.reconciler.requests() == [("b", "dead-letter"), ("a", "dead-letter")]

    async def test_a_new_subscription_id_is_found(self) -> None:
        """After a lost session every mailbox has a new subscription id: the old one names
        nothing, the new one its mailbox."""
        async with Manager(["a"]) as m:
            await m.ready()
            await m.lose()
            m.reconciler.log.clear()
            assert m.manager.dead_lettered(None, subscription_id("a", 1)) == "unwatched"
            assert m.manager.dead_lettered(None, subscription_id("a", 2)) == "triggered"
            assert m.reconciler.requests() == [("a", "dead-letter")]

    async def test_not_ours_or_not_subscribed_is_unwatched(self) -> None:
        credentials = FakeCredentials(missing=["failed"])
        async with Manager(["a", "failed", "gone"], credentials=credentials) as m:
            await m.ready()
            await m.manager.remove(["gone"])
            m.reconciler.log.clear()
            before = self.outcomes()
            for named, sub in [
                ("other", None),
                (None, None),
                (None, "no-such-subscription"),
                ("failed", None),
                ("gone", subscription_id("gone")),
            ]:
                assert m.manager.dead_lettered(named, sub) == "unwatched", (named, sub)
            assert m.reconciler.log == []
            assert self.outcomes()["unwatched"] == before["unwatched"] + 5

    async def test_without_a_reconciler(self) -> None:
        async with Manager(["a"], repairs=False) as m:
            await m.ready()
            assert m.manager.dead_lettered("a", None) == "unwatched"


@pytest.mark.parametrize("reason", list(LossReason))
async def test_every_loss_reason_restarts_the_session(reason: LossReason) -> None:
    """Whatever the reason, a lost session is stopped and replaced; the restart is counted."""
    before = sample("cumi_worker_session_restarts_total", reason=reason.value)
    async with Manager(["a"]) as m:
        await m.ready()
        old = await m.lose(reason)
        assert old.stops == 1
    assert sample("cumi_worker_session_restarts_total", reason=reason.value) == before + 1


class TestSupervisor:
    """run() itself."""

    async def test_without_a_reconciler(self) -> None:
        """No gap repair configured: mailboxes are subscribed, a connect gap is ignored."""
        async with Manager(["a"], repairs=False) as m:
            await m.ready()
            assert m.session.on_gap is not None
            m.session.on_gap()
            await m.lose()
            assert m.state("a") is SubState.ACTIVE
            assert m.reconciler.log == []

    @pytest.mark.parametrize("where", ["request-worker", "subscribe-batcher"])
    async def test_a_bug_in_the_pass_ends_run_and_stops_the_session(self, where: str) -> None:
        """An unexpected error in a task of the pass (here: the REST client or the repair queue
        raising a non-IngestError) is not a lost session and must not hang the pass: run()
        raises it, the session is stopped, the manager is not ready."""
        m = Manager(["a", "b"])
        if where == "request-worker":
            m.rest.fail("requestnotification", "b", RuntimeError("bug"))
        else:
            m.reconciler.error = RuntimeError("bug")
        async with m:
            with pytest.raises(RuntimeError, match="bug"):
                async with asyncio.timeout(2):
                    await m.task
            assert m.sessions.current.stops == 1
            assert not m.manager.ready.is_set()

    async def test_progress_logged_every_tenth(self, caplog: pytest.LogCaptureFixture) -> None:
        """A pass of 100+ mailboxes off a terminal logs its progress every 10 %."""
        caplog.set_level("INFO", logger="ingest.ops.progress")
        aliases = [f"user{i:03d}" for i in range(120)]
        policy = dataclasses.replace(POLICY, batch_size=25, progress=True)
        async with Manager(aliases, policy) as m:
            await m.ready()
        lines = [r.getMessage() for r in caplog.records if "subscribed mailboxes" in r.getMessage()]
        assert len(lines) == 10
        assert lines[-1].startswith("subscribed mailboxes 120/120 (100%")
