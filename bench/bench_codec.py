"""Ingest hot path on one core: raw Comet JSON → parse → normalize → Avro encode, events/s.

Two inputs: "live" has the time stamps of a live stream (an EventTime second shared by a burst
of events, a message's ReceiveTime repeated by every event about it); "cold" gives every event
its own EventTime and ReceiveTime, so the time caches never hit (the worst case). Each stage is
also timed alone. Rates are per second of this process's CPU time (other processes on a shared
machine do not count against it) and per wall-clock second; best of several rounds, and median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from bench import machine, record
from ingest.cumi import jsonload
from ingest.cumi.normalizer import TimeZones, parse_event
from ingest.cumi.timestamps import parse_cumi_time
from ingest.eventlog import codec
from ingest.events import EventType

ZONES = TimeZones(receive_time=ZoneInfo("America/Los_Angeles"))
START = dt.datetime(2024, 3, 1, 8, 0, 0)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%I:%M:%S %p %m/%d/%Y")


def make_events(count: int, cold: bool, seed: int = 7) -> list[bytes]:
    """Raw notifications shaped like the vendor's example, over 2,000 mailboxes."""
    rng = random.Random(seed)
    mailboxes = {f"user{i:05d}": str(uuid.UUID(int=rng.getrandbits(128))) for i in range(2000)}
    names = list(mailboxes)
    message_ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(count // 4 + 1)]
    events = []
    for i in range(count):
        message = rng.randrange(len(message_ids))
        mailbox = rng.choice(names)
        event_time = START + dt.timedelta(seconds=i if cold else i // 50)
        received = START + dt.timedelta(seconds=(i * 7 if cold else message), hours=-8)
        payload = {
            "MessageInfo": [
                {
                    "CallerAni": rng.choice(["null", f"+1408555{rng.randrange(10000):04d}"]),
                    "Sender": "null",
                    "MessageId": message_ids[message],
                    "ReceiveTime": _stamp(received),
                    "Priority": "Normal-Priority",
                    "MsgType": "Voice",
                }
            ],
            "USN": 1000 + i,
            "EventTime": _stamp(event_time),
            "SubscriptionId": mailboxes[mailbox],
            "MailboxId": mailbox,
            "EventType": rng.choice(list(EventType)).value,
            "DisplayName": "Alexander Bell",
        }
        events.append(json.dumps(payload).encode())
    return events


def _rates(work: Callable[[], None], count: int, rounds: int, cold: bool) -> dict[str, int]:
    """Items per CPU second and per wall second over `rounds` runs of `work`: best and median."""
    cpu, wall = [], []
    for _ in range(rounds):
        if cold:
            parse_cumi_time.cache_clear()
            codec._timestamp.cache_clear()
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        work()
        cpu.append(count / (time.process_time() - started_cpu))
        wall.append(count / (time.perf_counter() - started_wall))
    return {
        "cpu_best_per_s": round(max(cpu)),
        "cpu_median_per_s": round(statistics.median(cpu)),
        "wall_best_per_s": round(max(wall)),
        "wall_median_per_s": round(statistics.median(wall)),
    }


def measure(count: int, rounds: int, cold: bool) -> dict[str, Any]:
    raws = make_events(count, cold)
    events = [parse_event(raw, zones=ZONES) for raw in raws]
    encoded = [codec.encode(event) for event in events]
    # the inputs are the benchmark's, not the hot path's: without this every full collection
    # during a round walks 20,000 prepared events (a worker holds no such heap)
    gc.collect()
    gc.freeze()

    def pipeline() -> None:
        for raw in raws:
            codec.encode(parse_event(raw, zones=ZONES))

    def parse_only() -> None:
        for raw in raws:
            parse_event(raw, zones=ZONES)

    def json_only() -> None:
        for raw in raws:
            json.loads(raw)

    def jsonload_only() -> None:
        for raw in raws:
            jsonload.loads(raw)

    def encode_only() -> None:
        for event in events:
            codec.encode(event)

    def decode_only() -> None:
        for data in encoded:
            codec.decode(data)

    result: dict[str, Any] = {
        "payload_bytes": round(statistics.mean(len(raw) for raw in raws)),
        "avro_bytes": round(statistics.mean(len(data) for data in encoded)),
    }
    for name, work in [
        ("parse_normalize_encode", pipeline),
        ("json_loads_only", json_only),
        ("jsonload_only", jsonload_only),
        ("parse_normalize_only", parse_only),
        ("encode_only", encode_only),
        ("decode_only", decode_only),
    ]:
        result[name] = _rates(work, count, rounds, cold)
    gc.unfreeze()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per measurement")
    args = parser.parse_args(argv)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, Any] = {"events": args.events, "rounds": args.rounds}
    for label, cold in (("live", False), ("cold", True)):
        result = results[label] = measure(args.events, args.rounds, cold)
        for stage, rates in result.items():
            if isinstance(rates, dict):
                print(
                    f"codec {label:4s} {stage:24s} per CPU s: {rates['cpu_best_per_s']:>8,} best "
                    f"{rates['cpu_median_per_s']:>8,} median | per wall s: "
                    f"{rates['wall_best_per_s']:>8,} best {rates['wall_median_per_s']:>8,} median"
                )
    results["load_average_after"] = os.getloadavg()
    path = record("codec", results)
    best = results["live"]["parse_normalize_encode"]["cpu_best_per_s"]
    cold = results["cold"]["parse_normalize_encode"]["cpu_best_per_s"]
    print(
        f"result: parse+normalize+encode {best:,} events/s per core (live stream), "
        f"{cold:,} (no cache hits); saved {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
