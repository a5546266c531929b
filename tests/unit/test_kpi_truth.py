"""The simulator's KPI ground truth (ingest/simulator/kpitruth.py), fed by hand: what the server
did and told decides each KPI, the way docs/voicemail-kpis.md defines them."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from ingest.simulator.comet import EventType
from ingest.simulator.kpitruth import KpiTruth
from ingest.simulator.mailbox import Folder, Message
from ingest.simulator.scenario import Change, Op, Scenario
from ingest.simulator.users import UserTable

T0 = 1_700_000_000.0


def scenario(arrival: float) -> Scenario:
    users = UserTable.generate(2, 5)
    return Scenario(list(users.values()), seed=5, zone=ZoneInfo("UTC"), clock=lambda: arrival)


def only(change: Change) -> Message:
    (message, _), *_ = change.before
    return message


def tell(truth: KpiTruth, change: Change, second: float) -> None:
    """The Notifier sent the change's notices."""
    for notice in change.notices:
        truth.told(notice.event_type, notice.messages, int(second), notice.usn)


class TestTruth:
    """Each fact of a message lands in the KPI the definitions give it."""

    def test_told_arrival_and_read(self) -> None:
        truth, s = KpiTruth(), scenario(T0)
        new = s.perform("user0001", Op.NEW)
        message = only(new)
        truth.changed(new.mailbox, new.before, T0)
        tell(truth, new, T0)
        read = s.perform("user0001", Op.READ, message_ids=[message.message_id])
        truth.changed(read.mailbox, read.before, T0 + 400)
        tell(truth, read, T0 + 410)  # told late
        kpis = truth.kpis(s.mailboxes, T0 + 500)
        priority = {"Normal-Priority": "normal", "Urgent-Priority": "urgent"}.get(
            message.priority, "other"
        )
        assert sum(kpis["received"].values()) == 1
        assert kpis["time_to_first_listen"][priority]["sum"] == 410
        assert kpis["listen_delay_by_downtime_seconds"] == 10
        assert kpis["unread_messages"] == 0

    def test_listed_first_is_a_snapshot_and_unknown(self) -> None:
        truth, s = KpiTruth(), scenario(T0 - 7200)
        new = s.perform("user0002", Op.NEW)
        message = only(new)
        truth.changed(new.mailbox, new.before, T0)
        truth.listed(Folder.INBOX, [message])
        kpis = truth.kpis(s.mailboxes, T0)
        assert kpis["first_seen"] == {"snapshot": 1, "restatement": 0}
        assert kpis["unread_messages"] == 1 and kpis["unread_unknown_age_mailboxes"] == 1
        assert kpis["oldest_unread_age"]["count"] == 0

    def test_deleted_unheard_needs_the_message_seen(self) -> None:
        truth, s = KpiTruth(), scenario(T0)
        arrivals = [s.perform(alias, Op.NEW) for alias in ("user0001", "user0002")]
        for change in arrivals:
            truth.changed(change.mailbox, change.before, T0)
        seen, unseen = (only(change) for change in arrivals)
        tell(truth, arrivals[0], T0)
        for alias, message in (("user0001", seen), ("user0002", unseen)):
            gone = s.perform(alias, Op.HARD_DELETE, message_ids=[message.message_id])
            truth.changed(gone.mailbox, gone.before, T0 + 5)
            tell(truth, gone, T0 + 5)
        kpis = truth.kpis(s.mailboxes, T0 + 10)
        assert sum(kpis["deleted_unheard"].values()) == 1  # the other was never in the Inbox
        assert sum(kpis["received"].values()) == 1
        assert kpis["deleted_unheard_server_side"] == 2  # what really happened

    def test_read_and_deleted_unseen_is_reported_unheard(self) -> None:
        """Read and then hard-deleted while the Notifier was down: the latest status says only
        "deleted" (DELETED_MESSAGE), so the log cannot know it was heard; the truth reports what
        it told, and notes the difference."""
        truth, s = KpiTruth(), scenario(T0)
        new = s.perform("user0001", Op.NEW)
        truth.changed(new.mailbox, new.before, T0)
        tell(truth, new, T0)
        message = only(new)
        for op in (Op.READ, Op.HARD_DELETE):
            change = s.perform("user0001", op, message_ids=[message.message_id])
            truth.changed(change.mailbox, change.before, T0 + 5)
        truth.told(EventType.DELETED_MESSAGE, [message], int(T0) + 60, message.usn)
        kpis = truth.kpis(s.mailboxes, T0 + 60)
        assert sum(kpis["deleted_unheard"].values()) == 1
        assert kpis["deleted_unheard_server_side"] == 0

    def test_an_undelete_is_no_delete(self) -> None:
        truth, s = KpiTruth(), scenario(T0)
        new = s.perform("user0001", Op.NEW)
        message = only(new)
        tell(truth, new, T0)
        for op in (Op.DELETE, Op.UNDELETE):
            change = s.perform("user0001", op, message_ids=[message.message_id])
            truth.changed(change.mailbox, change.before, T0 + 1)
            if op is Op.UNDELETE:
                tell(truth, change, T0 + 1)  # the delete itself was not told
        assert sum(truth.kpis(s.mailboxes, T0 + 2)["deleted_unheard"].values()) == 0
