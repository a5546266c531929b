"""The Notifier: turns truth changes into Comet events on the subscribed channels.

Every event of a mailbox goes to every live subscription of that mailbox (one channel each, the
event naming that subscription's id) and from there to every session subscribed to the channel; an
event nobody is subscribed to is lost, as on the real server.

Notifier downtime follows the vendor note: while down, changes reach the truth but nothing is sent;
on recovery the server sends *the latest status* of each changed message — one event per message,
at the message's latest USN (messages sharing USN and status share one event):

| latest status | EventType |
|---|---|
| Inbox, read | SAVED_MESSAGE |
| Inbox, unread | UNREAD_MESSAGE (NEW_MESSAGE if it arrived during the downtime) |
| Deleted, read / unread | DELETED_MESSAGE_READ / DELETED_MESSAGE_UNREAD |
| gone, was in Inbox before the downtime | DELETED_MESSAGE |
| gone, was in Deleted before the downtime | DELETED_MESSAGE_DELETE |
| gone, arrived during the downtime | nothing (no one ever heard of it) |
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence

from ingest.simulator.comet import (
    CHANNEL_PREFIX,
    EventClock,
    EventType,
    bayeux_message,
    channel_of,
    event_data,
    event_message,
)
from ingest.simulator.faults import Faults, IrregularKind, MalformedKind, corrupted, malformed
from ingest.simulator.kpitruth import KpiTruth
from ingest.simulator.mailbox import Folder, Mailbox, Message
from ingest.simulator.scenario import Change
from ingest.simulator.stats import Counters

Deliver = Callable[[str, bytes], int]
"""Queue an encoded message on a channel; returns the number of sessions reached."""


_RECEIVE_TIME_KINDS = frozenset({IrregularKind.RECEIVE_TIME_NA, IrregularKind.RECEIVE_TIME_LOCALE})
"""Irregular payloads whose first message's ReceiveTime the worker cannot read."""


class Subscriptions:
    """Notification subscriptions (requestnotification results): subscriptionId ↔ mailbox."""

    def __init__(self) -> None:
        self._mailbox_of: dict[str, str] = {}
        self._of_mailbox: dict[str, list[str]] = defaultdict(list)

    def create(self, alias: str) -> str:
        subscription_id = str(uuid.uuid4())
        self._mailbox_of[subscription_id] = alias
        self._of_mailbox[alias].append(subscription_id)
        return subscription_id

    def mailbox_of(self, subscription_id: str) -> str | None:
        return self._mailbox_of.get(subscription_id)

    def of_mailbox(self, alias: str) -> Sequence[str]:
        return self._of_mailbox.get(alias, ())

    def allows(self, channel: str) -> bool:
        """Whether a session may subscribe to `channel`: only a live subscription's channel."""
        return channel.startswith(CHANNEL_PREFIX) and (
            channel[len(CHANNEL_PREFIX) :] in self._mailbox_of
        )

    def clear(self) -> None:
        self._mailbox_of.clear()
        self._of_mailbox.clear()

    def __len__(self) -> int:
        return len(self._mailbox_of)


class Notifier:
    """Publishes scenario changes, withholds and coalesces them during downtime, injects faults."""

    def __init__(
        self,
        subscriptions: Subscriptions,
        deliver: Deliver,
        counters: Counters,
        faults: Faults,
        *,
        seed: int,
        truth: KpiTruth | None = None,
        tell_when_written: bool = False,
    ) -> None:
        self._subscriptions = subscriptions
        self._truth = truth
        self._tell_when_written = tell_when_written
        """An event counts as told (in the order it was sent) only once a reply carrying it is
        written (`written`): one queued for a session that is then lost (a restart, a connection
        closed mid-reply) never reaches the client, as on the real server."""
        self._unwritten: dict[bytes, int] = {}
        """Payloads queued and not yet written to any client → their token in the truth."""
        self._tokens = itertools.count()
        self._deliver = deliver
        self._counters = counters
        self._faults = faults
        self._rng = random.Random(f"faults-{seed}")
        self._clock = EventClock()
        self.is_up = True
        # per mailbox: message id → (message, folder before the downtime)
        self._pending: dict[str, tuple[Mailbox, dict[str, tuple[Message, Folder | None]]]] = {}

    def publish(self, change: Change) -> None:
        mailbox = change.mailbox
        if self._truth is not None:
            self._truth.changed(mailbox, change.before, time.time())
        if not self.is_up:
            _, touched = self._pending.setdefault(mailbox.alias, (mailbox, {}))
            for message, before in change.before:
                touched.setdefault(message.message_id, (message, before))
            self._counters.withheld += len(change.notices)
            return
        for notice in change.notices:
            self.send(mailbox, notice.event_type, notice.usn, notice.messages)

    def down(self) -> None:
        self.is_up = False

    def up(self) -> int:
        """Back in service: send the latest status of every message changed meanwhile."""
        self.is_up = True
        pending, self._pending = self._pending, {}
        sent = 0
        for mailbox, touched in pending.values():
            groups: dict[tuple[int, EventType], list[Message]] = defaultdict(list)
            for message, before in touched.values():
                event_type = _latest_status(mailbox, message, before)
                if event_type is not None:
                    groups[message.usn, event_type].append(message)
            for (usn, event_type), messages in sorted(groups.items()):
                self.send(mailbox, event_type, usn, messages)
                sent += 1
        self._counters.coalesced += sent
        return sent

    def send(
        self, mailbox: Mailbox, event_type: EventType, usn: int, messages: Sequence[Message]
    ) -> int:
        """Publish one event to every subscription of the mailbox; returns sessions reached."""
        self._counters.emitted[event_type] += 1
        infos_json = ",".join(m.info_json for m in messages)
        event_time = self._clock.now()
        faults = self._faults
        duplicate = bool(faults.duplicate_ratio) and self._rng.random() < faults.duplicate_ratio
        corrupt = bool(faults.corrupt_ratio) and self._rng.random() < faults.corrupt_ratio
        reached = informed = 0
        times_known = receives_known = True
        for subscription_id in self._subscriptions.of_mailbox(mailbox.alias):
            channel = channel_of(subscription_id)
            malformed_payload = False
            time_known = receive_known = True
            if corrupt:
                payload, kind = self._corrupted(
                    channel,
                    mailbox=mailbox,
                    event_type=event_type,
                    usn=usn,
                    messages=messages,
                    event_time=event_time,
                    subscription_id=subscription_id,
                )
                malformed_payload = kind in set(MalformedKind)
                # the log cannot have the EventTime the server meant (the worker stamps it), nor
                # an unreadable ReceiveTime (the worker dates the arrival by the EventTime)
                time_known = kind != IrregularKind.EVENT_TIME_ZONE
                receive_known = kind not in _RECEIVE_TIME_KINDS
            else:
                payload = event_message(
                    channel=channel,
                    infos_json=infos_json,
                    usn=usn,
                    event_time=event_time,
                    subscription_id=subscription_id,
                    mailbox_id=mailbox.alias,
                    event_type=event_type,
                    display_name=mailbox.user.display_name,
                )
            delivered = self._deliver(channel, payload)
            reached += delivered
            if malformed_payload:
                self._counters.corrupted_malformed += delivered
            if duplicate:
                self._deliver(channel, payload)
            # a malformed payload tells the log nothing (a dead letter; the repair it triggers
            # shows the change as a listing)
            told = delivered and not malformed_payload
            informed += told
            times_known = times_known and (time_known or not told)
            receives_known = receives_known and (receive_known or not told)
            if told and self._truth is not None and self._tell_when_written:
                token = self._unwritten[payload] = next(self._tokens)
                self._truth.told(
                    event_type,
                    messages,
                    self._clock.second,
                    usn,
                    token,
                    time_known=time_known,
                    receive_known=receive_known,
                )
        if informed and self._truth is not None and not self._tell_when_written:
            self._truth.told(event_type, messages, self._clock.second, usn, time_known=times_known)
        if not reached:
            self._counters.lost += 1
        elif duplicate:
            self._counters.duplicates += 1
        if reached and corrupt:
            self._counters.corrupted += 1
        if reached and faults.malformed_ratio and self._rng.random() < faults.malformed_ratio:
            self.inject_malformed(mailbox, event_type, usn, messages)
        return reached

    def _corrupted(
        self,
        channel: str,
        *,
        mailbox: Mailbox,
        event_type: EventType,
        usn: int,
        messages: Sequence[Message],
        event_time: str,
        subscription_id: str,
    ) -> tuple[bytes, str]:
        """The corrupt fault's payload in place of a valid event, and its kind (a MalformedKind:
        a dead letter; an IrregularKind: published with what could be read)."""
        valid = event_data(
            infos=[m.info for m in messages],
            usn=usn,
            event_time=event_time,
            subscription_id=subscription_id,
            mailbox_id=mailbox.alias,
            event_type=event_type,
            display_name=mailbox.user.display_name,
        )
        kind, data = corrupted(valid, self._rng)
        return bayeux_message(channel, data), kind

    def written(self, payloads: Sequence[bytes]) -> None:
        """Replies carrying these messages reached a client's connection."""
        for payload in payloads:
            token = self._unwritten.pop(payload, None)
            if token is not None and self._truth is not None:
                self._truth.written(token)

    def inject_malformed(
        self,
        mailbox: Mailbox,
        event_type: EventType,
        usn: int,
        messages: Sequence[Message],
        kind: MalformedKind | None = None,
    ) -> int:
        """Publish one broken payload modelled on a valid event; returns sessions reached."""
        kind = kind or self._rng.choice(list(MalformedKind))
        reached = 0
        for subscription_id in self._subscriptions.of_mailbox(mailbox.alias):
            channel = channel_of(subscription_id)
            valid = event_data(
                infos=[m.info for m in messages],
                usn=usn,
                event_time=self._clock.now(),
                subscription_id=subscription_id,
                mailbox_id=mailbox.alias,
                event_type=event_type,
                display_name=mailbox.user.display_name,
            )
            reached += self._deliver(
                channel, bayeux_message(channel, malformed(kind, valid, self._rng))
            )
        if reached:
            self._counters.malformed += 1
        return reached


def _latest_status(mailbox: Mailbox, message: Message, before: Folder | None) -> EventType | None:
    match mailbox.where(message.message_id):
        case Folder.INBOX if message.read:
            return EventType.SAVED_MESSAGE
        case Folder.INBOX:
            return EventType.NEW_MESSAGE if before is None else EventType.UNREAD_MESSAGE
        case Folder.DELETED:
            return (
                EventType.DELETED_MESSAGE_READ if message.read else EventType.DELETED_MESSAGE_UNREAD
            )
        case None if before is Folder.INBOX:
            return EventType.DELETED_MESSAGE
        case None if before is Folder.DELETED:
            return EventType.DELETED_MESSAGE_DELETE
    return None
