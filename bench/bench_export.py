"""`ingest export` throughput, Parquet size, and the time of each shipped DuckDB query.

The events topic is bench_replay's (≥ 1,000,000 records of the test suite's realistic stream: a
base stream copied under other mailbox ids, a day later per copy, so ten days for the default
options; reused when a previous run left it on the broker). One full export into an empty
directory (the real `export()`: fetch, decode, fold, rows, Parquet with zstd, end-of-day states,
the fold's checkpoint and the manifest per batch), then a rerun that finds nothing new, then every
KPI query (`ingest.export.sql.run_query`, as_of after the last record), each `--rounds` times.
Measures, never asserts. `python -m bench.bench_export [--bootstrap HOST:PORT] [--records N]`;
results in bench/results/export.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine, record
from bench.bench_replay import Options, broker, cpu_seconds, ensure_stream, load_average
from ingest.export.exporter import BATCH_RECORDS, export
from ingest.export.sql import connect, query_names, run_query

AS_OF = dt.datetime(2024, 4, 1, tzinfo=dt.UTC)
"""After every record of the stream (it starts 2024-03-01, a day per copy)."""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


async def timed_export(bootstrap: str, topic: str, out: Path, batch: int) -> dict[str, Any]:
    cpu, started = cpu_seconds(), time.perf_counter()
    result = await export(bootstrap, topic, out, batch_records=batch)
    wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    return {
        "records": result.records,
        "event_rows": result.event_rows,
        "state_rows": result.state_rows,
        "batches": result.batches,
        "seconds": round(wall, 2),
        "records_per_s": round(result.records / wall),
        "records_per_cpu_s": round(result.records / used) if used else None,
    }


def sizes(out: Path, records: int) -> dict[str, Any]:
    events, states = folder_bytes(out / "events"), folder_bytes(out / "states")
    per_million = 1_000_000 / max(records, 1)
    return {
        "events_bytes": events,
        "states_bytes": states,
        "checkpoint_bytes": folder_bytes(out / "_export"),
        "events_mb_per_million_records": round(events * per_million / 1e6, 1),
        "states_mb_per_million_records": round(states * per_million / 1e6, 1),
        "files": sum(1 for _ in out.rglob("*.parquet")),
    }


def query_times(out: Path, rounds: int) -> dict[str, float]:
    """Median seconds per query on one connection (views made once), DuckDB's own threads."""
    con = connect(out)
    times = {}
    try:
        for name in query_names():
            runs = []
            for _ in range(rounds):
                started = time.perf_counter()
                run_query(name, out, as_of=AS_OF, connection=con)
                runs.append(time.perf_counter() - started)
            times[name] = round(statistics.median(runs), 3)
            print(f"  query {name}: {times[name]} s", flush=True)
    finally:
        con.close()
    return times


async def run_async(opts: Options, bootstrap: str | None, batch: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "options": {"records": opts.records, "base": opts.base, "mailboxes": opts.mailboxes,
                    "batch_records": batch},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": load_average(),
    }  # fmt: skip
    async with broker(bootstrap) as servers:
        topic = await ensure_stream(servers, opts)
        with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
            out = Path(tmp)
            result["export"] = await timed_export(servers, topic, out, batch)
            print(f"  export: {result['export']}", flush=True)
            started = time.perf_counter()
            await export(servers, topic, out)
            result["rerun_nothing_new_s"] = round(time.perf_counter() - started, 2)
            result["size"] = sizes(out, result["export"]["records"])
            print(f"  size: {result['size']}", flush=True)
            result["query_seconds"] = query_times(out, opts.rounds)
    result["load_average_after"] = load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    d = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    parser.add_argument("--records", type=int, default=d.records)
    parser.add_argument("--base", type=int, default=d.base, help="records generated, then copied")
    parser.add_argument("--mailboxes", type=int, default=d.mailboxes)
    parser.add_argument("--rounds", type=int, default=d.rounds, help="runs of each query")
    parser.add_argument("--batch-records", type=int, default=BATCH_RECORDS)
    args = parser.parse_args(argv)
    opts = Options(
        records=args.records,
        base=min(args.base, args.records),
        mailboxes=args.mailboxes,
        rounds=args.rounds,
    )
    print(f"machine {machine()}; load {load_average()}", flush=True)
    result = asyncio.run(run_async(opts, args.bootstrap, args.batch_records))
    print(f"results in {record('export', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
