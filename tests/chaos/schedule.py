"""The seeded fault schedule of a chaos run.

`plan(seed, faults)` is a pure function of its arguments: the same seed gives the same faults, in
the same order, with the same start times, durations and sizes (what the results table's
"command to reproduce" relies on). Every kind of fault appears at least once when `faults` allows;
the rest are drawn at random. Faults start `spacing` seconds apart and may outlast the gap, so they
overlap (a worker killed while Kafka is down, a restart during a 503 storm…); two faults of the
same kind never overlap. The cluster faults (`CLUSTER`) are not drawn: their runs give fixed steps.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass


class Fault(enum.StrEnum):
    KILL_WORKER = "kill-9-worker"
    """SIGKILL of an ingest worker process; it is started again after `hold` s."""
    KILL_PROJECTOR = "kill-9-projector"
    """SIGKILL of the projector process; started again after `hold` s."""
    BROKER_RESTART = "broker-stop-start"
    """The Kafka broker stopped for `hold` s, then started on the same port and data."""
    SIMULATOR_RESTART = "simulator-restart"
    """A Connection Jetty restart: every CometD session and notification subscription lost."""
    NOTIFIER_DOWNTIME = "notifier-downtime"
    """The Notifier down for `hold` s, then only the latest status of each changed message."""
    CONNECTION_DROP = "connection-drop"
    """Every CometD connection closed (sessions survive)."""
    STORM_503 = "503-storm"
    """Every REST call answered 503 for `hold` s."""
    DUPLICATES = "duplicate-deliveries"
    """A share `size` of events sent twice, for `hold` s."""
    MALFORMED = "malformed-events"
    """`size` malformed payloads on live channels, some delivered twice (in a calm moment, so
    that each one is known to have reached the worker: see harness.MalformedInjector)."""
    SLOW_REST = "slow-rest"
    """Every REST response delayed by `size` s, for `hold` s."""
    # a `LocalCluster` run only:
    LEADER_KILL = "kill-9-leader"
    """SIGKILL of the node leading events partition 0; started again after `hold` s."""
    ROLLING_RESTART = "rolling-restart"
    """Each node in turn stopped cleanly, `hold` s down, started, the cluster healthy again."""
    MAJORITY_DOWN = "majority-down"
    """Every node but the leader of events partition 0 SIGKILLed (the KRaft quorum and
    min.insync.replicas lost) for `hold` s, then started again."""
    CLUSTER_CRASH = "kill-9-every-broker"
    """Every node SIGKILLed at once, started again after `hold` s."""


CLUSTER = frozenset(
    {Fault.LEADER_KILL, Fault.ROLLING_RESTART, Fault.MAJORITY_DOWN, Fault.CLUSTER_CRASH}
)
"""Faults that need a multi-node `LocalCluster` (tests/integration/test_cluster_chaos.py)."""
SEEDED = frozenset(Fault) - CLUSTER
"""What the seeded schedules draw from: every fault the single session broker allows."""

DISRUPTIVE = frozenset(
    {
        Fault.KILL_WORKER,
        Fault.BROKER_RESTART,
        Fault.SIMULATOR_RESTART,
        Fault.NOTIFIER_DOWNTIME,
        Fault.CONNECTION_DROP,
        *CLUSTER,
    }
)
"""Faults that can lose a payload on its way to the worker (and so a malformed one): malformed
injection waits until none of them is in progress."""


@dataclass(frozen=True, slots=True)
class Step:
    at: float
    """Seconds after the schedule starts."""
    fault: Fault
    hold: float
    """How long the fault lasts (0: instantaneous)."""
    size: float = 0.0
    """Fault-specific: duplicate ratio, malformed payload count, REST latency."""

    def describe(self) -> str:
        size = f" size={self.size:g}" if self.size else ""
        return f"+{self.at:.1f}s {self.fault.value} hold={self.hold:.1f}s{size}"


Draw = Callable[[random.Random], tuple[float, float]]
"""rng → (hold, size) of one fault."""

_DRAWS: dict[Fault, Draw] = {
    Fault.KILL_WORKER: lambda r: (r.uniform(0.2, 3.0), 0.0),
    Fault.KILL_PROJECTOR: lambda r: (r.uniform(0.2, 3.0), 0.0),
    Fault.BROKER_RESTART: lambda r: (r.uniform(1.0, 4.0), 0.0),
    Fault.SIMULATOR_RESTART: lambda r: (0.0, 0.0),
    Fault.NOTIFIER_DOWNTIME: lambda r: (r.uniform(1.0, 4.0), 0.0),
    Fault.CONNECTION_DROP: lambda r: (0.0, 0.0),
    Fault.STORM_503: lambda r: (r.uniform(1.0, 3.0), 0.0),
    Fault.DUPLICATES: lambda r: (r.uniform(2.0, 6.0), round(r.uniform(0.05, 0.3), 2)),
    Fault.MALFORMED: lambda r: (0.0, float(r.randint(2, 5))),
    Fault.SLOW_REST: lambda r: (r.uniform(1.0, 4.0), round(r.uniform(0.1, 0.5), 2)),
    Fault.LEADER_KILL: lambda r: (r.uniform(2.0, 10.0), 0.0),
    Fault.ROLLING_RESTART: lambda r: (r.uniform(1.0, 4.0), 0.0),
    Fault.MAJORITY_DOWN: lambda r: (r.uniform(10.0, 60.0), 0.0),
    Fault.CLUSTER_CRASH: lambda r: (r.uniform(1.0, 10.0), 0.0),
}


def plan(
    seed: int,
    faults: int,
    *,
    spacing: tuple[float, float] = (1.5, 4.0),
    kinds: frozenset[Fault] = SEEDED,
) -> list[Step]:
    """`faults` steps drawn from `seed`: each of `kinds` once (if room), the rest at random."""
    rng = random.Random(f"chaos-schedule-{seed}")
    ordered = sorted(kinds)
    if faults <= len(ordered):
        chosen = rng.sample(ordered, faults)
    else:
        chosen = ordered + [rng.choice(ordered) for _ in range(faults - len(ordered))]
    rng.shuffle(chosen)
    steps, at = [], 0.0
    for fault in chosen:
        at += rng.uniform(*spacing)
        hold, size = _DRAWS[fault](rng)
        steps.append(Step(round(at, 2), fault, round(hold, 2), size))
    return steps
