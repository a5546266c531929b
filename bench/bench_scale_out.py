"""Scale-out benchmark: worker processes sharing the registry — start, failover, scale-up and
-down, live registry changes — timed with settling between phases. Measures, never asserts.

Its own local broker, the simulator in this process (its Bayeux session table says who watches
what), `--workers` real `ingest worker` processes with the production group timings by default
(session timeout 10 s, heartbeat 1 s), mail flowing at `--rate` events/s. Phases, each timed:

1. start: `ingest mailboxes import` of `--mailboxes` mailboxes, every worker at once; until each
   mailbox is watched by exactly one worker, then until every start-up gap repair is done.
2. failover: kill -9 of one worker; its registry partitions reassigned, its mailboxes watched
   again by the others, the takeover's gap repair published; then settled.
3. scale-up: a new worker; until it watches its share (and every mailbox has one watcher); settled.
4. scale-down: SIGTERM to one worker; its exit, its share watched by the others; settled.
5. live: 100 mailboxes registered and 100 removed in one registry write; until subscribed and
   unsubscribed.
6. a sanity check, not a timing: the fold of the events topic equals the simulator's truth.

`python -m bench.bench_scale_out [--mailboxes N] [--workers W] [--session-timeout-ms MS]` or
`python -m bench scale_out`; results go to bench/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import record
from ingest.devservices.kafka import LocalBroker
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics
from ingest.simulator import Simulator, SimulatorConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.worker_group import ScaleOut, scale_out_env

CHANGED = 100


async def _run(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    async with LocalBroker(data_dir=work / "kafka") as broker:
        topics = TopicNames.with_prefix("bench-")
        await ensure_topics(broker.bootstrap, default_specs(topics))
        config = SimulatorConfig(
            mailboxes=options.mailboxes + CHANGED, seed=5, initial_messages=2, max_interval=3.0
        )
        async with Simulator(config) as sim, aiohttp.ClientSession() as http:
            env = scale_out_env(
                sim,
                broker.bootstrap,
                topics,
                work,
                KAFKA_WORKER_SESSION_TIMEOUT_MS=str(options.session_timeout_ms),
                KAFKA_WORKER_HEARTBEAT_INTERVAL_MS=str(options.heartbeat_ms),
            )
            run = ScaleOut(
                sim,
                env,
                work,
                http,
                mailboxes=options.mailboxes,
                workers=options.workers,
                rate=options.rate,
            )
            try:
                return await _phases(run, broker.bootstrap, topics)
            finally:
                await run.kill_all()


async def _phases(run: ScaleOut, bootstrap: str, topics: TopicNames) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    await run.start(settle=True)
    shares = run.shares()
    victim = run.workers[0]
    await run.kill(victim, len(shares[victim.index]), repair=True)
    await _settled(run, "failover")
    await run.replace()
    await _settled(run, "scale-up")
    leaving = run.running[0]
    code = await run.leave(leaving)
    await _settled(run, "scale-down")
    await run.change(CHANGED, keep_watching=set())
    differences, _ = await run.fold(bootstrap, topics.events)
    return {
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "shares_at_start": {str(k): len(v) for k, v in shares.items()},
        "sigterm_exit_code": code,
        "fold_equals_truth": not differences,
        "seconds": {what: round(value, 2) for what, value in run.measured.items()},
    }


async def _settled(run: ScaleOut, phase: str) -> None:
    started = time.monotonic()
    await run.until_settled()
    run.measured[f"{phase}: settled (all gap repair done) after the above"] = (
        time.monotonic() - started
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scale_out")
    parser.add_argument("--mailboxes", type=int, default=3_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--heartbeat-ms", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=100, help="simulated events per second")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp:
        result = asyncio.run(_run(options, Path(tmp)))
    result = {
        "mailboxes": options.mailboxes,
        "workers": options.workers,
        "session_timeout_ms": options.session_timeout_ms,
        "heartbeat_interval_ms": options.heartbeat_ms,
        "events_per_s": options.rate,
        **result,
    }
    for what, seconds in result["seconds"].items():
        print(f"  {what}: {seconds:.2f} s")
    print(f"  fold equals truth: {result['fold_equals_truth']}")
    print(f"results in {record('scale_out', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
