"""`ingest worker`: CUMI Comet notifications of many mailboxes → the Kafka event log.

Wiring (docs/design.md §1): in registry mode, the schemas registered first (a refusal stops the
worker before anything is written; ingest.eventlog.schema_registry) → the ops HTTP server
(/metrics, health) → the Kafka sink (waits for the cluster) → the CUMI REST client and the
credentials provider → gap repair → the subscription manager, which runs CometD sessions whose
event payloads flow into the sink. The mailboxes are a file's list (CUMI_MAILBOX_SOURCE=file) or
this worker's share of the registry topic, which changes while it runs
(registry: ingest.mailboxes.assignment).

Shutdown (SIGTERM/SIGINT): stop receiving (the CometD session is closed), stop gap repair, wait —
bounded by CUMI_SHUTDOWN_TIMEOUT_SECONDS — until Kafka has acknowledged everything in flight, flush
and close the producer, exit 0. A producer failure that no retry can cure exits 1 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ingest.cumi.credentials import CredentialsProvider, build_provider
from ingest.cumi.gap_repair import Reconciler
from ingest.cumi.normalizer import TimeZones, named_subscription
from ingest.cumi.rest import CumiRestClient
from ingest.cumi.session import CometSession
from ingest.cumi.subscriptions import SubscriptionManager, SubscriptionPolicy
from ingest.errors import BrokerError
from ingest.eventlog.clients import access_refused
from ingest.eventlog.records import RecordWriter
from ingest.eventlog.schema_registry import register_writers
from ingest.eventlog.sink import Sink
from ingest.eventlog.topics import wait_until_present
from ingest.events import DeadLetter
from ingest.mailboxes.assignment import CredentialRefs, RegistryAssignment
from ingest.mailboxes.mailbox_file import watched_aliases
from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK
from ingest.ops.http import OpsServer
from ingest.ops.metrics import WORKER_READY, WORKER_REGISTRY
from ingest.ops.progress import LoggedProgress, ProgressFactory
from ingest.settings import CredentialsProviderKind, CumiSettings, MailboxSource, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


def note_receive_time_zone(cumi: CumiSettings) -> None:
    """One start-up line when CUMI_SERVER_TIME_ZONE is not set: ReceiveTime carries no zone, and
    read as UTC on a server elsewhere every receive_time is off by hours, silently."""
    if not cumi.server_time_zone_set:
        log.warning(
            "CUMI_SERVER_TIME_ZONE is not set: ReceiveTime is read as UTC; set it to the "
            "Connection server's IANA time zone, e.g. CUMI_SERVER_TIME_ZONE=America/New_York"
        )


class _Stopped(enum.Enum):
    STOPPED = "stopped"
    """A start-up step did not finish: stop was asked first."""


class Worker:
    """The ingest worker service; `run()` until `stop()` (or a signal), returning the exit code."""

    def __init__(
        self,
        settings: Settings,
        aliases: Sequence[str] | None = None,
        *,
        progress: ProgressFactory = LoggedProgress,
    ) -> None:
        self.settings = settings
        self._progress = progress
        self.aliases = list(aliases) if aliases is not None else None
        self._stop = asyncio.Event()
        self.sink: Sink | None = None
        self.manager: SubscriptionManager | None = None
        self.reconciler: Reconciler | None = None
        self.ops: OpsServer | None = None
        self.assignment: RegistryAssignment | None = None
        self._missing_topics: str | None = "the topics have not been looked up yet"

    def stop(self) -> None:
        self._stop.set()

    def is_ready(self) -> bool:
        return all(why is None for why in self.readiness().values())

    def readiness(self) -> dict[str, str | None]:
        """Each readiness check → None when it passes, else why not (the names are the checks
        of /healthz/ready; `registry` only with the registry source)."""
        sink, manager = self.sink, self.manager
        checks: dict[str, str | None] = {
            "topics": self._missing_topics,
            "kafka": None if sink is not None and sink.ready else "the Kafka producer is not up",
            "subscriptions": None
            if manager is not None and manager.ready.is_set()
            else "not every mailbox has had its subscription attempt yet",
        }
        if self.settings.cumi.mailbox_source is MailboxSource.REGISTRY and self.aliases is None:
            assignment = self.assignment
            checks["registry"] = (
                None
                if assignment is not None and assignment.ready
                else "the worker group has not assigned and loaded this worker's share yet"
            )
        return checks

    async def run(self, *, handle_signals: bool = False) -> int:
        s = self.settings
        aliases = self.aliases
        if aliases is None and s.cumi.mailbox_source is MailboxSource.FILE:
            assert s.cumi.mailboxes_file is not None  # validated by the settings
            aliases = watched_aliases(s.cumi.mailboxes_file)
        log.info(
            "ingest worker starting for %s; settings %s",
            f"{len(aliases)} mailboxes" if aliases is not None else "registered mailboxes",
            s.describe(),
        )
        for warning in transport_warnings(s):
            log.warning("%s", warning)
        note_receive_time_zone(s.cumi)
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        # evaluated at each scrape, so /metrics and /healthz/ready always agree
        WORKER_READY.set_function(lambda: 1.0 if self.is_ready() else 0.0)
        try:
            return await self._run(aliases or [])
        finally:
            WORKER_READY.set_function(lambda: 0.0)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _run(self, aliases: list[str]) -> int:
        s = self.settings
        c = s.cumi
        writes = RecordWriter.schemas(s.kafka.events_topic, s.kafka.dlq_topic)
        encoder = await self._unless_stopped(register_writers(s.kafka.schema_registry, writes))
        if encoder is _Stopped.STOPPED:
            return 0
        sink = Sink(
            s.kafka,
            capacity=s.worker.queue_size,
            source=c.server_name,
            zones=TimeZones(event_time=c.event_time_zone, receive_time=c.server_time_zone),
            drain_timeout=s.worker.shutdown_timeout_seconds * 0.75,
            encoder=encoder,
            on_dead_letter=self._dead_lettered,
        )
        self.sink = sink
        ops = OpsServer(
            s.worker.metrics_host,
            s.worker.metrics_port,
            live={"producer": lambda: sink.fatal is None},
            ready={name: self._check(name) for name in self.readiness()},
            registry=WORKER_REGISTRY,
            timeouts=s.worker.http_timeouts,
        )
        self.ops = ops
        ssl_context = c.ssl_context()
        rest = CumiRestClient(
            c.server_url,
            ssl_context=ssl_context,
            concurrency=c.rest_concurrency,
            timeout_seconds=c.rest_timeout_seconds,
            max_attempts=c.rest_max_attempts,
            backoff=Backoff(c.rest_backoff_base_seconds, c.rest_backoff_max_seconds),
        )
        credentials: CredentialsProvider = build_provider(s.credentials, rest.lookup_object_id)
        registry = self.aliases is None and c.mailbox_source is MailboxSource.REGISTRY
        refs = None
        # a delegate acts for every mailbox as itself: a credentials reference means nothing
        if registry and s.credentials.provider is not CredentialsProviderKind.DELEGATE:
            credentials = refs = CredentialRefs(credentials)
        reconciler = Reconciler(
            rest,
            credentials,
            sink.publish_snapshot,
            source=c.server_name,
            concurrency=c.reconcile_concurrency,
            page_size=c.reconcile_page_size,
            dead_letter_interval=c.dead_letter_repair_interval_seconds,
        )
        self.reconciler = reconciler

        def new_session() -> CometSession:
            return CometSession(
                c.cometd_url,
                sink.submit,
                transport=c.comet_transport,
                ssl_context=ssl_context,
                stall_timeout=c.stall_timeout_seconds,
                request_timeout=c.rest_timeout_seconds,
                max_request_bytes=c.subscribe_batch_bytes,
            )

        manager = SubscriptionManager(
            aliases,
            rest,
            credentials,
            new_session,
            reconciler=reconciler,
            progress=self._progress,
            policy=SubscriptionPolicy(
                batch_size=c.subscribe_batch_size,
                request_workers=c.rest_concurrency * 2,
                reuse_subscriptions=c.reuse_subscriptions,
                reconcile_on_start=s.worker.reconcile_on_start,
                auth_retry_seconds=c.auth_retry_seconds,
            ),
        )
        self.manager = manager
        if registry:
            self.assignment = RegistryAssignment(
                s.kafka,
                manager,
                group_id=s.worker.group_id,
                session_timeout_ms=s.worker.group_session_timeout_ms,
                heartbeat_interval_ms=s.worker.group_heartbeat_interval_ms,
                server=c.server_name,
                credentials=refs,
                reconcile_on_start=s.worker.reconcile_on_start,
            )
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(ops)
            if await self._wait_or_stop(self._topics_present()):
                return 0
            if await self._wait_or_stop(sink.start()):
                return 0
            stack.push_async_callback(sink.stop)  # drains and flushes: after the rest has stopped
            await stack.enter_async_context(rest)
            await stack.enter_async_context(reconciler)
            if self.assignment is not None:
                await stack.enter_async_context(self.assignment)  # leaves the group first
            return await self._serve(manager, sink)
        return 0  # pragma: no cover - mypy: the stack does not swallow exceptions

    def _check(self, name: str) -> Callable[[], bool | str]:
        def check() -> bool | str:
            why = self.readiness().get(name)
            return True if why is None else why

        return check

    async def _topics_present(self) -> None:
        """Wait until the events and dead-letter topics exist (readiness `topics` names them
        meanwhile). Kafka unreachable or refusing us: left to the sink's start, which waits the
        first out and stops on the second."""
        k = self.settings.kafka
        if await access_refused(k.client_kwargs()) is not None:
            self._missing_topics = None
            return  # the sink's start stops the worker with the one line that says why

        def note(missing: list[str]) -> None:
            self._missing_topics = (
                f"topic(s) {', '.join(missing)} do not exist: run `ingest topics apply`"
                if missing
                else None
            )

        try:
            await wait_until_present(
                [k.events_topic, k.dlq_topic],
                k.client_kwargs(),
                on_missing=note,
                sleep=SYSTEM_CLOCK.sleep,
            )
        except BrokerError:
            self._missing_topics = None

    def _dead_lettered(self, letter: DeadLetter, message: Mapping[str, Any]) -> None:
        """A payload was dead-lettered: gap repair of the mailbox it names, if it is ours."""
        if self.manager is not None:
            self.manager.dead_lettered(letter.mailbox_id, named_subscription(message))

    async def _wait_or_stop(self, step: Coroutine[Any, Any, None]) -> bool:
        """Run a start-up step unless stop is asked first; True when stopped."""
        return await self._unless_stopped(step) is _Stopped.STOPPED

    async def _unless_stopped(self, step: Coroutine[Any, Any, T]) -> T | _Stopped:
        """A start-up step's result, unless stop is asked first."""
        task = asyncio.ensure_future(step)
        stopper = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for pending in (task, stopper):
            if pending not in done:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
        if task in done:
            return task.result()
        return _Stopped.STOPPED

    async def _serve(self, manager: SubscriptionManager, sink: Sink) -> int:
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(manager.run(), name="subscription-manager")
            stop = group.create_task(self._stop.wait())
            failed = group.create_task(sink.failed.wait())
            tasks = {runner, stop, failed}
            if self.assignment is not None:
                tasks.add(group.create_task(self.assignment.failed.wait()))
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            log.info("ingest worker stopping: no longer receiving; draining in-flight events")
            for task in tasks:
                task.cancel()
        broken = sink.fatal is not None or (self.assignment and self.assignment.fatal)
        return 1 if broken else 0


def transport_warnings(settings: Settings) -> list[str]:
    """What the worker says once at start about a connection to Connection that exposes the
    mailbox credentials: a certificate it does not check, or credentials sent without TLS."""
    c = settings.cumi
    warnings = []
    if not c.tls_verify:
        warnings.append(
            "CUMI_TLS_VERIFY=false: the Connection server's certificate is not checked, so "
            "anyone on the path can pose as it and read the mailbox credentials; give its CA "
            "with CUMI_TLS_CA_FILE instead"
        )
    plain = [
        name
        for name, url in (("CUMI_SERVER_URL", c.server_url), ("CUMI_COMETD_URL", c.cometd_url))
        if urlsplit(url).scheme == "http"
    ]
    if plain:
        verb = "use" if len(plain) > 1 else "uses"
        warnings.append(
            f"{' and '.join(plain)} {verb} http://: the mailbox credentials (HTTP Basic, or the "
            "delegate's Bearer token) cross the network in clear; use https://"
        )
    return warnings
