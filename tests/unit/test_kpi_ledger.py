"""The voicemail KPI ledger (ingest.kpis.ledger): each KPI of docs/voicemail-kpis.md on hand-made
logs, with the edge rules (duplicates, late and stale records, same-USN changes, snapshots), and
the counters independent of the order the records come in."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ingest.events import (
    EventType,
    MailboxEvent,
    MailboxSnapshot,
    MessageInfo,
    Outcome,
    RepairReason,
    SnapshotMessage,
    UnparsedField,
)
from ingest.kpis.exposition import FAMILIES, KpiCollector
from ingest.kpis.ledger import (
    KpiLedger,
    duration_label,
    msg_type_label,
    priority_label,
)

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.UTC)
E = EventType


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def event(
    kind: EventType,
    usn: int,
    when: float,
    *ids: str,
    mailbox: str = "alice",
    priority: str = "Normal-Priority",
    msg_type: str = "Voice",
    received: float | None = None,
) -> MailboxEvent:
    infos = tuple(
        MessageInfo(
            message_id=mid,
            priority=priority,
            msg_type=msg_type,
            receive_time=at(received) if received is not None else None,
        )
        for mid in ids
    )
    return MailboxEvent(
        mailbox_id=mailbox,
        usn=usn,
        event_type=kind,
        event_time=at(when),
        event_time_raw="",
        subscription_id="s",
        messages=infos,
        ingested_at=at(when),
    )


def snapshot(
    usn: int,
    inbox: dict[str, bool],
    deleted: dict[str, bool] | None = None,
    mailbox: str = "alice",
    priority: str = "Urgent-Priority",
) -> MailboxSnapshot:
    def listing(messages: dict[str, bool]) -> tuple[SnapshotMessage, ...]:
        return tuple(
            SnapshotMessage(message_id=f"0:{mid}", read=read, priority=priority)
            for mid, read in messages.items()
        )

    return MailboxSnapshot(
        mailbox_id=mailbox,
        usn=usn,
        taken_at=T0,
        reason=RepairReason.STARTUP,
        inbox=listing(inbox),
        deleted=listing(deleted or {}),
    )


def fold(*records: MailboxEvent | MailboxSnapshot) -> KpiLedger:
    ledger = KpiLedger()
    for record in records:
        ledger.apply(record)
    return ledger


def listened(ledger: KpiLedger, priority: str = "normal") -> tuple[int, float]:
    histogram = ledger.time_to_first_listen[priority]
    return histogram.count, histogram.total


class TestReceived:
    """Messages are counted once, by the event that first shows them."""

    def test_a_new_message_is_received_once_whatever_the_duplicates(self) -> None:
        new = event(E.NEW_MESSAGE, 10, 0, "m1", msg_type="Fax", priority="Urgent-Priority")
        ledger = fold(new, new, new)
        assert ledger.received["fax", "urgent"] == 1
        assert sum(ledger.received.values()) == 1
        assert ledger.first_seen == {"snapshot": 0, "restatement": 0}

    def test_a_restated_message_is_not_an_arrival(self) -> None:
        ledger = fold(event(E.UNREAD_MESSAGE, 10, 0, "m1"), event(E.SAVED_MESSAGE, 11, 5, "m2"))
        assert sum(ledger.received.values()) == 0
        assert ledger.first_seen["restatement"] == 2

    def test_a_listed_message_is_first_seen_in_a_snapshot(self) -> None:
        ledger = fold(snapshot(20, {"m1": False}, {"m2": True}))
        assert ledger.first_seen["snapshot"] == 2
        assert sum(ledger.received.values()) == 0

    def test_a_new_message_logged_after_the_snapshot_is_still_an_arrival(self) -> None:
        """Gap repair: the event of a change the listing already shows may be logged after the
        snapshot (stale for the fold); its arrival is in the log all the same."""
        ledger = fold(snapshot(20, {}), event(E.NEW_MESSAGE, 15, 0, "m1"))
        assert sum(ledger.received.values()) == 1
        assert ledger.first_seen["snapshot"] == 0

    def test_a_late_new_message_moves_a_listed_message_to_received(self) -> None:
        ledger = fold(
            snapshot(20, {"m1": False}),
            event(E.NEW_MESSAGE, 15, 0, "m1"),
            event(E.SAVED_MESSAGE, 21, 60, "m1"),
        )
        assert (sum(ledger.received.values()), ledger.first_seen["snapshot"]) == (1, 0)
        assert listened(ledger, "normal") == (1, 60.0)
        assert ledger.reclassified == 1

    def test_a_listing_at_a_lower_usn_than_the_arrival_is_no_first_sight(self) -> None:
        """The listing is at least as new as its USN: it may show a message that arrived while
        it was taken."""
        ledger = fold(event(E.NEW_MESSAGE, 21, 0, "m1"), snapshot(20, {"m1": False}))
        assert (sum(ledger.received.values()), ledger.first_seen["snapshot"]) == (1, 0)


class TestFirstListen:
    """Time from arrival to the first event asserting the message read, once per message."""

    def test_a_read_whose_event_time_was_unreadable_has_an_unknown_time(self) -> None:
        """The worker stamps such an event with its ingest time, which is not when the message
        was read: the listen counts as unknown, not as a made-up duration."""
        read = dataclasses.replace(
            event(E.SAVED_MESSAGE, 11, 60, "m1"),
            unparsed=(UnparsedField("EventTime", "03/01/2025 08:01:00 PST"),),
        )
        ledger = fold(event(E.NEW_MESSAGE, 10, 0, "m1"), read)
        assert listened(ledger, "normal") == (0, 0.0)
        assert ledger.first_listen_unknown["normal"] == 1

    def test_an_arrival_whose_event_time_was_unreadable_is_unknown(self) -> None:
        new = dataclasses.replace(
            event(E.NEW_MESSAGE, 10, 0, "m1"), unparsed=(UnparsedField("EventTime", "x"),)
        )
        ledger = fold(new, event(E.SAVED_MESSAGE, 11, 60, "m1"))
        assert sum(ledger.received.values()) == 1
        assert ledger.first_listen_unknown["normal"] == 1

    def test_receive_time_is_the_arrival(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 30, "m1", received=0),
            event(E.SAVED_MESSAGE, 11, 400, "m1"),
            event(E.SAVED_MESSAGE, 11, 400, "m1"),  # duplicate
            event(E.UNREAD_MESSAGE, 12, 500, "m1"),
            event(E.SAVED_MESSAGE, 13, 9000, "m1"),  # read again: not a first listen
        )
        assert listened(ledger) == (1, 400.0)
        assert ledger.time_to_first_listen["normal"].counts[2] == 1  # in (300, 900]
        assert ledger.first_listen_unknown["normal"] == 0

    def test_event_time_is_the_arrival_without_receive_time(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 30, "m1"), event(E.DELETED_MESSAGE_READ, 11, 90, "m1")
        )
        assert listened(ledger) == (1, 60.0)

    def test_read_in_a_gap_is_unknown_never_zero(self) -> None:
        ledger = fold(event(E.NEW_MESSAGE, 10, 0, "m1"), snapshot(12, {"m1": True}))
        assert listened(ledger) == (0, 0.0)
        assert ledger.first_listen_unknown["normal"] == 1

    def test_first_seen_in_a_snapshot_then_read_is_unknown(self) -> None:
        ledger = fold(
            snapshot(12, {"m1": False}), event(E.SAVED_MESSAGE, 13, 60, "m1", priority="x")
        )
        assert listened(ledger, "urgent") == (0, 0.0)  # priority from the listing
        assert ledger.first_listen_unknown == {"normal": 0, "urgent": 1, "other": 0}

    def test_a_restatement_that_says_read_is_unknown(self) -> None:
        ledger = fold(event(E.SAVED_MESSAGE, 10, 0, "m1"))
        assert ledger.first_listen_unknown["normal"] == 1
        assert listened(ledger) == (0, 0.0)

    def test_a_known_message_read_during_downtime_is_dated_by_the_restatement(self) -> None:
        """After Notifier downtime the latest status comes late: the log has no earlier date."""
        ledger = fold(event(E.NEW_MESSAGE, 10, 0, "m1"), event(E.SAVED_MESSAGE, 14, 7200, "m1"))
        assert listened(ledger) == (1, 7200.0)

    def test_a_listing_showing_the_read_of_a_later_event_is_not_the_first_listen(self) -> None:
        """The demo's last difference: the snapshot (USN 5358, read before listing) showed the
        read of USN 5359 (logged before it): the event dates the listen."""
        ledger = fold(
            event(E.NEW_MESSAGE, 5354, 0, "m1"),
            event(E.SAVED_MESSAGE, 5359, 10, "m1"),
            snapshot(5358, {"m1": True}),
        )
        assert listened(ledger) == (1, 10.0)

    def test_a_read_listed_before_anything_said_unread_is_the_listings_own(self) -> None:
        """Listed read at start-up, deleted, later read in Deleted (its unread lost in a gap):
        the listing's read is the first listen, so the delete was not of an unheard message."""
        ledger = fold(
            snapshot(4283, {"m1": True}),
            event(E.DELETED_MESSAGE, 4284, 1, "m1"),
            event(E.DELETED_MESSAGE_CREATE, 4284, 1, "m1"),
            snapshot(4287, {}, {"m1": True}),
            event(E.DELETED_MESSAGE_READ, 4298, 30, "m1"),
        )
        assert ledger.deleted_unheard["urgent"] == 0
        assert ledger.first_listen_unknown["urgent"] == 1

    def test_a_read_in_the_gap_stays_the_listings_own(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 0, "m1"),
            snapshot(13, {"m1": True}),  # read in the gap
            event(E.UNREAD_MESSAGE, 14, 20, "m1"),
            event(E.SAVED_MESSAGE, 15, 30, "m1"),
        )
        assert listened(ledger) == (0, 0.0)
        assert ledger.first_listen_unknown["normal"] == 1

    def test_an_undelete_of_a_read_message_is_no_read(self) -> None:
        ledger = fold(
            snapshot(10, {"m1": True}),
            event(E.DELETED_MESSAGE, 13, 1, "m1"),
            event(E.DELETED_MESSAGE_CREATE, 13, 1, "m1"),
            event(E.SAVED_MESSAGE, 14, 2, "m1"),
            event(E.DELETED_MESSAGE_DELETE, 14, 2, "m1"),
        )
        assert ledger.first_listen_unknown["urgent"] == 1
        assert ledger.deleted_unheard["urgent"] == 0

    def test_a_late_read_counts_in_its_place(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 0, "m1"),
            event(E.UNREAD_MESSAGE, 12, 5, "m1"),
            event(E.SAVED_MESSAGE, 11, 9, "m1"),  # logged late: the fold calls it stale
        )
        assert listened(ledger) == (1, 9.0)
        assert ledger.first_listen_unknown["normal"] == 0


class TestDeletedUnheard:
    """Messages that leave the Inbox never heard, once each."""

    def test_a_delete_pair_counts_once_in_either_order(self) -> None:
        for first, second in (
            (E.DELETED_MESSAGE, E.DELETED_MESSAGE_CREATE),
            (E.DELETED_MESSAGE_CREATE, E.DELETED_MESSAGE),
        ):
            ledger = fold(
                event(E.NEW_MESSAGE, 10, 0, "m1", priority="Urgent-Priority"),
                event(first, 11, 5, "m1"),
                event(second, 11, 5, "m1"),
                event(E.DELETED_MESSAGE_DELETE, 12, 6, "m1"),
            )
            assert ledger.deleted_unheard == {"normal": 0, "urgent": 1, "other": 0}

    def test_undelete_and_delete_again_still_counts_once(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 0, "m1"),
            event(E.DELETED_MESSAGE, 11, 1, "m1"),
            event(E.DELETED_MESSAGE_CREATE, 11, 1, "m1"),
            event(E.UNREAD_MESSAGE, 12, 2, "m1"),
            event(E.DELETED_MESSAGE_DELETE, 12, 2, "m1"),
            event(E.DELETED_MESSAGE, 13, 3, "m1"),
            event(E.DELETED_MESSAGE_CREATE, 13, 3, "m1"),
        )
        assert ledger.deleted_unheard["normal"] == 1

    def test_heard_then_deleted_is_not_counted(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 0, "m1"),
            event(E.SAVED_MESSAGE, 11, 1, "m1"),
            event(E.UNREAD_MESSAGE, 12, 2, "m1"),
            event(E.DELETED_MESSAGE, 13, 3, "m1"),
            event(E.DELETED_MESSAGE_CREATE, 13, 3, "m1"),
        )
        assert ledger.deleted_unheard["normal"] == 0

    def test_gone_in_a_gap_is_not_counted(self) -> None:
        """Dropped by a snapshot: the log cannot tell whether it was heard before it went."""
        ledger = fold(event(E.NEW_MESSAGE, 10, 0, "m1"), snapshot(15, {}))
        assert ledger.deleted_unheard["normal"] == 0

    def test_a_purged_message_that_a_snapshot_drops_is_not_counted(self) -> None:
        """The demo's defect: a message listed in Deleted, purged, then dropped by the next
        snapshot was counted as deleted unheard when the snapshot dropped it."""
        ledger = fold(
            snapshot(10, {}, {"m1": False}),
            event(E.DELETED_MESSAGE_DELETE, 11, 1, "m1"),
            snapshot(12, {}),
        )
        assert ledger.deleted_unheard["urgent"] == 0

    def test_an_undelete_is_no_hard_delete(self) -> None:
        ledger = fold(
            snapshot(10, {}, {"m1": False}),
            event(E.UNREAD_MESSAGE, 11, 1, "m1"),
            event(E.DELETED_MESSAGE_DELETE, 11, 1, "m1"),
        )
        assert ledger.deleted_unheard["urgent"] == 0
        ledger.apply(event(E.DELETED_MESSAGE_DELETE, 12, 2, "m1"))  # now a hard delete
        assert ledger.deleted_unheard["urgent"] == 1

    def test_deleted_before_the_log_began_is_not_counted(self) -> None:
        ledger = fold(snapshot(15, {}, {"m1": False}))
        assert ledger.deleted_unheard["urgent"] == 0

    def test_first_seen_out_of_the_inbox_is_not_counted(self) -> None:
        """Never seen in the Inbox (e.g. it arrived and was deleted during Notifier downtime):
        the log cannot tell when it left, nor whether it was heard."""
        ledger = fold(event(E.DELETED_MESSAGE_UNREAD, 15, 0, "m1"))
        assert ledger.deleted_unheard["normal"] == 0

    def test_seen_in_the_inbox_then_restated_in_deleted_unread_counts(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 0, "m1"), event(E.DELETED_MESSAGE_UNREAD, 15, 9, "m1")
        )
        assert ledger.deleted_unheard["normal"] == 1


HISTORY: list[MailboxEvent | MailboxSnapshot] = [
    snapshot(10, {"a": False, "b": True}, {"c": False}),
    event(E.NEW_MESSAGE, 9, 0, "n1", received=-30),  # logged after the snapshot
    event(E.NEW_MESSAGE, 11, 5, "n2", priority="Urgent-Priority"),
    event(E.NEW_MESSAGE, 11, 5, "n2", priority="Urgent-Priority"),
    event(E.SAVED_MESSAGE, 12, 70, "n2", "a"),
    event(E.DELETED_MESSAGE, 13, 80, "n1"),
    event(E.DELETED_MESSAGE_CREATE, 13, 80, "n1"),
    event(E.DELETED_MESSAGE_DELETE, 14, 90, "c"),
    event(E.UNREAD_MESSAGE, 15, 95, "b"),
    event(E.DELETED_MESSAGE_DELETE, 15, 95, "b"),
    event(E.NEW_MESSAGE, 16, 100, "n3"),
    snapshot(17, {"n3": True, "a": True, "b": False}),
    event(E.DELETED_MESSAGE_READ, 18, 200, "n3"),
    event(E.NEW_MESSAGE, 19, 300, "n4"),
    event(E.DELETED_MESSAGE, 20, 310, "n4"),
    event(E.DELETED_MESSAGE_CREATE, 20, 310, "n4"),
    event(E.DELETED_MESSAGE_READ, 21, 320, "n4"),
]


def counters(ledger: KpiLedger) -> dict[str, object]:
    summary = ledger.summary(T0.timestamp())
    return {k: v for k, v in summary.items() if k in COUNTERS}


COUNTERS = ("received", "first_seen", "time_to_first_listen", "first_listen_unknown",
            "deleted_unheard")  # fmt: skip


class TestOrder:
    """The counters are a function of the set of records: any order gives the same numbers."""

    def test_the_history_in_any_order(self) -> None:
        expected = counters(fold(*sorted(HISTORY, key=lambda r: r.usn)))
        assert expected["first_seen"] == {"snapshot": 3, "restatement": 0}
        assert expected["deleted_unheard"] == {"normal": 2, "urgent": 0, "other": 0}  # n1, n4
        assert expected["first_listen_unknown"] == {"normal": 0, "urgent": 2, "other": 0}
        rng = random.Random(5)
        for _ in range(50):
            shuffled = list(HISTORY)
            rng.shuffle(shuffled)
            assert counters(fold(*shuffled)) == expected


class TestGauges:
    """Unread backlog, oldest unread age and urgent unread as of an evaluation time."""

    def test_backlog_ages_and_thresholds(self) -> None:
        now = at(30 * 3600).timestamp()
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 0, "a1", priority="Urgent-Priority"),  # 30 h old
            event(E.NEW_MESSAGE, 11, 28 * 3600, "a2"),
            event(E.NEW_MESSAGE, 5, 25 * 3600, "b1", mailbox="bob", priority="Urgent-Priority"),
            event(E.NEW_MESSAGE, 6, 29 * 3600, "b2", mailbox="bob"),
            event(E.SAVED_MESSAGE, 7, 29 * 3600 + 1, "b2", mailbox="bob"),
            snapshot(3, {"c1": False, "c2": True}, mailbox="carol"),
            event(E.NEW_MESSAGE, 4, 28 * 3600, "c3", mailbox="carol", priority="Urgent-Priority"),
            event(E.NEW_MESSAGE, 3, 0, "d1", mailbox="dave"),
            event(E.SAVED_MESSAGE, 4, 1, "d1", mailbox="dave"),
        )
        gauges = ledger.gauges(now)
        assert gauges.unread_messages == 5  # a1 a2 b1 c1 c3
        assert gauges.unknown_age_mailboxes == 1  # carol: c1 has no known arrival
        assert gauges.oldest_unread_age.count == 2  # alice (30 h) and bob (5 h)
        assert gauges.oldest_unread_age.total == 35 * 3600
        assert gauges.urgent_unread == {3600: 3, 14_400: 2, 86_400: 1}

    def test_messages_outside_the_inbox_or_read_are_not_backlog(self) -> None:
        ledger = fold(
            event(E.NEW_MESSAGE, 10, 0, "m1"),
            event(E.DELETED_MESSAGE, 11, 1, "m1"),
            event(E.DELETED_MESSAGE_CREATE, 11, 1, "m1"),
        )
        gauges = ledger.gauges(at(100).timestamp())
        assert (gauges.unread_messages, gauges.oldest_unread_age.count) == (0, 0)


class TestLabels:
    """Label values are closed sets."""

    @pytest.mark.parametrize(
        ("raw", "label"),
        [
            ("Voice", "voice"),
            ("FAX", "fax"),
            ("Email", "email"),
            ("Receipt", "receipt"),
            ("Video", "other"),
            (None, "other"),
        ],
    )
    def test_msg_type(self, raw: str | None, label: str) -> None:
        assert msg_type_label(raw) == label

    @pytest.mark.parametrize(
        ("raw", "label"),
        [
            ("Normal-Priority", "normal"),
            ("Urgent-Priority", "urgent"),
            ("urgent", "urgent"),
            ("Low-Priority", "other"),
            (None, "other"),
        ],
    )
    def test_priority(self, raw: str | None, label: str) -> None:
        assert priority_label(raw) == label

    def test_durations(self) -> None:
        assert [duration_label(s) for s in (3600, 86_400, 1800, 90)] == ["1h", "24h", "30m", "90s"]


class TestExposition:
    """The collector exports every family (every label value at 0), and nothing until ready."""

    def scrape(self, ledger: KpiLedger, ready: bool) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(KpiCollector(lambda: ledger, lambda: ready, lambda: 100.0))
        return generate_latest(registry).decode()

    def test_nothing_before_the_rebuild(self) -> None:
        assert "cumi_voicemail" not in self.scrape(KpiLedger(), ready=False)

    def test_every_family_and_value(self) -> None:
        ledger = fold(event(E.NEW_MESSAGE, 10, 0, "m1"), event(E.SAVED_MESSAGE, 11, 90, "m1"))
        text = self.scrape(ledger, ready=True)
        for name in FAMILIES:
            assert name in text
        assert (
            'cumi_voicemail_messages_received_total{msg_type="voice",priority="normal"} 1.0' in text
        )
        assert (
            'cumi_voicemail_messages_received_total{msg_type="fax",priority="urgent"} 0.0' in text
        )
        assert (
            'cumi_voicemail_time_to_first_listen_seconds_bucket{le="300.0",priority="normal"} 1.0'
        ) in text
        assert (
            'cumi_voicemail_time_to_first_listen_seconds_bucket{le="60.0",priority="normal"} 0.0'
        ) in text
        assert 'cumi_voicemail_mailboxes_with_urgent_unread{older_than="24h"} 0.0' in text


def test_outcomes_are_the_folds() -> None:
    ledger = KpiLedger()
    new = event(E.NEW_MESSAGE, 10, 0, "m1")
    assert ledger.apply(new) is Outcome.APPLIED
    assert ledger.apply(new) is Outcome.DUPLICATE
    assert ledger.apply(event(E.NEW_MESSAGE, 9, 0, "m1")) is Outcome.STALE
