"""The fold is a function of the set of a mailbox's records, not of their order (issue 19).

Every arrival order of a log folds to the state that USN order gives (docs/design.md §4): the
folders, read flags, USNs, tombstones, message info and `updated_at`; only the counters, which say
what each arrival did, may differ. Logs come from the vendor model of
`fixtures.vendor_histories` (lifecycle, same-USN pairs, repeats, Notifier restatements, gap
repairs with torn listings); the issue's cases and the snapshot rule are pinned down by name.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fixtures.vendor_histories import MAILBOX, LogCase, event, snapshot, usn_order, vendor_logs
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.eventlog import codec
from ingest.events import (
    EventType,
    Folder,
    LogRecord,
    MailboxSnapshot,
    MailboxStateRecord,
    Outcome,
)
from ingest.state.projection import (
    STATING,
    MessageState,
    Projection,
    diff_states,
    is_stating,
    resolve,
)

E = EventType
NEW, SAVED, UNREAD = E.NEW_MESSAGE, E.SAVED_MESSAGE, E.UNREAD_MESSAGE
DM, DMC, DMD = E.DELETED_MESSAGE, E.DELETED_MESSAGE_CREATE, E.DELETED_MESSAGE_DELETE
DMR, DMU, UNDELETE = E.DELETED_MESSAGE_READ, E.DELETED_MESSAGE_UNREAD, E.DELETED_MESSAGE_UNDELETE
ORDERS = settings(max_examples=300)
"""Cheap examples (a dozen changes), and the interesting ones need a late event, a snapshot and a
pair to line up: more than the profile's 100."""
HISTORY = Path(__file__).resolve().parents[2] / "schemas" / "history"


def fold(records: Iterable[LogRecord]) -> Projection:
    projection = Projection()
    for record in records:
        projection.apply(record)
    return projection


INFO = ("caller_ani", "sender", "msg_type", "priority", "receive_time", "receive_time_raw")


def state_of(projection: Projection, info: bool = True) -> dict[str, Any]:
    """Everything a fold decides, the counters aside (and the message info unless `info`)."""
    states = projection.to_json(detail=True)
    for state in states.values():
        state.pop("counters")
        for folder in ("inbox", "deleted", "gone"):
            for message in state[folder].values():
                for name in () if info else INFO:
                    message.pop(name)
    return states


def flat(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{path}/{key}").items()}
    return {path: value}


def differences(actual: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Where two states differ, one line per leaf (hypothesis prints it with the example)."""
    got, want = flat(actual), flat(expected)
    return [
        f"{k}: {got.get(k)!r} != {want.get(k)!r}"
        for k in sorted(got.keys() | want.keys())
        if got.get(k) != want.get(k)
    ]


def plain(records: Iterable[LogRecord]) -> dict[str, Any]:
    return fold(records).to_json()


def folders(inbox: dict[str, bool], deleted: dict[str, bool], usn: int) -> dict[str, Any]:
    return {
        MAILBOX: {
            "inbox": {m: {"read": r} for m, r in inbox.items()},
            "deleted": {m: {"read": r} for m, r in deleted.items()},
            "usn": usn,
        }
    }


def restored(projection: Projection) -> Projection:
    """Through the state topic: every mailbox encoded, decoded and loaded, as after a restart."""
    again = Projection()
    for state in projection.mailboxes.values():
        record = codec.decode(codec.encode(state.to_record()))
        assert isinstance(record, MailboxStateRecord)
        again.load(record)
    return again


class TestEveryArrivalOrder:
    """Hypothesis: random vendor logs, random permutations."""

    @ORDERS
    @given(vendor_logs(), st.randoms(use_true_random=False))
    def test_every_permutation_folds_to_the_usn_order_state(self, case: LogCase, rnd: Any) -> None:
        # message info: exact unless a snapshot dropped a message another listed again (USN
        # order forgets what events said of it before; a late event tells it again)
        info = not any(isinstance(record, MailboxSnapshot) for record in case.records)
        expected = state_of(fold(usn_order(case.records)), info)
        arrival = list(case.records)
        rnd.shuffle(arrival)
        for records in (arrival, case.records):  # and as written
            actual = state_of(fold(records), info)
            assert actual == expected, differences(actual, expected)

    @ORDERS
    @given(vendor_logs())
    def test_usn_order_is_the_truth(self, case: LogCase) -> None:
        if case.truthful:
            problems = diff_states(case.truth(), plain(usn_order(case.records)))
            assert problems == [], problems

    @ORDERS
    @given(vendor_logs(), st.randoms(use_true_random=False), st.data())
    def test_restart_anywhere_folds_like_never_stopped(
        self, case: LogCase, rnd: Any, data: st.DataObject
    ) -> None:
        """A projector restarted from its state records at any point of any arrival order goes
        on exactly as one that never stopped (the same state records), and ends at the USN-order
        state."""
        arrival = list(case.records)
        rnd.shuffle(arrival)
        cut = data.draw(st.integers(0, len(arrival)))
        first = fold(arrival[:cut])
        resumed, uninterrupted = restored(first), fold(arrival[:cut])
        for record in arrival[cut:]:
            assert resumed.apply(record) is uninterrupted.apply(record)
        records = {m: s.to_record() for m, s in resumed.mailboxes.items()}
        assert records == {m: s.to_record() for m, s in uninterrupted.mailboxes.items()}
        assert resumed.mailboxes == uninterrupted.mailboxes
        assert state_of(resumed, False) == state_of(fold(usn_order(case.records)), False)


class TestTheIssuesCases:
    """Issue 19's examples, in every arrival order."""

    def test_read_before_the_delete_arriving_last(self) -> None:
        # NEW at 1, the delete pair at 3, SAVED at 2 last: the server holds "deleted, read"
        projection = fold([event(NEW, 1, "m"), event(DM, 3, "m"), event(DMC, 3, "m")])
        assert projection.apply(event(SAVED, 2, "m")) is Outcome.APPLIED
        assert projection.to_json() == folders({}, {"m": True}, 3)

    @pytest.mark.parametrize(
        "records",
        [
            # the issue's case
            (event(NEW, 1, "m"), event(SAVED, 2, "m"), event(DM, 3, "m"), event(DMC, 3, "m")),
            # restored unread, deleted again, purged
            (
                event(SAVED, 4, "m"),
                event(DM, 5, "m"),
                event(DMC, 5, "m"),
                event(UNREAD, 6, "m"),
                event(DMD, 6, "m"),
                event(DM, 7, "m"),
                event(DMC, 7, "m"),
                event(DMD, 8, "m"),
            ),
            # a hard delete and a restatement of it
            (event(NEW, 1, "m"), event(DMC, 2, "m"), event(DM, 2, "m"), event(DMD, 3, "m")),
            (event(UNREAD, 1, "m"), event(DM, 2, "m"), event(DMC, 2, "m"), event(DM, 3, "m")),
            # marked in Deleted Items, then restored by _UNDELETE
            (
                event(NEW, 1, "m"),
                event(DM, 2, "m"),
                event(DMC, 2, "m"),
                event(DMR, 3, "m"),
                event(UNDELETE, 4, "m"),
                event(UNREAD, 4, "m"),
            ),
        ],
    )
    def test_every_order_of_a_message_life(self, records: Sequence[LogRecord]) -> None:
        expected = state_of(fold(usn_order(records)))
        for arrival in itertools.permutations(records):
            assert state_of(fold(arrival)) == expected, arrival

    def test_a_flag_carried_by_the_delete_comes_from_the_late_event(self) -> None:
        pair = [event(DM, 5, "m"), event(DMC, 5, "m")]
        for read, kind in ((True, SAVED), (False, UNREAD)):
            projection = fold([event(SAVED, 1, "m"), *pair, event(kind, 3, "m")])
            assert projection.to_json() == folders({}, {"m": read}, 5)

    def test_an_event_older_than_a_stating_one_is_stale(self) -> None:
        projection = fold([event(NEW, 1, "m"), event(SAVED, 2, "m")])
        assert projection.apply(event(NEW, 1, "m")) is Outcome.STALE
        assert projection.apply(event(UNREAD, 1, "m")) is Outcome.STALE
        assert projection.to_json() == folders({"m": True}, {}, 2)

    def test_late_events_are_duplicates_once_placed(self) -> None:
        projection = fold([event(NEW, 1, "m"), event(DM, 3, "m"), event(DMC, 3, "m")])
        assert projection.apply(event(SAVED, 2, "m")) is Outcome.APPLIED
        assert projection.apply(event(SAVED, 2, "m")) is Outcome.DUPLICATE
        assert projection.apply(event(DM, 3, "m")) is Outcome.DUPLICATE


class TestSnapshotRule:
    """A snapshot at S is a change at S of every message (docs/design.md §4)."""

    LISTED_READ: LogRecord = snapshot(10, 0, {"a": ("inbox", True)}, {})

    @pytest.mark.parametrize("snapshot_first", [True, False])
    def test_an_event_at_or_below_s_never_overrides_the_listing(self, snapshot_first: bool) -> None:
        older: list[LogRecord] = [event(NEW, 4, "a"), event(UNREAD, 10, "a"), event(NEW, 9, "b")]
        records = [self.LISTED_READ, *older] if snapshot_first else [*older, self.LISTED_READ]
        assert plain(records) == folders({"a": True}, {}, 10)

    @pytest.mark.parametrize("snapshot_first", [True, False])
    def test_a_later_change_applies_to_the_listed_state(self, snapshot_first: bool) -> None:
        # listed read at 10, deleted at 11: the delete carries the listed flag, in either order
        later: list[LogRecord] = [event(DMC, 11, "a"), event(DM, 11, "a")]
        records = [self.LISTED_READ, *later] if snapshot_first else [*later, self.LISTED_READ]
        assert plain([event(NEW, 3, "a"), *records]) == folders({}, {"a": True}, 11)

    def test_a_later_change_to_an_unlisted_message_applies_to_its_absence(self) -> None:
        # purged at 11 (the listing, torn, no longer had it): gone in either order
        records: list[LogRecord] = [event(NEW, 3, "z"), event(DM, 5, "z")]
        records += [event(DMC, 5, "z"), event(DMD, 11, "z")]
        for arrival in itertools.permutations([*records, self.LISTED_READ]):
            projection = fold(arrival)
            assert projection.to_json() == folders({"a": True}, {}, 11)
            assert projection.mailboxes[MAILBOX].messages["z"].folder is Folder.GONE

    def test_of_two_snapshots_at_one_usn_the_later_taken_wins(self) -> None:
        earlier = snapshot(10, 0, {"a": ("inbox", False)}, {})
        later = snapshot(10, 5, {"a": ("inbox", True), "b": ("inbox", False)}, {})
        for arrival in ([earlier, later], [later, earlier]):
            projection = fold(arrival)
            assert projection.to_json() == folders({"a": True, "b": False}, {}, 10)
        assert fold([later]).apply(earlier) is Outcome.DUPLICATE
        assert fold([earlier]).apply(later) is Outcome.APPLIED

    def test_a_newer_snapshot_replaces_the_floor_of_changed_messages(self) -> None:
        deleted_later: list[LogRecord] = [event(NEW, 1, "a"), event(DM, 31, "a")]
        deleted_later.append(event(DMC, 31, "a"))
        first = snapshot(20, 0, {}, {"a": ("deleted", False)})
        second = snapshot(30, 0, {}, {"a": ("deleted", True)})
        for arrival in itertools.permutations([*deleted_later, first, second]):
            assert plain(arrival) == folders({}, {"a": True}, 31)


class TestStating:
    """A change with a stating EventType has one answer from every state before it, whatever
    joins it; a change without one keeps the read flag it had."""

    def test_every_change_set(self) -> None:
        bases = list(itertools.product(Folder, (False, True)))
        for size in range(1, len(EventType) + 1):
            for types in itertools.combinations(EventType, size):
                answers = {resolve(*base, types) for base in bases}
                assert (len(answers) == 1) is is_stating(frozenset(types)), types

    def test_the_stating_types(self) -> None:
        assert frozenset({NEW, SAVED, UNREAD, DMR, DMU}) == STATING


class TestMemory:
    """A message keeps its changes since its latest stating one, no more."""

    def kept(self, *records: LogRecord) -> dict[str, int]:
        messages = fold(records).mailboxes[MAILBOX].messages
        return {mid: len(m.earlier) + bool(m.applied) for mid, m in messages.items()}

    def test_a_vendor_lifecycle(self) -> None:
        life = [
            event(NEW, 1, "m"),
            event(SAVED, 2, "m"),
            event(UNREAD, 3, "m"),
            event(SAVED, 4, "m"),
        ]
        assert self.kept(*life) == {"m": 1}
        deleted = [*life, event(DM, 5, "m"), event(DMC, 5, "m")]
        assert self.kept(*deleted) == {"m": 2}
        assert self.kept(*deleted, event(DMD, 6, "m")) == {"m": 3}
        assert self.kept(*deleted, event(DMR, 6, "m")) == {"m": 1}
        assert self.kept(*deleted, event(UNREAD, 6, "m"), event(DMD, 6, "m")) == {"m": 1}

    def test_a_listing_keeps_nothing(self) -> None:
        assert self.kept(snapshot(9, 0, {"m": ("inbox", True)}, {})) == {"m": 0}


class TestStateRecords:
    """The state topic carries the kept changes; older records are still read."""

    def test_kept_changes_round_trip(self) -> None:
        records = [event(SAVED, 2, "m"), event(DM, 5, "m"), event(DMC, 5, "m"), event(DMD, 6, "m")]
        projection = fold(records)
        record = projection.mailboxes[MAILBOX].to_record()
        (message,) = record.messages
        assert message.kept is not None
        assert [(c.usn, c.applied) for c in message.kept.earlier] == [(2, (SAVED,)), (5, (DM, DMC))]
        assert codec.decode(codec.encode(record)) == record
        again = restored(projection)
        assert again.apply(event(UNREAD, 1, "m")) is Outcome.STALE  # below the stating SAVED
        assert again.apply(event(UNREAD, 3, "m")) is Outcome.APPLIED  # the delete carries it
        tombstone = again.mailboxes[MAILBOX].messages["m"]
        assert (tombstone.folder, tombstone.read, tombstone.usn) == (Folder.GONE, False, 6)
        assert state_of(again) == state_of(fold([*records, event(UNREAD, 3, "m")]))

    def test_most_messages_keep_nothing(self) -> None:
        records = [event(NEW, 1, "a"), event(SAVED, 2, "a"), event(DMU, 3, "b")]
        listed = snapshot(3, 0, {"a": ("inbox", True), "c": ("inbox", True)}, {})
        record = fold([*records, event(DM, 4, "c"), listed]).mailboxes[MAILBOX].to_record()
        kept = {message.message_id: message.kept for message in record.messages}
        assert kept["a"] is None  # listed
        assert "b" not in kept  # not listed: dropped
        assert kept["c"] is not None and kept["c"].floor_usn == 3  # changed since: the listing
        record = fold(records).mailboxes[MAILBOX].to_record()
        assert [message.kept for message in record.messages] == [None, None]

    def test_a_v2_record_folds_as_before(self) -> None:
        """A state written by the previous release (schema v2, no kept changes): its base sums up
        what came before its latest change, so older events stay stale."""
        schema = json.loads((HISTORY / "mailbox_state.v2.avsc").read_text(encoding="utf-8"))
        message = {
            "message_id": "m",
            "folder": "DELETED",
            "read": False,
            "usn": 7,
            "applied": ["DELETED_MESSAGE", "DELETED_MESSAGE_CREATE"],
            "base_folder": "INBOX",
            "base_read": False,
            "base_read_usn": 1,
            "caller_ani": None,
            "sender": None,
            "msg_type": None,
            "priority": None,
            "receive_time": None,
            "receive_time_raw": None,
        }
        datum = {"mailbox_id": MAILBOX, "usn": 7, "messages": [message], "updated_at": None}
        datum |= {"snapshot_usn": -1, "events_applied": 3, "duplicates": 0, "stale": 0}
        datum["snapshots_applied"] = 0
        body = io.BytesIO()
        fastavro.schemaless_writer(body, fastavro.parse_schema(schema, named_schemas={}), datum)
        record = codec.decode(codec.MAGIC + codec.schema_fingerprint(schema) + body.getvalue())
        assert isinstance(record, MailboxStateRecord)
        projection = Projection()
        projection.load(record)
        state: MessageState = projection.mailboxes[MAILBOX].messages["m"]
        assert (state.floor_folder, state.floor_read, state.floor_usn) == (Folder.INBOX, False, 6)
        assert projection.apply(event(SAVED, 5, "m")) is Outcome.STALE
        assert projection.apply(event(DMR, 7, "m")) is Outcome.APPLIED
        assert projection.apply(event(DMD, 9, "m")) is Outcome.APPLIED
        assert projection.to_json() == folders({}, {}, 9)
        restored_record = projection.mailboxes[MAILBOX].to_record()
        assert codec.decode(codec.encode(restored_record)) == restored_record


class TestUpdatedAt:
    """The latest time of any record of the mailbox, whatever arrives first."""

    def test_stale_and_late_records_count(self) -> None:
        late = event(NEW, 1, "m")
        records = [event(SAVED, 2, "m"), late]
        times = {
            fold(arrival).mailboxes[MAILBOX].updated_at for arrival in (records, records[::-1])
        }
        assert times == {late.event_time + dt.timedelta(seconds=1)}

    def test_snapshots_count(self) -> None:
        snap = snapshot(5, 0, {}, {})
        assert isinstance(snap, MailboxSnapshot)
        assert fold([event(NEW, 1, "m"), snap]).mailboxes[MAILBOX].updated_at == snap.taken_at
