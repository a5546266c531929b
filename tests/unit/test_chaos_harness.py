"""The chaos harness's own parts (tests/chaos): the schedule is a pure function of the seed, and
the invariant checks do catch invented events and wrong dead letters (they can fail)."""

from __future__ import annotations

import datetime as dt

from chaos.observe import Ledger, MalformedInjector
from chaos.schedule import SEEDED, Fault, plan

from ingest.events import (
    DeadLetter,
    EventType,
    MailboxEvent,
    MailboxSnapshot,
    MessageInfo,
    RepairReason,
)
from ingest.simulator import Simulator, SimulatorConfig

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class TestSchedule:
    """`plan` is reproducible from the seed and covers every fault kind."""

    def test_same_seed_same_schedule(self) -> None:
        assert plan(7, 25) == plan(7, 25)
        assert plan(7, 25) != plan(8, 25)

    def test_every_kind_once_then_random(self) -> None:
        steps = plan(3, 14)
        assert len(steps) == 14
        assert {s.fault for s in steps} == SEEDED
        assert [s.at for s in steps] == sorted(s.at for s in steps)

    def test_fewer_faults_than_kinds(self) -> None:
        steps = plan(3, 4)
        assert len({s.fault for s in steps}) == 4

    def test_sizes_in_range(self) -> None:
        for step in plan(11, 200):
            assert 0 <= step.hold <= 6
            if step.fault is Fault.DUPLICATES:
                assert 0.05 <= step.size <= 0.3
            if step.fault is Fault.MALFORMED:
                assert step.size in (2, 3, 4, 5)


def simulator() -> Simulator:
    return Simulator(SimulatorConfig(mailboxes=3, seed=5))


def as_event(mailbox_id: str, usn: int, event_type: str, ids: tuple[str, ...]) -> MailboxEvent:
    return MailboxEvent(
        mailbox_id=mailbox_id,
        usn=usn,
        event_type=EventType(event_type),
        event_time=T0,
        event_time_raw="",
        subscription_id="s",
        messages=tuple(MessageInfo(m) for m in ids),
        ingested_at=T0,
    )


class TestLedger:
    """Only what the simulator's Notifier sent may be on the events topic."""

    def test_emitted_events_pass_and_invented_ones_are_caught(self) -> None:
        sim = simulator()
        ledger = Ledger(sim)
        sim.emit(50)  # nobody subscribed: sent (and lost), still recorded
        emitted = [as_event(*key) for key in sorted(ledger.emitted)]
        assert len(emitted) >= 40
        assert ledger.invented(emitted, sim) == []
        real = emitted[0]
        forged = [
            as_event(real.mailbox_id, real.usn + 1000, real.event_type.value, ("m",)),
            as_event(real.mailbox_id, real.usn, "DELETED_MESSAGE_UNDELETE", ("m",)),
            as_event(
                "nobody", real.usn, real.event_type.value, tuple(sorted(ledger.emitted)[0][3])
            ),
        ]
        assert len(ledger.invented(forged, sim)) == 3

    def test_snapshots_of_reached_usns_only(self) -> None:
        sim = simulator()
        ledger = Ledger(sim)
        sim.emit(20)
        alias, mailbox = next(iter(sim.scenario.mailboxes.items()))

        def snap(usn: int, mailbox_id: str = alias) -> MailboxSnapshot:
            return MailboxSnapshot(mailbox_id, usn, T0, RepairReason.STARTUP, (), ())

        assert ledger.invented([snap(mailbox.usn)], sim) == []
        assert len(ledger.invented([snap(mailbox.usn + 1), snap(1, "nobody")], sim)) == 2
        letter = DeadLetter(b"x", "not_json", "d", T0)
        assert ledger.invented([letter], sim) == ["a DeadLetter on the events topic"]


def letter(raw: bytes, reason: str = "bad_type") -> DeadLetter:
    return DeadLetter(raw, reason, "detail", T0)


class TestDeadLetterCheck:
    """Every injected payload exactly as often as delivered, nothing else."""

    def injector(self) -> MalformedInjector:
        injector = MalformedInjector(simulator(), seed=9)
        injector.injected = {"chaos-9-0": 1, "chaos-9-1": 2}
        return injector

    def test_exact(self) -> None:
        letters = [letter(b'{"ChaosId":"chaos-9-0"}'), *[letter(b"x ChaosId=chaos-9-1")] * 2]
        assert set(self.injector().check(letters).values()) == {0}

    def test_missing_extra_and_miscounted(self) -> None:
        found = self.injector().check(
            [
                letter(b"chaos-9-1"),  # once, delivered twice; chaos-9-0 missing
                letter(b"no marker at all"),
                letter(b"chaos-9-0 chaos-9-1"),  # two markers: not one payload
                letter(b"chaos-9-0", reason="made_up"),
            ]
        )
        assert found == {
            "dead letters not injected": 3,
            "malformed payloads not dead-lettered": 1,
            "corrupted payloads not dead-lettered": 0,
            "dead-letter count off": 1,
            "dead letters per payload off": 2,
        }

    def test_corrupted_payloads_are_the_unmarked_letters(self) -> None:
        """The simulator's corrupt fault sent `corrupted` malformed payloads in place of events:
        exactly that many unmarked letters are expected, no more, no fewer."""
        marked = [letter(b'{"ChaosId":"chaos-9-0"}'), *[letter(b"x ChaosId=chaos-9-1")] * 2]
        unmarked = [letter(b'{"USN":"usn-3"}')] * 2
        assert set(self.injector().check(marked + unmarked, corrupted=2).values()) == {0}
        assert self.injector().check(marked + unmarked, corrupted=3) == {
            "dead letters not injected": 0,
            "malformed payloads not dead-lettered": 0,
            "corrupted payloads not dead-lettered": 1,
            "dead-letter count off": 1,
            "dead letters per payload off": 0,
        }
        assert (
            self.injector().check(marked + unmarked, corrupted=1)["dead letters not injected"] == 1
        )
