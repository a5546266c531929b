"""ingest.state.projection: folder state from state-assertion events, per docs/design.md §4."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from ingest.eventlog import codec
from ingest.events import (
    EventType,
    Folder,
    MailboxEvent,
    MailboxSnapshot,
    MailboxStateRecord,
    MessageInfo,
    Outcome,
    RepairReason,
    SnapshotMessage,
)
from ingest.state.projection import MailboxState, Projection, diff_states, resolve

NEW = EventType.NEW_MESSAGE
SAVED = EventType.SAVED_MESSAGE
UNREAD = EventType.UNREAD_MESSAGE
DM = EventType.DELETED_MESSAGE
DMC = EventType.DELETED_MESSAGE_CREATE
DMR = EventType.DELETED_MESSAGE_READ
DMU = EventType.DELETED_MESSAGE_UNREAD
DMD = EventType.DELETED_MESSAGE_DELETE
UNDELETE = EventType.DELETED_MESSAGE_UNDELETE
INBOX, DELETED, GONE = Folder.INBOX, Folder.DELETED, Folder.GONE
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def ev(event_type: EventType, usn: int, *message_ids: str, mailbox: str = "abell") -> MailboxEvent:
    return MailboxEvent(
        mailbox_id=mailbox,
        usn=usn,
        event_type=event_type,
        event_time=T0 + dt.timedelta(seconds=usn),
        event_time_raw="",
        subscription_id="sub",
        messages=tuple(MessageInfo(mid, sender=f"sender of {mid}") for mid in message_ids or "m"),
        ingested_at=T0,
    )


def snap(usn: int, inbox: dict[str, bool], deleted: dict[str, bool]) -> MailboxSnapshot:
    return MailboxSnapshot(
        mailbox_id="abell",
        usn=usn,
        taken_at=T0 + dt.timedelta(seconds=usn),
        reason=RepairReason.SESSION_LOST,
        inbox=tuple(SnapshotMessage(mid, read) for mid, read in inbox.items()),
        deleted=tuple(SnapshotMessage(mid, read) for mid, read in deleted.items()),
    )


def fold(*events: MailboxEvent | MailboxSnapshot) -> Projection:
    projection = Projection()
    for event in events:
        projection.apply(event)
    return projection


def folders(projection: Projection, mailbox: str = "abell") -> dict[str, object]:
    return projection.to_json()[mailbox]  # type: ignore[no-any-return]


def state(inbox: dict[str, bool], deleted: dict[str, bool], usn: int) -> dict[str, object]:
    return {
        "inbox": {mid: {"read": read} for mid, read in inbox.items()},
        "deleted": {mid: {"read": read} for mid, read in deleted.items()},
        "usn": usn,
    }


ARRIVED = (ev(NEW, 1), ev(SAVED, 2))  # m arrives and is read


class TestResolve:
    """One change (a set of EventTypes at one USN) from the state before it."""

    @pytest.mark.parametrize(
        ("base", "types", "expected"),
        [
            ((GONE, False), {NEW}, (INBOX, False)),
            ((INBOX, False), {SAVED}, (INBOX, True)),
            ((INBOX, True), {UNREAD}, (INBOX, False)),
            ((INBOX, True), {DM, DMC}, (DELETED, True)),  # vendor example 1 keeps the flag
            ((DELETED, True), {SAVED, DMD}, (INBOX, True)),  # vendor example 2
            ((DELETED, True), {UNREAD, DMD}, (INBOX, False)),
            ((DELETED, False), {UNREAD, UNDELETE}, (INBOX, False)),
            ((DELETED, True), {UNDELETE}, (INBOX, True)),  # restored, flag kept
            ((DELETED, True), {DMD}, (GONE, True)),  # vendor example 3, second change
            ((INBOX, False), {DM, DMC, DMD}, (GONE, False)),  # hard delete as one change
            ((DELETED, False), {DMR}, (DELETED, True)),
            ((DELETED, True), {DMU}, (DELETED, False)),
            ((INBOX, True), {DMU}, (DELETED, False)),  # latest status: moved and unread
            ((DELETED, False), {SAVED}, (INBOX, True)),  # latest status: restored as read
            ((INBOX, False), {DMD}, (GONE, False)),  # latest status: hard-deleted
            ((INBOX, True), {DM}, (GONE, True)),  # deleted, no Deleted folder copy
            ((DELETED, True), {DM}, (DELETED, True)),
            ((GONE, True), {DMC}, (DELETED, True)),  # a tombstone's flag is known
            ((GONE, False), {DMC}, (DELETED, False)),
            ((INBOX, False), {NEW, DMC}, (DELETED, False)),  # both asserted: Deleted wins
            ((INBOX, False), {SAVED, UNREAD}, (INBOX, False)),  # conflict: unread wins
        ],
    )
    def test_table(
        self, base: tuple[Folder, bool], types: set[EventType], expected: tuple[Folder, bool]
    ) -> None:
        assert resolve(*base, types) == expected

    def test_every_subset_is_order_free_and_single_folder(self) -> None:
        for size in range(1, 4):
            for types in itertools.combinations(EventType, size):
                for base in itertools.product(Folder, (False, True)):
                    folder, read = resolve(*base, types)
                    assert resolve(*base, reversed(types)) == (folder, read)
                    assert isinstance(folder, Folder)
                    assert isinstance(read, bool)


class TestVendorExamples:
    """The three combinations of the vendor document, in every arrival order."""

    @pytest.mark.parametrize("pair", [(DM, DMC), (DMC, DM)])
    def test_delete(self, pair: tuple[EventType, EventType]) -> None:
        projection = fold(*ARRIVED, *(ev(t, 3) for t in pair))
        assert folders(projection) == state({}, {"m": True}, 3)

    @pytest.mark.parametrize("inbox_event", [SAVED, UNREAD])
    @pytest.mark.parametrize("leave_event", [DMD, UNDELETE])
    @pytest.mark.parametrize("inbox_first", [True, False])
    def test_undelete(
        self, inbox_event: EventType, leave_event: EventType, inbox_first: bool
    ) -> None:
        pair = [ev(inbox_event, 4), ev(leave_event, 4)]
        projection = fold(*ARRIVED, ev(DM, 3), ev(DMC, 3), *(pair if inbox_first else pair[::-1]))
        assert folders(projection) == state({"m": inbox_event is SAVED}, {}, 4)

    def test_hard_delete(self) -> None:
        projection = fold(*ARRIVED, ev(DMC, 3), ev(DM, 3), ev(DMD, 4))
        assert folders(projection) == state({}, {}, 4)
        tombstone = projection.mailboxes["abell"].messages["m"]
        assert (tombstone.folder, tombstone.usn, tombstone.read) == (GONE, 4, True)

    def test_tombstone_not_resurrected_by_late_events(self) -> None:
        projection = fold(*ARRIVED, ev(DM, 3), ev(DMC, 3), ev(DMD, 4))
        for late in (ev(NEW, 1), ev(SAVED, 2), ev(DMC, 3)):
            assert projection.apply(late) in (Outcome.STALE, Outcome.DUPLICATE)
        assert folders(projection) == state({}, {}, 4)


class TestNotifierDowntime:
    """After downtime only the latest status of each changed message arrives."""

    def test_unseen_messages_are_applied(self) -> None:
        projection = fold(ev(SAVED, 10, "a"), ev(DMU, 11, "b"), ev(DMD, 12, "c"))
        assert folders(projection) == state({"a": True}, {"b": False}, 12)

    def test_latest_status_moves_between_folders(self) -> None:
        projection = fold(ev(NEW, 1, "a"), ev(NEW, 2, "b"), ev(DM, 3, "c"), ev(DMC, 3, "c"))
        # during downtime: a read then deleted, b deleted then restored unread… c restored read
        projection.apply(ev(DMR, 7, "a"))
        projection.apply(ev(UNREAD, 8, "b"))
        projection.apply(ev(SAVED, 9, "c"))
        assert folders(projection) == state({"b": False, "c": True}, {"a": True}, 9)

    def test_hard_deleted_during_downtime(self) -> None:
        projection = fold(ev(NEW, 1, "a"), ev(DMD, 5, "a"))
        assert folders(projection) == state({}, {}, 5)


class TestDuplicatesAndStale:
    """Repeats change nothing; older events never roll state back."""

    def test_duplicate(self) -> None:
        projection = fold(*ARRIVED)
        assert projection.apply(ev(SAVED, 2)) is Outcome.DUPLICATE
        assert folders(projection) == state({"m": True}, {}, 2)
        assert projection.mailboxes["abell"].duplicates == 1

    def test_repeated_new_message_after_read(self) -> None:
        projection = fold(*ARRIVED)
        assert projection.apply(ev(NEW, 1)) is Outcome.STALE
        assert folders(projection) == state({"m": True}, {}, 2)
        assert projection.mailboxes["abell"].stale == 1

    def test_same_usn_other_type_is_part_of_the_change(self) -> None:
        projection = fold(*ARRIVED, ev(DM, 3))
        assert projection.apply(ev(DMC, 3)) is Outcome.APPLIED
        assert projection.apply(ev(DM, 3)) is Outcome.DUPLICATE

    def test_counters(self) -> None:
        projection = fold(*ARRIVED, ev(SAVED, 2), ev(NEW, 1), ev(NEW, 1), ev(UNREAD, 3))
        mailbox = projection.mailboxes["abell"]
        counts = (mailbox.events_applied, mailbox.duplicates, mailbox.stale)
        assert counts == (3, 1, 2)

    def test_stale_event_keeps_info(self) -> None:
        projection = fold(*ARRIVED)
        old = ev(NEW, 1)
        old = dataclasses.replace(old, messages=(MessageInfo("m", sender="x"),))
        projection.apply(old)
        assert projection.mailboxes["abell"].messages["m"].sender == "sender of m"


class TestMultiMessageEvents:
    """An event about several messages applies to each."""

    def test_each_message(self) -> None:
        projection = fold(ev(NEW, 1, "a"), ev(NEW, 2, "b"), ev(SAVED, 3, "a", "b", "c"))
        assert folders(projection) == state({"a": True, "b": True, "c": True}, {}, 3)

    def test_partly_known(self) -> None:
        projection = fold(ev(NEW, 1, "a"), ev(SAVED, 2, "a"))
        assert projection.apply(ev(SAVED, 2, "a", "b")) is Outcome.APPLIED
        assert projection.apply(ev(SAVED, 2, "a", "b")) is Outcome.DUPLICATE
        assert projection.apply(ev(NEW, 1, "a", "b")) is Outcome.STALE

    def test_mailboxes_independent(self) -> None:
        projection = fold(ev(NEW, 5, mailbox="x"), ev(NEW, 1, mailbox="y"))
        assert projection.to_json() == {
            "x": state({"m": False}, {}, 5),
            "y": state({"m": False}, {}, 1),
        }


class TestSnapshots:
    """A snapshot at USN S is the truth as of S."""

    def test_replaces_state_as_of_its_usn(self) -> None:
        projection = fold(ev(NEW, 1, "a"), ev(NEW, 2, "b"), ev(NEW, 3, "c"), ev(NEW, 9, "late"))
        outcome = projection.apply(snap(8, {"a": True}, {"0:b": False, "new": True}))
        assert outcome is Outcome.APPLIED
        expected = state({"a": True, "late": False}, {"b": False, "new": True}, 9)
        assert folders(projection) == expected
        assert "c" not in projection.mailboxes["abell"].messages  # dropped, not a tombstone

    def test_events_at_or_below_it_are_stale(self) -> None:
        projection = fold(ev(NEW, 1, "a"), snap(8, {}, {}))
        for late in (ev(SAVED, 8, "a"), ev(NEW, 5, "zz")):
            assert projection.apply(late) is Outcome.STALE
        assert projection.apply(ev(NEW, 9, "b")) is Outcome.APPLIED
        assert folders(projection) == state({"b": False}, {}, 9)

    def test_older_and_repeated_snapshots(self) -> None:
        projection = fold(snap(8, {"a": True}, {}))
        assert projection.apply(snap(8, {}, {})) is Outcome.DUPLICATE
        assert projection.apply(snap(7, {}, {})) is Outcome.STALE
        assert folders(projection) == state({"a": True}, {}, 8)
        mailbox = projection.mailboxes["abell"]
        counts = (mailbox.snapshots_applied, mailbox.duplicates, mailbox.stale)
        assert counts == (1, 1, 1)

    def test_listed_in_both_folders(self) -> None:
        assert folders(fold(snap(3, {"a": True}, {"a": False}))) == state({}, {"a": False}, 3)

    def test_flag_carried_by_a_later_change_comes_from_the_listing(self) -> None:
        # seen in CI: "a" was read during a gap (SAVED lost), the repair read S = 20, then "a"
        # was deleted at 21 and that event was published before the snapshot; the delete keeps
        # the flag, so the flag is the listed one, not the pre-gap "unread"
        projection = fold(ev(NEW, 10, "a"), ev(DM, 21, "a"), ev(DMC, 21, "a"))
        projection.apply(snap(20, {"0:a": True}, {"0:a": True}))
        assert folders(projection) == state({}, {"a": True}, 21)
        assert projection.apply(ev(DMD, 22, "a")) is Outcome.APPLIED  # later changes still apply
        assert folders(projection) == state({}, {}, 22)

    def test_flag_asserted_after_its_usn_wins_over_the_listing(self) -> None:
        # the listing (taken at S = 20) predates "read at 21": the delete at 22 carries *that* flag
        projection = fold(ev(NEW, 10, "a"), ev(SAVED, 21, "a"), ev(DM, 22, "a"), ev(DMC, 22, "a"))
        projection.apply(snap(20, {"0:a": False}, {}))
        assert folders(projection) == state({}, {"a": True}, 22)

    def test_a_second_snapshot_corrects_a_flag_learnt_from_the_first(self) -> None:
        projection = fold(ev(NEW, 10, "a"), ev(DM, 31, "a"), ev(DMC, 31, "a"))
        projection.apply(snap(20, {}, {"0:a": False}))
        projection.apply(snap(30, {}, {"0:a": True}))  # still no event after 30 said read or unread
        assert folders(projection) == state({}, {"a": True}, 31)

    def test_learnt_flag_survives_the_state_topic(self) -> None:
        records = (ev(NEW, 10, "a"), ev(DM, 21, "a"), ev(DMC, 21, "a"), snap(20, {"0:a": True}, {}))
        mailbox = fold(*records).mailboxes["abell"]
        record = codec.decode(codec.encode(mailbox.to_record()))
        assert isinstance(record, MailboxStateRecord)
        kept = record.messages[0].kept
        assert kept is not None
        assert (kept.floor_folder, kept.floor_read, kept.floor_usn) == (INBOX, True, 20)
        restored = Projection()
        restored.load(record)
        for later in (ev(DMR, 40, "zz"), snap(30, {}, {"0:a": True, "0:zz": True})):
            restored.apply(later)
        assert (
            restored.mailboxes
            == fold(
                *records, ev(DMR, 40, "zz"), snap(30, {}, {"0:a": True, "0:zz": True})
            ).mailboxes
        )

    def test_keeps_info_of_known_messages(self) -> None:
        projection = fold(ev(NEW, 1, "a"), snap(4, {"a": True}, {}))
        assert projection.mailboxes["abell"].messages["a"].sender == "sender of a"


class TestPersistence:
    """The state-topic record restores exactly the state it was taken from."""

    EVENTS = (
        ev(NEW, 1, "a"),
        ev(NEW, 2, "b"),
        ev(DM, 3, "a"),
        ev(DMC, 3, "a"),
        snap(3, {"b": False}, {"a": False}),
        ev(SAVED, 4, "b"),
        ev(DM, 5, "b"),
    )
    REST = (ev(DMC, 5, "b"), ev(DM, 5, "b"), ev(DMD, 6, "a"), ev(UNREAD, 7, "c"))

    def test_round_trip_through_codec(self) -> None:
        mailbox = fold(*self.EVENTS).mailboxes["abell"]
        record = mailbox.to_record()
        assert codec.decode(codec.encode(record)) == record
        assert MailboxState.from_record(record) == mailbox

    def test_restore_then_continue_equals_uninterrupted(self) -> None:
        restored = Projection()
        decoded = codec.decode(codec.encode(fold(*self.EVENTS).mailboxes["abell"].to_record()))
        restored.load(decoded)  # type: ignore[arg-type]
        for event in self.REST:
            restored.apply(event)
        uninterrupted = fold(*self.EVENTS, *self.REST)
        assert restored.mailboxes == uninterrupted.mailboxes

    def test_record_is_sorted_and_complete(self) -> None:
        record = fold(*self.EVENTS, *self.REST).mailboxes["abell"].to_record()
        assert [m.message_id for m in record.messages] == ["a", "b", "c"]
        assert record.messages[1].applied == (DM, DMC)
        assert (record.usn, record.snapshot_usn, record.events_applied) == (7, 3, 9)


class TestJson:
    """The `ingest fold` output format."""

    def test_plain(self) -> None:
        projection = fold(ev(NEW, 1, "b"), ev(SAVED, 2, "a"), ev(DMC, 3, "c"))
        assert projection.to_json() == {"abell": state({"a": True, "b": False}, {"c": False}, 3)}
        assert list(projection.to_json()["abell"]["inbox"]) == ["a", "b"]

    def test_detail(self) -> None:
        projection = fold(ev(NEW, 1, "a"), ev(DMD, 2, "b"), ev(NEW, 1, "b"))
        detail = projection.to_json(detail=True)["abell"]
        assert detail["inbox"]["a"] == {
            "read": False,
            "usn": 1,
            "caller_ani": None,
            "sender": "sender of a",
            "msg_type": None,
            "priority": None,
            "receive_time": None,
            "receive_time_raw": None,
        }
        assert detail["gone"]["b"]["usn"] == 2
        assert detail["counters"] == {  # the late NEW_MESSAGE about b took its place before 2
            "events_applied": 3,
            "duplicates": 0,
            "stale": 0,
            "snapshots_applied": 0,
        }


class TestDiffStates:
    """diff_states compares folders, read flags and USNs."""

    def test_equal(self) -> None:
        one = {"x": state({"a": True}, {"b": False}, 4)}
        assert diff_states(one, one) == []

    def test_missing_mailbox_is_empty(self) -> None:
        assert diff_states({"x": state({}, {}, 0)}, {}) == []
        assert diff_states({}, {"x": state({"a": True}, {}, 1)}) == [
            "x: usn expected 0, actual 1",
            "x: message a expected absent, actual inbox read",
        ]

    def test_each_difference(self) -> None:
        expected = {"x": state({"a": True, "b": False}, {"c": True}, 9)}
        actual = {"x": state({"a": False}, {"b": False, "d": True}, 8)}
        assert diff_states(expected, actual) == [
            "x: usn expected 9, actual 8",
            "x: message a expected inbox read, actual inbox unread",
            "x: message b expected inbox unread, actual deleted unread",
            "x: message c expected deleted read, actual absent",
            "x: message d expected absent, actual deleted read",
        ]

    def test_against_fold_output(self) -> None:
        projection = fold(ev(NEW, 1, "a"), ev(SAVED, 2, "a"))
        assert diff_states({"abell": state({"a": True}, {}, 2)}, projection.to_json()) == []
        assert diff_states({"abell": state({"a": False}, {}, 2)}, projection.to_json())
