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


FULL = 25
"""Folder size above which the engine favours emptying it, so mailboxes stay a realistic size."""

# Enum member access (`Folder.INBOX`) costs about half a microsecond in Python 3.11; these aliases
# are for the code that runs on every step.
_INBOX, _DELETED = Folder.INBOX, Folder.DELETED
_NEW_MESSAGE, _SAVED, _UNREAD = (
    EventType.NEW_MESSAGE,
    EventType.SAVED_MESSAGE,
    EventType.UNREAD_MESSAGE,
)
_DELETED_MESSAGE, _CREATE, _DELETE = (
    EventType.DELETED_MESSAGE,
    EventType.DELETED_MESSAGE_CREATE,
    EventType.DELETED_MESSAGE_DELETE,
)


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


_Applier = Callable[[Mailbox, list[Message], int], tuple[Notice, ...]]
"""Moves messages and returns the notices; the caller has already set their USN."""


@dataclass(frozen=True, slots=True)
class _Spec:
    """Everything a step needs to know about an operation, looked up once."""

    op: Op
    events: int
    """Comet events one operation emits (an explicit mixed-flag undelete emits 3)."""
    apply: _Applier
    source: Folder | None
    """The folder its messages come from (None: it creates them)."""
    sets_read: bool | None
    """Only messages whose read flag differs from this qualify (None: any)."""
    one_flag: bool = False
    """Pick messages sharing a read flag (an undelete pair is SAVED *or* UNREAD)."""
    then_purge: bool = False
    """Hard delete: a purge from Deleted follows at the next USN."""


def _notice(event_type: EventType, usn: int, messages: list[Message]) -> Notice:
    return Notice(event_type, usn, tuple(messages))


def _new(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.put(_INBOX, m)
    return (_notice(_NEW_MESSAGE, usn, messages),)


def _marker(folder: Folder, read: bool, event_type: EventType) -> _Applier:
    def mark(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
        for m in messages:
            mailbox.mark(folder, m, read)
        return (_notice(event_type, usn, messages),)

    return mark


def _delete(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.put(_DELETED, mailbox.take(_INBOX, m.message_id))
    return (_notice(_DELETED_MESSAGE, usn, messages), _notice(_CREATE, usn, messages))


def _undelete(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.put(_INBOX, mailbox.take(_DELETED, m.message_id))
    read = [m for m in messages if m.read]
    unread = [m for m in messages if not m.read]
    restored = [_notice(_SAVED, usn, read)] if read else []
    if unread:
        restored.append(_notice(_UNREAD, usn, unread))
    return (*restored, _notice(_DELETE, usn, messages))


def _purge(mailbox: Mailbox, messages: list[Message], usn: int) -> tuple[Notice, ...]:
    for m in messages:
        mailbox.take(_DELETED, m.message_id)
    return (_notice(_DELETE, usn, messages),)


_SPECS: dict[Op, _Spec] = {
    s.op: s
    for s in (
        _Spec(Op.NEW, 1, _new, None, None),
        _Spec(Op.READ, 1, _marker(_INBOX, True, _SAVED), _INBOX, True),
        _Spec(Op.UNREAD, 1, _marker(_INBOX, False, _UNREAD), _INBOX, False),
        _Spec(Op.DELETE, 2, _delete, _INBOX, None),
        _Spec(Op.UNDELETE, 2, _undelete, _DELETED, None, one_flag=True),
        _Spec(Op.HARD_DELETE, 3, _delete, _INBOX, None, then_purge=True),
        _Spec(
            Op.DELETED_READ,
            1,
            _marker(_DELETED, True, EventType.DELETED_MESSAGE_READ),
            _DELETED,
            True,
        ),
        _Spec(
            Op.DELETED_UNREAD,
            1,
            _marker(_DELETED, False, EventType.DELETED_MESSAGE_UNREAD),
            _DELETED,
            False,
        ),
        _Spec(Op.PURGE, 1, _purge, _DELETED, None),
    )
}

OP_EVENTS: dict[Op, int] = {op: spec.events for op, spec in _SPECS.items()}
"""Comet events one random operation emits (an explicit mixed-flag undelete emits 3)."""

MAX_EVENTS = max(OP_EVENTS.values())

_Table = tuple[tuple[_Spec, ...], tuple[int, ...]]


@functools.cache
def _table(signature: tuple[bool, bool, bool, bool, bool, bool, int]) -> _Table:
    """Operation weights for a kind of mailbox state: (unread in Inbox, read in Inbox, unread in
    Deleted, read in Deleted, Inbox full, Deleted full, most events allowed). A few hundred kinds
    exist, so this is cached: it runs on every step."""
    unread_in, read_in, unread_del, read_del, full_in, full_del, fits = signature
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
    chosen = [(_SPECS[op], w) for op, w in table if w and OP_EVENTS[op] <= fits]
    return tuple(s for s, _ in chosen), tuple(itertools.accumulate(w for _, w in chosen))


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
        rng = self._rng
        mailbox = self.mailboxes[rng.choice(self._aliases)]
        specs, cumulative = self._weights(mailbox, budget)
        spec = specs[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
        count = rng.randint(2, 4) if rng.random() < self.multi_ratio else 1
        return self._apply(mailbox, spec, self._pick(mailbox, spec, count))

    def perform(
        self, alias: str, op: Op, *, message_ids: Sequence[str] | None = None, count: int = 1
    ) -> Change:
        """Apply `op` to `alias`: to `message_ids`, or to `count` randomly chosen fitting messages.

        Raises KeyError for an unknown mailbox and ValueError when no message fits the operation.
        """
        mailbox, spec = self.mailboxes[alias], _SPECS[op]
        if count < 1:
            raise ValueError("count must be at least 1")
        if spec.source is None or message_ids is None:
            messages = self._pick(mailbox, spec, count)
        else:
            messages = [self._require(mailbox, spec, mid) for mid in message_ids]
        if spec.source is not None and not messages:
            raise ValueError(f"no message of {alias} fits {op}")
        return self._apply(mailbox, spec, messages)

    # -- choosing -------------------------------------------------------------------------------

    def _weights(self, mailbox: Mailbox, budget: int | None) -> _Table:
        """The operations that fit the mailbox's state, with cumulative weights."""
        in_size, del_size = len(mailbox.inbox), len(mailbox.deleted)
        unread_in, unread_del = mailbox.unread[_INBOX], mailbox.unread[_DELETED]
        fits = MAX_EVENTS if budget is None else min(budget, MAX_EVENTS)
        return _table(
            (
                unread_in > 0,
                in_size > unread_in,
                unread_del > 0,
                del_size > unread_del,
                in_size > FULL,
                del_size > FULL,
                fits,
            )
        )

    def _candidates(self, mailbox: Mailbox, spec: _Spec) -> list[Message]:
        if spec.source is None:
            return []  # NEW creates its messages
        messages = mailbox.folder(spec.source).values()
        if spec.sets_read is None:
            return list(messages)
        return [m for m in messages if m.read is not spec.sets_read]

    def _pick(self, mailbox: Mailbox, spec: _Spec, count: int) -> list[Message]:
        if spec.source is None:
            now_ms = int(self._clock() * 1000)
            return [self._new_message(now_ms) for _ in range(count)]
        candidates = self._candidates(mailbox, spec)
        if spec.one_flag and candidates:
            flag = self._rng.choice(candidates).read
            candidates = [m for m in candidates if m.read == flag]
        if count == 1 and candidates:
            return [self._rng.choice(candidates)]  # the common case; `sample` is much slower
        return self._rng.sample(candidates, min(count, len(candidates)))

    def _require(self, mailbox: Mailbox, spec: _Spec, message_id: str) -> Message:
        for message in self._candidates(mailbox, spec):
            if message.message_id == message_id:
                return message
        raise ValueError(f"message {message_id} of {mailbox.alias} does not fit {spec.op}")

    def _new_message(self, arrival_ms: int) -> Message:
        return random_message(self._rng, arrival_ms, self._zone, self._users)

    def _populate(self, mailbox: Mailbox, count: int) -> None:
        """Messages that were there before the simulator started (no events for them)."""
        now_ms = int(self._clock() * 1000)
        for _ in range(count):
            message = self._new_message(now_ms - self._rng.randrange(86_400_000 * 30))
            message.read = self._rng.random() < 0.5
            message.usn = mailbox.next_usn()
            mailbox.put(_DELETED if self._rng.random() < 0.2 else _INBOX, message)

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, mailbox: Mailbox, spec: _Spec, messages: list[Message]) -> Change:
        before = tuple((m, mailbox.where(m.message_id)) for m in messages)
        usn = mailbox.next_usn()
        for message in messages:
            message.usn = usn
        notices = spec.apply(mailbox, messages, usn)
        if spec.then_purge:
            # the final purge from Deleted is a change of its own, with a later USN
            purge_usn = mailbox.next_usn()
            notices += _purge(mailbox, messages, purge_usn)
            for message in messages:
                message.usn = purge_usn
        return Change(mailbox, spec.op, notices, before)
