"""Scale-out: ingest workers share the registry through Kafka's group protocol.

`TestScaleOut` — three real `ingest worker` processes, 3,000 mailboxes, the simulator (in this
process, so its Bayeux sessions and channels are the ground truth of who watches what) and the real
broker, in phases:

1. `ingest mailboxes import` registers 3,000 of the simulator's 3,100 mailboxes; three workers
   (`CUMI_MAILBOX_SOURCE=registry`) start. Steady state: every registered mailbox is watched by
   exactly one worker (a subscribed channel in one live worker's CometD session), the
   unregistered ones by none, and each worker has a share.
2. kill -9 one worker while mail keeps flowing: its mailboxes are watched again by the other two
   (timed), each with a gap-repair snapshot (`assigned`) taken after the kill.
3. A new worker takes the dead one's place: a third of the mailboxes move to it, still each
   watched by exactly one worker.
4. 100 mailboxes added and 100 removed in the registry while running: the added are subscribed
   and repaired (`registered`), the removed unsubscribed (timed from the registry write).
5. The fold of the events topic equals the simulator's truth for every registered mailbox. The
   victim's mailboxes are among them, most of them (those the newcomer did not take) with no
   repair after the kill but the takeover's: the failover lost nothing.

`TestGroupAssignment` — `RegistryAssignment` members in this process, recording what they hand to
their subscription manager, on the real broker: rebalances move only what must move, live changes,
a graceful leave.

Measured times are printed (`-s`) and kept in docs/operations.md; the tests bound them only by
generous deadlines (a machine this loaded is no stopwatch).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from fixtures.producing import free_port
from fixtures.simulator import MakeSimulator
from fixtures.worker import decode_all, fold_records, read_topic, worker_env
from prometheus_client.parser import text_string_to_metric_families

from ingest import codec, registry
from ingest.assignment import RegistryAssignment
from ingest.events import MailboxRegistryEntry, MailboxSnapshot
from ingest.projection import diff_states
from ingest.registry import RegistryWriter, apply_changes, ensure_registry_topic
from ingest.settings import KafkaSettings, SettingsSource, load_kafka
from ingest.simulator import Simulator
from ingest.subscriptions import RepairReason
from ingest.topics import TopicNames

pytestmark = pytest.mark.integration

MAILBOXES = 3_000
CHANGED = 100
WORKERS = 3
REPO = Path(__file__).resolve().parents[2]
SESSION_OPEN = re.compile(r"CometD session (\w+) open")
FAST_GROUP = {
    "KAFKA_WORKER_SESSION_TIMEOUT_MS": "6000",  # the broker's group.min.session.timeout.ms
    "KAFKA_WORKER_HEARTBEAT_INTERVAL_MS": "500",
}


class WorkerProcess:
    """`python -m ingest worker` with its log in a file and its metrics on a known port."""

    def __init__(self, index: int, env: dict[str, str], log: Path) -> None:
        self.index = index
        self.port = free_port()
        self.env = {**env, "CUMI_METRICS_PORT": str(self.port)}
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - opening a log file is instant
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ingest", "worker", env=self.env, cwd=REPO,
                stdout=out, stderr=out,
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def sessions(self) -> set[str]:
        """CometD client ids this worker has opened (from its log)."""
        return set(SESSION_OPEN.findall(self.log.read_text(errors="replace")))

    async def metric(self, http: aiohttp.ClientSession, name: str, **labels: str) -> float:
        """One sample of the worker's /metrics (0 if absent)."""
        async with http.get(f"http://127.0.0.1:{self.port}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            return await self.proc.wait()


def watchers(sim: Simulator, workers: Iterable[WorkerProcess]) -> dict[str, set[int]]:
    """Mailbox → the running workers with a subscribed channel of it (the simulator's view)."""
    owner = {sid: w.index for w in workers if w.running for sid in w.sessions()}
    seen: dict[str, set[int]] = {}
    for client_id, session in sim.bayeux.sessions.items():
        index = owner.get(client_id)
        if index is None:
            continue  # a killed worker's session, until the server expires it
        for channel in session.channels:
            alias = sim.subscriptions.mailbox_of(channel.rsplit("/", 1)[-1])
            if alias is not None:
                seen.setdefault(alias, set()).add(index)
    return seen


def problems(seen: dict[str, set[int]], watched: set[str], unwatched: Iterable[str]) -> list[str]:
    wrong = [
        f"{a}: {sorted(seen.get(a, ()))}" for a in sorted(watched) if len(seen.get(a, ())) != 1
    ]
    return wrong + [f"{a} (not registered): {sorted(seen[a])}" for a in unwatched if seen.get(a)]


async def wait_for(check: Callable[[], list[str]], within: float, what: str) -> float:
    """Seconds until `check()` reports no problems; fails with a sample of them after `within`."""
    started = time.monotonic()
    found: list[str] = []
    while time.monotonic() - started < within:
        found = check()
        if not found:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: {len(found)} problems after {within} s, e.g. {found[:5]}")


class ScaleOut:
    """The scenario's state and its phases (see the module docstring)."""

    def __init__(
        self, sim: Simulator, env: dict[str, str], tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        self.sim = sim
        self.env = env
        self.http = http
        self.kafka = load_kafka(SettingsSource(env))
        everyone = list(sim.accounts)
        self.registered = set(everyone[:MAILBOXES])
        self.spare = everyone[MAILBOXES:]
        self.listing = tmp_path / "registry.txt"
        self.log_dir = tmp_path
        self.workers = [WorkerProcess(i, env, tmp_path / f"worker{i}.log") for i in range(WORKERS)]
        self.measured: dict[str, float] = {}

    def check(self, unwatched: Iterable[str]) -> Callable[[], list[str]]:
        return lambda: problems(watchers(self.sim, self.workers), self.registered, unwatched)

    async def start(self) -> None:
        self.listing.write_text("\n".join(sorted(self.registered)) + "\n")
        await mailboxes_cli(self.env, "import", str(self.listing))
        started = time.monotonic()
        await asyncio.gather(*(w.start() for w in self.workers))
        self.sim.run_scenario(rate=100)  # mail keeps flowing through every phase
        await wait_for(self.check(self.spare), 240, "steady state")
        self.measured["start: 3,000 watched, from process start"] = time.monotonic() - started
        # the failover below then competes with nothing for the server's REST throttle
        await self.until_settled()
        self.measured["start: every start-up gap repair done"] = time.monotonic() - started

    def shares(self) -> dict[int, set[str]]:
        seen = watchers(self.sim, self.workers)
        return {w.index: {a for a in self.registered if seen[a] == {w.index}} for w in self.workers}

    async def kill(self, victim: WorkerProcess, share: int) -> float:
        """kill -9 of a worker watching `share` mailboxes; returns the wall-clock time of the kill
        once the others watch everything and have repaired the victim's share."""
        assert victim.proc is not None
        victim.proc.kill()
        killed_at = time.time()
        started = time.monotonic()
        await victim.proc.wait()
        survivors = [w for w in self.workers if w.running]
        reassigned = asyncio.create_task(
            self._sum_reaches(survivors, 24, "cumi_worker_registry_partitions")
        )
        repaired = asyncio.create_task(
            self._sum_reaches(
                survivors, share, "cumi_worker_snapshots_published_total", reason="assigned"
            )
        )
        self.measured["failover: the victim's mailboxes watched again"] = await wait_for(
            self.check(self.spare), 60, "failover"
        )
        async with asyncio.timeout(120):
            self.measured["failover: registry partitions reassigned"] = await reassigned - started
            self.measured["failover: their gap repair published"] = await repaired - started
        return killed_at

    async def _sum_reaches(
        self, workers: list[WorkerProcess], target: int, name: str, **labels: str
    ) -> float:
        """When the sum of a metric over `workers` first reaches `target` (monotonic time)."""
        while True:
            values = [await w.metric(self.http, name, **labels) for w in workers]
            if sum(values) >= target:
                return time.monotonic()
            await asyncio.sleep(0.1)

    async def replace(self) -> WorkerProcess:
        """Start a worker in the dead one's place (what Kubernetes does): a share moves to it."""
        index = len(self.workers)
        newcomer = WorkerProcess(index, self.env, self.log_dir / f"worker{index}.log")
        self.workers.append(newcomer)
        started = time.monotonic()
        await newcomer.start()

        def shared() -> list[str]:
            seen = watchers(self.sim, self.workers)
            found = problems(seen, self.registered, self.spare)
            if found:
                return found
            mine = any(seen[a] == {index} for a in self.registered)
            return [] if mine else ["the new worker watches nothing yet"]

        await wait_for(shared, 120, "scale-up")
        self.measured["scale-up: the new worker watches its share, from process start"] = (
            time.monotonic() - started
        )
        await self.until_settled()
        return newcomer

    async def change(self, keep_watching: set[str]) -> set[str]:
        """Add the spare mailboxes, remove as many others (none of `keep_watching`)."""
        removed = set(sorted(self.registered - keep_watching)[:CHANGED])
        self.registered = (self.registered - removed) | set(self.spare)
        async with RegistryWriter(self.kafka) as writer:
            started = time.monotonic()
            for alias in self.spare:
                await writer.put(MailboxRegistryEntry(alias, now_ms()))
            for alias in sorted(removed):
                await writer.remove(alias)
            await writer.flush()
            acked = time.monotonic() - started
        await wait_for(self.check(removed), 60, "live changes")
        self.measured["live: 100 added + 100 removed, registry write acked"] = acked
        self.measured["live: … subscribed / unsubscribed, from the write"] = (
            time.monotonic() - started
        )
        return removed

    async def until_settled(self) -> None:
        """Until nothing is in flight twice in a row, half a second apart (a payload on the wire
        between the simulator and a worker is in neither's counters)."""
        started = time.monotonic()
        quiet = 0
        busy: list[str] = []
        while quiet < 2:
            if time.monotonic() - started > 120:
                raise AssertionError(f"the workers did not settle: {busy}")
            busy = await self._in_flight()
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.5)

    async def _in_flight(self) -> list[str]:
        busy = []
        for worker in self.workers:
            if not worker.running:
                continue
            for name, state in (
                ("cumi_worker_subscriptions", "pending"),
                ("cumi_worker_subscriptions", "requesting"),
                ("cumi_worker_subscriptions", "subscribing"),
                ("cumi_worker_reconcile_pending", ""),
                ("cumi_worker_queue_events", ""),
            ):
                labels = {"state": state} if state else {}
                if value := await worker.metric(self.http, name, **labels):
                    busy.append(f"worker {worker.index}: {name} {labels} = {value}")
        return busy

    async def fold_and_compare(self, bootstrap: str, events_topic: str) -> list[MailboxSnapshot]:
        await self.sim.stop_scenario()
        async with asyncio.timeout(60):
            await self.sim.wait_idle()
        await self.until_settled()
        decoded = decode_all(await read_topic(bootstrap, events_topic))
        folded, truth = fold_records(decoded), self.sim.truth()
        differences = diff_states(
            {a: truth[a] for a in self.registered}, {a: folded.get(a, {}) for a in self.registered}
        )
        assert not differences, differences[:10]
        return [r for r in decoded if isinstance(r, MailboxSnapshot)]


def now_ms() -> dt.datetime:
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def mailboxes_cli(env: dict[str, str], *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest", "mailboxes", *args, env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()


def scale_out_env(
    sim: Simulator, bootstrap: str, topics: TopicNames, tmp_path: Path
) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))},
        **worker_env(sim, bootstrap, topics, tmp_path),
        **FAST_GROUP,
        "CUMI_MAILBOX_SOURCE": "registry",
        "KAFKA_WORKER_GROUP": f"workers-{topics.registry}",
        "CUMI_LOG_FORMAT": "text",
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
        env = scale_out_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
            run = ScaleOut(sim, env, tmp_path, http)
            stack.push_async_callback(_kill_all, run.workers)
            await run.start()
            shares = run.shares()
            sizes = {index: len(share) for index, share in shares.items()}
            assert all(size > MAILBOXES // WORKERS // 2 for size in sizes.values()), sizes

            victim = run.workers[0]
            killed_at = await run.kill(victim, len(shares[victim.index]))
            newcomer = await run.replace()
            removed = await run.change(keep_watching=shares[victim.index])

            snapshots = await run.fold_and_compare(kafka_bootstrap, fresh_topics.events)
            after_kill = {
                s.mailbox_id
                for s in snapshots
                if s.reason == "assigned" and s.taken_at.timestamp() >= killed_at
            }
            assert shares[victim.index] <= after_kill, sorted(shares[victim.index] - after_kill)[:5]
            registered = {s.mailbox_id for s in snapshots if s.reason == "registered"}
            assert set(run.spare) <= registered
            assert not removed & run.registered

            assert sum(1 for a in run.registered if watchers(sim, [newcomer]).get(a)) > 0
            codes = [await w.stop() for w in run.workers if w.running]
            assert codes == [0] * WORKERS
        for worker in run.workers:
            log = worker.log.read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]
        print(f"\nscale-out, {MAILBOXES} mailboxes, {WORKERS} workers, sizes {sizes}:")
        for what, seconds in run.measured.items():
            print(f"  {what}: {seconds:.2f} s")


async def _kill_all(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if worker.running:
            with contextlib.suppress(TimeoutError):
                await worker.stop(signal.SIGKILL)


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


async def eventually(check: Callable[[], bool], what: str, within: float = 60) -> float:
    """Seconds until `check()` holds."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


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

        async with member(kafka, group, one) as a, member(kafka, group, two) as b:
            await eventually(lambda: union(*pair) == wanted and a.ready and b.ready, "sharing")
            assert not one.watched & two.watched
            assert a.partitions | b.partitions == set(range(24))
            marks = [len(t.log) for t in pair]
            async with member(kafka, group, three) as c:

                def moved() -> set[str]:
                    return {x for t, m in zip(pair, marks, strict=True) for _, x, _ in t.log[m:]}

                joined = await eventually(
                    lambda: c.ready and len(c.partitions) == 8 and moved() == three.watched,
                    "a third member joins",
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
                    lambda: union(one, two, three) == wanted, "live changes on owned partitions"
                )
                late = [r for t in (one, two, three) for _, x, r in t.log if x == "late"]
                assert late == [RepairReason.REGISTERED]
                theirs = set(three.watched)
            # the third left the group (and unsubscribed); the others take its share as assigned
            left = await eventually(
                lambda: union(*pair) == wanted and a.ready and b.ready, "a graceful leave"
            )
            assert not three.watched
            last_add = {x: r for t in pair for what, x, r in t.log if what == "add"}
            assert {last_add[x] for x in theirs} == {RepairReason.ASSIGNED}
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
            registry.add_arguments(parser)
            parsed = parser.parse_args(["--bootstrap", kafka_bootstrap, *args])
            assert await asyncio.to_thread(registry.run, parsed) == 0
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
