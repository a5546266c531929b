"""Property tests (hypothesis): the projection's invariances, and a parser that never crashes.

Event histories come from a small mailbox model that follows the vendor's USN rules: the delete
pair, the undelete pair and the hard-delete pair share a USN (the hard delete's
DELETED_MESSAGE_DELETE comes with a later one), every other change has its own increasing USN.
The model also knows the true folder state after every change, so the fold is checked against it,
not only against itself.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
from fixtures.record_strategies import mailbox_events
from fixtures.vendor import vendor_example
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.cumi.normalizer import parse_event
from ingest.errors import InvalidEvent
from ingest.eventlog import codec
from ingest.events import (
    EventType,
    MailboxEvent,
    MailboxSnapshot,
    MessageInfo,
    Outcome,
    RepairReason,
    SnapshotMessage,
)
from ingest.state.projection import Projection

MODEST = settings(max_examples=60)
"""Histories are costly to fold several ways: fewer examples than the profile's 100."""
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
E = EventType

Truth = dict[str, tuple[str, bool]]
"""message id → (inbox | deleted | gone, read)."""


@dataclass(frozen=True)
class Change:
    """One change of the mailbox: the events sharing its USN, and the truth after it."""

    usn: int
    events: tuple[MailboxEvent, ...]
    touched: frozenset[str]
    truth: Truth


def ev(event_type: EventType, usn: int, *message_ids: str) -> MailboxEvent:
    return MailboxEvent(
        mailbox_id="abell",
        usn=usn,
        event_type=event_type,
        event_time=T0 + dt.timedelta(seconds=usn),
        event_time_raw="",
        subscription_id="sub",
        messages=tuple(MessageInfo(mid) for mid in message_ids),
        ingested_at=T0,
    )


@st.composite
def histories(draw: st.DrawFn, most: int = 25) -> list[Change]:
    truth: Truth = {}
    changes: list[Change] = []
    usn = draw(st.integers(0, 100))

    def commit(events: list[MailboxEvent], updates: Truth) -> None:
        truth.update(updates)
        changes.append(Change(usn, tuple(events), frozenset(updates), dict(truth)))

    for serial in range(draw(st.integers(1, most))):
        usn += draw(st.integers(1, 3))
        inbox = sorted(m for m, (folder, _) in truth.items() if folder == "inbox")
        deleted = sorted(m for m, (folder, _) in truth.items() if folder == "deleted")
        ops = ["arrive"]
        ops += ["mark", "bulk_read", "delete", "hard_delete"] if inbox else []
        ops += ["mark_deleted", "undelete", "purge"] if deleted else []
        op = draw(st.sampled_from(ops))
        if op == "arrive":
            commit([ev(E.NEW_MESSAGE, usn, f"m{serial}")], {f"m{serial}": ("inbox", False)})
        elif op == "mark":
            mid, read = draw(st.sampled_from(inbox)), draw(st.booleans())
            kind = E.SAVED_MESSAGE if read else E.UNREAD_MESSAGE
            commit([ev(kind, usn, mid)], {mid: ("inbox", read)})
        elif op == "bulk_read":
            mids = draw(st.lists(st.sampled_from(inbox), min_size=1, max_size=4, unique=True))
            commit([ev(E.SAVED_MESSAGE, usn, *mids)], dict.fromkeys(mids, ("inbox", True)))
        elif op in ("delete", "hard_delete"):
            mid = draw(st.sampled_from(inbox))
            read = truth[mid][1]
            pair = [ev(E.DELETED_MESSAGE, usn, mid), ev(E.DELETED_MESSAGE_CREATE, usn, mid)]
            commit(pair, {mid: ("deleted", read)})
            if op == "hard_delete":
                usn += draw(st.integers(1, 3))
                commit([ev(E.DELETED_MESSAGE_DELETE, usn, mid)], {mid: ("gone", read)})
        elif op == "mark_deleted":
            mid, read = draw(st.sampled_from(deleted)), draw(st.booleans())
            kind = E.DELETED_MESSAGE_READ if read else E.DELETED_MESSAGE_UNREAD
            commit([ev(kind, usn, mid)], {mid: ("deleted", read)})
        elif op == "undelete":
            mid, read = draw(st.sampled_from(deleted)), draw(st.booleans())
            leave = draw(st.sampled_from([E.DELETED_MESSAGE_DELETE, E.DELETED_MESSAGE_UNDELETE]))
            restore = E.SAVED_MESSAGE if read else E.UNREAD_MESSAGE
            commit([ev(restore, usn, mid), ev(leave, usn, mid)], {mid: ("inbox", read)})
        else:  # purge: hard delete from the Deleted folder
            mid = draw(st.sampled_from(deleted))
            commit([ev(E.DELETED_MESSAGE_DELETE, usn, mid)], {mid: ("gone", truth[mid][1])})
    return changes


def events_of(changes: list[Change]) -> list[MailboxEvent]:
    return [event for change in changes for event in change.events]


def fold(records: Sequence[MailboxEvent | MailboxSnapshot]) -> dict[str, Any]:
    projection = Projection()
    for record in records:
        projection.apply(record)
    return projection.to_json()


def expected(changes: list[Change]) -> dict[str, Any]:
    truth = changes[-1].truth
    return {
        "abell": {
            folder: {
                mid: {"read": read}
                for mid, (where, read) in sorted(truth.items())
                if where == folder
            }
            for folder in ("inbox", "deleted")
        }
        | {"usn": changes[-1].usn}
    }


class TestProjectionProperties:
    """Folding model histories gives the model's truth, however the log repeats or reorders."""

    @MODEST
    @given(histories())
    def test_fold_equals_truth(self, changes: list[Change]) -> None:
        assert fold(events_of(changes)) == expected(changes)

    @MODEST
    @given(histories(), st.randoms(use_true_random=False))
    def test_permuting_events_that_share_a_usn(self, changes: list[Change], rnd: Any) -> None:
        shuffled = []
        for change in changes:
            events = list(change.events)
            rnd.shuffle(events)
            shuffled += events
        assert fold(shuffled) == expected(changes)

    @MODEST
    @given(histories(), st.data())
    def test_duplicating_events(self, changes: list[Change], data: st.DataObject) -> None:
        log: list[MailboxEvent | MailboxSnapshot] = list(events_of(changes))
        for _ in range(data.draw(st.integers(1, 10))):
            original = data.draw(st.integers(0, len(log) - 1))
            at = data.draw(st.integers(original + 1, len(log)))
            log.insert(at, log[original])
        assert fold(log) == expected(changes)

    @MODEST
    @given(histories(), st.data())
    def test_stale_replays_change_nothing(self, changes: list[Change], data: st.DataObject) -> None:
        projection = Projection()
        for event in events_of(changes):
            projection.apply(event)
        before = projection.to_json(detail=True)["abell"]
        replays = data.draw(st.lists(st.sampled_from(events_of(changes)), max_size=20))
        outcomes = {projection.apply(event) for event in replays}
        assert outcomes <= {Outcome.STALE, Outcome.DUPLICATE}
        after = projection.to_json(detail=True)["abell"]
        assert {k: v for k, v in after.items() if k != "counters"} == {
            k: v for k, v in before.items() if k != "counters"
        }

    @MODEST
    @given(histories(), st.data())
    def test_notifier_downtime_latest_status(
        self, changes: list[Change], data: st.DataObject
    ) -> None:
        """Changes in a window are replaced by one latest-status event per changed message."""
        start = data.draw(st.integers(0, len(changes) - 1))
        end = data.draw(st.integers(start + 1, len(changes)))
        window = changes[start:end]
        last_usn = {mid: change.usn for change in window for mid in change.touched}
        final = window[-1].truth
        statuses = []
        for mid, usn in last_usn.items():
            folder, read = final[mid]
            if folder == "gone":
                kind = E.DELETED_MESSAGE_DELETE
            elif folder == "deleted":
                kind = E.DELETED_MESSAGE_READ if read else E.DELETED_MESSAGE_UNREAD
            else:
                unread = data.draw(st.sampled_from([E.NEW_MESSAGE, E.UNREAD_MESSAGE]))
                kind = E.SAVED_MESSAGE if read else unread
            statuses.append(ev(kind, usn, mid))
        statuses.sort(key=lambda event: event.usn)
        log = events_of(changes[:start]) + statuses + events_of(changes[end:])
        assert fold(list(log)) == expected(changes)

    @MODEST
    @given(histories(), st.data())
    def test_snapshot_anywhere_after_its_usn(
        self, changes: list[Change], data: st.DataObject
    ) -> None:
        """A snapshot of the truth at USN S, arriving after any number of later events."""
        taken = data.draw(st.integers(0, len(changes) - 1))
        truth = changes[taken].truth
        snapshot = MailboxSnapshot(
            mailbox_id="abell",
            usn=changes[taken].usn,
            taken_at=T0,
            reason=RepairReason.SESSION_LOST,
            inbox=tuple(SnapshotMessage(m, r) for m, (f, r) in truth.items() if f == "inbox"),
            deleted=tuple(SnapshotMessage(m, r) for m, (f, r) in truth.items() if f == "deleted"),
        )
        events = events_of(changes)
        at = data.draw(st.integers(len(events_of(changes[: taken + 1])), len(events)))
        log: list[MailboxEvent | MailboxSnapshot] = [*events[:at], snapshot, *events[at:]]
        assert fold(log) == expected(changes)

    # short histories, many of them: the hard cases need a message seen before the gap, marked in
    # it and deleted after S, which random changes rarely line up (the rule before base_read_usn
    # failed here for 5 of 8 seeds; test_projection.TestSnapshots pins those cases down)
    @settings(MODEST, max_examples=1500)
    @given(histories(most=6), st.data())
    def test_gap_then_repair(self, changes: list[Change], data: st.DataObject) -> None:
        """What gap repair sees: the events of a window are lost (nobody listened), the worker
        subscribes again (events flow from change `active` on), then reads the mailbox USN S: the
        USN of change `taken`, which is at least the change before `active`. It lists Inbox (as of
        change `inbox_at`) and Deleted (`deleted_at`, later: a torn listing). The snapshot lands
        anywhere among the events that followed the gap."""
        gap = data.draw(st.integers(0, len(changes) - 1))
        active = data.draw(st.integers(gap, len(changes) - 1))
        taken = data.draw(st.integers(max(active - 1, 0), len(changes) - 1))
        inbox_at = data.draw(st.integers(taken, len(changes) - 1))
        deleted_at = data.draw(st.integers(inbox_at, len(changes) - 1))
        inbox, deleted = changes[inbox_at].truth, changes[deleted_at].truth
        snapshot = MailboxSnapshot(
            mailbox_id="abell",
            usn=changes[taken].usn,
            taken_at=T0,
            reason=RepairReason.SERVER_RESTART,
            inbox=tuple(
                SnapshotMessage(f"0:{m}", r) for m, (f, r) in inbox.items() if f == "inbox"
            ),
            deleted=tuple(
                SnapshotMessage(f"0:{m}", r) for m, (f, r) in deleted.items() if f == "deleted"
            ),
        )
        before, after = events_of(changes[:gap]), events_of(changes[active:])
        at = data.draw(st.integers(0, len(after)))
        log: list[MailboxEvent | MailboxSnapshot] = [*before, *after[:at], snapshot, *after[at:]]
        assert fold(log) == expected(changes)

    @MODEST
    @given(histories(), st.data())
    def test_restore_from_state_record(self, changes: list[Change], data: st.DataObject) -> None:
        """Crash anywhere, restore from the (Avro-encoded) state record, continue: same state."""
        events = events_of(changes)
        cut = data.draw(st.integers(0, len(events)))
        first = Projection()
        for event in events[:cut]:
            first.apply(event)
        resumed = Projection()
        for state in first.mailboxes.values():
            record = codec.decode(codec.encode(state.to_record()))
            resumed.load(record)  # type: ignore[arg-type]
        uninterrupted = Projection()
        for index, event in enumerate(events):
            uninterrupted.apply(event)
            if index >= cut:
                resumed.apply(event)
        assert resumed.mailboxes == uninterrupted.mailboxes


# --- the parser ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
VALID = vendor_example()


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """The vendor example with a few fields (or message fields) replaced by arbitrary JSON."""
    event = vendor_example()  # a fresh copy to mutate
    for _ in range(draw(st.integers(1, 3))):
        value = draw(json_values | st.from_regex(r"\d{1,2}:\d\d:\d\d [AP]M \d{1,2}/\d{1,2}/\d{4}"))
        infos = event["MessageInfo"]
        has_info = isinstance(infos, list) and bool(infos) and isinstance(infos[0], dict)
        if draw(st.booleans()) or not has_info:
            event[draw(st.sampled_from(list(VALID)))] = value
        else:
            infos[0][draw(st.sampled_from(list(VALID["MessageInfo"][0])))] = value
    return event


def parse_or_reject(raw: Any) -> MailboxEvent | None:
    """parse_event, which may only ever raise InvalidEvent; accepted events must encode."""
    try:
        event = parse_event(raw)
    except InvalidEvent:
        return None
    assert codec.decode(codec.encode(event)) == event
    return event


class TestParserProperties:
    """The parser raises InvalidEvent and nothing else, whatever it is given."""

    @MODEST
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, raw: bytes) -> None:
        parse_or_reject(raw)

    @MODEST
    @given(st.text(max_size=300))
    def test_arbitrary_text(self, raw: str) -> None:
        parse_or_reject(raw)

    @MODEST
    @given(json_values)
    def test_arbitrary_json_values(self, value: Any) -> None:
        parse_or_reject(value)
        parse_or_reject(json.dumps(value))

    @settings(MODEST, max_examples=150)
    @given(mutated_events())
    def test_mutated_vendor_events(self, event: dict[str, Any]) -> None:
        parse_or_reject(event)
        parse_or_reject(json.dumps(event).encode())

    @MODEST
    @given(st.binary(min_size=1, max_size=40), st.integers(0, 400))
    def test_corrupted_valid_bytes(self, noise: bytes, at: int) -> None:
        raw = json.dumps(VALID).encode()
        parse_or_reject(raw[:at] + noise + raw[at + len(noise) :])


# --- the codec's fast writer -----------------------------------------------------------------


class TestCodecProperties:
    """The hand-written MailboxEvent writer agrees with fastavro byte for byte."""

    @settings(MODEST, max_examples=100)
    @given(mailbox_events)
    def test_fast_writer_equals_fastavro(self, event: MailboxEvent) -> None:
        out = io.BytesIO()
        schema = fastavro.parse_schema(codec.load_schema("mailbox_event.avsc"))
        fastavro.schemaless_writer(out, schema, codec._event_to_avro(event))
        data = codec.encode(event)
        assert data[codec.HEADER_SIZE :] == out.getvalue()
        decoded = codec.decode(data)
        assert isinstance(decoded, MailboxEvent)
        assert decoded.messages == tuple(
            MessageInfo(**{**_fields(m), "receive_time": _millis(m.receive_time)})
            for m in event.messages
        )


def _fields(message: MessageInfo) -> dict[str, Any]:
    return {name: getattr(message, name) for name in message.__slots__}


def _millis(moment: dt.datetime | None) -> dt.datetime | None:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000) if moment else None
