"""Replay / rebuild throughput from a ≥ 1,000,000-record events topic, against raw aiokafka.

Every round reads the same topic three or four ways, one after the other, so load from other
processes hits them alike:

- **raw**: a plain `AIOKafkaConsumer` (read_committed, the replay's fetch settings) reading every
  partition from the beginning to the end offsets, touching each record's value — the ceiling
  for anything written in Python on aiokafka;
- **replay**: `ingest.state.replay.replay(bootstrap, topic)` — fetch, decode
  (`ingest.eventlog.reader`) and fold (`ingest.state.projection`) every record into the state of
  every mailbox, one process;
- **replay x N**: the same with `workers=N` processes, each folding a group of partitions;
- **rebuild** (once, `--projector`): a real `ingest projector` process under a fresh consumer
  group and a fresh state topic catching up from offset 0 with its transactions — the time until
  the group has committed the end of every partition.

The topic (12 partitions) holds a realistic stream made by the test suite's generator (the
simulator's scenario engine, the worker's own normalizer, repeats, late events, snapshots): a
base stream of `--base` records over `--mailboxes / copies` mailboxes, produced `copies` times
under other mailbox ids until there are `--records`. It is kept on the broker and reused by the
next run with the same options. Rates are records per wall-clock second, and per CPU second of
the processes doing the work (this process, plus worker processes for x N). Measures, never
asserts. `python -m bench.bench_replay [--bootstrap HOST:PORT] [--records N] [--rounds N]`;
results in bench/results/replay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import machine, record
from ingest.devservices.kafka import LocalBroker
from ingest.eventlog import codec
from ingest.eventlog.topics import TopicSpec, describe_topic, ensure_topics
from ingest.events import LogRecord, MailboxSnapshot, SnapshotMessage
from ingest.state.projection import Projection
from ingest.state.replay import replay

# the test suite's stream generator and producer (tests/ is not a package on the path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.producing import (
    GroupOffsets,
    ProjectorProcess,
    end_offsets,
    generate,
    produce,
)

PARTITIONS = 12


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    records: int = 1_000_000
    base: int = 100_000
    mailboxes: int = 2000
    rounds: int = 3
    workers: int = max(2, os.cpu_count() or 2)
    projector: bool = True


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def measure(work: Callable[[], Awaitable[int]]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    count = await work()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {
        "records": count,
        "seconds": round(wall, 2),
        "per_second": round(count / wall),
        "per_cpu_second": round(count / cpu) if cpu > 0 else 0,
    }


async def ensure_stream(bootstrap: str, opts: Options) -> str:
    """The events topic with the benchmark stream, produced unless a previous run left it."""
    topic = f"bench-replay-{opts.records}-{opts.base}-{opts.mailboxes}-v2-mailbox-events"
    if await describe_topic(topic, bootstrap_servers=bootstrap) is not None:
        held = sum((await end_offsets(bootstrap, topic)).values())
        if held >= opts.records:
            print(f"  reusing {topic} ({held:,} records)", flush=True)
            return topic
    await ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, 1, {"retention.ms": "-1"})])
    copies = -(-opts.records // opts.base)
    started = time.perf_counter()
    stream = generate(events=opts.base, mailboxes=max(1, opts.mailboxes // copies), seed=17)
    print(f"  generated {len(stream.records):,} records in {time.perf_counter() - started:.0f} s")
    produced = 0
    for copy in range(copies):
        records = [copied(r, copy) for r in stream.records]
        records = records[: opts.records - produced] if copy == copies - 1 else records
        values = [codec.encode(r) for r in records]
        await produce(bootstrap, topic, records, values, chunk=20_000)
        produced += len(records)
        print(f"  produced {produced:,} / {opts.records:,}", flush=True)
    return topic


def copied(record: LogRecord, copy: int) -> LogRecord:
    """The record in copy number `copy` of the base stream: other mailbox and message ids, times
    a day later per copy — nothing a decoder could find again in an earlier copy."""
    prefix, later = f"c{copy}-", dt.timedelta(days=copy)
    if isinstance(record, MailboxSnapshot):
        return dataclasses.replace(
            record,
            mailbox_id=prefix + record.mailbox_id,
            taken_at=record.taken_at + later,
            inbox=tuple(_listed(m, prefix, later) for m in record.inbox),
            deleted=tuple(_listed(m, prefix, later) for m in record.deleted),
        )
    return dataclasses.replace(
        record,
        mailbox_id=prefix + record.mailbox_id,
        event_time=record.event_time + later,
        ingested_at=record.ingested_at + later,
        messages=tuple(
            dataclasses.replace(
                m,
                message_id=prefix + m.message_id,
                receive_time=m.receive_time + later if m.receive_time else None,
            )
            for m in record.messages
        ),
    )


def _listed(message: SnapshotMessage, prefix: str, later: dt.timedelta) -> SnapshotMessage:
    listing, _, guid = message.message_id.rpartition(":")  # listings name messages 0:<guid>
    return dataclasses.replace(
        message,
        message_id=f"{listing}:{prefix}{guid}" if listing else prefix + guid,
        arrival_time=message.arrival_time + later if message.arrival_time else None,
    )


async def raw_read(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending, count, size = {tp for tp in tps if ends[tp] > 0}, 0, 0
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=20_000)
            for records in batch.values():
                count += len(records)
                size += sum(len(r.value) for r in records)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return count
    finally:
        await consumer.stop()


def folded(projection: Projection) -> int:
    """Records the fold counted (each exactly once: applied, duplicate or stale)."""
    return sum(
        s.events_applied + s.duplicates + s.stale + s.snapshots_applied
        for s in projection.mailboxes.values()
    )


async def rebuild(bootstrap: str, topic: str, workdir: Path) -> dict[str, Any]:
    """A real `ingest projector` from offset 0: until the group committed every partition's end."""
    group = f"bench-rebuild-{uuid.uuid4().hex[:8]}"
    state = f"{topic}-state-{group}"
    proc = ProjectorProcess(bootstrap, topic, state, CUMI_PROJECTOR_GROUP_ID=group)
    ends = await end_offsets(bootstrap, topic)
    total = sum(ends.values())
    wall, started_cpu = time.perf_counter(), cpu_seconds()
    await proc.start(workdir / "projector.log")
    try:
        async with GroupOffsets(bootstrap, group, topic) as offsets:
            while True:
                committed = await offsets.committed()
                if all(committed.get(p, 0) >= end for p, end in ends.items()):
                    break
                assert proc.proc is not None and proc.proc.returncode is None, "projector died"
                await asyncio.sleep(0.5)
        seconds = time.perf_counter() - wall
    finally:
        await proc.terminate()
    cpu = cpu_seconds() - started_cpu  # the projector is a finished child now
    return {
        "records": total,
        "seconds": round(seconds, 1),
        "per_second": round(total / seconds),
        "per_cpu_second": round(total / cpu) if cpu > 0 else 0,
    }


async def timed_replay(bootstrap: str, topic: str, workers: int) -> tuple[dict[str, float], Any]:
    """One replay of the whole topic, measured; and the states it folded."""
    folded_states: list[Projection] = []

    async def work() -> int:
        folded_states.append(await replay(bootstrap, topic, workers=workers))
        return folded(folded_states[0])

    figures = await measure(work)
    return figures, {m: s.to_record() for m, s in folded_states[0].mailboxes.items()}


async def run_rounds(bootstrap: str, topic: str, opts: Options) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"raw": [], "replay": [], "replay_parallel": []}
    checks: dict[str, Any] = {}
    for round_number in range(1, opts.rounds + 1):
        runs["raw"].append(await measure(lambda: raw_read(bootstrap, topic)))
        figures, single = await timed_replay(bootstrap, topic, 1)
        runs["replay"].append(figures)
        figures, several = await timed_replay(bootstrap, topic, opts.workers)
        runs["replay_parallel"].append(figures)
        if not checks:  # the parallel fold must give the very same states
            checks = {"mailboxes": len(single), "parallel_equals_single": single == several}
        print(
            f"  round {round_number}: "
            + ", ".join(f"{k} {v[-1]['per_second']:,}/s" for k, v in runs.items()),
            flush=True,
        )
    return {"runs": runs, "checks": checks}


def summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("raw", "replay", "replay_parallel"):
        rates = [r["per_second"] for r in runs[name]]
        cpu = [r["per_cpu_second"] for r in runs[name]]
        out[name] = {
            "best_per_second": max(rates),
            "median_per_second": statistics.median(rates),
            "best_per_cpu_second": max(cpu),
        }
    # ratios within each round (same load), then the median over rounds
    for name in ("replay", "replay_parallel"):
        ratios = [
            r["per_second"] / raw["per_second"]
            for r, raw in zip(runs[name], runs["raw"], strict=True)
        ]
        out[name]["median_ratio_to_raw"] = round(statistics.median(ratios), 2)
    return out


@contextlib.asynccontextmanager
async def broker(bootstrap: str | None) -> AsyncIterator[str]:
    if bootstrap is not None:
        yield bootstrap
        return
    async with LocalBroker() as local:
        yield local.bootstrap


async def run_async(opts: Options, bootstrap: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "options": dataclasses.asdict(opts),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": load_average(),
    }
    async with broker(bootstrap) as servers:
        topic = await ensure_stream(servers, opts)
        result["topic"] = topic
        result.update(await run_rounds(servers, topic, opts))
        result["summary"] = summary(result["runs"])
        if opts.projector:
            with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
                result["rebuild"] = await rebuild(servers, topic, Path(tmp))
            print(f"  rebuild: {result['rebuild']}", flush=True)
    result["load_average_after"] = load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    d = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    parser.add_argument("--records", type=int, default=d.records)
    parser.add_argument("--base", type=int, default=d.base, help="records generated, then copied")
    parser.add_argument("--mailboxes", type=int, default=d.mailboxes)
    parser.add_argument("--rounds", type=int, default=d.rounds)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--no-projector", dest="projector", action="store_false")
    args = parser.parse_args(argv)
    opts = Options(
        records=args.records,
        base=min(args.base, args.records),
        mailboxes=args.mailboxes,
        rounds=args.rounds,
        workers=args.workers,
        projector=args.projector,
    )
    print(f"machine {machine()}; load {load_average()}", flush=True)
    result = asyncio.run(run_async(opts, args.bootstrap))
    for name, figures in result["summary"].items():
        print(f"  {name}: {figures}")
    print(f"results in {record('replay', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
