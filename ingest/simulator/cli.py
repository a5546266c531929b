"""`ingest simulator`: run the CUMI simulator until interrupted.

    ingest simulator --mailboxes 100 --rate 50 --seed 7 --port 8080 --cometd-port 7080 \\
        --users-file users.json --delegate-file delegate.json --admin

Prints the REST and CometD URLs on stdout, writes the users file (see ingest.simulator.users) and,
with `--admin`, serves the `/_sim/…` endpoints (see ingest.simulator.admin) to trigger faults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from ingest.simulator.app import Simulator, SimulatorConfig

log = logging.getLogger(__name__)

STATUS_EVERY = 10.0
"""Seconds between progress log lines."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimulatorConfig()
    add = parser.add_argument
    add("--mailboxes", type=int, default=d.mailboxes, help="number of mailboxes/users")
    add("--rate", type=float, default=10.0, help="Comet events per second (0: no activity)")
    add("--events", type=int, default=None, help="stop the activity after this many events")
    add("--seed", type=int, default=d.seed, help="seed of users and activity (deterministic)")
    add("--host", default=d.host, help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8080, help="REST port (0: a free one; default 8080)")
    add("--cometd-port", type=int, default=7080, help="CometD port (0: a free one; default 7080)")
    add("--users-file", type=Path, help="write alias → credentials JSON here")
    add("--delegate-file", type=Path, help="write the delegate account's credentials here")
    add("--admin", action="store_true", help="serve the /_sim/… fault and stats endpoints")
    add("--initial-messages", type=int, default=d.initial_messages, help="messages per mailbox")
    add("--server-zone", default=d.server_zone, help="zone of ReceiveTime strings")
    add("--connect-timeout", type=float, default=d.connect_timeout, help="long-poll hold, s")
    add("--max-interval", type=float, default=d.max_interval, help="session expiry, s")
    add("--queue-limit", type=int, default=d.session_queue_limit, help="messages per session")
    add("--rest-queue-limit", type=int, default=d.rest_queue_limit, help="REST wait queue")
    add("--retry-after", type=int, default=None, help="Retry-After seconds on 503")
    add("--duplicates", type=float, default=0.0, help="share of events re-sent verbatim")
    add("--malformed", type=float, default=0.0, help="share of events followed by junk")
    add("--corrupt", type=float, default=0.0, help="share of events sent broken instead")
    add("--latency", type=float, default=0.0, help="seconds added to every REST response")
    add("--ws-frame-messages", type=int, default=d.ws_frame_messages, help="0: one per reply")
    add("--refuse-unknown-channels", action="store_true", help="403 for unknown channels")
    add("--publish-hook", default=None, help="bridge mode: a reference server's publish hook")


def _config(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        mailboxes=args.mailboxes,
        seed=args.seed,
        host=args.host,
        rest_port=args.port,
        cometd_port=args.cometd_port,
        server_zone=args.server_zone,
        initial_messages=args.initial_messages,
        connect_timeout=args.connect_timeout,
        max_interval=args.max_interval,
        session_queue_limit=args.queue_limit,
        rest_queue_limit=args.rest_queue_limit,
        retry_after=args.retry_after,
        admin=args.admin,
        ws_frame_messages=args.ws_frame_messages,
        refuse_unknown_channels=args.refuse_unknown_channels,
        publish_hook=args.publish_hook,
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(_config(args)) as sim:
        if args.users_file:
            sim.accounts.write(args.users_file, args.delegate_file)
        sim.duplicates(args.duplicates)
        sim.malformed(args.malformed)
        sim.corrupt(args.corrupt)
        sim.slow(args.latency)
        print(f"REST    {sim.base_url}", flush=True)
        print(f"CometD  {sim.cometd_url}", flush=True)
        if args.admin:
            print(f"admin   {sim.base_url}/_sim/", flush=True)
        if args.rate > 0:
            sim.run_scenario(events=args.events, rate=args.rate)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_EVERY)
            s = sim.stats
            log.info(
                "emitted %s, delivered %s, lost %s, dropped %s, sessions %s, subscriptions %s",
                s.emitted_total,
                s.delivered,
                s.lost,
                s.dropped,
                s.sessions,
                s.subscriptions,
            )
    return 0
