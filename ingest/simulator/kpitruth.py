"""Ground truth of the voicemail KPIs, from the server's side (`GET /_sim/kpi-truth`).

The server knows what happened to each message — when it arrived, when it was first read, whether
it left the Inbox never read — and what it told its subscribers: which notification first named
the message, which first said it was read (and with which EventTime), which folder listing showed
it. The KPIs of docs/metrics.md ("Voicemail KPIs") are computed here from those facts, the way a
perfect observer of the notifications would, so a test can compare the pipeline's KPIs with them:

- a message's arrival is known when a NEW_MESSAGE about it was told (live, or restated after
  Notifier downtime while still unread in the Inbox); its ReceiveTime is the arrival;
- its first listen is the EventTime of the first notification saying it read; a read the server
  only showed in a listing (nobody was listening), or of a message whose arrival is unknown, is
  counted as unknown;
- it is deleted unheard when, after it was told or listed in the Inbox, the first notification or
  listing placing it out of the Inbox came before any saying it read. That is what the
  notifications and listings can tell, not what happened: a message read and then deleted while
  the Notifier was down is reported as a delete of a message never heard, one that came and went
  during a gap is never reported. `deleted_unheard_server_side` counts what really happened (it
  left the Inbox never read), the difference the log cannot avoid, for tests and docs;
- `listen_delay_by_downtime_seconds`: how much later than the real first read the notification
  that reported it was sent (a read during Notifier downtime is only told at recovery): the error
  the log cannot avoid, for tests and docs.

Label values and buckets mirror the pipeline's on purpose, written again here: the simulator plays
the vendor and imports none of the pipeline (like `comet.EventType`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ingest.simulator.comet import EventType
from ingest.simulator.mailbox import Folder, Mailbox, Message

BUCKETS = (60, 300, 900, 3600, 14_400, 43_200, 86_400, 259_200, 604_800)
THRESHOLDS = (3600, 14_400, 86_400)
_READ_TOLD = frozenset({EventType.SAVED_MESSAGE, EventType.DELETED_MESSAGE_READ})
_TO_INBOX = frozenset({EventType.NEW_MESSAGE, EventType.SAVED_MESSAGE, EventType.UNREAD_MESSAGE})
_OUT_OF_INBOX = frozenset(
    {
        EventType.DELETED_MESSAGE,
        EventType.DELETED_MESSAGE_CREATE,
        EventType.DELETED_MESSAGE_READ,
        EventType.DELETED_MESSAGE_UNREAD,
    }
)


class Heard(NamedTuple):
    """One notification sent (`event_type`) or one listing's line (`folder`, `read`)."""

    event_type: EventType | None = None
    token: int | None = None
    """None: delivered; else it counts once written (`KpiTruth.written`)."""
    second: int | None = 0
    """EventTime (epoch second); None: the notification's EventTime could not be read, so the
    log stamps it with the time it was ingested, which the server cannot know."""
    usn: int = 0
    folder: Folder | None = None
    read: bool = False
    receive_known: bool = True
    """False: the notification's ReceiveTime could not be read, so the log dates the arrival by
    the notification's EventTime."""


class Facts:
    """One message as the server knows it."""

    __slots__ = (
        "arrival_s",
        "deleted_unheard",
        "first_read_s",
        "heard",
        "inbox_usn",
        "msg_type",
        "observed_read",
        "out_decided",
        "priority",
        "read_before_start",
        "read_known",
        "reported_unheard",
        "seen",
        "told_arrival_s",
        "told_read_s",
    )

    def __init__(self, message: Message, *, before_start: bool = False) -> None:
        self.arrival_s = message.arrival_ms // 1000
        """What ReceiveTime says (whole seconds)."""
        self.told_arrival_s: int | None = None
        """The arrival as the log has it: ReceiveTime of the first NEW_MESSAGE told, or its
        EventTime when its ReceiveTime could not be read (None: neither)."""
        self.priority = message.priority
        self.msg_type = message.msg_type
        self.read_before_start = before_start and message.read
        self.first_read_s: float | None = None
        """When the server first marked it read (wall clock), if during the run."""
        self.deleted_unheard = False
        """It left the Inbox (to Deleted or gone) never read."""
        self.heard: list[Heard] = []
        """What subscribers were sent or shown about it, in the server's order; the fields below
        are derived from it (`replay`), leaving out the events never written to a client."""
        self.seen: str | None = None
        """How subscribers first learned of it: new, restatement, snapshot (a listing)."""
        self.read_known: str | None = None
        """How subscribers first learned it was read: event, listing."""
        self.told_read_s: int | None = None
        """EventTime (epoch second) of the first notification saying it read."""
        self.inbox_usn: int | None = None
        """USN of the last notification placing it in the Inbox (-1: a listing did); None: it was
        never told or listed in the Inbox."""
        self.observed_read = False
        """A notification or listing said it read."""
        self.out_decided = False
        """Told or listed out of the Inbox after it was told or listed in it."""
        self.reported_unheard = False
        """... and nothing had said it read by then: deleted unheard as the log can tell."""

    def replay(self, written: set[int]) -> None:
        """Derive what subscribers learned, from what reached them (`heard`)."""
        self.seen = self.read_known = self.told_read_s = self.inbox_usn = None
        self.told_arrival_s = None
        self.observed_read = self.out_decided = self.reported_unheard = False
        for entry in self.heard:
            if entry.event_type is None:
                assert entry.folder is not None
                self._listed(entry.folder, entry.read)
            elif entry.token is None or entry.token in written:
                self._told(entry.event_type, entry.second, entry.usn, entry.receive_known)

    def _told(
        self, event_type: EventType, second: int | None, usn: int, receive_known: bool = True
    ) -> None:
        if event_type is EventType.NEW_MESSAGE:
            if self.seen != "new":
                self.told_arrival_s = self.arrival_s if receive_known else second
            self.seen = "new"  # its arrival is told, whatever was told before
        elif self.seen is None:
            self.seen = "restatement"
        if event_type in _READ_TOLD:
            self.observed_read = True
            if self.read_known is None:
                self.read_known, self.told_read_s = "event", second
        if event_type in _TO_INBOX:
            self.inbox_usn = usn
        elif event_type in _OUT_OF_INBOX or (
            # an undelete is an Inbox event and DELETED_MESSAGE_DELETE at one USN
            event_type is EventType.DELETED_MESSAGE_DELETE and self.inbox_usn != usn
        ):
            self.placed_out()

    def _listed(self, folder: Folder, read: bool) -> None:
        if self.seen is None:
            self.seen = "snapshot"
        if read:
            self.observed_read = True
            if self.read_known is None:
                self.read_known = "listing"
        if folder is Folder.INBOX:
            self.inbox_usn = -1 if self.inbox_usn is None else self.inbox_usn
        else:
            self.placed_out()

    def placed_out(self) -> None:
        """A notification or listing placed it out of the Inbox (Deleted, or hard-deleted)."""
        if self.inbox_usn is not None and not self.out_decided:
            self.out_decided = True
            self.reported_unheard = not self.observed_read

    @property
    def ever_read(self) -> bool:
        return self.read_before_start or self.first_read_s is not None


class KpiTruth:
    """Facts about every message, fed by the scenario, the Notifier and the REST listings."""

    def __init__(self) -> None:
        self.facts: dict[str, Facts] = {}
        self._written: set[int] = set()
        """Tokens of the events written to a client (`told(..., token=…)`, `written`)."""

    # -- what happened --------------------------------------------------------------------------

    def existing(self, mailboxes: Iterable[Mailbox]) -> None:
        """Messages already there when the simulator started (never notified)."""
        for mailbox in mailboxes:
            for message in (*mailbox.inbox.values(), *mailbox.deleted.values()):
                self.facts[message.message_id] = Facts(message, before_start=True)

    def changed(
        self,
        mailbox: Mailbox,
        before: Sequence[tuple[Message, Folder | None]],
        now: float,
    ) -> None:
        """A change reached the truth (whether or not the Notifier was up)."""
        for message, was in before:
            facts = self.facts.get(message.message_id)
            if facts is None:
                facts = self.facts[message.message_id] = Facts(message)
            if message.read and not facts.ever_read:
                facts.first_read_s = now
            if was is Folder.INBOX and mailbox.where(message.message_id) is not Folder.INBOX:
                facts.deleted_unheard |= not facts.ever_read

    def told(
        self,
        event_type: EventType,
        messages: Iterable[Message],
        second: int,
        usn: int,
        token: int | None = None,
        *,
        time_known: bool = True,
        receive_known: bool = True,
    ) -> None:
        """A notification was sent to at least one subscriber: queued for its session (`token`:
        it counts once `written(token)` says a reply carried it to the client) or, without a
        token, delivered."""
        for index, message in enumerate(messages):
            facts = self.facts.get(message.message_id)
            if facts is not None:
                heard = Heard(event_type, token, second if time_known else None, usn)
                # only the first message's ReceiveTime is ever garbled (the corrupt fault)
                facts.heard.append(heard._replace(receive_known=receive_known or index > 0))

    def written(self, token: int) -> None:
        """The queued notification `token` was written to a client's connection."""
        self._written.add(token)

    def listed(self, folder: Folder, messages: Iterable[Message]) -> None:
        """A folder listing showed these messages to a client (gap repair)."""
        for message in messages:
            facts = self.facts.get(message.message_id)
            if facts is not None:
                facts.heard.append(Heard(folder=folder, read=message.read))

    # -- the KPIs -------------------------------------------------------------------------------

    def kpis(
        self,
        mailboxes: Mapping[str, Mailbox],
        now: float,
        thresholds: Sequence[float] = THRESHOLDS,
    ) -> dict[str, Any]:
        """Every KPI as of `now` (epoch seconds), in the shape of the pipeline's
        `KpiLedger.summary`; plus `listen_delay_by_downtime_seconds` and
        `deleted_unheard_server_side` (notes, not KPIs)."""
        for facts in self.facts.values():
            facts.replay(self._written)
        result = self._counters()
        result.update(self._gauges(mailboxes, now, thresholds))
        return result

    def _counters(self) -> dict[str, Any]:
        received: dict[str, int] = {}
        first_seen = {"snapshot": 0, "restatement": 0}
        listen = {p: _histogram() for p in _PRIORITIES}
        unknown = dict.fromkeys(_PRIORITIES, 0)
        deleted = dict.fromkeys(_PRIORITIES, 0)
        server_side = 0
        delays: list[float] = []
        for facts in self.facts.values():
            priority = _priority(facts.priority)
            if facts.seen == "new":
                key = f"{_msg_type(facts.msg_type)}/{priority}"
                received[key] = received.get(key, 0) + 1
            elif facts.seen is not None:
                first_seen[facts.seen] += 1
            read_s, arrival_s = facts.told_read_s, facts.told_arrival_s  # None: unreadable
            if (
                facts.seen == "new"
                and facts.read_known == "event"
                and read_s is not None
                and arrival_s is not None
            ):
                _observe(listen[priority], max(0, read_s - arrival_s))
            elif facts.read_known is not None:
                unknown[priority] += 1
            if facts.reported_unheard:
                deleted[priority] += 1
            server_side += facts.deleted_unheard and facts.seen is not None
            if facts.told_read_s is not None and facts.first_read_s is not None:
                delays.append(max(0.0, facts.told_read_s - facts.first_read_s))
        return {
            "received": received,
            "first_seen": first_seen,
            "time_to_first_listen": listen,
            "first_listen_unknown": unknown,
            "deleted_unheard": deleted,
            "listen_delay_by_downtime_seconds": max(delays, default=0.0),
            "deleted_unheard_server_side": server_side,
        }

    def _gauges(
        self, mailboxes: Mapping[str, Mailbox], now: float, thresholds: Sequence[float]
    ) -> dict[str, Any]:
        unread, blind = 0, 0
        ages = _histogram()
        urgent = {_duration(t): 0 for t in thresholds}
        for mailbox in mailboxes.values():
            arrivals = [(self.facts[m.message_id], m) for m in mailbox.inbox.values() if not m.read]
            if not arrivals:
                continue
            unread += len(arrivals)
            known = [
                (f, f.told_arrival_s)
                for f, _ in arrivals
                if f.seen == "new" and f.told_arrival_s is not None
            ]
            if len(known) < len(arrivals):
                blind += 1
            else:
                _observe(ages, max(0.0, now - min(arrival for _, arrival in known)))
            urgent_known = [a for f, a in known if _priority(f.priority) == "urgent"]
            for threshold in thresholds:
                if urgent_known and now - min(urgent_known) > threshold:
                    urgent[_duration(threshold)] += 1
        return {
            "unread_messages": unread,
            "oldest_unread_age": ages,
            "unread_unknown_age_mailboxes": blind,
            "mailboxes_with_urgent_unread": urgent,
        }


_PRIORITIES = ("normal", "urgent", "other")


def _priority(raw: str) -> str:
    value = raw.strip().lower().removesuffix("-priority")
    return value if value in ("normal", "urgent") else "other"


def _msg_type(raw: str) -> str:
    value = raw.strip().lower()
    return value if value in ("voice", "fax", "email", "receipt") else "other"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    return f"{whole // 60}m" if whole % 60 == 0 else f"{whole}s"


def _histogram() -> dict[str, Any]:
    return {"count": 0, "sum": 0.0, "buckets": [0] * (len(BUCKETS) + 1)}


def _observe(histogram: dict[str, Any], value: float) -> None:
    histogram["count"] += 1
    histogram["sum"] += value
    histogram["buckets"][bisect.bisect_left(BUCKETS, value)] += 1
