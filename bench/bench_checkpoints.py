"""Checkpoints: history questions whose cost does not grow with the log, and the rebuild.

On the `bench replay` topic (12 partitions, the generated stream copied until there are
`--records`, each copy a day later than the one before; reused if a previous run left it):

1. **rebuild**: a real `ingest projector` under a fresh group, state topic and checkpoints topic
   catching up from offset 0 (in catch-up worker processes, its default; `--catch-up-processes`),
   writing checkpoints every `--checkpoint-records` offsets per partition — until the group
   committed the end of every partition. Its checkpoint metrics are scraped before it stops
   (encode time, bytes, count). With `--instances 2`, two projectors share the partitions (the
   same group), as two replay processes share them. Then the same rebuild folding in the
   projector's own process (`CUMI_PROJECTOR_CATCH_UP_PROCESSES=0`), for the comparison.
2. **replay x2**: `replay --all --workers 2` of the whole log, the full fold, for the ratio
   rebuild / replay in the same run.
3. **rebuild from a checkpoint**: a projector of another new group and state topic, but the
   checkpoints of (1): it starts each partition from its newest checkpoint.
4. **questions at three log lengths** (`--lengths`, fractions of the log): for each, a recent
   time T in the last copy of the stream that long (what `--at` asks of a log of that length):
   `--all --at T` and `--mailbox ID --at T` answered from checkpoints and by the full fold
   (`--no-checkpoints`), each answer compared; wall seconds of the library call, and of the CLI
   (`ingest replay …`, a new Python process) at the full length.

Rates are records per wall-clock second. Measures, never asserts. `python -m bench.bench_checkpoints
[--bootstrap HOST:PORT] [--records N]`; results in bench/results/checkpoints.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import machine, record
from bench.bench_replay import Options as StreamOptions
from bench.bench_replay import broker, cpu_seconds, ensure_stream, load_average
from ingest.eventlog.topics import partition_for
from ingest.state.checkpoints import CheckpointReader
from ingest.state.projection import Projection
from ingest.state.replay import UntilTime, replay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.producing import (
    START,
    GroupOffsets,
    ProjectorProcess,
    end_offsets,
    generate,
)

PARTITIONS = 12
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    records: int = 5_000_000
    base: int = 100_000
    mailboxes: int = 2000
    checkpoint_records: int = 25_000
    instances: int = 1
    lengths: tuple[float, ...] = (0.2, 0.5, 1.0)
    workers: int = 2
    reuse: str | None = None
    """The state topic of an earlier run's rebuild: ask the questions only, of its checkpoints."""
    catch_up_processes: int | None = None
    """CUMI_PROJECTOR_CATCH_UP_PROCESSES of the rebuild (None: the projector's default, one per
    CPU). A second rebuild folds in the projector's own process (0), for the comparison."""


async def rebuild(
    bootstrap: str,
    topic: str,
    workdir: Path,
    opts: Options,
    *,
    checkpoints_topic: str | None = None,
    instances: int = 1,
    catch_up_processes: int | None = None,
) -> dict[str, Any]:
    """Projector(s) of a new group from offset 0 (or from `checkpoints_topic`'s checkpoints)
    until the group has committed every partition's end."""
    group = f"bench-ckpt-{uuid.uuid4().hex[:8]}"
    state = f"{topic}-state-{group}"
    settings: dict[str, Any] = {
        "CUMI_PROJECTOR_GROUP_ID": group,
        "CUMI_PROJECTOR_CHECKPOINT_RECORDS": opts.checkpoint_records,
    }
    if checkpoints_topic is not None:
        settings["KAFKA_CHECKPOINTS_TOPIC"] = checkpoints_topic
    if catch_up_processes is not None:
        settings["CUMI_PROJECTOR_CATCH_UP_PROCESSES"] = catch_up_processes
    procs = [ProjectorProcess(bootstrap, topic, state, **settings) for _ in range(instances)]
    ends = await end_offsets(bootstrap, topic)
    total = sum(ends.values())
    wall, started_cpu = time.perf_counter(), cpu_seconds()
    for i, proc in enumerate(procs):
        await proc.start(workdir / f"projector-{group}-{i}.log")
    metrics: dict[str, float] = {}
    try:
        async with GroupOffsets(bootstrap, group, topic) as offsets:
            while True:
                committed = await offsets.committed()
                if all(committed.get(p, 0) >= end for p, end in ends.items()):
                    break
                for proc in procs:
                    assert proc.proc is not None and proc.proc.returncode is None, "died"
                await asyncio.sleep(0.5)
        seconds = time.perf_counter() - wall
        for proc in procs:
            for name in (
                "cumi_projector_checkpoint_seconds_sum",
                "cumi_projector_checkpoint_seconds_count",
                "cumi_projector_checkpoint_bytes_total",
                "cumi_projector_checkpoints_total",
                "cumi_projector_transaction_seconds_sum",
                "cumi_projector_transactions_total",
            ):
                for _, value in (await proc.metric(name)).items():
                    metrics[name] = metrics.get(name, 0.0) + value
    finally:
        for proc in procs:
            await proc.terminate()
    cpu = cpu_seconds() - started_cpu
    return {
        "group": group,
        "state_topic": state,
        "checkpoints_topic": checkpoints_topic or f"{state}-checkpoints",
        "instances": instances,
        "catch_up_processes": catch_up_processes,
        "records": total,
        "seconds": round(seconds, 1),
        "per_second": round(total / seconds),
        "per_cpu_second": round(total / cpu) if cpu > 0 else 0,
        "metrics": metrics,
    }


async def checkpoint_sizes(bootstrap: str, topic: str, checkpoints: str) -> dict[str, Any]:
    reader = CheckpointReader(checkpoints, topic, bootstrap_servers=bootstrap)
    if not await reader.start(PARTITIONS):
        return {}
    try:
        listed = await reader.manifests(range(PARTITIONS))
    finally:
        await reader.stop()
    manifests = [m for found in listed.values() for m in found]
    chunk_bytes = [c.bytes for m in manifests for c in m.chunks]
    newest = [found[-1] for found in listed.values() if found]
    return {
        "checkpoints": len(manifests),
        "per_partition": sorted(len(found) for found in listed.values()),
        "chunks": len(chunk_bytes),
        "largest_chunk_bytes": max(chunk_bytes, default=0),
        "topic_bytes": sum(chunk_bytes),
        "newest_round_bytes": sum(m.state_bytes for m in newest),
        "newest_round_mailboxes": sum(m.mailboxes for m in newest),
    }


async def timed(work: Any) -> tuple[float, Projection]:
    started = time.perf_counter()
    answer = await work
    return round(time.perf_counter() - started, 2), answer


def same(a: Projection, b: Projection) -> bool:
    return a.to_json(detail=True) == b.to_json(detail=True)


async def questions(
    bootstrap: str, topic: str, checkpoints: str, opts: Options, mailbox_of: Any
) -> list[dict[str, Any]]:
    copies = -(-opts.records // opts.base)
    out = []
    for share in opts.lengths:
        last_copy = max(0, round(share * copies) - 1)
        # about three hours of EventTime per copy: an hour before the end of that copy
        at = UntilTime(START + dt.timedelta(days=last_copy, hours=2, minutes=30))
        mailbox = mailbox_of(last_copy)
        row: dict[str, Any] = {
            "log_records": min(opts.records, (last_copy + 1) * opts.base),
            "at": at.at.isoformat(),
            "mailbox_id": mailbox,
            "partition": partition_for(mailbox, PARTITIONS),
        }
        for name, target in (("all", None), ("mailbox", mailbox)):
            fast_s, fast = await timed(
                replay(bootstrap, topic, target, at, workers=None, checkpoints=checkpoints)
            )
            full_s, full = await timed(replay(bootstrap, topic, target, at, workers=None))
            row[name] = {
                "from_checkpoints_s": fast_s,
                "full_fold_s": full_s,
                "equal": same(fast, full),
                "mailboxes": len(full.mailboxes),
            }
        print(f"  {row}", flush=True)
        out.append(row)
    return out


def cli_seconds(bootstrap: str, topic: str, state: str, args: list[str]) -> float:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))},
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_EVENTS_TOPIC": topic,
        "KAFKA_STATE_TOPIC": state,
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ingest", "--log-level", "WARNING", "replay", *args],
        env=env,
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return round(time.perf_counter() - started, 2)


async def timed_replay_x2(bootstrap: str, topic: str, workers: int) -> dict[str, Any]:
    started = time.perf_counter()
    projection = await replay(bootstrap, topic, workers=workers)
    seconds = time.perf_counter() - started
    count = sum(
        s.events_applied + s.duplicates + s.stale + s.snapshots_applied
        for s in projection.mailboxes.values()
    )
    return {"records": count, "seconds": round(seconds, 1), "per_second": round(count / seconds)}


async def build(servers: str, topic: str, opts: Options, result: dict[str, Any]) -> None:
    """The rebuild, the full fold it is compared with, the checkpoints it wrote, and a second
    rebuild from those checkpoints."""
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        built = await rebuild(
            servers,
            topic,
            Path(tmp),
            opts,
            instances=opts.instances,
            catch_up_processes=opts.catch_up_processes,
        )
        result["rebuild"] = built
        print(f"  rebuild: {built}", flush=True)
        result["replay_x2"] = await timed_replay_x2(servers, topic, opts.workers)
        print(f"  replay x{opts.workers}: {result['replay_x2']}", flush=True)
        in_process = await rebuild(servers, topic, Path(tmp), opts, catch_up_processes=0)
        result["rebuild_in_process"] = in_process
        print(f"  rebuild in the projector's process: {in_process}", flush=True)
        replay_rate = result["replay_x2"]["per_second"]
        result["rebuild_over_replay_x2"] = round(built["per_second"] / replay_rate, 2)
        result["in_process_over_replay_x2"] = round(in_process["per_second"] / replay_rate, 2)
        result["checkpoints"] = await checkpoint_sizes(servers, topic, built["checkpoints_topic"])
        print(f"  checkpoints: {result['checkpoints']}", flush=True)
        again = await rebuild(
            servers, topic, Path(tmp), opts, checkpoints_topic=built["checkpoints_topic"]
        )
        result["rebuild_from_checkpoint"] = again
        print(f"  rebuild from a checkpoint: {again}", flush=True)


async def run_async(opts: Options, bootstrap: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "options": dataclasses.asdict(opts),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": load_average(),
    }
    stream = StreamOptions(records=opts.records, base=opts.base, mailboxes=opts.mailboxes)
    async with broker(bootstrap) as servers:
        generation = time.perf_counter()
        topic = await ensure_stream(servers, stream)
        result["stream_seconds"] = round(time.perf_counter() - generation, 1)
        result["topic"] = topic
        if opts.reuse is not None:
            state = opts.reuse
        else:
            await build(servers, topic, opts, result)
            state = result["rebuild"]["state_topic"]
        checkpoints = f"{state}-checkpoints"
        copies = -(-opts.records // opts.base)
        base = generate(events=opts.base, mailboxes=max(1, opts.mailboxes // copies), seed=17)
        counts: dict[str, int] = {}
        for r in base.records:
            counts[r.mailbox_id] = counts.get(r.mailbox_id, 0) + 1
        busiest = max(counts, key=lambda m: counts[m])
        result["questions"] = await questions(
            servers, topic, checkpoints, opts, lambda c: f"c{c}-{busiest}"
        )
        last = result["questions"][-1]
        result["cli_full_length"] = {
            "all_at_s": cli_seconds(servers, topic, state, ["--all", "--at", last["at"]]),
            "mailbox_at_s": cli_seconds(
                servers, topic, state, ["--mailbox", last["mailbox_id"], "--at", last["at"]]
            ),
        }
        print(f"  CLI at full length: {result['cli_full_length']}", flush=True)
    result["load_average_after"] = load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    d = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    parser.add_argument("--records", type=int, default=d.records)
    parser.add_argument("--base", type=int, default=d.base)
    parser.add_argument("--mailboxes", type=int, default=d.mailboxes)
    parser.add_argument("--checkpoint-records", type=int, default=d.checkpoint_records)
    parser.add_argument("--instances", type=int, default=d.instances)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument(
        "--catch-up-processes",
        type=int,
        default=None,
        help="the rebuild's CUMI_PROJECTOR_CATCH_UP_PROCESSES (default: the projector's)",
    )
    parser.add_argument(
        "--lengths", default=",".join(map(str, d.lengths)), help="fractions of the log"
    )
    parser.add_argument(
        "--reuse",
        metavar="STATE_TOPIC",
        help="skip the rebuilds: ask the questions of the "
        "checkpoints an earlier run's rebuild wrote (its state topic)",
    )
    args = parser.parse_args(argv)
    opts = Options(
        records=args.records,
        base=min(args.base, args.records),
        mailboxes=args.mailboxes,
        checkpoint_records=args.checkpoint_records,
        instances=args.instances,
        lengths=tuple(float(x) for x in args.lengths.split(",")),
        workers=args.workers,
        reuse=args.reuse,
        catch_up_processes=args.catch_up_processes,
    )
    print(f"machine {machine()}; load {load_average()}", flush=True)
    result = asyncio.run(run_async(opts, args.bootstrap))
    summary = ("rebuild_over_replay_x2", "in_process_over_replay_x2", "cli_full_length")
    print(json.dumps({k: result.get(k) for k in summary}))
    print(f"results in {record('checkpoints', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
