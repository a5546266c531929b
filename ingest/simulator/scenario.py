"""The scenario engine: realistic mailbox activity under the vendor's USN rules, and ground truth.

Each operation changes one mailbox and yields the Comet notices the server sends for it:

| operation | notices (USN) |
|---|---|
| new message(s) | NEW_MESSAGE (u) |
| mark read / unread in Inbox | SAVED_MESSAGE / UNREAD_MESSAGE (u) |
| delete from Inbox | DELETED_MESSAGE (u) + DELETED_MESSAGE_CREATE (u) |
| undelete | SAVED_MESSAGE or UNREAD_MESSAGE (u) + DELETED_MESSAGE_DELETE (u) |
| hard delete | DELETED_MESSAGE + DELETED_MESSAGE_CREATE (u), DELETED_MESSAGE_DELETE (u+1) |
| mark read / unread in Deleted | DELETED_MESSAGE_READ / DELETED_MESSAGE_UNREAD (u) |
| purge from Deleted | DELETED_MESSAGE_DELETE (u) |

Otherwise every USN is used once and USNs grow per mailbox. An operation on several messages at
once (a user selecting several messages) is ONE notice per event type whose MessageInfo lists all of
them — the vendor documents MessageInfo as "an array of one or more". A message keeps its read flag
when it moves between folders. The same seed gives the same sequence of operations, message ids
and flags.
"""

from __future__ import annotations

import bisect
import enum
import functools
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from ingest.simulator.comet import EventType
from ingest.simulator.mailbox import Folder, Mailbox, Message, random_message
from ingest.simulator.users import User


class Op(enum.StrEnum):
    """What a user (or the server) does to a mailbox."""

    NEW = "new"
    READ = "read"
    UNREAD = "unread"
    DELETE = "delete"
    UNDELETE = "undelete"
    HARD_DELETE = "hard_delete"
    DELETED_READ = "deleted_read"
    DELETED_UNREAD = "deleted_unread"
    PURGE = "purge"


OP_EVENTS: dict[Op, int] = {
    Op.NEW: 1,
    Op.READ: 1,
    Op.UNREAD: 1,
    Op.DELETE: 2,
    Op.UNDELETE: 2,
    Op.HARD_DELETE: 3,
    Op.DELETED_READ: 1,
    Op.DELETED_UNREAD: 1,
    Op.PURGE: 1,
}
"""Comet events one random operation emits (an explicit mixed-flag undelete emits 3)."""

_FITS: dict[Op, tuple[Folder, bool | None]] = {
    Op.READ: (Folder.INBOX, True),
    Op.UNREAD: (Folder.INBOX, False),
    Op.DELETE: (Folder.INBOX, None),
    Op.HARD_DELETE: (Folder.INBOX, None),
    Op.UNDELETE: (Folder.DELETED, None),
    Op.DELETED_READ: (Folder.DELETED, True),
    Op.DELETED_UNREAD: (Folder.DELETED, False),
    Op.PURGE: (Folder.DELETED, None),
}
"""Which messages an operation applies to: its folder and the read flag it sets (None: any)."""

MAX_EVENTS = max(OP_EVENTS.values())

FULL = 25
"""Folder size above which the engine favours emptying it, so mailboxes stay a realistic size."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One Comet event before it is addressed to a subscription."""

    event_type: EventType
    usn: int
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """One operation applied to the truth, with the notices the Notifier publishes for it."""

    mailbox: Mailbox
    op: Op
    notices: tuple[Notice, ...]
    before: tuple[tuple[Message, Folder | None], ...]
    """Each touched message and the folder it was in before (None: it is new)."""


class Scenario:
    """N mailboxes, a seeded random source of operations, and the exact resulting state."""

    def __init__(
        self,
        users: Sequence[User],
        *,
        seed: int,
        zone: ZoneInfo,
        initial_messages: int = 0,
        multi_ratio: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rng = random.Random(f"scenario-{seed}")
        self._zone = zone
        self._clock = clock
        self._users = list(users)
        self.multi_ratio = multi_ratio
        # real mailboxes have long histories: start USNs somewhere in the thousands
        self.mailboxes = {u.alias: Mailbox(u, self._rng.randrange(1000, 9000)) for u in users}
        self._aliases = list(self.mailboxes)
        for mailbox in self.mailboxes.values():
            self._populate(mailbox, initial_messages)

    def truth(self) -> dict[str, Any]:
        """`{"<alias>": {"inbox": {"<MessageId>": {"read": bool}}, "deleted": {…}, "usn": int}}`."""
        return {alias: mailbox.truth() for alias, mailbox in self.mailboxes.items()}

    def step(self, budget: int | None = None) -> Change:
        """One random operation on a random mailbox, emitting at most `budget` events."""
        mailbox = self.mailboxes[self._rng.choice(self._aliases)]
        ops, cumulative = self._weights(mailbox, budget)
        op = ops[bisect.bisect_right(cumulative, self._rng.random() * cumulative[-1])]
        count = self._rng.randint(2, 4) if self._rng.random() < self.multi_ratio else 1
        return self._apply(mailbox, op, self._pick(mailbox, op, count))

    def perform(
        self, alias: str, op: Op, *, message_ids: Sequence[str] | None = None, count: int = 1
    ) -> Change:
        """Apply `op` to `alias`: to `message_ids`, or to `count` randomly chosen fitting messages.

        Raises KeyError for an unknown mailbox and ValueError when no message fits the operation.
        """
        mailbox = self.mailboxes[alias]
        if count < 1:
            raise ValueError("count must be at least 1")
        if op is Op.NEW or message_ids is None:
            messages = self._pick(mailbox, op, count)
        else:
            messages = [self._require(mailbox, op, mid) for mid in message_ids]
        if op is not Op.NEW and not messages:
            raise ValueError(f"no message of {alias} fits {op}")
        return self._apply(mailbox, op, messages)

    # -- choosing -------------------------------------------------------------------------------

    def _weights(self, mailbox: Mailbox, budget: int | None) -> _Table:
        """The operations that fit the mailbox's state, with cumulative weights."""
        in_size, del_size = len(mailbox.inbox), len(mailbox.deleted)
        unread_in, unread_del = mailbox.unread[Folder.INBOX], mailbox.unread[Folder.DELETED]
        fits = min(budget, MAX_EVENTS) if budget is not None else MAX_EVENTS
        return _table(
            unread_in=unread_in > 0,
            read_in=in_size > unread_in,
            unread_del=unread_del > 0,
            read_del=del_size > unread_del,
            full_in=in_size > FULL,
            full_del=del_size > FULL,
            fits=fits,
        )

    def _candidates(self, mailbox: Mailbox, op: Op) -> list[Message]:
        if op not in _FITS:
            return []  # NEW creates its messages
        folder, wanted_read = _FITS[op]
        messages = mailbox.folder(folder).values()
        if wanted_read is None:
            return list(messages)
        return [m for m in messages if m.read is not wanted_read]

    def _pick(self, mailbox: Mailbox, op: Op, count: int) -> list[Message]:
        if op is Op.NEW:
            now_ms = int(self._clock() * 1000)
            return [self._new_message(now_ms) for _ in range(count)]
        candidates = self._candidates(mailbox, op)
        if op is Op.UNDELETE and candidates:
            # one undelete notice pair is SAVED *or* UNREAD: restore messages of one read state
            flag = self._rng.choice(candidates).read
            candidates = [m for m in candidates if m.read == flag]
        if count == 1 and candidates:
            return [self._rng.choice(candidates)]  # the common case; `sample` is much slower
        return self._rng.sample(candidates, min(count, len(candidates)))

    def _require(self, mailbox: Mailbox, op: Op, message_id: str) -> Message:
        for message in self._candidates(mailbox, op):
            if message.message_id == message_id:
                return message
        raise ValueError(f"message {message_id} of {mailbox.alias} does not fit {op}")

    def _new_message(self, arrival_ms: int) -> Message:
        return random_message(self._rng, arrival_ms, self._zone, self._users)

    def _populate(self, mailbox: Mailbox, count: int) -> None:
        """Messages that were there before the simulator started (no events for them)."""
        now_ms = int(self._clock() * 1000)
        for _ in range(count):
            message = self._new_message(now_ms - self._rng.randrange(86_400_000 * 30))
            message.read = self._rng.random() < 0.5
            message.usn = mailbox.next_usn()
            mailbox.put(Folder.DELETED if self._rng.random() < 0.2 else Folder.INBOX, message)

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, mailbox: Mailbox, op: Op, messages: list[Message]) -> Change:
        before = tuple((m, mailbox.where(m.message_id)) for m in messages)
        usn = mailbox.next_usn()
        for message in messages:
            message.usn = usn
        notices = _APPLY[op](mailbox, messages, usn)
        if op is Op.HARD_DELETE:
            # the final purge from Deleted is a change of its own, with a later USN
            purge_usn = mailbox.next_usn()
            notices += _purge(mailbox, messages, purge_usn)
            for message in messages:
                message.usn = purge_usn
        return Change(mailbox, op, notices, before)


_Table = tuple[tuple[Op, ...], tuple[int, ...]]


@functools.cache
def _table(
    *,
    unread_in: bool,
    read_in: bool,
    unread_del: bool,
    read_del: bool,
    full_in: bool,
    full_del: bool,
    fits: int,
) -> _Table:
    """Operation weights for a kind of mailbox state (a few hundred kinds exist, so cached: this
    runs on every step). Folders fill up and empty out around `FULL` messages."""
    inbox, deleted = unread_in or read_in, unread_del or read_del
    table = [
        (Op.NEW, 3 if full_in else 30),
        (Op.READ, 20 * unread_in),
        (Op.UNREAD, 4 * read_in),
        (Op.DELETE, (42 if full_in else 14) * inbox),
        (Op.HARD_DELETE, 4 * inbox),
        (Op.UNDELETE, 4 * deleted),
        (Op.DELETED_READ, 3 * unread_del),
        (Op.DELETED_UNREAD, 2 * read_del),
        (Op.PURGE, (24 if full_del else 8) * deleted),
    ]
    chosen = [(op, w) for op, w in table if w and OP_EVENTS[op] <= fits]
    return tuple(op for op, _ in chosen), tuple(itertools.accumulate(w for _, w in chosen))


_Applier = Callable[[Mailbox, list[Message], int], tuple[Notice, ...]]
"""Moves messages and returns the notices; the caller has already set their USN."""


def _notice(event_type: EventType, usn: int, messages: list[Message]) -> Notice:
    return Notice(event_type, usn, tuple(messages))


def _new(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.put(Folder.INBOX, m)
    return (_notice(EventType.NEW_MESSAGE, usn, messages),)


def _marker(folder: Folder, read: bool, event_type: EventType) -> _Applier:
    def mark(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
        for m in messages:
            mailbox.mark(folder, m, read)
        return (_notice(event_type, usn, messages),)

    return mark


def _delete(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.put(Folder.DELETED, mailbox.take(Folder.INBOX, m.message_id))
    return (
        _notice(EventType.DELETED_MESSAGE, usn, messages),
        _notice(EventType.DELETED_MESSAGE_CREATE, usn, messages),
    )


def _undelete(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.put(Folder.INBOX, mailbox.take(Folder.DELETED, m.message_id))
    read = [m for m in messages if m.read]
    unread = [m for m in messages if not m.read]
    restored = [_notice(EventType.SAVED_MESSAGE, usn, read)] if read else []
    if unread:
        restored.append(_notice(EventType.UNREAD_MESSAGE, usn, unread))
    return (*restored, _notice(EventType.DELETED_MESSAGE_DELETE, usn, messages))


def _purge(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.take(Folder.DELETED, m.message_id)
    return (_notice(EventType.DELETED_MESSAGE_DELETE, usn, messages),)


_APPLY: dict[Op, _Applier] = {
    Op.NEW: _new,
    Op.READ: _marker(Folder.INBOX, True, EventType.SAVED_MESSAGE),
    Op.UNREAD: _marker(Folder.INBOX, False, EventType.UNREAD_MESSAGE),
    Op.DELETE: _delete,
    Op.HARD_DELETE: _delete,
    Op.UNDELETE: _undelete,
    Op.DELETED_READ: _marker(Folder.DELETED, True, EventType.DELETED_MESSAGE_READ),
    Op.DELETED_UNREAD: _marker(Folder.DELETED, False, EventType.DELETED_MESSAGE_UNREAD),
    Op.PURGE: _purge,
}
