"""The real `ingest worker` process against the reference CometD server (CometD 9 on Jetty 12,
default options): REST from the simulator, Bayeux from the Java server, real Kafka.

The simulator runs in bridge mode: its Notifier publishes every event through the reference
server's publish hook, so the events the worker receives went through CometD itself. Over both
transports, with the server given by IP address (where long-polling needs the BAYEUX_BROWSER
cookie kept) and by name, through restarts of the server — at once, and after 20 s down — every
event published once the worker has resubscribed must be in Kafka exactly once, in publish order
per mailbox, and the fold of the log must equal the simulator's truth.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually
from fixtures.worker import decode_all, fold_records, read_topic, worker_env

from ingest.devservices.cometd import LocalCometdServer
from ingest.errors import DevServiceError
from ingest.eventlog.topics import TopicNames
from ingest.events import MailboxEvent
from ingest.simulator import Simulator
from ingest.state.projection import diff_states

pytestmark = pytest.mark.integration

MAILBOXES = 300
EVENTS_PER_PHASE = 400
DOWN_S = 20.0
"""How long the server stays down in the long outage (the issue's "after 20 s down")."""

Published = dict[str, list[tuple[int, str]]]
"""mailbox → (USN, EventType) of each event, in publish order."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    """`python -m ingest worker` with the given settings; its ops port answers /healthz."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self._env = {**os.environ, **env, "CUMI_METRICS_PORT": str(self.port)}
        self._log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ingest", "worker", env=self._env, stdout=out, stderr=out
            )

    async def ready(self) -> bool:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"the worker exited {self.process.returncode}:\n{self.log()}")
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{self.port}/healthz/ready") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def stop(self) -> int:
        """SIGTERM, then the exit code (killed after a bound)."""
        process = self.process
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode or 0

    def log(self) -> str:
        return self._log.read_text(errors="replace")[-6000:]


async def resubscribed(sim: Simulator, ref: LocalCometdServer, worker: WorkerProcess) -> str:
    """What is still missing before every mailbox listens on its current subscription."""
    if not await worker.ready():
        return "the worker is not ready"
    try:
        channels = await ref.channels()
    except (DevServiceError, aiohttp.ClientError, OSError) as e:  # still starting
        return f"the server's hook: {e!r}"
    missing = [
        alias
        for alias in sim.accounts
        if not (ids := sim.subscriptions.of_mailbox(alias))
        or channels.get(f"/vmrest/mailbox/{ids[-1]}", 0) < 1
    ]
    return f"{len(missing)} mailboxes not subscribed on the server" if missing else ""


async def resubscribe(
    sim: Simulator, ref: LocalCometdServer, worker: WorkerProcess, when: str, within: float
) -> None:
    await eventually(
        lambda: resubscribed(sim, ref, worker), within=within, what=f"resubscribed {when}"
    )


async def publish(sim: Simulator, into: Published, bootstrap: str, topic: str) -> None:
    """Publish a phase of events and wait until every event published so far is in Kafka."""
    for change in sim.emit_changes(EVENTS_PER_PHASE):
        into[change.mailbox.alias].extend((n.usn, n.event_type.value) for n in change.notices)
    await eventually(
        lambda: _missing(into, bootstrap, topic),
        within=30,
        what="every event published after a resubscribe in Kafka exactly once, in order",
        interval=0.5,
    )


async def kafka_events(bootstrap: str, topic: str) -> dict[str, list[tuple[int, str]]]:
    """mailbox → (USN, EventType) of its event records, in log order."""
    found: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for record in decode_all(await read_topic(bootstrap, topic)):
        if isinstance(record, MailboxEvent):
            found[record.mailbox_id].append((record.usn, record.event_type.value))
    return found


def out_of_order(published: Published, found: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Mailboxes whose published events are not in the log exactly once, in publish order."""
    problems = []
    for alias, sent in published.items():
        wanted = set(sent)
        got = [event for event in found.get(alias, []) if event in wanted]
        if got != sent:
            problems.append(f"{alias}: sent {len(sent)}, in the log {len(got)} (or out of order)")
    return problems


@dataclass(frozen=True)
class Bridged:
    """The reference server and a simulator publishing through its hook (REST stays here)."""

    ref: LocalCometdServer
    sim: Simulator


@pytest.fixture
async def bridged(ref_cometd: LocalCometdServer, make_simulator: MakeSimulator) -> Bridged:
    sim = await make_simulator(
        mailboxes=MAILBOXES, seed=151, publish_hook=f"{ref_cometd.base_url}/_ref/publish"
    )
    return Bridged(ref_cometd, sim)


@dataclass(frozen=True)
class Case:
    transport: str
    host: str
    """The server given by IP address or by name."""
    outage: bool
    """Besides a restart at once, a restart after DOWN_S seconds down."""


CASES = [
    pytest.param(Case("long-polling", "127.0.0.1", True), id="long-polling-by-ip-with-outage"),
    pytest.param(Case("long-polling", "localhost", False), id="long-polling-by-name"),
    pytest.param(Case("websocket", "127.0.0.1", False), id="websocket-by-ip"),
    pytest.param(Case("websocket", "localhost", True), id="websocket-by-name-with-outage"),
]


class TestReferenceServer:
    """The worker meets CometD as it is shipped."""

    @pytest.mark.timeout(180)
    @pytest.mark.parametrize("case", CASES)
    async def test_every_event_after_each_resubscribe_in_order(
        self,
        bridged: Bridged,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
        case: Case,
    ) -> None:
        ref, sim = bridged.ref, bridged.sim
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            CUMI_COMETD_URL=ref.cometd_url_for(case.host),
            CUMI_COMET_TRANSPORT=case.transport,
            CUMI_SUBSCRIBE_BATCH_SIZE="1000",  # over 64 KiB on a WebSocket unless cut by size
            CUMI_LOG_FORMAT="text",
        )
        worker = WorkerProcess(env, tmp_path / "worker.log")
        published: Published = defaultdict(list)
        await worker.start()
        try:
            await resubscribe(sim, ref, worker, "at start", within=60)
            await publish(sim, published, kafka_bootstrap, fresh_topics.events)

            sim.restart()  # Connection's Jetty restart: the notification subscriptions go too
            await ref.restart()
            await resubscribe(sim, ref, worker, "after a restart", within=30)
            await publish(sim, published, kafka_bootstrap, fresh_topics.events)

            if case.outage:
                sim.restart()
                await ref.stop()
                sim.emit(100)  # lost with the server down: only gap repair brings them back
                await asyncio.sleep(DOWN_S)  # the outage itself, not a wait for a condition
                await ref.start()
                await resubscribe(sim, ref, worker, f"after {DOWN_S:g} s down", within=40)
                await publish(sim, published, kafka_bootstrap, fresh_topics.events)

            await eventually(
                lambda: _fold_differs(sim, kafka_bootstrap, fresh_topics.events),
                within=60,
                what="the fold of the log equals the truth",
                interval=1.0,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- worker log (tail) ---\n{worker.log()}") from e
        finally:
            code = await worker.stop()
        assert code == 0, worker.log()
        log = worker.log()
        assert "Traceback" not in log, log
        assert "session None" not in log
        assert "subscribe refused" not in log


async def _missing(published: Published, bootstrap: str, topic: str) -> list[str]:
    return out_of_order(published, await kafka_events(bootstrap, topic))


async def _fold_differs(sim: Simulator, bootstrap: str, topic: str) -> list[str]:
    return diff_states(sim.truth(), fold_records(decode_all(await read_topic(bootstrap, topic))))
