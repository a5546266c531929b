"""The KPI consumer: the events topic folded into `cumi_voicemail_*` metrics.

    ingest kpis [--config FILE]

One process reads every partition of the events topic (assigned, not balanced by a group) from
offset 0 and folds it into a `KpiLedger`. It is ready — and serves the KPIs at `/metrics` — once it
has folded the log as it was when it started; then it follows the topic.

Restarts rebuild instead of restoring (docs/design.md §6): the KPI counters are totals over the
whole log, a function of the log alone, so folding it again gives the same values, and they never
go back across a restart as long as nothing is exported before the rebuild is done. Nothing is
stored that could disagree with the log. The price is the rebuild time at start, which grows with
the log (docs/benchmarks.md has the rate). Positions are committed to the consumer group
(CUMI_KPIS_GROUP_ID) only so that Kafka tooling shows the consumer's lag; they are never read back.

Kafka going away is not a reason to exit: the consumer is closed and reopened with backoff at the
positions already folded, so nothing is counted twice or skipped.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.registry import Collector

from ingest.errors import BrokerError, ConfigError
from ingest.eventlog.clients import close_consumer, pace_metadata
from ingest.eventlog.codec import SchemaIds
from ingest.eventlog.reader import decode_consumed
from ingest.eventlog.schema_registry import schema_ids
from ingest.eventlog.topics import describe_topic
from ingest.events import MailboxEvent, MailboxSnapshot
from ingest.kpis.exposition import KpiCollector
from ingest.kpis.ledger import DEFAULT_URGENT_THRESHOLDS, KpiLedger, duration_label
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock, wait_event
from ingest.ops.http import OpsServer
from ingest.ops.metrics import (
    KPIS_LAG,
    KPIS_READY,
    KPIS_REBUILD_SECONDS,
    KPIS_RECORDS,
    KPIS_REGISTRY,
    KPIS_SKIPPED,
)
from ingest.settings import KafkaSettings, SettingsSource, load_kafka, load_process

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1
_MAX_POLL_RECORDS = 5000
_APPLY_SLICE = 1000
"""Records folded between two yields to the event loop (scrapes, probes)."""
_RECONNECT = Backoff(base=0.5, cap=10.0)
_CLOSE_WITHIN = 10.0
_COMMIT_EVERY = 5.0
"""Seconds between two commits of the positions (for lag tooling only)."""


@dataclass(frozen=True, slots=True)
class KpiSettings:
    kafka: KafkaSettings
    group_id: str
    """CUMI_KPIS_GROUP_ID (default cumi-kpis): the group its positions are committed to, so that
    Kafka tooling shows its lag; never read back (a restart rebuilds from offset 0)."""
    urgent_thresholds: tuple[float, ...]
    """CUMI_KPIS_URGENT_THRESHOLDS (default 1h,4h,24h): the `older_than` values of
    cumi_voicemail_mailboxes_with_urgent_unread, durations such as 30m, 4h, 2d or seconds."""
    http_host: str
    http_port: int
    shutdown_timeout_seconds: float
    log_level: str

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> KpiSettings:
        s = SettingsSource.load(env, config_file)
        common = load_process(s)
        return cls(
            kafka=load_kafka(s),
            group_id=s.text("CUMI_KPIS_GROUP_ID", "cumi-kpis") or "cumi-kpis",
            urgent_thresholds=parse_thresholds(
                s.text("CUMI_KPIS_URGENT_THRESHOLDS"), "CUMI_KPIS_URGENT_THRESHOLDS"
            ),
            http_host=common.metrics_host,
            http_port=common.metrics_port,
            shutdown_timeout_seconds=common.shutdown_timeout_seconds,
            log_level=common.log_level or "INFO",
        )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_thresholds(text: str | None, name: str) -> tuple[float, ...]:
    """ "1h,4h,24h" → (3600, 14400, 86400); at most 8, distinct, each at least a second."""
    if text is None:
        return DEFAULT_URGENT_THRESHOLDS
    values = []
    for item in (part.strip().lower() for part in text.split(",")):
        unit = _UNITS.get(item[-1:]) if item else None
        number = item[:-1] if unit is not None else item
        if not number.isdigit() or int(number) * (unit or 1) < 1:
            raise ConfigError(f"{name} must list durations like 1h,4h,24h; got {text!r}")
        values.append(float(int(number) * (unit or 1)))
    labels = [duration_label(v) for v in values]
    if len(set(labels)) != len(labels) or len(values) > 8:
        raise ConfigError(f"{name} must list at most 8 distinct durations, got {text!r}")
    return tuple(sorted(values))


class _Registry(Collector):
    """The process metrics of KPIS_REGISTRY, served next to this consumer's KPI families."""

    def collect(self) -> Iterable[Metric]:
        return KPIS_REGISTRY.collect()


class KpiConsumer:
    """`async with KpiConsumer(settings) as kpis: await kpis.wait()`; `ledger` is its fold."""

    def __init__(self, settings: KpiSettings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        k = settings.kafka
        self._client = k.client_kwargs()
        self.events_topic = k.events_topic
        self.ledger = KpiLedger(settings.urgent_thresholds)
        self.positions: dict[int, int] = {}
        """Events partition → offset of the next record to fold."""
        self._targets: dict[int, int] | None = None
        """End offsets when the consumer started: ready once every position reaches them."""
        self.ready = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Registry())
        self.registry.register(KpiCollector(lambda: self.ledger, lambda: self.ready, clock.wall))
        self.ops = OpsServer(
            settings.http_host,
            settings.http_port,
            live={"kpis": lambda: self._failure is None},
            ready={"rebuilt": lambda: self.ready},
            registry=self.registry,
        )
        self.ops.add_routes([web.get("/kpis", self._kpis_json)])
        self._ids: SchemaIds | None = schema_ids(k.schema_registry)
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._committed_at = 0.0

    async def _kpis_json(self, request: web.Request) -> web.Response:
        """`GET /kpis[?now=<epoch s>]`: every KPI as JSON (`KpiLedger.summary`), 503 until the
        rebuild is done: what the demo compares with the simulator's truth."""
        if not self.ready:
            raise web.HTTPServiceUnavailable(text="rebuilding the KPIs from the events topic")
        try:
            now = float(request.query.get("now") or self.clock.wall())
        except ValueError as e:
            raise web.HTTPBadRequest(text="now: epoch seconds") from e
        return web.json_response(self.ledger.summary(now))

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._started_at = time.monotonic()
        KPIS_READY.set(0)
        log.info("KPI consumer starting: %s from offset 0", self.events_topic)
        await self.ops.start()
        self._task = asyncio.create_task(self._run(), name="kpis")

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait(self) -> int:
        """Until stopped (0) or failed (1)."""
        if self._task is not None:
            await asyncio.wait({self._task})
        return EXIT_OK if self._failure is None else EXIT_FAILED

    async def stop(self) -> None:
        """Stop folding, commit the positions (for tooling), close. Idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.settings.shutdown_timeout_seconds)
            if not done:
                task.cancel()
                await asyncio.wait({task})
        await self._close_consumer()
        await self.ops.stop()

    async def __aenter__(self) -> KpiConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- consuming ------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._open()
                attempt = 0
                await self._consume()
            except (KafkaError, BrokerError) as e:
                attempt += 1
                log.warning("Kafka trouble (%r): KPI consumer reconnecting", e)
            except Exception as e:
                log.error("KPI consumer failed: %r", e, exc_info=e)
                self._failure = e
                return
            await self._close_consumer()
            if await wait_event(self.clock, self._stopping, _RECONNECT.delay(max(1, attempt))):
                return

    async def _open(self) -> None:
        described = await describe_topic(self.events_topic, **self._client)
        if described is None:
            raise ConfigError(f"the events topic {self.events_topic} does not exist")
        consumer = AIOKafkaConsumer(
            group_id=self.settings.group_id,
            client_id="kpis",
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=_MAX_POLL_RECORDS,
            **self._client,
        )
        pace_metadata(consumer._client)
        self._consumer = consumer
        await consumer.start()
        partitions = [TopicPartition(self.events_topic, n) for n in range(described[0])]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, self.positions.setdefault(tp.partition, 0))
        if self._targets is None:
            ends = await consumer.end_offsets(partitions)
            self._targets = {tp.partition: offset for tp, offset in ends.items()}
            log.info("rebuilding the KPIs from %d records", sum(self._targets.values()))

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=_MAX_POLL_RECORDS)
            for tp, records in batch.items():
                for start in range(0, len(records), _APPLY_SLICE):
                    self._fold(tp.partition, records[start : start + _APPLY_SLICE])
                    await asyncio.sleep(0)
            self._check_caught_up()
            self._update_lag(consumer)
            await self._commit_due(consumer, force=False)
        await self._commit_due(consumer, force=True)

    def _fold(self, partition: int, records: Sequence[Any]) -> None:
        position = self.positions.get(partition, 0)
        ledger = self.ledger
        for message in records:
            if message.offset < position:
                continue  # fetched before a reconnect sought back
            position = message.offset + 1
            record = _decode(message.value, self._ids)
            if record is not None:
                KPIS_RECORDS.labels(ledger.apply(record).value).inc()
        self.positions[partition] = position

    def _check_caught_up(self) -> None:
        if self.ready or self._targets is None:
            return
        if all(self.positions.get(n, 0) >= end for n, end in self._targets.items()):
            self.ready = True
            took = time.monotonic() - self._started_at
            KPIS_READY.set(1)
            KPIS_REBUILD_SECONDS.set(took)
            log.info(
                "KPIs rebuilt from %d records in %.1f s: serving cumi_voicemail_*",
                self.ledger.records,
                took,
            )

    def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for number, position in self.positions.items():
            high = consumer.highwater(TopicPartition(self.events_topic, number))
            if high is not None:
                KPIS_LAG.labels(str(number)).set(max(0, high - position))

    async def _commit_due(self, consumer: AIOKafkaConsumer, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._committed_at < _COMMIT_EVERY:
            return
        self._committed_at = now
        offsets = {TopicPartition(self.events_topic, n): p for n, p in self.positions.items() if p}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as e:  # only for tooling: never worth a reconnect
            log.debug("positions not committed: %r", e)

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_consumer(consumer, _CLOSE_WITHIN)


def _decode(value: bytes | None, ids: SchemaIds | None) -> MailboxEvent | MailboxSnapshot | None:
    return decode_consumed(value, ids, KPIS_SKIPPED)


async def serve(settings: KpiSettings, *, handle_signals: bool = True) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a failure (exit 1)."""
    kpis = KpiConsumer(settings)
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, kpis.request_stop)
    try:
        async with kpis:
            return await kpis.wait()
    finally:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
