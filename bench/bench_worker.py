"""Ingest worker benchmarks: simulator → `ingest worker` (a real process) → Kafka acknowledgements.

Every process is real: a local Kafka broker (started here unless `--bootstrap`), the simulator in a
child process, `python -m ingest worker` as a subprocess with production defaults. Each figure has
a baseline measured in the same run, on the same broker. Measures, never asserts:

1. Throughput. The simulator generates a burst of `--events` events over `--mailboxes` mailboxes
   with delivery held back, then queues them all at once on the worker's session; the clock runs
   from that release to the broker's append time of the burst's last record (the events topic uses
   LogAppendTime; the worker's own counter confirms every event was acknowledged). Baselines:
   raw aiokafka sending the burst's own records (same key, value, headers and timestamp, the
   worker's producer settings) to a fresh topic of the same shape, with `send()` per record (all
   in flight at once) and with the batch API (`send_batch()`, one batch per partition per 1,000
   records, as the sink does), and Kafka's Java `ProducerPerformance` with the same record (value)
   size — the near-limit line. Rounds alternate them, so load from other processes hits all alike.
2. Latency at a steady `--rate` for `--duration` s: from the simulator's publish (wall clock,
   recorded per event in the simulator process) to the broker's append time of that event's
   record, matched by (MailboxId, USN, EventType). The worker's own histogram (CometD receive →
   ack, bucketed) is shown beside it. Baseline: raw aiokafka sending records at the same rate,
   send → ack and send → append time.
3. `--subscriptions` mailboxes: time from the worker's process start until all are subscribed
   (cumi_worker_subscriptions{state="active"}) through the simulator's 5-concurrent REST throttle,
   until ready, and until start-up gap repair is done; then the worker's RSS while events flow at
   `--rate` for `--steady` s. Baselines: a bare aiohttp client doing the same requestnotification
   calls (5 at a time, the throttle's full width) and Bayeux subscribes (same batch size), and the
   RSS of a Python process that has only imported the worker.

`--schema-registry` runs it all in registry mode (a local schema registry; the worker writes the
Confluent wire format), to compare with the default single-object encoding: the raw baselines
then send the Confluent-framed records the worker wrote.

`python -m bench.bench_worker [--quick] [--only throughput,latency,mailboxes] [--profile]
[--schema-registry]`; results in bench/results/worker.json (with the machine and the load
average).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from bench import machine, record
from bench.worker_rig import (
    Metrics,
    SimProcess,
    WorkerProcess,
    cpu_seconds,
    create_topics,
    free_port,
    histogram_delta,
    histogram_quantile,
    load_average,
    proc_status_mb,
    producer_performance,
    read_topic,
    simulator,
    total,
    worker_env,
)
from ingest.devservices.kafka import KafkaRuntime, LocalBroker, ensure_runtime
from ingest.devservices.registry import LocalRegistry
from ingest.eventlog import codec
from ingest.eventlog.schema_registry import schema_ids
from ingest.eventlog.sink import Sink
from ingest.eventlog.topics import key_partition
from ingest.events import MailboxEvent
from ingest.settings import SchemaRegistrySettings, Settings
from ingest.simulator.users import UserTable

SEED = 1
PUBLISHED = "cumi_worker_events_published_total"


@dataclass(frozen=True, slots=True)
class Options:
    events: int = 100_000
    rounds: int = 8
    mailboxes: int = 1_000
    rate: float = 2_000.0
    duration: float = 30.0
    subscriptions: int = 20_000
    steady: float = 30.0
    only: tuple[str, ...] = ("throughput", "latency", "mailboxes")
    profile: bool = False
    schema_registry: bool = False


QUICK = Options(events=5_000, rounds=1, mailboxes=100, duration=5.0, subscriptions=1_000, steady=5)


@dataclass(slots=True)
class Rig:
    bootstrap: str
    runtime: KafkaRuntime
    workdir: Path
    topic_count: int = 0
    registry_url: str | None = None
    """Registry mode: the local schema registry's Confluent-compatible URL."""
    records: list[Record] = dataclasses.field(default_factory=list)
    """One burst's records as the worker sent them: what the raw producer baselines send."""

    async def topics(self, name: str) -> Any:
        self.topic_count += 1
        return await create_topics(
            self.bootstrap, f"bench-{os.getpid()}-{self.topic_count}-{name}-"
        )

    def kafka_settings(self, topics: Any) -> Any:
        """The Kafka settings the worker loads from the same environment."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "KAFKA_EVENTS_TOPIC": topics.events}
        env |= {"KAFKA_DLQ_TOPIC": topics.dlq}
        env |= {"CUMI_SERVER_URL": "http://127.0.0.1:1", "CUMI_MAILBOXES_FILE": __file__}
        env |= {"CUMI_CREDENTIALS_FILE": __file__}
        return Settings.load(env).kafka


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of seconds, in ms."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {
        "count": len(ordered),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _best_median(rates: list[float]) -> dict[str, float]:
    return {"best": round(max(rates)), "median": round(statistics.median(rates))}


# -- the worker process with its simulator ------------------------------------------------------


@contextlib.asynccontextmanager
async def _worker(rig: Rig, sim: SimProcess, topics: Any, name: str, **extra: Any) -> Any:
    env = worker_env(sim, rig.bootstrap, topics, free_port())
    if rig.registry_url is not None:
        env["KAFKA_SCHEMA_REGISTRY_URL"] = rig.registry_url
    worker = WorkerProcess(env, rig.workdir / f"worker-{name}.log", **extra)
    await worker.start()
    try:
        yield worker
    finally:
        code = await worker.stop()
        if code != 0:
            print(f"  ! worker exited {code}; log: {worker.log_path}", flush=True)


async def _settled(worker: WorkerProcess, mailboxes: int, within: float) -> float:
    """Wait until the worker is ready and start-up gap repair is done; returns when (time.time)."""
    async with asyncio.timeout(within):
        while not await worker.is_ready():  # noqa: ASYNC110 - another process: poll it
            await asyncio.sleep(0.2)

    def check(m: Metrics) -> bool:
        return (
            total(m, "cumi_worker_reconcile_pending") == 0
            and total(m, "cumi_worker_queue_events") == 0
            and total(m, "cumi_worker_snapshots_published_total") >= mailboxes
        )

    return await worker.wait_until(check, within, poll=0.25)


async def _last_append(bootstrap: str, topic: str) -> float:
    """The broker's append time (s) of the newest record of `topic` (LogAppendTime)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while not consumer.assignment():  # noqa: ASYNC110 - aiokafka offers no event
                await asyncio.sleep(0.05)
        end = await consumer.end_offsets(list(consumer.assignment()))
        wanted = {tp for tp, offset in end.items() if offset > 0}
        for tp in wanted:
            consumer.seek(tp, end[tp] - 1)
        newest = 0
        async with asyncio.timeout(30):
            while wanted:
                for tp, recs in (await consumer.getmany(*wanted, timeout_ms=500)).items():
                    newest = max([newest, *(r.timestamp for r in recs)])
                    wanted.discard(tp)
        return newest / 1000
    finally:
        await consumer.stop()


async def _worker_burst(
    rig: Rig, sim: SimProcess, worker: WorkerProcess, topic: str, events: int
) -> dict[str, Any]:
    held = await sim.call("hold", events)
    before = await worker.metrics()
    base = total(before, PUBLISHED)
    cpu = cpu_seconds(worker.pid), cpu_seconds(sim.pid)
    released, count = await sim.call("release")
    acked = await worker.wait_until(lambda m: total(m, PUBLISHED) >= base + count, 600, poll=0.5)
    cpu = cpu_seconds(worker.pid) - cpu[0], cpu_seconds(sim.pid) - cpu[1]
    appended = await _last_append(rig.bootstrap, topic)
    metrics = await worker.metrics()
    elapsed = appended - released
    return {
        "events": count,
        "held_messages": held,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(count / elapsed),
        "ack_seen_after_s": round(acked - released, 3),
        "worker_cpu_us_per_event": round(cpu[0] / count * 1e6, 1),
        "simulator_cpu_us_per_event": round(cpu[1] / count * 1e6, 1),
        "dead_lettered": _delta(before, metrics, "cumi_worker_events_dead_lettered_total"),
        "backpressure_s": round(
            _delta(before, metrics, "cumi_worker_backpressure_seconds_total"), 2
        ),
        "gc_collections": _delta(before, metrics, "python_gc_collections_total"),
    }


def _delta(before: Metrics, after: Metrics, name: str) -> float:
    return total(after, name) - total(before, name)


# -- raw aiokafka ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


def _as_sent(rig: Rig, records: list[ConsumerRecord[bytes, bytes]], count: int) -> list[Record]:
    """The newest `count` event records as the worker sent them (the topic's timestamps are the
    broker's; the worker's were the events' EventTime, restored from the decoded record)."""
    events: list[Record] = []
    ids = schema_ids(SchemaRegistrySettings(rig.registry_url) if rig.registry_url else None)
    for r in sorted(records, key=lambda r: r.timestamp, reverse=True):
        decoded = codec.decode(r.value, ids)
        if isinstance(decoded, MailboxEvent):
            events.append(Record(r.key, r.value, list(r.headers), codec.timestamp_ms(decoded)))
            if len(events) == count:
                break
    return events[::-1]


async def _raw_producer(rig: Rig, topics: Any) -> AIOKafkaProducer:
    # the worker's own producer construction, so the settings are the same by definition
    producer: AIOKafkaProducer = Sink(rig.kafka_settings(topics))._new_producer()
    await producer.start()
    return producer


async def _raw_burst(rig: Rig, topics: Any, records: list[Record]) -> dict[str, Any]:
    """`send()` per record, all in flight at once: aiokafka batches them itself (linger)."""
    producer = await _raw_producer(rig, topics)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        futures = [
            await producer.send(
                topics.events, r.value, key=r.key, headers=r.headers, timestamp_ms=r.timestamp_ms
            )
            for r in records
        ]
        await asyncio.gather(*futures)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await producer.stop()
    return _rate(len(records), elapsed, cpu)


async def _raw_batches(
    rig: Rig, topics: Any, records: list[Record], payload: int = 1_000
) -> dict[str, Any]:
    """aiokafka's batch API: per `payload` records (the simulator's Bayeux batch size), one
    record batch per partition (default partitioner: murmur2 of the key), `send_batch()`."""
    producer = await _raw_producer(rig, topics)
    try:
        partitions = sorted(await producer.partitions_for(topics.events))
        started, cpu = time.perf_counter(), time.process_time()
        futures = []
        for i in range(0, len(records), payload):
            builders: dict[int, Any] = {}
            for r in records[i : i + payload]:
                p = partitions[key_partition(r.key or b"", len(partitions))]
                builder = builders.get(p)
                if builder is None:
                    builder = builders[p] = producer.create_batch()
                if (
                    builder.append(
                        key=r.key, value=r.value, timestamp=r.timestamp_ms, headers=r.headers
                    )
                    is None
                ):  # full: send it, start another
                    futures.append(await producer.send_batch(builder, topics.events, partition=p))
                    builder = builders[p] = producer.create_batch()
                    builder.append(
                        key=r.key, value=r.value, timestamp=r.timestamp_ms, headers=r.headers
                    )
            for p, builder in builders.items():
                futures.append(await producer.send_batch(builder, topics.events, partition=p))
        await asyncio.gather(*futures)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await producer.stop()
    return _rate(len(records), elapsed, cpu)


def _rate(count: int, elapsed: float, cpu: float) -> dict[str, Any]:
    return {
        "events": count,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(count / elapsed),
        "cpu_us_per_event": round(cpu / count * 1e6, 1),
    }


async def _raw_paced(
    rig: Rig, topics: Any, records: list[Record], rate: float, duration: float
) -> tuple[list[float], list[float]]:
    """Records at `rate`/s (sent in 5 ms ticks, like the simulator's scenario clock): send → ack
    and send → broker append time of each, in seconds."""
    producer = await _raw_producer(rig, topics)
    to_ack: list[float] = []
    to_append: list[float] = []

    def done(sent: float, future: asyncio.Future[Any]) -> None:
        acked = time.time()
        metadata = future.result()
        to_ack.append(acked - sent)
        to_append.append(metadata.timestamp / 1000 - sent)

    try:
        total_records = int(rate * duration)
        started = time.monotonic()
        sent = 0
        futures = []
        while sent < total_records:
            due = min(total_records, int((time.monotonic() - started) * rate))
            while sent < due:
                r = records[sent % len(records)]
                now = time.time()
                future = await producer.send(
                    topics.events,
                    r.value,
                    key=r.key,
                    headers=r.headers,
                    timestamp_ms=r.timestamp_ms,
                )
                future.add_done_callback(lambda f, now=now: done(now, f))
                futures.append(future)
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return to_ack, to_append


# -- 1 + 2: throughput and latency -----------------------------------------------------------------


async def pipeline(rig: Rig, opts: Options) -> dict[str, Any]:
    result: dict[str, Any] = {"mailboxes": opts.mailboxes}
    topics = await rig.topics("worker")
    queue_limit = max(100_000, 2 * opts.events)
    async with simulator(
        rig.workdir / "sim-pipeline",
        mailboxes=opts.mailboxes,
        seed=SEED,
        session_queue_limit=queue_limit,
    ) as sim:
        extra = {"profile_to": rig.workdir / "worker.prof"} if opts.profile else {}
        async with _worker(rig, sim, topics, "pipeline", **extra) as worker:
            await _settled(worker, opts.mailboxes, 300)
            result["worker_start_to_settled_s"] = round(time.monotonic() - worker.started_at, 1)
            if "throughput" in opts.only:
                result["throughput"] = await _throughput(rig, opts, sim, worker, topics)
            if "latency" in opts.only:
                result["latency"] = await _latency(rig, opts, sim, worker, topics)
            result["worker_rss_mb"] = proc_status_mb(worker.pid)
            result["worker_rss_peak_mb"] = proc_status_mb(worker.pid, "VmHWM")
    if opts.profile:
        _print_profile(rig.workdir / "worker.prof")
    return result


async def _throughput(
    rig: Rig, opts: Options, sim: SimProcess, worker: WorkerProcess, topics: Any
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"worker": [], "send": [], "send_batch": []}
    java_runs = []
    for round_no in range(1, opts.rounds + 1):
        run = await _worker_burst(rig, sim, worker, topics.events, opts.events)
        runs["worker"].append(run)
        print(f"  round {round_no}: worker     {run['events_per_s']:>7,}/s {run}", flush=True)
        if not rig.records:
            rig.records = _as_sent(rig, await read_topic(rig.bootstrap, topics.events), opts.events)
        for name, baseline in (("send", _raw_burst), ("send_batch", _raw_batches)):
            raw = await baseline(rig, await rig.topics("raw"), rig.records)
            runs[name].append(raw)
            print(f"  round {round_no}: {name:10s} {raw['events_per_s']:>7,}/s {raw}", flush=True)
        java = await producer_performance(
            rig.runtime,
            rig.bootstrap,
            (await rig.topics("java")).events,
            records=opts.events,
            record_size=round(statistics.mean(len(r.value) for r in rig.records)),
            workdir=rig.workdir,
        )
        java_runs.append(java)
        print(f"  round {round_no}: java       {java['events_per_s']:>7,}/s {java}", flush=True)
    rate = {name: _best_median([r["events_per_s"] for r in rs]) for name, rs in runs.items()}
    cpu = {
        name: statistics.median(
            r.get("cpu_us_per_event") or r["worker_cpu_us_per_event"] for r in rs
        )
        for name, rs in runs.items()
    }
    java_rate = _best_median([r["events_per_s"] for r in java_runs])
    worker_rate = rate["worker"]
    return {
        "events_per_round": opts.events,
        "record": {
            "value_bytes": round(statistics.mean(len(r.value) for r in rig.records), 1),
            "key_bytes": round(statistics.mean(len(r.key or b"") for r in rig.records), 1),
            "headers": len(rig.records[0].headers) if rig.records else 0,
        },
        "worker_events_per_s": worker_rate,
        "raw_aiokafka_send_events_per_s": rate["send"],
        "raw_aiokafka_send_batch_events_per_s": rate["send_batch"],
        "java_producer_performance_events_per_s": java_rate,
        "cpu_us_per_event_median": cpu,
        "worker_over_raw_send": {
            k: round(worker_rate[k] / rate["send"][k], 2) for k in worker_rate
        },
        "worker_over_raw_send_batch": {
            k: round(worker_rate[k] / rate["send_batch"][k], 2) for k in worker_rate
        },
        "worker_over_java": {k: round(worker_rate[k] / java_rate[k], 2) for k in worker_rate},
        "runs": runs,
        "java_runs": java_runs,
    }


async def _latency(
    rig: Rig, opts: Options, sim: SimProcess, worker: WorkerProcess, topics: Any
) -> dict[str, Any]:
    # the raw baseline runs half before and half after the worker, bracketing it in time
    raw_topics = await rig.topics("raw-paced")
    if not rig.records:  # no throughput run before: a small burst gives the worker's records
        await _worker_burst(rig, sim, worker, topics.events, 10_000)
        rig.records = _as_sent(rig, await read_topic(rig.bootstrap, topics.events), 10_000)
    records = rig.records
    raw_ack, raw_append = await _raw_paced(rig, raw_topics, records, opts.rate, opts.duration / 2)
    events = int(opts.rate * opts.duration)
    before = await worker.metrics()
    base = total(before, PUBLISHED)
    await sim.call("record", True)
    started = time.time()
    await sim.call("scenario", events, opts.rate)
    await sim.call("wait_idle")
    await worker.wait_until(lambda m: total(m, PUBLISHED) >= base + events, 120, poll=0.25)
    after = await worker.metrics()
    published = {(m, usn, kind): t for m, usn, kind, t in await sim.call("published")}
    await sim.call("record", False)
    more_ack, more_append = await _raw_paced(rig, raw_topics, records, opts.rate, opts.duration / 2)
    raw = {
        "send_to_ack": _percentiles(raw_ack + more_ack),
        "send_to_append": _percentiles(raw_append + more_append),
    }
    since_ms = int(started * 1000) - 1
    latencies, to_worker, after_parse = [], [], []
    worst_per_second: dict[int, float] = {}
    for r in await read_topic(rig.bootstrap, topics.events):
        if r.timestamp < since_ms:
            continue
        event = codec.decode(r.value)
        if isinstance(event, MailboxEvent):
            key = (event.mailbox_id, event.usn, event.event_type.value)
            if key in published:
                sent, appended = published[key], r.timestamp / 1000
                # ingested_at: the worker's clock when it began parsing the event's payload
                ingested = event.ingested_at.timestamp()
                latencies.append(appended - sent)
                to_worker.append(ingested - sent)
                after_parse.append(appended - ingested)
                second = int(sent - started)
                worst_per_second[second] = max(worst_per_second.get(second, 0), appended - sent)
    buckets = histogram_delta(before, after, "cumi_worker_ack_latency_seconds")
    in_worker = {
        f"p{int(q * 100)}_ms": round((histogram_quantile(q, buckets) or 0) * 1000, 2)
        for q in (0.5, 0.99)
    }
    end_to_end = _percentiles(latencies)
    result = {
        "rate_per_s": opts.rate,
        "duration_s": opts.duration,
        "published": len(published),
        "matched": len(latencies),
        "publish_to_append": end_to_end,
        "publish_to_worker_parse": _percentiles(to_worker),
        "worker_parse_to_append": _percentiles(after_parse),
        "worst_ms_per_second": [
            round(worst_per_second[k] * 1000) for k in sorted(worst_per_second)
        ],
        "worker_receive_to_ack_histogram": in_worker,
        "raw_aiokafka": raw,
        "p99_over_raw_send_to_append": round(
            end_to_end["p99_ms"] / max(raw["send_to_append"]["p99_ms"], 0.01), 1
        ),
    }
    print(f"  latency: {json.dumps(result)}", flush=True)
    return result


def _print_profile(path: Path) -> None:
    if path.exists():
        kept = Path(tempfile.gettempdir()) / "bench-worker.prof"
        shutil.copyfile(path, kept)
        print(f"  worker profile (by own time, top 30; kept in {kept}):", flush=True)
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(30)


# -- 3: many mailboxes ---------------------------------------------------------------------------


async def mailboxes(rig: Rig, opts: Options) -> dict[str, Any]:
    count = opts.subscriptions
    result: dict[str, Any] = {"mailboxes": count}
    topics = await rig.topics("many")
    async with simulator(rig.workdir / "sim-many", mailboxes=count, seed=SEED) as sim:
        async with _worker(rig, sim, topics, "many") as worker:
            result.update(await _subscribe_all(worker, count))
            result["steady"] = await _steady(sim, worker, opts)
        result["baseline_bare_client"] = await _bare_subscribe(sim, count)
    result["baseline_import_only_rss_mb"] = await _import_only_rss()
    active = result["all_active_after_start_s"]
    result["subscribe_over_bare_client"] = round(active / result["baseline_bare_client"]["s"], 1)
    result["rss_over_import_only"] = round(
        result["steady"]["rss_mb_end"] / result["baseline_import_only_rss_mb"], 1
    )
    return result


async def _subscribe_all(worker: WorkerProcess, count: int) -> dict[str, Any]:
    """Progress of the worker's start, sampled every 0.5 s from its /metrics."""
    marks: dict[str, float] = {}
    at_active: dict[str, float] = {}
    samples = []
    async with asyncio.timeout(900):
        while "repaired" not in marks:
            await asyncio.sleep(0.5)
            with contextlib.suppress(aiohttp.ClientError):
                m = await worker.metrics()
                now = time.monotonic() - worker.started_at
                active = total(m, "cumi_worker_subscriptions", state="active")
                if "first_request" not in marks and total(m, "cumi_worker_rest_requests_total"):
                    marks["first_request"] = now
                if "active" not in marks and active >= count:
                    marks["active"] = now
                    at_active = _rest_by_endpoint(m)
                if "ready" not in marks and total(m, "cumi_worker_ready") == 1:
                    marks["ready"] = now
                snapshots = total(m, "cumi_worker_snapshots_published_total")
                if "active" in marks and snapshots >= count:
                    marks["repaired"] = now
                samples.append((round(now, 1), active, snapshots, proc_status_mb(worker.pid)))
    m = await worker.metrics()
    return {
        "first_request_after_start_s": round(marks["first_request"], 1),
        "all_active_after_start_s": round(marks["active"], 1),
        "ready_after_start_s": round(marks["ready"], 1),
        "gap_repair_done_after_start_s": round(marks["repaired"], 1),
        "subscribe_pass_s": round(total(m, "cumi_worker_subscribe_all_seconds_sum"), 1),
        "rest_requests_until_all_active": at_active,
        "rest_requests_total": _rest_by_endpoint(m),
        "rss_mb_after_repair": proc_status_mb(worker.pid),
        "progress": samples[:: max(1, len(samples) // 40)],
    }


def _rest_by_endpoint(m: Metrics) -> dict[str, float]:
    endpoints = ("requestnotification", "users", "folder", "messages")
    counts = {e: total(m, "cumi_worker_rest_requests_total", endpoint=e) for e in endpoints}
    counts["retried"] = total(m, "cumi_worker_rest_retries_total")
    return counts


async def _steady(sim: SimProcess, worker: WorkerProcess, opts: Options) -> dict[str, Any]:
    events = int(opts.rate * opts.steady)
    base = total(await worker.metrics(), PUBLISHED)
    await sim.call("scenario", events, opts.rate)
    rss = []
    started = time.monotonic()
    while time.monotonic() - started < opts.steady:
        await asyncio.sleep(1.0)
        rss.append(proc_status_mb(worker.pid))
    await sim.call("wait_idle")
    await worker.wait_until(lambda m: total(m, PUBLISHED) >= base + events, 120, poll=0.25)
    return {
        "rate_per_s": opts.rate,
        "seconds": opts.steady,
        "rss_mb_end": proc_status_mb(worker.pid),
        "rss_mb_max_sampled": max(rss),
        "rss_mb_peak_vmhwm": proc_status_mb(worker.pid, "VmHWM"),
    }


async def _bare_subscribe(sim: SimProcess, count: int, callers: int = 5) -> dict[str, Any]:
    """requestnotification for every user, `callers` at a time, then Bayeux subscribes in batches
    of 100 on one session: the least a client can spend under the throttle."""
    users = UserTable.generate(count, SEED)
    aliases = list(users)
    channels: list[str] = [""] * count
    url = f"{sim.base_url}/vmrest/mailbox?method=requestnotification"
    throttled = 0
    # the simulator binds a long-polling session to its BAYEUX_BROWSER cookie, as CometD does
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:

        async def caller(offset: int) -> None:
            nonlocal throttled
            for i in range(offset, count, callers):
                headers = {"Authorization": users[aliases[i]].authorization()}
                while True:
                    async with http.post(url, data="{}", headers=headers) as response:
                        if response.status == 200:
                            channels[i] = "/vmrest/mailbox/" + await response.text()
                            break
                    throttled += 1
                    await asyncio.sleep(0.01)

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        requested = time.perf_counter() - started
        handshake = {"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]}
        async with http.post(sim.cometd_url, json=[handshake]) as response:
            client_id = (await response.json())[0]["clientId"]
        for i in range(0, count, 100):
            batch = [
                {"channel": "/meta/subscribe", "clientId": client_id, "subscription": ch}
                for ch in channels[i : i + 100]
            ]
            async with http.post(sim.cometd_url, json=batch) as response:
                replies = await response.json()
                if not all(reply.get("successful") for reply in replies):
                    raise RuntimeError("a bare subscribe was refused")
        elapsed = time.perf_counter() - started
        disconnect = {"channel": "/meta/disconnect", "clientId": client_id}
        async with http.post(sim.cometd_url, json=[disconnect]):
            pass
    return {
        "callers": callers,
        "s": round(elapsed, 2),
        "requestnotification_s": round(requested, 2),
        "throttled_503": throttled,
    }


async def _import_only_rss() -> float:
    code = "import ingest.worker, ingest.cli, sys; print('ok', flush=True); sys.stdin.read()"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        await asyncio.wait_for(process.stdout.readline(), 60)
        return proc_status_mb(process.pid)
    finally:
        process.kill()
        await process.wait()


# -- running it ----------------------------------------------------------------------------------


def _code_version() -> dict[str, Any]:
    """The commit measured, and which files under ingest/ differed from it (a shared tree)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified": git("diff", "--name-only", "HEAD", "--", "ingest").split(),
    }


@contextlib.asynccontextmanager
async def _rig(bootstrap: str | None, schema_registry: bool = False) -> AsyncIterator[Rig]:
    runtime = await asyncio.to_thread(ensure_runtime)
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        workdir = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            url = None
            if schema_registry:
                registry = LocalRegistry(work_dir=workdir / "registry")
                url = (await stack.enter_async_context(registry)).url
            if bootstrap is None:
                broker = await stack.enter_async_context(LocalBroker(runtime=runtime))
                bootstrap = broker.bootstrap
            yield Rig(bootstrap, runtime, workdir, registry_url=url)


async def run_async(opts: Options, bootstrap: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "options": dataclasses.asdict(opts),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "code": _code_version(),
        "load_average_before": load_average(),
    }
    async with _rig(bootstrap, opts.schema_registry) as rig:
        if {"throughput", "latency"} & set(opts.only):
            print("== worker throughput / latency", flush=True)
            result["pipeline"] = await pipeline(rig, opts)
            result["load_average_after_pipeline"] = load_average()
        if "mailboxes" in opts.only:
            print(f"== worker with {opts.subscriptions:,} mailboxes", flush=True)
            result["many_mailboxes"] = await mailboxes(rig, opts)
            print(f"  {json.dumps(result['many_mailboxes'])}", flush=True)
    result["load_average_after"] = load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    d = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--events", type=int, default=d.events, help="events per throughput burst")
    add("--rounds", type=int, default=d.rounds, help="throughput rounds")
    add("--mailboxes", type=int, default=d.mailboxes, help="mailboxes of the throughput run")
    add("--rate", type=float, default=d.rate, help="steady events/s (latency, RSS)")
    add("--duration", type=float, default=d.duration, help="seconds of the latency run")
    add("--subscriptions", type=int, default=d.subscriptions, help="mailboxes of the RSS run")
    add("--steady", type=float, default=d.steady, help="seconds of events in the RSS run")
    add("--only", default=",".join(d.only), help="throughput,latency,mailboxes")
    add("--profile", action="store_true", help="run the worker under cProfile, print the top")
    add("--quick", action="store_true", help="small sizes, to try the harness")
    add("--schema-registry", action="store_true", help="registry mode (Confluent wire format)")
    add("--bootstrap", default=None, help="use this broker instead of starting one")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else d
    given = {k: v for k, v in vars(args).items() if parser.get_default(k) != v}
    opts = Options(
        events=given.get("events", base.events),
        rounds=given.get("rounds", base.rounds),
        mailboxes=given.get("mailboxes", base.mailboxes),
        rate=given.get("rate", base.rate),
        duration=given.get("duration", base.duration),
        subscriptions=given.get("subscriptions", base.subscriptions),
        steady=given.get("steady", base.steady),
        only=tuple(args.only.split(",")),
        profile=args.profile,
        schema_registry=args.schema_registry,
    )
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; load {load_average()}", flush=True)
    result = asyncio.run(run_async(opts, args.bootstrap))
    path = record("worker", result)
    print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
