"""The processes of the worker benchmarks, and how they are observed.

- `SimProcess`: the CUMI simulator in a child process (its own event loop and core), driven over a
  pipe. It can *hold* a burst: the events of `hold(n)` are generated and encoded with the delivery
  to the Bayeux session queues withheld, and `release()` queues them all at once, so the worker's
  drain rate is measured without the simulator's generation speed in it. It can also record the
  wall-clock time at which it published each event (`recording`), keyed by (MailboxId, USN,
  EventType), for the latency measurement.
- `WorkerProcess`: `python -m ingest worker` as a real subprocess with the production defaults,
  observed through its own `/metrics` and `/healthz/ready` and through /proc (RSS, CPU time).
- Kafka helpers: bench topics (the events topic stamps records with the broker's append time, see
  `bench_specs`), reading a topic back, Kafka's Java `ProducerPerformance` tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from ingest.devservices.kafka import KafkaRuntime
from ingest.eventlog.topics import TopicNames, TopicSpec, default_specs, ensure_topics
from ingest.simulator import Simulator, SimulatorConfig

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PublishKey = tuple[str, int, str]
"""(MailboxId, USN, EventType): what identifies one published event of the simulator."""


# -- /proc ----------------------------------------------------------------------------------------


def proc_status_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory line of /proc/<pid>/status (VmRSS: resident now, VmHWM: resident peak), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the simulator in a child process ------------------------------------------------------------


def _sim_child(
    conn: multiprocessing.connection.Connection, config: SimulatorConfig, workdir: str
) -> None:
    asyncio.run(_sim_serve(conn, config, Path(workdir)))


async def _sim_serve(
    conn: multiprocessing.connection.Connection, config: SimulatorConfig, workdir: Path
) -> None:
    async with Simulator(config) as sim:
        sim.accounts.write(workdir / "users.json")
        (workdir / "mailboxes.txt").write_text("\n".join(sim.accounts) + "\n")
        published: list[tuple[str, int, str, float]] = []
        held: list[tuple[str, bytes]] = []
        recording = False
        send = sim.notifier.send
        # bridge mode (publish_hook): events go through the reference server's publish hook
        deliver = sim.bridge.deliver if sim.bridge is not None else sim.bayeux.deliver

        def timed_send(mailbox: Any, event_type: Any, usn: int, messages: Any) -> int:
            if recording:
                published.append((mailbox.alias, usn, str(event_type), time.time()))
            return send(mailbox, event_type, usn, messages)

        def withhold(channel: str, payload: bytes) -> int:
            held.append((channel, payload))
            return 1 if sim.bridge is not None else len(sim.bayeux.channels.get(channel, ()))

        sim.notifier.send = timed_send  # type: ignore[method-assign]
        conn.send((sim.base_url, sim.cometd_url))
        loop = asyncio.get_running_loop()
        while True:
            command, *args = await loop.run_in_executor(None, conn.recv)
            reply: Any = None
            if command == "stop":
                conn.send(None)
                return
            if command == "hold":
                # the Notifier calls its delivery function per channel message
                sim.notifier._deliver = withhold
                emitted = 0
                while emitted < args[0]:  # in slices, so held long-polls are still answered
                    emitted += sim.emit(min(2_000, args[0] - emitted))
                    await asyncio.sleep(0)
                sim.notifier._deliver = deliver
                reply = len(held)
            elif command == "release":
                released = time.time()
                for channel, payload in held:
                    deliver(channel, payload)
                reply, held = (released, len(held)), []
            elif command == "record":
                recording = bool(args[0])
                if recording:
                    published.clear()
            elif command == "published":
                reply = published[:]
            else:
                reply = await _command(sim, command, args)
            conn.send(reply)


async def _command(sim: Simulator, command: str, args: list[Any]) -> Any:
    """The simulator commands that keep no state in the child's loop."""
    match command:
        case "scenario":
            sim.run_scenario(events=args[0], rate=args[1])
        case "wait_idle":
            await sim.wait_idle()
        case "stats":
            return sim.stats.to_json()
        case "restart":
            sim.restart()  # a Jetty restart: sessions and notification subscriptions go
        case "subscriptions":  # each mailbox's current subscriptionId (the last one requested)
            current = {a: sim.subscriptions.of_mailbox(a) for a in sim.accounts}
            return {alias: ids[-1] for alias, ids in current.items() if ids}
        case _:
            raise ValueError(f"unknown simulator command {command!r}")
    return None


class SimProcess:
    """A simulator child process; `await call(command, *args)` runs one command and answers."""

    def __init__(self, workdir: Path, **config: Any) -> None:
        self.workdir = workdir
        self.config = SimulatorConfig(**config)
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_sim_child, args=(child, self.config, str(workdir)), daemon=True
        )
        self._lock = asyncio.Lock()
        self.base_url = ""
        self.cometd_url = ""

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def users_file(self) -> Path:
        return self.workdir / "users.json"

    @property
    def mailboxes_file(self) -> Path:
        return self.workdir / "mailboxes.txt"

    async def start(self) -> None:
        self._process.start()
        self.base_url, self.cometd_url = await asyncio.to_thread(self._conn.recv)

    async def call(self, command: str, *args: Any) -> Any:
        async with self._lock:
            self._conn.send((command, *args))
            return await asyncio.to_thread(self._conn.recv)

    async def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError, EOFError):
                await asyncio.wait_for(self.call("stop"), 15)
            await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 5)


@contextlib.asynccontextmanager
async def simulator(workdir: Path, **config: Any) -> AsyncIterator[SimProcess]:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    sim = SimProcess(workdir, **config)
    try:
        await sim.start()
        yield sim
    finally:
        await sim.stop()


# -- the worker as a process ---------------------------------------------------------------------


def worker_env(sim: SimProcess, bootstrap: str, topics: TopicNames, port: int) -> dict[str, str]:
    """Production defaults except what the local setup dictates (addresses, files, topics)."""
    return {
        "CUMI_SERVER_URL": sim.base_url,
        "CUMI_COMETD_URL": sim.cometd_url,
        "CUMI_SERVER_NAME": "sim",
        "CUMI_SERVER_TIME_ZONE": sim.config.server_zone,
        "CUMI_MAILBOXES_FILE": str(sim.mailboxes_file),
        "CUMI_CREDENTIALS_FILE": str(sim.users_file),
        "CUMI_METRICS_HOST": "127.0.0.1",
        "CUMI_METRICS_PORT": str(port),
        "CUMI_LOG_FORMAT": "text",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_EVENTS_TOPIC": topics.events,
        "KAFKA_DLQ_TOPIC": topics.dlq,
        "KAFKA_STATE_TOPIC": topics.state,
        "KAFKA_REGISTRY_TOPIC": topics.registry,
    }


class WorkerProcess:
    """`python -m ingest worker` (optionally under cProfile), its log in `log_path`."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        profile_to: Path | None = None,
        entry: tuple[str, ...] = ("-m", "ingest", "worker"),
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.profile_to = profile_to
        self.entry = entry
        """What follows `python` on the command line (another script to compare variants)."""
        self.port = int(env["CUMI_METRICS_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._http: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))}
        argv = [sys.executable]
        if self.profile_to is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile_to)]
        argv += self.entry
        self._http = aiohttp.ClientSession()
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                env={**clean, **self.env},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )

    async def stop(self) -> int | None:
        """SIGTERM (the worker drains and exits 0), SIGKILL after 30 s."""
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._http is not None:
            await self._http.close()
            self._http = None
        return None if process is None else process.returncode

    async def _get(self, path: str) -> tuple[int, str]:
        assert self._http is not None and self.process is not None
        if self.process.returncode is not None:
            raise RuntimeError(f"the worker exited {self.process.returncode}; see {self.log_path}")
        async with self._http.get(self.url + path) as response:
            return response.status, await response.text()

    async def is_ready(self) -> bool:
        try:
            status, _ = await self._get("/healthz/ready")
        except aiohttp.ClientError:
            return False
        return status == 200

    async def metrics(self) -> Metrics:
        _, text = await self._get("/metrics")
        values: Metrics = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return values

    async def wait_until(self, check: Any, within: float, poll: float = 0.02) -> float:
        """Poll `await check(metrics)` until true; returns time.time() when it first was."""
        async with asyncio.timeout(within):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    if check(await self.metrics()):
                        return time.time()
                await asyncio.sleep(poll)


def total(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and wanted <= set(ls))


def histogram_delta(before: Metrics, after: Metrics, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram's observations between two scrapes."""
    buckets = []
    for (n, labels), value in after.items():
        if n == name + "_bucket":
            bound = float(dict(labels)["le"])
            buckets.append((bound, value - before.get((n, labels), 0.0)))
    return sorted(buckets)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


# -- Kafka ---------------------------------------------------------------------------------------


def bench_specs(names: TopicNames) -> list[TopicSpec]:
    """The pipeline's topics, except that the events topic takes the broker's append time as the
    record timestamp (instead of the producer's EventTime), so a record read back tells when the
    broker stored it — the out-of-band clock of the latency measurement. The bytes sent and the
    producer's work are the same."""
    return [
        dataclasses.replace(spec, config={**spec.config, "message.timestamp.type": "LogAppendTime"})
        if spec.name == names.events
        else spec
        for spec in default_specs(names)
    ]


async def create_topics(bootstrap: str, prefix: str) -> TopicNames:
    names = TopicNames.with_prefix(prefix)
    await ensure_topics(bootstrap, bench_specs(names))
    return names


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in `topic`, all partitions, each up to its end offset at the start."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):  # without a group, start() assigns every partition
            while not consumer.assignment():  # noqa: ASYNC110 - aiokafka offers no event
                await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        async with asyncio.timeout(120):
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, recs in batch.items():
                    records.extend(r for r in recs if r.offset < end[tp])
                    if recs and recs[-1].offset >= end[tp] - 1:
                        remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th"
)

_LOG4J = """status = error
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d %p %c: %m%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
"""


async def producer_performance(
    runtime: KafkaRuntime,
    bootstrap: str,
    topic: str,
    *,
    records: int,
    record_size: int,
    workdir: Path,
) -> dict[str, Any]:
    """Kafka's own Java producer benchmark on `topic`; its final summary line, parsed."""
    log4j = workdir / "perf-log4j2.properties"
    log4j.write_text(_LOG4J)
    argv = [
        str(runtime.java.path),
        "-Xmx512m",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        runtime.classpath,
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        "enable.idempotence=true",
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(300):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    match = None
    for line in out.decode().splitlines():
        match = _SUMMARY.search(line) or match
    if match is None:
        raise RuntimeError(f"ProducerPerformance: no summary line\n{out.decode()}{err.decode()}")
    return {
        "records": int(match["records"]),
        "record_size": record_size,
        "events_per_s": round(float(match["rate"])),
        "mb_per_s": float(match["mb"]),
        "latency_ms": {k: float(match[k]) for k in ("avg", "p50", "p95", "p99", "max")},
        "command": " ".join(argv[argv.index("org.apache.kafka.tools.ProducerPerformance") :]),
    }
