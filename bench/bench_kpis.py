"""KPI consumer throughput: folding a generated events topic into the voicemail KPIs.

Three numbers on the same realistic stream (the test suite's generator: the simulator's scenario
engine, the worker's normalizer, repeats, late events, snapshots):

- **fold**: records per second through `Projection.apply` alone, and through `KpiLedger.apply`
  (the projection plus the KPI bookkeeping), decoded records in memory — the KPI overhead;
- **rebuild**: a real `KpiConsumer` reading the topic from offset 0 on a local broker until it is
  ready (fetch, decode, fold): what a restart costs per record of log;
- **evaluation**: one scrape's `cumi_voicemail_*` families of the resulting state.

Measures, never asserts. `python -m bench.bench_kpis [--bootstrap HOST:PORT] [--records N]
[--mailboxes N]`; results in bench/results/kpis.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import record
from ingest.devservices.kafka import LocalBroker
from ingest.eventlog import codec
from ingest.eventlog.topics import TopicSpec, ensure_topics
from ingest.events import LogRecord
from ingest.kpis.consumer import KpiConsumer, KpiSettings
from ingest.kpis.exposition import families
from ingest.kpis.ledger import KpiLedger
from ingest.state.projection import Projection

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.producing import generate, produce

PARTITIONS = 12


def fold_rates(records: list[LogRecord]) -> dict[str, float]:
    """Records per second through the projection alone and through the KPI ledger."""
    rates: dict[str, float] = {}
    for name, apply in (
        ("projection", Projection().apply),
        ("kpi_ledger", KpiLedger().apply),
    ):
        started = time.perf_counter()
        for item in records:
            apply(item)
        rates[name] = round(len(records) / (time.perf_counter() - started))
    return rates


async def rebuild(bootstrap: str, topic: str, records: int) -> tuple[dict[str, float], KpiConsumer]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_EVENTS_TOPIC": topic,
        "CUMI_METRICS_HOST": "127.0.0.1",
        "CUMI_METRICS_PORT": "0",
        "CUMI_KPIS_GROUP_ID": f"bench-kpis-{uuid.uuid4().hex[:8]}",
    }
    started = time.perf_counter()
    consumer = KpiConsumer(KpiSettings.load(env))
    await consumer.start()
    while not consumer.ready:  # noqa: ASYNC110 - a benchmark polls what it measures
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "per_second": round(records / seconds)}, consumer


def evaluation(ledger: KpiLedger) -> dict[str, Any]:
    started = time.perf_counter()
    families(ledger, time.time())
    messages = sum(len(s.messages) for s in ledger.projection.mailboxes.values())
    return {
        "seconds": round(time.perf_counter() - started, 4),
        "mailboxes": len(ledger.projection.mailboxes),
        "messages": messages,
    }


async def run(bootstrap: str | None, records: int, mailboxes: int) -> dict[str, Any]:
    stream = generate(events=records, mailboxes=mailboxes, seed=23).records
    result: dict[str, Any] = {"records": len(stream), "mailboxes": mailboxes}
    result["fold_per_second"] = fold_rates(stream)
    print(f"  fold: {result['fold_per_second']} records/s", flush=True)
    with tempfile.TemporaryDirectory() as data:
        broker = None if bootstrap else LocalBroker(data_dir=Path(data))
        if broker is not None:
            await broker.start()
            bootstrap = broker.bootstrap
        assert bootstrap is not None
        try:
            topic = f"bench-kpis-{uuid.uuid4().hex[:8]}"
            await ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, 1, {})])
            values = [codec.encode(r) for r in stream]
            await produce(bootstrap, topic, stream, values, chunk=20_000)
            result["rebuild"], consumer = await rebuild(bootstrap, topic, len(stream))
            print(f"  rebuild: {result['rebuild']}", flush=True)
            result["evaluation"] = evaluation(consumer.ledger)
            print(f"  evaluation: {result['evaluation']}", flush=True)
            await consumer.stop()
        finally:
            if broker is not None:
                await broker.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_kpis")
    parser.add_argument("--bootstrap", default=None, help="an existing broker (default: start one)")
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--mailboxes", type=int, default=2000)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.bootstrap, args.records, args.mailboxes))
    print(f"  written to {record('kpis', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
