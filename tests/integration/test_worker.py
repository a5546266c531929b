"""The ingest worker end to end: simulator over real sockets → worker → the real Kafka broker."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import pytest
from fixtures.simulator import MakeSimulator
from fixtures.worker import (
    decode_all,
    decode_as,
    fold_records,
    metric,
    read_topic,
    running_worker,
    settle,
    worker_env,
)

from ingest.eventlog import codec
from ingest.eventlog.topics import TopicNames
from ingest.events import DeadLetter, MailboxEvent, MailboxSnapshot, RejectReason
from ingest.state.projection import diff_states

pytestmark = pytest.mark.integration


class TestCleanRun:
    """500 mailboxes, 10,000+ events (with injected duplicates): the log is complete and right."""

    async def test_every_emission_exactly_once_and_fold_equals_truth(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=500, seed=7, initial_messages=2)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        async with running_worker(env) as worker:
            assert worker.manager is not None
            assert worker.manager.counts()["active"] == 500
            sim.duplicates(0.02)
            sim.run_scenario(events=10_000)
            await settle(worker, sim)
        stats = sim.stats
        assert stats.emitted_total == 10_000 and stats.lost == 0 and stats.dropped == 0
        assert stats.duplicates > 0

        records = await read_topic(kafka_bootstrap, fresh_topics.events)
        decoded = decode_all(records)  # every record decodes with the schema
        events = [d for d in decoded if isinstance(d, MailboxEvent)]
        snapshots = [d for d in decoded if isinstance(d, MailboxSnapshot)]
        # exactly once per emission: each duplicate the simulator injected is one more record
        assert len(events) == stats.emitted_total + stats.duplicates
        identity = Counter(
            (e.mailbox_id, e.usn, e.event_type, tuple(m.message_id for m in e.messages))
            for e in events
        )
        assert sum(n - 1 for n in identity.values()) == stats.duplicates
        assert Counter(key[2].value for key in identity) == Counter(stats.emitted)
        # one start-up snapshot per mailbox, keyed like the events
        assert sorted(s.mailbox_id for s in snapshots) == sorted(sim.accounts)
        assert {s.reason for s in snapshots} == {"startup"}
        # keyed by MailboxId, and per mailbox in USN order
        usns: dict[str, list[int]] = defaultdict(list)
        partition_of: dict[str, set[int]] = defaultdict(set)
        for record, value in zip(records, decoded, strict=True):
            assert record.key == value.mailbox_id.encode()
            partition_of[value.mailbox_id].add(record.partition)
            if isinstance(value, MailboxEvent):
                usns[value.mailbox_id].append(value.usn)
                assert dict(record.headers)["cumi.event_type"] == value.event_type.value.encode()
                assert record.timestamp == codec.timestamp_ms(value)
        assert all(len(p) == 1 for p in partition_of.values())
        assert all(u == sorted(u) for u in usns.values())
        assert diff_states(sim.truth(), fold_records(decoded)) == []


class TestDeadLetters:
    """Malformed payloads go to the dead-letter topic with reasons; the counts add up."""

    async def test_malformed_events_are_dead_lettered(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=50, seed=11)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        before = {r.value: metric("cumi_worker_events_dead_lettered_total", reason=r.value)
                  for r in RejectReason}  # fmt: skip
        async with running_worker(env) as worker:
            sim.malformed(0.1)
            sim.run_scenario(events=2_000)
            await settle(worker, sim)
            received = metric("cumi_worker_events_received_total")
        assert sim.stats.malformed > 50

        letters = [
            decode_as(DeadLetter, r.value)
            for r in await read_topic(kafka_bootstrap, fresh_topics.dlq)
        ]
        assert len(letters) == sim.stats.malformed
        reasons = Counter(d.reason for d in letters)
        assert set(reasons) <= {r.value for r in RejectReason}
        assert len(reasons) >= 3  # the simulator's malformed kinds map to different reasons
        assert all(d.raw and d.detail and d.source == "sim" for d in letters)
        for reason, count in reasons.items():
            after = metric("cumi_worker_events_dead_lettered_total", reason=reason)
            assert after - before[reason] == count
        events = [d for d in decode_all(await read_topic(kafka_bootstrap, fresh_topics.events))
                  if isinstance(d, MailboxEvent)]  # fmt: skip
        assert len(events) == sim.stats.emitted_total
        assert received >= len(events) + len(letters)
        assert diff_states(sim.truth(), fold_records(decode_all(
            await read_topic(kafka_bootstrap, fresh_topics.events)))) == []  # fmt: skip


class TestAuthFailure:
    """A mailbox whose password is refused is marked failed; the others carry on."""

    async def test_one_bad_password(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=20, seed=3)
        users = sim.accounts.to_json()
        users["user0005"]["password"] = "wrong-password"
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path, users=users)
        failures = metric("cumi_worker_auth_failures_total")
        async with running_worker(env) as worker:
            assert worker.manager is not None
            assert worker.manager.counts()["failed"] == 1
            assert worker.manager.counts()["active"] == 19
            assert metric("cumi_worker_auth_failures_total") - failures == 1
            assert metric("cumi_worker_subscriptions", state="failed") == 1
            sim.run_scenario(events=1_000)
            await settle(worker, sim)
            assert worker.ops is not None
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{worker.ops.port}"
                async with http.get(f"{url}/healthz/ready") as response:
                    assert response.status == 200
                async with http.get(f"{url}/metrics") as response:
                    text = await response.text()
        assert "wrong-password" not in text and "user0005" not in text
        # its own registry only, with every dead-letter reason exported
        assert "cumi_projector_" not in text and "process_start_time_seconds" in text
        dead = "cumi_worker_events_dead_lettered_total"
        assert all(f'{dead}{{reason="{r.value}"}} ' in text for r in RejectReason)
        truth = sim.truth()
        folded = fold_records(decode_all(await read_topic(kafka_bootstrap, fresh_topics.events)))
        others = {k: v for k, v in truth.items() if k != "user0005"}
        assert diff_states(others, {k: v for k, v in folded.items() if k != "user0005"}) == []
        assert "user0005" not in folded


class TestWebSocket:
    """The same pipeline over the WebSocket transport."""

    async def test_websocket(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=100, seed=5)
        env = worker_env(
            sim, kafka_bootstrap, fresh_topics, tmp_path, CUMI_COMET_TRANSPORT="websocket"
        )
        async with running_worker(env) as worker:
            sim.run_scenario(events=3_000)
            await settle(worker, sim)
        decoded = decode_all(await read_topic(kafka_bootstrap, fresh_topics.events))
        assert sum(isinstance(d, MailboxEvent) for d in decoded) == 3_000
        assert diff_states(sim.truth(), fold_records(decoded)) == []


class TestDelegate:
    """A delegate account with userobjectid serves every mailbox (no per-user secrets)."""

    async def test_delegate_account(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=20, seed=9, initial_messages=3)
        secret = tmp_path / "delegate-password"
        secret.write_text(sim.delegate.password + "\n")
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            CUMI_CREDENTIALS_PROVIDER="delegate",
            CUMI_DELEGATE_USER=sim.delegate.username,
            CUMI_DELEGATE_PASSWORD_FILE=str(secret),
        )
        lookups = metric("cumi_worker_rest_requests_total", endpoint="users", status="200")
        async with running_worker(env) as worker:
            assert worker.manager is not None
            assert worker.manager.counts()["active"] == 20
            sim.run_scenario(events=600)
            await settle(worker, sim)
        # one lookup per alias, cached for the notification request and the listings
        assert metric("cumi_worker_rest_requests_total", endpoint="users", status="200") == (
            lookups + 20
        )
        decoded = decode_all(await read_topic(kafka_bootstrap, fresh_topics.events))
        assert diff_states(sim.truth(), fold_records(decoded)) == []
