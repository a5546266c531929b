"""Hostile payloads through the real worker path: the simulator puts them on a live channel, the
worker (CometD → parser → Kafka) dead-letters what it can read, survives what it cannot, and the
events topic still folds to the truth afterwards."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually
from fixtures.worker import (
    decode_all,
    fold_records,
    metric,
    read_topic,
    running_worker,
    settle,
    worker_env,
)

from ingest.cumi.normalizer import MAX_DEAD_LETTER_RAW
from ingest.eventlog.topics import TopicNames
from ingest.events import DeadLetter, MailboxEvent, MailboxSnapshot, RejectReason, RepairReason
from ingest.simulator import Simulator
from ingest.simulator.comet import bayeux_message, channel_of, event_data
from ingest.state.projection import diff_states
from ingest.worker import Worker

pytestmark = pytest.mark.integration

BIG = 5 * 1024 * 1024
"""Five times the parser's limit and the default Kafka message size."""


def channels(sim: Simulator, alias: str) -> list[str]:
    return [channel_of(s) for s in sim.subscriptions.of_mailbox(alias)]


def notification(sim: Simulator, alias: str, **fields: Any) -> dict[str, Any]:
    """A well-formed NEW_MESSAGE for `alias` (never in the truth), with `fields` replaced."""
    data = event_data(
        infos=[{"MessageId": "ghost-" + "0" * 30, "MsgType": "Voice"}],
        usn=sim.scenario.mailboxes[alias].usn,
        event_time="11:15:40 PM 10/30/2008",
        subscription_id=sim.subscriptions.of_mailbox(alias)[0],
        mailbox_id=alias,
        event_type="NEW_MESSAGE",
        display_name="Ghost",
    )
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


async def dead_letters(bootstrap: str, topic: str, count: int) -> list[DeadLetter]:
    async with asyncio.timeout(30):
        while True:
            letters = [
                d
                for d in decode_all(await read_topic(bootstrap, topic))
                if isinstance(d, DeadLetter)
            ]
            if len(letters) >= count:
                return letters
            await asyncio.sleep(0.3)


async def assert_converges(worker: Worker, sim: Simulator, bootstrap: str, topic: str) -> None:
    problems: list[str] = []
    for _ in range(10):
        await settle(worker, sim)
        problems = diff_states(
            sim.truth(), fold_records(decode_all(await read_topic(bootstrap, topic)))
        )
        if not problems:
            return
        await asyncio.sleep(1.0)
    raise AssertionError(f"{len(problems)} differences, e.g. {problems[:5]}")


class TestHostilePayloads:
    """What a broken or malicious server sends cannot stop the worker or poison the log."""

    async def test_huge_payloads_dead_lettered_truncated_and_worker_keeps_running(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=20, seed=51)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        async with running_worker(env) as worker:
            sim.emit(300)
            alias = "user0003" if "user0003" in sim.accounts else next(iter(sim.accounts))
            # malformed (no USN) and huge; then well-formed but huge: both must be refused
            broken = notification(sim, alias, USN=None, DisplayName="x" * BIG)
            too_big = notification(sim, alias, DisplayName="y" * BIG)
            for payload in (broken, too_big):
                for channel in channels(sim, alias):
                    assert sim.bayeux.deliver(channel, bayeux_message(channel, payload)) == 1
            letters = await dead_letters(kafka_bootstrap, fresh_topics.dlq, 2)
            assert worker.sink is not None and worker.sink.fatal is None
            assert worker.is_ready()
            sim.emit(300)
            await assert_converges(worker, sim, kafka_bootstrap, fresh_topics.events)
        by_reason = {letter.reason: letter for letter in letters}
        assert set(by_reason) == {RejectReason.MISSING_FIELD, RejectReason.TOO_LARGE}
        for letter in letters:
            assert len(letter.raw) == MAX_DEAD_LETTER_RAW
            assert "raw truncated from" in letter.detail
            assert letter.mailbox_id == alias
        assert by_reason[RejectReason.MISSING_FIELD].field == "USN"

    async def test_undecodable_nesting_is_survived_and_repaired(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=20, seed=52)
        env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
        async with running_worker(env) as worker:
            sim.emit(200)
            alias = next(iter(sim.accounts))
            # too deep for any JSON decoder: the whole server response carrying it is unreadable
            failures = metric("cumi_worker_connect_failures_total")
            deep = b"[" * 100_000 + b"]" * 100_000
            for channel in channels(sim, alias):
                message = b'{"channel":' + json.dumps(channel).encode() + b',"data":' + deep + b"}"
                assert sim.bayeux.deliver(channel, message) == 1
            sim.emit(200)  # events sharing the unreadable response are lost: gap repair restores
            await eventually(
                lambda: metric("cumi_worker_connect_failures_total") > failures,
                within=30,
                what="the unreadable connect noticed (a failure, then a new connect)",
            )
            assert worker.sink is not None and worker.sink.fatal is None
            sim.emit(200)
            await assert_converges(worker, sim, kafka_bootstrap, fresh_topics.events)
            assert worker.is_ready()
        decoded = decode_all(await read_topic(kafka_bootstrap, fresh_topics.events))
        repairs = {d.reason for d in decoded if isinstance(d, MailboxSnapshot)}
        assert RepairReason.CONNECT_FAILED in repairs  # the unreadable response was noticed


class TestCorruptedEvents:
    """Events sent broken *instead of* valid: a display field the pipeline cannot read is
    published all the same; a payload it must dead-letter has the mailbox it names repaired. Either
    way the events topic folds to the truth."""

    async def test_tolerated_or_repaired(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=20, seed=53)
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS="2",
        )
        async with running_worker(env) as worker:
            sim.emit(100)
            await settle(worker, sim)
            before = {
                o: metric("cumi_worker_dead_letter_repairs_total", outcome=o)
                for o in ("triggered", "deferred", "unwatched")
            }
            sim.corrupt(0.3)
            sim.emit(300)
            sim.corrupt(0)
            await assert_converges(worker, sim, kafka_bootstrap, fresh_topics.events)
            caused = {
                o: metric("cumi_worker_dead_letter_repairs_total", outcome=o) - n
                for o, n in before.items()
            }
        stats = sim.stats
        assert stats.corrupted_malformed > 0 and stats.corrupted > stats.corrupted_malformed
        letters = await dead_letters(kafka_bootstrap, fresh_topics.dlq, stats.corrupted_malformed)
        assert len(letters) == stats.corrupted_malformed
        assert caused["triggered"] + caused["deferred"] == len(letters)
        assert caused["unwatched"] == 0
        decoded = decode_all(await read_topic(kafka_bootstrap, fresh_topics.events))
        repaired = [
            d for d in decoded if isinstance(d, MailboxSnapshot) and d.reason == "dead-letter"
        ]
        assert 0 < len(repaired) <= len(letters)
        tolerated = [d for d in decoded if isinstance(d, MailboxEvent) and d.unparsed]
        assert len(tolerated) >= (stats.corrupted - stats.corrupted_malformed) // 2
