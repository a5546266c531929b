"""The pipeline on a real three-node KRaft cluster under the faults a cluster has: the real worker
and projector processes, the simulator's load, topics with replication factor 3 and
min.insync.replicas 2, and one after the other a kill -9 of the leader of events partition 0, a
rolling restart of all three nodes, a majority (two of three) down, and a kill -9 of every node.

The chaos harness runs it (tests/chaos/harness.py: the same checks as the seeded chaos runs —
the events topic folds to the truth, holds nothing invented, the state topic equals its fold
exactly once, everything received was acknowledged) and measures each fault: failover and
resumption times, records held, log lines and CPU while it lasted (docs/reliability.md).
`make test` keeps the majority down 60 s, `make soak` 120 s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chaos.harness import ChaosConfig, ChaosResult, ChaosRun, summary_line
from chaos.report import record, soak
from chaos.schedule import CLUSTER, Fault, Step
from fixtures.simulator import MakeSimulator

from ingest.devservices.kafka import LocalCluster
from ingest.errors import DevServiceError
from ingest.eventlog.topics import TopicNames, default_specs, describe_topic, ensure_topics

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

MAILBOXES = 60
PARTITIONS = 12
MAJORITY_DOWN_S = 120.0 if soak() else 60.0
"""How long two of the three nodes stay down (the issue asks 60 s; the soak doubles it)."""
STEPS = (
    Step(0, Fault.LEADER_KILL, 5.0),
    Step(0, Fault.ROLLING_RESTART, 1.0),
    Step(0, Fault.MAJORITY_DOWN, MAJORITY_DOWN_S),
    Step(0, Fault.CLUSTER_CRASH, 3.0),
)
GAP_S = 6.0
"""Normal operation before each fault."""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    try:
        async with LocalCluster(size=3, data_dir=tmp_path / "cluster") as started:
            yield started
    except DevServiceError as e:
        pytest.fail(f"the local Kafka cluster could not start: {e}", pytrace=False)


async def create_topics(bootstrap: str) -> TopicNames:
    """The four pipeline topics, replicated to all three nodes, two of them in sync to ack."""
    names = TopicNames.with_prefix(f"c-{uuid.uuid4().hex[:10]}-")
    specs = [
        dataclasses.replace(spec, config={**spec.config, "min.insync.replicas": "2"})
        for spec in default_specs(names, events_partitions=PARTITIONS, replication=3)
    ]
    await ensure_topics(bootstrap, specs)
    for name in names.all():
        assert await describe_topic(name, bootstrap_servers=bootstrap) is not None
    assert await describe_topic(names.events, bootstrap_servers=bootstrap) == (PARTITIONS, 3)
    return names


def by_fault(result: ChaosResult) -> dict[str, dict[str, Any]]:
    return {outage["fault"]: outage for outage in result.outages}


class TestClusterChaos:
    @pytest.mark.timeout(900)
    async def test_pipeline_survives_cluster_faults(
        self, make_simulator: MakeSimulator, cluster: LocalCluster, tmp_path: Path
    ) -> None:
        topics = await create_topics(cluster.bootstrap)
        sim = await make_simulator(mailboxes=MAILBOXES, seed=33)
        config = ChaosConfig(
            33, faults=len(STEPS), mailboxes=MAILBOXES, steps=STEPS, sequential=GAP_S
        )
        workdir = tmp_path
        if os.environ.get("RELIABILITY_WORKDIR"):  # keep the process logs past pytest's cleanup
            workdir = Path(os.environ["RELIABILITY_WORKDIR"]) / f"cluster-{os.getpid()}"
            workdir.mkdir(parents=True)
        result = await ChaosRun(config, sim, cluster, topics, workdir).run()
        record("cluster-chaos", soak=soak(), **result.to_json())
        log.info("%s\nfaults: %s", summary_line(result), result.outages)

        assert result.faults == {fault.value: 1 for fault in CLUSTER}, result.skipped
        wrong = {check: n for check, n in result.mismatches.items() if n}
        assert not wrong, f"{summary_line(result)}\nmismatches: {wrong}\nlogs in {workdir}"
        assert not any(result.unplanned_exits.values()), result.unplanned_exits
        faults = by_fault(result)
        assert faults[Fault.LEADER_KILL]["failover_s"] is not None
        for kind in (Fault.MAJORITY_DOWN, Fault.CLUSTER_CRASH):
            assert faults[kind]["resumed_s"] is not None, faults[kind]
        majority = faults[Fault.MAJORITY_DOWN]
        # one node of three is below min.insync.replicas: nothing acknowledged in the second half
        assert majority["acknowledged_while_down"] == 0, majority
        for name in ("worker-0", "projector"):
            cpu = majority[name]["cpu_percent"]
            assert cpu is not None and cpu < 15, f"{name}: {cpu}% CPU in {majority}"
        for outage in result.outages:
            minutes = outage["seconds"] / 60
            for name in ("worker-0", "projector"):
                lines = outage[name]["log_lines"]
                # a start line, a summary per 30 s, an end line, per condition and logger kind
                assert lines <= 40 + 20 * minutes, f"{name}: {lines} log lines in {outage}"
