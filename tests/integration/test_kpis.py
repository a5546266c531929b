"""`ingest kpis` against the simulator's ground truth: real broker, simulator, worker.

Messages are deposited 26 h, 2 h and 0 h before they are notified (the simulator's arrival clock),
so the histograms and the urgent-unread thresholds see more than their first bucket; the
Notifier goes down while chosen operations happen (a known message read, messages arriving,
read, deleted); the KPI consumer is restarted and must rebuild the same numbers. Every KPI is
compared with `Simulator.kpis` at one evaluation time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.kpis import NOTES
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually
from fixtures.worker import running_worker, settle, worker_env

from ingest.eventlog.topics import TopicNames
from ingest.kpis.consumer import KpiConsumer, KpiSettings
from ingest.simulator import Simulator
from ingest.simulator.scenario import Op

pytestmark = pytest.mark.integration

HOUR = 3600.0


@contextlib.asynccontextmanager
async def running_kpis(env: Mapping[str, str]) -> AsyncIterator[KpiConsumer]:
    async with KpiConsumer(KpiSettings.load(dict(env))) as kpis:
        await eventually(lambda: kpis.ready, within=60, what="KPI consumer rebuilt")
        yield kpis


def differences(kpis: KpiConsumer, sim: Simulator) -> list[str]:
    """KPIs that differ between the consumer and the truth, evaluated at one `now`."""
    now = time.time()
    ours: dict[str, Any] = kpis.ledger.summary(now)
    truth = sim.kpis(now)
    for note in NOTES:
        truth.pop(note)
    return [
        f"{key}: pipeline {ours.get(key)!r}, truth {truth.get(key)!r}"
        for key in sorted(set(ours) | set(truth))
        if ours.get(key) != truth.get(key)
    ]


async def matches_truth(
    kpis: KpiConsumer, sim: Simulator, what: str, seen: list[dict[str, Any]]
) -> None:
    """Wait until every KPI equals the truth; `seen` collects the truth it was equal to."""
    await eventually(lambda: differences(kpis, sim), within=30, what=what)
    seen.append(sim.kpis())


def play(sim: Simulator, events: int) -> None:
    sim.emit(events)


def downtime_operations(sim: Simulator, known_unread: tuple[str, str]) -> None:
    """While the Notifier is down: each case the latest-status events must get right."""
    aliases = sorted(sim.scenario.mailboxes)
    alias, message_id = known_unread
    sim.perform(alias, Op.READ, message_ids=[message_id])  # told at recovery: listen dated late
    sim.perform(aliases[1], Op.NEW)  # restated as NEW_MESSAGE: a known arrival
    for op_sequence in ([Op.READ], [Op.DELETE], [Op.READ, Op.DELETE]):
        change = sim.perform(aliases[2], Op.NEW)
        new_id = change.before[0][0].message_id
        for op in op_sequence:
            sim.perform(aliases[2], op, message_ids=[new_id])


async def test_kpis_match_the_truth_through_downtime_and_a_restart(
    make_simulator: MakeSimulator,
    kafka_bootstrap: str,
    fresh_topics: TopicNames,
    tmp_path: Path,
) -> None:
    lag = [26 * HOUR]
    sim = await make_simulator(
        mailboxes=6,
        initial_messages=4,
        multi_message_ratio=0.2,
        arrival_clock=lambda: time.time() - lag[0],
    )
    env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
    seen: list[dict[str, Any]] = []
    async with running_worker(env) as worker:
        await settle(worker, sim)  # start-up snapshots: the initial messages, arrival unknown
        sim.duplicates(0.05)
        async with running_kpis(env) as kpis:
            for hours in (26, 2, 0):
                lag[0] = hours * HOUR
                play(sim, 150)
                await settle(worker, sim)
                await matches_truth(kpis, sim, f"KPIs = truth after arrivals {hours} h late", seen)
            told = sim.perform(sorted(sim.scenario.mailboxes)[0], Op.NEW)
            known = (told.mailbox.alias, told.before[0][0].message_id)
            await settle(worker, sim)
            sim.notifier_down()
            started = int(time.time())
            downtime_operations(sim, known)
            # the read above must be told in a later second than it happened
            await eventually(lambda: time.time() >= started + 1.2, within=5, what="a downtime")
            assert sim.notifier_up() >= 5
            await settle(worker, sim)
            await matches_truth(kpis, sim, "KPIs = truth after Notifier downtime", seen)
            before_restart = kpis.ledger.summary(0.0)
        async with running_kpis(env) as rebuilt:
            assert rebuilt.ledger.summary(0.0) == before_restart  # counted once, not twice
            play(sim, 100)
            await settle(worker, sim)
            await matches_truth(rebuilt, sim, "KPIs = truth after a KPI consumer restart", seen)
            await check_exposition(rebuilt)
    truth = sim.kpis()
    assert truth["first_seen"]["snapshot"] == 6 * 4
    assert truth["first_seen"]["restatement"] == 3
    assert 0 < truth["listen_delay_by_downtime_seconds"] < 30
    listened = truth["time_to_first_listen"]["normal"]["buckets"]
    assert listened[0] and listened[4] and listened[7], listened  # ≤1 min, ≤4 h, ≤3 days
    # the comparisons were not of empty gauges: each threshold was exceeded at some point
    assert all(any(t["mailboxes_with_urgent_unread"][k] for t in seen) for k in ("1h", "24h"))
    assert any(t["oldest_unread_age"]["buckets"][7] for t in seen)  # a mailbox 1-3 days behind
    assert sum(truth["deleted_unheard"].values()) and sum(truth["first_listen_unknown"].values())


async def check_exposition(kpis: KpiConsumer) -> None:
    """What Prometheus scrapes: the KPI families next to the process metrics."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{kpis.ops.port}/metrics") as response,
    ):
        text = await response.text()
    received = sum(kpis.ledger.received.values())
    assert received > 0
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cumi_voicemail_messages_received_total{")
    )
    assert total == received
    assert "cumi_kpis_ready 1.0" in text
    assert 'cumi_voicemail_mailboxes_with_urgent_unread{older_than="24h"}' in text
