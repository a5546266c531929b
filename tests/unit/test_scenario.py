"""Simulator pieces without sockets: scenario engine, Comet format, Notifier coalescing, users."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fixtures.simulator import fold

from ingest.cumi.normalizer import parse_event
from ingest.errors import ConfigError, InvalidEvent
from ingest.events import EventType as DomainEventType
from ingest.simulator import SimulatorConfig
from ingest.simulator.comet import (
    EventType,
    bayeux_message,
    encode,
    event_data,
    event_message,
    format_time,
)
from ingest.simulator.faults import Faults, IrregularKind, MalformedKind, irregular, malformed
from ingest.simulator.mailbox import Folder
from ingest.simulator.notifier import Notifier, Subscriptions
from ingest.simulator.scenario import OP_EVENTS, Change, Op, Scenario
from ingest.simulator.stats import Counters
from ingest.simulator.users import UserTable

LA = ZoneInfo("America/Los_Angeles")
TIME = re.compile(r"^(0[1-9]|1[0-2]):[0-5]\d:[0-5]\d (AM|PM) (0[1-9]|1[0-2])/[0-3]\d/\d{4}$")


def scenario(seed: int = 7, mailboxes: int = 4, **kwargs: Any) -> Scenario:
    users = UserTable.generate(mailboxes, seed)
    return Scenario(list(users.values()), seed=seed, zone=LA, **kwargs)


class Collector:
    """Stands in for the Bayeux server's `deliver`: one subscriber per channel, payloads kept."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def __call__(self, channel: str, payload: bytes) -> int:
        self.payloads.append(json.loads(payload))
        return 1

    def events(self) -> list[dict[str, Any]]:
        return [p["data"] for p in self.payloads]


def notifier_for(
    sc: Scenario, faults: Faults | None = None
) -> tuple[Notifier, Collector, Counters]:
    subscriptions = Subscriptions()
    for alias in sc.mailboxes:
        subscriptions.create(alias)
    collector, counters = Collector(), Counters()
    notifier = Notifier(subscriptions, collector, counters, faults or Faults(), seed=1)
    return notifier, collector, counters


def signature(change: Change) -> tuple[Any, ...]:
    return (
        change.mailbox.alias,
        change.op,
        tuple(
            (n.event_type, n.usn, tuple(m.message_id for m in n.messages)) for n in change.notices
        ),
    )


class TestDeterminism:
    """The same seed gives the same activity; another seed gives another."""

    def test_same_seed_same_sequence(self) -> None:
        a, b = scenario(seed=3), scenario(seed=3)
        assert [signature(a.step()) for _ in range(300)] == [
            signature(b.step()) for _ in range(300)
        ]
        assert a.truth() == b.truth()

    def test_other_seed_other_sequence(self) -> None:
        a, b = scenario(seed=3), scenario(seed=4)
        assert [signature(a.step()) for _ in range(50)] != [signature(b.step()) for _ in range(50)]


class TestUsnRules:
    """Pairs and the hard-delete triple share USNs as the vendor shows; else unique, growing."""

    def test_every_change_follows_the_vendor_rules(self) -> None:
        sc = scenario(multi_ratio=0.3)
        last: dict[str, int] = {alias: box.usn for alias, box in sc.mailboxes.items()}
        seen_ops: Counter[Op] = Counter()
        for _ in range(3000):
            change = sc.step()
            seen_ops[change.op] += 1
            types = [n.event_type for n in change.notices]
            usns = [n.usn for n in change.notices]
            assert usns[0] == last[change.mailbox.alias] + 1
            assert len(types) == OP_EVENTS[change.op]
            match change.op:
                case Op.DELETE:
                    assert types == [EventType.DELETED_MESSAGE, EventType.DELETED_MESSAGE_CREATE]
                    assert usns[0] == usns[1]
                case Op.UNDELETE:
                    assert types[0] in (EventType.SAVED_MESSAGE, EventType.UNREAD_MESSAGE)
                    assert types[1] == EventType.DELETED_MESSAGE_DELETE
                    assert usns[0] == usns[1]
                case Op.HARD_DELETE:
                    assert types == [
                        EventType.DELETED_MESSAGE,
                        EventType.DELETED_MESSAGE_CREATE,
                        EventType.DELETED_MESSAGE_DELETE,
                    ]
                    assert usns[0] == usns[1] and usns[2] == usns[0] + 1
            last[change.mailbox.alias] = usns[-1]
            assert change.mailbox.usn == usns[-1]
        assert set(seen_ops) == set(Op), "every kind of operation happens in a long run"

    def test_multi_message_operations_list_several_message_infos(self) -> None:
        sc = scenario(multi_ratio=1.0)
        sizes = Counter(len(n.messages) for _ in range(500) for n in sc.step().notices)
        assert max(sizes) > 1


class TestTruth:
    """The ground truth equals what a faithful client folds from the notices."""

    def test_truth_equals_the_fold_of_every_event(self) -> None:
        sc = scenario(mailboxes=6, multi_ratio=0.2)
        notifier, collector, _ = notifier_for(sc)
        for _ in range(4000):
            notifier.publish(sc.step())
        truth = sc.truth()
        assert fold(collector.events()) == truth
        assert sum(len(b["inbox"]) + len(b["deleted"]) for b in truth.values()) > 0

    def test_mailboxes_stay_a_realistic_size(self) -> None:
        sc = scenario(mailboxes=2, initial_messages=4)
        for _ in range(5000):
            sc.step()
        for box in sc.mailboxes.values():
            assert len(box.inbox) < 60 and len(box.deleted) < 60
            # the incremental unread counts the engine relies on match a recount
            assert box.unread[Folder.INBOX] == sum(not m.read for m in box.inbox.values())
            assert box.unread[Folder.DELETED] == sum(not m.read for m in box.deleted.values())

    def test_initial_messages_are_in_the_truth_without_events(self) -> None:
        sc = scenario(initial_messages=5)
        assert all(len(b["inbox"]) + len(b["deleted"]) == 5 for b in sc.truth().values())

    def test_budget_caps_the_events_of_a_step(self) -> None:
        sc = scenario()
        assert all(len(sc.step(budget=1).notices) == 1 for _ in range(500))


class TestPerform:
    """Chosen operations act on the named messages and check they fit."""

    def test_hard_delete_then_undelete_rules(self) -> None:
        sc = scenario()
        first, second = (sc.perform("user0001", Op.NEW).notices[0].messages[0] for _ in range(2))
        sc.perform("user0001", Op.READ, message_ids=[first.message_id])
        change = sc.perform("user0001", Op.HARD_DELETE, message_ids=[first.message_id])
        assert first.message_id not in sc.truth()["user0001"]["inbox"]
        assert first.message_id not in sc.truth()["user0001"]["deleted"]
        assert first.usn == change.notices[2].usn
        sc.perform("user0001", Op.DELETE, message_ids=[second.message_id])
        undo = sc.perform("user0001", Op.UNDELETE, message_ids=[second.message_id])
        assert [n.event_type for n in undo.notices] == [
            EventType.UNREAD_MESSAGE,
            EventType.DELETED_MESSAGE_DELETE,
        ]
        assert sc.truth()["user0001"]["inbox"] == {second.message_id: {"read": False}}

    def test_operation_on_a_message_in_the_wrong_state_is_refused(self) -> None:
        sc = scenario()
        message = sc.perform("user0002", Op.NEW).notices[0].messages[0]
        with pytest.raises(ValueError, match="does not fit"):
            sc.perform("user0002", Op.PURGE, message_ids=[message.message_id])
        with pytest.raises(ValueError, match="no message"):
            sc.perform("user0003", Op.UNDELETE)


class TestCometFormat:
    """Events look exactly like the vendor example."""

    def test_event_keys_types_and_times(self) -> None:
        sc = scenario()
        notifier, collector, _ = notifier_for(sc)
        for _ in range(200):
            notifier.publish(sc.step())
        for event in collector.events():
            assert list(event) == [
                "MessageInfo",
                "USN",
                "EventTime",
                "SubscriptionId",
                "MailboxId",
                "EventType",
                "DisplayName",
            ]
            assert isinstance(event["USN"], int) and TIME.match(event["EventTime"])
            for info in event["MessageInfo"]:
                assert list(info) == [
                    "CallerAni",
                    "Sender",
                    "MessageId",
                    "ReceiveTime",
                    "Priority",
                    "MsgType",
                ]
                assert all(isinstance(v, str) and v for v in info.values())
                assert TIME.match(info["ReceiveTime"])
        infos = [i for e in collector.events() for i in e["MessageInfo"]]
        assert any(i["Sender"] == "null" for i in infos)
        assert any(i["CallerAni"] == "null" for i in infos)

    def test_receive_time_is_server_local_and_event_time_utc(self) -> None:
        users = UserTable.generate(1, 1)
        clock = dt.datetime(2008, 10, 30, 23, 15, 40, tzinfo=dt.UTC).timestamp()
        sc = Scenario(list(users.values()), seed=1, zone=LA, clock=lambda: clock)
        message = sc.perform("user0001", Op.NEW).notices[0].messages[0]
        # the vendor example: 11:15:40 PM UTC is 04:15:40 PM in Pacific daylight time
        assert message.info["ReceiveTime"] == "04:15:40 PM 10/30/2008"

    def test_fast_encoding_is_byte_identical(self) -> None:
        infos = [{"MessageId": "m\u00e9", "CallerAni": 'say "hi"'}, {"MessageId": "m2"}]
        fields: dict[str, Any] = {
            "usn": 12,
            "event_time": "01:02:03 AM 01/02/2008",
            "subscription_id": "sub",
            "mailbox_id": "a\\b",
            "event_type": "NEW_MESSAGE",
            "display_name": 'Zo\u00eb "Q" </script>',
        }
        slow = bayeux_message("/vmrest/mailbox/sub", event_data(infos=infos, **fields))
        fast = event_message(
            channel="/vmrest/mailbox/sub",
            infos_json=",".join(encode(i).decode() for i in infos),
            **fields,
        )
        assert fast == slow and json.loads(fast)["data"]["DisplayName"] == 'Zo\u00eb "Q" </script>'
        sc = scenario()
        for message in (sc.perform("user0001", Op.NEW).notices[0].messages[0] for _ in range(50)):
            assert message.info_json == encode(message.info).decode()

    def test_time_format_is_twelve_hour_and_locale_free(self) -> None:
        assert format_time(dt.datetime(2008, 1, 2, 0, 5, 6)) == "12:05:06 AM 01/02/2008"
        assert format_time(dt.datetime(2008, 1, 2, 12, 0, 0)) == "12:00:00 PM 01/02/2008"

    def test_event_types_are_the_domain_symbols(self) -> None:
        assert {e.value for e in EventType} <= {e.value for e in DomainEventType}


class TestNotifierDowntime:
    """After downtime the Notifier sends one latest-status event per changed message."""

    def test_recovery_events_converge_to_the_truth(self) -> None:
        sc = scenario(mailboxes=3, multi_ratio=0.3)
        notifier, collector, counters = notifier_for(sc)
        for _ in range(300):
            notifier.publish(sc.step())
        before = len(collector.payloads)
        notifier.down()
        touched: set[str] = set()
        for _ in range(400):
            change = sc.step()
            touched |= {m.message_id for m, _ in change.before}
            notifier.publish(change)
        assert len(collector.payloads) == before
        assert counters.withheld > 0
        sent = notifier.up()
        recovery = collector.events()[before:]
        assert sent == len(recovery) == counters.coalesced
        ids = [i["MessageId"] for e in recovery for i in e["MessageInfo"]]
        assert len(ids) == len(set(ids)), "one event per message"
        assert set(ids) <= touched
        # folders converge; the mailbox USN may be ahead (a message born and gone meanwhile)
        folded, truth = fold(collector.events()), sc.truth()
        for alias, box in truth.items():
            assert folded[alias]["inbox"] == box["inbox"]
            assert folded[alias]["deleted"] == box["deleted"]

    def test_status_of_each_kind_of_change(self) -> None:
        sc = scenario(mailboxes=1)
        notifier, collector, _ = notifier_for(sc)

        def act(op: Op, *names: str) -> str:
            change = sc.perform("user0001", op, message_ids=[ids[n] for n in names] or None)
            notifier.publish(change)
            return change.notices[0].messages[0].message_id

        ids: dict[str, str] = {}
        for name in ("read", "deleted", "gone_inbox", "gone_deleted", "restored", "untouched"):
            ids[name] = act(Op.NEW)
        act(Op.DELETE, "gone_deleted")
        act(Op.DELETE, "restored")
        notifier.down()
        act(Op.READ, "read")
        act(Op.DELETE, "deleted")
        act(Op.HARD_DELETE, "gone_inbox")
        act(Op.PURGE, "gone_deleted")
        act(Op.UNDELETE, "restored")
        ids["fresh"] = act(Op.NEW)
        ids["ghost"] = act(Op.NEW)
        act(Op.HARD_DELETE, "ghost")
        start = len(collector.payloads)
        notifier.up()
        status = {
            i["MessageId"]: e["EventType"]
            for e in collector.events()[start:]
            for i in e["MessageInfo"]
        }
        assert status == {
            ids["read"]: "SAVED_MESSAGE",
            ids["deleted"]: "DELETED_MESSAGE_UNREAD",
            ids["gone_inbox"]: "DELETED_MESSAGE",
            ids["gone_deleted"]: "DELETED_MESSAGE_DELETE",
            ids["restored"]: "UNREAD_MESSAGE",
            ids["fresh"]: "NEW_MESSAGE",
        }


class TestFaultPayloads:
    """Duplicates repeat verbatim; malformed payloads are broken in the promised way."""

    def test_duplicates_repeat_events_verbatim(self) -> None:
        sc = scenario()
        notifier, collector, counters = notifier_for(sc, Faults(duplicate_ratio=1.0))
        for _ in range(20):
            notifier.publish(sc.step())
        events = collector.payloads
        assert len(events) == 2 * counters.emitted.total() and events[0] == events[1]
        assert counters.duplicates == counters.emitted.total()

    @pytest.mark.parametrize("kind", list(MalformedKind))
    def test_each_malformed_kind_is_dead_lettered(self, kind: MalformedKind) -> None:
        """A field that decides folder state is broken: the pipeline's parser rejects it."""
        broken = malformed(kind, VALID, random.Random(1))
        assert broken != VALID and VALID["USN"] == 5
        with pytest.raises(InvalidEvent):
            parse_event({"channel": "/vmrest/mailbox/s", "data": broken})

    @pytest.mark.parametrize("kind", list(IrregularKind))
    def test_each_irregular_kind_is_published_with_its_change(self, kind: IrregularKind) -> None:
        """Only a display field is odd: the event parses to the same folder change, the odd
        field listed as unparsed (without an envelope, which would name the subscription)."""
        odd = irregular(kind, VALID, random.Random(1))
        assert odd != VALID and VALID["MessageInfo"] == [{"MessageId": "m1"}]
        event = parse_event(odd)
        assert (event.mailbox_id, event.usn, event.event_type, event.messages[0].message_id) == (
            "abell",
            5,
            DomainEventType.NEW_MESSAGE,
            "m1",
        )
        assert len(event.unparsed) == 1

    def test_corrupt_fault_sends_broken_events_instead(self) -> None:
        """Every event replaced (ratio 1): nothing valid is sent; about half the payloads are
        dead letters, the other half still carry their change."""
        sc = scenario()
        notifier, collector, counters = notifier_for(sc, Faults(corrupt_ratio=1.0))
        for _ in range(40):
            notifier.publish(sc.step())
        payloads = collector.payloads
        assert len(payloads) == counters.corrupted == counters.emitted.total()
        outcomes = Counter[str]()
        for payload in payloads:
            try:
                outcomes["unparsed" if parse_event(payload).unparsed else "clean"] += 1
            except InvalidEvent:
                outcomes["dead letter"] += 1
        assert outcomes["clean"] <= outcomes["unparsed"] // 4  # a no_subscription_id is clean
        assert outcomes["dead letter"] == counters.corrupted_malformed
        assert 0.25 < counters.corrupted_malformed / counters.corrupted < 0.75


VALID: dict[str, Any] = {
    "MessageInfo": [{"MessageId": "m1"}],
    "USN": 5,
    "EventTime": "04:15:40 PM 10/30/2008",
    "SubscriptionId": "s",
    "MailboxId": "abell",
    "EventType": "NEW_MESSAGE",
    "DisplayName": "A",
}


class TestUsers:
    """Basic, Bearer and delegate logins; wrong ones refused."""

    def test_logins(self) -> None:
        users = UserTable.generate(3, 9)
        user = users["user0002"]
        assert users.authenticate(user.authorization()) is not None
        assert users.authenticate(f"Bearer {user.token}") is not None
        principal = users.authenticate(users.delegate.authorization())
        assert principal is not None and principal.is_delegate
        for bad in (
            None,
            "",
            "Basic !!!",
            "Basic dXNlcjAwMDI=",
            f"Bearer {user.token}x",
            "Digest x",
        ):
            assert users.authenticate(bad) is None
        wrong = UserTable.generate(3, 10)["user0002"].authorization()
        assert users.authenticate(wrong) is None

    def test_table_is_deterministic_and_writes_private_file(self, tmp_path: Any) -> None:
        a, b = UserTable.generate(5, 1), UserTable.generate(5, 1)
        assert a.to_json() == b.to_json()
        path = tmp_path / "users.json"
        a.write(path, tmp_path / "delegate.json")
        assert json.loads(path.read_text())["user0005"]["object_id"] == a["user0005"].object_id
        assert path.stat().st_mode & 0o077 == 0
        assert json.loads((tmp_path / "delegate.json").read_text())["username"] == "cumi-delegate"


class TestConfig:
    """Nonsense settings are refused with the setting's name."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [("mailboxes", 0), ("max_batch", 0), ("multi_message_ratio", 2.0), ("server_zone", "Mars")],
    )
    def test_refused(self, field: str, value: Any) -> None:
        with pytest.raises(ConfigError, match=field):
            SimulatorConfig(**{field: value})
