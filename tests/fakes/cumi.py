"""Fakes of the CUMI side: credentials, the REST client, the sink's snapshot port, the gap-repair
queue and the CometD session, as the subscription manager and the reconciler use them.

The REST client and session fakes subclass the real classes (whose constructors do no I/O) and
override only what the state machines call, so a signature drift is a type error, not a silently
wrong fake.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ingest.cumi.credentials import Credential, MissingCredentials
from ingest.cumi.gap_repair import Reconciler
from ingest.cumi.rest import CumiRestClient, Folder, FolderInfo
from ingest.cumi.session import CometSession, EventBatch, LossReason
from ingest.errors import TransportError
from ingest.events import MailboxSnapshot, RepairReason, SnapshotMessage
from ingest.settings import Secret

_SCHEME = "Fake "


def credential_of(alias: str) -> Credential:
    """The credential FakeCredentials hands out for `alias` (the REST fake reads the alias back)."""
    return Credential(Secret(_SCHEME + alias))


def alias_of(credential: Credential) -> str:
    return credential.authorization.reveal().removeprefix(_SCHEME)


class FakeCredentials:
    """A `CredentialsProvider`: every alias has a credential except those in `missing`."""

    def __init__(self, missing: Iterable[str] = ()) -> None:
        self.missing = set(missing)
        self.asked: list[str] = []
        self.forgotten: list[str] = []

    async def credential_for(self, alias: str) -> Credential:
        self.asked.append(alias)
        if alias in self.missing:
            raise MissingCredentials(f"no credentials for {alias} (fake)")
        return credential_of(alias)

    def forget(self, alias: str) -> None:
        self.forgotten.append(alias)


def subscription_id(alias: str, n: int = 1) -> str:
    return f"{alias}.{n}"


def message(message_id: str, *, read: bool = False) -> SnapshotMessage:
    return SnapshotMessage(message_id=message_id, read=read)


@dataclass(slots=True)
class FakeMailbox:
    """One mailbox on the fake server: its mailbox-level USN and its two folders."""

    usn: int = 1
    inbox: list[SnapshotMessage] = field(default_factory=list)
    deleted: list[SnapshotMessage] = field(default_factory=list)

    def folder(self, folder: Folder) -> list[SnapshotMessage]:
        return self.inbox if folder is Folder.INBOX else self.deleted

    def arrive(self, message_id: str) -> None:
        """A new message: in the Inbox, the USN moves."""
        self.inbox.append(message(message_id))
        self.usn += 1


class FakeRestClient(CumiRestClient):
    """The CUMI REST operations against in-memory mailboxes (`server`), with scripted failures.

    Calls are kept in order as (operation, alias): `requestnotification`, `folder:<folder>`,
    `list:<folder>`. The n-th subscription of a mailbox is `subscription_id(alias, n)`. Before
    answering a call, it waits for a gate set by `hold`, then runs `on_call` (the server changing
    while it is read), then raises the next error from `fail`.
    """

    def __init__(self) -> None:
        super().__init__("https://cumi.invalid")  # builds no HTTP session: that is start()'s job
        self.server: dict[str, FakeMailbox] = {}
        self.calls: list[tuple[str, str]] = []
        self.on_call: Callable[[str, str], None] | None = None
        self._errors: dict[tuple[str, str], list[Exception]] = {}
        self._gates: dict[tuple[str, str], asyncio.Event] = {}
        self._issued: Counter[str] = Counter()

    def fail(self, operation: str, alias: str, *errors: Exception) -> None:
        """The next calls of `operation` for `alias` raise `errors`, one each, in order."""
        self._errors.setdefault((operation, alias), []).extend(errors)

    def hold(self, operation: str, alias: str) -> asyncio.Event:
        """Calls of `operation` for `alias` wait until the returned event is set."""
        gate = self._gates[operation, alias] = asyncio.Event()
        return gate

    def count(self, operation: str, alias: str | None = None) -> int:
        return sum(1 for op, a in self.calls if op == operation and alias in (None, a))

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def request_notification(self, credential: Credential) -> str:
        alias = await self._answer("requestnotification", credential)
        self._issued[alias] += 1
        return subscription_id(alias, self._issued[alias])

    async def folder_info(self, folder: Folder, credential: Credential) -> FolderInfo:
        alias = await self._answer(f"folder:{folder}", credential)
        box = self.server[alias]
        return FolderInfo(box.usn, len(box.folder(folder)))

    async def list_messages(
        self, folder: Folder, credential: Credential, *, page_size: int = 100
    ) -> tuple[list[SnapshotMessage], int]:
        alias = await self._answer(f"list:{folder}", credential)
        messages = list(self.server[alias].folder(folder))
        return messages, max(1, -(-len(messages) // page_size))

    async def _answer(self, operation: str, credential: Credential) -> str:
        alias = alias_of(credential)
        self.calls.append((operation, alias))
        gate = self._gates.get((operation, alias))
        if gate is not None:
            await gate.wait()
        if self.on_call is not None:
            self.on_call(operation, alias)
        errors = self._errors.get((operation, alias))
        if errors:
            raise errors.pop(0)
        return alias


class FakeSink:
    """The sink's snapshot port (`Sink.publish_snapshot`): keeps what it was given; raises the
    queued `errors` first, one per call."""

    def __init__(self) -> None:
        self.snapshots: list[MailboxSnapshot] = []
        self.errors: list[Exception] = []

    async def publish_snapshot(self, snapshot: MailboxSnapshot) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.snapshots.append(snapshot)

    def of(self, alias: str) -> list[MailboxSnapshot]:
        return [s for s in self.snapshots if s.mailbox_id == alias]


class FakeReconciler(Reconciler):
    """The gap-repair queue as the subscription manager uses it: requests and cancellations are
    kept in order in `log` as (operation, alias, reason), nothing is listed."""

    def __init__(self) -> None:
        super().__init__(FakeRestClient(), FakeCredentials(), FakeSink().publish_snapshot)
        self.log: list[tuple[str, str, RepairReason | None]] = []
        self.error: Exception | None = None
        """Raised by the next `request` (a bug in the caller's path)."""

    def request(self, alias: str, reason: RepairReason) -> None:
        if self.error is not None:
            raise self.error
        self.log.append(("request", alias, reason))

    def cancel(self, alias: str) -> None:
        self.log.append(("cancel", alias, None))

    def requests(self) -> list[tuple[str, RepairReason | None]]:
        return [(alias, reason) for op, alias, reason in self.log if op == "request"]


async def _ignore_events(events: EventBatch, received: float) -> None:
    return None


class FakeSessions:
    """The subscription manager's `session_factory`. The sessions it makes share one fake server:
    `refuse` scripts subscribe errors per channel (across sessions, as a server restart would),
    `gate` holds every subscribe reply until it is set, `start_failures` handshakes fail first."""

    def __init__(self) -> None:
        self.made: list[FakeSession] = []
        self.start_failures = 0
        self.gate: asyncio.Event | None = None
        self._refusals: dict[str, list[str]] = {}

    def __call__(self) -> CometSession:
        session = FakeSession(self)
        self.made.append(session)
        return session

    @property
    def current(self) -> FakeSession:
        return self.made[-1]

    def started(self) -> list[FakeSession]:
        return [s for s in self.made if s.started]

    def refuse(self, channel: str, *errors: str) -> None:
        """The next subscribes of `channel` are refused with `errors`, one each, in order."""
        self._refusals.setdefault(channel, []).extend(errors)

    def reply(self, channel: str) -> str | None:
        errors = self._refusals.get(channel)
        return errors.pop(0) if errors else None


class FakeSession(CometSession):
    """A CometD session whose server is the test: see FakeSessions. `lose()` is the real one."""

    def __init__(self, sessions: FakeSessions) -> None:
        super().__init__("https://cumi.invalid/vmevents/cometd", _ignore_events)  # no client yet
        self._sessions = sessions
        self.started = False
        self.stops = 0
        self.batches: list[list[str]] = []
        self.unsubscribed: list[list[str]] = []
        self.subscribed: set[str] = set()

    async def start(self) -> None:
        if self._sessions.start_failures > 0:
            self._sessions.start_failures -= 1
            raise TransportError("CometD handshake failed (fake)")
        self._lost = asyncio.get_running_loop().create_future()
        self.started = True

    async def stop(self) -> None:
        self.stops += 1
        if self._lost is not None and not self._lost.done():
            self._lost.cancel()

    async def subscribe_many(self, channels: Iterable[str]) -> dict[str, str | None]:
        channels = list(dict.fromkeys(channels))
        self.batches.append(channels)
        if self._sessions.gate is not None:
            await self._sessions.gate.wait()
        if self.is_lost:
            return dict.fromkeys(channels, "session closed")
        results = {channel: self._sessions.reply(channel) for channel in channels}
        self.subscribed.update(ch for ch, error in results.items() if error is None)
        if any(error and error.startswith("402") for error in results.values()):
            self.lose(LossReason.UNKNOWN_CLIENT)  # as the real session's subscribe-reply tap
        return results

    async def unsubscribe_many(self, channels: Iterable[str]) -> bool:
        channels = list(channels)
        self.unsubscribed.append(channels)
        self.subscribed.difference_update(channels)
        return not self.is_lost

    def subscribes(self) -> list[str]:
        """Every channel this session was asked to subscribe, in order."""
        return [channel for batch in self.batches for channel in batch]
