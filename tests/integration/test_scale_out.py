"""Scale-out: ingest workers share the registry through Kafka's group protocol.

`TestScaleOut` — three real `ingest worker` processes, 3,000 mailboxes, the simulator (in this
process, so its Bayeux sessions and channels are the ground truth of who watches what) and the real
broker, in phases (harness: tests/fixtures/worker_group.py):

1. `ingest mailboxes import` registers 3,000 of the simulator's 3,100 mailboxes; three workers
   (`CUMI_MAILBOX_SOURCE=registry`) start. Steady state: every registered mailbox is watched by
   exactly one worker (a subscribed channel in one live worker's CometD session), the
   unregistered ones by none, and each worker has a share.
2. kill -9 one worker while mail keeps flowing: its mailboxes are watched again by the other two.
3. 100 mailboxes added and 100 removed in the registry while running: the added are subscribed,
   the removed unsubscribed.
4. The fold of the events topic equals the simulator's truth for every registered mailbox; the
   victim's mailboxes each have a gap-repair snapshot (`assigned`) taken after the kill — their
   only repair after it, so the equality shows the failover lost nothing — and the added ones a
   `registered` snapshot.

`TestGroupAssignment` — `RegistryAssignment` members in this process, recording what they hand to
their subscription manager, on the real broker: rebalances move only what must move, live changes,
a graceful leave. `TestMailboxesCommand` — `ingest mailboxes` against the broker.

Times are printed (`-s`); the tests bound them only by generous deadlines (a machine this loaded is
no stopwatch). `python -m bench scale_out` measures more phases, with settling between them, and
keeps the numbers (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually, holds
from fixtures.worker import read_topic
from fixtures.worker_group import ScaleOut, now_ms, scale_out_env

from ingest.commands import mailboxes as mailboxes_command
from ingest.eventlog import codec
from ingest.eventlog.topics import TopicNames
from ingest.events import MailboxRegistryEntry, MailboxSnapshot, RepairReason
from ingest.mailboxes.assignment import RegistryAssignment
from ingest.mailboxes.registry import RegistryWriter, apply_changes, ensure_registry_topic
from ingest.settings import KafkaSettings, SettingsSource, load_kafka

pytestmark = pytest.mark.integration

MAILBOXES = 3_000
CHANGED = 100
WORKERS = 3
FAST_GROUP = {
    "KAFKA_WORKER_SESSION_TIMEOUT_MS": "6000",  # the broker's group.min.session.timeout.ms
    "KAFKA_WORKER_HEARTBEAT_INTERVAL_MS": "500",
}


class TestScaleOut:
    """Three worker processes share 3,000 mailboxes, fail over, follow the registry live."""

    async def test_share_fail_over_and_follow_the_registry(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(
            mailboxes=MAILBOXES + CHANGED, seed=61, initial_messages=2, max_interval=3.0
        )
        env = scale_out_env(sim, kafka_bootstrap, fresh_topics, tmp_path, **FAST_GROUP)
        async with aiohttp.ClientSession() as http:
            run = ScaleOut(sim, env, tmp_path, http, mailboxes=MAILBOXES, workers=WORKERS)
            try:
                await run.start(settle=False)
                shares = run.shares()
                sizes = {index: len(share) for index, share in shares.items()}
                assert all(size > MAILBOXES // WORKERS // 2 for size in sizes.values()), sizes

                victim = run.workers[0]
                theirs = shares[victim.index]
                cut = await run.kill(victim, len(theirs), repair=False)
                await run.change(CHANGED, keep_watching=theirs)

                differences, snapshots = await run.fold(kafka_bootstrap, fresh_topics.events)
                assert not differences, differences[:10]
                after_kill = set()  # taken over: snapshots the survivors wrote past the cut
                for record in await read_topic(kafka_bootstrap, fresh_topics.events):
                    if record.offset < cut.get(record.partition, 0):
                        continue
                    value = codec.decode(record.value)
                    if isinstance(value, MailboxSnapshot) and value.reason == "assigned":
                        after_kill.add(value.mailbox_id)
                assert theirs <= after_kill, sorted(theirs - after_kill)[:5]
                assert set(run.spare) <= {
                    s.mailbox_id for s in snapshots if s.reason == "registered"
                }
                codes = [await w.stop() for w in run.running]
                assert codes == [0] * (WORKERS - 1)
            finally:
                await run.kill_all()
        for worker in run.workers:
            log = worker.log.read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]
        print(f"\nscale-out, {MAILBOXES} mailboxes, {WORKERS} workers, shares {sizes}:")
        for what, seconds in run.measured.items():
            print(f"  {what}: {seconds:.2f} s")


# --- the group assignment in this process ---------------------------------------------------


class Recorder:
    """A `MailboxTarget` that keeps what it was told, in order."""

    def __init__(self) -> None:
        self.watched: set[str] = set()
        self.log: list[tuple[str, str, RepairReason | None]] = []

    def add(self, aliases: Iterable[str], repair: RepairReason | None) -> int:
        new = set(aliases) - self.watched
        self.watched |= new
        self.log += [("add", a, repair) for a in sorted(new)]
        return len(new)

    async def remove(self, aliases: Iterable[str]) -> int:
        gone = set(aliases) & self.watched
        self.watched -= gone
        self.log += [("remove", a, None) for a in sorted(gone)]
        return len(gone)

    def events(self, kind: str) -> set[str]:
        return {alias for what, alias, _ in self.log if what == kind}


@contextlib.asynccontextmanager
async def member(
    kafka: KafkaSettings, group: str, target: Recorder
) -> AsyncIterator[RegistryAssignment]:
    assignment = RegistryAssignment(
        kafka, target, group_id=group, session_timeout_ms=6000, heartbeat_interval_ms=500,
        server="cuc1",
    )  # fmt: skip
    async with assignment:
        yield assignment
    assert assignment.fatal is None


class TestGroupAssignment:
    """What the group protocol gives each member, and what each member tells its manager."""

    @pytest.fixture
    def kafka(self, kafka_bootstrap: str, fresh_topics: TopicNames) -> KafkaSettings:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_EVENTS_TOPIC": fresh_topics.events,
            "KAFKA_REGISTRY_TOPIC": fresh_topics.registry,
        }
        return load_kafka(SettingsSource(env))

    async def test_members_share_rebalance_sticky_and_follow_changes(
        self, kafka: KafkaSettings, fresh_topics: TopicNames
    ) -> None:
        stamp = now_ms()
        entries = [MailboxRegistryEntry(f"user{i:04d}", stamp, server="cuc1") for i in range(300)]
        entries.append(MailboxRegistryEntry("other", stamp, server="cuc2"))
        entries.append(MailboxRegistryEntry("paused", stamp, enabled=False))
        await ensure_registry_topic(kafka)
        await apply_changes(kafka, entries, [])
        await _write_garbage(kafka)
        wanted = {e.mailbox_id for e in entries[:300]}
        group = f"g-{fresh_topics.registry}"
        one, two, three = Recorder(), Recorder(), Recorder()
        pair = (one, two)

        def union(*targets: Recorder) -> set[str]:
            return set().union(*(t.watched for t in targets))

        def shared(members: Iterable[RegistryAssignment]) -> bool:
            """Steady state: every wanted mailbox watched by exactly one member. (Right after a
            rebalance the old owner may still watch what the new one already has: it learns of
            its assignment a moment later — an overlap by design, see
            ingest.mailboxes.assignment.)"""
            return (
                all(m.ready for m in members)
                and union(*pair) == wanted
                and not one.watched & two.watched
            )

        async with member(kafka, group, one) as a, member(kafka, group, two) as b:
            await eventually(lambda: shared((a, b)), within=60, what="sharing")
            await holds(lambda: shared((a, b)), "sharing stays put", for_s=1.0)
            assert a.partitions | b.partitions == set(range(24))
            marks = [len(t.log) for t in pair]
            async with member(kafka, group, three) as c:

                def moved() -> set[str]:
                    return {x for t, m in zip(pair, marks, strict=True) for _, x, _ in t.log[m:]}

                joined = await eventually(
                    lambda: c.ready and len(c.partitions) == 8 and moved() == three.watched,
                    within=60,
                    what="a third member joins",
                )
                # the sticky assignor moved 8 partitions to the newcomer and nothing else: the
                # others only gave up what it took (no unsubscribe-resubscribe of the rest)
                assert {
                    what for t, m in zip(pair, marks, strict=True) for what, _, _ in t.log[m:]
                } == {"remove"}
                assert {r for _, _, r in three.log} == {RepairReason.STARTUP}
                assert union(one, two, three) == wanted

                async with RegistryWriter(kafka) as writer:
                    await writer.put(MailboxRegistryEntry("late", now_ms()))
                    await writer.remove("user0001")
                    await writer.put(MailboxRegistryEntry("user0002", now_ms(), enabled=False))
                wanted = (wanted | {"late"}) - {"user0001", "user0002"}
                live = await eventually(
                    lambda: union(one, two, three) == wanted,
                    within=60,
                    what="live changes on owned partitions",
                )
                late = [r for t in (one, two, three) for _, x, r in t.log if x == "late"]
                assert late == [RepairReason.REGISTERED]
                theirs = set(three.watched)
                marks = [len(t.log) for t in pair]
            # the third left the group (and unsubscribed); the others take its share as assigned
            # (whichever of them gets it: only what they were told since it left counts)
            left = await eventually(lambda: shared((a, b)), within=60, what="a graceful leave")
            assert not three.watched
            taken_back = [(x, r) for t, m in zip(pair, marks, strict=True) for _, x, r in t.log[m:]]
            assert {x for x, _ in taken_back} == theirs
            assert {r for _, r in taken_back} == {RepairReason.ASSIGNED}
        print(f"\njoin rebalance {joined:.2f} s, live change {live:.2f} s, leave {left:.2f} s")


async def _write_garbage(kafka: KafkaSettings) -> None:
    """A record no worker can read and one whose key and value disagree: both skipped."""
    wrong = codec.encode(MailboxRegistryEntry("someone-else", now_ms()))
    async with AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers) as producer:
        await producer.send_and_wait(kafka.registry_topic, b'{"not": "avro"}', key=b"junk")
        await producer.send_and_wait(kafka.registry_topic, wrong, key=b"mismatch")


class TestMailboxesCommand:
    """`ingest mailboxes add|remove|list|import` against the real broker."""

    async def test_add_list_remove_import(
        self,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        for name in list(os.environ):
            if name.startswith(("CUMI_", "KAFKA_")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("KAFKA_EVENTS_TOPIC", fresh_topics.events)
        monkeypatch.setenv("KAFKA_REGISTRY_TOPIC", fresh_topics.registry)
        monkeypatch.setenv("CUMI_SERVER_NAME", "cuc1")

        said: list[str] = []

        async def mailboxes(*args: str) -> list[dict[str, object]]:
            # the sub-command itself: `ingest.cli.main` would also reconfigure logging
            parser = argparse.ArgumentParser()
            mailboxes_command.add_arguments(parser)
            parsed = parser.parse_args(["--bootstrap", kafka_bootstrap, *args])
            assert await asyncio.to_thread(mailboxes_command.run, parsed) == 0
            out, err = capsys.readouterr()
            said.append(err)
            return [json.loads(line) for line in out.splitlines()]

        def listed(rows: list[dict[str, object]]) -> dict[object, tuple[object, ...]]:
            return {
                r["mailbox_id"]: (r["server"], r["credentials_ref"], r["enabled"]) for r in rows
            }

        await mailboxes("add", "abell", "bwayne", "--credentials-ref", "team-a")
        await mailboxes("add", "cdoe", "--server", "cuc2", "--disabled")
        assert listed(await mailboxes("list", "--json", "--all")) == {
            "abell": ("cuc1", "team-a", True),
            "bwayne": ("cuc1", "team-a", True),
            "cdoe": ("cuc2", None, False),
        }
        assert set(listed(await mailboxes("list", "--json"))) == {"abell", "bwayne"}
        await mailboxes("remove", "bwayne")
        file = tmp_path / "mailboxes.json"
        file.write_text(json.dumps({"abell": {"credentials_ref": "team-a"}, "dnew": {}}))
        await mailboxes("import", str(file), "--prune")
        assert "2 mailboxes in" in said[-1] and "1 written, 1 removed, 1 unchanged" in said[-1]
        assert listed(await mailboxes("list", "--json", "--all")) == {
            "abell": ("cuc1", "team-a", True),
            "dnew": ("cuc1", None, True),
        }
        text = tmp_path / "mailboxes.txt"
        text.write_text("abell\n")
        await mailboxes("import", str(text))  # abell's entry would lose its reference: rewritten
        assert listed(await mailboxes("list", "--json"))["abell"] == ("cuc1", None, True)
