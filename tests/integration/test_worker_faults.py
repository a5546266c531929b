"""The worker under faults: each run ends with the fold of the events topic equal to the truth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually, holds
from fixtures.worker import (
    decode_all,
    fold_records,
    metric,
    read_topic,
    running_worker,
    settle,
    worker_env,
)

from ingest.devservices.kafka import LocalBroker
from ingest.eventlog.topics import TopicNames
from ingest.events import MailboxEvent, MailboxSnapshot
from ingest.simulator import Simulator
from ingest.state.projection import diff_states
from ingest.worker import Worker

pytestmark = pytest.mark.integration


async def assert_fold_equals_truth(
    worker: Worker, sim: Simulator, bootstrap: str, topic: str
) -> list[object]:
    """Settle, then compare; a last repair may still be landing, so look again a few times."""
    await settle(worker, sim)
    problems: list[str] = []
    for _ in range(10):
        decoded = decode_all(await read_topic(bootstrap, topic))
        problems = diff_states(sim.truth(), fold_records(decoded))
        if not problems:
            return decoded
        await asyncio.sleep(1.0)
        await settle(worker, sim)
    raise AssertionError(
        f"{len(problems)} differences, e.g. {problems[:5]}\n{sim.stats}\n"
        + "\n".join(_history(decoded, problems[0].split(":")[0]))
    )


def _history(decoded: list[object], mailbox_id: str) -> list[str]:
    """The records of one mailbox, for a failure message."""
    lines = []
    for record in decoded:
        if isinstance(record, MailboxSnapshot) and record.mailbox_id == mailbox_id:
            inbox = [m.message_id[:8] for m in record.inbox]
            deleted = [m.message_id[:8] for m in record.deleted]
            lines.append(f"snapshot usn={record.usn} {record.reason} in={inbox} del={deleted}")
        elif isinstance(record, MailboxEvent) and record.mailbox_id == mailbox_id:
            ids = [m.message_id[:8] for m in record.messages]
            lines.append(f"event usn={record.usn} {record.event_type.value} {ids}")
    return lines


class TestServerFaults:
    """Faults on the CUMI side."""

    async def test_restart_and_connection_drops_mid_stream(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=200, seed=21)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        restarts = metric("cumi_worker_session_restarts_total", reason="unknown-client")
        async with running_worker(env) as worker:
            assert worker.manager is not None
            sim.run_scenario(events=6_000, rate=2_000)
            await asyncio.sleep(0.8)
            sim.drop_connections()
            await asyncio.sleep(0.8)
            sim.restart()  # every session and subscription is gone
            await asyncio.sleep(0.8)
            sim.drop_connections()
            decoded = await assert_fold_equals_truth(
                worker, sim, kafka_bootstrap, fresh_topics.events
            )
            assert worker.manager.sessions_started >= 2
            assert worker.manager.counts()["active"] == 200
        assert metric("cumi_worker_session_restarts_total", reason="unknown-client") > restarts
        reasons = {d.reason for d in decoded if isinstance(d, MailboxSnapshot)}
        assert {"startup", "session-lost"} <= reasons

    async def test_restart_that_forgets_subscriptions_yet_accepts_old_ids(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        """A stock CometD server accepts a subscribe to any channel: after a restart that dropped
        the notification subscriptions, only a fresh requestnotification gets events again."""
        sim = await make_simulator(mailboxes=50, seed=26, refuse_unknown_channels=False)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        async with running_worker(env) as worker:
            manager = worker.manager
            assert manager is not None
            sim.emit(200)
            await settle(worker, sim)
            sim.restart()
            await eventually(
                lambda: manager.sessions_started >= 2 and worker.is_ready(),
                within=30,
                what="a second session, ready",
                interval=0.05,
            )
            dead = [
                m.alias
                for m in manager.mailboxes.values()
                if sim.subscriptions.mailbox_of(m.subscription_id or "") != m.alias
            ]
            assert dead == [], f"{len(dead)} mailboxes on channels nothing publishes to"
            assert manager.counts()["active"] == 50
            sim.emit(500)
            await assert_fold_equals_truth(worker, sim, kafka_bootstrap, fresh_topics.events)
        assert sim.stats.lost == 0

    async def test_notifier_downtime(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=100, seed=22)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        async with running_worker(env) as worker:
            sim.emit(1_000)
            sim.notifier_down()
            sim.emit(2_000)  # only the latest status of each changed message comes later
            await asyncio.sleep(0.3)
            sent = sim.notifier_up()
            assert 0 < sent < 2_000
            sim.emit(1_000)
            await assert_fold_equals_truth(worker, sim, kafka_bootstrap, fresh_topics.events)
        assert sim.stats.withheld == 2_000

    async def test_503_storm_during_subscription(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=300, seed=23, retry_after=None)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        sim.storm(1.5)
        async with running_worker(env) as worker:
            assert worker.manager is not None
            counts = worker.manager.counts()
            # a mailbox that ran out of attempts during the storm is retried after its backoff
            async with asyncio.timeout(60):
                while worker.manager.counts()["active"] < 300:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            sim.run_scenario(events=3_000)
            await assert_fold_equals_truth(worker, sim, kafka_bootstrap, fresh_topics.events)
        assert sim.stats.rest_throttled > 0
        assert counts["failed"] == 0


class TestKafkaFaults:
    """The broker stops mid-stream: the worker stops pulling at its bound, then catches up."""

    async def test_broker_stop_start_mid_stream(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        kafka_broker: LocalBroker,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=100, seed=24, max_batch=200)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path, CUMI_QUEUE_SIZE="1000")
        blocked = metric("cumi_worker_backpressure_seconds_total")
        before = metric("cumi_worker_events_received_total")
        async with running_worker(env) as worker:
            assert worker.sink is not None
            sim.run_scenario(events=6_000, rate=1_000)
            await eventually(
                lambda: metric("cumi_worker_events_received_total") > before + 100,
                within=30,
                what="events flowing before the broker stops",
            )
            await kafka_broker.stop()
            # the window fills, then no more pulling from CometD while nothing can be acknowledged
            seen = [-1.0]

            def stopped_pulling() -> bool:
                before, seen[0] = seen[0], metric("cumi_worker_events_received_total")
                return seen[0] == before

            await eventually(stopped_pulling, within=30, what="receiving stops", interval=0.5)
            received = seen[0]
            await holds(
                lambda: metric("cumi_worker_events_received_total") == received,
                "no more received while blocked",
                for_s=1.5,
            )
            assert worker.sink.window.used > 0
            await kafka_broker.start()
            await assert_fold_equals_truth(worker, sim, kafka_bootstrap, fresh_topics.events)
            assert worker.sink.window.peak <= 1000
            assert worker.sink.fatal is None
        assert metric("cumi_worker_backpressure_seconds_total") > blocked


class FreezingProxy:
    """A loopback TCP proxy that can stop forwarding without closing anything: a silent stall."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.close()


class TestStall:
    """The CometD server stops answering without closing anything: the watchdog replaces it."""

    async def test_silent_stall_restarts_the_session(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=50, seed=25)
        proxy = FreezingProxy(int(sim.cometd_url.split(":")[2].split("/")[0]))
        await proxy.start()
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            CUMI_COMETD_URL=f"http://127.0.0.1:{proxy.port}/vmevents/cometd",
            CUMI_STALL_TIMEOUT_SECONDS="2",
            CUMI_REST_TIMEOUT_SECONDS="3",
        )
        stalls = metric("cumi_worker_stalls_total")
        try:
            async with running_worker(env) as worker:
                assert worker.manager is not None
                sim.run_scenario(events=1_500, rate=500)
                await asyncio.sleep(0.5)
                proxy.freeze()
                async with asyncio.timeout(20):
                    while metric("cumi_worker_stalls_total") == stalls:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                proxy.thaw()
                await assert_fold_equals_truth(worker, sim, kafka_bootstrap, fresh_topics.events)
                assert worker.manager.sessions_started >= 2
        finally:
            await proxy.stop()
        assert metric("cumi_worker_session_restarts_total", reason="stall") >= 1
