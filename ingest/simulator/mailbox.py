"""Server-side mailbox state: the simulator's ground truth.

A mailbox holds messages in two folders, Inbox and Deleted, each read or unread, and a mailbox
USN that grows with every change. These objects are the server's own mutable state (not records), so
they are plain slotted classes; everything handed out of the simulator is a copy (`truth()`,
listings).
"""

from __future__ import annotations

import enum
import random
import uuid
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from ingest.simulator.comet import NULL, local_time, quoted
from ingest.simulator.users import User


class Folder(enum.StrEnum):
    """The two folders CUMI notifies about; also the REST path segment."""

    INBOX = "inbox"
    DELETED = "deleted"


_INBOX, _DELETED = Folder.INBOX, Folder.DELETED
"""Aliases for hot paths: enum member access costs about half a microsecond in Python 3.11."""


class Message:
    """One voicemail; `read` and `usn` change, the rest is fixed when it arrives."""

    __slots__ = (
        "arrival_ms",
        "caller_ani",
        "info",
        "info_json",
        "message_id",
        "msg_type",
        "priority",
        "read",
        "sender",
        "sender_name",
        "usn",
    )

    def __init__(
        self,
        message_id: str,
        arrival_ms: int,
        *,
        caller_ani: str | None,
        sender: str | None,
        sender_name: str,
        priority: str,
        msg_type: str,
        zone: ZoneInfo,
    ) -> None:
        self.message_id = message_id
        self.arrival_ms = arrival_ms
        self.caller_ani = caller_ani
        self.sender = sender
        self.sender_name = sender_name
        self.priority = priority
        self.msg_type = msg_type
        self.read = False
        self.usn = 0
        """USN of the message's latest change (also of its removal, once gone)."""
        # the Comet MessageInfo never changes, so it is built (and encoded) once per message
        ani, who, received = (
            caller_ani or NULL,
            sender or NULL,
            local_time(arrival_ms // 1000, zone),
        )
        self.info: dict[str, str] = {
            "CallerAni": ani,
            "Sender": who,
            "MessageId": message_id,
            "ReceiveTime": received,
            "Priority": priority,
            "MsgType": msg_type,
        }
        # == encode(self.info), by hand: JSONEncoder.encode costs more than the rest of __init__
        self.info_json = (
            f'{{"CallerAni":{quoted(ani)},"Sender":{quoted(who)},'
            f'"MessageId":{quoted(message_id)},"ReceiveTime":{quoted(received)},'
            f'"Priority":{quoted(priority)},"MsgType":{quoted(msg_type)}}}'
        )


class Mailbox:
    """One user's folders and USN."""

    __slots__ = ("deleted", "inbox", "unread", "user", "usn")

    def __init__(self, user: User, usn: int) -> None:
        self.user = user
        self.usn = usn
        self.inbox: dict[str, Message] = {}
        self.deleted: dict[str, Message] = {}
        self.unread = {Folder.INBOX: 0, Folder.DELETED: 0}
        """Unread messages per folder, kept by put/take/mark: the scenario asks on every step."""

    @property
    def alias(self) -> str:
        return self.user.alias

    def folder(self, folder: Folder) -> dict[str, Message]:
        return self.inbox if folder is _INBOX else self.deleted

    def put(self, folder: Folder, message: Message) -> None:
        self.folder(folder)[message.message_id] = message
        self.unread[folder] += not message.read

    def take(self, folder: Folder, message_id: str) -> Message:
        message = self.folder(folder).pop(message_id)
        self.unread[folder] -= not message.read
        return message

    def mark(self, folder: Folder, message: Message, read: bool) -> None:
        if message.read != read:
            self.unread[folder] += -1 if read else 1
            message.read = read

    def where(self, message_id: str) -> Folder | None:
        if message_id in self.inbox:
            return _INBOX
        if message_id in self.deleted:
            return _DELETED
        return None

    def next_usn(self) -> int:
        self.usn += 1
        return self.usn

    def truth(self) -> dict[str, Any]:
        """This mailbox in the `ingest fold` JSON format (MessageId without the `0:` prefix)."""
        return {
            "inbox": {m.message_id: {"read": m.read} for m in self.inbox.values()},
            "deleted": {m.message_id: {"read": m.read} for m in self.deleted.values()},
            "usn": self.usn,
        }


_MSG_TYPES = (("Voice", 0.90), ("Fax", 0.93), ("Email", 0.97), ("Receipt", 1.0))
_PRIORITIES = (("Normal-Priority", 0.85), ("Urgent-Priority", 0.97), ("Low-Priority", 1.0))


def _weighted(rng: random.Random, table: Sequence[tuple[str, float]]) -> str:
    """Pick by cumulative probability (cheaper than `rng.choices` on this hot path)."""
    roll = rng.random()
    return next(value for value, upto in table if roll < upto)


def random_message(
    rng: random.Random, arrival_ms: int, zone: ZoneInfo, colleagues: Sequence[User]
) -> Message:
    """A new message: mostly outside callers (ANI, no Sender), some colleagues, a few anonymous."""
    roll = rng.random()
    ani: str | None
    sender: str | None
    if roll < 0.6:
        number = f"{rng.choice(('408', '415', '650', '919'))}555{rng.randrange(10_000):04d}"
        ani, sender, name = number, None, number
    elif roll < 0.9 and colleagues:
        colleague = rng.choice(colleagues)
        ani, sender, name = f"1{rng.randrange(1000):03d}", colleague.alias, colleague.display_name
    else:
        ani, sender, name = None, None, "Unknown caller"
    return Message(
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        arrival_ms,
        caller_ani=ani,
        sender=sender,
        sender_name=name,
        priority=_weighted(rng, _PRIORITIES),
        msg_type=_weighted(rng, _MSG_TYPES),
        zone=zone,
    )
