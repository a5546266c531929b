"""The ingest worker against the reference CometD server (CometD 9 on Jetty 12, default options).

Every process is real: a local Kafka broker, the reference server (`ingest.devservices.cometd`),
the simulator in a child process in bridge mode (REST, users and truth from the simulator; every
event published through the reference server's hook), `python -m ingest worker` as a subprocess
with production defaults (start-up gap repair off, so each worker settles fast). Measures, never
asserts:

1. Throughput per transport, in the same run, rounds alternating long-polling and WebSocket (a
   fresh worker each, the previous one's notification subscriptions forgotten): `--events` events
   over `--mailboxes` mailboxes are generated with delivery held back, then released into the
   publish hook at once; the clock runs from the release to the broker's append time of the last
   record (LogAppendTime). The ratio WebSocket / long-polling is the figure of merit (target ≥ 0.8).
2. Recovery after a server restart, per transport, `--restarts` times: the reference server is
   restarted (a Jetty restart: every session and notification subscription lost); the clock runs
   from the moment it is serving again to (a) every mailbox's current subscription subscribed on
   the server and (b) the worker ready again (target ≤ 3 s for 300 mailboxes).

`python -m bench.bench_reference [--quick] [--only throughput,recovery]`; results in
bench/results/reference.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import machine, record
from bench.bench_worker import _last_append
from bench.worker_rig import (
    SimProcess,
    WorkerProcess,
    cpu_seconds,
    create_topics,
    free_port,
    load_average,
    simulator,
    total,
    worker_env,
)
from ingest.devservices.cometd import LocalCometdServer
from ingest.devservices.kafka import LocalBroker, ensure_runtime
from ingest.errors import DevServiceError

TRANSPORTS = ("long-polling", "websocket")
PUBLISHED = "cumi_worker_events_published_total"
SEED = 15


@dataclass(frozen=True, slots=True)
class Options:
    events: int = 30_000
    mailboxes: int = 2_000
    rounds: int = 2
    recovery_mailboxes: int = 300
    restarts: int = 3
    only: tuple[str, ...] = ("throughput", "recovery")


QUICK = Options(events=5_000, mailboxes=300, rounds=1, restarts=1)


@dataclass(slots=True)
class Rig:
    bootstrap: str
    ref: LocalCometdServer
    workdir: Path
    topic_count: int = 0

    async def topics(self, name: str) -> Any:
        self.topic_count += 1
        return await create_topics(self.bootstrap, f"bench-ref-{self.topic_count}-{name}-")


@contextlib.asynccontextmanager
async def _worker(
    rig: Rig, sim: SimProcess, transport: str, name: str
) -> AsyncIterator[WorkerProcess]:
    env = worker_env(sim, rig.bootstrap, await rig.topics(name), free_port())
    env |= {
        "CUMI_COMETD_URL": rig.ref.cometd_url,  # by IP: the BAYEUX_BROWSER cookie must be kept
        "CUMI_COMET_TRANSPORT": transport,
        "CUMI_RECONCILE_ON_START": "false",
        "CUMI_SUBSCRIBE_BATCH_SIZE": "1000",
    }
    worker = WorkerProcess(env, rig.workdir / f"worker-{name}.log")
    await worker.start()
    try:
        yield worker
    finally:
        code = await worker.stop()
        if code != 0:
            print(f"  ! worker exited {code}; log: {worker.log_path}", flush=True)
        await sim.call("restart")  # its notification subscriptions would still be published to


async def _subscribed(sim: SimProcess, ref: LocalCometdServer) -> int:
    """Mailboxes whose current subscription is not subscribed on the server yet."""
    current: dict[str, str] = await sim.call("subscriptions")
    try:
        channels = await ref.channels()
    except (DevServiceError, aiohttp.ClientError, OSError):  # not serving yet
        return sim.config.mailboxes
    missing = sim.config.mailboxes - len(current)
    return missing + sum(
        1 for sid in current.values() if channels.get(f"/vmrest/mailbox/{sid}", 0) < 1
    )


async def _until(check: Any, within: float, poll: float = 0.02) -> float:
    """Poll `await check()` until true; the monotonic time when it first was."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - other processes: poll them
            await asyncio.sleep(poll)
    return time.monotonic()


async def _ready(sim: SimProcess, rig: Rig, worker: WorkerProcess, within: float) -> None:
    async def check() -> bool:
        return await worker.is_ready() and await _subscribed(sim, rig.ref) == 0

    await _until(check, within, poll=0.1)


# -- throughput ----------------------------------------------------------------------------------


async def throughput(rig: Rig, opts: Options) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
    async with simulator(
        rig.workdir / "sim-throughput",
        mailboxes=opts.mailboxes,
        seed=SEED,
        publish_hook=f"{rig.ref.base_url}/_ref/publish",
    ) as sim:
        for round_no in range(1, opts.rounds + 1):
            for transport in TRANSPORTS:
                async with _worker(rig, sim, transport, f"{transport}-{round_no}") as worker:
                    await _ready(sim, rig, worker, 300)
                    run = await _burst(rig, sim, worker, opts.events)
                runs[transport].append(run)
                print(f"  round {round_no}: {transport:12s} {run['events_per_s']:>7,}/s {run}")
    best = {t: max(r["events_per_s"] for r in rs) for t, rs in runs.items()}
    median = {t: statistics.median(r["events_per_s"] for r in rs) for t, rs in runs.items()}
    return {
        "events_per_round": opts.events,
        "mailboxes": opts.mailboxes,
        "events_per_s_best": best,
        "events_per_s_median": median,
        "websocket_over_long_polling_best": round(best["websocket"] / best["long-polling"], 2),
        "websocket_over_long_polling_median": round(
            median["websocket"] / median["long-polling"], 2
        ),
        "runs": runs,
    }


async def _burst(rig: Rig, sim: SimProcess, worker: WorkerProcess, events: int) -> dict[str, Any]:
    await sim.call("hold", events)
    before = await worker.metrics()
    base = total(before, PUBLISHED)
    server_pid = rig.ref.pid
    assert server_pid is not None
    cpu = cpu_seconds(worker.pid), cpu_seconds(sim.pid), cpu_seconds(server_pid)
    released, count = await sim.call("release")
    await worker.wait_until(lambda m: total(m, PUBLISHED) >= base + count, 600, poll=0.25)
    cpu = (
        cpu_seconds(worker.pid) - cpu[0],
        cpu_seconds(sim.pid) - cpu[1],
        cpu_seconds(server_pid) - cpu[2],
    )
    topic = worker.env["KAFKA_EVENTS_TOPIC"]
    elapsed = await _last_append(rig.bootstrap, topic) - released
    after = await worker.metrics()
    return {
        "events": count,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(count / elapsed),
        "worker_cpu_us_per_event": round(cpu[0] / count * 1e6, 1),
        "simulator_cpu_us_per_event": round(cpu[1] / count * 1e6, 1),
        "server_cpu_us_per_event": round(cpu[2] / count * 1e6, 1),
        "backpressure_s": round(
            total(after, "cumi_worker_backpressure_seconds_total")
            - total(before, "cumi_worker_backpressure_seconds_total"),
            2,
        ),
    }


# -- recovery ------------------------------------------------------------------------------------


async def recovery(rig: Rig, opts: Options) -> dict[str, Any]:
    result: dict[str, Any] = {"mailboxes": opts.recovery_mailboxes}
    async with simulator(
        rig.workdir / "sim-recovery",
        mailboxes=opts.recovery_mailboxes,
        seed=SEED,
        publish_hook=f"{rig.ref.base_url}/_ref/publish",
    ) as sim:
        for transport in TRANSPORTS:
            runs = []
            async with _worker(rig, sim, transport, f"recovery-{transport}") as worker:
                await _ready(sim, rig, worker, 120)
                for attempt in range(1, opts.restarts + 1):
                    run = await _restart(rig, sim, worker)
                    runs.append(run)
                    print(f"  {transport:12s} restart {attempt}: {run}", flush=True)
            result[transport] = {
                "subscribed_after_back_s_median": statistics.median(
                    r["subscribed_after_back_s"] for r in runs
                ),
                "subscribed_after_back_s_max": max(r["subscribed_after_back_s"] for r in runs),
                "ready_after_back_s_max": max(r["ready_after_back_s"] for r in runs),
                "runs": runs,
            }
    return result


async def _restart(rig: Rig, sim: SimProcess, worker: WorkerProcess) -> dict[str, float]:
    await sim.call("restart")  # Connection's Jetty restart: notification subscriptions go too
    stopped = time.monotonic()
    await rig.ref.stop()
    await rig.ref.start()
    back = time.monotonic()

    async def subscribed() -> bool:
        return await _subscribed(sim, rig.ref) == 0

    all_subscribed = await _until(subscribed, 120)
    ready = await _until(worker.is_ready, 120)
    return {
        "server_down_s": round(back - stopped, 2),
        "subscribed_after_back_s": round(all_subscribed - back, 2),
        "ready_after_back_s": round(max(ready, all_subscribed) - back, 2),
    }


# -- running -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _rig() -> AsyncIterator[Rig]:
    runtime = await asyncio.to_thread(ensure_runtime)
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
        async with LocalBroker(runtime=runtime) as broker, LocalCometdServer() as ref:
            yield Rig(broker.bootstrap, ref, Path(tmp))


async def run_async(opts: Options) -> dict[str, Any]:
    result: dict[str, Any] = {
        "options": dataclasses.asdict(opts),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": load_average(),
    }
    async with _rig() as rig:
        result["server"] = rig.ref.title
        if "throughput" in opts.only:
            print("== throughput against the reference server", flush=True)
            result["throughput"] = await throughput(rig, opts)
        if "recovery" in opts.only:
            print("== recovery after a reference server restart", flush=True)
            result["recovery"] = await recovery(rig, opts)
    result["load_average_after"] = load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    d = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--events", type=int, default=d.events, help="events per throughput burst")
    add("--mailboxes", type=int, default=d.mailboxes, help="mailboxes of the throughput runs")
    add("--rounds", type=int, default=d.rounds, help="throughput rounds (each both transports)")
    add("--recovery-mailboxes", type=int, default=d.recovery_mailboxes)
    add("--restarts", type=int, default=d.restarts, help="server restarts per transport")
    add("--only", default=",".join(d.only), help="throughput,recovery")
    add("--quick", action="store_true", help="small sizes, to try the harness")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else d
    given = {k: v for k, v in vars(args).items() if parser.get_default(k) != v}
    opts = Options(
        events=given.get("events", base.events),
        mailboxes=given.get("mailboxes", base.mailboxes),
        rounds=given.get("rounds", base.rounds),
        recovery_mailboxes=given.get("recovery_mailboxes", base.recovery_mailboxes),
        restarts=given.get("restarts", base.restarts),
        only=tuple(args.only.split(",")),
    )
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; load {load_average()}", flush=True)
    result = asyncio.run(run_async(opts))
    print(f"recorded in {record('reference', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
