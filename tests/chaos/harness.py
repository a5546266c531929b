"""One chaos run: the whole pipeline under a seeded fault schedule, then its invariants.

Parts, all real: the session's Kafka broker (`LocalBroker`, stopped and started by the schedule)
or a three-node `LocalCluster` (its nodes killed, stopped and started by the cluster faults), an
in-process `Simulator` on loopback sockets, an `ingest worker` and an `ingest projector` as
supervised child processes (SIGKILLed by the schedule, restarted like Kubernetes would).

The run: start the worker and the projector, start the simulator's scenario at a steady rate,
play the schedule (faults overlap), stop the scenario, lift every fault, wait for convergence,
then check:

1. the fold of the events topic equals the simulator's truth;
2. the events topic holds only events the simulator emitted (and snapshots), every record decodes;
3. the dead-letter topic holds exactly the malformed payloads injected, as often as delivered,
   and those the simulator sent in place of real events (its corrupt fault, switched on for a
   moment with each malformed injection: their changes reach the fold of check 1 only through
   the gap repair their dead letters trigger; its irregular payloads are published as events);
4. the projector's state topic equals the truth, and equals the fold of the events topic record
   for record, counters included (nothing applied twice, nothing lost) — exactly once;
5. the projector's read API serves the truth for every mailbox;
6. no secret of the users file appears in any process log; both processes stop with exit 0;
7. every event a worker received was acknowledged by Kafka (its own counters).

Each check is a count of mismatches in `ChaosResult.mismatches`; a correct run has all zero.
Every Kafka fault is measured (`ChaosResult.outages`, see `FaultMeter`): how long, log lines and
CPU per process, records held; for the cluster faults also failover and resumption times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fixtures.producing import state_differences, wait_committed
from fixtures.worker import worker_env

from chaos.observe import (
    EndOffsets,
    FaultMeter,
    Ledger,
    MalformedInjector,
    TopicReader,
    worker_totals,
)
from chaos.processes import Service
from chaos.schedule import CLUSTER, DISRUPTIVE, Fault, Step, plan
from ingest.devservices.kafka import LocalBroker, LocalCluster
from ingest.eventlog.topics import TopicNames, describe_topic
from ingest.events import MailboxRegistryEntry, MailboxSnapshot
from ingest.mailboxes.registry import apply_changes
from ingest.settings import SettingsSource, load_kafka
from ingest.simulator import Simulator
from ingest.state.projection import MailboxState, diff_states
from ingest.state.store import read_state_topic

log = logging.getLogger(__name__)

CORRUPT_RATIO = 0.05
CORRUPT_SECONDS = 1.0
"""With each malformed injection, this share of the scenario's events (300/s) is sent broken
instead of valid for this long: about 15 events, half of them dead letters."""


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    seed: int
    faults: int = 12
    mailboxes: int = 100
    rate: float = 300.0
    """Simulator events per second while the schedule plays."""
    spacing: tuple[float, float] = (1.5, 4.0)
    converge_within: float = 240.0
    workers: int = 1
    """1: one worker with the mailbox file; more: workers sharing the registry in one Kafka
    group (scale-out), a random one of them killed by each kill -9 step."""
    steps: tuple[Step, ...] | None = None
    """A fixed schedule instead of the seeded random one (the long-outage runs)."""
    sequential: float | None = None
    """Set: the steps run one after the other, each this many seconds after the previous one
    ended (their `at` is not used); the cluster faults take a while that is not known ahead."""


@dataclass(slots=True)
class ChaosResult:
    seed: int
    workers: int
    schedule: list[str]
    faults: dict[str, int]
    """Faults carried out, by kind."""
    skipped: list[str]
    """Steps that could not be carried out (none in a good run)."""
    events_emitted: int
    log_records: int
    snapshots: int
    dead_letters: int
    malformed_injected: int
    malformed_deliveries: int
    seconds: float
    phases: dict[str, float]
    """Seconds spent starting, playing the schedule, converging (from the end of the schedule
    until the events topic folds to the truth) and checking."""
    server_side: dict[str, int]
    """What the simulator counted: events lost for want of a subscriber, withheld during Notifier
    downtime, coalesced on recovery, sent twice; queued messages dropped by restarts/expiry."""
    mismatches: dict[str, int]
    unplanned_exits: dict[str, list[tuple[float, int | None]]]
    starts: dict[str, int]
    outages: list[dict[str, Any]]
    """Per Kafka fault (broker stop, cluster fault): its kind and length, per service the log
    lines written and the CPU share used while it lasted, the records the workers held; for the
    cluster faults failover and resumption times (`FaultMeter.figures` and the fault's own)."""

    @property
    def total_mismatches(self) -> int:
        return sum(self.mismatches.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_mismatches": self.total_mismatches}


class Skipped(Exception):
    """A fault step that could not be carried out (reported, not counted as survived)."""


class Calm:
    """Disruptive faults overlap freely; malformed injection needs a moment with none of them."""

    def __init__(self) -> None:
        self._disruptions = 0
        self._exclusive = False
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def disruption(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive)
            self._disruptions += 1
        try:
            yield
        finally:
            async with self._changed:
                self._disruptions -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive and not self._disruptions)
            self._exclusive = True
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive = False
                self._changed.notify_all()


class ChaosRun:
    def __init__(
        self,
        config: ChaosConfig,
        sim: Simulator,
        broker: LocalBroker | LocalCluster,
        topics: TopicNames,
        workdir: Path,
    ) -> None:
        self.config = config
        self.sim = sim
        self.broker = broker
        self.cluster = broker if isinstance(broker, LocalCluster) else None
        self.bootstrap = broker.bootstrap
        self.topics = topics
        self.workdir = workdir
        self.t0 = t0 = time.monotonic()
        self.steps = (
            list(config.steps)
            if config.steps is not None
            else plan(config.seed, config.faults, spacing=config.spacing)
        )
        if self.cluster is None and any(step.fault in CLUSTER for step in self.steps):
            raise ValueError("the cluster faults need a LocalCluster")
        self.outages: list[dict[str, Any]] = []
        self.calm = Calm()
        self.ledger = Ledger(sim)
        self.malformed = MalformedInjector(sim, config.seed)
        self.executed: Counter[str] = Counter()
        self.skipped: list[str] = []
        self.phases: dict[str, float] = {}
        self.group = f"chaos-{config.seed}-{uuid.uuid4().hex[:6]}"
        self.workers = [
            Service(f"worker-{i}", "worker", self._worker_env(), workdir / f"worker-{i}.log", t0)
            for i in range(config.workers)
        ]
        self._victims = random.Random(f"chaos-victims-{config.seed}")
        self.projector = Service(
            "projector", "projector", self._projector_env(), workdir / "projector.log", self.t0
        )
        self._locks = {fault: asyncio.Lock() for fault in Fault}
        self._actions: dict[Fault, Callable[[Step], Awaitable[None]]] = {
            Fault.KILL_WORKER: self._kill_worker,
            Fault.KILL_PROJECTOR: self._kill_projector,
            Fault.BROKER_RESTART: self._broker_restart,
            Fault.SIMULATOR_RESTART: self._simulator_restart,
            Fault.NOTIFIER_DOWNTIME: self._notifier_downtime,
            Fault.CONNECTION_DROP: self._connection_drop,
            Fault.STORM_503: self._storm,
            Fault.DUPLICATES: self._duplicates,
            Fault.MALFORMED: self._inject_malformed,
            Fault.SLOW_REST: self._slow,
            Fault.LEADER_KILL: self._leader_kill,
            Fault.ROLLING_RESTART: self._rolling_restart,
            Fault.MAJORITY_DOWN: self._majority_down,
            Fault.CLUSTER_CRASH: self._cluster_crash,
        }

    def _worker_env(self) -> dict[str, str]:
        env = worker_env(
            self.sim,
            self.bootstrap,
            self.topics,
            self.workdir,
            CUMI_STALL_TIMEOUT_SECONDS="6",
            CUMI_SHUTDOWN_TIMEOUT_SECONDS="15",
            CUMI_LOG_LEVEL="INFO",
        )
        if self.config.workers > 1:
            env |= {
                "CUMI_MAILBOX_SOURCE": "registry",
                "KAFKA_WORKER_GROUP": f"{self.group}-workers",
                "KAFKA_WORKER_SESSION_TIMEOUT_MS": "6000",  # the broker's minimum
                "KAFKA_WORKER_HEARTBEAT_INTERVAL_MS": "500",
            }
        return env

    @property
    def services(self) -> list[Service]:
        return [*self.workers, self.projector]

    async def _register_mailboxes(self) -> None:
        """The registry the workers share (scale-out only): every simulator mailbox."""
        kafka = load_kafka(SettingsSource(self._worker_env()))
        stamp = dt.datetime.now(dt.UTC).replace(microsecond=0)
        await apply_changes(kafka, [MailboxRegistryEntry(a, stamp) for a in self.sim.accounts], [])

    def _projector_env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_EVENTS_TOPIC": self.topics.events,
            "KAFKA_STATE_TOPIC": self.topics.state,
            "CUMI_PROJECTOR_GROUP_ID": self.group,
            "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": "200",
            # static membership: a restarted projector takes its partitions back at once
            "CUMI_PROJECTOR_GROUP_INSTANCE_ID": f"{self.group}-0",
            "CUMI_PROJECTOR_SESSION_TIMEOUT_MS": "10000",
            "CUMI_SHUTDOWN_TIMEOUT_SECONDS": "15",
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> ChaosResult:
        log.info("chaos seed %d schedule:\n  %s", self.config.seed, self.describe())
        try:
            if self.config.workers > 1:
                await self._register_mailboxes()
            for service in self.services:
                await service.start()
            for service in self.services:
                await service.wait_ready(120)
            self.phases["start"] = round(self.elapsed(), 1)
            self.sim.run_scenario(rate=self.config.rate)
            await self._play()
            self.phases["schedule"] = round(self.elapsed() - self.phases["start"], 1)
            log.info("schedule done in %.1f s", self.phases["schedule"])
            await self.sim.stop_scenario()
            self.sim.clear_faults()
            if not self.sim.notifier.is_up:
                self.sim.notifier_up()
            return await self._verify()
        finally:
            await self.sim.stop_scenario()
            for service in self.services:
                await service.terminate()
            await self.broker.start()  # every node that a failed run left down

    def describe(self) -> str:
        return "\n  ".join(step.describe() for step in self.steps)

    async def _play(self) -> None:
        if self.config.sequential is not None:
            for step in self.steps:
                await asyncio.sleep(self.config.sequential)
                await self._carry_out(step)
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.TaskGroup() as group:
            for step in self.steps:
                await asyncio.sleep(max(0.0, start + step.at - loop.time()))
                group.create_task(self._carry_out(step), name=f"fault-{step.fault.value}")

    async def _carry_out(self, step: Step) -> None:
        async with self._locks[step.fault]:
            log.info("+%.1f s: %s", self.elapsed(), step.describe())
            try:
                if step.fault in DISRUPTIVE:
                    async with self.calm.disruption():
                        await self._actions[step.fault](step)
                else:
                    await self._actions[step.fault](step)
            except Skipped as e:
                log.warning("%s skipped: %s", step.describe(), e)
                self.skipped.append(step.describe())
                return
            self.executed[step.fault.value] += 1

    # -- faults --------------------------------------------------------------------------------

    async def _kill_worker(self, step: Step) -> None:
        victim = self._victims.choice(self.workers)
        await victim.kill()
        await asyncio.sleep(step.hold)
        await victim.start()

    async def _kill_projector(self, step: Step) -> None:
        await self.projector.kill()
        await asyncio.sleep(step.hold)
        await self.projector.start()

    async def _broker_restart(self, step: Step) -> None:
        """The broker (every node of a cluster) stopped cleanly for `hold` s."""
        async with self._measured(step) as (meter, figures):
            await self.broker.stop()
            await meter.begin()
            await asyncio.sleep(step.hold)
            figures.update(meter.figures())  # while the broker is still away
            await self._restart_measured(meter, figures, self.broker.start)

    async def _leader_kill(self, step: Step) -> None:
        """SIGKILL of the leader of events partition 0 (and so of every partition it leads)."""
        cluster = self._need_cluster()
        leaders = await self._leaders()
        victim = cluster.nodes[leaders[0]]
        led = sorted(p for p, i in leaders.items() if i == leaders[0])
        async with (
            self._measured(step) as (meter, figures),
            self._end_offsets(len(leaders)) as offsets,
        ):
            figures.update({"node": victim.node_id, "partitions_led": len(led)})
            await meter.begin()
            killed = time.monotonic()
            await victim.kill()
            figures["failover_s"] = await self._failover(offsets, led, killed)
            await asyncio.sleep(max(0.0, killed + step.hold - time.monotonic()))
            figures.update(meter.figures())
            started = time.monotonic()
            await victim.start()
            await cluster.wait_healthy()
            figures["healthy_s"] = round(time.monotonic() - started, 1)
            figures["longest_stall_s"] = meter.longest_stall()

    async def _rolling_restart(self, step: Step) -> None:
        """Each node in turn: a clean stop (it hands its leaderships over), `hold` s down, a
        start, and the cluster healthy (every replica in sync) before the next one goes."""
        cluster = self._need_cluster()
        async with self._measured(step) as (meter, figures):
            await meter.begin()
            figures["nodes"] = nodes = []
            for node in cluster.nodes:
                began = time.monotonic()
                await node.stop()
                stopped = time.monotonic()
                await asyncio.sleep(step.hold)
                started = time.monotonic()
                await node.start()
                ready = time.monotonic()
                await cluster.wait_healthy()
                nodes.append(
                    {
                        "node": node.node_id,
                        "stop_s": round(stopped - began, 1),
                        "start_s": round(ready - started, 1),
                        "healthy_s": round(time.monotonic() - started, 1),
                    }
                )
            figures.update(meter.figures())
            figures["longest_stall_s"] = meter.longest_stall()

    async def _majority_down(self, step: Step) -> None:
        """Every node but one SIGKILLed: no KRaft quorum, fewer in-sync replicas than
        min.insync.replicas, so nothing can be acknowledged until they are back."""
        cluster = self._need_cluster()
        survivor = (await self._leaders())[0]
        victims = [node for i, node in enumerate(cluster.nodes) if i != survivor]
        async with self._measured(step) as (meter, figures):
            figures["nodes_down"] = [node.node_id for node in victims]
            await self._down_measured(meter, figures, step, *victims)

    async def _cluster_crash(self, step: Step) -> None:
        """Every node SIGKILLed at once (a power cut), started again after `hold` s."""
        cluster = self._need_cluster()
        async with self._measured(step) as (meter, figures):
            figures["nodes_down"] = [node.node_id for node in cluster.nodes]
            await self._down_measured(meter, figures, step, *cluster.nodes)

    async def _down_measured(
        self, meter: FaultMeter, figures: dict[str, Any], step: Step, *nodes: LocalBroker
    ) -> None:
        """`nodes` SIGKILLed for `hold` s, then started together (measured)."""
        cluster = self._need_cluster()
        await meter.begin()
        await asyncio.gather(*(node.kill() for node in nodes))
        killed = time.monotonic()
        await asyncio.sleep(step.hold)
        figures.update(meter.figures())
        # in-flight acknowledgements may land in the first moments; after that, none may
        figures["acknowledged_while_down"] = meter.acknowledged_since(killed + step.hold / 2)
        await self._restart_measured(meter, figures, cluster.start)
        started = time.monotonic()
        await cluster.wait_healthy()
        figures["healthy_s"] = round(time.monotonic() - started, 1)
        figures["longest_stall_s"] = meter.longest_stall()

    async def _restart_measured(
        self, meter: FaultMeter, figures: dict[str, Any], start: Callable[[], Awaitable[None]]
    ) -> None:
        """`start()` Kafka again; how long that took and until events were acknowledged again."""
        restarted = time.monotonic()
        await start()
        figures["start_s"] = round(time.monotonic() - restarted, 1)
        try:
            figures["resumed_s"] = await meter.resumed_after(restarted)
        except TimeoutError:
            log.error("no event acknowledged within 120 s of Kafka's restart")
            figures["resumed_s"] = None

    async def _failover(
        self, offsets: EndOffsets, partitions: list[int], lost: float
    ) -> float | None:
        """Seconds from `lost` (their leader killed) until each of `partitions` has a new leader
        that answers and took a write: the end offsets are read from the new leaders (what was
        acknowledged before), then waited on to grow."""
        try:
            async with asyncio.timeout(120):
                while True:
                    before = await offsets.read(partitions)
                    if before is not None:
                        break
                    await asyncio.sleep(0.2)
            await offsets.advanced(before)
        except TimeoutError:
            log.error("events partitions %s took no write within 120 s of the kill", partitions)
            return None
        return round(time.monotonic() - lost, 2)

    @contextlib.asynccontextmanager
    async def _measured(self, step: Step) -> AsyncIterator[tuple[FaultMeter, dict[str, Any]]]:
        """A meter for one Kafka fault (the action calls `begin()` when the fault starts) and the
        figures the action fills in, added to `outages` when the fault is over."""
        meter = FaultMeter(self.services, self.workers)
        figures: dict[str, Any] = {"fault": step.fault.value, "hold": step.hold}
        try:
            yield meter, figures
        finally:
            await meter.end()
        log.info("%s: %s", step.describe(), figures)
        self.outages.append(figures)

    @contextlib.asynccontextmanager
    async def _end_offsets(self, partitions: int) -> AsyncIterator[EndOffsets]:
        offsets = EndOffsets(self.bootstrap, self.topics.events, partitions)
        await offsets.start()
        try:
            yield offsets
        finally:
            await offsets.stop()

    def _need_cluster(self) -> LocalCluster:
        if self.cluster is None:
            raise Skipped("a cluster fault without a LocalCluster")
        return self.cluster

    async def _leaders(self) -> dict[int, int]:
        """Events partition → index in `cluster.nodes` of its running leader."""
        cluster = self._need_cluster()
        described = await describe_topic(self.topics.events, bootstrap_servers=self.bootstrap)
        assert described is not None, f"no topic {self.topics.events}"
        return {p: await cluster.leader_of(self.topics.events, p) for p in range(described[0])}

    async def _simulator_restart(self, step: Step) -> None:
        self.sim.restart()

    async def _notifier_downtime(self, step: Step) -> None:
        self.sim.notifier_down()
        await asyncio.sleep(step.hold)
        self.sim.notifier_up()

    async def _connection_drop(self, step: Step) -> None:
        self.sim.drop_connections()

    async def _storm(self, step: Step) -> None:
        self.sim.storm(step.hold)
        await asyncio.sleep(step.hold)

    async def _duplicates(self, step: Step) -> None:
        self.sim.duplicates(step.size)
        await asyncio.sleep(step.hold)
        self.sim.duplicates(0)

    async def _slow(self, step: Step) -> None:
        self.sim.slow(step.size)
        await asyncio.sleep(step.hold)
        self.sim.slow(0)

    async def _inject_malformed(self, step: Step) -> None:
        """In a calm moment (no disruptive fault, the worker ready, its session the only one), so
        each payload is known to reach the worker; then wait until all of them are dead letters
        before letting disruptions go on (none of them may be lost in flight)."""
        async with self.calm.exclusive():
            if not await self._quiet(within=90):
                raise Skipped("no calm moment within 90 s")
            before = self.malformed.deliveries + self.sim.stats.corrupted_malformed
            self.malformed.inject(int(step.size))
            self.sim.corrupt(CORRUPT_RATIO)  # real events replaced, while the scenario plays
            await asyncio.sleep(CORRUPT_SECONDS)
            self.sim.corrupt(0)
            expected = self.malformed.deliveries + self.sim.stats.corrupted_malformed
            log.info("injected %d malformed deliveries", expected - before)
            reader = TopicReader(self.bootstrap, self.topics.dlq)
            await reader.start()
            try:
                async with asyncio.timeout(60):
                    while len(reader.decoded()) < expected:
                        await reader.catch_up()
                        await asyncio.sleep(0.2)
            except TimeoutError:
                log.error("dead letters: %d of %d", len(reader.decoded()), expected)
            finally:
                await reader.stop()

    async def _quiet(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (
                len(self.sim.bayeux.sessions) == len(self.workers)
                and self.sim.notifier.is_up
                and all([await worker.ready() for worker in self.workers])
                and self.malformed.live_channels()
            ):
                return True
            await asyncio.sleep(0.2)
        return False

    # -- invariants ----------------------------------------------------------------------------

    async def _verify(self) -> ChaosResult:
        schedule_end = self.elapsed()
        for service in self.services:
            await service.wait_ready(120)
        mismatches: dict[str, int] = {}
        events = TopicReader(self.bootstrap, self.topics.events)
        await events.start()
        try:
            problems = await self._converge(events)
            converged_after = self.elapsed() - schedule_end
            self.phases["converge"] = round(converged_after, 1)
            mismatches["events topic fold vs truth"] = len(problems)
            for problem in problems[:5]:
                log.error("fold vs truth: %s\n%s", problem, self._story(problem, events))
            invented = self.ledger.invented(events.decoded(), self.sim)
            for problem in invented[:10]:
                log.error("%s", problem)
            mismatches["invented records on the events topic"] = len(invented)
            mismatches["undecodable records"] = events.undecodable
            mismatches.update(await self._check_dead_letters())
            # first: nothing the workers hold is still to be written (the fold can converge on
            # snapshots while held events, stale by then, are still on their way)
            mismatches["received but not acknowledged"] = await self._check_received()
            mismatches.update(await self._check_projector(events))
        finally:
            await events.stop()
        mismatches.update(await self._stop_and_check_logs())
        self.phases["check"] = round(self.elapsed() - schedule_end - converged_after, 1)
        decoded = events.decoded()
        stats = self.sim.stats
        return ChaosResult(
            seed=self.config.seed,
            workers=self.config.workers,
            schedule=[step.describe() for step in self.steps],
            faults=dict(sorted(self.executed.items())),
            skipped=self.skipped,
            events_emitted=self.sim.stats.emitted_total,
            log_records=len(decoded),
            snapshots=sum(1 for r in decoded if isinstance(r, MailboxSnapshot)),
            dead_letters=self._dead_letter_count,
            malformed_injected=len(self.malformed.injected),
            malformed_deliveries=self.malformed.deliveries,
            seconds=round(self.elapsed(), 1),
            phases=self.phases,
            server_side={
                "lost": stats.lost,
                "withheld": stats.withheld,
                "coalesced": stats.coalesced,
                "duplicated": stats.duplicates,
                "dropped": stats.dropped,
                "restarts": stats.restarts,
                "corrupted": stats.corrupted,
                "corrupted_dead_letters": stats.corrupted_malformed,
            },
            mismatches=mismatches,
            unplanned_exits={
                s.name: [(round(e.at, 1), e.code) for e in s.stats.unplanned_exits]
                for s in self.services
            },
            starts={s.name: s.stats.starts for s in self.services},
            outages=self.outages,
        )

    async def _converge(self, events: TopicReader) -> list[str]:
        """Until the fold of the events topic equals the truth (or the time is up)."""
        truth = self.sim.truth()
        deadline = time.monotonic() + self.config.converge_within
        while True:
            await events.catch_up()
            problems = diff_states(truth, events.projection.to_json())
            if not problems or time.monotonic() > deadline:
                return problems
            await asyncio.sleep(1.0)

    def _story(self, problem: str, events: TopicReader) -> str:
        """What the simulator sent and what the events topic holds about the message of a
        `diff_states` line ("<mailbox>: message <id> expected …")."""
        words = problem.split()
        if len(words) < 3 or words[1] != "message":
            return ""
        message_id = words[2]
        sent = self.ledger.history.get(message_id, [])
        logged = events.history(message_id)
        return "  simulator: " + "; ".join(sent) + "\n  events topic: " + "; ".join(logged)

    _dead_letter_count = 0

    async def _check_dead_letters(self) -> dict[str, int]:
        reader = TopicReader(self.bootstrap, self.topics.dlq)
        await reader.start()
        try:
            await reader.catch_up()
            letters = reader.decoded()
        finally:
            await reader.stop()
        self._dead_letter_count = len(letters)
        return self.malformed.check(letters, self.sim.stats.corrupted_malformed)

    async def _check_projector(self, events: TopicReader) -> dict[str, int]:
        """Caught up with the events topic: its state topic and read API against the truth and
        against the fold of the very same records (the state is read while the events topic's
        ends are the ones the fold and the group's committed offsets have reached)."""
        for _ in range(5):
            ends = await events.catch_up()
            # no liveness check: an exit is restarted by the supervisor and caught up again
            await wait_committed(self.bootstrap, self.group, self.topics.events, within=180)
            state = await read_state_topic(self.topics.state, bootstrap_servers=self.bootstrap)
            if await events.catch_up() == ends:
                break
            log.info("the events topic grew while the state was read: again")
        truth = self.sim.truth()
        projected = {m: MailboxState.from_record(r).to_json() for m, r in state.items()}
        exact = state_differences(events.projection, state)
        for problem in exact[:10]:
            log.error("state topic vs fold: %s", problem)
        served = await self._read_api(truth)
        return {
            "state topic vs truth": len(diff_states(truth, projected)),
            "state topic vs fold (exactly once)": len(exact),
            "read API vs truth": served,
        }

    async def _read_api(self, truth: dict[str, Any]) -> int:
        """Mailboxes the read API serves differently from the truth (or not at all)."""
        wrong = 0
        for mailbox_id, expected in truth.items():
            status, text = await self.projector.get_text(f"/mailboxes/{mailbox_id}")
            body = json.loads(text) if status == 200 else {}
            served = {k: body.get(k) for k in ("inbox", "deleted", "usn")} if body else {}
            empty = not expected["inbox"] and not expected["deleted"] and not expected["usn"]
            if (status == 404 and empty) or not diff_states(
                {mailbox_id: expected}, {mailbox_id: served}
            ):
                continue
            wrong += 1
        return wrong

    async def _check_received(self, within: float = 60.0) -> int:
        """Event messages each worker process received and Kafka did not acknowledge (as events
        or dead letters), by its own counters: 0 once everything in flight is acknowledged."""
        deadline = time.monotonic() + within
        while True:
            missing = 0
            for worker in self.workers:
                totals = await worker_totals(worker) or Counter[str]()
                missing += totals["cumi_worker_events_received_total"] - (
                    totals["cumi_worker_events_published_total"]
                    + totals["cumi_worker_events_dead_lettered_total"]
                )
            if missing == 0 or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(1.0)

    async def _stop_and_check_logs(self) -> dict[str, int]:
        codes = {s.name: await s.terminate() for s in self.services}
        secrets = self._secrets()
        leaked = 0
        for service in self.services:
            text = service.log_text()
            leaked += sum(1 for secret in secrets if secret in text)
        return {
            "secrets in process logs": leaked,
            "unclean final exits": sum(1 for code in codes.values() if code != 0),
        }

    def _secrets(self) -> list[str]:
        found = []
        for alias, user in self.sim.accounts.items():
            found.append(user.password)
            token = base64.b64encode(f"{alias}:{user.password}".encode()).decode()
            found.append(token)
        return found


def summary_line(result: ChaosResult) -> str:
    faults = sum(result.faults.values())
    return (
        f"seed {result.seed} ({result.workers} worker{'s' if result.workers > 1 else ''}): "
        f"{faults} faults survived, {result.events_emitted} events, "
        f"{result.log_records} log records ({result.snapshots} snapshots), "
        f"{result.dead_letters} dead letters for {result.malformed_deliveries} malformed "
        f"deliveries, {result.seconds:.0f} s, {result.total_mismatches} mismatches"
    )
