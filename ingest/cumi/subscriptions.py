"""The subscription manager: every mailbox subscribed on one CometD session, kept that way.

Per mailbox: `requestnotification` (REST, through the bounded, retrying client) gives a
subscriptionId, whose channel `/vmrest/mailbox/<id>` is then subscribed on the session — in batches,
many subscribe messages per Bayeux request, while further `requestnotification`s are in flight.
Once a mailbox is active, gap repair is asked for it (ingest.cumi.gap_repair).

Failures stay local: credentials that are missing or refused (401/403) mark that mailbox FAILED with
one log line and a metric, and it is tried again after CUMI_AUTH_RETRY_SECONDS; a transient failure
puts it in BACKOFF (exponential, jittered). Neither blocks the other mailboxes.

When the session is lost (402 unknown client, handshake advice, a stall…) the manager throws it
away and, after a jittered backoff that grows while sessions keep failing, builds a new one, and
every mailbox gets a fresh `requestnotification`: a successful subscribe to an old subscriptionId
proves nothing (the reference CometD server accepts a subscribe to any channel), and a server that
forgot the session may have restarted and forgotten the notification subscriptions with it. Only
a loss that proves the same server instance alive — it disconnected this very session itself —
lets a mailbox try its old subscriptionId (CUMI_REUSE_SUBSCRIPTIONS); a refused subscribe (403)
then still gets a fresh one. Either way its gap is repaired (docs/design.md §3, §6).

The set of mailboxes can change while running (`add`, `remove`: the registry source,
ingest.mailboxes.assignment): an added mailbox is subscribed by the next pass, a removed one's
channel is unsubscribed at once, and one removed while its request or subscribe is in flight is
dropped (or unsubscribed) when that finishes.

A dead-lettered payload that names a subscribed mailbox — by its MailboxId, or by the channel or
SubscriptionId it came with when the MailboxId cannot be read — has that mailbox repaired
(`dead_lettered`; the reconciler rate-limits it per mailbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ingest.cumi.credentials import CredentialsProvider
from ingest.cumi.gap_repair import Reconciler
from ingest.cumi.rest import CumiRestClient
from ingest.cumi.session import CometSession, LossReason, channel_for
from ingest.errors import AuthError, IngestError, TransportError
from ingest.events import RepairReason
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock, wait_event
from ingest.ops.metrics import (
    WORKER_AUTH_FAILURES,
    WORKER_DEAD_LETTER_REPAIRS,
    WORKER_SESSION_RESTARTS,
    WORKER_SUBSCRIBE_SECONDS,
    WORKER_SUBSCRIPTIONS,
)
from ingest.ops.progress import LoggedProgress, Progress, ProgressFactory

log = logging.getLogger(__name__)

SAME_SERVER = frozenset({LossReason.SERVER_DISCONNECT})
"""Losses that prove the server instance that issued the subscriptionIds still runs: it answered
this session's own connect with a disconnect. After any other loss (402, handshake advice, a stall
that may hide a restart) nothing shows the Notifier still publishes to an old id."""


class SubState(enum.StrEnum):
    PENDING = "pending"
    REQUESTING = "requesting"
    SUBSCRIBING = "subscribing"
    ACTIVE = "active"
    BACKOFF = "backoff"
    FAILED = "failed"


@dataclass(slots=True)
class Mailbox:
    alias: str
    state: SubState = SubState.PENDING
    subscription_id: str | None = None
    failures: int = 0
    retry_at: float = 0.0
    repair: RepairReason | None = RepairReason.STARTUP
    """The gap to repair once active (None: nothing missed)."""
    removed: bool = False
    """No longer watched (`SubscriptionManager.remove`); in-flight work for it is discarded."""


@dataclass(frozen=True, slots=True)
class SubscriptionPolicy:
    batch_size: int = 100
    request_workers: int = 8
    reuse_subscriptions: bool = True
    reconcile_on_start: bool = True
    auth_retry_seconds: float = 900.0
    retry_base: float = 1.0
    retry_cap: float = 300.0
    session_backoff_base: float = 1.0
    session_backoff_cap: float = 60.0
    progress: bool = True


class _Pass:
    """One sweep over the pending mailboxes of a session."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.finished = 0
        self.done = asyncio.Event()
        self.progress = progress
        if total == 0:
            self.done.set()

    def finish(self) -> None:
        self.finished += 1
        if self.progress is not None:
            self.progress.update(self.finished)
        if self.finished >= self.total:
            self.done.set()


async def _swept_or_broken(sweep: _Pass, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for the pass to be done, or for one of its tasks to end first: a task ends early only
    by an error, which would leave its mailboxes unfinished and the pass waiting forever."""
    done = asyncio.ensure_future(sweep.done.wait())
    try:
        await asyncio.wait({done, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        done.cancel()
        await asyncio.gather(done, return_exceptions=True)


class SubscriptionManager:
    """Runs sessions (from `session_factory`) until cancelled; see the module docstring."""

    def __init__(
        self,
        aliases: Iterable[str],
        rest: CumiRestClient,
        credentials: CredentialsProvider,
        session_factory: Callable[[], CometSession],
        *,
        reconciler: Reconciler | None,
        policy: SubscriptionPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        progress: ProgressFactory = LoggedProgress,
    ) -> None:
        self._policy = policy or SubscriptionPolicy()
        self._clock = clock
        self._progress_factory = progress
        p = self._policy
        self._session_backoff = Backoff(p.session_backoff_base, p.session_backoff_cap)
        self._mailbox_backoff = Backoff(p.retry_base, p.retry_cap)
        self._auth_backoff = Backoff.fixed(p.auth_retry_seconds)
        repair = RepairReason.STARTUP if self._policy.reconcile_on_start else None
        self.mailboxes = {a: Mailbox(a, repair=repair) for a in dict.fromkeys(aliases)}
        self._counts: Counter[SubState] = Counter({SubState.PENDING: len(self.mailboxes)})
        self._rest = rest
        self._credentials = credentials
        self._factory = session_factory
        self._reconciler = reconciler
        self._session: CometSession | None = None
        self.ready = asyncio.Event()
        """Set while a session is up and every mailbox has had its subscription attempt."""
        self.sessions_started = 0
        self._wake = asyncio.Event()
        self._changes = 0  # state changes so far: when the subscription index is out of date
        self._by_subscription: tuple[int, dict[str, str]] = (-1, {})
        self._publish_counts()

    # -- bookkeeping -----------------------------------------------------------------------------

    def _set(self, mailbox: Mailbox, state: SubState) -> None:
        if mailbox.removed:  # no longer counted
            mailbox.state = state
            return
        old = mailbox.state
        self._changes += 1
        self._counts[old] -= 1
        self._counts[state] += 1
        mailbox.state = state
        # both gauges: the one left behind would otherwise keep its old count
        WORKER_SUBSCRIPTIONS.labels(old.value).set(self._counts[old])
        WORKER_SUBSCRIPTIONS.labels(state.value).set(self._counts[state])

    def _publish_counts(self) -> None:
        for state in SubState:
            WORKER_SUBSCRIPTIONS.labels(state.value).set(self._counts[state])

    def counts(self) -> dict[str, int]:
        return {state.value: self._counts[state] for state in SubState}

    @property
    def session(self) -> CometSession | None:
        return self._session

    # -- live changes ----------------------------------------------------------------------------

    def add(self, aliases: Iterable[str], repair: RepairReason | None) -> int:
        """Watch more mailboxes: subscribed by the running session's next pass, then repaired for
        `repair` (None: no gap to repair). Returns how many were not watched yet."""
        added = 0
        for alias in aliases:
            if alias not in self.mailboxes:
                self.mailboxes[alias] = Mailbox(alias, repair=repair)
                self._counts[SubState.PENDING] += 1
                added += 1
        if added:
            self._publish_counts()
            self._wake.set()
        return added

    async def remove(self, aliases: Iterable[str]) -> int:
        """Stop watching mailboxes: their channels are unsubscribed in one Bayeux request, their
        queued gap repairs dropped. Returns how many were watched."""
        channels = []
        removed = 0
        for alias in aliases:
            mailbox = self.mailboxes.pop(alias, None)
            if mailbox is None:
                continue
            removed += 1
            self._counts[mailbox.state] -= 1
            mailbox.removed = True
            if self._reconciler is not None:
                self._reconciler.cancel(alias)
            if mailbox.state is SubState.ACTIVE and mailbox.subscription_id:
                channels.append(channel_for(mailbox.subscription_id))
        if removed:
            self._publish_counts()
        session = self._session
        if channels and session is not None:
            await session.unsubscribe_many(channels)
        return removed

    def dead_lettered(self, mailbox_id: str | None, subscription_id: str | None) -> str:
        """A payload naming `mailbox_id` (or, if that is not one of ours, having come on
        `subscription_id`) was dead-lettered: repair the mailbox if it is subscribed. Returns the
        outcome counted in `cumi_worker_dead_letter_repairs_total`."""
        alias = self._subscribed_alias(mailbox_id, subscription_id)
        if alias is None or self._reconciler is None:
            outcome = "unwatched"
        else:
            outcome = self._reconciler.request_dead_letter(alias)
        WORKER_DEAD_LETTER_REPAIRS.labels(outcome).inc()
        return outcome

    def _subscribed_alias(self, mailbox_id: str | None, subscription_id: str | None) -> str | None:
        mailbox = self.mailboxes.get(mailbox_id) if mailbox_id is not None else None
        if mailbox is None and subscription_id:
            changes, index = self._by_subscription
            if changes != self._changes:  # rebuilt after subscriptions changed, not per letter
                mailboxes = self.mailboxes.items()
                index = {m.subscription_id: a for a, m in mailboxes if m.subscription_id}
                self._by_subscription = (self._changes, index)
            alias = index.get(subscription_id)
            mailbox = self.mailboxes.get(alias) if alias is not None else None
        if mailbox is None or mailbox.state is not SubState.ACTIVE:
            return None
        return mailbox.alias

    # -- the supervisor --------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a session with every mailbox subscribed until cancelled."""
        losses = 0
        while True:
            session = self._factory()
            try:
                await session.start()
            except TransportError as e:
                losses += 1
                delay = self._session_backoff.delay(losses)
                log.warning("CometD session could not start (%s); retry in %.1f s", e, delay)
                await self._clock.sleep(delay)
                continue
            self.sessions_started += 1
            self._session = session
            session.on_gap = self._repair_active
            started = self._clock.monotonic()
            reason: LossReason | None = None
            try:
                reason = await self._serve(session)
            finally:
                self.ready.clear()
                self._session = None
                await session.stop()
                self._after_loss(reason)
            WORKER_SESSION_RESTARTS.labels(reason.value).inc()
            losses = 1 if self._clock.monotonic() - started > 60 else losses + 1
            delay = self._session_backoff.delay(losses)
            log.warning("CometD session lost (%s); new session in %.1f s", reason.value, delay)
            await self._clock.sleep(delay)

    def _repair_active(self) -> None:
        """A connect failed mid-exchange: its events may be lost, so repair every active mailbox."""
        if self._reconciler is None:
            return
        active = [m.alias for m in self.mailboxes.values() if m.state is SubState.ACTIVE]
        for alias in active:
            self._reconciler.request(alias, RepairReason.CONNECT_FAILED)
        log.warning("a CometD connect failed mid-exchange: gap repair of %d mailboxes", len(active))

    def _after_loss(self, reason: LossReason | None) -> None:
        """Every mailbox that was (being) subscribed must be subscribed again, and repaired; with
        a fresh subscriptionId unless the loss proves the old ones alive (SAME_SERVER)."""
        keep_ids = self._policy.reuse_subscriptions and reason in SAME_SERVER
        for mailbox in self.mailboxes.values():
            if not keep_ids:
                mailbox.subscription_id = None
            if mailbox.state in (SubState.BACKOFF, SubState.FAILED):
                continue
            if mailbox.state is SubState.ACTIVE and self._reconciler is not None:
                self._reconciler.cancel(mailbox.alias)
            if mailbox.state is SubState.ACTIVE or mailbox.repair is None:
                mailbox.repair = RepairReason.SESSION_LOST
            self._set(mailbox, SubState.PENDING)

    async def _serve(self, session: CometSession) -> LossReason:
        lost = asyncio.ensure_future(session.wait_lost())
        keeper = asyncio.create_task(self._keep_subscribed(session), name="subscriptions")
        try:
            done, _ = await asyncio.wait({lost, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if keeper in done:
                keeper.result()  # raises: a bug, not a lost session
            return lost.result()
        finally:
            for task in (lost, keeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _keep_subscribed(self, session: CometSession) -> None:
        """Subscribe what is pending; then wake for mailboxes whose backoff has run out."""
        while True:
            self._wake.clear()
            await self._subscribe_pending(session)
            self.ready.set()
            if self._counts[SubState.PENDING]:
                continue  # added during the pass
            now = self._clock.monotonic()
            waiting = [
                m for m in self.mailboxes.values() if m.state in (SubState.BACKOFF, SubState.FAILED)
            ]
            due = [m for m in waiting if m.retry_at <= now]
            if due:
                for mailbox in due:
                    if mailbox.repair is None:
                        mailbox.repair = RepairReason.RESUBSCRIBE
                    self._set(mailbox, SubState.PENDING)
                continue
            next_due = min((m.retry_at for m in waiting), default=now + 60.0)
            # woken early by `add`
            await wait_event(self._clock, self._wake, max(0.05, min(60.0, next_due - now)))

    # -- one pass --------------------------------------------------------------------------------

    async def _subscribe_pending(self, session: CometSession) -> None:
        pending = [m for m in self.mailboxes.values() if m.state is SubState.PENDING]
        if not pending:
            return
        started = time.monotonic()
        sweep = _Pass(len(pending), self._progress(len(pending)))
        requests: asyncio.Queue[Mailbox | None] = asyncio.Queue()
        subscribes: asyncio.Queue[Mailbox | None] = asyncio.Queue()
        for mailbox in pending:
            if self._policy.reuse_subscriptions and mailbox.subscription_id:
                self._set(mailbox, SubState.SUBSCRIBING)
                subscribes.put_nowait(mailbox)
            else:
                self._set(mailbox, SubState.REQUESTING)
                requests.put_nowait(mailbox)
        workers = [
            asyncio.create_task(self._request_worker(requests, subscribes, sweep))
            for _ in range(self._policy.request_workers)
        ]
        batcher = asyncio.create_task(self._subscribe_worker(session, subscribes, requests, sweep))
        tasks = [*workers, batcher]
        try:
            await _swept_or_broken(sweep, tasks)
        finally:
            for _ in workers:
                requests.put_nowait(None)
            subscribes.put_nowait(None)
            if not sweep.done.is_set():  # lost session, shutdown or a bug: leave the queues
                for task in tasks:
                    task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if sweep.progress is not None:
                sweep.progress.close()
        for result in results:
            if isinstance(result, Exception):
                raise result
        elapsed = time.monotonic() - started
        WORKER_SUBSCRIBE_SECONDS.observe(elapsed)
        log.info(
            "subscription pass: %d mailboxes in %.1f s → %s",
            len(pending),
            elapsed,
            ", ".join(f"{k} {v}" for k, v in self.counts().items() if v),
        )

    async def _request_worker(
        self,
        requests: asyncio.Queue[Mailbox | None],
        subscribes: asyncio.Queue[Mailbox | None],
        sweep: _Pass,
    ) -> None:
        while (mailbox := await requests.get()) is not None:
            if mailbox.removed:
                sweep.finish()
                continue
            try:
                credential = await self._credentials.credential_for(mailbox.alias)
                subscription_id = await self._rest.request_notification(credential)
            except AuthError as e:
                self._auth_failed(mailbox, e)
                sweep.finish()
            except IngestError as e:
                self._back_off(mailbox, f"requestnotification failed: {e}")
                sweep.finish()
            else:
                mailbox.subscription_id = subscription_id
                if mailbox.removed:
                    sweep.finish()
                    continue
                self._set(mailbox, SubState.SUBSCRIBING)
                subscribes.put_nowait(mailbox)

    async def _subscribe_worker(
        self,
        session: CometSession,
        subscribes: asyncio.Queue[Mailbox | None],
        requests: asyncio.Queue[Mailbox | None],
        sweep: _Pass,
    ) -> None:
        size = self._policy.batch_size
        while (first := await subscribes.get()) is not None:
            batch = [first]
            if subscribes.qsize() < size - 1 and requests.qsize():
                await asyncio.sleep(0.01)  # let a few more subscriptionIds come in
            while len(batch) < size and not subscribes.empty():
                item = subscribes.get_nowait()
                if item is None:
                    subscribes.put_nowait(None)
                    break
                batch.append(item)
            channels = {channel_for(m.subscription_id or ""): m for m in batch}
            results = await session.subscribe_many(channels)
            for channel, mailbox in channels.items():
                self._subscribed(
                    session, mailbox, results.get(channel, "no reply"), requests, sweep
                )
            # removed while the subscribe was on its way: take it back
            gone = [ch for ch, m in channels.items() if m.removed and results.get(ch) is None]
            if gone:
                await session.unsubscribe_many(gone)

    def _subscribed(
        self,
        session: CometSession,
        mailbox: Mailbox,
        error: str | None,
        requests: asyncio.Queue[Mailbox | None],
        sweep: _Pass,
    ) -> None:
        if error is None:
            self._set(mailbox, SubState.ACTIVE)
            mailbox.failures = 0
            if mailbox.repair is not None and self._reconciler is not None and not mailbox.removed:
                self._reconciler.request(mailbox.alias, mailbox.repair)
            mailbox.repair = None
            sweep.finish()
        elif session.is_lost:
            self._set(mailbox, SubState.PENDING)
            sweep.finish()
        elif error.startswith("403") and mailbox.failures == 0 and mailbox.subscription_id:
            # the server no longer knows this subscriptionId (it restarted): ask for a new one
            mailbox.subscription_id = None
            mailbox.failures = 1
            if mailbox.repair is RepairReason.SESSION_LOST:
                mailbox.repair = RepairReason.SERVER_RESTART
            self._set(mailbox, SubState.REQUESTING)
            requests.put_nowait(mailbox)
        else:
            mailbox.subscription_id = None
            self._back_off(mailbox, f"subscribe refused: {error}")
            sweep.finish()

    def _auth_failed(self, mailbox: Mailbox, error: AuthError) -> None:
        delay = self._auth_backoff.delay(1)
        mailbox.retry_at = self._clock.monotonic() + delay
        mailbox.failures += 1
        self._set(mailbox, SubState.FAILED)
        self._credentials.forget(mailbox.alias)
        WORKER_AUTH_FAILURES.inc()
        log.warning(
            "mailbox %s: credentials refused or missing (%s); not subscribed, retry in %.0f s",
            mailbox.alias,
            error,
            delay,
        )

    def _back_off(self, mailbox: Mailbox, why: str) -> None:
        mailbox.failures += 1
        delay = self._mailbox_backoff.delay(mailbox.failures)
        mailbox.retry_at = self._clock.monotonic() + delay
        self._set(mailbox, SubState.BACKOFF)
        log.info("mailbox %s: %s; retry in %.1f s", mailbox.alias, why, delay)

    def _progress(self, total: int) -> Progress | None:
        if not self._policy.progress or total < 100:
            return None
        return self._progress_factory("subscribed mailboxes", total)
