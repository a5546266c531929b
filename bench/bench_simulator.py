"""Simulator benchmarks: how fast it feeds one CometD session, and what 20,000 subscriptions cost.

The simulator runs in a child process (its own event loop and core), driven through its admin
endpoints, so the client's work does not slow the server down. Measures, never asserts:

- `emit_events_per_s`: Comet events generated, encoded and queued for one subscribed session
  (scenario + Notifier + Bayeux queue, no client reading).
- For each rate, `sim_cpu_us_per_event` (the simulator's CPU time per event) and
  `sim_capacity_per_s` (1 / that): what one free core would sustain, whatever else the machine
  was running.
- `{long_polling,websocket}_live_events_per_s`: events received by ONE aiocometd-ng session
  subscribed to every mailbox's channel while the scenario generates them (end to end).
- `{long_polling,websocket}_burst_events_per_s`: the same session receiving events generated
  beforehand (queued on its session): the delivery path alone.
- `requestnotification_per_s`: REST `requestnotification` calls per second through the 5-slot
  throttle (20 concurrent callers).
- `subscribe_20k_s`: time to subscribe one session to 20,000 channels (batched lists of 1,000).
- `rss_mb_*`: the simulator's resident memory with 20,000 mailboxes, before any subscription,
  after 20,000 notification subscriptions, and with one session on all 20,000 channels.

Run alone with `python -m bench.bench_simulator [--events N] [--rounds R]` or through
`python -m bench simulator`; results go to bench/results/simulator.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
from aiocometd_ng.client import Client
from aiocometd_ng.constants import ConnectionType

from bench import record
from ingest.cumi.cometd_fixes import FixedClient
from ingest.simulator import Simulator, SimulatorConfig
from ingest.simulator.bayeux import Session
from ingest.simulator.users import UserTable

THROUGHPUT_MAILBOXES = 1_000
SUBSCRIPTIONS = 20_000
SEED = 1
RECEIVE_LIMIT = 300.0
"""Seconds a round may take before the benchmark gives up (events were lost)."""
WS = ConnectionType.WEBSOCKET


def _child(conn: multiprocessing.connection.Connection, config: SimulatorConfig) -> None:
    """Run a simulator until the parent says stop; report its URLs first."""

    async def serve() -> None:
        async with Simulator(config) as sim:
            conn.send((sim.base_url, sim.cometd_url))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(serve())


@contextlib.asynccontextmanager
async def _simulator_process(**overrides: Any) -> Any:
    # long connect timeout: a burst blocks the server loop for seconds, and a client request
    # timing out meanwhile would take a batch of events down with its connection
    config = SimulatorConfig(seed=SEED, admin=True, connect_timeout=60.0, **overrides)
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_child, args=(child, config))
    process.start()
    try:
        loop = asyncio.get_running_loop()
        base_url, cometd_url = await loop.run_in_executor(None, parent.recv)
        yield process.pid, base_url, cometd_url, UserTable.generate(config.mailboxes, SEED)
    finally:
        parent.send("stop")
        await loop.run_in_executor(None, process.join, 10)
        if process.is_alive():
            process.kill()


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a process has used (it shares 2 cores with everything else, so
    CPU per event says more about capacity than wall-clock rates on a busy machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int | None) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


async def _request_all(
    http: aiohttp.ClientSession, base_url: str, users: UserTable, callers: int = 20
) -> list[str]:
    """requestnotification for every user, `callers` at a time; returns the channels in order."""
    aliases = list(users)
    channels: list[str] = [""] * len(aliases)
    url = f"{base_url}/vmrest/mailbox?method=requestnotification"

    async def caller(offset: int) -> None:
        for i in range(offset, len(aliases), callers):
            headers = {"Authorization": users[aliases[i]].authorization()}
            while True:
                async with http.post(url, data="{}", headers=headers) as response:
                    if response.status == 200:
                        channels[i] = "/vmrest/mailbox/" + await response.text()
                        break
                await asyncio.sleep(0.01)  # 503 from the throttle: try again

    await asyncio.gather(*(caller(k) for k in range(callers)))
    return channels


Sample = tuple[float, float, float]
"""(events/s, simulator CPU µs per event, client CPU µs per event)."""


async def _throughput(connection_type: ConnectionType, events: int) -> tuple[Sample, Sample]:
    """One aiocometd-ng session subscribed to every mailbox: (live, burst) samples.

    live: the scenario generates `events` while the session receives them (end to end).
    burst: `events` are generated first (queued for the session), then timed until received:
    the delivery path alone."""
    async with (
        _simulator_process(mailboxes=THROUGHPUT_MAILBOXES) as (pid, base_url, cometd_url, users),
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        channels = await _request_all(http, base_url, users)
        # keeps the BAYEUX_BROWSER cookie of 127.0.0.1 (the simulator binds sessions to it)
        client = FixedClient(cometd_url, connection_type, max_pending_count=0, connection_timeout=0)
        await client.open()
        try:
            for channel in channels:
                await client.subscribe(channel)

            async def timed(admin_path: str, start_after_post: bool) -> Sample:
                start, cpu, own = time.perf_counter(), _cpu_s(pid), time.process_time()
                async with http.post(f"{base_url}/_sim/{admin_path}", json={"events": events}) as r:
                    r.raise_for_status()
                if start_after_post:
                    start, cpu, own = time.perf_counter(), _cpu_s(pid), time.process_time()
                async with asyncio.timeout(RECEIVE_LIMIT):
                    for _ in range(events):
                        await client.receive()
                elapsed, cpu = time.perf_counter() - start, _cpu_s(pid) - cpu
                own = time.process_time() - own
                return events / elapsed, cpu / events * 1e6, own / events * 1e6

            live = await timed("scenario", start_after_post=False)
            burst = await timed("emit", start_after_post=True)
            return live, burst
        finally:
            await _close_quietly(client)


async def _close_quietly(client: Client) -> None:
    """Close, hiding the CancelledError traceback aiocometd-ng logs for the pending long-poll."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            the_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        await client.close()
    finally:
        loop.set_exception_handler(previous)


async def _emit_rate(events: int) -> Sample:
    """In-process: scenario + Notifier + queueing for one session on every channel, no reader."""
    async with Simulator(mailboxes=THROUGHPUT_MAILBOXES, seed=SEED) as sim:
        # a session registered directly: this measures the server side alone
        bayeux_session = Session("bench", 0.0)
        sim.bayeux.sessions["bench"] = bayeux_session
        for alias in sim.users:
            channel = "/vmrest/mailbox/" + sim.subscriptions.create(alias)
            sim.bayeux.channels.setdefault(channel, {})[bayeux_session] = None
        start, cpu = time.perf_counter(), time.process_time()
        sim.emit(events)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return events / elapsed, cpu / events * 1e6, 0.0


async def _subscriptions() -> dict[str, float]:
    async with (
        _simulator_process(mailboxes=SUBSCRIPTIONS) as (pid, base_url, cometd_url, users),
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        result = {"rss_mb_20k_mailboxes": _rss_mb(pid)}
        start = time.perf_counter()
        channels = await _request_all(http, base_url, users)
        result["requestnotification_per_s"] = round(len(channels) / (time.perf_counter() - start))
        result["rss_mb_20k_notification_subscriptions"] = _rss_mb(pid)
        handshake = {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]}
        async with http.post(cometd_url, json=[handshake]) as response:
            client_id = (await response.json())[0]["clientId"]
        start = time.perf_counter()
        for i in range(0, len(channels), 1_000):
            batch = {
                "channel": "/meta/subscribe",
                "clientId": client_id,
                "subscription": channels[i : i + 1_000],
            }
            async with http.post(cometd_url, json=[batch]) as response:
                assert (await response.json())[0]["successful"]
        result["subscribe_20k_s"] = round(time.perf_counter() - start, 3)
        result["rss_mb_one_session_20k_channels"] = _rss_mb(pid)
        return result


def _summary(samples: list[Sample]) -> dict[str, float]:
    """Events/s: best (least disturbed by other processes) and median of the rounds; simulator
    CPU µs per event (median), the events/s that allows on one free core, and the receiving
    client's CPU µs per event."""
    rates = [rate for rate, _, _ in samples]
    cpu = statistics.median(c for _, c, _ in samples)
    summary = {
        "best": round(max(rates)),
        "median": round(statistics.median(rates)),
        "sim_cpu_us_per_event": round(cpu, 1),
        "sim_capacity_per_s": round(1e6 / cpu),
    }
    client = statistics.median(c for _, _, c in samples)
    if client:
        summary["client_cpu_us_per_event"] = round(client, 1)
    return summary


async def run_async(events: int = 100_000, rounds: int = 3) -> dict[str, Any]:
    results: dict[str, Any] = {
        "events": events,
        "rounds": rounds,
        "mailboxes": THROUGHPUT_MAILBOXES,
        "load_average_before": os.getloadavg()[0],
    }
    results["emit_events_per_s"] = _summary([await _emit_rate(events) for _ in range(rounds)])
    for name, kind in (("long_polling", ConnectionType.LONG_POLLING), ("websocket", WS)):
        samples = [await _throughput(kind, events) for _ in range(rounds)]
        results[f"{name}_live_events_per_s"] = _summary([live for live, _ in samples])
        results[f"{name}_burst_events_per_s"] = _summary([burst for _, burst in samples])
    results.update(await _subscriptions())
    return results


def run(events: int = 100_000, rounds: int = 3) -> dict[str, Any]:
    """All simulator benchmarks; returns {metric: value}."""
    return asyncio.run(run_async(events, rounds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    # aiocometd-ng's WebSocket transport uses arguments aiohttp 3.14 deprecates
    warnings.filterwarnings("ignore", "float parameter 'receive_timeout'", DeprecationWarning)
    warnings.filterwarnings("ignore", "ssl=None is deprecated", DeprecationWarning)
    result = run(args.events, args.rounds)
    json.dump(result, sys.stdout, indent=2)
    print()
    print(f"recorded in {record('simulator', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
