"""Chaos: the whole pipeline (real broker, simulator, worker and projector processes) under a
seeded random fault schedule ends with nothing lost, nothing invented and nothing doubled.

Two seeds run with the suite (one with a single worker, one with two workers sharing the
registry); `make soak` runs more seeds with longer schedules. One seed again:
`RELIABILITY_SEEDS=7 .venv/bin/pytest tests/integration/test_chaos.py` (add RELIABILITY_SOAK=1
for the soak's sizes). See tests/chaos/harness.py for the checks, docs/reliability.md for results.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from chaos.harness import ChaosConfig, ChaosRun, summary_line
from chaos.report import record, soak
from chaos.schedule import SEEDED, Fault, Step
from fixtures.simulator import MakeSimulator

from ingest.devservices.kafka import LocalBroker
from ingest.eventlog.topics import TopicNames

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

SEEDS = (
    [int(s) for s in os.environ["RELIABILITY_SEEDS"].split(",")]
    if os.environ.get("RELIABILITY_SEEDS")
    else [101, 102, 103, 104]
    if soak()
    else [1, 2]
)
FAULTS = 24 if soak() else 10
MAILBOXES = 150 if soak() else 60


def workers(seed: int) -> int:
    """Even seeds run two workers sharing the registry in one Kafka group (scale-out)."""
    return 2 if seed % 2 == 0 else 1


class TestChaos:
    """Every fault the pipeline is built to survive, at random, overlapping; then the checks."""

    @pytest.mark.timeout(1200 if soak() else 600)
    @pytest.mark.parametrize("seed", SEEDS)
    async def test_seeded_fault_schedule(
        self,
        seed: int,
        make_simulator: MakeSimulator,
        kafka_broker: LocalBroker,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=MAILBOXES, seed=seed)
        config = ChaosConfig(seed, faults=FAULTS, mailboxes=MAILBOXES, workers=workers(seed))
        workdir = tmp_path
        if os.environ.get("RELIABILITY_WORKDIR"):  # keep the process logs past pytest's cleanup
            workdir = Path(os.environ["RELIABILITY_WORKDIR"]) / f"seed-{seed}-{os.getpid()}"
            workdir.mkdir(parents=True)
        result = await ChaosRun(config, sim, kafka_broker, fresh_topics, workdir).run()
        record("chaos", soak=soak(), **result.to_json())
        log.info("%s", summary_line(result))
        assert sum(result.faults.values()) == FAULTS, result.faults
        assert set(result.faults) == {fault.value for fault in SEEDED}
        assert result.malformed_injected > 0
        wrong = {check: n for check, n in result.mismatches.items() if n}
        assert not wrong, f"{summary_line(result)}\nmismatches: {wrong}\nlogs in {workdir}"


LONG_OUTAGES = (10.0, 60.0, 300.0, 120.0) if soak() else (50.0,)
"""Broker outages of the long-outage run, seconds: `make test` has one longer than 45 s (and than
the producer's 40 s request timeout); the soak has 10 s, 1 min, 5 min and 2 min."""


def outage_steps(holds: tuple[float, ...], gap: float = 20.0) -> tuple[Step, ...]:
    """One broker stop after another, `gap` s of normal operation between them."""
    steps, at = [], 10.0
    for hold in holds:
        steps.append(Step(at, Fault.BROKER_RESTART, hold))
        at += hold + gap
    return tuple(steps)


class TestLongOutage:
    """Kafka away for longer than the producer's request timeout (issue 16): no process exits,
    everything received is acknowledged in the end, the log folds to the truth, and the logs and
    CPU stay quiet while the broker is away."""

    @pytest.mark.timeout(2400 if soak() else 600)
    async def test_broker_away_for_long(
        self,
        make_simulator: MakeSimulator,
        kafka_broker: LocalBroker,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        seed = 16
        sim = await make_simulator(mailboxes=MAILBOXES, seed=seed)
        steps = outage_steps(LONG_OUTAGES)
        config = ChaosConfig(seed, faults=len(steps), mailboxes=MAILBOXES, steps=steps)
        result = await ChaosRun(config, sim, kafka_broker, fresh_topics, tmp_path).run()
        record("long-outage", soak=soak(), **result.to_json())
        log.info("%s\noutages: %s", summary_line(result), result.outages)
        assert result.faults == {Fault.BROKER_RESTART.value: len(LONG_OUTAGES)}
        wrong = {check: n for check, n in result.mismatches.items() if n}
        assert not wrong, f"{summary_line(result)}\nmismatches: {wrong}\nlogs in {tmp_path}"
        assert not any(result.unplanned_exits.values()), result.unplanned_exits
        for outage in result.outages:
            minutes = outage["seconds"] / 60
            for name in ("worker-0", "projector"):
                lines = outage[name]["log_lines"]
                # a start line, a summary per 30 s, an end line, per condition and logger kind
                assert lines <= 40 + 20 * minutes, f"{name}: {lines} log lines in {outage}"
                cpu = outage[name]["cpu_percent"]
                assert cpu is not None and cpu < 15, f"{name}: {cpu}% CPU in {outage}"
