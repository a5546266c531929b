"""The voicemail KPIs three ways on one simulated run: `ingest kpis` (the KPI consumer), the
DuckDB queries over an `ingest export` of the same events topic, and the simulator's truth,
compared KPI by KPI at one `as_of`.

The run has what makes the definitions matter: repeated events, arrivals hours old (histogram
buckets and urgent thresholds beyond the first), a Notifier downtime (restated latest statuses,
reads dated late, a read-then-deleted message the log cannot know was heard), a CometD connection
drop and a Connection Jetty restart (gap-repair snapshots: messages first seen in a listing,
messages gone in the gap).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fixtures.kpis import differences, sql_summary
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually
from fixtures.worker import running_worker, settle, worker_env

from ingest.eventlog.topics import TopicNames
from ingest.export.exporter import export
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


def downtime(sim: Simulator, known: tuple[str, str]) -> None:
    """While the Notifier is down: activity, and a known message read then hard-deleted (its
    latest status is DELETED_MESSAGE: the log cannot know it was heard)."""
    alias, message_id = known
    for op in (Op.READ, Op.HARD_DELETE):
        sim.perform(alias, op, message_ids=[message_id])
    sim.emit(40)


def caught_up(kpis: KpiConsumer, sim: Simulator) -> list[str]:
    """What still differs between the consumer and the truth (empty once it has folded all)."""
    now = time.time()
    return differences(**{"ingest kpis": kpis.ledger.summary(now), "truth": sim.kpis(now)})


async def test_kpi_consumer_queries_and_truth_agree(
    make_simulator: MakeSimulator,
    kafka_bootstrap: str,
    fresh_topics: TopicNames,
    tmp_path: Path,
) -> None:
    lag = [2 * HOUR]
    sim = await make_simulator(
        mailboxes=8,
        initial_messages=3,
        multi_message_ratio=0.2,
        arrival_clock=lambda: time.time() - lag[0],
    )
    env = worker_env(sim, kafka_bootstrap, fresh_topics, tmp_path)
    async with running_worker(env) as worker, running_kpis(env) as kpis:
        await settle(worker, sim)  # start-up snapshots
        sim.duplicates(0.1)
        sim.emit(120)
        await settle(worker, sim)
        lag[0] = 0.0
        told = sim.perform(sorted(sim.scenario.mailboxes)[0], Op.NEW)
        known = (told.mailbox.alias, told.before[0][0].message_id)
        await settle(worker, sim)
        sim.notifier_down()
        downtime(sim, known)
        assert sim.notifier_up() > 0
        sim.drop_connections()
        sim.emit(60)
        await settle(worker, sim)
        sim.restart()  # every session and subscription lost: resubscribe, gap repair
        sim.emit(60)  # lost: nobody is subscribed; the repair lists what is left
        await settle(worker, sim)
        sim.emit(60)
        await settle(worker, sim)
        await eventually(lambda: not caught_up(kpis, sim), within=30, what="KPIs = truth")
        result = await export(kafka_bootstrap, fresh_topics.events, tmp_path / "export")
        as_of = time.time()
        consumer, truth = kpis.ledger.summary(as_of), sim.kpis(as_of)
        assert kpis.ledger.records == result.records  # the same log

    queries = sql_summary(tmp_path / "export", as_of)
    assert differences(**{"ingest kpis": consumer, "queries": queries, "truth": truth}) == []
    exercised(truth)
    facts = sim.kpi_truth.facts[known[1]]  # heard, but the log cannot know: reported unheard
    assert facts.reported_unheard and not facts.deleted_unheard


def exercised(truth: dict[str, Any]) -> None:
    """The comparison was not of zeros: each kind of message the definitions sort occurred."""
    assert truth["first_seen"]["snapshot"] >= 8 * 3
    assert truth["first_seen"]["restatement"] > 0
    assert sum(truth["first_listen_unknown"].values()) > 0
    assert sum(truth["deleted_unheard"].values()) > 0
    listened = [h for h in truth["time_to_first_listen"].values() if h["count"]]
    assert any(h["buckets"][4] for h in listened), listened  # read 1-4 h after arrival
    assert truth["unread_unknown_age_mailboxes"] > 0 and truth["unread_messages"] > 0
