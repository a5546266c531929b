"""Gap repair: after a gap in notifications, read a mailbox's folders and publish a MailboxSnapshot.

Gaps happen at start-up (nothing was listening), when a CometD session is lost (the server forgot
the client, or it stalled) and when the server restarts (every subscription is gone). For each
affected mailbox, once its new subscription is active, the reconciler lists Inbox and Deleted (all
pages) and publishes the listing as a snapshot record on the events topic, keyed like the events.

Which USN does the snapshot carry? The listing is not atomic — events keep arriving while it is
taken, and each folder is a separate request (several, with pagination). The rule the projection
applies is: a snapshot at USN S replaces the state of every message whose last applied USN is ≤ S,
and keeps what events with a USN > S said (whether they came before or after the snapshot record).
So S must be a USN the listing is *at least as new as*: every change ≤ S must be in the listing.
Therefore the mailbox USN is read **before** listing, after the subscription is active:

- a change with USN ≤ S happened before the listing began, so the listing shows it; its event, if it
  arrives after the snapshot, is stale and rightly ignored;
- a change with USN > S may or may not show in the listing, but its event is delivered (the
  subscription was already active) and, being newer than S, wins over the listing either way;
- a change made during the gap, before the subscription, has a USN ≤ S: the listing covers it.

Reading the USN *after* listing would be wrong: a change between a folder read and that USN read
would be neither in the listing nor applied (its event ≤ S would count as stale).

A dead letter that names a subscribed mailbox is a gap too: the change it stood for is not in the
log. `request_dead_letter` repairs the mailbox at once (its USN, read after the bad payload
arrived, covers that change) — at most once per `dead_letter_interval` seconds per mailbox
(CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS): a dead letter within the interval defers one repair
to its end, however many follow, so a server that breaks every payload of a mailbox costs one
listing per interval, and the last bad payload is still covered.

One hazard remains: pagination. A message arriving or leaving between two page reads shifts the
pages, so an unrelated message may be missed (it would then vanish from the projection). A folder
read in one page is consistent; when either folder needs several pages, the mailbox USN is read
again afterwards and the listing is repeated (a few times) until no change happened meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ingest.cumi.credentials import CredentialsProvider
from ingest.cumi.rest import CumiRestClient, Folder
from ingest.errors import AuthError, IngestError
from ingest.events import MailboxSnapshot, RepairReason
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock
from ingest.ops.metrics import WORKER_RECONCILE_PENDING, WORKER_RECONCILE_RUNS

log = logging.getLogger(__name__)

Publish = Callable[[MailboxSnapshot], Awaitable[None]]


class Reconciler:
    """A queue of mailboxes to repair, worked off by a few tasks through the shared REST client."""

    def __init__(
        self,
        rest: CumiRestClient,
        credentials: CredentialsProvider,
        publish: Publish,
        *,
        source: str | None = None,
        concurrency: int = 2,
        page_size: int = 100,
        stable_attempts: int = 3,
        max_attempts: int = 5,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        dead_letter_interval: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._rest = rest
        self._credentials = credentials
        self._publish = publish
        self._source = source
        self._concurrency = concurrency
        self._page_size = page_size
        self._stable_attempts = stable_attempts
        self._max_attempts = max_attempts
        self._backoff = Backoff(retry_base, retry_cap)
        self._clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._wanted: dict[str, RepairReason] = {}  # alias → reason, queued or waiting for a retry
        self._running: dict[str, RepairReason] = {}  # alias → reason of a listing in progress
        # requested again while running: list once more after
        self._again: dict[str, RepairReason] = {}
        # cancelled while running: a failure of that listing is not retried
        self._dropped: set[str] = set()
        self._attempts: dict[str, int] = {}
        self._dead_letter_interval = dead_letter_interval
        self._dead_letter_repaired: dict[str, float] = {}  # alias → when a dead letter repaired it
        self._deferred: set[str] = set()  # a dead-letter repair due at their interval's end
        self._timers: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"reconcile-{i}")
                for i in range(self._concurrency)
            ]

    async def stop(self) -> None:
        timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Reconciler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pending(self) -> int:
        return len(self._wanted) + len(self._running) + len(self._deferred)

    def request(self, alias: str, reason: RepairReason) -> None:
        """Repair `alias` soon. Asked again while listing, it is listed once more afterwards."""
        if alias in self._running:
            self._again[alias] = reason
            return
        if alias not in self._wanted:
            self._wanted[alias] = reason
            self._queue.put_nowait(alias)
        self._changed()

    def request_dead_letter(self, alias: str) -> str:
        """Repair `alias` after a dead letter named it, rate-limited (module docstring). Returns
        `triggered` (requested now) or `deferred` (one request follows at the interval's end)."""
        now = self._clock.monotonic()
        last = self._dead_letter_repaired.get(alias)
        if last is None or now - last >= self._dead_letter_interval:
            self._dead_letter_repaired[alias] = now
            self._forget_old_dead_letters(now)
            self.request(alias, RepairReason.DEAD_LETTER)
            return "triggered"
        if alias not in self._deferred:
            self._deferred.add(alias)
            self._later(self._dead_letter_interval - (now - last), self._deferred_due, alias)
            self._changed()
        return "deferred"

    def _deferred_due(self, alias: str) -> None:
        if alias in self._deferred:  # not cancelled meanwhile
            self._deferred.discard(alias)
            self._dead_letter_repaired[alias] = self._clock.monotonic()
            self.request(alias, RepairReason.DEAD_LETTER)

    def _forget_old_dead_letters(self, now: float) -> None:
        """Keep the rate-limit memory to the mailboxes repaired within the interval."""
        if len(self._dead_letter_repaired) > 1024:
            interval = self._dead_letter_interval
            for alias, when in list(self._dead_letter_repaired.items()):
                if now - when >= interval:
                    del self._dead_letter_repaired[alias]

    def cancel(self, alias: str) -> None:
        """Forget a queued repair (its subscription is gone again; it will be asked anew). A
        listing already under way is finished, but not retried if it fails."""
        self._deferred.discard(alias)
        self._wanted.pop(alias, None)
        self._again.pop(alias, None)
        if alias in self._running:
            self._dropped.add(alias)
        self._changed()

    async def wait_idle(self) -> None:
        """Returns when nothing is queued, running or waiting for a retry."""
        await self._idle.wait()

    def _changed(self) -> None:
        WORKER_RECONCILE_PENDING.set(self.pending)
        if self.pending:
            self._idle.clear()
        else:
            self._idle.set()

    async def _work(self) -> None:
        while True:
            alias = await self._queue.get()
            reason = self._wanted.pop(alias, None)
            if reason is None:
                continue  # cancelled, or a duplicate queue entry
            self._running[alias] = reason
            try:
                await self._repair(alias, reason)
            except Exception:
                # a bug, not a server's failure: this repair is lost, the worker must not be
                WORKER_RECONCILE_RUNS.labels(reason, "failure").inc()
                log.exception("gap repair of mailbox %s failed unexpectedly", alias)
                self._attempts.pop(alias, None)
            finally:
                del self._running[alias]
                self._dropped.discard(alias)
                again = self._again.pop(alias, None)
                if again is not None:
                    self.request(alias, again)
                self._changed()

    async def _repair(self, alias: str, reason: RepairReason) -> None:
        try:
            snapshot = await self.snapshot(alias, reason)
            await self._publish(snapshot)
        except AuthError as e:
            # the subscription manager owns credential failures; the next subscribe asks again
            WORKER_RECONCILE_RUNS.labels(reason, "failure").inc()
            log.warning("gap repair of mailbox %s refused: %s", alias, e)
            self._attempts.pop(alias, None)
            return
        except IngestError as e:
            WORKER_RECONCILE_RUNS.labels(reason, "failure").inc()
            attempt = self._attempts.get(alias, 0) + 1
            if alias in self._dropped:  # cancelled meanwhile: nothing left to retry
                self._attempts.pop(alias, None)
                log.info("gap repair of mailbox %s failed after it was cancelled: %s", alias, e)
                return
            if attempt >= self._max_attempts:
                self._attempts.pop(alias, None)
                log.error(
                    "gap repair of mailbox %s gave up after %d attempts: %s", alias, attempt, e
                )
                return
            self._attempts[alias] = attempt
            delay = self._backoff.delay(attempt)
            log.warning("gap repair of mailbox %s failed (%s); retry in %.1f s", alias, e, delay)
            self._wanted[alias] = reason
            self._retry_later(alias, delay)
            return
        self._attempts.pop(alias, None)
        self.published += 1
        WORKER_RECONCILE_RUNS.labels(reason, "success").inc()

    def _retry_later(self, alias: str, delay: float) -> None:
        self._later(delay, self._retry_due, alias)

    def _retry_due(self, alias: str) -> None:
        if alias in self._wanted:
            self._queue.put_nowait(alias)

    def _later(self, delay: float, due: Callable[[str], None], alias: str) -> None:
        """`due(alias)` after `delay` seconds of the clock (a timer `stop` cancels)."""

        async def fire() -> None:
            await self._clock.sleep(delay)
            due(alias)

        timer = asyncio.create_task(fire(), name=f"reconcile-timer-{alias}")
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def snapshot(self, alias: str, reason: RepairReason) -> MailboxSnapshot:
        """Read one mailbox's folders (see the module docstring for the USN rule)."""
        credential = await self._credentials.credential_for(alias)
        rest, size = self._rest, self._page_size
        for _ in range(self._stable_attempts):
            before = await rest.folder_info(Folder.INBOX, credential)
            inbox, inbox_pages = await rest.list_messages(Folder.INBOX, credential, page_size=size)
            deleted, deleted_pages = await rest.list_messages(
                Folder.DELETED, credential, page_size=size
            )
            if inbox_pages == 1 and deleted_pages == 1:
                break
            after = await rest.folder_info(Folder.INBOX, credential)
            if after.usn == before.usn:
                break
            log.debug(
                "mailbox %s changed while listing (USN %d → %d)", alias, before.usn, after.usn
            )
        return MailboxSnapshot(
            mailbox_id=alias,
            usn=before.usn,
            taken_at=self._clock.utc_now(),
            reason=reason,
            inbox=tuple(inbox),
            deleted=tuple(deleted),
            source=self._source,
        )
